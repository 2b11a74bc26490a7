//! The network actor: the one owner of the connection tasks and the shared peer maps.
//!
//! It receives [`Command`]s from [`crate::Network`] handles, accepted streams from the listener,
//! and [`SocketEvent`]s from connection tasks. Every decision about them is the pure
//! [`Registry`]'s: the actor asks it, then applies the [`Effect`]s it returns (publish or
//! unpublish a peer's connection for senders, close a connection, emit an event), spawns the
//! tasks and runs the shutdown. It never awaits a socket: it talks to connections only through
//! their cancellation tokens and non-blocking queue calls, so no connection can stall it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{SocketEvent, SocketTask, Streams};
use super::inbox::Slot;
use super::link::{SocketContext, SocketShared};
use super::listener::{self, Accepted};
use super::shared::Shared;
use crate::codec::GoodbyeReason;
use crate::error::ConnectError;
use crate::identity::PeerId;
use crate::peers::backoff::jitter_sample;
use crate::peers::log_summary::{self, Kind, LogSummary};
use crate::peers::redial::Redialer;
use crate::peers::registry::{Admission, ConnFacts, Effect, Limits, MAX_INBOUND, Registry, Taken};
use crate::peers::{BanReason, NetworkEvent};
use crate::session::reliable::RecvSeq;
use crate::session::{ConnectionId, Direction, DisconnectReason, SocketState};

/// Capacity of the command channel from handles to the actor.
const COMMAND_CAPACITY: usize = 256;
/// Capacity of the channel from connection tasks to the actor.
const SOCKET_EVENT_CAPACITY: usize = 1024;
/// Capacity of the channel from the listener to the actor.
const ACCEPT_CAPACITY: usize = 64;
/// Most peers whose reliable-stream position is remembered while they are away.
const MAX_RECV_STATES: usize = 4096;

/// Requests from handles to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    Connect {
        addr: SocketAddr,
        expected: Option<PeerId>,
        reply: oneshot::Sender<Result<PeerId, ConnectError>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Ban {
        peer: PeerId,
        duration: std::time::Duration,
        reply: oneshot::Sender<()>,
    },
    Unban {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Cut every connection at once, without a goodbye or a flush (a simulated crash).
    Abort {
        reply: oneshot::Sender<()>,
    },
    /// `id` is a persistent peer now (its streams are in `Shared::reliable` already).
    Persist {
        addr: SocketAddr,
        id: PeerId,
        reply: oneshot::Sender<()>,
    },
    /// `id` is no longer persistent (its streams are gone from `Shared::reliable`).
    Unpersist {
        id: PeerId,
        reply: oneshot::Sender<()>,
    },
}

pub(crate) struct NetworkActor {
    shared: Arc<Shared>,
    ctx: Arc<SocketContext>,
    commands: mpsc::Receiver<Command>,
    accepted: mpsc::Receiver<Accepted>,
    socket_events: mpsc::Receiver<SocketEvent>,
    /// Cloned into every connection task; the actor keeps one so the channel never closes
    /// early.
    socket_events_tx: mpsc::Sender<SocketEvent>,
    /// The node's channel slots, by channel index (handed to every connection).
    slots: Arc<[Slot]>,
    outbound_slots: Arc<Semaphore>,
    /// The listener's: `max_inbound` plus one per persistent peer.
    inbound_slots: Arc<Semaphore>,
    root: CancellationToken,
    listener_cancel: CancellationToken,
    listener: JoinHandle<()>,
    tracker: TaskTracker,
    next_id: u64,
    /// Callers of `connect` waiting for their dial to open (or fail).
    pending: HashMap<ConnectionId, ConnectWaiter>,
    /// Callers whose dial lost the duplicate tie-break, waiting for the peer to welcome the
    /// connection that won (or for it to close), by that connection. Bounded by the dials
    /// (each waiter was a `pending` one).
    through: HashMap<ConnectionId, Vec<ConnectWaiter>>,
    /// The same, when the winning connection has not even reached this side yet (the remote
    /// closed ours as a duplicate first): by peer, with the dialed address, answered by the
    /// first welcome from that peer, or failed when its held departure is reported.
    through_peer: HashMap<PeerId, Vec<(SocketAddr, ConnectWaiter)>>,
    /// Every decision about connections and peers.
    registry: Registry,
    /// Our position in each peer's reliable streams, kept across its connections.
    recv_states: HashMap<PeerId, Arc<parking_lot::Mutex<Vec<RecvSeq>>>>,
    /// Effects returned by the registry, applied and cleared after each call.
    effects: Vec<Effect>,
    /// Refusals and failures logged once per kind per window (floods stay a few lines).
    log: LogSummary,
}

impl NetworkActor {
    /// Starts the listener task and the actor task (kept in `shared.actor`); returns the
    /// sending side of the command channel.
    pub(crate) fn spawn(
        ctx: Arc<SocketContext>,
        shared: Arc<Shared>,
        listener: TcpListener,
        slots: Arc<[Slot]>,
    ) -> mpsc::Sender<Command> {
        let config = &ctx.config;
        let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
        let (accepted_tx, accepted) = mpsc::channel(ACCEPT_CAPACITY);
        let (socket_events_tx, socket_events) = mpsc::channel(SOCKET_EVENT_CAPACITY);
        let root = CancellationToken::new();
        let listener_cancel = root.child_token();
        // Headroom so that persistent peers find a slot even when max_inbound others are in.
        let inbound_slots = Arc::new(Semaphore::new(
            config.max_inbound + config.persistent_peers.len(),
        ));
        let listener = tokio::spawn(listener::run(
            listener,
            inbound_slots.clone(),
            accepted_tx,
            listener_cancel.clone(),
        ));
        let limits = Limits {
            max_inbound: config.max_inbound,
            max_inbound_per_ip: config.max_inbound_per_ip,
            max_handshakes_per_ip: config.max_handshakes_per_ip,
            handshakes_per_ip_per_sec: config.max_handshakes_per_ip_per_sec,
            ban_duration: config.ban_duration,
            handshake_timeout: config.handshake_timeout,
            max_stalls_per_ip: config.max_stalls_per_ip,
            stall_window: config.stall_window,
        };
        let redial = Redialer::new(
            config.persistent_peers.iter().map(|p| (p.addr, p.id)),
            config.bootstrap.iter().copied(),
            config.backoff,
            Instant::now(),
        );
        let actor = Self {
            registry: Registry::new(shared.local_id, limits, redial),
            outbound_slots: Arc::new(Semaphore::new(config.max_outbound)),
            inbound_slots,
            shared: shared.clone(),
            ctx: ctx.clone(),
            commands,
            accepted,
            socket_events,
            socket_events_tx,
            slots,
            root,
            listener_cancel,
            listener,
            tracker: TaskTracker::new(),
            next_id: 0,
            pending: HashMap::new(),
            through: HashMap::new(),
            through_peer: HashMap::new(),
            recv_states: HashMap::new(),
            effects: Vec::new(),
            log: LogSummary::default(),
        };
        *shared.actor.lock() = Some(tokio::spawn(actor.run()));
        commands_tx
    }

    async fn run(mut self) {
        let mut waiters = Vec::new();
        let mut graceful = true;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    // Every handle is gone: shut down gracefully.
                    None => break,
                    Some(Command::Shutdown { reply }) => {
                        waiters.push(reply);
                        break;
                    }
                    Some(Command::Abort { reply }) => {
                        waiters.push(reply);
                        graceful = false;
                        break;
                    }
                    Some(command) => self.command(command),
                },
                Some(event) = self.socket_events.recv() => self.socket_event(event, false),
                Some(accepted) = self.accepted.recv() => self.spawn_inbound(accepted),
                () = sleep_until_due(self.registry.next_due()) => self.due(),
                () = sleep_until_due(self.log.next_due()) => self.log_due(),
            }
        }
        self.shutdown(&mut waiters, graceful).await;
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    /// `peer` is no longer between two connections: wakes the sends waiting for it.
    fn settle(&self, peer: PeerId) {
        if self.shared.between.lock().remove(&peer) {
            self.shared.settled.notify_waiters();
        }
    }

    /// Applies (and clears) the effects the registry returned.
    fn apply(&mut self) {
        for effect in std::mem::take(&mut self.effects) {
            match effect {
                Effect::Publish { peer, conn } => {
                    let socket = self.shared.connections.read().get(&conn).cloned();
                    if let Some(socket) = socket {
                        self.shared.peers.write().insert(peer, socket);
                    }
                    self.settle(peer);
                }
                Effect::Unpublish { peer, conn } => {
                    let mut peers = self.shared.peers.write();
                    if peers.get(&peer).is_some_and(|s| s.id == conn) {
                        peers.remove(&peer);
                        // Between two connections until a Publish (the replacement) or an
                        // Emit(Disconnected) (now, or when a held departure ends) says which.
                        self.shared.between.lock().insert(peer);
                    }
                }
                Effect::Close { conn, reason } => {
                    let socket = self.shared.connections.read().get(&conn).cloned();
                    if let Some(socket) = socket {
                        if reason == DisconnectReason::Duplicate {
                            self.check_identity(&socket);
                        }
                        socket.close_gracefully(reason);
                    }
                }
                Effect::Emit(event) => {
                    match &event {
                        NetworkEvent::Connected { peer, addr, .. } => {
                            tracing::debug!(%peer, %addr, "peer connected");
                        }
                        NetworkEvent::Disconnected { peer, reason } => {
                            tracing::debug!(%peer, %reason, "peer disconnected");
                            self.settle(*peer);
                            // A dial waiting for the peer's other connection: it never came.
                            for (addr, waiter) in self.through_peer.remove(peer).unwrap_or_default()
                            {
                                let _ = waiter.send(Err(ConnectError::ConnectionClosed {
                                    addr,
                                    reason: reason.clone(),
                                }));
                            }
                            if *reason == DisconnectReason::RemoteGoodbye(GoodbyeReason::Duplicate)
                            {
                                // Held for a replacement of ours that never came: the peer
                                // kept another connection that proved our identity.
                                self.shared.counters.identity_conflicts.inc();
                                let peer = *peer;
                                self.say(("identity conflict", "replaced_by_twin"), || {
                                    tracing::warn!(
                                        %peer,
                                        "peer closed our connection as a duplicate of another \
                                         one with this node's identity: is a second process using \
                                         this key file? Each will keep replacing the other"
                                    );
                                });
                            }
                        }
                        NetworkEvent::Banned {
                            peer,
                            duration,
                            reason,
                        } => {
                            self.shared.counters.bans.inc();
                            tracing::warn!(%peer, ?reason, ?duration, "peer banned");
                        }
                    }
                    // No subscriber is normal; a lagging subscriber is told how many it missed.
                    let _ = self.shared.events.send(event);
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Connect {
                addr,
                expected,
                reply,
            } => {
                let Ok(slot) = self.outbound_slots.clone().try_acquire_owned() else {
                    let _ = reply.send(Err(ConnectError::OutboundLimit));
                    return;
                };
                let id = self.spawn_outbound(addr, expected, Some(slot));
                self.pending.insert(id, reply);
            }
            Command::Disconnect { peer, reply } => {
                let was_connected =
                    self.registry
                        .disconnect(peer, now, jitter_sample(), &mut self.effects);
                self.apply();
                let _ = reply.send(was_connected);
            }
            Command::Ban {
                peer,
                duration,
                reply,
            } => {
                self.registry.ban(
                    peer,
                    None,
                    duration,
                    BanReason::Application,
                    now,
                    &mut self.effects,
                );
                self.apply();
                let _ = reply.send(());
            }
            Command::Unban { peer, reply } => {
                let _ = reply.send(self.registry.unban(peer));
            }
            Command::Persist { addr, id, reply } => {
                if self
                    .registry
                    .add_persistent(addr, id, now, &mut self.effects)
                {
                    self.inbound_slots.add_permits(1);
                }
                self.apply();
                let _ = reply.send(());
            }
            Command::Unpersist { id, reply } => {
                if self.registry.remove_persistent(id, &mut self.effects) {
                    // Its headroom goes if free now; else it stays (the inbound limit
                    // itself is the registry's, after the handshake).
                    self.inbound_slots.forget_permits(1);
                }
                self.apply();
                let _ = reply.send(());
            }
            Command::Shutdown { reply } | Command::Abort { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn new_socket(&mut self, direction: Direction, addr: SocketAddr) -> Arc<SocketShared> {
        self.next_id += 1;
        let socket = Arc::new(SocketShared::new(
            ConnectionId(self.next_id),
            direction,
            addr,
            &self.ctx.lanes,
            self.root.child_token(),
        ));
        self.shared
            .connections
            .write()
            .insert(socket.id, socket.clone());
        socket
    }

    /// Starts a dial; `slot` is `None` only for persistent peers and bootstrap addresses, which
    /// are never refused for capacity.
    fn spawn_outbound(
        &mut self,
        addr: SocketAddr,
        expected: Option<PeerId>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> ConnectionId {
        let socket = self.new_socket(Direction::Outbound, addr);
        let dial_seq = self.registry.next_dial_seq(unix_micros());
        let _ = socket.dial_seq.set(dial_seq);
        self.registry.opened(
            ConnFacts {
                id: socket.id,
                direction: Direction::Outbound,
                addr,
                dial_seq,
            },
            Instant::now(),
        );
        let id = socket.id;
        let task = SocketTask {
            shared: socket,
            ctx: self.ctx.clone(),
            to_network: self.socket_events_tx.clone(),
            slots: self.slots.clone(),
            expected_peer: expected,
            _slot: slot,
        };
        self.tracker.spawn(task.run(None));
        id
    }

    /// Reports departures whose replacement never came and starts the dials that are due.
    fn due(&mut self) {
        let dials = self.registry.due(Instant::now(), &mut self.effects);
        self.apply();
        for dial in dials {
            tracing::debug!(addr = %dial.addr, peer = ?dial.expected, "dialing");
            let id = self.spawn_outbound(dial.addr, dial.expected, None);
            if self.registry.dial_started(dial, id) {
                self.shared.counters.reconnects.inc();
            }
        }
    }

    /// Logs through the summary: `say` runs for the first event of `kind` in its window.
    fn say(&mut self, kind: Kind, say: impl FnOnce()) {
        if self.log.note(kind, Instant::now()) {
            say();
        }
    }

    /// One line per kind of event left out of the log in the window that just ended.
    fn log_due(&mut self) {
        for ((what, why), left_out) in self.log.due(Instant::now()) {
            tracing::warn!(
                reason = why,
                "{left_out} more like the last \"{what}\" ({why}) in the last {} s",
                log_summary::WINDOW.as_secs()
            );
        }
    }

    /// What a closed connection tells the operator: failed dials and handshakes, and peers cut
    /// for misbehaving or stalling. Normal endings (goodbyes, duplicates, shutdown) say nothing.
    fn log_closed(
        &mut self,
        shared: &SocketShared,
        reason: &DisconnectReason,
        error: Option<&ConnectError>,
    ) {
        let addr = shared.addr;
        let direction = shared.direction;
        let peer = shared.peer.get().copied();
        match error {
            Some(ConnectError::Handshake { source, .. }) => {
                let label = source.label();
                self.say(("handshake failed", label), || {
                    tracing::warn!(%addr, ?direction, reason = label, "handshake failed: {source}");
                });
            }
            Some(e @ (ConnectError::Dial { .. } | ConnectError::DialTimeout { .. })) => {
                self.say(("dial failed", "unreachable"), || {
                    tracing::warn!(%addr, "{e}");
                });
            }
            _ => {}
        }
        if let (
            Some(peer),
            DisconnectReason::Misbehaviour { .. }
            | DisconnectReason::WriteStalled
            | DisconnectReason::Codec(_)
            | DisconnectReason::IdleTimeout,
        ) = (peer, reason)
        {
            let label = reason.label();
            self.say(("peer cut", label), || {
                tracing::warn!(%peer, %addr, reason = label, "connection closed: {reason}");
            });
        }
    }

    /// A connection of `old`'s peer is being replaced: if the new one advertises another
    /// listen address, two nodes may be proving the same identity (one key file, two
    /// processes), and they will keep replacing each other.
    fn check_identity(&mut self, old: &SocketShared) {
        let Some(peer) = old.peer.get().copied() else {
            return;
        };
        let new = self.shared.peers.read().get(&peer).cloned();
        let (Some(Some(was)), Some(Some(now))) = (
            old.listen_addr.get().copied(),
            new.and_then(|n| n.listen_addr.get().copied()),
        ) else {
            return;
        };
        if was != now {
            self.shared.counters.identity_conflicts.inc();
            self.say(("identity conflict", "two_addresses"), || {
                tracing::warn!(
                    %peer,
                    %was,
                    %now,
                    "peer replaced its connection with one advertising another address: if this \
                     repeats, two processes are using one key file"
                );
            });
        }
    }

    fn spawn_inbound(&mut self, accepted: Accepted) {
        let ip = accepted.addr.ip();
        let now = Instant::now();
        let shared = &self.shared;
        let progressed = |id| {
            shared.connections.read().get(&id).is_some_and(|s| {
                s.handshake_progressed
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
        };
        let taken = match self.registry.accept(ip, now, progressed) {
            Ok(taken) => taken,
            Err(refusal) => {
                let label = refusal.label();
                self.shared.counters.inbound_refused(label);
                self.say(("inbound connection refused", label), || {
                    tracing::warn!(
                        %ip,
                        reason = label,
                        "inbound connection refused before its handshake: {}",
                        refusal.explain()
                    );
                });
                return; // dropping the stream closes it; dropping the slot frees it
            }
        };
        if let Some(evict) = taken.evict {
            self.shared.counters.inbound_refused(Taken::EVICTED);
            let socket = self.shared.connections.read().get(&evict).cloned();
            if let Some(socket) = socket {
                socket.cancel.cancel();
            }
            self.say(("inbound connection refused", Taken::EVICTED), || {
                tracing::warn!(
                    %ip,
                    "max_handshakes_per_ip connections from this IP are in their handshake: the \
                     oldest silent one was cut for a new one (strangers holding connections open?)"
                );
            });
        }
        let socket = self.new_socket(Direction::Inbound, accepted.addr);
        self.registry.opened(
            ConnFacts {
                id: socket.id,
                direction: Direction::Inbound,
                addr: accepted.addr,
                dial_seq: 0,
            },
            now,
        );
        self.shared.counters.inbound_accepted.inc();
        let task = SocketTask {
            shared: socket,
            ctx: self.ctx.clone(),
            to_network: self.socket_events_tx.clone(),
            slots: self.slots.clone(),
            expected_peer: None,
            _slot: Some(accepted.slot),
        };
        let fut = task.run(Some(accepted.stream));
        if std::env::var_os("PW_SIZES").is_some() {
            eprintln!("socket task future: {} bytes", std::mem::size_of_val(&fut));
        }
        self.tracker.spawn(fut);
    }

    fn socket_event(&mut self, event: SocketEvent, shutting_down: bool) {
        let now = Instant::now();
        match event {
            SocketEvent::Authenticated {
                shared,
                peer,
                reply,
            } => {
                self.shared.counters.handshakes_ok.inc();
                let admission = if shutting_down {
                    Admission::Close(DisconnectReason::Shutdown)
                } else {
                    let facts = ConnFacts {
                        id: shared.id,
                        direction: shared.direction,
                        addr: shared.addr,
                        dial_seq: shared.dial_seq.get().copied().unwrap_or(0),
                    };
                    let admission = self.registry.admit(facts, peer, now, &mut self.effects);
                    self.apply();
                    admission
                };
                if admission == Admission::Close(DisconnectReason::InboundLimit) {
                    self.shared.counters.inbound_refused(MAX_INBOUND);
                }
                // An open connection answers the caller once the peer's welcome says the peer
                // admitted it too (or fails it when it closes first).
                let answer_now = admission != Admission::Open;
                let waiter = if answer_now {
                    self.pending.remove(&shared.id)
                } else {
                    None
                };
                if let Some(waiter) = waiter {
                    match &admission {
                        // A duplicate lost the tie-break: the peer is connected through the
                        // other connection, which is what the caller asked for, once the peer
                        // has admitted that one too.
                        Admission::Close(DisconnectReason::Duplicate) => {
                            self.answer_through(peer, shared.addr, waiter);
                        }
                        Admission::Close(DisconnectReason::Shutdown) => {
                            let _ = waiter.send(Err(ConnectError::Closed));
                        }
                        Admission::Close(reason) => {
                            let _ = waiter.send(Err(ConnectError::ConnectionClosed {
                                addr: shared.addr,
                                reason: reason.clone(),
                            }));
                        }
                        // Not taken above: an open connection waits for the peer's welcome.
                        Admission::Open => {
                            let _ = waiter.send(Ok(peer));
                        }
                    }
                }
                let reliable = self.shared.reliable.read().get(&peer).cloned();
                let streams = Streams {
                    reliable,
                    recv: self.recv_state(peer),
                };
                // The connection may have been cancelled meanwhile; then it closes on its own.
                let _ = reply.send((admission, streams));
            }
            SocketEvent::Welcomed { shared } => {
                if let Some(peer) = shared.peer.get() {
                    if let Some(waiter) = self.pending.remove(&shared.id) {
                        let _ = waiter.send(Ok(*peer));
                    }
                    for waiter in self.through.remove(&shared.id).unwrap_or_default() {
                        let _ = waiter.send(Ok(*peer));
                    }
                    for (_, waiter) in self.through_peer.remove(peer).unwrap_or_default() {
                        let _ = waiter.send(Ok(*peer));
                    }
                }
            }
            SocketEvent::Closed {
                shared,
                reason,
                error,
            } => {
                {
                    let mut live = self.shared.connections.write();
                    live.remove(&shared.id);
                    // Folded while the lock is held, so a scrape never misses or doubles it.
                    self.shared
                        .counters
                        .departed
                        .lock()
                        .add(&shared.stats.snapshot(0, 0));
                }
                self.shared.counters.disconnected(reason.label());
                if let Some(ConnectError::Handshake { source, .. }) = &error {
                    self.shared.counters.handshake_failed(source.label());
                }
                if !shutting_down {
                    self.log_closed(&shared, &reason, error.as_ref());
                }
                if reason == DisconnectReason::WriteStalled && !shutting_down {
                    self.shared.counters.stalled_disconnects.inc();
                }
                // A dial that lost the duplicate tie-break on the remote's side: the peer is
                // connected through the winning connection, which is what the caller asked for.
                let duplicate = matches!(
                    reason,
                    DisconnectReason::Duplicate
                        | DisconnectReason::RemoteGoodbye(GoodbyeReason::Duplicate)
                );
                let through_other =
                    shared.peer.get().copied().filter(|peer| {
                        duplicate && error.is_none() && self.registry.is_open(*peer)
                    });
                // Callers waiting for this connection's welcome: it closed first.
                for waiter in self.through.remove(&shared.id).unwrap_or_default() {
                    let _ = waiter.send(Err(ConnectError::ConnectionClosed {
                        addr: shared.addr,
                        reason: reason.clone(),
                    }));
                }
                if let Some(waiter) = self.pending.remove(&shared.id) {
                    if let Some(peer) = through_other {
                        if self.registry.open_connection(peer) == Some(shared.id) {
                            // The remote keeps another connection that has not opened here
                            // yet (the registry holds the departure for it).
                            self.through_peer
                                .entry(peer)
                                .or_default()
                                .push((shared.addr, waiter));
                        } else {
                            self.answer_through(peer, shared.addr, waiter);
                        }
                    } else {
                        let _ = waiter.send(Err(error.unwrap_or(ConnectError::ConnectionClosed {
                            addr: shared.addr,
                            reason: reason.clone(),
                        })));
                    }
                }
                self.registry.closed(
                    shared.id,
                    shared.peer.get().copied(),
                    &reason,
                    now,
                    jitter_sample(),
                    &mut self.effects,
                );
                self.apply();
            }
        }
    }

    /// Answers a caller whose dial lost to another connection of `peer`: `Ok` once the peer
    /// has welcomed that connection (at once if it has), an error if it closes first. Without
    /// the wait, `connect` could return while the winner was still being refused by the peer
    /// (a ban, say) and the caller be left with no connection at all.
    fn answer_through(&mut self, peer: PeerId, addr: SocketAddr, waiter: ConnectWaiter) {
        let kept = self
            .registry
            .open_connection(peer)
            .and_then(|id| self.shared.connections.read().get(&id).cloned());
        match kept {
            Some(kept) if kept.welcome_seen.load(std::sync::atomic::Ordering::Acquire) => {
                let _ = waiter.send(Ok(peer));
            }
            Some(kept) => self.through.entry(kept.id).or_default().push(waiter),
            // Gone meanwhile: the dial's own connection lost to nothing that lasts.
            None => {
                let _ = waiter.send(Err(ConnectError::ConnectionClosed {
                    addr,
                    reason: DisconnectReason::Duplicate,
                }));
            }
        }
    }

    /// The receive positions for `peer`'s reliable streams, created on first contact. Bounded:
    /// when full, positions of peers that are not connected now are forgotten (such a peer's
    /// next connection starts its streams afresh).
    fn recv_state(&mut self, peer: PeerId) -> Arc<parking_lot::Mutex<Vec<RecvSeq>>> {
        if !self.recv_states.contains_key(&peer) && self.recv_states.len() >= MAX_RECV_STATES {
            let registry = &self.registry;
            self.recv_states
                .retain(|p, _| registry.is_open(*p) || registry.is_persistent(*p));
        }
        let lanes = self.ctx.lanes.len();
        self.recv_states
            .entry(peer)
            .or_insert_with(|| {
                Arc::new(parking_lot::Mutex::new(
                    (0..lanes).map(|_| RecvSeq::default()).collect(),
                ))
            })
            .clone()
    }

    /// Stop accepting, say goodbye to every peer, flush within `shutdown_timeout`, then cut what
    /// is left and join every task. Not `graceful` (an abort): cut every connection at once,
    /// with no goodbye and no flush, as a killed process would.
    async fn shutdown(&mut self, waiters: &mut Vec<oneshot::Sender<()>>, graceful: bool) {
        self.listener_cancel.cancel();
        let _ = (&mut self.listener).await;
        self.accepted.close();
        while let Ok(accepted) = self.accepted.try_recv() {
            drop(accepted); // closes the stream before any handshake
        }
        let mut cut = false;
        if !graceful {
            cut = true;
            self.root.cancel();
        }
        let sockets: Vec<_> = self.shared.connections.read().values().cloned().collect();
        for socket in sockets.into_iter().filter(|_| graceful) {
            if matches!(socket.state.get(), SocketState::Open | SocketState::Closing) {
                socket.close_gracefully(DisconnectReason::Shutdown);
            } else {
                socket.cancel.cancel();
            }
        }
        // Every peer the application counts as connected leaves with everyone else.
        self.registry.shutdown(&mut self.effects);
        self.apply();
        // Senders waiting for a persistent peer's streams to make room stop waiting.
        for reliable in self.shared.reliable.read().values() {
            reliable.wake_all();
        }
        self.tracker.close();
        let deadline = tokio::time::Instant::now() + self.ctx.config.shutdown_timeout;
        loop {
            tokio::select! {
                () = self.tracker.wait() => break,
                Some(event) = self.socket_events.recv() => self.socket_event(event, true),
                command = self.commands.recv(), if !self.commands.is_closed() => match command {
                    Some(Command::Shutdown { reply }) => waiters.push(reply),
                    Some(Command::Abort { reply }) => {
                        waiters.push(reply);
                        cut = true;
                        self.root.cancel();
                    }
                    Some(Command::Connect { reply, .. }) => { let _ = reply.send(Err(ConnectError::Closed)); }
                    Some(Command::Disconnect { reply, .. }) => { let _ = reply.send(false); }
                    Some(Command::Unban { reply, .. }) => { let _ = reply.send(false); }
                    Some(Command::Ban { reply, .. }
                        | Command::Persist { reply, .. }
                        | Command::Unpersist { reply, .. }) => { let _ = reply.send(()); }
                    None => self.commands.close(),
                },
                () = tokio::time::sleep_until(deadline), if !cut => {
                    tracing::debug!("shutdown timeout: cutting remaining connections");
                    cut = true;
                    self.root.cancel();
                }
            }
        }
        self.root.cancel();
        while let Ok(event) = self.socket_events.try_recv() {
            self.socket_event(event, true);
        }
        for (_, waiter) in self.pending.drain() {
            let _ = waiter.send(Err(ConnectError::Closed));
        }
        for (_, waiters) in self.through.drain() {
            for waiter in waiters {
                let _ = waiter.send(Err(ConnectError::Closed));
            }
        }
        for (_, waiters) in self.through_peer.drain() {
            for (_, waiter) in waiters {
                let _ = waiter.send(Err(ConnectError::Closed));
            }
        }
    }
}

/// Answers a caller of `connect`.
type ConnectWaiter = oneshot::Sender<Result<PeerId, ConnectError>>;

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Sleeps until `due`, or forever when nothing is scheduled.
async fn sleep_until_due(due: Option<std::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}
