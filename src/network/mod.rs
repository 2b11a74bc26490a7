//! The network: a cheap, cloneable [`Network`] handle in front of an actor that owns the listener
//! and every connection.
//!
//! Sending does not go through the actor: the handle encodes the message on the caller's thread,
//! looks the peer up in a read-locked map and pushes into that peer's bounded queue. Connecting,
//! disconnecting and shutdown are commands to the actor.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::encode_message;
use crate::config::Config;
use crate::driver::inbox::{self, Inbox};
use crate::driver::link::{SocketContext, SocketShared};
use crate::driver::listener;
use crate::driver::node::{self, Command, NetworkActor};
use crate::driver::queue::PushError;
use crate::driver::shared::{Counters, NetworkStats, Shared};
use crate::driver::stream::Reliable;
use crate::error::NetworkError;
use crate::identity::{Keypair, PeerId};
use crate::peers::{NetworkEvent, backoff, bans, departures, redial};
use crate::session::ConnectionInfo;

/// Capacity of the command channel from handles to the actor.
const COMMAND_CAPACITY: usize = 256;
/// Capacity of the channel from socket tasks to the actor.
const SOCKET_EVENT_CAPACITY: usize = 1024;
/// Capacity of the channel from the listener to the actor.
const ACCEPT_CAPACITY: usize = 64;

/// Why a non-blocking push was refused (kept small: it travels with the refused message).
#[derive(Debug, Clone, Copy)]
enum SendRefusal {
    Full,
    NotConnected,
}

/// The outcome of a broadcast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastReport {
    /// Peers the message was queued to.
    pub queued: usize,
    /// Peers skipped because their send queue was full (`try_broadcast` only; counted in
    /// [`NetworkStats::broadcast_skipped_full`] and in each peer's `dropped_queue_full`).
    pub skipped_full: usize,
    /// Peers that disconnected while the broadcast waited for room (`broadcast` only).
    pub disconnected: usize,
}

/// A handle to a running peer-to-peer network node.
///
/// Cheap to clone, `Send + Sync`; all clones drive the same node. When the last handle is dropped
/// the node shuts down gracefully, as with [`Network::shutdown`].
///
/// `M` is the application's message type: anything `serde` can serialize, for example an enum of
/// consensus messages, or [`bytes::Bytes`] for raw payloads. It must not be recursive (a type
/// containing itself through `Box` or `Vec`) unless its own `Deserialize` bounds the depth: the
/// decoder has no nesting limit, so a peer could otherwise overflow a task's stack.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), peerwire::NetworkError> {
/// use peerwire::{Config, Keypair, Network};
/// let config = Config::default().network_id("doc");
/// let (a, _a_inbox) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
/// let (b, mut b_inbox) = Network::<String>::start(config, Keypair::generate()).await?;
/// let b_id = a.connect(b.local_addr()).await?;
/// assert_eq!(b_id, b.local_peer_id());
/// a.send(b_id, &"hello".to_string()).await?;
/// let (from, text) = b_inbox.recv().await.unwrap();
/// assert_eq!((from, text.as_str()), (a.local_peer_id(), "hello"));
/// a.shutdown().await;
/// b.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Network<M> {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    _message: PhantomData<fn(M) -> M>,
}

impl<M> Clone for Network<M> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Network<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("local_peer_id", &self.shared.local_id)
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Binds the listen address and starts the node. Returns the handle and the inbox on which
    /// every application message arrives as `(sender, message)`.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`NetworkError::InvalidConfig`] or [`NetworkError::Bind`].
    pub async fn start(config: Config, keypair: Keypair) -> Result<(Self, Inbox<M>), NetworkError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NetworkError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| NetworkError::Bind {
            addr: config.listen,
            source,
        })?;
        let (events, _) = broadcast::channel(config.event_capacity);
        // Tells this process's reliable streams apart from those of an earlier run.
        let incarnation = backoff::jitter_sample();
        let reliable = config
            .persistent_peers
            .iter()
            .map(|p| {
                let stream = Reliable::new(
                    incarnation,
                    config.offline_queue_capacity,
                    config.offline_queue_bytes,
                );
                (p.id, Arc::new(stream))
            })
            .collect();
        let shared = Arc::new(Shared {
            local_id: keypair.peer_id(),
            local_addr,
            max_message_size: config.max_message_size,
            peers: Default::default(),
            connections: Default::default(),
            events,
            counters: Counters::default(),
            reliable,
            actor: Default::default(),
        });
        let (inbox_tx, inbox) = inbox::inbox(config.inbox_capacity, config.inbox_bytes);
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
            inbound_slots,
            accepted_tx,
            listener_cancel.clone(),
        ));
        let ctx = Arc::new(SocketContext {
            advertised_addr: config.advertised_addr.unwrap_or(local_addr),
            handshakes: Arc::new(Semaphore::new(config.max_concurrent_handshakes)),
            keypair,
            config: config.clone(),
        });
        let actor = NetworkActor {
            shared: shared.clone(),
            ctx,
            commands,
            accepted,
            socket_events,
            socket_events_tx,
            inbox: inbox_tx,
            outbound_slots: Arc::new(Semaphore::new(config.max_outbound)),
            root,
            listener_cancel,
            listener,
            tracker: TaskTracker::new(),
            next_id: 0,
            pending: Default::default(),
            bans: bans::Bans::new(),
            recv_states: Default::default(),
            handshake_rates: Default::default(),
            last_dial_seq: 0,
            held_departures: departures::HeldDepartures::new(
                config.handshake_timeout,
                node::MAX_HELD_DEPARTURES,
            ),
            redial: redial::Redialer::new(
                config.persistent_peers.iter().map(|p| (p.addr, p.id)),
                config.bootstrap.iter().copied(),
                config.backoff,
                std::time::Instant::now(),
            ),
        };
        *shared.actor.lock() = Some(tokio::spawn(actor.run()));
        Ok((
            Self {
                commands: commands_tx,
                shared,
                _message: PhantomData,
            },
            inbox,
        ))
    }
}

impl<M: Serialize> Network<M> {
    /// This node's proven identity.
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_id
    }

    /// The address the listener is bound to (with the real port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NetworkError::Closed)?;
        rx.await.map_err(|_| NetworkError::Closed)
    }

    /// Dials `addr`, runs the handshake, and returns the proven id of whoever answered once the
    /// connection is open (or once the peer is connected through a concurrent connection that
    /// won the duplicate tie-break).
    ///
    /// # Errors
    /// Dial, timeout, handshake and limit errors; [`NetworkError::Closed`] after shutdown.
    ///
    /// The remote registers the connection when its own side of the handshake completes, which
    /// can be a moment after this returns; watch its `events()` or `is_connected` if it must
    /// send first.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the dial; the connection may still open.
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerId, NetworkError> {
        self.request(|reply| Command::Connect {
            addr,
            expected: None,
            reply,
        })
        .await?
    }

    /// Like [`Network::connect`], but the remote must prove `expected`; otherwise the handshake
    /// fails with [`crate::handshake::HandshakeError::PeerMismatch`].
    ///
    /// # Errors
    /// As [`Network::connect`].
    ///
    /// # Cancel safety
    /// As [`Network::connect`].
    pub async fn connect_to(
        &self,
        addr: SocketAddr,
        expected: PeerId,
    ) -> Result<PeerId, NetworkError> {
        self.request(|reply| Command::Connect {
            addr,
            expected: Some(expected),
            reply,
        })
        .await?
    }

    /// Closes the connection to `peer` gracefully (queued messages are flushed first). Returns
    /// whether the peer was connected.
    pub async fn disconnect(&self, peer: PeerId) -> bool {
        self.request(|reply| Command::Disconnect { peer, reply })
            .await
            .unwrap_or(false)
    }

    /// Bans `peer` for `duration` (for example after it equivocated): closes its connection,
    /// emits [`NetworkEvent::Banned`], and refuses it until the ban expires. Persistent peers
    /// are banned too (and redialed only after the ban).
    ///
    /// # Errors
    /// [`NetworkError::Closed`] after shutdown.
    pub async fn ban(
        &self,
        peer: PeerId,
        duration: std::time::Duration,
    ) -> Result<(), NetworkError> {
        self.request(|reply| Command::Ban {
            peer,
            duration,
            reply,
        })
        .await
    }

    /// Lifts a peer's ban; returns whether it was banned.
    pub async fn unban(&self, peer: PeerId) -> bool {
        self.request(|reply| Command::Unban { peer, reply })
            .await
            .unwrap_or(false)
    }

    /// Shuts the node down: stop accepting, say goodbye to every peer, flush queued messages for
    /// up to `shutdown_timeout`, close every connection and join every task. Afterwards the inbox
    /// yields the messages already received, then `None`. Calling it again returns at once.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
        let actor = self.shared.actor.lock().take();
        if let Some(actor) = actor {
            let _ = actor.await;
        }
    }

    /// Pushes without waiting, under the peer map's read lock (no reference counting on the
    /// hot path). A refused message is handed back.
    fn try_push(&self, peer: PeerId, message: Bytes) -> Result<(), (SendRefusal, Bytes)> {
        if let Some(reliable) = self.shared.reliable.get(&peer) {
            // A persistent peer: accepted whether or not it is connected now.
            return reliable
                .push(message)
                .map_err(|message| (SendRefusal::Full, message));
        }
        let peers = self.shared.peers.read();
        let Some(link) = peers.get(&peer) else {
            return Err((SendRefusal::NotConnected, message));
        };
        link.queue.try_push(message).map_err(|(error, message)| {
            let refusal = match error {
                PushError::Full => SendRefusal::Full,
                PushError::Closed => SendRefusal::NotConnected,
            };
            (refusal, message)
        })
    }

    /// A `try_*` send: refusal for a full queue is a drop, counted on the peer.
    fn try_push_counted(&self, peer: PeerId, message: Bytes) -> Result<(), NetworkError> {
        self.try_push(peer, message)
            .map_err(|(refusal, _)| match refusal {
                SendRefusal::Full => {
                    match self.shared.peers.read().get(&peer) {
                        Some(link) => {
                            link.stats.dropped_queue_full.fetch_add(1, Relaxed);
                        }
                        None => self.shared.counters.offline_full.inc(),
                    }
                    NetworkError::Full(peer)
                }
                SendRefusal::NotConnected => NetworkError::NotConnected(peer),
            })
    }

    /// Pushes, waiting for room if the peer's queue is full.
    async fn push(&self, peer: PeerId, message: Bytes) -> Result<(), NetworkError> {
        let message = match self.try_push(peer, message) {
            Ok(()) => return Ok(()),
            Err((SendRefusal::NotConnected, _)) => return Err(NetworkError::NotConnected(peer)),
            Err((SendRefusal::Full, message)) => message,
        };
        if let Some(reliable) = self.shared.reliable.get(&peer) {
            reliable.push_wait(message).await;
            return Ok(());
        }
        // Full: wait for room outside the lock.
        let link = self
            .shared
            .peers
            .read()
            .get(&peer)
            .cloned()
            .ok_or(NetworkError::NotConnected(peer))?;
        link.queue
            .push(message)
            .await
            .map_err(|_| NetworkError::NotConnected(peer))
    }

    /// Encodes a message once, for sending to many peers with the `*_encoded` methods.
    ///
    /// # Errors
    /// [`NetworkError::Codec`] when it cannot be encoded or exceeds `max_message_size`.
    pub fn encode(&self, message: &M) -> Result<Encoded, NetworkError> {
        Ok(Encoded(encode_message(
            message,
            self.shared.max_message_size,
        )?))
    }

    /// Queues `message` to `peer`, waiting while the peer's queue is full.
    ///
    /// # Errors
    /// [`NetworkError::NotConnected`] (also if the peer disconnects while waiting),
    /// [`NetworkError::Codec`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before completing, the message was not queued.
    pub async fn send(&self, peer: PeerId, message: &M) -> Result<(), NetworkError> {
        let encoded = encode_message(message, self.shared.max_message_size)?;
        self.push(peer, encoded).await
    }

    /// [`Network::send`] for an already encoded message.
    ///
    /// # Errors
    /// As [`Network::send`].
    ///
    /// # Cancel safety
    /// As [`Network::send`].
    pub async fn send_encoded(&self, peer: PeerId, message: &Encoded) -> Result<(), NetworkError> {
        self.push(peer, message.0.clone()).await
    }

    /// Queues `message` to `peer` without ever waiting.
    ///
    /// # Errors
    /// [`NetworkError::Full`] when the peer's queue is full (counted as `dropped_queue_full`),
    /// [`NetworkError::NotConnected`], [`NetworkError::Codec`].
    pub fn try_send(&self, peer: PeerId, message: &M) -> Result<(), NetworkError> {
        let encoded = encode_message(message, self.shared.max_message_size)?;
        self.try_push_counted(peer, encoded)
    }

    /// [`Network::try_send`] for an already encoded message.
    ///
    /// # Errors
    /// As [`Network::try_send`].
    pub fn try_send_encoded(&self, peer: PeerId, message: &Encoded) -> Result<(), NetworkError> {
        self.try_push_counted(peer, message.0.clone())
    }

    fn open_links(&self) -> Vec<Arc<SocketShared>> {
        self.shared.peers.read().values().cloned().collect()
    }

    /// Open connections of peers that are not persistent (persistent peers' messages go through
    /// their reliable stream, connected or not).
    fn plain_links(&self) -> Vec<Arc<SocketShared>> {
        self.shared
            .peers
            .read()
            .iter()
            .filter(|(id, _)| !self.shared.reliable.contains_key(id))
            .map(|(_, link)| link.clone())
            .collect()
    }

    /// Encodes `message` once and queues it to every connected peer and every persistent peer
    /// (those away get it when they are back), without waiting: a peer whose queue is full is
    /// skipped and counted, so one slow peer never delays the others or the caller.
    ///
    /// # Errors
    /// [`NetworkError::Codec`].
    pub fn try_broadcast(&self, message: &M) -> Result<BroadcastReport, NetworkError> {
        Ok(self.try_broadcast_encoded(&self.encode(message)?))
    }

    /// [`Network::try_broadcast`] for an already encoded message.
    pub fn try_broadcast_encoded(&self, message: &Encoded) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        let skip = |report: &mut BroadcastReport| {
            self.shared.counters.broadcast_skipped_full.inc();
            report.skipped_full += 1;
        };
        for reliable in self.shared.reliable.values() {
            match reliable.push(message.0.clone()) {
                Ok(()) => report.queued += 1,
                Err(_) => skip(&mut report),
            }
        }
        for link in self.plain_links() {
            match link.queue.try_push(message.0.clone()) {
                Ok(()) => report.queued += 1,
                Err((PushError::Full, _)) => {
                    link.stats.dropped_queue_full.fetch_add(1, Relaxed);
                    skip(&mut report);
                }
                Err((PushError::Closed, _)) => {}
            }
        }
        report
    }

    /// Encodes `message` once and queues it to every connected peer and every persistent peer.
    /// Peers with room get it at once; for connected peers whose queue is full it then waits for
    /// room (a persistent peer that is away and full is skipped and counted instead). A peer
    /// that stops reading is disconnected after `write_timeout`, which ends the wait for it, so
    /// the call completes within about `write_timeout`. Other peers' delivery is never delayed
    /// by the wait.
    ///
    /// # Errors
    /// [`NetworkError::Codec`].
    ///
    /// # Cancel safety
    /// Not cancel safe: if dropped while waiting, the message has been queued to some peers only.
    pub async fn broadcast(&self, message: &M) -> Result<BroadcastReport, NetworkError> {
        let encoded = self.encode(message)?;
        let mut report = BroadcastReport::default();
        let mut waiting_reliable = Vec::new();
        for (peer, reliable) in &self.shared.reliable {
            match reliable.push(encoded.0.clone()) {
                Ok(()) => report.queued += 1,
                Err(_) if self.is_connected(*peer) => waiting_reliable.push(reliable.clone()),
                Err(_) => {
                    self.shared.counters.broadcast_skipped_full.inc();
                    report.skipped_full += 1;
                }
            }
        }
        let mut waiting = Vec::new();
        for link in self.plain_links() {
            match link.queue.try_push(encoded.0.clone()) {
                Ok(()) => report.queued += 1,
                Err((PushError::Full, _)) => waiting.push(link),
                Err((PushError::Closed, _)) => {}
            }
        }
        for link in waiting {
            match link.queue.push(encoded.0.clone()).await {
                Ok(()) => report.queued += 1,
                Err(_) => report.disconnected += 1,
            }
        }
        for reliable in waiting_reliable {
            reliable.push_wait(encoded.0.clone()).await;
            report.queued += 1;
        }
        Ok(report)
    }

    /// For a persistent peer: messages (and bytes) accepted and not yet acknowledged by it,
    /// whether sent or waiting for it to come back. `None` for other peers.
    pub fn pending(&self, peer: PeerId) -> Option<(usize, usize)> {
        self.shared
            .reliable
            .get(&peer)
            .map(|r| r.buffer.lock().depth())
    }

    /// The peers with an open connection, with address, direction, state and counters.
    pub fn peers(&self) -> Vec<ConnectionInfo> {
        self.open_links().iter().map(|s| s.info()).collect()
    }

    /// Every connection in any state (dialing, handshaking, open, closing).
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let sockets: Vec<_> = self.shared.connections.read().values().cloned().collect();
        sockets.iter().map(|s| s.info()).collect()
    }

    /// Whether `peer` has an open connection now.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.shared.peers.read().contains_key(&peer)
    }

    /// Subscribes to connection events from now on. Each subscriber buffers up to
    /// `event_capacity` events; one that falls behind loses the oldest and its next `recv`
    /// reports how many it missed (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<NetworkEvent> {
        self.shared.events.subscribe()
    }

    /// Node-wide counters.
    pub fn stats(&self) -> NetworkStats {
        self.shared.stats()
    }

    /// Node-wide and per-peer counters as Prometheus text.
    pub fn metrics_text(&self) -> String {
        crate::metrics::prometheus_text(&self.stats(), &self.peers())
    }
}

/// A message encoded once, to be queued to one or many peers without encoding again.
#[derive(Debug, Clone)]
pub struct Encoded(Bytes);

impl Encoded {
    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the encoding is empty (a unit-like message).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn handles_are_send_sync_static() {
        assert_send_sync::<Network<bytes::Bytes>>();
        assert_send_sync::<Inbox<bytes::Bytes>>();
        assert_send_sync::<NetworkEvent>();
    }
}
