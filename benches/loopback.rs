//! Real loopback TCP: peerwire nodes against a plain, unencrypted tokio TCP baseline.
//!
//! Cases (all on one tokio multi-thread runtime with 2 workers, built once; nodes are started and
//! connected outside the timed part and shut down gracefully at the end):
//!
//! - `one_way/peerwire_send/SIZE`: node A `send().await`s a batch of N `Bytes` messages to node
//!   B (each `send` serializes the message), then waits until B's inbox has delivered all N
//!   (a counting task on B drains the inbox with `recv_many`). Throughput: messages per second
//!   for 64 B and 1 KiB, decimal bytes per second for 64 KiB and 1 MiB.
//! - `one_way/peerwire_send_encoded/SIZE`: the same with one message encoded once up front and
//!   queued with `send_encoded` (no per-message serialization on the sending side).
//! - `one_way/peerwire_reliable/SIZE`: as `peerwire_send`, with B a persistent peer of A, so
//!   every message goes through A's reliable stream (numbered, kept until B acknowledges it) and
//!   B judges its sequence numbers: the path validators use.
//! - `one_way/peerwire_durable/SIZE`: as `peerwire_reliable`, with B a durable peer: every
//!   message is written to A's data directory (redb, group-committed) before it may go on the
//!   wire and before `send` returns. One sender in sequence, so each send waits for its own
//!   commit: the worst case for the journal.
//! - `one_way/plain_tcp/SIZE`: the baseline: `FramedWrite<_, LengthDelimitedCodec>` fed N
//!   messages then flushed, a `FramedRead` on the other end counting frames. No encryption, no
//!   actor, no queues. The write buffer's back-pressure boundary is raised to 256 KiB to match
//!   peerwire's `write_batch_bytes`, and the read buffer starts at 64 KiB like peerwire's
//!   `read_chunk_size`, so the baseline also makes few, large syscalls.
//! - `rtt/{peerwire,plain_tcp}/64B`: ping-pong of one 64 B message with an echo task on the
//!   other end. Criterion reports the mean; every individual round trip is also recorded and
//!   p50/p90/p99/p99.9 are printed to stdout.
//! - `broadcast/peerwire/SIZE`: one hub and 8 peers (9 nodes); the hub `broadcast().await`s N
//!   messages and waits until every peer has delivered all N. Throughput: messages delivered to
//!   each peer per second.
//! - `broadcast/plain_tcp_8_peers/SIZE`: the baseline: one task feeds each message to 8 plain
//!   TCP connections in turn (`FramedWrite`, 256 KiB buffers), flushes them at the end of the
//!   batch, and waits until every receiving end has counted all N.
//! - `broadcast_stalled/{peerwire_7_peers,peerwire_7_peers_and_1_stalled}/1KiB`: the same with 7
//!   reading peers, alone and then beside an 8th peer that completed the handshake and never
//!   reads a byte (its hub has a 10-minute `write_timeout`, so the stalled peer stays connected
//!   for the whole case). Throughput: messages delivered to each reading peer per second; the
//!   ratio of the two is what one stalled peer costs the others. The stalled peer's copies are
//!   skipped (`send_wait`, then at once), so this case does not assert `dropped_queue_full == 0`.
//!
//! All nodes use `Config::default()` except for the network id and the inbound rate limits
//! (per connection and per address: every node is on 127.0.0.1), which are lifted (see
//! `config()`). In-flight messages never exceed one batch, and every batch fits the three
//! quarters of the default inbox (16384 messages / 256 MiB) one sender may fill, so nothing
//! can be dropped;
//! every case still asserts `dropped_inbox_full == 0`, `dropped_rate_limited == 0` and
//! `dropped_queue_full == 0` at the end and prints the sender's messages per frame.
//!
//! Run: `cargo bench --bench loopback` (or with a filter, e.g. `-- one_way/peerwire`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::{SinkExt, StreamExt};
use peerwire::{Config, Inbox, Keypair, Network, PeerId, PeerStats};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Message sizes and messages per timed iteration (one batch). A batch never exceeds three
/// quarters of the default inbox (16384 messages, 256 MiB), so nothing can be dropped.
const ONE_WAY: [(usize, &str, u64); 4] = [
    (64, "64B", 8192),
    (1024, "1KiB", 8192),
    (64 * 1024, "64KiB", 512),
    (1024 * 1024, "1MiB", 32),
];
const BROADCAST: [(usize, &str, u64); 2] = [(1024, "1KiB", 4096), (64 * 1024, "64KiB", 256)];
const BROADCAST_PEERS: usize = 8;
const RTT_SIZE: usize = 64;
/// Largest number of messages the counting tasks take from an inbox at once.
const RECV_BATCH: usize = 4096;
/// A batch that has not fully arrived after this long means something was lost: fail loudly.
const STALL: Duration = Duration::from_secs(60);
/// Matches peerwire's default `write_batch_bytes` and `read_chunk_size` for the plain baseline.
const PLAIN_WRITE_BUFFER: usize = 256 * 1024;
const PLAIN_READ_BUFFER: usize = 64 * 1024;
const MAX_FRAME: usize = 16 << 20;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Defaults, except the per-peer inbound rate limit (1 M msgs/s, 1 GiB/s by default), which a
/// benchmark at full speed would trip by design: it measures the transport, not the policy.
/// (Messages over the limit are dropped and charged as misbehaviour; the default limits sit
/// below the 64 B and 64 KiB throughput targets.)
fn config() -> Config {
    Config::default()
        .network_id("peerwire-bench")
        .max_inbound_messages_per_sec(0)
        .max_inbound_bytes_per_sec(0)
        .max_inbound_messages_per_sec_per_ip(0)
}

fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn throughput(size: usize, n: u64) -> Throughput {
    if size >= 64 * 1024 {
        Throughput::BytesDecimal(size as u64 * n)
    } else {
        Throughput::Elements(n)
    }
}

async fn start_node() -> (Network<Bytes>, Inbox<Bytes>) {
    Network::start(config(), Keypair::generate()).await.unwrap()
}

/// Spawns a task that drains `inbox` with `recv_many` and publishes the running total.
fn count_inbox(inbox: Inbox<Bytes>) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(RECV_BATCH);
        let mut total = 0u64;
        loop {
            let n = inbox.recv_many(&mut buf, RECV_BATCH).await;
            if n == 0 {
                break;
            }
            total += n as u64;
            buf.clear();
            tx.send_replace(total);
        }
    });
    rx
}

/// Waits until the published total reaches `target`; panics if it stalls (a lost message).
async fn wait_total(rx: &mut watch::Receiver<u64>, target: u64) {
    let outcome = tokio::time::timeout(STALL, rx.wait_for(|&n| n >= target))
        .await
        .map(|r| r.map(|_| ()));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("receiver ended before {target} messages"),
        Err(_) => {
            let got = *rx.borrow();
            panic!("stalled at {got} of {target} messages: something was dropped")
        }
    }
}

async fn wait_connected(node: &Network<Bytes>, peer: PeerId) {
    let deadline = Instant::now() + STALL;
    while !node.is_connected(peer) {
        assert!(Instant::now() < deadline, "peer never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sum_stats(node: &Network<Bytes>) -> PeerStats {
    let mut sum = PeerStats::default();
    for info in node.peers() {
        let s = info.stats;
        sum.messages_in += s.messages_in;
        sum.messages_out += s.messages_out;
        sum.bytes_out += s.bytes_out;
        sum.frames_in += s.frames_in;
        sum.frames_out += s.frames_out;
        sum.dropped_inbox_full += s.dropped_inbox_full;
        sum.dropped_queue_full += s.dropped_queue_full;
        sum.dropped_on_close += s.dropped_on_close;
        sum.dropped_rate_limited += s.dropped_rate_limited;
        sum.rejected += s.rejected;
    }
    sum
}

/// Asserts that nothing was dropped anywhere and prints how well the sender packed its frames
/// since `before`.
fn check_case(
    what: &str,
    sender: &Network<Bytes>,
    receivers: &[&Network<Bytes>],
    before: PeerStats,
) {
    let out = sum_stats(sender);
    assert_eq!(
        out.dropped_queue_full, 0,
        "{what}: sender queue dropped messages"
    );
    assert_eq!(out.rejected, 0, "{what}: sender rejected messages");
    for receiver in receivers {
        let s = sum_stats(receiver);
        assert_eq!(
            s.dropped_inbox_full, 0,
            "{what}: receiver inbox dropped messages"
        );
        assert_eq!(
            s.dropped_rate_limited, 0,
            "{what}: receiver rate-limited messages"
        );
        assert_eq!(s.rejected, 0, "{what}: receiver rejected messages");
    }
    let messages = out.messages_out - before.messages_out;
    let frames = (out.frames_out - before.frames_out).max(1);
    if messages == 0 {
        return; // filtered out on the command line
    }
    println!(
        "{what}: {messages} messages in {frames} frames ({:.1} messages/frame), 0 dropped",
        messages as f64 / frames as f64
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn print_rtt(what: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        return;
    }
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{what}: {} round trips: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, min {:.1} µs, max {:.1} µs",
        samples.len(),
        us(percentile(samples, 0.50)),
        us(percentile(samples, 0.90)),
        us(percentile(samples, 0.99)),
        us(percentile(samples, 0.999)),
        us(samples[0]),
        us(samples[samples.len() - 1]),
    );
}

// ---------------------------------------------------------------------------------------------
// One-way throughput.

struct PeerwirePair {
    a: Network<Bytes>,
    b: Network<Bytes>,
    b_id: PeerId,
    /// Kept open so the connection is never closed for an unread inbox.
    _a_inbox: Inbox<Bytes>,
    received: watch::Receiver<u64>,
    expected: u64,
}

impl PeerwirePair {
    fn start(rt: &Runtime) -> Self {
        rt.block_on(async {
            let (a, a_inbox) = start_node().await;
            let (b, b_inbox) = start_node().await;
            let b_id = a.connect(b.local_addr()).await.unwrap();
            wait_connected(&b, a.local_peer_id()).await;
            let received = count_inbox(b_inbox);
            Self {
                a,
                b,
                b_id,
                _a_inbox: a_inbox,
                received,
                expected: 0,
            }
        })
    }

    /// A pair where `a` keeps `b` as a persistent peer: every message goes through `a`'s
    /// reliable stream (numbered, buffered until acknowledged), as a validator's do.
    fn start_reliable(rt: &Runtime) -> Self {
        Self::start_with_peer(rt, |config, addr, id| config.persistent_peer(addr, id))
    }

    /// A pair where `b` is a durable peer of `a`: every message is also written to `a`'s data
    /// directory (a fresh one under the system's temporary directory) before `send` returns.
    /// One sender sending in sequence: each send waits for its own commit.
    fn start_durable(rt: &Runtime) -> Self {
        let dir =
            std::env::temp_dir().join(format!("peerwire-bench-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self::start_with_peer(rt, |config, addr, id| {
            config.data_dir(&dir).durable_peer(addr, id)
        })
    }

    /// A pair where `a` is configured with `b` by `with_b` (its address and id).
    fn start_with_peer(
        rt: &Runtime,
        with_b: impl FnOnce(Config, SocketAddr, PeerId) -> Config,
    ) -> Self {
        rt.block_on(async {
            let (b, b_inbox) = start_node().await;
            let b_id = b.local_peer_id();
            let (a, a_inbox) =
                Network::start(with_b(config(), b.local_addr(), b_id), Keypair::generate())
                    .await
                    .unwrap();
            wait_connected(&a, b_id).await;
            wait_connected(&b, a.local_peer_id()).await;
            let received = count_inbox(b_inbox);
            Self {
                a,
                b,
                b_id,
                _a_inbox: a_inbox,
                received,
                expected: 0,
            }
        })
    }

    /// One timed run of `iters` batches of `n` messages; returns the elapsed time.
    fn run(
        &mut self,
        rt: &Runtime,
        iters: u64,
        n: u64,
        message: &Bytes,
        encoded: bool,
    ) -> Duration {
        let (a, b_id, message) = (self.a.clone(), self.b_id, message.clone());
        let mut received = self.received.clone();
        let mut target = self.expected;
        self.expected += iters * n;
        rt.block_on(rt.spawn(async move {
            let pre_encoded = a.encode(&message).unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                if encoded {
                    for _ in 0..n {
                        a.send_encoded(b_id, &pre_encoded).await.unwrap();
                    }
                } else {
                    for _ in 0..n {
                        a.send(b_id, &message).await.unwrap();
                    }
                }
                target += n;
                wait_total(&mut received, target).await;
            }
            start.elapsed()
        }))
        .unwrap()
    }

    fn shutdown(self, rt: &Runtime) {
        rt.block_on(async {
            self.a.shutdown().await;
            self.b.shutdown().await;
        });
    }
}

type PlainSink = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;
type PlainStream = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;

fn plain_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

fn plain_halves(stream: TcpStream) -> (PlainStream, PlainSink) {
    stream.set_nodelay(true).unwrap();
    let (read, write) = stream.into_split();
    let mut sink = FramedWrite::new(write, plain_codec());
    sink.set_backpressure_boundary(PLAIN_WRITE_BUFFER);
    let stream = FramedRead::with_capacity(read, plain_codec(), PLAIN_READ_BUFFER);
    (stream, sink)
}

/// A connected pair of plain TCP sockets; the accepted end is handed to `serve`.
async fn plain_connect<F, Fut>(serve: F) -> (PlainStream, PlainSink)
where
    F: FnOnce(PlainStream, PlainSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (server_stream, server_sink) = plain_halves(server);
    tokio::spawn(serve(server_stream, server_sink));
    plain_halves(client)
}

/// The plain receiving end: counts frames as they arrive and publishes the running total.
async fn count_frames(frames: PlainStream, tx: watch::Sender<u64>) {
    let mut chunks = frames.ready_chunks(RECV_BATCH);
    let mut total = 0u64;
    while let Some(chunk) = chunks.next().await {
        assert!(chunk.iter().all(Result::is_ok), "plain frame error");
        total += chunk.len() as u64;
        tx.send_replace(total);
    }
}

struct PlainPair {
    sink: Option<PlainSink>,
    _stream: PlainStream,
    received: watch::Receiver<u64>,
    expected: u64,
}

impl PlainPair {
    fn start(rt: &Runtime) -> Self {
        rt.block_on(async {
            let (tx, received) = watch::channel(0u64);
            let (stream, sink) = plain_connect(|frames, _sink| count_frames(frames, tx)).await;
            Self {
                sink: Some(sink),
                _stream: stream,
                received,
                expected: 0,
            }
        })
    }

    fn run(&mut self, rt: &Runtime, iters: u64, n: u64, message: &Bytes) -> Duration {
        let mut sink = self.sink.take().unwrap();
        let message = message.clone();
        let mut received = self.received.clone();
        let mut target = self.expected;
        self.expected += iters * n;
        let (sink, elapsed) = rt
            .block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..n {
                        sink.feed(message.clone()).await.unwrap();
                    }
                    SinkExt::<Bytes>::flush(&mut sink).await.unwrap();
                    target += n;
                    wait_total(&mut received, target).await;
                }
                (sink, start.elapsed())
            }))
            .unwrap();
        self.sink = Some(sink);
        elapsed
    }
}

/// Every one-way size over `pair`, once per `(name, encoded)` case, each checked for drops.
fn one_way_cases(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    pair: &mut PeerwirePair,
    cases: &[(&str, bool)],
) {
    for (size, label, n) in ONE_WAY {
        let message = payload(size);
        group.throughput(throughput(size, n));
        for &(name, encoded) in cases {
            let before = sum_stats(&pair.a);
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| pair.run(rt, iters, n, &message, encoded));
            });
            check_case(
                &format!("one_way/{name}/{label}"),
                &pair.a,
                &[&pair.b],
                before,
            );
        }
    }
}

fn one_way(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("one_way");
    let mut pair = PeerwirePair::start(rt);
    let cases = [("peerwire_send", false), ("peerwire_send_encoded", true)];
    one_way_cases(&mut group, rt, &mut pair, &cases);
    pair.shutdown(rt);

    // The reliable path (a persistent peer), beside the best-effort one.
    let mut reliable = PeerwirePair::start_reliable(rt);
    one_way_cases(
        &mut group,
        rt,
        &mut reliable,
        &[("peerwire_reliable", false)],
    );
    reliable.shutdown(rt);

    // The same with the messages kept on disk first (a durable peer).
    let mut durable = PeerwirePair::start_durable(rt);
    one_way_cases(&mut group, rt, &mut durable, &[("peerwire_durable", false)]);
    durable.shutdown(rt);

    let mut plain = PlainPair::start(rt);
    for (size, label, n) in ONE_WAY {
        let message = payload(size);
        group.throughput(throughput(size, n));
        group.bench_function(BenchmarkId::new("plain_tcp", label), |b| {
            b.iter_custom(|iters| plain.run(rt, iters, n, &message));
        });
    }
    drop(plain);
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Round trip.

fn rtt(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("rtt");
    let message = payload(RTT_SIZE);

    // peerwire: A sends, B's echo task sends each message back to its sender.
    let (a, b, b_id, a_inbox) = rt.block_on(async {
        let (a, a_inbox) = start_node().await;
        let (b, b_inbox) = start_node().await;
        let b_id = a.connect(b.local_addr()).await.unwrap();
        wait_connected(&b, a.local_peer_id()).await;
        let echo = b.clone();
        tokio::spawn(async move {
            while let Some((from, m)) = b_inbox.recv().await {
                if echo.send(from, &m).await.is_err() {
                    break;
                }
            }
        });
        (a, b, b_id, a_inbox)
    });
    let mut a_inbox = Some(a_inbox);
    let mut samples = Vec::new();
    let before = sum_stats(&a);
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("peerwire", "64B"), |bench| {
        bench.iter_custom(|iters| {
            let (a, message) = (a.clone(), message.clone());
            let inbox = a_inbox.take().unwrap();
            let (inbox, batch, total) = rt
                .block_on(rt.spawn(async move {
                    let mut batch = Vec::with_capacity(iters as usize);
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        a.send(b_id, &message).await.unwrap();
                        let (_, echoed) = inbox.recv().await.unwrap();
                        let dt = t0.elapsed();
                        assert_eq!(echoed.len(), RTT_SIZE);
                        batch.push(dt);
                        total += dt;
                    }
                    (inbox, batch, total)
                }))
                .unwrap();
            a_inbox = Some(inbox);
            samples.extend(batch);
            total
        });
    });
    check_case("rtt/peerwire/64B", &a, &[&b], before);
    print_rtt("rtt/peerwire/64B", &mut samples);
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
    drop(a_inbox);

    // Plain TCP: the same over LengthDelimitedCodec, flushing every message.
    let mut client = Some(
        rt.block_on(plain_connect(|mut frames, mut sink| async move {
            while let Some(frame) = frames.next().await {
                if sink.send(frame.unwrap().freeze()).await.is_err() {
                    break;
                }
            }
        })),
    );
    let mut samples = Vec::new();
    group.bench_function(BenchmarkId::new("plain_tcp", "64B"), |bench| {
        bench.iter_custom(|iters| {
            let (mut stream, mut sink) = client.take().unwrap();
            let message = message.clone();
            let (pair, batch, total) = rt
                .block_on(rt.spawn(async move {
                    let mut batch = Vec::with_capacity(iters as usize);
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        sink.send(message.clone()).await.unwrap();
                        let echoed = stream.next().await.unwrap().unwrap();
                        let dt = t0.elapsed();
                        assert_eq!(echoed.len(), RTT_SIZE);
                        batch.push(dt);
                        total += dt;
                    }
                    ((stream, sink), batch, total)
                }))
                .unwrap();
            client = Some(pair);
            samples.extend(batch);
            total
        });
    });
    print_rtt("rtt/plain_tcp/64B", &mut samples);
    drop(client);
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Broadcast.

struct Star {
    hub: Network<Bytes>,
    _hub_inbox: Inbox<Bytes>,
    leaves: Vec<Network<Bytes>>,
    received: Vec<watch::Receiver<u64>>,
    expected: u64,
    /// Peers a broadcast must reach (reading leaves plus the stalled one, if any).
    peers: usize,
    /// A peer that completed the handshake and never reads.
    _stalled: Option<TcpStream>,
}

/// Dials `addr`, completes the handshake as a fresh identity, and never reads.
async fn stalled_peer(addr: SocketAddr) -> TcpStream {
    let keypair = Keypair::generate();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let params = peerwire::handshake::HandshakeParams {
        network_id: "peerwire-bench".into(),
        listen_addr: None,
        expected_peer: None,
        dial_seq: 1,
    };
    peerwire::handshake::perform(&mut stream, &keypair, params, true)
        .await
        .unwrap();
    stream
}

impl Star {
    fn start(rt: &Runtime) -> Self {
        Self::start_with(rt, BROADCAST_PEERS, false)
    }

    fn start_with(rt: &Runtime, leaves_n: usize, stalled: bool) -> Self {
        rt.block_on(async {
            let (hub, hub_inbox) = if stalled {
                // The stalled peer must stay connected for the whole case.
                let config = config().write_timeout(Duration::from_secs(600));
                Network::start(config, Keypair::generate()).await.unwrap()
            } else {
                start_node().await
            };
            let mut leaves = Vec::new();
            let mut received = Vec::new();
            for _ in 0..leaves_n {
                let (leaf, inbox) = start_node().await;
                hub.connect(leaf.local_addr()).await.unwrap();
                wait_connected(&leaf, hub.local_peer_id()).await;
                received.push(count_inbox(inbox));
                leaves.push(leaf);
            }
            let stalled = if stalled {
                let stream = stalled_peer(hub.local_addr()).await;
                let deadline = Instant::now() + STALL;
                while hub.peers().len() < leaves_n + 1 {
                    assert!(Instant::now() < deadline, "stalled peer never admitted");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some(stream)
            } else {
                None
            };
            let peers = leaves_n + usize::from(stalled.is_some());
            assert_eq!(hub.peers().len(), peers);
            Self {
                hub,
                _hub_inbox: hub_inbox,
                leaves,
                received,
                expected: 0,
                peers,
                _stalled: stalled,
            }
        })
    }

    fn run(&mut self, rt: &Runtime, iters: u64, n: u64, message: &Bytes) -> Duration {
        let (hub, message) = (self.hub.clone(), message.clone());
        let peers = self.peers;
        let mut received = self.received.clone();
        let mut target = self.expected;
        self.expected += iters * n;
        rt.block_on(rt.spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..n {
                    let report = hub.broadcast(&message).await.unwrap();
                    assert_eq!(report.queued + report.skipped_full, peers);
                }
                target += n;
                for rx in &mut received {
                    wait_total(rx, target).await;
                }
            }
            start.elapsed()
        }))
        .unwrap()
    }
}

fn broadcast(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("broadcast");
    let mut star = Star::start(rt);
    for (size, label, n) in BROADCAST {
        let message = payload(size);
        // Messages delivered to each peer per second.
        group.throughput(Throughput::Elements(n));
        let before = sum_stats(&star.hub);
        group.bench_function(BenchmarkId::new("peerwire_8_peers", label), |b| {
            b.iter_custom(|iters| star.run(rt, iters, n, &message));
        });
        let leaves: Vec<&Network<Bytes>> = star.leaves.iter().collect();
        check_case(
            &format!("broadcast/peerwire_8_peers/{label}"),
            &star.hub,
            &leaves,
            before,
        );
    }
    group.finish();
    rt.block_on(async {
        star.hub.shutdown().await;
        for leaf in &star.leaves {
            leaf.shutdown().await;
        }
    });
}

/// The plain baseline of a broadcast: one hub task feeding each message to 8 plain TCP
/// connections in turn (each a `FramedWrite` with a 256 KiB buffer), flushing all at the end
/// of a batch; a counting task per receiving end.
struct PlainStar {
    sinks: Option<Vec<PlainSink>>,
    _streams: Vec<PlainStream>,
    received: Vec<watch::Receiver<u64>>,
    expected: u64,
}

impl PlainStar {
    fn start(rt: &Runtime) -> Self {
        rt.block_on(async {
            let mut sinks = Vec::new();
            let mut streams = Vec::new();
            let mut received = Vec::new();
            for _ in 0..BROADCAST_PEERS {
                let (tx, rx) = watch::channel(0u64);
                let (stream, sink) = plain_connect(|frames, _sink| count_frames(frames, tx)).await;
                sinks.push(sink);
                streams.push(stream);
                received.push(rx);
            }
            Self {
                sinks: Some(sinks),
                _streams: streams,
                received,
                expected: 0,
            }
        })
    }

    fn run(&mut self, rt: &Runtime, iters: u64, n: u64, message: &Bytes) -> Duration {
        let mut sinks = self.sinks.take().unwrap();
        let message = message.clone();
        let mut received = self.received.clone();
        let mut target = self.expected;
        self.expected += iters * n;
        let (sinks, elapsed) = rt
            .block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..n {
                        for sink in &mut sinks {
                            sink.feed(message.clone()).await.unwrap();
                        }
                    }
                    for sink in &mut sinks {
                        SinkExt::<Bytes>::flush(sink).await.unwrap();
                    }
                    target += n;
                    for rx in &mut received {
                        wait_total(rx, target).await;
                    }
                }
                (sinks, start.elapsed())
            }))
            .unwrap();
        self.sinks = Some(sinks);
        elapsed
    }
}

fn broadcast_plain(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("broadcast");
    let mut star = PlainStar::start(rt);
    for (size, label, n) in BROADCAST {
        let message = payload(size);
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new("plain_tcp_8_peers", label), |b| {
            b.iter_custom(|iters| star.run(rt, iters, n, &message));
        });
    }
    group.finish();
}

fn broadcast_stalled(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("broadcast_stalled");
    let (size, label, n) = BROADCAST[0];
    let message = payload(size);
    group.throughput(Throughput::Elements(n));
    for (name, stalled) in [
        ("peerwire_7_peers", false),
        ("peerwire_7_peers_and_1_stalled", true),
    ] {
        let mut star = Star::start_with(rt, BROADCAST_PEERS - 1, stalled);
        group.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter_custom(|iters| star.run(rt, iters, n, &message));
        });
        let stats = star.hub.stats();
        println!(
            "broadcast_stalled/{name}/{label}: {} copies skipped, {} waits expired, {} stalled \
             disconnects",
            stats.broadcast_skipped_full, stats.send_wait_expired, stats.stalled_disconnects
        );
        rt.block_on(async {
            star.hub.shutdown().await;
            for leaf in &star.leaves {
                leaf.shutdown().await;
            }
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let rt = runtime();
    one_way(&mut c, &rt);
    rtt(&mut c, &rt);
    broadcast(&mut c, &rt);
    broadcast_plain(&mut c, &rt);
    broadcast_stalled(&mut c, &rt);
    c.final_summary();
}
