//! Peer exchange over loopback: nodes that know only a seed find and connect to each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use peerwire::protocols::discovery::DiscoveryConfig;
use peerwire::{ChannelSpec, Keypair};

const PEX: u16 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_that_know_only_a_seed_connect_to_each_other() {
    const N: usize = 8;
    let cfg = config().channel(PEX, ChannelSpec::high());
    let (seed, _) = node(cfg.clone()).await;
    // Every node is on 127.0.0.1: the book's network caps (made for the Internet) are raised.
    let pex = || {
        DiscoveryConfig::new(PEX)
            .target_peers(N)
            .subnet_caps(64, 64, 64)
    };
    let seed_discovery = seed.discovery(pex()).unwrap();
    let mut nodes = Vec::new();
    for _ in 0..N {
        let (net, inbox) = node(cfg.clone()).await;
        let discovery = net.discovery(pex()).unwrap();
        soon("connect", net.connect(seed.local_addr()))
            .await
            .unwrap();
        nodes.push((net, inbox, discovery));
    }
    // Each node ends up connected to the seed and to the 7 others, which it was never told.
    // Polled rather than `eventually`, so that a failure shows every node's view.
    let deadline = tokio::time::Instant::now() + SOON;
    while nodes.iter().any(|(net, _, _)| net.peers().len() != N)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let views: Vec<String> = nodes
        .iter()
        .map(|(net, _, d)| {
            let s = net.stats();
            format!(
                "{} peers, {} known, refused {:?}, handshake failures {:?}, disconnects {:?}",
                net.peers().len(),
                d.known().len(),
                s.inbound_refused,
                s.handshake_failures,
                s.disconnects
            )
        })
        .collect();
    assert!(
        nodes.iter().all(|(net, _, _)| net.peers().len() == N),
        "not a full mesh through peer exchange:\n{}",
        views.join("\n")
    );
    // What the seed holds is what the nodes signed: each id with its listening address, every
    // one of them (on loopback all entries share a bucket; colliding ones probe for a free
    // slot instead of being dropped).
    let known = seed_discovery.known();
    let real: Vec<_> = nodes
        .iter()
        .map(|(net, _, _)| (net.local_peer_id(), net.local_addr()))
        .collect();
    assert_eq!(known.len(), N, "the seed holds {known:?}");
    for entry in &known {
        assert!(real.contains(entry), "{entry:?} is no node's record");
    }
    // Nodes that dialed others keep them as anchors.
    assert!(nodes.iter().any(|(_, _, d)| !d.anchors().is_empty()));
}

/// Nodes keep their address book in their data directory: one restarted on a new port, with the
/// seed gone and no peer given, dials the peers it had reached before, by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reconnects_from_its_data_directory_without_the_seed() {
    const N: usize = 4;
    let dirs: Vec<TempDir> = (0..N).map(|i| TempDir::new(&format!("pex{i}"))).collect();
    let cfg = config().channel(PEX, ChannelSpec::high());
    let pex = || {
        DiscoveryConfig::new(PEX)
            .target_peers(N)
            .subnet_caps(64, 64, 64)
    };
    let (seed, _) = node(cfg.clone()).await;
    let _seed_discovery = seed.discovery(pex()).unwrap();
    let keys: Vec<Keypair> = (0..N).map(|_| Keypair::generate()).collect();
    let mut nodes = Vec::new();
    for (key, dir) in keys.iter().zip(&dirs) {
        let (net, inbox) = node_reopening(cfg.clone().data_dir(&dir.0), key.clone()).await;
        let discovery = net.discovery(pex()).unwrap();
        soon("connect", net.connect(seed.local_addr()))
            .await
            .unwrap();
        nodes.push((net, inbox, discovery));
    }
    for (net, _, _) in &nodes {
        eventually("a full mesh", || net.peers().len() == N).await;
    }
    // The first node goes; so does the seed.
    let (first, _, discovery) = nodes.remove(0);
    // Its book holds the seed and the 3 others (the exchanges on each connection).
    eventually("the first node's book complete", || {
        discovery.known().len() == N
    })
    .await;
    drop(discovery);
    soon("shutdown", first.shutdown()).await;
    drop(first);
    soon("shutdown", seed.shutdown()).await;
    // Back on another port, told nothing.
    let (again, _inbox) = node_reopening(cfg.clone().data_dir(&dirs[0].0), keys[0].clone()).await;
    let _discovery = again.discovery(pex()).unwrap();
    for (net, _, _) in &nodes {
        let id = net.local_peer_id();
        eventually("reconnected to a peer from the book", || {
            again.is_connected(id)
        })
        .await;
    }
}
