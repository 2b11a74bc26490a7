//! The network actor: the one owner of the connection registry.
//!
//! It receives [`Command`]s from [`super::Network`] handles, accepted streams from the listener,
//! and [`SocketEvent`]s from socket tasks. It admits proven peers (resolving duplicates with
//! [`super::tiebreak`]), publishes the peer map that senders read, emits events, and runs the
//! shutdown. It never awaits a socket: it talks to them only through their cancellation tokens
//! and non-blocking queue calls, so no socket can stall it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{Admission, SocketEvent, SocketTask, Streams};
use super::inbox::Slot;
use super::link::{SocketContext, SocketShared};
use super::listener::Accepted;
use super::shared::Shared;
use crate::error::NetworkError;
use crate::identity::PeerId;
use crate::peers::backoff::jitter_sample;
use crate::peers::bans::Bans;
use crate::peers::departures::HeldDepartures;
use crate::peers::redial::Redialer;
use crate::peers::stalls::Stalls;
use crate::peers::tiebreak::{keep_new_connection, next_dial_seq};
use crate::peers::{BanReason, NetworkEvent};
use crate::session::rate::TokenBucket;
use crate::session::reliable::RecvSeq;
use crate::session::{ConnectionId, Direction, DisconnectReason, SocketState};

/// Requests from handles to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    Connect {
        addr: SocketAddr,
        expected: Option<PeerId>,
        reply: oneshot::Sender<Result<PeerId, NetworkError>>,
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
}

pub(crate) struct NetworkActor {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ctx: Arc<SocketContext>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) accepted: mpsc::Receiver<Accepted>,
    pub(crate) socket_events: mpsc::Receiver<SocketEvent>,
    /// Cloned into every socket task; the actor keeps one so the channel never closes early.
    pub(crate) socket_events_tx: mpsc::Sender<SocketEvent>,
    /// The node's channel slots, by channel index (handed to every connection).
    pub(crate) slots: Arc<[Slot]>,
    pub(crate) outbound_slots: Arc<Semaphore>,
    pub(crate) root: CancellationToken,
    pub(crate) listener_cancel: CancellationToken,
    pub(crate) listener: JoinHandle<()>,
    pub(crate) tracker: TaskTracker,
    pub(crate) next_id: u64,
    /// Callers of `connect` waiting for their dial to open (or fail).
    pub(crate) pending: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, NetworkError>>>,
    /// When to dial persistent peers and bootstrap addresses.
    pub(crate) redial: Redialer,
    /// Banned peers and addresses.
    pub(crate) bans: Bans,
    /// Our position in each peer's reliable stream, kept across its connections.
    pub(crate) recv_states: HashMap<PeerId, Arc<parking_lot::Mutex<Vec<RecvSeq>>>>,
    /// New-connection rate per remote IP, with when each bucket was last used.
    pub(crate) handshake_rates: HashMap<std::net::IpAddr, (TokenBucket, std::time::Instant)>,
    /// Peers whose connection the remote replaced, not reported as gone while the replacement
    /// finishes its handshake here.
    pub(crate) held_departures: HeldDepartures,
    /// Stalls per remote IP, charged towards a ban.
    pub(crate) stalls: Stalls,
    /// The sequence number of our latest dial (see [`next_dial_seq`]).
    pub(crate) last_dial_seq: u64,
}

/// Most remote IPs whose handshake rate is tracked; beyond it, buckets idle for a while go.
const MAX_RATE_BUCKETS: usize = 4096;

/// Most peers whose reliable-stream position is remembered while they are away.
const MAX_RECV_STATES: usize = 4096;

/// Most departures held back at once; beyond it, departures are reported at once.
pub(crate) const MAX_HELD_DEPARTURES: usize = 4096;

impl NetworkActor {
    pub(crate) async fn run(mut self) {
        let mut waiters = Vec::new();
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    // Every handle is gone: shut down gracefully.
                    None => break,
                    Some(Command::Shutdown { reply }) => {
                        waiters.push(reply);
                        break;
                    }
                    Some(command) => self.command(command),
                },
                Some(event) = self.socket_events.recv() => self.socket_event(event, false),
                Some(accepted) = self.accepted.recv() => self.spawn_inbound(accepted),
                () = sleep_until_due(self.redial.next_due()) => self.dial_due(),
                () = sleep_until_due(self.held_departures.next_due()) => {
                    for (peer, reason) in self.held_departures.take_due(std::time::Instant::now()) {
                        tracing::debug!(%peer, %reason, "peer disconnected (no replacement came)");
                        self.emit(NetworkEvent::Disconnected { peer, reason });
                    }
                }
            }
        }
        self.shutdown(&mut waiters).await;
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Connect {
                addr,
                expected,
                reply,
            } => {
                let Ok(slot) = self.outbound_slots.clone().try_acquire_owned() else {
                    let _ = reply.send(Err(NetworkError::OutboundLimit));
                    return;
                };
                let id = self.spawn_outbound(addr, expected, Some(slot));
                self.pending.insert(id, reply);
            }
            Command::Disconnect { peer, reply } => {
                let was_connected = self.remove_peer(peer, DisconnectReason::Requested);
                if was_connected {
                    // A persistent peer is redialed: use a ban to keep one away.
                    self.redial
                        .peer_lost(peer, std::time::Instant::now(), jitter_sample());
                }
                let _ = reply.send(was_connected);
            }
            Command::Ban {
                peer,
                duration,
                reply,
            } => {
                self.ban(peer, None, duration, BanReason::Application);
                let _ = reply.send(());
            }
            Command::Unban { peer, reply } => {
                let _ = reply.send(self.bans.unban_peer(&peer));
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Bans `peer` (and `ip`, unless the peer is persistent), closing its connection.
    fn ban(
        &mut self,
        peer: PeerId,
        ip: Option<std::net::IpAddr>,
        duration: std::time::Duration,
        reason: BanReason,
    ) {
        let now = std::time::Instant::now();
        let until = now + duration;
        self.bans.ban_peer(peer, until, now);
        if let Some(ip) = ip.filter(|_| !self.redial.is_persistent(peer)) {
            self.bans.ban_ip(ip, until, now);
        }
        self.shared.counters.bans.inc();
        tracing::info!(%peer, ?reason, ?duration, "peer banned");
        self.remove_peer(peer, DisconnectReason::Banned);
        self.emit(NetworkEvent::Banned {
            peer,
            duration,
            reason,
        });
    }

    /// Ends the local side's relation with `peer` for `reason`: closes its connection
    /// gracefully, or drops its held departure, and reports `Disconnected`. Returns whether the
    /// application counted the peer as connected.
    fn remove_peer(&mut self, peer: PeerId, reason: DisconnectReason) -> bool {
        let removed = self.shared.peers.write().remove(&peer);
        let was_connected = match &removed {
            Some(socket) => {
                socket.close_gracefully(reason.clone());
                true
            }
            None => self.held_departures.release(peer),
        };
        if was_connected {
            self.emit(NetworkEvent::Disconnected { peer, reason });
        }
        was_connected
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
        self.last_dial_seq = next_dial_seq(self.last_dial_seq, unix_micros());
        let _ = socket.dial_seq.set(self.last_dial_seq);
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

    fn dial_due(&mut self) {
        let now = std::time::Instant::now();
        let dials = {
            let peers = self.shared.peers.read();
            self.redial.due(now, |p| peers.contains_key(&p))
        };
        for dial in dials {
            if let Some(peer) = dial.expected {
                if let Some(until) = self.bans.peer_banned_until(&peer, now) {
                    self.redial.postpone(dial, until);
                    continue;
                }
            }
            tracing::debug!(addr = %dial.addr, peer = ?dial.expected, "dialing");
            let id = self.spawn_outbound(dial.addr, dial.expected, None);
            if self.redial.started(dial, id) {
                self.shared.counters.reconnects.inc();
            }
        }
    }

    fn spawn_inbound(&mut self, accepted: Accepted) {
        let ip = accepted.addr.ip();
        if self.bans.ip_banned(&ip, std::time::Instant::now()) {
            self.shared.counters.inbound_refused("banned_ip");
            return;
        }
        let from_ip = self
            .shared
            .connections
            .read()
            .values()
            .filter(|s| s.direction == Direction::Inbound && s.addr.ip() == ip)
            .count();
        if from_ip >= self.ctx.config.max_inbound_per_ip {
            self.shared.counters.inbound_refused("per_ip");
            tracing::debug!(%ip, "inbound connection refused: per-IP limit");
            return; // dropping the stream closes it; dropping the slot frees it
        }
        if !self.handshake_allowed(ip) {
            self.shared.counters.inbound_refused("handshake_rate");
            tracing::debug!(%ip, "inbound connection refused: per-IP handshake rate");
            return;
        }
        let socket = self.new_socket(Direction::Inbound, accepted.addr);
        self.shared.counters.inbound_accepted.inc();
        let task = SocketTask {
            shared: socket,
            ctx: self.ctx.clone(),
            to_network: self.socket_events_tx.clone(),
            slots: self.slots.clone(),
            expected_peer: None,
            _slot: Some(accepted.slot),
        };
        self.tracker.spawn(task.run(Some(accepted.stream)));
    }

    /// Takes a token from `ip`'s handshake bucket. The map is bounded: when full, buckets idle
    /// for longer than it takes them to refill (one second) are forgotten, then, if still full,
    /// the new IP shares the fate of being refused until room appears.
    fn handshake_allowed(&mut self, ip: std::net::IpAddr) -> bool {
        let rate = self.ctx.config.max_handshakes_per_ip_per_sec;
        if rate == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        if !self.handshake_rates.contains_key(&ip) && self.handshake_rates.len() >= MAX_RATE_BUCKETS
        {
            self.handshake_rates
                .retain(|_, (_, used)| now.duration_since(*used).as_secs() < 1);
            if self.handshake_rates.len() >= MAX_RATE_BUCKETS {
                return false;
            }
        }
        let (bucket, used) = self
            .handshake_rates
            .entry(ip)
            .or_insert_with(|| (TokenBucket::new(rate, rate, now), now));
        *used = now;
        bucket.try_take(1, now)
    }

    fn socket_event(&mut self, event: SocketEvent, shutting_down: bool) {
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
                    self.admit(&shared, peer)
                };
                if matches!(
                    admission,
                    Admission::Open | Admission::Close(DisconnectReason::Duplicate)
                ) {
                    self.redial.dial_succeeded(shared.id);
                }
                if let Some(waiter) = self.pending.remove(&shared.id) {
                    let _ = waiter.send(match &admission {
                        Admission::Open | Admission::Close(DisconnectReason::Duplicate) => {
                            // A duplicate lost the tie-break: the peer is connected through the
                            // other connection, which is what the caller asked for.
                            Ok(peer)
                        }
                        Admission::Close(DisconnectReason::Shutdown) => Err(NetworkError::Closed),
                        Admission::Close(reason) => Err(NetworkError::ConnectionClosed {
                            addr: shared.addr,
                            reason: reason.clone(),
                        }),
                    });
                }
                let streams = Streams {
                    reliable: self.shared.reliable.get(&peer).cloned(),
                    recv: self.recv_state(peer),
                };
                // The socket may have been cancelled meanwhile; then it closes on its own.
                let _ = reply.send((admission, streams));
            }
            SocketEvent::Closed {
                shared,
                reason,
                error,
            } => {
                self.shared.connections.write().remove(&shared.id);
                let now = std::time::Instant::now();
                if !shutting_down {
                    self.redial.dial_closed(shared.id, now, jitter_sample());
                }
                if let Some(NetworkError::Handshake { source, .. }) = &error {
                    self.shared.counters.handshake_failed(source.label());
                }
                if let Some(waiter) = self.pending.remove(&shared.id) {
                    let _ = waiter.send(Err(error.unwrap_or(NetworkError::ConnectionClosed {
                        addr: shared.addr,
                        reason: reason.clone(),
                    })));
                }
                let Some(peer) = shared.peer.get().copied() else {
                    return;
                };
                let mut peers = self.shared.peers.write();
                if peers.get(&peer).is_some_and(|s| s.id == shared.id) {
                    peers.remove(&peer);
                    drop(peers);
                    if !shutting_down && self.held_departures.hold(peer, &reason, now) {
                        tracing::debug!(%peer, "connection replaced by the remote; awaiting the other");
                    } else {
                        tracing::debug!(%peer, %reason, "peer disconnected");
                        self.emit(NetworkEvent::Disconnected {
                            peer,
                            reason: reason.clone(),
                        });
                    }
                    if !shutting_down {
                        self.redial.peer_lost(peer, now, jitter_sample());
                    }
                } else {
                    drop(peers);
                }
                if let (DisconnectReason::WriteStalled, false) = (&reason, shutting_down) {
                    self.shared.counters.stalled_disconnects.inc();
                    let ip = shared.addr.ip();
                    // Persistent peers are the operator's own choice: they are cut and redialed,
                    // never banned for stalling.
                    if !self.redial.is_persistent(peer) && self.stalls.record(ip, now) {
                        let stalls = self.ctx.config.max_stalls_per_ip;
                        tracing::info!(%peer, %ip, stalls, "banning a peer whose IP keeps stalling");
                        self.ban(
                            peer,
                            Some(ip),
                            self.ctx.config.ban_duration,
                            BanReason::Stalled { stalls },
                        );
                    }
                }
                if let (DisconnectReason::Misbehaviour { score }, false) = (&reason, shutting_down)
                {
                    let duration = self.ctx.config.ban_duration;
                    self.ban(
                        peer,
                        Some(shared.addr.ip()),
                        duration,
                        BanReason::Misbehaviour { score: *score },
                    );
                }
            }
        }
    }

    /// The receive position for `peer`'s reliable stream, created on first contact. Bounded:
    /// when full, positions of peers that are not connected now are forgotten (such a peer's
    /// next connection starts its stream afresh).
    fn recv_state(&mut self, peer: PeerId) -> Arc<parking_lot::Mutex<Vec<RecvSeq>>> {
        if !self.recv_states.contains_key(&peer) && self.recv_states.len() >= MAX_RECV_STATES {
            let peers = self.shared.peers.read();
            self.recv_states
                .retain(|p, _| peers.contains_key(p) || self.redial.is_persistent(*p));
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

    /// Decides whether `socket`, just proven to be `peer`, becomes the peer's connection.
    fn admit(&mut self, socket: &Arc<SocketShared>, peer: PeerId) -> Admission {
        if self.bans.peer_banned(&peer, std::time::Instant::now()) {
            return Admission::Close(DisconnectReason::Banned);
        }
        let persistent = self.redial.is_persistent(peer);
        let mut peers = self.shared.peers.write();
        if socket.direction == Direction::Inbound && !persistent && !peers.contains_key(&peer) {
            let open_inbound = peers
                .iter()
                .filter(|(id, s)| {
                    s.direction == Direction::Inbound && !self.redial.is_persistent(**id)
                })
                .count();
            if open_inbound >= self.ctx.config.max_inbound {
                self.shared.counters.inbound_refused("max_inbound");
                return Admission::Close(DisconnectReason::InboundLimit);
            }
        }
        let replaced = match peers.get(&peer) {
            None => None,
            Some(existing) => {
                if !keep_new_connection(
                    self.shared.local_id,
                    peer,
                    existing.tiebreak_candidate(),
                    socket.tiebreak_candidate(),
                ) {
                    return Admission::Close(DisconnectReason::Duplicate);
                }
                Some(existing.clone())
            }
        };
        peers.insert(peer, socket.clone());
        drop(peers);
        match replaced {
            Some(old) => old.close_gracefully(DisconnectReason::Duplicate),
            // The replacement of a connection the remote closed as a duplicate: the application
            // never heard the peer leave.
            None if self.held_departures.release(peer) => {
                tracing::debug!(%peer, addr = %socket.addr, "peer connected again (replacement)");
            }
            None => {
                tracing::debug!(%peer, addr = %socket.addr, "peer connected");
                self.emit(NetworkEvent::Connected {
                    peer,
                    addr: socket.addr,
                    direction: socket.direction,
                });
            }
        }
        Admission::Open
    }

    fn emit(&self, event: NetworkEvent) {
        // No subscriber is normal; a lagging subscriber is told how many it missed.
        let _ = self.shared.events.send(event);
    }

    /// Stop accepting, say goodbye to every peer, flush within `shutdown_timeout`, then cut what
    /// is left and join every task.
    async fn shutdown(&mut self, waiters: &mut Vec<oneshot::Sender<()>>) {
        self.listener_cancel.cancel();
        let _ = (&mut self.listener).await;
        self.accepted.close();
        while let Ok(accepted) = self.accepted.try_recv() {
            drop(accepted); // closes the stream before any handshake
        }
        let sockets: Vec<_> = self.shared.connections.read().values().cloned().collect();
        for socket in sockets {
            if matches!(socket.state.get(), SocketState::Open | SocketState::Closing) {
                socket.close_gracefully(DisconnectReason::Shutdown);
            } else {
                socket.cancel.cancel();
            }
        }
        let peers: Vec<_> = self.shared.peers.write().drain().map(|(p, _)| p).collect();
        for peer in peers {
            self.emit(NetworkEvent::Disconnected {
                peer,
                reason: DisconnectReason::Shutdown,
            });
        }
        // The application still counts these peers as connected: they leave with everyone else.
        for (peer, _) in self.held_departures.drain() {
            self.emit(NetworkEvent::Disconnected {
                peer,
                reason: DisconnectReason::Shutdown,
            });
        }
        // Senders waiting for a persistent peer's streams to make room stop waiting.
        for reliable in self.shared.reliable.values() {
            reliable.wake_all();
        }
        self.tracker.close();
        let deadline = tokio::time::Instant::now() + self.ctx.config.shutdown_timeout;
        let mut cut = false;
        loop {
            tokio::select! {
                () = self.tracker.wait() => break,
                Some(event) = self.socket_events.recv() => self.socket_event(event, true),
                command = self.commands.recv(), if !self.commands.is_closed() => match command {
                    Some(Command::Shutdown { reply }) => waiters.push(reply),
                    Some(Command::Connect { reply, .. }) => { let _ = reply.send(Err(NetworkError::Closed)); }
                    Some(Command::Disconnect { reply, .. }) => { let _ = reply.send(false); }
                    Some(Command::Unban { reply, .. }) => { let _ = reply.send(false); }
                    Some(Command::Ban { reply, .. }) => { let _ = reply.send(()); }
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
            let _ = waiter.send(Err(NetworkError::Closed));
        }
    }
}

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
