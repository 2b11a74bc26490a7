//! Liveness and persistent peers: RTT measured by pings, silent peers closed at the idle
//! timeout, validators dialed at start and redialed by themselves after they come back.

mod common;

use std::time::Duration;

use common::*;
use peerwire::{DisconnectReason, Keypair, Network, NetworkEvent};

fn fast_pings() -> peerwire::Config {
    config()
        .ping_interval(Duration::from_millis(100))
        .idle_timeout(Duration::from_millis(1500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_measure_round_trip_time_per_peer() {
    let (a, _ai) = node(fast_pings()).await;
    let (b, _bi) = node(fast_pings()).await;
    soon("connect", a.connect(b.local_addr())).await.unwrap();
    eventually("rtt measured on both sides", || {
        let measured = |n: &Network<bytes::Bytes>| {
            n.peers()
                .first()
                .is_some_and(|p| p.stats.rtt.is_some() && p.stats.pongs_received > 0)
        };
        measured(&a) && measured(&b)
    })
    .await;
    let stats = a.peers()[0].stats;
    assert!(stats.pings_sent >= stats.pongs_received);
    // Measured from a real exchange (no upper bound: a loaded machine stretches it).
    assert!(stats.rtt.unwrap() > Duration::ZERO);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_closed_at_idle_timeout() {
    let (a, _ai) = node(fast_pings()).await;
    let mut events = a.events();
    // Handshakes, then never sends a byte (and never answers pings).
    let silent = RawPeer::connect(a.local_addr(), "peerwire-test").await;
    let ev = next_disconnect(&mut events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: silent.id(),
            reason: DisconnectReason::IdleTimeout
        }
    );
    soon("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_carrying_only_pings_is_never_idle() {
    let (a, _ai) = node(fast_pings()).await;
    let (b, mut b_in) = node(fast_pings()).await;
    let mut events = a.events();
    let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
    // Well past the idle timeout, with b only answering pings.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_connected(b_id));
    a.send(b_id, &numbered(1, 10)).await.unwrap();
    recv_n(&mut b_in, 1).await;
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, NetworkEvent::Disconnected { .. }), "{e:?}");
    }
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_peer_is_dialed_at_start_and_redialed_after_restart() {
    let b_key = Keypair::generate();
    let (b, _bi) = Network::<bytes::Bytes>::start(config(), b_key.clone())
        .await
        .unwrap();
    let b_addr = b.local_addr();
    let b_id = b.local_peer_id();
    let backoff = peerwire::Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(400),
        jitter_permille: 200,
    };
    let (a, _ai) = node(config().persistent_peer(b_addr, b_id).backoff(backoff)).await;
    let mut events = a.events();
    // The dial starts with the node, so its `Connected` may come before this subscription:
    // wait on the state, not on the event.
    eventually("a connected to b", || a.is_connected(b_id)).await;
    // b goes away; a keeps trying while nothing listens there.
    soon("shutdown", b.shutdown()).await;
    next_disconnect(&mut events).await;
    eventually("a retries", || a.stats().reconnects >= 2).await;
    // b comes back at the same address with the same key: a reconnects by itself.
    let (b2, mut b2_in) = Network::<bytes::Bytes>::start(config().listen(b_addr), b_key)
        .await
        .unwrap();
    next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Connected { peer, .. } if *peer == b_id),
    )
    .await;
    a.send(b_id, &numbered(5, 10)).await.unwrap();
    assert_eq!(number_of(&recv_n(&mut b2_in, 1).await[0].1), 5);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b2.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_peer_with_wrong_key_is_never_accepted() {
    let (b, _bi) = node(config()).await;
    let wrong = Keypair::generate().peer_id();
    let backoff = peerwire::Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        jitter_permille: 0,
    };
    let (a, _ai) = node(
        config()
            .persistent_peer(b.local_addr(), wrong)
            .backoff(backoff),
    )
    .await;
    eventually("several refused attempts", || {
        a.stats()
            .handshake_failures
            .get("peer_mismatch")
            .copied()
            .unwrap_or(0)
            >= 3
    })
    .await;
    assert!(a.peers().is_empty());
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}
