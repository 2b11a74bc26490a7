//! Request/response over loopback: answers both ways, every failure arriving promptly as its
//! own error, limits that answer `Busy` instead of queueing, cancellation that reaches the
//! server and charges nobody, streams held to their credit window, and idempotent requests
//! that survive a reconnect to a persistent peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::protocols::rpc::{Request, RequestError, RespondError, RpcConfig, RpcServer};
use peerwire::{ChannelSpec, Config, Network};
use serde::Serialize;
use serde::de::DeserializeOwned;

const RPC: u16 = 10;
const BULK: u16 = 11;
const RAW: u16 = 12;

fn rpc_config() -> Config {
    config()
        .channel(
            RPC,
            ChannelSpec::high()
                .send_queue_capacity(16_384)
                .inbox_capacity(16_384),
        )
        .channel(BULK, ChannelSpec::bulk())
        .channel(RAW, ChannelSpec::high())
}

fn protocol() -> RpcConfig {
    RpcConfig::new(RPC).stream_channel(BULK)
}

async fn pair_with(config: Config) -> (Network<Bytes>, Network<Bytes>) {
    let (a, _) = node(config.clone()).await;
    let (b, _) = node(config).await;
    soon("connect", a.connect(b.local_addr())).await.unwrap();
    eventually("b sees a", || b.is_connected(a.local_peer_id())).await;
    (a, b)
}

async fn pair() -> (Network<Bytes>, Network<Bytes>) {
    pair_with(rpc_config()).await
}

/// Runs `handler` on every request the server receives, each in its own task.
fn serve<Q, A, F, Fut>(mut server: RpcServer<Q, A>, handler: F) -> tokio::task::JoinHandle<()>
where
    Q: Serialize + DeserializeOwned + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    F: Fn(Request<Q, A>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(request) = server.recv().await {
            tokio::spawn(handler(request));
        }
    })
}

#[tokio::test]
async fn requests_are_answered_both_ways_typed_and_raw() {
    let (a, b) = pair().await;
    let (a_client, a_server) = a.rpc::<String, String>(protocol()).unwrap();
    let (b_client, b_server) = b.rpc::<String, String>(protocol()).unwrap();
    for server in [a_server, b_server] {
        serve(server, |request| async move {
            // The server sees the proven sender, and answers as if the query were local.
            let answer = format!("{} from {}", request.body(), request.peer());
            request.respond(&answer).unwrap();
        });
    }
    let (a_id, b_id) = (a.local_peer_id(), b.local_peer_id());
    assert_eq!(
        a_client.request(b_id, &"ping".into()).await,
        Ok(format!("ping from {a_id}"))
    );
    assert_eq!(
        b_client.request(a_id, &"pong".into()).await,
        Ok(format!("pong from {b_id}"))
    );

    // Raw bytes go as themselves, any length the channel takes.
    let (raw_client, _) = a.rpc::<Bytes, Bytes>(RpcConfig::new(RAW)).unwrap();
    let (_, raw_server) = b.rpc::<Bytes, Bytes>(RpcConfig::new(RAW)).unwrap();
    serve(raw_server, |request| async move {
        let mut reversed = request.body().to_vec();
        reversed.reverse();
        request.respond(&Bytes::from(reversed)).unwrap();
    });
    for len in [0, 1, 64, 100_000] {
        let body: Bytes = (0..len).map(|i| i as u8).collect();
        let mut expected = body.to_vec();
        expected.reverse();
        assert_eq!(raw_client.request(b_id, &body).await.unwrap(), expected);
    }
}

#[tokio::test]
async fn every_failure_is_its_own_error_and_arrives_promptly() {
    let (a, b) = pair().await;
    let (client, _) = a.rpc::<u32, u32>(protocol()).unwrap();
    let (_, server) = b.rpc::<u32, u32>(protocol()).unwrap();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let seen_cancel = cancelled.clone();
    serve(server, move |request| {
        let keep = keep.clone();
        let seen_cancel = seen_cancel.clone();
        async move {
            match *request.body() {
                0 => request.respond(&0).unwrap(),
                1 => request.reject(404).unwrap(),
                2 => drop(request),
                3 => {
                    // Never answered: the client times out, and this handler is told.
                    request.cancelled().await;
                    seen_cancel.fetch_add(1, SeqCst);
                    keep.lock().await.push(request);
                }
                _ => request.respond(&u32::MAX).unwrap(),
            }
        }
    });
    let b_id = b.local_peer_id();
    assert_eq!(client.request(b_id, &0).await, Ok(0));
    assert_eq!(
        client.request(b_id, &1).await,
        Err(RequestError::Rejected(404))
    );
    assert_eq!(client.request(b_id, &2).await, Err(RequestError::Omitted));
    assert_eq!(
        client
            .request_with(b_id, &3, Duration::from_millis(200))
            .await,
        Err(RequestError::Timeout)
    );
    eventually("the handler saw the cancel", || cancelled.load(SeqCst) == 1).await;
    // The late answer of the cancelled handler is refused at the server.
    let request = held.lock().await.pop().unwrap();
    assert_eq!(request.respond(&3), Err(RespondError::Cancelled));

    // A peer that is not connected.
    let stranger = peerwire::Keypair::generate().peer_id();
    assert_eq!(
        client.request(stranger, &0).await,
        Err(RequestError::NotConnected)
    );

    // Nobody serves this protocol at the peer any more.
    let (c, _) = node(rpc_config()).await;
    soon("connect", a.connect(c.local_addr())).await.unwrap();
    // Its client handle keeps the protocol running; only the server is gone.
    let (_c_client, c_server) = c.rpc::<u32, u32>(protocol()).unwrap();
    drop(c_server);
    assert_eq!(
        client.request(c.local_peer_id(), &0).await,
        Err(RequestError::Unavailable)
    );
    let stats = client.stats();
    assert_eq!(stats.waiting, 0);
    assert_eq!(stats.violations, 0);
}

#[tokio::test]
async fn oversized_requests_and_answers_fail_with_too_large() {
    let config = config()
        .channel(RPC, ChannelSpec::high().max_message_size(1024))
        .channel(BULK, ChannelSpec::bulk());
    let (a, b) = pair_with(config).await;
    let (client, _) = a.rpc::<Vec<u8>, Vec<u8>>(protocol()).unwrap();
    let (_, server) = b.rpc::<Vec<u8>, Vec<u8>>(protocol()).unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let seen = refused.clone();
    serve(server, move |request| {
        let seen = seen.clone();
        async move {
            let answer = vec![7u8; request.body()[0] as usize * 100];
            if let Err(RespondError::TooLarge { .. }) = request.respond(&answer) {
                seen.fetch_add(1, SeqCst);
            }
        }
    });
    let b_id = b.local_peer_id();
    assert_eq!(
        client.request(b_id, &vec![0; 2000]).await,
        Err(RequestError::TooLarge)
    );
    assert_eq!(
        client.request(b_id, &vec![1]).await.map(|v| v.len()),
        Ok(100)
    );
    assert_eq!(
        client.request(b_id, &vec![20]).await,
        Err(RequestError::TooLarge)
    );
    assert_eq!(refused.load(SeqCst), 1);
}

#[tokio::test]
async fn ten_thousand_requests_at_once_meet_a_limit_of_64_with_prompt_busy_answers() {
    let (a, b) = pair().await;
    let client_config = protocol().max_outbound_requests(10_000);
    let (client, _) = a.rpc::<u32, u32>(client_config).unwrap();
    let (server_client, server) = b
        .rpc::<u32, u32>(protocol().max_inbound_requests(64))
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    serve(server, move |request| {
        let (r, m) = (r.clone(), m.clone());
        async move {
            let now = r.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            r.fetch_sub(1, SeqCst);
            let n = *request.body();
            request.respond(&n).unwrap();
        }
    });
    let b_id = b.local_peer_id();
    let calls = (0..10_000u32).map(|n| {
        let client = client.clone();
        async move { (n, client.request(b_id, &n).await) }
    });
    let results = soon("10,000 requests", futures_join_all(calls)).await;
    let mut answered = 0;
    let mut busy = 0;
    for (n, result) in results {
        match result {
            Ok(m) => {
                assert_eq!(m, n);
                answered += 1;
            }
            Err(RequestError::Busy) => busy += 1,
            Err(other) => panic!("request {n}: {other}"),
        }
    }
    assert!(
        most.load(SeqCst) <= 64,
        "{} handlers ran at once",
        most.load(SeqCst)
    );
    assert!(answered >= 64, "only {answered} answered");
    assert_eq!(answered + busy, 10_000);
    let stats = client.stats();
    assert_eq!((stats.waiting, stats.timeouts), (0, 0));
    assert_eq!(stats.busy_received, busy as u64);
    let served = server_client.stats();
    assert_eq!(served.busy_sent, busy as u64);
    assert_eq!(served.serving, 0);
    // Asking past a limit within the allowance is not misbehaviour.
    assert_eq!(served.violations, 0);
    assert!(a.is_connected(b_id));
}

#[tokio::test]
async fn a_thousand_dropped_requests_stop_their_handlers_and_charge_nobody() {
    let (a, b) = pair().await;
    let (client, _) = a.rpc::<u32, u32>(protocol()).unwrap();
    let (server_client, server) = b
        .rpc::<u32, u32>(protocol().max_inbound_requests(1024))
        .unwrap();
    let handlers = Arc::new(AtomicUsize::new(0));
    let h = handlers.clone();
    serve(server, move |request| {
        let h = h.clone();
        async move {
            h.fetch_add(1, SeqCst);
            request.cancelled().await;
            h.fetch_sub(1, SeqCst);
        }
    });
    let b_id = b.local_peer_id();
    let calls: Vec<_> = (0..1000u32)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.request(b_id, &n).await })
        })
        .collect();
    eventually("1,000 handlers running", || handlers.load(SeqCst) == 1000).await;
    for call in &calls {
        call.abort();
    }
    eventually("every handler told to stop", || handlers.load(SeqCst) == 0).await;
    eventually("nothing served", || server_client.stats().serving == 0).await;
    let stats = client.stats();
    assert_eq!((stats.waiting, stats.cancelled_by_caller), (0, 1000));
    assert_eq!(server_client.stats().cancelled_by_peer, 1000);
    assert_eq!(server_client.stats().violations, 0);
    assert!(b.is_connected(a.local_peer_id()));
}

#[tokio::test]
async fn a_server_that_dies_mid_request_fails_it_at_once_with_disconnected() {
    let (a, b) = pair().await;
    let (client, _) = a.rpc::<u32, u32>(protocol()).unwrap();
    let (_, server) = b.rpc::<u32, u32>(protocol()).unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    serve(server, move |request| {
        let s = s.clone();
        async move {
            s.notify_one();
            request.cancelled().await;
        }
    });
    let b_id = b.local_peer_id();
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request_with(b_id, &1, Duration::from_secs(600))
                .await
        }
    });
    soon("the handler started", started.notified()).await;
    b.abort().await;
    // Within the generous test bound, far short of the 600 s timeout.
    let result = soon("the request failed", call).await.unwrap();
    assert_eq!(result, Err(RequestError::Disconnected));
}

#[tokio::test]
async fn a_stream_delivers_every_chunk_in_order_within_its_window() {
    let (a, b) = pair().await;
    const CHUNKS: u32 = 2_000;
    const WINDOW: u32 = 8;
    let (client, _) = a
        .rpc::<u32, Bytes>(protocol().stream_window(WINDOW))
        .unwrap();
    let (_, server) = b
        .rpc::<u32, Bytes>(protocol().stream_window(WINDOW))
        .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    serve(server, move |request| {
        let s = s.clone();
        async move {
            let count = *request.body();
            let mut sink = request.respond_stream().unwrap();
            for i in 0..count {
                sink.send(&Bytes::from(vec![i as u8; 1024])).await.unwrap();
                s.fetch_add(1, SeqCst);
            }
            sink.finish().await.unwrap();
        }
    });
    let mut stream = client
        .request_stream(b.local_peer_id(), &CHUNKS)
        .await
        .unwrap();
    let mut received = 0u32;
    while let Some(chunk) = soon("a chunk", stream.next()).await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.len(), 1024);
        assert_eq!(chunk[0], received as u8);
        received += 1;
        // The server never gets further ahead than the window (twice it, with credit in
        // flight): this is what bounds memory on both sides.
        let ahead = sent.load(SeqCst) as i64 - i64::from(received);
        assert!(
            ahead <= i64::from(2 * WINDOW),
            "server {ahead} chunks ahead"
        );
        if received % 100 == 0 {
            // A slow consumer: the server must wait, not buffer.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let ahead = sent.load(SeqCst) as i64 - i64::from(received);
            assert!(
                ahead <= i64::from(2 * WINDOW),
                "server {ahead} chunks ahead while we slept"
            );
        }
    }
    assert_eq!(received, CHUNKS);
    assert_eq!(client.stats().waiting, 0);
}

#[tokio::test]
async fn a_dropped_stream_stops_its_sender() {
    let (a, b) = pair().await;
    let (client, _) = a.rpc::<u32, u32>(protocol()).unwrap();
    let (_, server) = b.rpc::<u32, u32>(protocol()).unwrap();
    let outcome = Arc::new(tokio::sync::Mutex::new(None));
    let o = outcome.clone();
    serve(server, move |request| {
        let o = o.clone();
        async move {
            let mut sink = request.respond_stream().unwrap();
            let mut n = 0;
            let result = loop {
                if let Err(e) = sink.send(&n).await {
                    break e;
                }
                n += 1;
            };
            *o.lock().await = Some(result);
        }
    });
    let mut stream = client.request_stream(b.local_peer_id(), &0).await.unwrap();
    for expected in 0..3 {
        assert_eq!(stream.next().await, Some(Ok(expected)));
    }
    drop(stream);
    soon("the sender stopped", async {
        while outcome.lock().await.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(*outcome.lock().await, Some(RespondError::Cancelled));
}

#[tokio::test]
async fn an_idempotent_request_to_a_persistent_peer_survives_a_reconnect() {
    let (b, _) = node(rpc_config()).await;
    let proxy = Proxy::start(b.local_addr()).await;
    let a_config = rpc_config()
        .persistent_peer(proxy.addr, b.local_peer_id())
        .backoff(peerwire::Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
            jitter_permille: 0,
        });
    let (a, _) = node(a_config).await;
    let b_id = b.local_peer_id();
    eventually("a connected to b", || a.is_connected(b_id)).await;
    let (client, _) = a.rpc::<u32, u32>(protocol()).unwrap();
    let (_, server) = b.rpc::<u32, u32>(protocol()).unwrap();
    // The first attempt of each request is held until the connection is cut; the resent
    // one is answered.
    let attempts = Arc::new(AtomicUsize::new(0));
    let at = attempts.clone();
    serve(server, move |request| {
        let at = at.clone();
        async move {
            if at.fetch_add(1, SeqCst) < 2 {
                request.cancelled().await;
            } else {
                let n = *request.body();
                let _ = request.respond(&(n * 10));
            }
        }
    });
    let idempotent = tokio::spawn({
        let client = client.clone();
        async move { client.request_idempotent(b_id, &4).await }
    });
    let plain = tokio::spawn({
        let client = client.clone();
        async move { client.request(b_id, &5).await }
    });
    eventually("both requests reached the server", || {
        attempts.load(SeqCst) == 2
    })
    .await;
    proxy.cut();
    assert_eq!(
        soon("plain request", plain).await.unwrap(),
        Err(RequestError::Disconnected)
    );
    assert_eq!(
        soon("idempotent request", idempotent).await.unwrap(),
        Ok(40)
    );
    assert!(client.stats().resent_after_reconnect >= 1);
}

/// Awaits every future, concurrently, in order (a small `join_all` without a new dependency).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// This process's resident set, in bytes (Linux; `None` elsewhere).
fn resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_streamed_answer_holds_memory_to_its_window() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 4096; // 1 GiB
    let (a, b) = pair().await;
    let config = protocol().stream_window(16);
    let (client, _) = a.rpc::<u32, Bytes>(config.clone()).unwrap();
    let (_, server) = b.rpc::<u32, Bytes>(config).unwrap();
    serve(server, |request| async move {
        // One chunk allocated once and sent by reference: the server itself holds no copies.
        let chunk = Bytes::from(vec![0x5a; CHUNK]);
        let mut sink = request.respond_stream().unwrap();
        for _ in 0..CHUNKS {
            sink.send(&chunk).await.unwrap();
        }
        sink.finish().await.unwrap();
    });
    let Some(before) = resident() else {
        return; // no /proc: nothing to measure on this platform
    };
    let mut stream = client.request_stream(b.local_peer_id(), &0).await.unwrap();
    let (mut bytes, mut peak) = (0usize, before);
    while let Some(chunk) = soon("a chunk", stream.next()).await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&x| x == 0x5a));
        bytes += chunk.len();
        peak = peak.max(resident().unwrap_or(0));
    }
    assert_eq!(bytes, CHUNK * CHUNKS);
    // The window is 16 chunks of 256 KiB each side (4 MiB each, 8 MiB with credit in flight);
    // buffers and the allocator add some. Unbounded, the growth would approach 1 GiB.
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 96 << 20,
        "resident memory grew by {} MiB while streaming 1 GiB",
        growth >> 20
    );
}

#[tokio::test]
async fn a_peer_that_breaks_the_request_protocol_is_charged_then_banned() {
    let (b, _) = node(rpc_config()).await;
    let (client, _server) = b
        .rpc::<u32, u32>(protocol().misbehaviour_budget(4))
        .unwrap();
    let mut events = b.events();
    let mut raw = RawPeer::connect(b.local_addr(), "peerwire-test").await;
    let raw_id = raw.id();
    eventually("the raw peer admitted", || b.is_connected(raw_id)).await;
    let bad: [&[u8]; 4] = [
        b"",                             // shorter than any header
        &[9, 0, 0, 0, 0, 0, 0, 0, 0],    // unknown frame kind
        &[3, 1, 0, 0, 0, 0, 0, 0, 0, 0], // a cancel with a trailing byte
        &[1, 0xe7, 3, 0, 0, 0, 0, 0, 0], // an answer to request 999, never made
    ];
    for frame in bad {
        raw.encoder
            .push_message_on(RPC, frame, 0, frame.len())
            .unwrap();
    }
    raw.flush().await.unwrap();
    let banned = soon("the ban", async {
        loop {
            match events.recv().await.unwrap() {
                peerwire::NetworkEvent::Banned { peer, reason, .. } if peer == raw_id => {
                    return reason;
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(banned, peerwire::BanReason::Application);
    assert_eq!(client.stats().violations, 4);
    assert!(raw.closed_by_remote().await);
}

/// Compile-time: the handles cross tasks (a request answered from another task, a client
/// shared by many).
#[test]
fn handles_can_move_between_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    fn moved<T: Send + 'static>() {}
    shared::<peerwire::protocols::rpc::RpcClient<u32, u32>>();
    moved::<RpcServer<u32, u32>>();
    moved::<Request<u32, u32>>();
    moved::<peerwire::protocols::rpc::ResponseSink<u32>>();
    moved::<peerwire::protocols::rpc::ResponseStream<u32>>();
}
