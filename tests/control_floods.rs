//! Control-message attacks from an authenticated peer (a raw implementation of the wire
//! protocol): a ping flood, a resend-request storm, and a `Resume` that would make the sequence
//! numbers wrap. Each is charged and the attacker is cut or contained, while an honest peer is
//! served throughout.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic with the failing value is the report"
)]

mod common;

use bytes::Bytes;
use common::*;
use peerwire::codec::{ControlMessage, encode_control};
use peerwire::{DisconnectReason, NetworkEvent};

/// Queues `n` copies of `message` in as many frames as they need, and writes them.
async fn flood(evil: &mut RawPeer, message: &ControlMessage, n: usize) -> std::io::Result<()> {
    let body = encode_control(message);
    for _ in 0..n {
        evil.encoder.push_control(&body).unwrap();
    }
    evil.flush().await
}

/// The honest peer's message gets through while the attack runs.
async fn honest_is_served(
    net: &peerwire::Network<Bytes>,
    honest: &peerwire::Network<Bytes>,
    inbox: &peerwire::Inbox<Bytes>,
    i: u32,
) {
    honest
        .send(net.local_peer_id(), &numbered(i, 16))
        .await
        .unwrap();
    let (from, msg) = soon("honest message", inbox.recv()).await.unwrap();
    assert_eq!((from, number_of(&msg)), (honest.local_peer_id(), i));
}

/// An authenticated raw peer sends `n` copies of `message` at once beside an honest node: the
/// attacker must be cut for misbehaviour, and the honest node served afterwards.
async fn flood_is_cut_while_honest_is_served(message: ControlMessage, n: usize) {
    let (net, inbox) = node(config()).await;
    let (honest, _h) = node(config()).await;
    soon("connect", honest.connect(net.local_addr()))
        .await
        .unwrap();
    let mut events = net.events();
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("evil connected", || net.is_connected(evil.id())).await;
    let _ = flood(&mut evil, &message, n).await;
    let ev = next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Disconnected { peer, .. } if *peer == evil.id()),
    )
    .await;
    assert!(
        matches!(
            ev,
            NetworkEvent::Disconnected {
                reason: DisconnectReason::Misbehaviour { .. },
                ..
            }
        ),
        "{ev:?}"
    );
    honest_is_served(&net, &honest, &inbox, 1).await;
    soon("shutdown", net.shutdown()).await;
    soon("shutdown", honest.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_cut_and_others_are_served() {
    // 100,000 pings at once: ten a second are answered, every other one costs a point.
    flood_is_cut_while_honest_is_served(ControlMessage::Ping { nonce: 1 }, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_storm_is_charged_until_cut() {
    // The first request is passed on, the second deferred, every later one charged a point.
    let rewind = ControlMessage::Rewind {
        channel: 0,
        from: 0,
    };
    flood_is_cut_while_honest_is_served(rewind, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_near_the_end_of_the_numbers_is_charged_and_ignored() {
    let (net, inbox) = node(config()).await;
    let mut evil = RawPeer::connect(net.local_addr(), "peerwire-test").await;
    eventually("evil connected", || net.is_connected(evil.id())).await;
    let resume = ControlMessage::Resume {
        channel: 0,
        incarnation: 7,
        first_seq: u64::MAX,
    };
    flood(&mut evil, &resume, 1).await.unwrap();
    evil.send(&numbered(3, 8)).await.unwrap();
    let (from, msg) = soon("message after the resume", inbox.recv())
        .await
        .unwrap();
    assert_eq!((from, number_of(&msg)), (evil.id(), 3));
    let info = peer_info(&net, evil.id()).expect("still connected");
    assert_eq!(
        info.stats.misbehaviour, 25,
        "charged as a protocol violation"
    );
    soon("shutdown", net.shutdown()).await;
}
