//! Gossip over loopback, beside peerwire's direct broadcast in the same run.
//!
//! Cases (one 2-worker runtime; nodes started and connected outside the measured part):
//! - `broadcast`: a hub `broadcast().await`s N 1 KiB messages to 8 connected peers; messages
//!   per second per receiver.
//! - `gossip/star`: the hub publishes N 1 KiB publications on a topic the 8 peers subscribed
//!   to (connected to the hub only); every receiver checks the signature and accepts; messages
//!   per second per receiver, and copies received per publication.
//! - `gossip/mesh`: the same with the 9 nodes connected all to all (the tree forms on the
//!   first publications): throughput, copies per publication, and the time for one
//!   publication to reach all 8 (p50, p99 over 200 sent one at a time).
//!
//! The publisher keeps at most `WINDOW` (512) publications ahead of the slowest receiver, as an
//! application with flow control would: a publication that finds a subscription's queue full
//! (`topic_queue`, 1,024) is not delivered there (counted as dropped), so without the window
//! the bench would measure drops.
//!
//! Run: `cargo bench --bench gossip`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peerwire::protocols::gossip::{Gossip, Topic};
use peerwire::{ChannelSpec, Config, Keypair, Network};

const RECEIVERS: usize = 8;
const N: u64 = 20_000;
const SIZE: usize = 1024;
const WINDOW: u64 = 512;
const GOSSIP: u16 = 20;
const TOPIC: &str = "bench";

fn config() -> Config {
    Config::default()
        .network_id("peerwire-gossip-bench")
        .max_inbound_messages_per_sec(0)
        .max_inbound_bytes_per_sec(0)
        // Every node is on 127.0.0.1: the per-address budget would count them all as one.
        .max_inbound_messages_per_sec_per_ip(0)
        .channel(GOSSIP, ChannelSpec::normal().send_queue_capacity(16_384))
}

struct Node {
    net: Network<Bytes>,
    gossip: Gossip,
}

async fn nodes(n: usize) -> Vec<Node> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (net, _) = Network::<Bytes>::start(config(), Keypair::generate())
            .await
            .unwrap();
        let gossip = net.gossip(GOSSIP).unwrap();
        out.push(Node { net, gossip });
    }
    out
}

async fn connect(a: &Node, b: &Node) {
    a.net.connect(b.net.local_addr()).await.unwrap();
}

/// Spawns a receiver that accepts everything and counts.
fn count(mut topic: Topic<Bytes>) -> Arc<AtomicU64> {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    tokio::spawn(async move {
        while let Some(message) = topic.recv().await {
            message.accept();
            c.fetch_add(1, Relaxed);
        }
    });
    counter
}

fn slowest(counters: &[Arc<AtomicU64>]) -> u64 {
    counters.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0)
}

/// Publishes N publications within the window; returns messages per second per receiver.
async fn publish_all(topic: &Topic<Bytes>, counters: &[Arc<AtomicU64>], base: u64) -> f64 {
    let payload = Bytes::from(vec![7u8; SIZE]);
    let start = Instant::now();
    let mut sent = 0;
    while sent < N {
        if sent - (slowest(counters) - base) >= WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        topic.publish(&payload).await.unwrap();
        sent += 1;
    }
    while slowest(counters) - base < N {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    N as f64 / start.elapsed().as_secs_f64()
}

async fn wait_neighbours(nodes: &[Node], n: usize) {
    for node in nodes {
        while node.gossip.neighbours(TOPIC) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn broadcast() -> f64 {
    let hub = Network::<Bytes>::start(config(), Keypair::generate())
        .await
        .unwrap()
        .0;
    let mut counters = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..RECEIVERS {
        let (peer, inbox) = Network::<Bytes>::start(config(), Keypair::generate())
            .await
            .unwrap();
        hub.connect(peer.local_addr()).await.unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let n = inbox.recv_many(&mut buf, 1024).await;
                if n == 0 {
                    break;
                }
                buf.clear();
                c.fetch_add(n as u64, Relaxed);
            }
        });
        counters.push(counter);
        keep.push(peer);
    }
    while hub.peers().len() < RECEIVERS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let payload = Bytes::from(vec![7u8; SIZE]);
    let start = Instant::now();
    for sent in 0..N {
        while sent - slowest(&counters) >= WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        hub.broadcast(&payload).await.unwrap();
    }
    while slowest(&counters) < N {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    N as f64 / start.elapsed().as_secs_f64()
}

async fn gossip(mesh: bool) -> (f64, f64, Option<(Duration, Duration)>) {
    let all = nodes(RECEIVERS + 1).await;
    let (hub, receivers) = all.split_first().unwrap();
    for r in receivers {
        connect(hub, r).await;
    }
    if mesh {
        for (i, a) in receivers.iter().enumerate() {
            for b in &receivers[i + 1..] {
                connect(a, b).await;
            }
        }
    }
    let topic = hub.gossip.subscribe::<Bytes>(TOPIC).unwrap();
    let counters: Vec<_> = receivers
        .iter()
        .map(|r| count(r.gossip.subscribe::<Bytes>(TOPIC).unwrap()))
        .collect();
    wait_neighbours(receivers, if mesh { RECEIVERS } else { 1 }).await;
    wait_neighbours(std::slice::from_ref(hub), RECEIVERS).await;
    // Warm-up: the first publications prune the mesh to a tree.
    let payload = Bytes::from(vec![7u8; SIZE]);
    for k in 1..=20 {
        topic.publish(&payload).await.unwrap();
        while slowest(&counters) < k {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    let base = slowest(&counters);
    let before: Vec<_> = receivers
        .iter()
        .map(|r| r.gossip.stats(TOPIC).unwrap())
        .collect();
    let rate = publish_all(&topic, &counters, base).await;
    let (mut first, mut dup) = (0, 0);
    for (r, b) in receivers.iter().zip(&before) {
        let s = r.gossip.stats(TOPIC).unwrap();
        first += s.received - b.received;
        dup += s.duplicates - b.duplicates;
    }
    let copies = (first + dup) as f64 / first.max(1) as f64;
    let latency = if mesh {
        let mut samples = Vec::new();
        for _ in 0..200 {
            let target = slowest(&counters) + 1;
            let start = Instant::now();
            topic.publish(&payload).await.unwrap();
            while slowest(&counters) < target {
                tokio::task::yield_now().await;
            }
            samples.push(start.elapsed());
        }
        samples.sort();
        Some((samples[100], samples[197]))
    } else {
        None
    };
    for node in &all {
        node.net.shutdown().await;
    }
    (rate, copies, latency)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body = rt.spawn(async {
        let direct = broadcast().await;
        let (star, star_copies, _) = gossip(false).await;
        let (mesh, mesh_copies, latency) = gossip(true).await;
        println!("| case | per receiver | copies per publication | reach all 8 (p50 / p99) |");
        println!("| --- | --- | --- | --- |");
        println!("| direct broadcast, 1 KiB to 8 | {direct:.0} msg/s | 1 | – |");
        println!(
            "| gossip, star (8 receivers, hub only) | {star:.0} msg/s | {star_copies:.2} | – |"
        );
        let (p50, p99) = latency.unwrap_or_default();
        println!(
            "| gossip, full mesh of 9 | {mesh:.0} msg/s | {mesh_copies:.2} | {} / {} µs |",
            p50.as_micros(),
            p99.as_micros()
        );
    });
    rt.block_on(body).unwrap();
}
