//! Persistent and durable peers added and removed while the node runs
//! (`Network::add_persistent_peer`, `add_durable_peer`, `remove_persistent_peer`): they behave
//! like those in the `Config`, and with a data directory a restarted node takes them back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use peerwire::{Keypair, Network, PeerId, PersistError, SendError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_made_persistent_at_runtime_is_redialed_and_gets_what_was_sent_while_away() {
    let b_key = Keypair::generate();
    let b_id = b_key.peer_id();
    let b_addr = free_addr();
    let (b, mut b_inbox) = Network::<Bytes>::start(config().listen(b_addr), b_key.clone())
        .await
        .unwrap();
    let (a, _a_inbox) = node(config()).await;
    let mut a_events = a.events();
    a.connect_to(b_addr, b_id).await.unwrap();
    for i in 0..10 {
        a.send(b_id, &numbered(i, 32)).await.unwrap();
    }
    assert_eq!(a.pending(b_id), None, "an ordinary peer has no stream");
    assert!(a.add_persistent_peer(b_addr, b_id).await.unwrap());
    // The connection opened without the streams is flushed, closed and dialed again.
    let peerwire::NetworkEvent::Disconnected { peer, reason } =
        next_disconnect(&mut a_events).await
    else {
        unreachable!()
    };
    assert_eq!(
        (peer, reason),
        (b_id, peerwire::DisconnectReason::Requested)
    );
    assert_eq!(
        numbers_from(&mut b_inbox, a.local_peer_id(), 10).await,
        (0..10).collect::<Vec<_>>(),
        "what was queued before is delivered first"
    );
    eventually("a redialed b", || a.is_connected(b_id)).await;
    // B goes away; what A sends meanwhile is accepted and waits for it.
    soon("shutdown", b.shutdown()).await;
    drop(b);
    drop(b_inbox);
    eventually("b gone", || !a.is_connected(b_id)).await;
    for i in 10..110 {
        a.send(b_id, &numbered(i, 32)).await.unwrap();
    }
    assert_eq!(a.pending(b_id).unwrap().messages, 100);
    // B comes back at the same address knowing nothing of A: A dials it.
    let (b, mut b_inbox) = Network::<Bytes>::start(config().listen(b_addr), b_key)
        .await
        .unwrap();
    assert_eq!(
        numbers_from(&mut b_inbox, a.local_peer_id(), 100).await,
        (10..110).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    eventually("everything acknowledged", || {
        a.pending(b_id).is_some_and(|p| p.messages == 0)
    })
    .await;
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_at_runtime_come_back_after_a_restart_and_removed_ones_do_not() {
    let dir = TempDir::new("runtime-peers");
    let a_key = Keypair::generate();
    let a_config = config().data_dir(&dir.0);
    let (b, _b_inbox) = node(config()).await;
    let (c, mut c_inbox) = node(config()).await;
    let (b_id, c_id) = (b.local_peer_id(), c.local_peer_id());
    let (a, _a_inbox) = node_reopening(a_config.clone(), a_key.clone()).await;
    assert!(a.add_persistent_peer(b.local_addr(), b_id).await.unwrap());
    assert!(a.add_durable_peer(c.local_addr(), c_id).await.unwrap());
    let listed = |peers: Vec<peerwire::PersistentPeer>| -> Vec<(PeerId, bool)> {
        let mut out: Vec<_> = peers.iter().map(|p| (p.id, p.durable)).collect();
        out.sort_by_key(|(id, _)| *id.as_bytes());
        out
    };
    let mut both = vec![(b_id, false), (c_id, true)];
    both.sort_by_key(|(id, _)| *id.as_bytes());
    assert_eq!(listed(a.persistent_peers().await), both);
    soon("shutdown", a.shutdown()).await;
    drop(a);

    // Restarted with no peer in its Config: it takes both back and dials them.
    let (a, _a_inbox) = node_reopening(a_config.clone(), a_key.clone()).await;
    assert_eq!(listed(a.persistent_peers().await), both);
    eventually("a dialed b and c from its data directory", || {
        a.is_connected(b_id) && a.is_connected(c_id)
    })
    .await;
    a.send(c_id, &numbered(7, 32)).await.unwrap();
    assert_eq!(numbers_from(&mut c_inbox, a_key.peer_id(), 1).await, [7]);
    eventually("c acknowledged", || {
        a.pending(c_id).is_some_and(|p| p.messages == 0)
    })
    .await;

    let mut a_events = a.events();
    assert!(a.remove_persistent_peer(c_id).await.unwrap());
    assert!(!a.remove_persistent_peer(c_id).await.unwrap());
    assert_eq!(listed(a.persistent_peers().await), vec![(b_id, false)]);
    assert_eq!(a.pending(c_id), None);
    // Its connection, which carried the numbered streams, is closed; nothing redials it.
    let peerwire::NetworkEvent::Disconnected { peer, reason } =
        next_disconnect(&mut a_events).await
    else {
        unreachable!()
    };
    assert_eq!(
        (peer, reason),
        (c_id, peerwire::DisconnectReason::Requested)
    );
    assert!(matches!(
        a.send(c_id, &numbered(8, 32)).await,
        Err(SendError::NotConnected(_))
    ));
    // It may connect again, as an ordinary peer.
    a.connect_to(c.local_addr(), c_id).await.unwrap();
    a.send(c_id, &numbered(8, 32)).await.unwrap();
    assert_eq!(numbers_from(&mut c_inbox, a_key.peer_id(), 1).await, [8]);
    soon("shutdown", a.shutdown()).await;
    drop(a);

    // Restarted again: only B is back. C is an ordinary peer now: a send to it while it is
    // not connected is refused, where a persistent peer's would wait for it.
    let (a, _a_inbox) = node_reopening(a_config, a_key).await;
    assert_eq!(listed(a.persistent_peers().await), vec![(b_id, false)]);
    assert_eq!(a.pending(c_id), None);
    assert!(a.pending(b_id).is_some());
    assert!(!a.is_connected(c_id), "nothing dials c");
    assert!(matches!(
        a.send(c_id, &numbered(9, 32)).await,
        Err(SendError::NotConnected(_))
    ));
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
    soon("shutdown", c.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_peer_added_at_runtime_gets_everything_after_the_senders_crash() {
    const N: u32 = 1_000;
    let dir = TempDir::new("runtime-durable");
    let (a_key, b_key) = (Keypair::generate(), Keypair::generate());
    let b_addr = free_addr();
    let a_config = config().data_dir(&dir.0);
    let (a, _a_inbox) = node_reopening(a_config.clone(), a_key.clone()).await;
    // B is away the whole time.
    assert!(a.add_durable_peer(b_addr, b_key.peer_id()).await.unwrap());
    for i in 0..N {
        a.send(b_key.peer_id(), &numbered(i, 64)).await.unwrap();
    }
    a.abort().await;
    drop(a);
    let (a, _a_inbox) = node_reopening(a_config, a_key.clone()).await;
    assert_eq!(a.pending(b_key.peer_id()).unwrap().messages, N as usize);
    let (b, mut b_inbox) = Network::<Bytes>::start(config().listen(b_addr), b_key)
        .await
        .unwrap();
    assert_eq!(
        numbers_from(&mut b_inbox, a_key.peer_id(), N as usize).await,
        (0..N).collect::<Vec<_>>()
    );
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_persistent_peer_lets_go_of_its_messages_and_counts_them() {
    let dir = TempDir::new("runtime-remove");
    let a_key = Keypair::generate();
    let a_config = config().data_dir(&dir.0);
    let (a, _a_inbox) = node_reopening(a_config.clone(), a_key.clone()).await;
    // Nobody listens at either address: everything waits.
    let (plain, durable) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
    a.add_persistent_peer(free_addr(), plain).await.unwrap();
    a.add_durable_peer(free_addr(), durable).await.unwrap();
    for i in 0..5 {
        a.send(plain, &numbered(i, 32)).await.unwrap();
        a.send(durable, &numbered(i, 32)).await.unwrap();
    }
    a.send(durable, &numbered(5, 32)).await.unwrap();
    assert!(a.remove_persistent_peer(plain).await.unwrap());
    assert_eq!(a.stats().persistent_removed, 5);
    assert!(a.remove_persistent_peer(durable).await.unwrap());
    assert_eq!(a.stats().persistent_removed, 11);
    assert!(
        a.metrics_text()
            .contains("peerwire_dropped_total{reason=\"persistent_removed\"} 11"),
        "{}",
        a.metrics_text()
    );
    for peer in [plain, durable] {
        assert_eq!(a.pending(peer), None);
        assert!(matches!(
            a.send(peer, &numbered(0, 32)).await,
            Err(SendError::NotConnected(_))
        ));
    }
    soon("shutdown", a.shutdown()).await;
    drop(a);
    // The durable peer's kept messages were deleted with it: made durable again after a
    // restart, it starts empty instead of getting the old ones.
    let (a, _a_inbox) = node_reopening(a_config, a_key).await;
    assert_eq!(a.pending(durable), None);
    a.add_durable_peer(free_addr(), durable).await.unwrap();
    assert_eq!(a.pending(durable).unwrap().messages, 0);
    soon("shutdown", a.shutdown()).await;
}

#[tokio::test]
async fn runtime_persistence_refuses_what_cannot_work() {
    let (a, _a_inbox) = node(config()).await;
    let peer = Keypair::generate().peer_id();
    assert!(matches!(
        a.add_persistent_peer(free_addr(), a.local_peer_id()).await,
        Err(PersistError::OwnId(_))
    ));
    let no_dir = a.add_durable_peer(free_addr(), peer).await.unwrap_err();
    assert!(matches!(no_dir, PersistError::NoDataDir));
    assert!(no_dir.to_string().contains("--data-dir"), "{no_dir}");
    let first = free_addr();
    assert!(a.add_persistent_peer(first, peer).await.unwrap());
    // Known: the address changes, nothing else.
    let second = free_addr();
    assert!(!a.add_persistent_peer(second, peer).await.unwrap());
    assert_eq!(a.persistent_peers().await[0].addr, second);
    let dir = TempDir::new("runtime-refuse");
    let (d, _d_inbox) = node(config().data_dir(&dir.0)).await;
    d.add_persistent_peer(first, peer).await.unwrap();
    let changed = d.add_durable_peer(first, peer).await.unwrap_err();
    assert!(
        matches!(changed, PersistError::Durability { durable: false, .. }),
        "{changed}"
    );
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", d.shutdown()).await;
    assert!(matches!(
        a.add_persistent_peer(first, Keypair::generate().peer_id())
            .await,
        Err(PersistError::Closed)
    ));
}
