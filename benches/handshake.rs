//! Handshakes per second with 8 concurrent clients against one server on loopback: a peerwire
//! node against a bare Noise XX handshake with the same cipher suite (snow,
//! `Noise_XX_25519_AESGCM_SHA256`, a fresh static key per connection as peerwire makes), in the
//! same run.
//!
//! - `handshake/bare_noise_xx/8_clients`: the server accepts and runs the three Noise messages
//!   (u16 length prefix, empty payloads), then writes one byte; the client counts a handshake
//!   when that byte arrives, so both sides' work is inside the measurement.
//! - `handshake/peerwire/8_clients`: the server is a `Network` (per-IP limits lifted); each
//!   client runs `peerwire::handshake::perform` as initiator with one of 64 pre-made identities,
//!   then waits for the server's first frame (its `Welcome`, sent once the node has admitted
//!   the connection). So the figure includes the identity signatures, the admission and the
//!   connection's tasks, which a bare handshake does not have.
//!
//! Run: `cargo bench --bench handshake`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use peerwire::handshake::{HandshakeParams, NOISE_PATTERN, perform};
use peerwire::{Config, Keypair, Network};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const CLIENTS: u64 = 8;
const IDENTITIES: usize = 64;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn send(stream: &mut TcpStream, message: &[u8]) {
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.unwrap();
}

async fn receive(stream: &mut TcpStream, buf: &mut BytesMut) -> BytesMut {
    loop {
        if buf.len() >= 2 {
            let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
            if buf.len() >= 2 + len {
                buf.advance(2);
                return buf.split_to(len);
            }
        }
        buf.reserve(1024);
        assert!(
            stream.read_buf(buf).await.unwrap() > 0,
            "closed mid-handshake"
        );
    }
}

fn noise(initiator: bool) -> snow::HandshakeState {
    let builder = snow::Builder::new(NOISE_PATTERN.parse().unwrap());
    let static_key = builder.generate_keypair().unwrap();
    let builder = builder.local_private_key(&static_key.private).unwrap();
    if initiator {
        builder.build_initiator().unwrap()
    } else {
        builder.build_responder().unwrap()
    }
}

async fn bare_server(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut hs = noise(false);
            let (mut buf, mut out) = (BytesMut::new(), vec![0u8; 1024]);
            let m1 = receive(&mut stream, &mut buf).await;
            hs.read_message(&m1, &mut out).unwrap();
            let n = hs.write_message(&[], &mut out).unwrap();
            send(&mut stream, &out[..n]).await;
            let m3 = receive(&mut stream, &mut buf).await;
            hs.read_message(&m3, &mut out).unwrap();
            let _transport = hs.into_transport_mode().unwrap();
            stream.write_all(&[1]).await.unwrap();
        });
    }
}

async fn bare_client(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut hs = noise(true);
    let (mut buf, mut out) = (BytesMut::new(), vec![0u8; 1024]);
    let n = hs.write_message(&[], &mut out).unwrap();
    send(&mut stream, &out[..n]).await;
    let m2 = receive(&mut stream, &mut buf).await;
    hs.read_message(&m2, &mut out).unwrap();
    let n = hs.write_message(&[], &mut out).unwrap();
    send(&mut stream, &out[..n]).await;
    let _transport = hs.into_transport_mode().unwrap();
    if buf.is_empty() {
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    }
}

async fn peerwire_client(addr: SocketAddr, keypair: &Keypair) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let params = HandshakeParams {
        network_id: "peerwire-bench".into(),
        listen_addr: None,
        expected_peer: None,
        dial_seq: 1,
    };
    let (_established, mut leftover) = perform(&mut stream, keypair, params, true).await.unwrap();
    if leftover.is_empty() {
        // The server's first frame: its welcome, sent once the node admitted us.
        assert!(stream.read_buf(&mut leftover).await.unwrap() > 0);
    }
}

/// Runs `iters` handshakes spread over 8 concurrent clients; returns the elapsed time.
fn run<F, Fut>(rt: &Runtime, iters: u64, client: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let client = client.clone();
                let share = iters / CLIENTS + u64::from(c < iters % CLIENTS);
                tokio::spawn(async move {
                    for i in 0..share {
                        client(c * 1_000_000 + i).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let rt = runtime();
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));

    let listener = rt
        .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .unwrap();
    let bare_addr = listener.local_addr().unwrap();
    let bare = rt.spawn(bare_server(listener));
    group.bench_function(BenchmarkId::new("bare_noise_xx", "8_clients"), |b| {
        b.iter_custom(|iters| run(&rt, iters, move |_| bare_client(bare_addr)));
    });
    bare.abort();

    let config = Config::default()
        .network_id("peerwire-bench")
        .max_inbound(4096)
        .max_inbound_per_ip(4096)
        .max_handshakes_per_ip_per_sec(u64::MAX / 2)
        .shutdown_timeout(Duration::from_millis(200));
    let (server, _inbox) = rt
        .block_on(Network::<bytes::Bytes>::start(config, Keypair::generate()))
        .unwrap();
    let addr = server.local_addr();
    let identities: std::sync::Arc<Vec<Keypair>> =
        std::sync::Arc::new((0..IDENTITIES).map(|_| Keypair::generate()).collect());
    group.bench_function(BenchmarkId::new("peerwire", "8_clients"), |b| {
        b.iter_custom(|iters| {
            let identities = identities.clone();
            run(&rt, iters, move |i| {
                let identities = identities.clone();
                async move {
                    let keypair = &identities[(i as usize) % IDENTITIES];
                    peerwire_client(addr, keypair).await;
                }
            })
        });
    });
    let stats = server.stats();
    println!(
        "handshake/peerwire/8_clients: {} handshakes ok, failures {:?}, refusals {:?}",
        stats.handshakes_ok, stats.handshake_failures, stats.inbound_refused
    );
    rt.block_on(server.shutdown());
    group.finish();
    c.final_summary();
}
