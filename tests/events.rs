//! Event subscribers: bounded, and one that falls behind is told how many events it missed
//! instead of holding memory or stalling the node.

#![allow(
    clippy::unwrap_used,
    reason = "a panic with the value is the test's report"
)]

mod common;

use common::*;
use peerwire::NetworkEvent;
use tokio::sync::broadcast::error::RecvError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_is_told_how_many_events_it_missed() {
    let (hub, _hub_in) = node(config().event_capacity(2)).await;
    let mut events = hub.events();
    let mut leaves = Vec::new();
    for _ in 0..5 {
        let (leaf, leaf_in) = node(config()).await;
        soon("connect", hub.connect(leaf.local_addr()))
            .await
            .unwrap();
        leaves.push((leaf, leaf_in));
    }
    // Five Connected events into a buffer of two: the three oldest are gone, and said so.
    let first = soon("the first recv", events.recv()).await;
    assert_eq!(first, Err(RecvError::Lagged(3)));
    // The newest two are kept, and nothing else is buffered.
    for _ in 0..2 {
        let event = soon("a kept event", events.recv()).await.unwrap();
        assert!(matches!(event, NetworkEvent::Connected { .. }), "{event:?}");
    }
    assert!(matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    // The node was never held up by the subscriber: every connection is open.
    assert_eq!(hub.peers().len(), 5);
    soon("shutdown", hub.shutdown()).await;
    for (leaf, _) in leaves {
        soon("shutdown", leaf.shutdown()).await;
    }
}

/// A persistent peer is dialed as the node starts: its `Connected` can come before the
/// application subscribes. The first `events()` still has it; later ones start from then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_subscriber_sees_the_events_since_start() {
    let (peer, _peer_in) = node(config()).await;
    let (net, _net_in) =
        node(config().persistent_peer(peer.local_addr(), peer.local_peer_id())).await;
    // Connected before anyone subscribed.
    eventually("the persistent peer connected", || {
        net.is_connected(peer.local_peer_id())
    })
    .await;
    let mut first = net.events();
    let event = soon("the first subscriber's first event", first.recv())
        .await
        .unwrap();
    assert!(
        matches!(event, NetworkEvent::Connected { peer: p, .. } if p == peer.local_peer_id()),
        "{event:?}"
    );
    // A later subscriber starts from now: nothing is waiting for it.
    let mut later = net.events();
    assert!(matches!(
        later.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    soon("shutdown", net.shutdown()).await;
    soon("shutdown", peer.shutdown()).await;
}
