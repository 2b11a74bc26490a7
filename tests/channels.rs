//! Channels over loopback: a critical channel keeps flowing while the application ignores a
//! bulk one, reliable delivery holds per channel, and a peer that stops reading never holds a
//! waiting broadcast for long (it is cut after `write_timeout`, and stalling again from the same
//! IP gets it banned).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::{BanReason, ChannelSpec, NetworkEvent};

const VOTES: u16 = 1;
const PARTS: u16 = 2;

fn channels() -> peerwire::Config {
    config()
        .channel(VOTES, ChannelSpec::critical())
        .channel(PARTS, ChannelSpec::bulk().inbox_capacity(8))
        .ping_interval(Duration::from_millis(100))
        .idle_timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_keeps_flowing_while_the_application_ignores_bulk() {
    let (a, _a_in) = node(channels()).await;
    let (b, _b_in) = node(channels()).await;
    let (a_votes, _) = a.channel::<u32>(VOTES).unwrap();
    let (a_parts, _) = a.channel::<Bytes>(PARTS).unwrap();
    let (_, mut b_votes) = b.channel::<u32>(VOTES).unwrap();
    // b opens the bulk channel but never reads it.
    let (_, _b_parts) = b.channel::<Bytes>(PARTS).unwrap();
    let b_id = b.local_peer_id();
    soon("connect", a.connect(b.local_addr())).await.unwrap();
    eventually("b sees a", || b.is_connected(a.local_peer_id())).await;
    let part = Bytes::from(vec![9u8; 256 * 1024]);
    for vote in 0..200u32 {
        // A steady stream of block parts, far more than b's bulk inbox holds.
        let _ = a_parts.try_send(b_id, &part);
        a_votes.send(b_id, &vote).await.unwrap();
    }
    let votes = recv_n(&mut b_votes, 200).await;
    let got: Vec<u32> = votes.into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "every vote, in order");
    let info = |net: &peerwire::Network<Bytes>, peer| {
        net.peers()
            .into_iter()
            .find(|p| p.peer == Some(peer))
            .unwrap()
    };
    eventually("bulk drops counted on b's bulk channel", || {
        let c = info(&b, a.local_peer_id()).channels;
        c.iter()
            .any(|c| c.channel == PARTS && c.dropped_inbox_full > 0)
    })
    .await;
    let c = info(&b, a.local_peer_id()).channels;
    let votes_in = c.iter().find(|c| c.channel == VOTES).unwrap();
    assert_eq!(
        (votes_in.messages_in, votes_in.dropped_inbox_full),
        (200, 0)
    );
    // Pings and pongs still cross while the bulk inbox stays full.
    let pongs = info(&a, b_id).stats.pongs_received;
    eventually("pongs keep arriving", || {
        info(&a, b_id).stats.pongs_received > pongs + 2
    })
    .await;
    assert!(b.metrics_text().contains("peerwire_channel_dropped_total"));
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_delivery_is_exactly_once_in_order_per_channel_with_a_slow_bulk_reader() {
    let (b, _b_in) = node(channels()).await;
    let (_, mut b_votes) = b.channel::<u32>(VOTES).unwrap();
    let (_, b_parts) = b.channel::<u32>(PARTS).unwrap();
    let (a, _a_in) = node(channels().persistent_peer(b.local_addr(), b.local_peer_id())).await;
    let (a_votes, _) = a.channel::<u32>(VOTES).unwrap();
    let (a_parts, _) = a.channel::<u32>(PARTS).unwrap();
    let b_id = b.local_peer_id();
    for i in 0..300u32 {
        a_parts.send(b_id, &i).await.unwrap();
        a_votes.send(b_id, &i).await.unwrap();
    }
    let votes = recv_n(&mut b_votes, 300).await;
    assert_eq!(
        votes.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    // The bulk inbox (8 messages) overflowed while nobody read it: the dropped parts come
    // again from the sender, each exactly once and in order.
    let mut parts = Vec::new();
    soon("every part", async {
        while parts.len() < 300 {
            let (_, p) = b_parts.recv().await.unwrap();
            parts.push(p);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(parts, (0..300).collect::<Vec<_>>());
    let dropped: u64 = b
        .peers()
        .iter()
        .flat_map(|p| p.channels.iter())
        .filter(|c| c.channel == PARTS)
        .map(|c| c.dropped_inbox_full)
        .sum();
    assert!(
        dropped > 0,
        "the bulk inbox overflowed, so parts were resent"
    );
    eventually("all acknowledged", || {
        a.pending(b_id) == Some(peerwire::Pending::default())
    })
    .await;
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_broadcast_gives_up_on_a_stalled_peer_within_send_wait() {
    let cfg = config()
        .send_queue_capacity(16)
        .send_queue_bytes(256 * 1024)
        .send_wait(Duration::from_millis(50))
        // Long enough that only the bounded wait, not the disconnect, can end the waits.
        .write_timeout(Duration::from_secs(120));
    let (hub, _hub_in) = node(cfg).await;
    let (honest, mut honest_in) = node(config()).await;
    soon("connect", honest.connect(hub.local_addr()))
        .await
        .unwrap();
    let stalled = RawPeer::connect(hub.local_addr(), "peerwire-test").await;
    eventually("both connected", || hub.peers().len() == 2).await;
    let payload = Bytes::from(vec![1u8; 64 * 1024]);
    let mut skipped = 0;
    for i in 0..400u32 {
        let mut message = payload.to_vec();
        message[..4].copy_from_slice(&i.to_be_bytes());
        let report = hub.broadcast(&Bytes::from(message)).await.unwrap();
        skipped += report.skipped_full;
    }
    let got = recv_n(&mut honest_in, 400).await;
    assert_eq!(
        got.iter().map(|(_, m)| number_of(m)).collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>(),
        "the honest peer got every broadcast"
    );
    assert!(
        skipped > 300,
        "the stalled peer was skipped, not waited for: {skipped}"
    );
    assert!(
        hub.is_connected(stalled.id()),
        "400 broadcasts finished long before the stalled peer's write_timeout"
    );
    assert!(hub.stats().send_wait_expired >= 1);
    soon("shutdown", hub.shutdown()).await;
    soon("shutdown", honest.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalling_again_from_the_same_ip_gets_banned() {
    let cfg = config()
        .send_queue_capacity(4)
        .write_timeout(Duration::from_millis(300))
        .max_stalls_per_ip(2);
    let (hub, _hub_in) = node(cfg).await;
    let mut events = hub.events();
    let payload = Bytes::from(vec![1u8; 256 * 1024]);
    for attempt in 1..=2 {
        let stalled = RawPeer::connect(hub.local_addr(), "peerwire-test").await;
        eventually("stalled peer connected", || hub.is_connected(stalled.id())).await;
        while hub.is_connected(stalled.id()) {
            let _ = hub.try_broadcast(&payload);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if attempt == 2 {
            let banned =
                next_event(&mut events, |e| matches!(e, NetworkEvent::Banned { .. })).await;
            assert!(matches!(
                banned,
                NetworkEvent::Banned {
                    peer,
                    reason: BanReason::Stalled { stalls: 2 },
                    ..
                } if peer == stalled.id()
            ));
        }
    }
    assert_eq!(hub.stats().stalled_disconnects, 2);
    assert_eq!(hub.stats().bans, 1);
    soon("shutdown", hub.shutdown()).await;
}

/// Once an application drops a channel's `Inbox`, the next message on that channel ends the
/// sender's connection with `InboxClosed`, on the receiving side, as the README says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_a_channel_whose_inbox_was_dropped_ends_the_connection() {
    let (a, _a_in) = node(channels()).await;
    let (b, _b_in) = node(channels()).await;
    let (a_parts, _) = a.channel::<Bytes>(PARTS).unwrap();
    let (_, b_parts_in) = b.channel::<Bytes>(PARTS).unwrap();
    let mut b_events = b.events();
    let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
    let a_id = a.local_peer_id();
    drop(b_parts_in);
    soon("send", a_parts.send(b_id, &Bytes::from_static(b"part")))
        .await
        .unwrap();
    let ev = next_disconnect(&mut b_events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: a_id,
            reason: peerwire::DisconnectReason::InboxClosed
        }
    );
    for n in [&a, &b] {
        soon("shutdown", n.shutdown()).await;
    }
}
