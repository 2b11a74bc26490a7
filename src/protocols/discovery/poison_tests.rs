//! Address-book poisoning over real connections: an attacker holding a whole /24 (200 nodes,
//! one per address, on loopback's 127.66.0.0/24) connects to a victim and answers every
//! exchange with 1,000 validly signed records at addresses all over the address space. The
//! victim, whose outbound slots are held by honest peers, ends with at most 10 of them in its
//! book and none among its outbound connections. (The pure form, with the book alone, is in
//! `peers/book_tests.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::DiscoveryConfig;
use super::task::{Ask, Peers};
use crate::peers::record::PeerRecord;
use crate::session::Direction;
use crate::{ChannelSpec, Config, Keypair, Network};

const PEX: u16 = 30;
const ATTACKERS: u8 = 200;
const HONEST: u8 = 8;

fn config(ip: [u8; 4]) -> Config {
    Config::default()
        .listen(SocketAddr::from((ip, 0)))
        .dial_from(ip.into())
        .network_id("poison")
        .channel(PEX, ChannelSpec::high())
        .shutdown_timeout(Duration::from_secs(1))
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoning_slash_24_gets_at_most_10_entries_and_no_outbound_slot() {
    // Honest peers, each in a /16 of its own.
    let mut honest = Vec::new();
    for k in 0..HONEST {
        let (net, _) = Network::<Bytes>::start(config([127, 10 + k, 0, 1]), Keypair::generate())
            .await
            .unwrap();
        let discovery = net.discovery(PEX).unwrap();
        honest.push((net, discovery));
    }
    let mut victim_config = config([127, 0, 0, 1]);
    victim_config.max_inbound = 256;
    let (victim, _inbox) = Network::<Bytes>::start(victim_config, Keypair::generate())
        .await
        .unwrap();
    let discovery = victim.discovery(DiscoveryConfig::new(PEX)).unwrap();
    for (net, _) in &honest {
        victim
            .connect_to(net.local_addr(), net.local_peer_id())
            .await
            .unwrap();
    }
    let honest_ids: Vec<_> = honest.iter().map(|(n, _)| n.local_peer_id()).collect();

    // 1,000 records, properly signed by throwaway keys, at addresses in 1,000 /24s.
    let forged: Arc<Vec<PeerRecord>> = Arc::new(
        (0..1000u32)
            .map(|i| {
                let addr = SocketAddr::from(([100, (i / 250) as u8, (i % 250) as u8, 1], 7000));
                PeerRecord::sign(&Keypair::generate(), vec![addr], 1, None, None).unwrap()
            })
            .collect(),
    );
    let asked = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for host in 1..=ATTACKERS {
        let (net, _) = Network::<Bytes>::start(config([127, 66, 0, host]), Keypair::generate())
            .await
            .unwrap();
        let (_client, mut server) = net.rpc::<Ask, Peers>(PEX).unwrap();
        let (forged, asked) = (forged.clone(), asked.clone());
        tokio::spawn(async move {
            while let Some(request) = server.recv().await {
                asked.fetch_add(1, Ordering::Relaxed);
                let _ = request.respond(&Peers {
                    records: forged.as_ref().clone(),
                });
            }
        });
        // Inbound to the victim, which has room for all of them: the strongest attack.
        net.connect(victim.local_addr()).await.unwrap();
        attackers.push(net);
    }
    let attackers_in = victim
        .peers()
        .iter()
        .filter(|p| p.peer.is_some_and(|id| !honest_ids.contains(&id)))
        .count();
    assert_eq!(
        attackers_in,
        usize::from(ATTACKERS),
        "every attacker got in"
    );
    // The victim asks each new neighbour once: wait until every connected attacker answered.
    eventually("every attacker asked", || {
        asked.load(Ordering::Relaxed) >= attackers_in
    })
    .await;
    // Let the victim's ticks pass (asking again, dialing from its book).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let known = discovery.known();
    let poisoned = known
        .iter()
        .filter(|(id, _)| !honest_ids.contains(id))
        .count();
    assert!(
        poisoned <= 10,
        "{poisoned} attacker entries in the book of {} (from {attackers_in} attackers)",
        known.len()
    );
    for info in victim.peers() {
        if info.direction == Direction::Outbound {
            let id = info.peer.unwrap();
            assert!(
                honest_ids.contains(&id),
                "an outbound slot went to {id} at {}",
                info.addr
            );
        }
    }
    let outbound = victim
        .peers()
        .iter()
        .filter(|p| p.direction == Direction::Outbound)
        .count();
    assert_eq!(outbound, usize::from(HONEST), "honest outbound peers kept");
    victim.shutdown().await;
}
