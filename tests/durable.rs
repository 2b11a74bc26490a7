//! Durable peers (`Config::durable_peer`): messages accepted for them survive the sender's own
//! crash (`abort`, no goodbye, no flush) and are delivered after its restart, exactly once and
//! in order, whether the peer was away the whole time or was receiving when the sender died.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use peerwire::{Config, Keypair, Network, PeerId, StartError};

fn sender_config(dir: &TempDir, receiver: std::net::SocketAddr, id: PeerId) -> Config {
    config().data_dir(&dir.0).durable_peer(receiver, id)
}

/// Asserts `got` is exactly 0, 1, ..., n - 1, naming the first place it is not (not the whole
/// list: it is thousands long).
fn assert_exactly_once_in_order(got: &[u32], n: u32) {
    if let Some(at) =
        (0..got.len().max(n as usize)).find(|&i| got.get(i).copied() != Some(i as u32))
    {
        panic!(
            "{} messages, expected {n} numbered in order: at position {at} got {:?} (around: {:?})",
            got.len(),
            got.get(at),
            &got[at.saturating_sub(3)..(at + 3).min(got.len())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_with_10_000_unacknowledged_messages_delivers_them_after_its_restart() {
    const N: u32 = 10_000;
    let dir = TempDir::new("durable-away");
    let (a_key, b_key) = (Keypair::generate(), Keypair::generate());
    let b_addr = free_addr();
    let a_config = sender_config(&dir, b_addr, b_key.peer_id());
    // B is away: every message waits, on disk, unacknowledged.
    let (a, _a_inbox) = node_reopening(a_config.clone(), a_key.clone()).await;
    for i in 0..N {
        a.send(b_key.peer_id(), &numbered(i, 64)).await.unwrap();
    }
    assert_eq!(a.pending(b_key.peer_id()).unwrap().messages, N as usize);
    a.abort().await;
    drop(a);
    // A restarts from its directory; then B comes up at the address A dials.
    let (a, _a_inbox) = node_reopening(a_config, a_key.clone()).await;
    assert_eq!(
        a.pending(b_key.peer_id()).unwrap().messages,
        N as usize,
        "read back from the data directory"
    );
    let b_id = b_key.peer_id();
    let (b, mut b_inbox) = Network::<Bytes>::start(config().listen(b_addr), b_key)
        .await
        .unwrap();
    let got = numbers_from(&mut b_inbox, a_key.peer_id(), N as usize).await;
    assert_exactly_once_in_order(&got, N);
    // New messages follow the kept ones: nothing was delivered twice before them.
    a.send(b_id, &numbered(N, 64)).await.unwrap();
    assert_eq!(numbers_from(&mut b_inbox, a_key.peer_id(), 1).await, [N]);
    eventually("everything acknowledged", || {
        a.pending(b_id).unwrap().messages == 0
    })
    .await;
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_stream_resends_only_what_was_not_delivered() {
    const FIRST: u32 = 5_000;
    const MORE: u32 = 500;
    let dir = TempDir::new("durable-mid");
    let a_key = Keypair::generate();
    let (b, mut b_inbox) = node(config()).await;
    let b_key_id = b.local_peer_id();
    let a_config = sender_config(&dir, b.local_addr(), b_key_id);
    let (a, _a_inbox) = node_reopening(a_config.clone(), a_key.clone()).await;
    eventually("a connected to b", || a.is_connected(b_key_id)).await;
    for i in 0..FIRST {
        a.send(b_key_id, &numbered(i, 64)).await.unwrap();
    }
    // Killed while B is still taking them: some delivered and acknowledged, some in flight,
    // some not yet written.
    let early = numbers_from(&mut b_inbox, a_key.peer_id(), 100).await;
    a.abort().await;
    drop(a);
    let (a, _a_inbox) = node_reopening(a_config, a_key.clone()).await;
    for i in FIRST..FIRST + MORE {
        a.send(b_key_id, &numbered(i, 64)).await.unwrap();
    }
    let rest = numbers_from(&mut b_inbox, a_key.peer_id(), (FIRST + MORE) as usize - 100).await;
    let all: Vec<u32> = early.into_iter().chain(rest).collect();
    assert_exactly_once_in_order(&all, FIRST + MORE);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn a_durable_peer_needs_a_data_directory() {
    let id = Keypair::generate().peer_id();
    let config = config().durable_peer(free_addr(), id);
    let Err(StartError::InvalidConfig(why)) =
        Network::<Bytes>::start(config, Keypair::generate()).await
    else {
        panic!("started without a data directory");
    };
    assert!(why.contains("data_dir"), "{why}");
}
