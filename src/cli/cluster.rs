//! The demo's local cluster: starts the nodes, meshes them, and runs one receiver task per node
//! that drains its inbox, checks order, tallies deliveries and answers pings.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use peerwire::{Config, Inbox, Keypair, Network, PeerId, PeerStats};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::Result;

/// How long the mesh may take to form, and the inboxes to close after shutdown. Generous: on a
/// loaded machine both normally take milliseconds.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Messages the receiver takes from its inbox per wake-up.
const RECV_BATCH: usize = 1024;

/// Pongs waiting for the latency driver; it waits for each one, so one is enough in practice.
const PONG_CAPACITY: usize = 16;

/// The demo's wire messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum DemoMsg {
    /// Point-to-point traffic; `seq` counts from 0 per sender.
    Send {
        /// Position in the sender's stream.
        seq: u64,
        /// Filler of `--size` bytes.
        payload: Bytes,
    },
    /// Broadcast traffic; `seq` counts from 0 per sender.
    Broadcast {
        /// Position in the sender's stream.
        seq: u64,
        /// Filler of `--size` bytes.
        payload: Bytes,
    },
    /// Asks the receiver to answer with the same number.
    Ping(u64),
    /// The answer to a ping.
    Pong(u64),
}

/// What one node's receiver has seen, updated once per batch so the phases can poll it.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// `Send` messages received.
    pub(crate) sends: AtomicU64,
    /// `Broadcast` messages received.
    pub(crate) broadcasts: AtomicU64,
    /// Messages whose `seq` was not the next one expected from their sender.
    pub(crate) out_of_order: AtomicU64,
    /// Messages whose payload was not `--size` bytes.
    pub(crate) wrong_size: AtomicU64,
}

/// One running node of the cluster.
#[derive(Debug)]
pub(crate) struct Node {
    /// The handle.
    pub(crate) net: Network<DemoMsg>,
    /// Its receiver's counters.
    pub(crate) tally: Arc<Tally>,
    /// The receiver task; it ends only when the inbox yields `None`.
    receiver: JoinHandle<()>,
}

/// A running cluster; node 0's pongs arrive on `pongs`.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The nodes, in start order.
    pub(crate) nodes: Vec<Node>,
    /// Pong numbers received by node 0.
    pub(crate) pongs: mpsc::Receiver<u64>,
}

/// Counters of one node summed over its connections, sampled before shutdown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeCounters {
    /// Application messages received.
    pub(crate) messages_in: u64,
    /// Application messages sent.
    pub(crate) messages_out: u64,
    /// Encoded bytes received.
    pub(crate) bytes_in: u64,
    /// Encoded bytes sent.
    pub(crate) bytes_out: u64,
    /// Messages dropped anywhere (inbox full, queue full, queued at close).
    pub(crate) dropped: u64,
}

impl Cluster {
    /// Starts `count` nodes on 127.0.0.1 (port 0) and connects them as a full mesh, each node
    /// dialing the nodes after it. Returns once every node sees every other as connected.
    pub(crate) async fn start(count: usize, payload_size: usize) -> Result<Self> {
        let mut config = Config::default()
            .listen(([127, 0, 0, 1], 0).into())
            .network_id("peerwire-demo")
            // The demo checks that every message arrives, so a sender waits for room as long
            // as the receivers keep working: on a loaded machine the default 100 ms can pass
            // with a queue still full, and the send would fail where it should only slow down.
            .send_wait(std::time::Duration::from_secs(10));
        // Room for the payload plus the enum tag and sequence number.
        config.max_message_size = config.max_message_size.max(payload_size + 64);
        let (pong_tx, pongs) = mpsc::channel(PONG_CAPACITY);
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            let (net, inbox) = Network::start(config.clone(), Keypair::try_generate()?).await?;
            let tally = Arc::new(Tally::default());
            let pongs = (index == 0).then(|| pong_tx.clone());
            let receiver = tokio::spawn(receive(
                net.clone(),
                inbox,
                tally.clone(),
                pongs,
                payload_size,
            ));
            nodes.push(Node {
                net,
                tally,
                receiver,
            });
        }
        for (i, dialer) in nodes.iter().enumerate() {
            for target in &nodes[i + 1..] {
                let id = dialer
                    .net
                    .connect_to(target.net.local_addr(), target.net.local_peer_id())
                    .await?;
                tracing::debug!(from = i, to = %id, "connected");
            }
        }
        // A dial returns when the dialer's side is open; the accepting side registers the peer
        // a moment later, and sending to it before then would fail with NotConnected.
        let meshed = async {
            loop {
                let complete = nodes.iter().all(|a| {
                    nodes.iter().all(|b| {
                        a.net.local_peer_id() == b.net.local_peer_id()
                            || a.net.is_connected(b.net.local_peer_id())
                    })
                });
                if complete {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(SETTLE_TIMEOUT, meshed)
            .await
            .map_err(|_| "the full mesh did not form within 20 s")?;
        Ok(Self { nodes, pongs })
    }

    /// Node ids in start order.
    pub(crate) fn ids(&self) -> Vec<PeerId> {
        self.nodes.iter().map(|n| n.net.local_peer_id()).collect()
    }

    /// Each node's connection counters, summed.
    pub(crate) fn counters(&self) -> Vec<NodeCounters> {
        self.nodes
            .iter()
            .map(|node| {
                node.net
                    .peers()
                    .iter()
                    .fold(NodeCounters::default(), |acc, info| add(acc, &info.stats))
            })
            .collect()
    }

    /// Messages dropped anywhere in the cluster so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.counters().iter().map(|c| c.dropped).sum()
    }

    /// Shuts every node down concurrently, then checks that every inbox ends (`None`) once
    /// drained.
    pub(crate) async fn shutdown(self) -> Result<()> {
        let mut shutdowns = JoinSet::new();
        for node in &self.nodes {
            let net = node.net.clone();
            shutdowns.spawn(async move { net.shutdown().await });
        }
        while let Some(done) = shutdowns.join_next().await {
            done?;
        }
        for (index, node) in self.nodes.into_iter().enumerate() {
            tokio::time::timeout(SETTLE_TIMEOUT, node.receiver)
                .await
                .map_err(|_| format!("node {index}: inbox still open 20 s after shutdown"))??;
        }
        Ok(())
    }
}

fn add(acc: NodeCounters, stats: &PeerStats) -> NodeCounters {
    NodeCounters {
        messages_in: acc.messages_in + stats.messages_in,
        messages_out: acc.messages_out + stats.messages_out,
        bytes_in: acc.bytes_in + stats.bytes_in,
        bytes_out: acc.bytes_out + stats.bytes_out,
        dropped: acc.dropped
            + stats.dropped_inbox_full
            + stats.dropped_queue_full
            + stats.dropped_on_close,
    }
}

/// Drains `inbox` until the network shuts down. Counts land in `tally` once per batch, which
/// keeps the shared atomics off the per-message path.
async fn receive(
    net: Network<DemoMsg>,
    inbox: Inbox<DemoMsg>,
    tally: Arc<Tally>,
    pongs: Option<mpsc::Sender<u64>>,
    payload_size: usize,
) {
    let mut next_send: HashMap<PeerId, u64> = HashMap::new();
    let mut next_broadcast: HashMap<PeerId, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(RECV_BATCH);
    while inbox.recv_many(&mut batch, RECV_BATCH).await > 0 {
        let (mut sends, mut broadcasts, mut out_of_order, mut wrong_size) = (0, 0, 0, 0);
        for (from, message) in batch.drain(..) {
            match message {
                DemoMsg::Send { seq, payload } => {
                    sends += 1;
                    out_of_order += u64::from(!in_sequence(&mut next_send, from, seq));
                    wrong_size += u64::from(payload.len() != payload_size);
                }
                DemoMsg::Broadcast { seq, payload } => {
                    broadcasts += 1;
                    out_of_order += u64::from(!in_sequence(&mut next_broadcast, from, seq));
                    wrong_size += u64::from(payload.len() != payload_size);
                }
                DemoMsg::Ping(n) => {
                    if let Err(e) = net.send(from, &DemoMsg::Pong(n)).await {
                        // The latency phase notices the missing pong and reports it.
                        tracing::warn!(error = %e, "cannot answer ping");
                    }
                }
                DemoMsg::Pong(n) => {
                    if let Some(pongs) = &pongs {
                        // Fails only once the latency phase is over and stopped listening.
                        let _ = pongs.send(n).await;
                    }
                }
            }
        }
        tally.sends.fetch_add(sends, Relaxed);
        tally.broadcasts.fetch_add(broadcasts, Relaxed);
        tally.out_of_order.fetch_add(out_of_order, Relaxed);
        tally.wrong_size.fetch_add(wrong_size, Relaxed);
    }
}

/// Whether `seq` is the next number expected from `from`; resynchronises either way so one gap
/// counts once.
fn in_sequence(next: &mut HashMap<PeerId, u64>, from: PeerId, seq: u64) -> bool {
    let expected = next.entry(from).or_insert(0);
    let ok = *expected == seq;
    *expected = seq + 1;
    ok
}
