//! State shared between the network actor (the only writer of the maps) and the handles (which
//! read them on the hot path, so sending never goes through the actor).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::inbox::Slot;
use super::link::SocketShared;
use super::stream::{Persistence, Reliable};
use crate::identity::{PeerId, PeerMap};
use crate::peers::NetworkEvent;
use crate::session::channel::ChannelTable;
use crate::session::{ConnectionId, PeerStats};

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
}

/// Node-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) inbound_accepted: Counter,
    pub(crate) handshakes_ok: Counter,
    pub(crate) handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) broadcast_skipped_full: Counter,
    pub(crate) send_wait_expired: Counter,
    pub(crate) stalled_disconnects: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) bans: Counter,
    pub(crate) offline_full: Counter,
    pub(crate) self_inbox_full: Counter,
    pub(crate) persistent_removed: Counter,
    pub(crate) identity_conflicts: Counter,
    pub(crate) inbound_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections ended, by [`DisconnectReason::label`].
    pub(crate) disconnects: Mutex<BTreeMap<&'static str, u64>>,
    /// The traffic of connections that have ended, folded in when each is removed from
    /// `Shared::connections` (under its write lock), so node-wide totals survive peer churn.
    pub(crate) departed: Mutex<Totals>,
}

impl Counters {
    pub(crate) fn handshake_failed(&self, label: &'static str) {
        *self.handshake_failures.lock().entry(label).or_default() += 1;
    }

    pub(crate) fn inbound_refused(&self, label: &'static str) {
        *self.inbound_refused.lock().entry(label).or_default() += 1;
    }

    pub(crate) fn disconnected(&self, label: &'static str) {
        *self.disconnects.lock().entry(label).or_default() += 1;
    }
}

/// Node-wide traffic totals: every connection this node has had, open or ended. Counters only
/// grow, whatever peers come and go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Totals {
    /// Application messages received.
    pub messages_in: u64,
    /// Encoded application bytes received.
    pub bytes_in: u64,
    /// Application messages written.
    pub messages_out: u64,
    /// Encoded application bytes written.
    pub bytes_out: u64,
    /// Misbehaviour points charged to peers.
    pub misbehaviour_points: u64,
    /// Inbound messages dropped because the application inbox was full.
    pub dropped_inbox_full: u64,
    /// Outbound messages refused because a peer's send queue was full.
    pub dropped_queue_full: u64,
    /// Outbound messages still queued when their connection closed without flushing them.
    pub dropped_on_close: u64,
    /// Inbound messages dropped for exceeding a peer's rate limit.
    pub dropped_rate_limited: u64,
}

impl Totals {
    /// Adds one connection's counters.
    pub(crate) fn add(&mut self, s: &PeerStats) {
        self.messages_in += s.messages_in;
        self.bytes_in += s.bytes_in;
        self.messages_out += s.messages_out;
        self.bytes_out += s.bytes_out;
        self.misbehaviour_points += s.misbehaviour;
        self.dropped_inbox_full += s.dropped_inbox_full;
        self.dropped_queue_full += s.dropped_queue_full;
        self.dropped_on_close += s.dropped_on_close;
        self.dropped_rate_limited += s.dropped_rate_limited;
    }
}

/// A snapshot of node-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkStats {
    /// Inbound TCP connections accepted (before the handshake).
    pub inbound_accepted: u64,
    /// Handshakes that proved a peer.
    pub handshakes_ok: u64,
    /// Failed handshakes by reason (see [`crate::handshake::HandshakeError::label`]).
    pub handshake_failures: BTreeMap<&'static str, u64>,
    /// Per-peer copies skipped by a broadcast because that peer's queue was full (`try_*`),
    /// stayed full for `send_wait` (waiting broadcast), or was already marked stalled.
    pub broadcast_skipped_full: u64,
    /// Waiting sends (`send`, `broadcast`) that gave up on a peer after `send_wait`.
    pub send_wait_expired: u64,
    /// Connections closed because the peer stopped reading or acknowledging for
    /// `write_timeout` (each also charged to its IP, see `Config::max_stalls_per_ip`).
    pub stalled_disconnects: u64,
    /// Redials of persistent peers and bootstrap addresses (after a failed dial or a lost
    /// connection).
    pub reconnects: u64,
    /// Bans imposed (by misbehaviour score, repeated stalls from one IP, or the application).
    pub bans: u64,
    /// Messages refused by `try_send`/`try_broadcast` because a persistent peer's reliable
    /// buffer was full while the peer was away.
    pub offline_full: u64,
    /// Messages to this node itself (`deliver_to_self`) dropped because its inbox was full.
    pub self_inbox_full: u64,
    /// Messages accepted for a persistent peer and not yet acknowledged when the application
    /// removed it (`Network::remove_persistent_peer`): let go, never sent again.
    pub persistent_removed: u64,
    /// Signs that two nodes prove the same identity (one key file used by two processes): a
    /// peer replaced its connection with one advertising another address, or a peer closed
    /// ours as a duplicate and kept another connection claiming our identity.
    pub identity_conflicts: u64,
    /// Inbound connections refused by a limit, by reason (`per_ip`, `max_inbound`).
    pub inbound_refused: BTreeMap<&'static str, u64>,
    /// Connections ended, by reason (see [`crate::DisconnectReason`]; `handshake` covers every
    /// failed handshake, detailed in `handshake_failures`).
    pub disconnects: BTreeMap<&'static str, u64>,
    /// Traffic over every connection this node has had, open or ended.
    pub totals: Totals,
    /// Bytes of partly received large messages held now, across connections (at most
    /// `Config::max_reassembly_bytes`).
    pub reassembly_bytes: usize,
    /// Fragments refused because they would have gone past `Config::max_reassembly_bytes`
    /// (each skipped the rest of its message, and was charged to its sender).
    pub reassembly_refused: u64,
    /// Connections in any state now.
    pub connections: usize,
    /// Peers with an open connection now.
    pub peers: usize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) local_id: PeerId,
    pub(crate) local_addr: SocketAddr,
    /// The configured channels, by dense index.
    pub(crate) channels: ChannelTable,
    /// Each channel's delivery point, by index; opened by the application once. Weak: the
    /// actor and the connection tasks own the slots, so when the last of them ends the slots go
    /// and every inbox sees the end of its stream.
    pub(crate) slots: std::sync::Weak<[Slot]>,
    /// How long a waiting send may wait for one peer (see `Config::send_wait`).
    pub(crate) send_wait: std::time::Duration,
    /// How long a ban imposed by a protocol above the face lasts (see `Config::ban_duration`).
    pub(crate) ban_duration: std::time::Duration,
    /// The node's identity, for protocols that sign what they originate (gossip).
    pub(crate) keypair: crate::identity::Keypair,
    /// The address peers should dial this node at (`Config::advertised_addr`, else the bound
    /// one), for the records discovery signs.
    pub(crate) advertised_addr: SocketAddr,
    /// The open connection of each peer: what `send` and `broadcast` use.
    pub(crate) peers: RwLock<PeerMap<Arc<SocketShared>>>,
    /// Peers between two connections: the one senders used was closed by the remote as the
    /// duplicate of another still in its handshake here, so the peer never left (its departure
    /// is held). A waiting send to one waits for the replacement instead of failing at once.
    /// At most one entry per peer, each gone when the replacement is published or the held
    /// departure is reported.
    pub(crate) between: parking_lot::Mutex<std::collections::HashSet<PeerId>>,
    /// Woken when a peer leaves `between`.
    pub(crate) settled: tokio::sync::Notify,
    /// Every connection in any state, for observation.
    pub(crate) connections: RwLock<HashMap<ConnectionId, Arc<SocketShared>>>,
    pub(crate) events: broadcast::Sender<NetworkEvent>,
    /// The receiver made with `events`, for the application's first `Network::events()`: it
    /// holds every event since start (at most `event_capacity`).
    pub(crate) first_events: parking_lot::Mutex<Option<broadcast::Receiver<NetworkEvent>>>,
    pub(crate) counters: Counters,
    /// The reliable stream of each persistent peer, used whether or not the peer is
    /// connected. Read on every send; written only when the application adds or removes a
    /// persistent peer. Never read twice on one thread at once (the lock is fair: a second
    /// read behind a waiting writer would deadlock).
    pub(crate) reliable: RwLock<PeerMap<Arc<Reliable>>>,
    /// The persistent peers as the application set them, and the maker of their streams.
    /// Held across a whole addition or removal, so those run one at a time.
    pub(crate) persistence: tokio::sync::Mutex<Persistence>,
    /// The actor task, joined by the first `shutdown` call.
    pub(crate) actor: Mutex<Option<JoinHandle<()>>>,
    /// The data directory's database (`Config::data_dir`), if any.
    pub(crate) store: Option<Arc<crate::store::Store>>,
    /// Node-wide bound on partly received messages, shared by every connection's decoder.
    pub(crate) reassembly: Arc<crate::codec::record::ReassemblyBudget>,
}

impl Shared {
    pub(crate) fn stats(&self) -> NetworkStats {
        // Read under the connections lock, which a closing connection's fold also holds: a
        // connection is counted either live or departed, never both or neither.
        let (totals, connections) = {
            let live = self.connections.read();
            let mut totals = *self.counters.departed.lock();
            for socket in live.values() {
                totals.add(&socket.stats.snapshot(0, 0));
            }
            (totals, live.len())
        };
        NetworkStats {
            inbound_accepted: self.counters.inbound_accepted.get(),
            handshakes_ok: self.counters.handshakes_ok.get(),
            handshake_failures: self.counters.handshake_failures.lock().clone(),
            broadcast_skipped_full: self.counters.broadcast_skipped_full.get(),
            send_wait_expired: self.counters.send_wait_expired.get(),
            stalled_disconnects: self.counters.stalled_disconnects.get(),
            reconnects: self.counters.reconnects.get(),
            bans: self.counters.bans.get(),
            offline_full: self.counters.offline_full.get(),
            self_inbox_full: self.counters.self_inbox_full.get(),
            persistent_removed: self.counters.persistent_removed.get(),
            identity_conflicts: self.counters.identity_conflicts.get(),
            inbound_refused: self.counters.inbound_refused.lock().clone(),
            disconnects: self.counters.disconnects.lock().clone(),
            reassembly_bytes: self.reassembly.held(),
            reassembly_refused: self.reassembly.refused(),
            totals,
            connections,
            peers: self.peers.read().len(),
        }
    }
}
