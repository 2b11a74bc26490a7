//! Request/response over loopback, beside plain tokio TCP in the same run.
//!
//! Cases (one tokio multi-thread runtime with 2 workers; nodes started and connected outside
//! the measured part; every figure is the median of `ROUNDS` rounds):
//!
//! - `rtt/plain_tcp`: ping-pong of a 64 B frame over a plain TCP socket
//!   (`LengthDelimitedCodec`, no encryption): the floor for any round trip.
//! - `rtt/peerwire_one_way`: a 64 B message sent with `Channel::send`, echoed by a task on the
//!   other node with `Channel::send`: two one-way messages, the round trip an RPC is built on.
//! - `rpc/1_in_flight`: `RpcClient::request` with a 64 B raw body, answered at once: latency.
//! - `rpc/64_in_flight`: 64 tasks each looping `request` for `DURATION`: requests per second
//!   and the latency each request saw.
//! - `plain_tcp/64_in_flight`: the baseline: 64 requests kept outstanding on one plain TCP
//!   socket (a writer task and a reader task), each answered by an echo: requests per second.
//! - `stream/rpc`: one `request_stream` answered with `STREAM_CHUNKS` chunks of 64 KiB on a bulk
//!   channel (window 16, or `RPC_WINDOW`): MB/s, against `stream/one_way` (the same bytes with `Channel::send`
//!   on the same bulk channel) and `stream/plain_tcp`.
//! - `rpc/1_in_flight_beside_stream`: `rpc/1_in_flight` on the high channel while a stream
//!   runs on the bulk channel of the same connection: head-of-line blocking shows here.
//! - `rpc/1_in_flight_beside_stream_apart`: the same requests while the same stream runs
//!   between two other nodes in the same process (its own connection): the floor of a design
//!   that carries bulk channels on a connection of their own.
//! - `plain_tcp/beside_stream_apart` and `plain_tcp/beside_stream_same`: its two baselines, a
//!   plain 64 B ping-pong while a plain stream of the same chunks runs on another socket (no
//!   head-of-line blocking, only the two cores shared: the floor for any design on one
//!   machine) and on the same socket (what one plain TCP connection gives).
//!
//! Run: `cargo bench --bench rpc` (`RPC_WINDOW=N` sets the stream window, default 16).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use peerwire::protocols::rpc::{RpcClient, RpcConfig};
use peerwire::{ChannelSpec, Config, Keypair, Network, PeerId};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

const ROUNDS: usize = 3;
const SAMPLES: usize = 5_000;
const DURATION: Duration = Duration::from_secs(2);
const IN_FLIGHT: usize = 64;
const BODY: usize = 64;
const CHUNK: usize = 64 * 1024;
const STREAM_CHUNKS: usize = 4096;

const RPC: u16 = 1;
const BULK: u16 = 2;
const ECHO: u16 = 3;
const ONE_WAY: u16 = 4;

fn config() -> Config {
    Config::default()
        .network_id("peerwire-rpc-bench")
        .max_inbound_messages_per_sec(0)
        .max_inbound_bytes_per_sec(0)
        // Every node is on 127.0.0.1: the per-address budget would count them all as one.
        .max_inbound_messages_per_sec_per_ip(0)
        .channel(RPC, ChannelSpec::high().send_queue_capacity(4096))
        .channel(BULK, ChannelSpec::bulk())
        .channel(ECHO, ChannelSpec::high())
        .channel(ONE_WAY, ChannelSpec::bulk())
}

fn protocol() -> RpcConfig {
    RpcConfig::new(RPC)
        .stream_channel(BULK)
        .max_inbound_requests(IN_FLIGHT)
        .stream_window(window())
}

/// The stream window: 16 chunks (the default), or `RPC_WINDOW`.
fn window() -> u32 {
    std::env::var("RPC_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(16)
}

struct Pair {
    a: Network<Bytes>,
    b: Network<Bytes>,
    client: RpcClient<Bytes, Bytes>,
    b_id: PeerId,
}

async fn pair() -> Pair {
    let (a, _) = Network::<Bytes>::start(config(), Keypair::generate())
        .await
        .unwrap();
    let (b, _) = Network::<Bytes>::start(config(), Keypair::generate())
        .await
        .unwrap();
    let (client, _) = a.rpc::<Bytes, Bytes>(protocol()).unwrap();
    let (_, mut server) = b.rpc::<Bytes, Bytes>(protocol()).unwrap();
    // Unary requests are answered inline (an echo); a stream request is served by a task.
    tokio::spawn(async move {
        while let Some(request) = server.recv().await {
            if request.wants_stream() {
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![7u8; CHUNK]);
                    let mut sink = request.respond_stream().unwrap();
                    for _ in 0..STREAM_CHUNKS {
                        if sink.send(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = sink.finish().await;
                });
            } else {
                let body = request.body().clone();
                let _ = request.respond(&body);
            }
        }
    });
    let b_id = b.local_peer_id();
    a.connect(b.local_addr()).await.unwrap();
    while !b.is_connected(a.local_peer_id()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Pair { a, b, client, b_id }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// p50 and p99 in microseconds.
fn p50_p99(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn plain_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(16 << 20)
        .new_codec()
}

type PlainRead = FramedRead<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>;
type PlainWrite = FramedWrite<tokio::net::tcp::OwnedWriteHalf, LengthDelimitedCodec>;

/// Both ends of a plain loopback TCP connection, Nagle off.
async fn plain_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    for s in [&client, &server] {
        s.set_nodelay(true).unwrap();
    }
    (client, server)
}

/// A plain TCP connection whose other end echoes every frame.
async fn plain_echo() -> (PlainRead, PlainWrite) {
    let (client, server) = plain_pair().await;
    let (sr, sw) = server.into_split();
    tokio::spawn(async move {
        let mut frames = FramedRead::with_capacity(sr, plain_codec(), 64 * 1024);
        let mut sink = FramedWrite::new(sw, plain_codec());
        while let Some(Ok(frame)) = frames.next().await {
            // Echo whatever is ready, then flush once: a pipelining server. The client may
            // close with echoes unsent (`plain_in_flight` stops at its deadline): not a fault.
            if sink.feed(frame.freeze()).await.is_err() {
                return;
            }
            while let Some(Some(Ok(more))) = frames.now_or_never_ready() {
                if sink.feed(more.freeze()).await.is_err() {
                    return;
                }
            }
            if SinkExt::<Bytes>::flush(&mut sink).await.is_err() {
                return;
            }
        }
    });
    let (cr, cw) = client.into_split();
    (
        FramedRead::with_capacity(cr, plain_codec(), 64 * 1024),
        FramedWrite::new(cw, plain_codec()),
    )
}

/// `Option` of a ready item without waiting.
trait NowOrNever: StreamExt + Unpin {
    fn now_or_never_ready(&mut self) -> Option<Option<Self::Item>> {
        futures::FutureExt::now_or_never(self.next())
    }
}
impl<S: StreamExt + Unpin> NowOrNever for S {}

async fn plain_rtt() -> Vec<Duration> {
    let (mut read, mut write) = plain_echo().await;
    let body = Bytes::from(vec![1u8; BODY]);
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        write.send(body.clone()).await.unwrap();
        read.next().await.unwrap().unwrap();
        samples.push(start.elapsed());
    }
    samples
}

async fn plain_in_flight() -> f64 {
    let (mut read, mut write) = plain_echo().await;
    let body = Bytes::from(vec![1u8; BODY]);
    // Keep IN_FLIGHT outstanding: a credit counter between the writer and the reader.
    let credit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (credit.clone(), stop.clone());
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while !s.load(Relaxed) {
            let permit = c.acquire().await.unwrap();
            permit.forget();
            write.feed(body.clone()).await.unwrap();
            if c.available_permits() == 0 {
                SinkExt::<Bytes>::flush(&mut write).await.unwrap();
            }
            sent += 1;
        }
        SinkExt::<Bytes>::flush(&mut write).await.unwrap();
        sent
    });
    let start = Instant::now();
    let mut answered = 0u64;
    while start.elapsed() < DURATION {
        read.next().await.unwrap().unwrap();
        answered += 1;
        credit.add_permits(1);
    }
    stop.store(true, Relaxed);
    credit.add_permits(IN_FLIGHT);
    let rate = answered as f64 / start.elapsed().as_secs_f64();
    let _ = writer.await;
    rate
}

async fn one_way_rtt(p: &Pair) -> Vec<Duration> {
    let (a_echo, a_inbox) = p.a.channel::<Bytes>(ECHO).unwrap();
    let (b_echo, b_inbox) = p.b.channel::<Bytes>(ECHO).unwrap();
    tokio::spawn(async move {
        while let Some((from, message)) = b_inbox.recv().await {
            let _ = b_echo.send(from, &message).await;
        }
    });
    let body = Bytes::from(vec![1u8; BODY]);
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..ROUNDS * SAMPLES {
        let start = Instant::now();
        a_echo.send(p.b_id, &body).await.unwrap();
        a_inbox.recv().await.unwrap();
        samples.push(start.elapsed());
    }
    samples
}

async fn rpc_sequential(p: &Pair, n: usize) -> Vec<Duration> {
    let body = Bytes::from(vec![1u8; BODY]);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        p.client.request(p.b_id, &body).await.unwrap();
        samples.push(start.elapsed());
    }
    samples
}

/// `rpc_sequential` samples on `p`, taken while one streamed answer runs on `streaming` (`p`
/// itself, or another pair of nodes), from 50 ms after it starts until it ends.
async fn requests_beside_stream(p: &Pair, streaming: &Pair) -> Vec<Duration> {
    let stream = {
        let client = streaming.client.clone();
        let peer = streaming.b_id;
        tokio::spawn(async move {
            let mut s = client.request_stream(peer, &Bytes::new()).await.unwrap();
            while let Some(c) = s.next().await {
                c.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut samples = Vec::new();
    while !stream.is_finished() && samples.len() < SAMPLES {
        samples.extend(rpc_sequential(p, 50).await);
    }
    stream.await.unwrap();
    samples
}

async fn rpc_in_flight(p: &Pair) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let client = p.client.clone();
            let peer = p.b_id;
            tokio::spawn(async move {
                let body = Bytes::from(vec![1u8; BODY]);
                let mut samples = Vec::new();
                while start.elapsed() < DURATION {
                    let t = Instant::now();
                    client.request(peer, &body).await.unwrap();
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.unwrap());
    }
    (
        samples.len() as f64 / start.elapsed().as_secs_f64(),
        samples,
    )
}

/// MB/s of one streamed answer.
async fn rpc_stream(p: &Pair) -> f64 {
    let start = Instant::now();
    let mut stream = p
        .client
        .request_stream(p.b_id, &Bytes::new())
        .await
        .unwrap();
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.unwrap().len();
    }
    assert_eq!(bytes, CHUNK * STREAM_CHUNKS);
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

async fn one_way_stream(
    p: &Pair,
    channel: &peerwire::Channel<Bytes>,
    inbox: &peerwire::Inbox<Bytes>,
) -> f64 {
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let start = Instant::now();
    let sender = {
        let channel = channel.clone();
        let peer = p.b_id;
        tokio::spawn(async move {
            for _ in 0..STREAM_CHUNKS {
                channel.send(peer, &chunk).await.unwrap();
            }
        })
    };
    let mut got = 0;
    let mut buf = Vec::new();
    while got < STREAM_CHUNKS {
        got += inbox.recv_many(&mut buf, 256).await;
        buf.clear();
    }
    sender.await.unwrap();
    (CHUNK * STREAM_CHUNKS) as f64 / start.elapsed().as_secs_f64() / 1e6
}

async fn plain_stream() -> f64 {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let start = Instant::now();
    tokio::spawn(async move {
        let mut sink = FramedWrite::new(server, plain_codec());
        sink.set_backpressure_boundary(256 * 1024);
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        for _ in 0..STREAM_CHUNKS {
            sink.feed(chunk.clone()).await.unwrap();
        }
        SinkExt::<Bytes>::flush(&mut sink).await.unwrap();
    });
    let mut frames = FramedRead::with_capacity(client, plain_codec(), 64 * 1024);
    for _ in 0..STREAM_CHUNKS {
        frames.next().await.unwrap().unwrap();
    }
    (CHUNK * STREAM_CHUNKS) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Plain TCP ping-pong samples (64 B) taken while a plain TCP stream of `STREAM_CHUNKS`
/// chunks runs: on its own socket (`same_socket` false: no head-of-line blocking, only the
/// two cores shared, the floor for any design on one machine), or on the same socket as the
/// pings (`same_socket` true: frames tagged by a first byte; the streaming side echoes a ping
/// as soon as its read task hands it over, flushing what is buffered before it).
async fn plain_beside_stream(same_socket: bool) -> Vec<Duration> {
    let (client, server) = plain_pair().await;
    let (sr, sw) = server.into_split();
    let (pings_in, mut pings) = tokio::sync::mpsc::channel::<Bytes>(16);
    // The streaming side: its read task hands pings to its write task.
    tokio::spawn(async move {
        let mut frames = FramedRead::with_capacity(sr, plain_codec(), 64 * 1024);
        while let Some(Ok(frame)) = frames.next().await {
            if pings_in.send(frame.freeze()).await.is_err() {
                return;
            }
        }
    });
    let stream_done = Arc::new(AtomicBool::new(false));
    let done = stream_done.clone();
    tokio::spawn(async move {
        let mut sink = FramedWrite::new(sw, plain_codec());
        sink.set_backpressure_boundary(256 * 1024);
        let mut chunk = vec![7u8; CHUNK];
        chunk[0] = 0;
        let chunk = Bytes::from(chunk);
        let mut sent = 0;
        loop {
            while let Ok(ping) = pings.try_recv() {
                sink.feed(ping).await.unwrap();
                SinkExt::<Bytes>::flush(&mut sink).await.unwrap();
            }
            if sent < STREAM_CHUNKS && same_socket {
                sink.feed(chunk.clone()).await.unwrap();
                sent += 1;
            } else {
                match pings.recv().await {
                    Some(ping) => {
                        sink.feed(ping).await.unwrap();
                        SinkExt::<Bytes>::flush(&mut sink).await.unwrap();
                    }
                    None => return,
                }
            }
        }
    });
    if !same_socket {
        let done = done.clone();
        tokio::spawn(async move {
            plain_stream().await;
            done.store(true, Relaxed);
        });
    }
    // The pinging side: its read task counts chunks and hands echoes to the pinger.
    let (cr, cw) = client.into_split();
    let (echoes_in, mut echoes) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut frames = FramedRead::with_capacity(cr, plain_codec(), 64 * 1024);
        let mut chunks = 0;
        while let Some(Ok(frame)) = frames.next().await {
            if frame.first() == Some(&0) {
                chunks += 1;
                if chunks == STREAM_CHUNKS {
                    done.store(true, Relaxed);
                }
            } else if echoes_in.send(frame.freeze()).await.is_err() {
                return;
            }
        }
    });
    let mut write = FramedWrite::new(cw, plain_codec());
    let body = Bytes::from(vec![1u8; BODY]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut samples = Vec::new();
    while !stream_done.load(Relaxed) && samples.len() < SAMPLES {
        let start = Instant::now();
        write.send(body.clone()).await.unwrap();
        echoes.recv().await.unwrap();
        samples.push(start.elapsed());
    }
    // Let a same-socket stream finish before the next case.
    while !stream_done.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    samples
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Inside a worker task, as an engine's own task would be: driven from `block_on`'s
    // thread, every wake-up would cross threads and the round trips would measure that.
    let body = rt.spawn(async {
        let p = pair().await;
        let (one_way, one_way_inbox) = p.a.channel::<Bytes>(ONE_WAY).unwrap();
        // The one-way stream goes from A to B: B's inbox counts. Reopen on B.
        drop(one_way_inbox);
        let (_, b_one_way_inbox) = p.b.channel::<Bytes>(ONE_WAY).unwrap();
        // Warm up every path once.
        rpc_sequential(&p, 1000).await;
        let rtt_one_way = p50_p99(one_way_rtt(&p).await);

        let mut plain_rtts = Vec::new();
        let mut rpc_seq = Vec::new();
        let (mut rates, mut in_flight_lat, mut plain_rates) = (Vec::new(), Vec::new(), Vec::new());
        let (mut streams, mut one_ways, mut plains) = (Vec::new(), Vec::new(), Vec::new());
        let mut beside = Vec::new();
        let mut beside_apart = Vec::new();
        let other = pair().await;
        let (mut plain_apart, mut plain_same) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            plain_apart.extend(plain_beside_stream(false).await);
            plain_same.extend(plain_beside_stream(true).await);
            plain_rtts.extend(plain_rtt().await);
            rpc_seq.extend(rpc_sequential(&p, SAMPLES).await);
            let (rate, lat) = rpc_in_flight(&p).await;
            rates.push(rate);
            in_flight_lat.extend(lat);
            plain_rates.push(plain_in_flight().await);
            streams.push(rpc_stream(&p).await);
            one_ways.push(one_way_stream(&p, &one_way, &b_one_way_inbox).await);
            plains.push(plain_stream().await);
            // A stream in the background while small requests go on the high channel: on the
            // same connection, then between two other nodes.
            beside.extend(requests_beside_stream(&p, &p).await);
            beside_apart.extend(requests_beside_stream(&p, &other).await);
        }
        let plain_rtt = p50_p99(plain_rtts);
        let seq = p50_p99(rpc_seq);
        let busy = p50_p99(in_flight_lat);
        let beside_n = beside.len();
        let beside = p50_p99(beside);
        let apart_n = beside_apart.len();
        let apart = p50_p99(beside_apart);
        let (rate, plain_rate) = (median(rates), median(plain_rates));
        let (stream, one_way_mb, plain_mb) = (median(streams), median(one_ways), median(plains));
        println!("| case | figure | plain TCP | ratio |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| round trip 64 B, one-way send + echo (p50 / p99) | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.2} |",
            rtt_one_way.0, rtt_one_way.1, plain_rtt.0, plain_rtt.1, plain_rtt.0 / rtt_one_way.0
        );
        println!(
            "| request 64 B, 1 in flight (p50 / p99) | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.2} |",
            seq.0, seq.1, plain_rtt.0, plain_rtt.1, plain_rtt.0 / seq.0
        );
        println!(
            "| requests 64 B, 64 in flight | {:.0} /s (p50 {:.0} µs, p99 {:.0} µs) | {:.0} /s | {:.2} |",
            rate, busy.0, busy.1, plain_rate, rate / plain_rate
        );
        println!(
            "| streamed answer, 64 KiB chunks, window {} | {:.0} MB/s | {:.0} MB/s (one-way peerwire: {:.0} MB/s) | {:.2} (vs one-way {:.2}) |",
            window(),
            stream, plain_mb, one_way_mb, stream / plain_mb, stream / one_way_mb
        );
        println!(
            "| request 64 B beside a running stream (p50 / p99, {beside_n} samples) | {:.0} / {:.0} µs | idle: {:.0} / {:.0} µs | {:.2} |",
            beside.0, beside.1, seq.0, seq.1, seq.0 / beside.0
        );
        println!(
            "| request 64 B beside a stream on another connection (p50 / p99, {apart_n} samples) | {:.0} / {:.0} µs | beside its own stream: {:.0} / {:.0} µs | {:.2} |",
            apart.0, apart.1, beside.0, beside.1, apart.0 / beside.0
        );
        for (socket, samples) in [("another", plain_apart), ("the same", plain_same)] {
            let n = samples.len();
            let plain = p50_p99(samples);
            println!(
                "| plain TCP ping 64 B beside a plain stream on {socket} socket (p50 / p99, {n} samples) | {:.0} / {:.0} µs | peerwire beside its stream: {:.0} / {:.0} µs | {:.2} |",
                plain.0, plain.1, beside.0, beside.1, plain.0 / beside.0
            );
        }
        for node in [&p.a, &p.b, &other.a, &other.b] {
            node.shutdown().await;
        }
    });
    rt.block_on(body).unwrap();
}
