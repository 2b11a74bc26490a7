//! One connection as shared memory: what the node, senders and the connection's tasks share
//! (state, counters, send queue, cancellation), and the context every connection task reads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::queue::{LaneSpec, SendQueue};
use super::stats::SocketStats;
use crate::config::Config;
use crate::identity::{Keypair, PeerId};
use crate::session::channel::ChannelTable;
use crate::session::liveness::{self, Tick};
use crate::session::{ConnectionId, ConnectionInfo, Direction, DisconnectReason, StateCell};

/// What a socket shares with the network actor and with senders. The socket task is the only
/// writer of `state`; `peer` is set once, when the handshake proves it.
#[derive(Debug)]
pub(crate) struct SocketShared {
    pub(crate) id: ConnectionId,
    pub(crate) direction: Direction,
    pub(crate) addr: SocketAddr,
    pub(crate) peer: OnceLock<PeerId>,
    pub(crate) listen_addr: OnceLock<Option<SocketAddr>>,
    /// The dialer's sequence number for this connection: ours, set when dialing; the peer's,
    /// learnt in the handshake. Orders two connections dialed by the same side.
    pub(crate) dial_seq: OnceLock<u64>,
    pub(crate) state: StateCell,
    pub(crate) stats: SocketStats,
    pub(crate) queue: SendQueue,
    /// Channel ids by lane index (for snapshots).
    pub(crate) channel_ids: Vec<u16>,
    /// Child of the network's root token: cancelling it cuts this connection at once.
    pub(crate) cancel: CancellationToken,
    /// Why the local side decided to close, if it did; wins over what the tasks observe later.
    pub(crate) close_intent: Mutex<Option<DisconnectReason>>,
    /// When this socket was created: the origin of `last_rx_micros` and ping nonces.
    pub(crate) opened_at: Instant,
    /// When bytes last arrived, in microseconds since `opened_at`.
    pub(crate) last_rx_micros: AtomicU64,
    /// Signalled when the peer's welcome arrives (it admitted the connection).
    pub(crate) welcomed: tokio::sync::Notify,
    /// Set when the peer's `Welcome` arrived: it admitted this connection.
    pub(crate) welcome_seen: std::sync::atomic::AtomicBool,
    /// Set once the first handshake message from the other side was read and accepted (see
    /// `handshake::perform_observed`).
    pub(crate) handshake_progressed: std::sync::atomic::AtomicBool,
}

impl SocketShared {
    pub(crate) fn new(
        id: ConnectionId,
        direction: Direction,
        addr: SocketAddr,
        lanes: &[LaneSpec],
        cancel: CancellationToken,
    ) -> Self {
        Self {
            id,
            direction,
            addr,
            peer: OnceLock::new(),
            welcomed: tokio::sync::Notify::new(),
            welcome_seen: std::sync::atomic::AtomicBool::new(false),
            handshake_progressed: std::sync::atomic::AtomicBool::new(false),
            listen_addr: OnceLock::new(),
            dial_seq: OnceLock::new(),
            state: StateCell::new(),
            stats: SocketStats::new(lanes.len()),
            queue: SendQueue::new(lanes),
            channel_ids: lanes.iter().map(|l| l.channel).collect(),
            cancel,
            close_intent: Mutex::new(None),
            opened_at: Instant::now(),
            last_rx_micros: AtomicU64::new(0),
        }
    }

    /// Microseconds since this socket was created.
    pub(crate) fn now_micros(&self) -> u64 {
        u64::try_from(self.opened_at.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records that bytes arrived.
    pub(crate) fn touch(&self) {
        self.last_rx_micros.store(self.now_micros(), Relaxed);
    }

    /// What a liveness tick calls for now (see `session::liveness`).
    pub(crate) fn liveness_tick(&self, idle_timeout: Duration, open: bool) -> Tick {
        liveness::on_tick(
            self.now_micros(),
            self.last_rx_micros.load(Relaxed),
            idle_timeout,
            open,
        )
    }

    /// Queues a ping ahead of data, remembering its nonce for the round-trip measurement.
    pub(crate) fn ping(&self, nonce: u64) {
        self.stats.ping_nonce.store(nonce, Relaxed);
        if self
            .queue
            .push_control(crate::codec::ControlMessage::Ping { nonce })
        {
            self.stats.pings_sent.fetch_add(1, Relaxed);
        }
    }

    /// Records a pong; only one echoing the last ping's nonce counts.
    pub(crate) fn pong(&self, nonce: u64) {
        let outstanding = self.stats.ping_nonce.load(Relaxed);
        if let Some(rtt) = liveness::round_trip(outstanding, nonce, self.now_micros()) {
            self.stats.rtt_micros.store(rtt, Relaxed);
            self.stats.pongs_received.fetch_add(1, Relaxed);
        }
    }

    /// Starts a graceful close for `reason`: flush what was accepted, say goodbye, stop.
    pub(crate) fn close_gracefully(&self, reason: DisconnectReason) {
        let goodbye = match &reason {
            DisconnectReason::Shutdown => crate::codec::GoodbyeReason::Shutdown,
            DisconnectReason::Duplicate => crate::codec::GoodbyeReason::Duplicate,
            DisconnectReason::Misbehaviour { .. } => crate::codec::GoodbyeReason::Misbehaviour,
            DisconnectReason::InboundLimit => crate::codec::GoodbyeReason::Capacity,
            DisconnectReason::Banned => crate::codec::GoodbyeReason::Banned,
            _ => crate::codec::GoodbyeReason::Requested,
        };
        self.close_intent.lock().get_or_insert(reason);
        self.queue.close_gracefully(goodbye);
    }

    /// An outbound connection with one channel of `capacity` messages, for the driver's unit
    /// tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: u64, capacity: usize) -> Arc<Self> {
        Arc::new(Self::new(
            ConnectionId(id),
            Direction::Outbound,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            &[LaneSpec {
                channel: 0,
                capacity,
                max_bytes: 1 << 20,
                weight: 1,
            }],
            CancellationToken::new(),
        ))
    }

    /// Whether this connection has been told to close ([`SocketShared::close_gracefully`]).
    pub(crate) fn is_closing(&self) -> bool {
        self.close_intent.lock().is_some()
    }

    pub(crate) fn info(&self) -> ConnectionInfo {
        let (queued_messages, queued_bytes) = self.queue.depth();
        ConnectionInfo {
            id: self.id,
            peer: self.peer.get().copied(),
            addr: self.addr,
            listen_addr: self.listen_addr.get().copied().flatten(),
            direction: self.direction,
            state: self.state.get(),
            stats: self.stats.snapshot(queued_messages, queued_bytes),
            channels: self
                .stats
                .channels
                .iter()
                .enumerate()
                .map(|(lane, c)| {
                    c.snapshot(
                        self.channel_ids.get(lane).copied().unwrap_or(0),
                        self.queue.depth_of(lane),
                    )
                })
                .collect(),
        }
    }
}

/// Immutable context every socket task shares.
#[derive(Debug)]
pub(crate) struct SocketContext {
    pub(crate) keypair: Keypair,
    pub(crate) config: Config,
    /// The configured channels, by dense index.
    pub(crate) channels: ChannelTable,
    /// Send-queue lanes by channel index, derived from `channels`.
    pub(crate) lanes: Vec<LaneSpec>,
    pub(crate) advertised_addr: SocketAddr,
    /// At most `max_concurrent_handshakes` handshakes at once.
    pub(crate) handshakes: Arc<Semaphore>,
    /// Node-wide bound on partly received messages (`max_reassembly_bytes`).
    pub(crate) reassembly: Arc<crate::codec::record::ReassemblyBudget>,
    /// Each remote address's message budget (`max_inbound_messages_per_sec_per_ip`), shared
    /// by its connections; held weakly, so an address's entry goes with its last connection.
    pub(crate) ip_budgets: parking_lot::Mutex<
        std::collections::HashMap<
            std::net::IpAddr,
            std::sync::Weak<crate::session::rate::IpBudget>,
        >,
    >,
}

impl SocketContext {
    /// The message budget of `ip`, shared with its other connections; `None` when unlimited.
    pub(crate) fn ip_budget(
        &self,
        ip: std::net::IpAddr,
    ) -> Option<Arc<crate::session::rate::IpBudget>> {
        let rate = self.config.max_inbound_messages_per_sec_per_ip;
        if rate == 0 {
            return None;
        }
        let mut budgets = self.ip_budgets.lock();
        if let Some(budget) = budgets.get(&ip).and_then(std::sync::Weak::upgrade) {
            return Some(budget);
        }
        // Bounded by the connections: entries whose last connection is gone are dropped here.
        if budgets.len() >= 1024 {
            budgets.retain(|_, b| b.strong_count() > 0);
        }
        let budget = Arc::new(crate::session::rate::IpBudget::new(
            rate,
            std::time::Instant::now(),
        ));
        budgets.insert(ip, Arc::downgrade(&budget));
        Some(budget)
    }
}
