//! Graceful shutdown: goodbye to every peer, queued messages flushed, every task joined.

mod common;

use common::*;
use peerwire::{DisconnectReason, NetworkEvent};

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_says_goodbye_and_joins_every_task() {
    let baseline = alive_tasks();
    let mut nodes = mesh(4, config()).await;
    assert!(alive_tasks() > baseline);
    let mut events = nodes[1].0.events();
    let mut own_events = nodes[0].0.events();
    // Queue a burst and shut down at once: everything accepted must still arrive.
    let target = nodes[1].0.local_peer_id();
    for i in 0..500 {
        nodes[0].0.try_send(target, &numbered(i, 1000)).unwrap();
    }
    soon("node 0's shutdown", nodes[0].0.shutdown()).await;
    let got = recv_n(&mut nodes[1].1, 500).await;
    for (i, (_, m)) in got.iter().enumerate() {
        assert_eq!(number_of(m), i as u32);
    }
    let ev = next_disconnect(&mut events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: nodes[0].0.local_peer_id(),
            reason: DisconnectReason::RemoteGoodbye(peerwire::codec::GoodbyeReason::Shutdown)
        }
    );
    assert!(nodes[0].0.connections().is_empty());
    // The node that shut down reports each of its peers as gone, with the reason.
    let mut gone = Vec::new();
    while let Ok(e) = own_events.try_recv() {
        if let NetworkEvent::Disconnected { peer, reason } = e {
            assert_eq!(reason, DisconnectReason::Shutdown);
            gone.push(peer);
        }
    }
    assert_eq!(gone.len(), 3);
    assert!(
        soon("the inbox's end", nodes[0].1.recv()).await.is_none(),
        "inbox ends after shutdown"
    );
    assert!(matches!(
        soon(
            "a connect after shutdown",
            nodes[0].0.connect(nodes[2].0.local_addr())
        )
        .await,
        Err(peerwire::ConnectError::Closed)
    ));
    for (net, inbox) in &mut nodes[1..] {
        soon("a shutdown", net.shutdown()).await;
        soon("a second shutdown", net.shutdown()).await; // idempotent
        assert!(soon("the inbox's end", inbox.recv()).await.is_none());
    }
    eventually("all tasks joined", || alive_tasks() == baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_shuts_down() {
    let (a, a_in) = node(config()).await;
    let (b, _b_in) = node(config()).await;
    soon("connect", a.connect(b.local_addr())).await.unwrap();
    let mut events = b.events();
    let a_id = a.local_peer_id();
    drop(a);
    let ev = next_disconnect(&mut events).await;
    assert!(matches!(ev, NetworkEvent::Disconnected { peer, .. } if peer == a_id));
    assert!(soon("inbox closes", a_in.recv()).await.is_none());
    soon("shutdown", b.shutdown()).await;
}

/// A peer that never reads cannot hold a shutdown beyond `shutdown_timeout`: its connection is
/// cut, while an honest peer beside it is still told goodbye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_beside_a_peer_that_never_reads() {
    let (hub, _hub_in) = node(
        config()
            .shutdown_timeout(std::time::Duration::from_secs(1))
            // Only the shutdown may end the stalled connection here.
            .write_timeout(std::time::Duration::from_secs(3600))
            .idle_timeout(std::time::Duration::from_secs(3600))
            .send_queue_capacity(64),
    )
    .await;
    let (honest, _honest_in) = node(config()).await;
    let mut honest_events = honest.events();
    soon("connect", honest.connect(hub.local_addr()))
        .await
        .unwrap();
    let mut stalled = RawPeer::connect(hub.local_addr(), "peerwire-test").await;
    eventually("both connected", || hub.peers().len() == 2).await;
    // Fill the socket and the queue towards the peer that never reads.
    let payload = bytes::Bytes::from(vec![9u8; 64 * 1024]);
    soon("a full queue", async {
        while hub.try_send(stalled.id(), &payload).is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    // `soon` fails the test if the shutdown waits for the stalled peer for ever.
    soon("a shutdown beside a peer that never reads", hub.shutdown()).await;
    assert!(hub.connections().is_empty());
    let ev = next_disconnect(&mut honest_events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: hub.local_peer_id(),
            reason: DisconnectReason::RemoteGoodbye(peerwire::codec::GoodbyeReason::Shutdown)
        }
    );
    assert!(soon("the cut", stalled.closed_by_remote()).await);
    soon("shutdown", honest.shutdown()).await;
}
