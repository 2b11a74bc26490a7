//! What a consensus engine needs: its own messages back, a receiver for threads, `connect`
//! that means both sides are connected, raw bytes untouched, a crash it can simulate, and a
//! blocking face for a synchronous loop.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::{
    Backoff, ChannelSpec, DisconnectReason, Keypair, Network, NetworkEvent, PeerId,
    RecvTimeoutError, SendError, Skipped,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_delivery_is_tagged_with_the_local_id_and_in_order() {
    let cfg = config()
        .deliver_to_self(true)
        .channel(1, ChannelSpec::critical().deliver_to_self(true))
        .channel(2, ChannelSpec::normal());
    let (a, a_in) = node(cfg.clone()).await;
    let (b, b_in) = node(cfg).await;
    let me = a.local_peer_id();
    soon("connect", a.connect(b.local_addr())).await.unwrap();
    for i in 0..100u32 {
        if i % 3 == 0 {
            let report = a.broadcast(&numbered(i, 16)).await.unwrap();
            assert_eq!(report.queued, 2, "b and a itself");
            assert!(report.skipped.is_empty());
        } else if i % 3 == 1 {
            a.send(me, &numbered(i, 16)).await.unwrap();
        } else {
            a.try_send(me, &numbered(i, 16)).unwrap();
        }
    }
    for i in 0..100u32 {
        let (from, msg) = soon("own message", a_in.recv()).await.unwrap();
        assert_eq!((from, number_of(&msg)), (me, i), "tagged and in order");
    }
    // b got the broadcasts only.
    for i in (0..100u32).step_by(3) {
        let (from, msg) = soon("broadcast", b_in.recv()).await.unwrap();
        assert_eq!((from, number_of(&msg)), (me, i));
    }
    assert!(b_in.is_empty());

    // Per channel: 1 delivers to itself, 2 does not.
    let (votes, votes_in) = a.channel::<u64>(1).unwrap();
    let (bulk, _bulk_in) = a.channel::<u64>(2).unwrap();
    votes.send(me, &7).await.unwrap();
    assert_eq!(votes.try_broadcast(&8).unwrap().queued, 2);
    assert_eq!(soon("vote", votes_in.recv()).await, Some((me, 7)));
    assert_eq!(soon("vote", votes_in.recv()).await, Some((me, 8)));
    assert!(matches!(
        bulk.send(me, &9).await,
        Err(SendError::NotConnected(p)) if p == me
    ));
    assert_eq!(bulk.try_broadcast(&9).unwrap().queued, 1, "b only");
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_own_inbox_refuses_and_counts_and_names_itself() {
    let (a, a_in) = node(config().deliver_to_self(true).inbox_capacity(2)).await;
    let me = a.local_peer_id();
    a.try_send(me, &numbered(0, 8)).unwrap();
    a.try_send(me, &numbered(1, 8)).unwrap();
    assert!(matches!(a.try_send(me, &numbered(2, 8)), Err(SendError::Full(p)) if p == me));
    let report = a.try_broadcast(&numbered(3, 8)).unwrap();
    assert_eq!(report.skipped, vec![(me, Skipped::QueueFull)]);
    assert_eq!(a.stats().self_inbox_full, 2);
    assert!(
        a.metrics_text()
            .contains("peerwire_dropped_total{reason=\"self_inbox_full\"} 2")
    );
    assert_eq!(number_of(&a_in.try_recv().unwrap().1), 0);
    soon("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_connect_returns_the_remote_has_admitted_the_connection() {
    // Without the welcome, the dialer's connect returned when its own side admitted the
    // connection, and the remote published the peer a moment later: is_connected on the remote
    // read false and its first send failed with NotConnected.
    for round in 0..40u32 {
        let (a, a_in) = node(config()).await;
        let (b, _b_in) = node(config()).await;
        let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
        assert!(
            b.is_connected(a.local_peer_id()),
            "round {round}: the remote must know the dialer when connect returns"
        );
        b.try_send(a.local_peer_id(), &numbered(round, 8)).unwrap();
        a.try_send(b_id, &numbered(round, 8)).unwrap();
        let (from, msg) = soon("reply", a_in.recv()).await.unwrap();
        assert_eq!((from, number_of(&msg)), (b_id, round));
        soon("shutdown", a.shutdown()).await;
        soon("shutdown", b.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_arrive_byte_identical_on_every_channel() {
    let cfg = config()
        .max_message_size(8 << 20)
        .channel(1, ChannelSpec::critical())
        .channel(2, ChannelSpec::bulk());
    let (a, _a_in) = node(cfg.clone()).await;
    let (b, b_in) = node(cfg).await;
    let (a1, _) = a.channel::<Bytes>(1).unwrap();
    let (a2, _) = a.channel::<Bytes>(2).unwrap();
    let (_, b1) = b.channel::<Bytes>(1).unwrap();
    let (_, b2) = b.channel::<Bytes>(2).unwrap();
    let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
    let pattern = |len: usize, seed: u8| -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8)
            .collect::<Vec<_>>()
            .into()
    };
    // Empty, tiny, small (copied into the arena), large (a slice of its frame), and larger
    // than a frame (reassembled from fragments).
    let sizes = [0usize, 1, 64, 1000, 40 * 1024, 200 * 1024, 3 << 20];
    for (k, &len) in sizes.iter().enumerate() {
        let seed = k as u8 * 2 + 1;
        a.send(b_id, &pattern(len, seed)).await.unwrap();
        a1.send(b_id, &pattern(len.min(1 << 20), seed + 1))
            .await
            .unwrap();
        a2.send(b_id, &pattern(len, seed + 2)).await.unwrap();
    }
    for (k, &len) in sizes.iter().enumerate() {
        let seed = k as u8 * 2 + 1;
        let (_, m0) = soon("channel 0", b_in.recv()).await.unwrap();
        let (_, m1) = soon("channel 1", b1.recv()).await.unwrap();
        let (_, m2) = soon("channel 2", b2.recv()).await.unwrap();
        assert!(m0 == pattern(len, seed), "channel 0, {len} bytes");
        assert!(m1 == pattern(len.min(1 << 20), seed + 1), "channel 1");
        assert!(m2 == pattern(len, seed + 2), "channel 2, {len} bytes");
    }
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_is_a_crash_and_the_restarted_node_gets_the_persistent_stream() {
    let a_key = Keypair::generate();
    let a_addr = free_addr();
    let a_id = a_key.peer_id();
    let backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        jitter_permille: 200,
    };
    // b keeps a reliable stream to a.
    let (b, _b_in) = node(config().persistent_peer(a_addr, a_id).backoff(backoff)).await;
    let mut events = b.events();
    let (a, a_in) = Network::<Bytes>::start(config().listen(a_addr), a_key.clone())
        .await
        .unwrap();
    eventually("b connected to a", || b.is_connected(a_id)).await;
    for i in 0..50 {
        b.send(a_id, &numbered(i, 32)).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(number_of(&soon("before", a_in.recv()).await.unwrap().1), i);
    }
    a.abort().await;
    let ev = next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Disconnected { peer, .. } if *peer == a_id),
    )
    .await;
    let NetworkEvent::Disconnected { reason, .. } = ev else {
        unreachable!()
    };
    assert!(
        !matches!(reason, DisconnectReason::RemoteGoodbye(_)),
        "a crash says no goodbye: {reason:?}"
    );
    assert_eq!(a_in.recv().await, None, "the aborted node's inbox ends");
    // Accepted while a is down, delivered to the restarted process.
    for i in 50..100 {
        b.send(a_id, &numbered(i, 32)).await.unwrap();
    }
    let (a2, a2_in) = Network::<Bytes>::start(config().listen(a_addr), a_key)
        .await
        .unwrap();
    // What the crashed process never acknowledged is resent (it may have been delivered
    // before the crash: the new process cannot know), then the rest, in order, none missing.
    let (from, first) = soon("after restart", a2_in.recv()).await.unwrap();
    assert_eq!(from, b.local_peer_id());
    let first = number_of(&first);
    assert!(
        first <= 50,
        "nothing sent while a was down is lost: {first}"
    );
    for i in first + 1..100 {
        let (from, msg) = soon("after restart", a2_in.recv()).await.unwrap();
        assert_eq!((from, number_of(&msg)), (b.local_peer_id(), i));
    }
    soon("shutdown", a2.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

/// The blocking face from plain threads, talking to an async node that runs on a runtime of
/// its own thread: no tokio in this test's body.
#[test]
fn the_blocking_face_exchanges_messages_with_an_async_node() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    // The async node echoes every message back, doubled.
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let (net, inbox) = Network::<Vec<u8>>::start(config(), Keypair::generate())
                .await
                .unwrap();
            ready_tx.send(net.local_addr()).unwrap();
            while let Ok(Some((from, msg))) =
                tokio::time::timeout(Duration::from_secs(20), inbox.recv()).await
            {
                let reply: Vec<u8> = msg.iter().map(|b| b * 2).collect();
                net.send(from, &reply).await.unwrap();
                if msg == [0] {
                    break;
                }
            }
            let _ = stop_rx.recv_timeout(Duration::from_secs(20));
            soon("shutdown", net.shutdown()).await;
        });
    });
    let addr = ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let (net, inbox) =
        peerwire::blocking::Network::<Vec<u8>>::start(config(), Keypair::generate()).unwrap();
    let server_id: PeerId = net.connect(addr).unwrap();
    assert!(net.is_connected(server_id));
    // Another thread of the engine waits on a clone of the inbox.
    let waiter = {
        let inbox = inbox.clone();
        std::thread::spawn(move || inbox.recv_timeout(Duration::from_secs(20)))
    };
    net.send(server_id, &vec![1, 2, 3]).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok((server_id, vec![2, 4, 6])));
    let report = net.broadcast(&vec![5]).unwrap();
    assert_eq!(report.queued, 1);
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(20)),
        Ok((server_id, vec![10]))
    );
    assert_eq!(
        inbox.recv_timeout(Duration::from_millis(10)),
        Err(RecvTimeoutError::Timeout)
    );
    // Made persistent from a thread: listed, and a send to it is numbered (pending until
    // acknowledged) instead of best effort.
    assert!(net.add_persistent_peer(addr, server_id).unwrap());
    assert_eq!(net.persistent_peers()[0].id, server_id);
    assert!(net.as_async().pending(server_id).is_some());
    net.try_send(server_id, &vec![0]).unwrap();
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(20)),
        Ok((server_id, vec![0]))
    );
    assert!(net.remove_persistent_peer(server_id).unwrap());
    assert!(net.persistent_peers().is_empty());
    stop_tx.send(()).unwrap();
    net.shutdown();
    assert_eq!(inbox.blocking_recv(), None, "closed after shutdown");
    server.join().unwrap();
}

/// Dropping a clone of the blocking face changes nothing; dropping the last one shuts the node
/// down gracefully (its peer is told goodbye, not cut) and stops the runtime it owns.
#[test]
fn dropping_the_last_blocking_handle_says_goodbye_and_stops_the_runtime() {
    use peerwire::codec::GoodbyeReason;
    let (a, _a_in) =
        peerwire::blocking::Network::<Vec<u8>>::start(config(), Keypair::generate()).unwrap();
    let (b, b_in) =
        peerwire::blocking::Network::<Vec<u8>>::start(config(), Keypair::generate()).unwrap();
    let mut b_events = b.as_async().events();
    let a_id = a.local_peer_id();
    let b_id = a.connect(b.local_addr()).unwrap();
    let a_runtime = a.runtime();
    // A clone dropped: the node still runs and sends.
    let a2 = a.clone();
    drop(a);
    a2.send(b_id, &vec![7]).unwrap();
    assert_eq!(
        b_in.recv_timeout(Duration::from_secs(20)),
        Ok((a_id, vec![7]))
    );
    // The last handle dropped: b hears a goodbye for a shutdown.
    drop(a2);
    let reason = b.runtime().block_on(async {
        loop {
            match soon("a's departure", b_events.recv()).await {
                Ok(NetworkEvent::Disconnected { peer, reason }) if peer == a_id => break reason,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    });
    assert_eq!(
        reason,
        DisconnectReason::RemoteGoodbye(GoodbyeReason::Shutdown)
    );
    // The runtime a owned is gone: a task spawned on it never runs.
    let task = a_runtime.spawn(async { 1 });
    let joined = b.runtime().block_on(soon("the cancelled task", task));
    assert!(
        joined.as_ref().is_err_and(|e| e.is_cancelled()),
        "{joined:?}"
    );
    b.shutdown();
}
