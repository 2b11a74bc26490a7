//! Two nodes over real loopback TCP: connect, send both ways in order, peers and events.

mod common;

use common::*;
use peerwire::{Direction, DisconnectReason, Network, NetworkEvent, SocketState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_both_ways_in_order() {
    let (a, mut a_in) = node(config()).await;
    let (b, mut b_in) = node(config()).await;
    let mut a_events = a.events();
    let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
    assert_eq!(b_id, b.local_peer_id());
    let ev = next_event(&mut a_events, |e| {
        matches!(e, NetworkEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        ev,
        NetworkEvent::Connected {
            peer: b_id,
            addr: b.local_addr(),
            direction: Direction::Outbound
        }
    );
    eventually("b sees a", || b.is_connected(a.local_peer_id())).await;

    const N: u32 = 2000;
    for i in 0..N {
        a.send(b_id, &numbered(i, 100)).await.unwrap();
        b.send(a.local_peer_id(), &numbered(i, 37)).await.unwrap();
    }
    let at_b = recv_n(&mut b_in, N as usize).await;
    let at_a = recv_n(&mut a_in, N as usize).await;
    for (i, (from, m)) in at_b.iter().enumerate() {
        assert_eq!(*from, a.local_peer_id());
        assert_eq!(number_of(m), i as u32);
        assert_eq!(m.len(), 100);
    }
    for (i, (from, m)) in at_a.iter().enumerate() {
        assert_eq!(*from, b_id);
        assert_eq!(number_of(m), i as u32);
    }
    // Counters are published once per frame, just after its messages reach the inbox.
    eventually("counted", || {
        a.peers().first().is_some_and(|p| {
            p.stats.messages_in == u64::from(N) && p.stats.messages_out == u64::from(N)
        })
    })
    .await;
    let info = a.peers();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].peer, Some(b_id));
    assert_eq!(info[0].state, SocketState::Open);
    assert_eq!(info[0].stats.messages_out, u64::from(N));
    assert_eq!(info[0].stats.messages_in, u64::from(N));

    assert!(a.disconnect(b_id).await.unwrap());
    let ev = next_disconnect(&mut a_events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: b_id,
            reason: DisconnectReason::Requested
        }
    );
    eventually("b sees a leave", || !b.is_connected(a.local_peer_id())).await;
    // Node-wide totals keep what the departed connection carried, and say why it ended.
    eventually("a's connection is gone", || a.connections().is_empty()).await;
    let stats = a.stats();
    assert_eq!(stats.totals.messages_in, u64::from(N));
    assert_eq!(stats.totals.messages_out, u64::from(N));
    assert_eq!(stats.disconnects.get("requested"), Some(&1));
    assert!(
        a.metrics_text()
            .contains(&format!("peerwire_messages_received_total {N}\n"))
    );
    eventually("b's connection is gone", || b.connections().is_empty()).await;
    assert_eq!(b.stats().totals.messages_in, u64::from(N));
    soon("a's shutdown", a.shutdown()).await;
    soon("b's shutdown", b.shutdown()).await;
    assert!(soon("a's inbox's end", a_in.recv()).await.is_none());
    assert!(soon("b's inbox's end", b_in.recv()).await.is_none());
}

/// Two nodes started with one key (a copied key file, two processes) keep replacing each other
/// at every peer; both sides notice: the peer sees its connection replaced by one advertising
/// another address, and the twin that lost sees its connection closed as a duplicate with no
/// replacement of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_one_key_are_reported_as_an_identity_conflict() {
    let key = peerwire::Keypair::generate();
    // A short handshake timeout bounds how long the loser's departure is held.
    let twin_config = || config().handshake_timeout(std::time::Duration::from_secs(1));
    let (x, _xi) = node(config()).await;
    let (first, _fi) = Network::<bytes::Bytes>::start(twin_config(), key.clone())
        .await
        .unwrap();
    let (second, _si) = Network::<bytes::Bytes>::start(twin_config(), key)
        .await
        .unwrap();
    soon("first twin connects", first.connect(x.local_addr()))
        .await
        .unwrap();
    eventually("x sees the first twin", || {
        x.is_connected(first.local_peer_id())
    })
    .await;
    soon("second twin connects", second.connect(x.local_addr()))
        .await
        .unwrap();
    eventually("x notices", || x.stats().identity_conflicts >= 1).await;
    assert!(
        x.metrics_text()
            .contains("peerwire_identity_conflicts_total 1")
    );
    eventually("the replaced twin notices", || {
        first.stats().identity_conflicts + second.stats().identity_conflicts >= 1
    })
    .await;
    for n in [first, second, x] {
        soon("shutdown", n.shutdown()).await;
    }
}
