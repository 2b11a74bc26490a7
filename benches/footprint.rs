//! Memory of idle nodes and idle connections, beside plain tokio TCP in the same process.
//!
//! Resident memory (`VmRSS` from `/proc/self/status`) before and after:
//! - `idle node`: starting 64 `Network`s (listening, no connection), per node;
//! - `idle connection`: 16 nodes connected all to all (120 connections, both ends in this
//!   process), after a second of quiet, per connection (both ends together);
//! - `plain TCP connection`: 120 loopback TCP connections, each end with a reading task
//!   (`FramedRead` with a 64 KiB buffer, like the throughput baseline) and its write half, per
//!   connection (both ends together).
//!
//! Each case runs in a fresh process (the bench re-executes itself with the case's name), so the
//! allocator's earlier high-water marks do not hide or inflate a case. Linux only.
//!
//! Run: `cargo bench --bench footprint`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use peerwire::{Config, Keypair, Network};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

const NODES: usize = 64;
const MESH: usize = 16;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn config() -> Config {
    Config::default()
        .network_id("peerwire-footprint")
        .max_handshakes_per_ip_per_sec(1_000_000)
        .max_inbound_per_ip(1024)
}

async fn idle_nodes() -> (u64, usize) {
    // Warm: one node first, so the runtime's and the process's one-time costs are not counted.
    let (first, _first_in) = Network::<bytes::Bytes>::start(config(), Keypair::generate())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keys: Vec<Keypair> = (0..NODES).map(|_| Keypair::generate()).collect();
    let before = rss_kib();
    let mut nodes = Vec::new();
    for key in keys {
        nodes.push(Network::<bytes::Bytes>::start(config(), key).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib();
    for (node, _) in &nodes {
        node.shutdown().await;
    }
    first.shutdown().await;
    (after.saturating_sub(before), NODES)
}

async fn idle_connections() -> (u64, usize) {
    let mut nodes = Vec::new();
    for _ in 0..MESH {
        nodes.push(
            Network::<bytes::Bytes>::start(config(), Keypair::generate())
                .await
                .unwrap(),
        );
    }
    // Warm: one connection first (first-use costs of the codec, cipher and tasks).
    nodes[0].0.connect(nodes[1].0.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let mut count = 0;
    for i in 0..MESH {
        for j in i + 1..MESH {
            if (i, j) != (0, 1) {
                nodes[i].0.connect(nodes[j].0.local_addr()).await.unwrap();
                count += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib();
    for (node, _) in &nodes {
        assert_eq!(node.peers().len(), MESH - 1);
    }
    for (node, _) in &nodes {
        node.shutdown().await;
    }
    (after.saturating_sub(before), count)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().new_codec()
}

async fn plain_connections() -> (u64, usize) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut keep = Vec::new();
    let mut open = |stream: TcpStream| {
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        let mut frames = FramedRead::with_capacity(read, codec(), 64 * 1024);
        let task = tokio::spawn(async move { while frames.next().await.is_some() {} });
        keep.push((task, FramedWrite::new(write, codec())));
    };
    // Warm with one connection.
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    open(client);
    open(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let count = MESH * (MESH - 1) / 2 - 1;
    for _ in 0..count {
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        open(client);
        open(server);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib();
    for (task, _) in &keep {
        task.abort();
    }
    (after.saturating_sub(before), count)
}

fn main() {
    let case = std::env::args().find_map(|a| a.strip_prefix("--case=").map(str::to_owned));
    let Some(case) = case else {
        // Re-run this binary once per case, each in a fresh process.
        let exe = std::env::current_exe().unwrap();
        for case in ["idle_node", "idle_connection", "plain_connection"] {
            let out = std::process::Command::new(&exe)
                .arg(format!("--case={case}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{case} failed: {out:?}");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (kib, n) = rt.block_on(async {
        match case.as_str() {
            "idle_node" => idle_nodes().await,
            "idle_connection" => idle_connections().await,
            _ => plain_connections().await,
        }
    });
    println!(
        "footprint/{case}: {kib} KiB over {n} = {:.1} KiB each",
        kib as f64 / n as f64
    );
}
