//! A peer that stops reading: its queue fills, try_send reports Full, it is disconnected after
//! write_timeout, and the broadcaster and other peers never stall.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::{DisconnectReason, NetworkEvent, SendError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_is_disconnected_without_stalling_the_broadcaster() {
    let cfg = config()
        .send_queue_capacity(64)
        .send_queue_bytes(1 << 20)
        .write_timeout(Duration::from_millis(800));
    let (hub, _hub_in) = node(cfg.clone()).await;
    let (fast, fast_in) = node(config()).await;
    soon("connect", fast.connect(hub.local_addr()))
        .await
        .unwrap();
    // The stalled peer completes the handshake and then never reads a byte.
    let stalled = RawPeer::connect(hub.local_addr(), "peerwire-test").await;
    let mut events = hub.events();
    eventually("both connected", || hub.peers().len() == 2).await;

    let payload = Bytes::from(vec![5u8; 16 * 1024]);
    let mut delivered_to_fast = 0usize;
    let mut skipped = 0usize;
    let started = tokio::time::Instant::now();
    // Keep broadcasting until the stalled peer has been cut off.
    while hub.is_connected(stalled.id()) {
        let report = hub.try_broadcast(&payload).unwrap();
        skipped += report.skipped_full;
        // Every skip names the peer and why: only the stalled one, for a full queue, or, in
        // the moment between the write timeout closing it and the loop seeing it gone, for
        // closing (or already gone).
        let full = report
            .skipped
            .iter()
            .filter(|s| s.1 == peerwire::Skipped::QueueFull)
            .count();
        assert_eq!(full, report.skipped_full);
        assert!(
            report.skipped.iter().all(|s| s.0 == stalled.id()
                && matches!(
                    s.1,
                    peerwire::Skipped::QueueFull
                        | peerwire::Skipped::Closing
                        | peerwire::Skipped::NotConnected
                )),
            "{:?}",
            report.skipped
        );
        // The fast peer keeps receiving while the other one is stuck.
        while fast_in.try_recv().is_ok() {
            delivered_to_fast += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(started.elapsed() < SOON, "stalled peer never disconnected");
    }
    assert!(skipped > 0, "the stalled peer's queue must have filled");
    let ev = next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Disconnected { peer, .. } if *peer == stalled.id()),
    )
    .await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: stalled.id(),
            reason: DisconnectReason::WriteStalled
        }
    );
    assert!(hub.is_connected(fast.local_peer_id()));
    // A direct send to the fast peer still goes through at once.
    hub.send(fast.local_peer_id(), &numbered(7, 8))
        .await
        .unwrap();
    assert!(delivered_to_fast > 0);
    assert!(matches!(
        hub.try_send(stalled.id(), &payload),
        Err(SendError::NotConnected(_))
    ));
    drop(stalled);
    soon("shutdown", hub.shutdown()).await;
    soon("shutdown", fast.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_reports_full_and_counts_it() {
    let cfg = config()
        .send_queue_capacity(4)
        .write_timeout(Duration::from_secs(30));
    let (hub, _hub_in) = node(cfg).await;
    let stalled = RawPeer::connect(hub.local_addr(), "peerwire-test").await;
    eventually("connected", || hub.is_connected(stalled.id())).await;
    let payload = Bytes::from(vec![1u8; 64 * 1024]);
    let mut full = 0;
    for _ in 0..2000 {
        match hub.try_send(stalled.id(), &payload) {
            Ok(()) => {}
            Err(SendError::Full(p)) => {
                assert_eq!(p, stalled.id());
                full += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(full > 0);
    let info = peer_info(&hub, stalled.id()).unwrap();
    assert_eq!(info.stats.dropped_queue_full, full);
    assert!(info.stats.queued_messages <= 4);
    soon("shutdown", hub.shutdown()).await;
}
