//! The registry over loopback: registration with dial-back, names, pushed changes, state
//! hashes, deregistration, silent nodes, refusals and a registry restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::protocols::registry::{
    Membership, MembershipConfig, MembershipError, MembershipEvent, MembershipStatus, Refusal,
    RegistryConfig, RegistryServer,
};
use peerwire::{ChannelSpec, Config, Inbox, Keypair, Network, PeerId};

const REG: u16 = 40;
/// Short heartbeats keep the test quick; nothing below asserts a duration.
const BEAT: Duration = Duration::from_millis(200);

fn cfg() -> Config {
    config().channel(REG, ChannelSpec::high())
}

async fn registry_at(
    listen: std::net::SocketAddr,
    key: &Keypair,
    compat: u64,
) -> (Network<Bytes>, RegistryServer) {
    let (net, _) = Network::<Bytes>::start(cfg().listen(listen), key.clone())
        .await
        .unwrap();
    let registry = net
        .registry(RegistryConfig::new(REG).heartbeat(BEAT).compat(compat))
        .unwrap();
    (net, registry)
}

struct Node {
    net: Network<Bytes>,
    _inbox: Inbox<Bytes>,
    members: Membership,
}

async fn member(registry: &Network<Bytes>, name: &str) -> Node {
    let (net, inbox) = node(cfg()).await;
    let members = net
        .membership(
            MembershipConfig::new(REG, registry.local_addr(), registry.local_peer_id()).name(name),
        )
        .unwrap();
    Node {
        net,
        _inbox: inbox,
        members,
    }
}

fn ids(members: &Membership) -> Vec<PeerId> {
    members.members().iter().map(|m| m.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_nodes_see_each_other_join_change_state_and_leave() {
    let (reg_net, registry) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(member(&reg_net, &format!("node{i}")).await);
    }
    let mut all: Vec<PeerId> = nodes.iter().map(|n| n.net.local_peer_id()).collect();
    all.sort();
    for n in &nodes {
        eventually("every node lists all four", || ids(&n.members) == all).await;
    }
    assert_eq!(registry.members().len(), 4);
    // Names resolve on every node to the proven id.
    for n in &nodes {
        for (i, other) in nodes.iter().enumerate() {
            assert_eq!(
                n.members.resolve(&format!("node{i}")),
                Some(other.net.local_peer_id())
            );
        }
    }

    // A state-hash change reaches every other node as an update.
    let mut events = nodes[0].members.events();
    nodes[1].members.set_state_hash([5; 32]);
    let changed = nodes[1].net.local_peer_id();
    for n in &nodes {
        eventually("the new state hash everywhere", || {
            n.members
                .members()
                .iter()
                .any(|m| m.id == changed && m.state_hash == Some([5; 32]))
        })
        .await;
    }
    let update = soon("an update event", async {
        loop {
            if let MembershipEvent::Updated(m) = events.recv().await.unwrap() {
                return m;
            }
        }
    })
    .await;
    assert_eq!((update.id, update.state_hash), (changed, Some([5; 32])));

    // A graceful stop removes the node everywhere, without waiting for missed heartbeats.
    let leaving = nodes.pop().unwrap();
    let left = leaving.net.local_peer_id();
    leaving.members.leave().await;
    all.retain(|id| *id != left);
    for n in &nodes {
        eventually("the leaver gone everywhere", || ids(&n.members) == all).await;
    }
    let stats = registry.stats();
    assert_eq!((stats.deregistered, stats.dropped_silent), (1, 0));
    assert_eq!(nodes[0].members.resolve("node3"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_beating_is_dropped_everywhere() {
    let (reg_net, registry) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    let a = member(&reg_net, "a").await;
    let b = member(&reg_net, "b").await;
    eventually("a lists both", || a.members.members().len() == 2).await;
    // B crashes: no goodbye, no deregistration.
    b.net.abort().await;
    eventually("b dropped from a's list", || {
        ids(&a.members) == [a.net.local_peer_id()]
    })
    .await;
    assert_eq!(registry.stats().dropped_silent, 1);
    assert_eq!(registry.stats().deregistered, 0);
    eventually("a still registered", || {
        a.members.status() == MembershipStatus::Registered
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_does_not_prove_the_node_is_never_listed() {
    let (reg_net, registry) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    // Advertises an address where nothing listens.
    let (liar, _inbox) = node(cfg().advertised_addr(free_addr())).await;
    let members = liar
        .membership(MembershipConfig::new(
            REG,
            reg_net.local_addr(),
            reg_net.local_peer_id(),
        ))
        .unwrap();
    eventually("two refused attempts", || registry.stats().unreachable >= 2).await;
    assert!(registry.members().is_empty());
    assert_eq!(registry.stats().listed, 0);
    assert_eq!(members.status(), MembershipStatus::Registering);
    // An honest node is listed meanwhile.
    let honest = member(&reg_net, "honest").await;
    eventually("the honest node listed", || registry.members().len() == 1).await;
    assert_eq!(
        registry.members()[0].id,
        honest.net.local_peer_id(),
        "only the node that proved its address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compatibility_mismatch_stops_the_node_with_its_reason() {
    let (reg_net, registry) = registry_at(free_addr(), &Keypair::generate(), 7).await;
    let (net, _inbox) = node(cfg()).await;
    let members = net
        .membership(
            MembershipConfig::new(REG, reg_net.local_addr(), reg_net.local_peer_id()).compat(6),
        )
        .unwrap();
    eventually("stopped", || {
        matches!(members.status(), MembershipStatus::Stopped(_))
    })
    .await;
    let expected = MembershipError::Mismatch { ours: 6, theirs: 7 };
    assert_eq!(
        members.status(),
        MembershipStatus::Stopped(Some(expected.clone()))
    );
    let text = expected.to_string();
    assert!(text.contains('6') && text.contains('7'), "{text}");
    assert!(registry.members().is_empty());
    // A name another node holds is refused for good too.
    let (reg2, _r2) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    let first = member(&reg2, "same").await;
    eventually("first listed", || first.members.members().len() == 1).await;
    let second = member(&reg2, "same").await;
    eventually("second stopped", || {
        matches!(second.members.status(), MembershipStatus::Stopped(_))
    })
    .await;
    assert_eq!(
        second.members.status(),
        MembershipStatus::Stopped(Some(MembershipError::Refused(Refusal::NameTaken)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_again_with_a_restarted_registry() {
    let key = Keypair::generate();
    let addr = free_addr();
    let (reg_net, registry) = registry_at(addr, &key, 0).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(member(&reg_net, &format!("n{i}")).await);
    }
    eventually("three listed", || registry.members().len() == 3).await;
    drop(registry);
    reg_net.abort().await;
    // Same key, same address, empty list.
    let (_reg_net, registry) = registry_at(addr, &key, 0).await;
    eventually("every node registered again", || {
        registry.members().len() == 3
    })
    .await;
    for n in &nodes {
        eventually("every node's list complete", || {
            n.members.members().len() == 3
        })
        .await;
        // Waited for, not read once: on a loaded machine a heartbeat can be late and the node
        // registers again, briefly `Registering` while its list is already complete.
        eventually("every node registered", || {
            n.members.status() == MembershipStatus::Registered
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_ask_to_connect_form_a_mesh_from_the_list() {
    let (reg_net, _registry) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    let mut nodes = Vec::new();
    for i in 0..4 {
        let (net, inbox) = node(cfg()).await;
        let members = net
            .membership(
                MembershipConfig::new(REG, reg_net.local_addr(), reg_net.local_peer_id())
                    .name(format!("m{i}"))
                    .connect_members(true),
            )
            .unwrap();
        nodes.push(Node {
            net,
            _inbox: inbox,
            members,
        });
    }
    // Each is connected to the registry and to the three others it was never given.
    for n in &nodes {
        for other in &nodes {
            if other.net.local_peer_id() != n.net.local_peer_id() {
                let id = other.net.local_peer_id();
                eventually("connected to a listed node", || n.net.is_connected(id)).await;
            }
        }
    }
    // Without the option, the list is only known.
    let (reg2, _registry2) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    let (x, y) = (member(&reg2, "x").await, member(&reg2, "y").await);
    eventually("x lists y", || x.members.resolve("y").is_some()).await;
    eventually("y lists x", || y.members.resolve("x").is_some()).await;
    // A heartbeat later (when a connecting member would dial again), still not connected.
    tokio::time::sleep(3 * BEAT).await;
    assert!(!x.net.is_connected(y.net.local_peer_id()));
    assert_eq!(x.net.peers().len(), 1, "connected to the registry only");
}

/// A member keeps its last copy of the list in its data directory: restarted on a new port
/// while the registry is down, it knows the others and connects to them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_while_the_registry_is_down_connects_from_its_kept_list() {
    let (reg_net, registry) = registry_at(free_addr(), &Keypair::generate(), 0).await;
    let dir = TempDir::new("member");
    let key = Keypair::generate();
    let at = (reg_net.local_addr(), reg_net.local_peer_id());
    let membership = |net: &Network<Bytes>| {
        net.membership(
            MembershipConfig::new(REG, at.0, at.1)
                .name("kept")
                .connect_members(true),
        )
        .unwrap()
    };
    let (net, _inbox) = node_reopening(cfg().data_dir(&dir.0), key.clone()).await;
    let members = membership(&net);
    let others = [member(&reg_net, "x").await, member(&reg_net, "y").await];
    eventually("the list complete", || members.members().len() == 3).await;
    // Down go the member and the registry.
    drop(members);
    net.abort().await;
    drop(net);
    drop(registry);
    reg_net.abort().await;
    let (net, _inbox) = node_reopening(cfg().data_dir(&dir.0), key).await;
    let members = membership(&net);
    assert_eq!(members.resolve("x"), Some(others[0].net.local_peer_id()));
    for other in &others {
        let id = other.net.local_peer_id();
        eventually("connected from the kept list", || net.is_connected(id)).await;
    }
    assert_eq!(members.status(), MembershipStatus::Registering);
}
