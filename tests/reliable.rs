//! Nothing lost across disconnections: messages to a persistent peer are sequenced,
//! acknowledged, kept while it is away, and resent after a cut, a partition or its restart,
//! arriving exactly once and in order.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::Backoff;
use peerwire::{Config, DisconnectReason, Inbox, Keypair, Network, NetworkEvent, PeerId};

fn quick_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        jitter_permille: 200,
    }
}

/// A sender configured with `target` as a persistent peer.
async fn sender_to(addr: std::net::SocketAddr, id: PeerId) -> (Network<Bytes>, Inbox<Bytes>) {
    node(config().persistent_peer(addr, id).backoff(quick_backoff())).await
}

/// Checks that `got` is exactly `range`, in order, from `from`.
fn assert_run(got: &[(PeerId, Bytes)], from: PeerId, range: std::ops::Range<u32>) {
    let numbers: Vec<u32> = got.iter().map(|(_, m)| number_of(m)).collect();
    let expected: Vec<u32> = range.collect();
    assert!(got.iter().all(|(p, _)| *p == from));
    if numbers != expected {
        let first_bad = numbers.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "got {} messages, expected {}; first difference at {first_bad:?}",
            numbers.len(),
            expected.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_peer_is_away_arrive_when_it_comes() {
    let b_key = Keypair::generate();
    let b_addr = free_addr();
    let (a, _ai) = sender_to(b_addr, b_key.peer_id()).await;
    for i in 0..300 {
        // Accepted although b is not even running.
        a.try_send(b_key.peer_id(), &numbered(i, 64)).unwrap();
    }
    // A raw 64-byte payload is its own encoding.
    let pending = a.pending(b_key.peer_id()).unwrap();
    assert_eq!((pending.messages, pending.bytes), (300, 300 * 64));
    let (b, mut b_in) = Network::<Bytes>::start(config().listen(b_addr), b_key)
        .await
        .unwrap();
    let got = recv_n(&mut b_in, 300).await;
    assert_run(&got, a.local_peer_id(), 0..300);
    eventually("all acknowledged", || {
        a.pending(b.local_peer_id()) == Some(peerwire::Pending::default())
    })
    .await;
    nothing_before_a_last_message(&a, b.local_peer_id(), &mut b_in, 300).await;
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

/// No duplicate is left: one more message, number `n`, is the next to arrive. The stream is
/// in order, so a duplicate of an earlier message would come before it (a wait and
/// `try_recv` could only see the duplicates that came within the wait).
async fn nothing_before_a_last_message(
    a: &Network<Bytes>,
    b_id: PeerId,
    b_in: &mut Inbox<Bytes>,
    n: u32,
) {
    let sent = soon("the last message's send", a.send(b_id, &numbered(n, 100))).await;
    assert!(sent.is_ok(), "{sent:?}");
    let (from, last) = recv_n(b_in, 1).await.remove(0);
    assert_eq!(from, a.local_peer_id());
    assert_eq!(
        number_of(&last),
        n,
        "a duplicate came before the last message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_cuts_mid_stream_lose_nothing_and_duplicate_nothing() {
    // A small inbox keeps the receiver's application close behind the wire, so every cut
    // lands in the middle of the stream.
    let (b, mut b_in) = node(config().inbox_capacity(256)).await;
    let proxy = Proxy::start(b.local_addr()).await;
    let (a, _ai) = sender_to(proxy.addr, b.local_peer_id()).await;
    const N: u32 = 20_000;
    let sender = {
        let a = a.clone();
        let b_id = b.local_peer_id();
        tokio::spawn(async move {
            for i in 0..N {
                a.send(b_id, &numbered(i, 200)).await.unwrap();
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut got = Vec::with_capacity(N as usize);
    let a_id = a.local_peer_id();
    let mut b_events = b.events();
    for _ in 0..4 {
        // Cut only a live connection carrying data: wait until b is receiving over a connection
        // from a, take some more, then cut it.
        eventually("connected", || b.is_connected(a_id)).await;
        let target = (got.len() + 1500).min(N as usize - 1);
        got.extend(recv_n(&mut b_in, target.saturating_sub(got.len())).await);
        proxy.cut();
        // The event, not a poll of `is_connected`: a reconnects within a few milliseconds,
        // and a poll could miss the gap.
        next_event(
            &mut b_events,
            |e| matches!(e, NetworkEvent::Disconnected { peer, .. } if *peer == a_id),
        )
        .await;
    }
    soon("sender done", sender).await.unwrap();
    got.extend(recv_n(&mut b_in, (N as usize).saturating_sub(got.len())).await);
    assert_run(&got, a.local_peer_id(), 0..N);
    nothing_before_a_last_message(&a, b.local_peer_id(), &mut b_in, N).await;
    assert!(a.stats().reconnects >= 4);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_then_heal_delivers_before_during_and_after() {
    let (b, mut b_in) = node(config()).await;
    let proxy = Proxy::start(b.local_addr()).await;
    let (a, _ai) = sender_to(proxy.addr, b.local_peer_id()).await;
    let b_id = b.local_peer_id();
    eventually("connected", || a.is_connected(b_id)).await;
    for i in 0..1000 {
        a.send(b_id, &numbered(i, 100)).await.unwrap();
    }
    proxy.partition();
    eventually("a sees the partition", || !a.is_connected(b_id)).await;
    for i in 1000..2000 {
        a.send(b_id, &numbered(i, 100)).await.unwrap();
    }
    proxy.heal();
    for i in 2000..3000 {
        a.send(b_id, &numbered(i, 100)).await.unwrap();
    }
    let got = recv_n(&mut b_in, 3000).await;
    assert_run(&got, a.local_peer_id(), 0..3000);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_receiver_gets_everything_it_had_not_acknowledged() {
    let b_key = Keypair::generate();
    let b_addr = free_addr();
    let (b1, mut b1_in) = Network::<Bytes>::start(config().listen(b_addr), b_key.clone())
        .await
        .unwrap();
    let proxy = Proxy::start(b_addr).await;
    let (a, _ai) = sender_to(proxy.addr, b_key.peer_id()).await;
    let b_id = b_key.peer_id();
    for i in 0..500 {
        a.send(b_id, &numbered(i, 100)).await.unwrap();
    }
    let first = recv_n(&mut b1_in, 500).await;
    assert_run(&first, a.local_peer_id(), 0..500);
    // Cut b off, keep sending, then b "crashes" and a new process with the same key takes over.
    proxy.partition();
    eventually("a sees b gone", || !a.is_connected(b_id)).await;
    for i in 500..800 {
        a.send(b_id, &numbered(i, 100)).await.unwrap();
    }
    soon("shutdown", b1.shutdown()).await;
    drop(b1_in);
    let (b2, b2_in) = Network::<Bytes>::start(config().listen(b_addr), b_key)
        .await
        .unwrap();
    proxy.heal();
    // b2 gets a contiguous, ordered run that ends with the last message and starts no later
    // than the first message b1 never saw.
    let mut second = Vec::new();
    soon("b2 catches up", async {
        loop {
            let m = b2_in.recv().await.unwrap();
            let last = number_of(&m.1) == 799;
            second.push(m);
            if last {
                break;
            }
        }
    })
    .await;
    let start = number_of(&second[0].1);
    assert!(start <= 500, "b2 starts at {start}");
    assert_run(&second, a.local_peer_id(), start..800);
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b2.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_on_a_reliable_stream_delays_but_never_loses() {
    let (b, b_in) = node(config().inbox_capacity(16)).await;
    let (a, _ai) = sender_to(b.local_addr(), b.local_peer_id()).await;
    let b_id = b.local_peer_id();
    const N: u32 = 3000;
    for i in 0..N {
        a.try_send(b_id, &numbered(i, 32)).unwrap();
    }
    // A slow application: the inbox overflows many times; the sender is asked to resend.
    let mut got = Vec::new();
    soon("slow consumer gets everything", async {
        while got.len() < N as usize {
            if got.len() % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            got.push(b_in.recv().await.unwrap());
        }
    })
    .await;
    assert_run(&got, a.local_peer_id(), 0..N);
    assert!(
        b.peers()[0].stats.dropped_inbox_full > 0,
        "the inbox must actually have overflowed for this test to mean anything"
    );
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_buffer_is_bounded_with_a_counted_policy() {
    let b_id = Keypair::generate().peer_id();
    let cfg: Config = config()
        .persistent_peer(free_addr(), b_id)
        .backoff(quick_backoff())
        .offline_queue_capacity(100);
    let (a, _ai) = node(cfg).await;
    let mut full = 0;
    for i in 0..150 {
        if let Err(e) = a.try_send(b_id, &numbered(i, 8)) {
            assert!(matches!(e, peerwire::SendError::Full(p) if p == b_id));
            full += 1;
        }
    }
    assert_eq!(full, 50);
    assert_eq!(a.stats().offline_full, 50);
    assert_eq!(a.pending(b_id).unwrap().messages, 100);
    soon("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_connection_mid_stream_keeps_exactly_once_in_order() {
    let (b, mut b_in) = node(config().inbox_capacity(512)).await;
    let (a, _ai) = sender_to(b.local_addr(), b.local_peer_id()).await;
    let b_id = b.local_peer_id();
    eventually("connected", || a.is_connected(b_id)).await;
    const N: u32 = 20_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..N {
                a.send(b_id, &numbered(i, 100)).await.unwrap();
            }
        })
    };
    let mut got = Vec::with_capacity(N as usize);
    for _ in 0..5 {
        let target = got.len() + 2000;
        got.extend(recv_n(&mut b_in, target.saturating_sub(got.len())).await);
        // A newer connection from the same side replaces the one carrying the stream.
        soon("connect", a.connect(b.local_addr())).await.unwrap();
    }
    soon("sender done", sender).await.unwrap();
    got.extend(recv_n(&mut b_in, (N as usize).saturating_sub(got.len())).await);
    assert_run(&got, a.local_peer_id(), 0..N);
    nothing_before_a_last_message(&a, b.local_peer_id(), &mut b_in, N).await;
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

/// The attack from outside that froze a node before: a persistent peer that reads everything
/// but never acknowledges. Its streams fill; the node's broadcasts keep reaching an honest peer
/// (each waits for the full one at most `send_wait`, once); after `write_timeout` without an
/// acknowledgement the node cuts it as stalled, keeps what it never acknowledged for its return,
/// and is not banned for it; shutdown then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_peer_that_never_acknowledges_stalls_nobody() {
    let evil_key = Keypair::generate();
    let evil_id = evil_key.peer_id();
    // Its listed address is dead: it only ever comes in by dialing us.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cfg = config()
        .persistent_peer(dead_addr, evil_id)
        .offline_queue_capacity(50)
        .send_wait(Duration::from_millis(50))
        .write_timeout(Duration::from_millis(600))
        .ping_interval(Duration::from_millis(100))
        .idle_timeout(Duration::from_secs(10));
    let (hub, _hub_in) = node(cfg).await;
    let (honest, mut honest_in) = node(config()).await;
    soon("connect", honest.connect(hub.local_addr()))
        .await
        .unwrap();
    let mut evil = RawPeer::connect_as(hub.local_addr(), "peerwire-test", evil_key).await;
    eventually("both connected", || hub.peers().len() == 2).await;
    let mut events = hub.events();
    // It reads everything (so its socket never fills) and answers nothing.
    let reader = tokio::spawn(async move { evil.closed_by_remote().await });
    for i in 0..200u32 {
        let report = hub.broadcast(&numbered(i, 32)).await.unwrap();
        assert_eq!(report.queued + report.skipped_full, 2);
    }
    let got = recv_n(&mut honest_in, 200).await;
    assert_eq!(
        got.iter().map(|(_, m)| number_of(m)).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>(),
        "the honest peer got every broadcast"
    );
    let gone = next_event(
        &mut events,
        |e| matches!(e, NetworkEvent::Disconnected { peer, .. } if *peer == evil_id),
    )
    .await;
    assert_eq!(
        gone,
        NetworkEvent::Disconnected {
            peer: evil_id,
            reason: DisconnectReason::WriteStalled
        }
    );
    assert!(reader.await.unwrap(), "the node closed the connection");
    // Nothing it accepted is lost: the stream keeps it for the peer's return.
    assert_eq!(hub.pending(evil_id).unwrap().messages, 50);
    assert_eq!(hub.stats().stalled_disconnects, 1);
    assert_eq!(
        hub.stats().bans,
        0,
        "a persistent peer is not banned for stalling"
    );
    soon("shutdown", hub.shutdown()).await;
    soon("shutdown", honest.shutdown()).await;
}
