//! Broadcast across five nodes, and the consensus redirect carrying the proven sender.

mod common;

use std::collections::HashMap;

use common::*;
use peerwire::{Keypair, Network, PeerId};
use serde::{Deserialize, Serialize};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_broadcast_reaches_everyone_once_in_order() {
    let mut nodes = mesh(5, config()).await;
    const PER_NODE: u32 = 300;
    for i in 0..PER_NODE {
        for (net, _) in &nodes {
            let report = net.broadcast(&numbered(i, 200)).await.unwrap();
            assert_eq!(report.queued, 4);
        }
    }
    let ids: Vec<PeerId> = nodes.iter().map(|(n, _)| n.local_peer_id()).collect();
    for (k, (_, inbox)) in nodes.iter_mut().enumerate() {
        let got = recv_n(inbox, 4 * PER_NODE as usize).await;
        let mut next: HashMap<PeerId, u32> = HashMap::new();
        for (from, m) in got {
            assert_ne!(from, ids[k], "a node must not receive its own broadcast");
            let expected = next.entry(from).or_insert(0);
            assert_eq!(number_of(&m), *expected, "per-sender order");
            *expected += 1;
        }
        assert_eq!(next.len(), 4);
        assert!(next.values().all(|&n| n == PER_NODE));
    }
    // No duplicate is left: one more broadcast from each node is the next message from it on
    // every other node (each link is in order, so a duplicate would come before it; a wait and
    // `try_recv` would only see the duplicates that came within the wait).
    for (net, _) in &nodes {
        let report = net.broadcast(&numbered(PER_NODE, 200)).await.unwrap();
        assert_eq!(report.queued, 4);
    }
    for (_, inbox) in nodes.iter_mut() {
        let mut from: Vec<PeerId> = recv_n(inbox, 4)
            .await
            .into_iter()
            .map(|(from, m)| {
                assert_eq!(
                    number_of(&m),
                    PER_NODE,
                    "a duplicate came before the last broadcast"
                );
                from
            })
            .collect();
        from.sort();
        from.dedup();
        assert_eq!(from.len(), 4);
    }
    for (net, _) in &nodes {
        soon("shutdown", net.shutdown()).await;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Consensus {
    Proposal { height: u64, block: Vec<u8> },
    Vote { height: u64, approve: bool },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_messages_arrive_tagged_with_the_proven_sender() {
    let start = || Network::<Consensus>::start(config(), Keypair::generate());
    let (leader, mut leader_in) = start().await.unwrap();
    let (r1, mut r1_in) = start().await.unwrap();
    let (r2, mut r2_in) = start().await.unwrap();
    soon("connect", leader.connect(r1.local_addr()))
        .await
        .unwrap();
    soon("connect", leader.connect(r2.local_addr()))
        .await
        .unwrap();
    let proposal = Consensus::Proposal {
        height: 9,
        block: vec![7; 5000],
    };
    assert_eq!(leader.broadcast(&proposal).await.unwrap().queued, 2);
    for inbox in [&mut r1_in, &mut r2_in] {
        let (from, msg) = soon("proposal", inbox.recv()).await.unwrap();
        assert_eq!(from, leader.local_peer_id());
        assert_eq!(msg, proposal);
    }
    r1.send(
        leader.local_peer_id(),
        &Consensus::Vote {
            height: 9,
            approve: true,
        },
    )
    .await
    .unwrap();
    r2.try_send(
        leader.local_peer_id(),
        &Consensus::Vote {
            height: 9,
            approve: false,
        },
    )
    .unwrap();
    let votes = recv_n(&mut leader_in, 2).await;
    let by_sender: HashMap<PeerId, Consensus> = votes.into_iter().collect();
    assert_eq!(
        by_sender[&r1.local_peer_id()],
        Consensus::Vote {
            height: 9,
            approve: true
        }
    );
    assert_eq!(
        by_sender[&r2.local_peer_id()],
        Consensus::Vote {
            height: 9,
            approve: false
        }
    );
    for n in [&leader, &r1, &r2] {
        soon("shutdown", n.shutdown()).await;
    }
}

/// Serializations of [`Counted`] so far, in this test binary.
static SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A message that counts how often it is serialized.
#[derive(Debug, Deserialize, PartialEq)]
struct Counted(u32);

impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.serialize_u32(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_encoded_once_whatever_the_number_of_peers() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(
            Network::<Counted>::start(config(), Keypair::generate())
                .await
                .unwrap(),
        );
    }
    for j in 1..4 {
        let addr = nodes[j].0.local_addr();
        soon("connect", nodes[0].0.connect(addr)).await.unwrap();
    }
    eventually("three peers", || nodes[0].0.peers().len() == 3).await;
    // What one send costs in serializations (the codec may size before it writes).
    let before = SERIALIZED.load(SeqCst);
    let one = nodes[1].0.local_peer_id();
    soon("send", nodes[0].0.send(one, &Counted(1)))
        .await
        .unwrap();
    let per_encoding = SERIALIZED.load(SeqCst) - before;
    assert!(per_encoding >= 1);
    // A broadcast to three peers costs the same, not three times as much.
    let before = SERIALIZED.load(SeqCst);
    let report = soon("broadcast", nodes[0].0.broadcast(&Counted(2)))
        .await
        .unwrap();
    assert_eq!(report.queued, 3);
    assert_eq!(SERIALIZED.load(SeqCst) - before, per_encoding);
    // And every peer gets it.
    for (k, (_, inbox)) in nodes.iter_mut().enumerate().skip(1) {
        let got = recv_n(inbox, if k == 1 { 2 } else { 1 }).await;
        assert_eq!(got.last().map(|(_, m)| m), Some(&Counted(2)));
    }
    for (n, _) in &nodes {
        soon("shutdown", n.shutdown()).await;
    }
}
