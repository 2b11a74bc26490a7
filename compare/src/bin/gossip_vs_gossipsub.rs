//! peerwire gossip beside libp2p gossipsub (rust-libp2p 0.57, gossipsub 0.50) in the same run,
//! on the same topology: one publisher connected to 8 receivers, all subscribed to one topic,
//! 1 KiB messages, the publisher kept at most `WINDOW` messages ahead of the slowest receiver.
//! Prints messages per second per receiver for: peerwire (signed, validated by the
//! application), gossipsub signed (strict validation), gossipsub anonymous (no signatures).
//!
//! Run: `cargo run --release --bin gossip_vs_gossipsub` (from `compare/`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

const RECEIVERS: usize = 8;
const N: u64 = 20_000;
const SIZE: usize = 1024;
const WINDOW: u64 = 512;

fn slowest(counters: &[Arc<AtomicU64>]) -> u64 {
    counters.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0)
}

fn payload(k: u64) -> Vec<u8> {
    let mut data = vec![7u8; SIZE];
    data[..8].copy_from_slice(&k.to_le_bytes());
    data
}

async fn run_window(counters: &[Arc<AtomicU64>], base: u64, mut publish: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut sent = 0;
    while sent < N {
        if sent - (slowest(counters) - base) >= WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        publish(base + sent + 1);
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while slowest(counters) - base < N {
        if Instant::now() > deadline {
            eprintln!("stalled at {} of {N}", slowest(counters) - base);
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    (slowest(counters) - base) as f64 / start.elapsed().as_secs_f64()
}

// ---- peerwire ----

async fn peerwire() -> f64 {
    use peerwire::{ChannelSpec, Config, Keypair, Network};
    const CH: u16 = 20;
    let config = || {
        Config::default()
            .network_id("compare")
            .max_inbound_messages_per_sec(0)
            .max_inbound_bytes_per_sec(0)
            .channel(CH, ChannelSpec::normal().send_queue_capacity(16_384))
    };
    let (hub, _) = Network::<Bytes>::start(config(), Keypair::generate()).await.unwrap();
    let hub_gossip = hub.gossip(CH).unwrap();
    let topic = hub_gossip.subscribe::<Bytes>("bench").unwrap();
    let mut counters = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..RECEIVERS {
        let (net, _) = Network::<Bytes>::start(config(), Keypair::generate()).await.unwrap();
        let gossip = net.gossip(CH).unwrap();
        let mut sub = gossip.subscribe::<Bytes>("bench").unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                m.accept();
                c.fetch_add(1, Relaxed);
            }
        });
        hub.connect(net.local_addr()).await.unwrap();
        counters.push(counter);
        keep.push((net, gossip));
    }
    while hub_gossip.neighbours("bench") < RECEIVERS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let publisher = tokio::spawn(async move {
        while let Some(k) = rx.recv().await {
            topic.publish(&Bytes::from(payload(k))).await.unwrap();
        }
    });
    let rate = run_window(&counters, 0, |k| {
        let _ = tx.send(k);
    })
    .await;
    drop(tx);
    let _ = publisher.await;
    let hub_stats = hub_gossip.stats("bench");
    eprintln!("peerwire hub: {hub_stats:?}, frames dropped {}", hub_gossip.frames_dropped());
    for (i, (net, gossip)) in keep.iter().enumerate() {
        let s = gossip.stats("bench");
        let links = gossip.links("bench");
        let dropped: u64 = net.peers().iter().map(|p| p.stats.dropped_inbox_full).sum();
        eprintln!("receiver {i}: got {} links {links:?} inbox drops {dropped} {s:?}", counters[i].load(Relaxed));
    }
    rate
}

// ---- gossipsub ----

enum Cmd {
    Publish(Vec<u8>),
}

fn swarm(signed: bool) -> Swarm<gossipsub::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let mut builder = gossipsub::ConfigBuilder::default();
            builder
                .max_transmit_size(64 * 1024)
                .heartbeat_interval(Duration::from_millis(700))
                // Content-addressed ids (the first 8 bytes are a counter), as anonymous
                // messages carry no sequence number.
                .message_id_fn(|m: &gossipsub::Message| MessageId::from(m.data[..8].to_vec()));
            let authenticity = if signed {
                builder.validation_mode(ValidationMode::Strict);
                MessageAuthenticity::Signed(key.clone())
            } else {
                builder.validation_mode(ValidationMode::Anonymous);
                MessageAuthenticity::Anonymous
            };
            gossipsub::Behaviour::new(authenticity, builder.build().unwrap()).unwrap()
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// Runs a swarm listening on loopback; returns its address once known.
fn spawn_node(
    signed: bool,
    counter: Option<Arc<AtomicU64>>,
    dial: Vec<Multiaddr>,
    mut commands: Option<mpsc::UnboundedReceiver<Cmd>>,
    subscribed: Option<Arc<AtomicU64>>,
) -> oneshot::Receiver<Multiaddr> {
    let (addr_tx, addr_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut swarm = swarm(signed);
        let topic = IdentTopic::new("bench");
        swarm.behaviour_mut().subscribe(&topic).unwrap();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        for addr in dial {
            swarm.dial(addr).unwrap();
        }
        let mut addr_tx = Some(addr_tx);
        loop {
            tokio::select! {
                event = swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(address);
                        }
                    }
                    SwarmEvent::Behaviour(gossipsub::Event::Message { .. }) => {
                        if let Some(c) = &counter {
                            c.fetch_add(1, Relaxed);
                        }
                    }
                    SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) => {
                        if let Some(s) = &subscribed {
                            s.fetch_add(1, Relaxed);
                        }
                    }
                    _ => {}
                },
                cmd = async {
                    match commands.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match cmd {
                    Some(Cmd::Publish(data)) => {
                        if let Err(e) = swarm.behaviour_mut().publish(topic.clone(), data) {
                            eprintln!("publish: {e}");
                        }
                    }
                    None => return,
                },
            }
        }
    });
    addr_rx
}

async fn gossipsub(signed: bool) -> f64 {
    let mut counters = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..RECEIVERS {
        let counter = Arc::new(AtomicU64::new(0));
        addrs.push(spawn_node(signed, Some(counter.clone()), Vec::new(), None, None).await.unwrap());
        counters.push(counter);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let subscribed = Arc::new(AtomicU64::new(0));
    let _hub = spawn_node(signed, None, addrs, Some(rx), Some(subscribed.clone())).await.unwrap();
    while subscribed.load(Relaxed) < RECEIVERS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let a heartbeat build the mesh.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Warm-up.
    for k in 0..20u64 {
        let _ = tx.send(Cmd::Publish(payload(u64::MAX - k)));
    }
    while slowest(&counters) < 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let base = slowest(&counters);
    let rate = run_window(&counters, base, |k| {
        let _ = tx.send(Cmd::Publish(payload(k)));
    })
    .await;
    drop(tx);
    rate
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let body = tokio::spawn(async {
            let pw = peerwire().await;
            let signed = gossipsub(true).await;
            let anonymous = gossipsub(false).await;
            println!("| 1 KiB to 8 receivers, publisher 512 ahead at most | msg/s per receiver |");
            println!("| --- | --- |");
            println!("| peerwire gossip (signed, validated by the application) | {pw:.0} |");
            println!("| libp2p gossipsub, signed (strict validation) | {signed:.0} |");
            println!("| libp2p gossipsub, anonymous (no signatures) | {anonymous:.0} |");
        });
        body.await.unwrap();
    });
}
