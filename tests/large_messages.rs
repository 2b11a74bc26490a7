//! Messages of 1 MiB and of exactly max_message_size cross intact; larger ones are refused on
//! the send side with a typed error.

mod common;

use bytes::Bytes;
use common::*;
use peerwire::SendError;
use peerwire::codec::CodecError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_and_max_size_messages_arrive_intact() {
    const MAX: usize = 8 * 1024 * 1024;
    let cfg = config().max_message_size(MAX);
    let (a, _a_in) = node(cfg.clone()).await;
    let (b, mut b_in) = node(cfg).await;
    let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
    let pattern = |len: usize, seed: u8| -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8)
                .collect::<Vec<_>>(),
        )
    };
    let one_mib = pattern(1 << 20, 3);
    // A Bytes message is raw: its body is the bytes themselves, with no length prefix.
    let max_payload = pattern(MAX, 7);
    assert_eq!(a.encode(&max_payload).unwrap().len(), MAX);
    a.send(b_id, &one_mib).await.unwrap();
    a.send(b_id, &max_payload).await.unwrap();
    a.send(b_id, &Bytes::from_static(b"tail")).await.unwrap();
    let got = recv_n(&mut b_in, 3).await;
    assert!(got[0].1 == one_mib, "1 MiB message corrupted");
    assert!(got[1].1 == max_payload, "max-size message corrupted");
    assert_eq!(&got[2].1[..], b"tail");

    let too_big = pattern(MAX + 1, 1);
    let err = a.send(b_id, &too_big).await.unwrap_err();
    assert!(matches!(
        err,
        SendError::Codec(CodecError::MessageTooLarge { len, max }) if len == MAX + 1 && max == MAX
    ));
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_inbox_drops_and_counts_without_stalling_the_socket() {
    let (a, _a_in) = node(config()).await;
    let (b, mut b_in) = node(config().inbox_capacity(10)).await;
    let b_id = soon("connect", a.connect(b.local_addr())).await.unwrap();
    for i in 0..50 {
        a.send(b_id, &numbered(i, 16)).await.unwrap();
    }
    // The application reads nothing yet. One address may fill three quarters of the inbox
    // (the last quarter is kept for other senders): 8 of 10 places, so 42 of 50 are dropped
    // and counted.
    eventually("drops counted", || {
        b.peers()
            .first()
            .is_some_and(|p| p.stats.dropped_inbox_full == 42 && p.stats.messages_in == 50)
    })
    .await;
    let kept = recv_n(&mut b_in, 8).await;
    assert_eq!(number_of(&kept[0].1), 0);
    // The connection still works: a new message is delivered now there is room.
    a.send(b_id, &numbered(99, 16)).await.unwrap();
    assert_eq!(number_of(&recv_n(&mut b_in, 1).await[0].1), 99);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

/// The reassembly budget: peers that each start a large message and never finish it cannot
/// make the node hold more than `max_reassembly_bytes` together. The fragment past the budget
/// is refused (counted, charged) and the rest of its message skipped; peers sending whole small
/// messages are served meanwhile, and the budget comes back when the hoarders leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_from_many_peers_stay_within_the_node_wide_budget() {
    const BUDGET: usize = 1 << 20;
    let cfg = config()
        .max_message_size(4 << 20)
        .max_reassembly_bytes(BUDGET);
    let (x, mut x_in) = node(cfg.clone()).await;
    let big = vec![9u8; 4 << 20];
    // Each hoarder sends the first 600 KiB of a 4 MiB message, then nothing more.
    let mut hoarders = Vec::new();
    for _ in 0..4 {
        let mut raw = RawPeer::connect(x.local_addr(), "peerwire-test").await;
        let mut offset = 0;
        while offset < 600 * 1024 {
            offset = raw.encoder.push_message(&big, offset).unwrap();
        }
        raw.flush().await.unwrap();
        hoarders.push(raw);
    }
    eventually("fragments refused past the budget", || {
        x.stats().reassembly_refused >= 1
    })
    .await;
    let stats = x.stats();
    assert!(stats.reassembly_bytes <= BUDGET, "{stats:?}");
    // Two hoarders fit (1.2 MiB does not): the other two were refused and charged.
    assert!(stats.reassembly_bytes >= 600 * 1024, "{stats:?}");
    assert!(stats.totals.misbehaviour_points >= 2, "{stats:?}");
    // Whole messages from an honest peer are served throughout.
    let (honest, _hi) = node(cfg).await;
    let x_id = soon("honest connects", honest.connect(x.local_addr()))
        .await
        .unwrap();
    for i in 0..10 {
        honest.send(x_id, &numbered(i, 100)).await.unwrap();
    }
    let got = recv_n(&mut x_in, 10).await;
    assert!(got.iter().all(|(from, _)| *from == honest.local_peer_id()));
    // The hoarders leave: what they held is given back, and a large message fits again.
    drop(hoarders);
    eventually("budget given back", || x.stats().reassembly_bytes == 0).await;
    let large = Bytes::from(vec![5u8; 900 * 1024]);
    honest.send(x_id, &large).await.unwrap();
    let (_, m) = soon("large message", x_in.recv()).await.unwrap();
    assert_eq!(m, large);
    soon("shutdown", honest.shutdown()).await;
    soon("shutdown", x.shutdown()).await;
}
