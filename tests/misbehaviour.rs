//! Hostile input after a good handshake: rejected and counted, the socket stays open until the
//! misbehaviour budget is spent, and other peers are served throughout.

mod common;

use bytes::Bytes;
use common::*;
use peerwire::{DisconnectReason, NetworkEvent, SocketState};

/// Waits until `peer` has been charged `points` in all, then returns its connection's info,
/// asserting the connection is still open (under the budget, a charge does not close it).
async fn charged_and_still_open<M: serde::Serialize + 'static>(
    net: &peerwire::Network<M>,
    peer: peerwire::PeerId,
    points: u64,
) -> peerwire::ConnectionInfo {
    eventually(&format!("{points} points charged"), || {
        peer_info(net, peer).is_some_and(|i| i.stats.misbehaviour == points)
    })
    .await;
    let Some(info) = peer_info(net, peer) else {
        panic!("{points} points charged, and the connection gone");
    };
    assert_eq!(info.state, SocketState::Open, "under budget: still open");
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_is_rejected_counted_and_socket_stays_open() {
    let (net, inbox) = typed_node(config()).await;
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("evil connected", || net.is_connected(evil.id())).await;
    // A typed Vec<u8> is a varint length then bytes: claim 200 bytes, supply 3.
    evil.send_encoded(&[0xc8, 0x01, 1, 2, 3]).await.unwrap();
    let after = peerwire::codec::encode_message(&b"after".to_vec(), 100).unwrap();
    evil.send_encoded(&after).await.unwrap();
    let (from, msg) = soon("good message", inbox.recv()).await.unwrap();
    assert_eq!((from, &msg[..]), (evil.id(), &b"after"[..]));
    // Counters are published once per frame, just after its messages reach the inbox.
    eventually("counted", || {
        peer_info(&net, evil.id()).is_some_and(|i| i.stats.messages_in == 1)
    })
    .await;
    let info = peer_info(&net, evil.id()).expect("still connected");
    assert_eq!(info.state, SocketState::Open);
    assert_eq!(info.stats.rejected, 1);
    assert_eq!(info.stats.misbehaviour, 10);
    soon("shutdown", net.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_rejected_without_closing() {
    let (net, inbox) = node(config().max_message_size(1000)).await;
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("evil connected", || net.is_connected(evil.id())).await;
    evil.send(&Bytes::from(vec![1u8; 50_000])).await.unwrap();
    evil.send(&Bytes::from_static(b"small")).await.unwrap();
    let (_, msg) = soon("small message", inbox.recv()).await.unwrap();
    assert_eq!(&msg[..], b"small");
    let info = peer_info(&net, evil.id()).expect("still connected");
    assert_eq!(info.stats.rejected, 1);
    assert_eq!(info.stats.misbehaviour, 20);
    soon("shutdown", net.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaviour_budget_closes_the_socket_while_others_are_served() {
    let (net, inbox) = typed_node(config().misbehaviour_budget(50)).await;
    let (honest, _honest_in) = typed_node(config()).await;
    let mut events = net.events();
    soon("connect", honest.connect(net.local_addr()))
        .await
        .unwrap();
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("both connected", || net.peers().len() == 2).await;
    for _ in 0..4 {
        // Each undecodable message costs 10 points; the fifth spends the budget of 50.
        evil.send_encoded(&[0xff, 0xff, 0xff]).await.unwrap();
        honest
            .send(net.local_peer_id(), &numbered(1, 8).to_vec())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(soon("honest message", inbox.recv()).await.unwrap());
    }
    assert!(got.iter().all(|(from, _)| *from == honest.local_peer_id()));
    // All four counted (40 of 50 points), and the socket still open: not a check that could
    // pass because the bad messages were not read yet.
    charged_and_still_open(&net, evil.id(), 40).await;
    evil.send_encoded(&[0xff, 0xff, 0xff]).await.unwrap();
    let ev = next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Disconnected { peer, .. } if *peer == evil.id()),
    )
    .await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: evil.id(),
            reason: DisconnectReason::Misbehaviour { score: 50 }
        }
    );
    assert!(evil.closed_by_remote().await);
    honest
        .send(net.local_peer_id(), &numbered(2, 8).to_vec())
        .await
        .unwrap();
    let (from, _) = soon("honest after ban", inbox.recv()).await.unwrap();
    assert_eq!(from, honest.local_peer_id());
    soon("shutdown", net.shutdown()).await;
    soon("shutdown", honest.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_garbage_gets_nothing_through_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let (net, mut inbox) =
        node(config().inbound_handshake_timeout(std::time::Duration::from_secs(2))).await;
    let (honest, _h) = node(config()).await;
    soon("connect", honest.connect(net.local_addr()))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for seed in 0..8u8 {
        let mut raw = tokio::net::TcpStream::connect(net.local_addr())
            .await
            .unwrap();
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let _ = raw.write_all(&garbage).await;
        clients.push(raw);
    }
    for i in 0..100 {
        honest
            .send(net.local_peer_id(), &numbered(i, 64))
            .await
            .unwrap();
    }
    let got = recv_n(&mut inbox, 100).await;
    assert!(got.iter().all(|(from, _)| *from == honest.local_peer_id()));
    eventually("garbage handshakes fail", || {
        net.stats().handshake_failures.values().sum::<u64>() == 8
    })
    .await;
    assert_eq!(net.peers().len(), 1);
    // Nothing came from the garbage clients since: the honest peer's next message is the next
    // to arrive.
    honest
        .send(net.local_peer_id(), &numbered(100, 64))
        .await
        .unwrap();
    let (from, last) = recv_n(&mut inbox, 1).await.remove(0);
    assert_eq!((from, number_of(&last)), (honest.local_peer_id(), 100));
    soon("shutdown", net.shutdown()).await;
    soon("shutdown", honest.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_frame_closes_the_connection() {
    use tokio::io::AsyncWriteExt;
    let (net, _inbox) = node(config()).await;
    let mut events = net.events();
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("evil connected", || net.is_connected(evil.id())).await;
    evil.encoder.push_message(&[3, 1, 2, 3], 0).unwrap();
    evil.encoder.seal().unwrap();
    let mut frame = evil.encoder.output().split();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    evil.stream.write_all(&frame).await.unwrap();
    let ev = next_disconnect(&mut events).await;
    assert!(matches!(
        ev,
        NetworkEvent::Disconnected {
            reason: DisconnectReason::Codec(peerwire::codec::CodecError::Authentication),
            ..
        }
    ));
    soon("shutdown", net.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flood_beyond_the_rate_limit_is_dropped_then_banned() {
    let (net, inbox) = node(
        config()
            .max_inbound_messages_per_sec(200)
            .misbehaviour_budget(100),
    )
    .await;
    let (honest, _hi) = node(config()).await;
    soon("connect", honest.connect(net.local_addr()))
        .await
        .unwrap();
    let mut events = net.events();
    let mut flooder = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("connected", || net.peers().len() == 2).await;
    let flood = std::time::Instant::now();
    for i in 0..2000u32 {
        if flooder.send(&numbered(i, 16)).await.is_err() {
            break; // cut off
        }
    }
    next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Banned { peer, .. } if *peer == flooder.id()),
    )
    .await;
    // Up to one second's burst got through, plus what the rate refilled while the flood
    // lasted (a loaded machine makes it last longer), and the excess was dropped and
    // counted, not queued: not the 2,000 sent.
    let refilled = (200.0 * flood.elapsed().as_secs_f64()).ceil() as usize;
    let delivered = std::iter::from_fn(|| inbox.try_recv().ok()).count();
    assert!(
        delivered <= 200 + refilled + 50,
        "delivered {delivered}, refilled {refilled}"
    );
    assert!(net.is_connected(honest.local_peer_id()));
    honest
        .send(net.local_peer_id(), &numbered(1, 8))
        .await
        .unwrap();
    let (from, _) = soon("honest", inbox.recv()).await.unwrap();
    assert_eq!(from, honest.local_peer_id());
    soon("shutdown", net.shutdown()).await;
    soon("shutdown", honest.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_ban_disconnects_and_refuses_until_unbanned() {
    let (net, _inbox) = node(config()).await;
    let (other, _oi) = node(config()).await;
    let other_id = soon("connect", net.connect(other.local_addr()))
        .await
        .unwrap();
    let mut events = net.events();
    net.ban(other_id, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let ev = next_disconnect(&mut events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: other_id,
            reason: DisconnectReason::Banned
        }
    );
    let ev = next_event(&mut events, |e| matches!(e, NetworkEvent::Banned { .. })).await;
    assert!(matches!(
        ev,
        NetworkEvent::Banned {
            reason: peerwire::BanReason::Application,
            ..
        }
    ));
    // Dialing it, or it dialing us, does not get it back in.
    let err = soon("connect", net.connect(other.local_addr()))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        peerwire::ConnectError::ConnectionClosed {
            reason: DisconnectReason::Banned,
            ..
        }
    ));
    // Its dial fails: a connect resolves only once the remote admits it, which it never
    // does. Made at once, while `net`'s refused dial may still be open at `other`'s end: a
    // dial that loses the tie-break to that connection waits for `net` to welcome it, and
    // fails when `net` closes it (before, `connect` returned `Ok` through it: seen in CI and
    // in a loop on a loaded machine).
    let dial_in = soon("the banned peer's dial", other.connect(net.local_addr())).await;
    assert!(dial_in.is_err(), "{dial_in:?}");
    assert!(!net.is_connected(other_id));
    assert!(net.unban(other_id).await.unwrap());
    soon("connect", net.connect(other.local_addr()))
        .await
        .unwrap();
    assert!(net.is_connected(other_id));
    soon("shutdown", net.shutdown()).await;
    soon("shutdown", other.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_out_of_sequence_costs_25_points_and_the_socket_stays_open() {
    let (net, inbox) = node(config()).await;
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("evil connected", || net.is_connected(evil.id())).await;
    // A Continue fragment of a message whose Start never came.
    let big = vec![1u8; 300_000];
    evil.encoder
        .push_message_on(0, &big, 200_000, big.len())
        .unwrap();
    evil.flush().await.unwrap();
    evil.send(&Bytes::from_static(b"after")).await.unwrap();
    let (from, msg) = soon("the next message", inbox.recv()).await.unwrap();
    assert_eq!((from, &msg[..]), (evil.id(), &b"after"[..]));
    let info = charged_and_still_open(&net, evil.id(), 25).await;
    assert_eq!(info.stats.rejected, 1);
    soon("shutdown", net.shutdown()).await;
}
