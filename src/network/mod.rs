//! The network: a cheap, cloneable [`Network`] handle in front of an actor that owns the listener
//! and every connection.
//!
//! Sending does not go through the actor: the handle encodes the message on the caller's thread,
//! looks the peer up in a read-locked map and pushes into that peer's bounded queue. Connecting,
//! disconnecting and shutdown are commands to the actor.

mod channel;
mod persistent;
mod send;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::codec::CodecError;
use crate::codec::encode_body;
use crate::config::Config;
use crate::driver::inbox::{Handler, Inbox, Slot};
use crate::driver::link::SocketContext;
use crate::driver::node::{Command, NetworkActor};
use crate::driver::queue::LaneSpec;
use crate::driver::shared::{Counters, NetworkStats, Shared};
use crate::driver::stream::{Persistence, StreamMaker};
use crate::error::{ChannelError, ConnectError, SendError, ShutDown, StartError};
use crate::identity::{Keypair, PeerId};
use crate::peers::{NetworkEvent, backoff};
use crate::session::{ChannelId, ConnectionInfo};
pub use channel::Channel;
use send::Route;
pub use send::{BroadcastReport, Skipped};

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
    /// [`StartError::InvalidConfig`] or [`StartError::Bind`].
    pub async fn start(config: Config, keypair: Keypair) -> Result<(Self, Inbox<M>), StartError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let store = match &config.data_dir {
            Some(dir) => Some(Arc::new(crate::store::Store::open(dir)?)),
            None => None,
        };
        // Persistent peers added at runtime by an earlier run come back; the Config's own
        // settings win for a peer in both.
        let mut config = config;
        if let Some(store) = &store {
            for (id, addr, durable) in store.load_persistent()? {
                if id != keypair.peer_id() && !config.persistent_peers.iter().any(|p| p.id == id) {
                    config.persistent_peers.push(crate::config::PersistentPeer {
                        addr,
                        id,
                        durable,
                    });
                }
            }
        }
        // Kept until the application's first `events()`: persistent peers are dialed as the node
        // starts, and their `Connected` must not be gone before anyone could subscribe.
        let (events, first_events) = broadcast::channel(config.event_capacity);
        // Tells this process's reliable streams apart from those of an earlier run.
        let incarnation = backoff::jitter_sample();
        let channels = config.channel_table();
        let lanes: Vec<LaneSpec> = channels
            .iter()
            .map(|(channel, spec)| LaneSpec {
                channel,
                capacity: spec.send_queue_capacity,
                max_bytes: spec.send_queue_bytes,
                weight: spec.priority.weight(),
            })
            .collect();
        // The offline bounds apply per channel stream of each persistent peer.
        let stream_bounds: Vec<_> = lanes
            .iter()
            .map(|l| {
                (
                    config.offline_queue_capacity,
                    config.offline_queue_bytes,
                    l.weight,
                )
            })
            .collect();
        // Durable peers' streams come back from the data directory with the incarnation they
        // had, so the peer tells a resend from new messages; the others start afresh.
        let maker = Arc::new(StreamMaker::new(incarnation, stream_bounds, store.clone()));
        let mut reliable = crate::identity::PeerMap::default();
        let mut persistent = crate::identity::PeerMap::default();
        for peer in &config.persistent_peers {
            reliable.insert(peer.id, maker.make(peer.id, peer.durable)?);
            persistent.insert(peer.id, *peer);
        }
        // Channel 0's type is known now: it is open before any connection exists.
        let default = channels.spec(0);
        let (default_slot, inbox) = Slot::opened::<M>(default.inbox_capacity, default.inbox_bytes);
        let slots: Arc<[Slot]> = std::iter::once(default_slot)
            .chain(
                channels
                    .iter()
                    .skip(1)
                    .map(|(_, spec)| Slot::new(spec.inbox_capacity, spec.inbox_bytes)),
            )
            .collect();
        let shared = Arc::new(Shared {
            local_id: keypair.peer_id(),
            local_addr,
            channels: channels.clone(),
            slots: Arc::downgrade(&slots),
            send_wait: config.send_wait,
            ban_duration: config.ban_duration,
            keypair: keypair.clone(),
            advertised_addr: config.advertised_addr.unwrap_or(local_addr),
            peers: Default::default(),
            between: Default::default(),
            settled: tokio::sync::Notify::new(),
            connections: Default::default(),
            events,
            first_events: parking_lot::Mutex::new(Some(first_events)),
            counters: Counters::default(),
            reliable: parking_lot::RwLock::new(reliable),
            persistence: tokio::sync::Mutex::new(Persistence {
                peers: persistent,
                maker,
            }),
            actor: Default::default(),
            reassembly: crate::codec::record::ReassemblyBudget::new(config.max_reassembly_bytes),
            store,
        });
        let ctx = Arc::new(SocketContext {
            ip_budgets: Default::default(),
            reassembly: shared.reassembly.clone(),
            advertised_addr: config.advertised_addr.unwrap_or(local_addr),
            handshakes: Arc::new(Semaphore::new(config.max_concurrent_handshakes)),
            keypair,
            channels,
            lanes,
            config: config.clone(),
        });
        let commands_tx = NetworkActor::spawn(ctx, shared.clone(), listener, slots);
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

/// What a protocol above the face may use of the node besides its channels: the peers'
/// standing, the events, and a ban for a peer that breaks the protocol. Holds the actor's
/// command queue weakly, so a protocol task never keeps a dropped node alive.
#[derive(Debug, Clone)]
pub(crate) struct ProtocolFace {
    commands: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
}

impl ProtocolFace {
    /// This node's id.
    pub(crate) fn local_peer_id(&self) -> PeerId {
        self.shared.local_id
    }

    /// Signs `message` with this node's key.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.shared.keypair.sign(message)
    }

    /// Connected peers now.
    pub(crate) fn connected(&self) -> Vec<PeerId> {
        self.shared.peers.read().keys().copied().collect()
    }

    /// Connected peers whose connection this node dialed: the ones a flood of inbound
    /// connections cannot make up.
    pub(crate) fn outbound(&self) -> usize {
        self.shared
            .peers
            .read()
            .values()
            .filter(|s| s.direction == crate::session::Direction::Outbound)
            .count()
    }

    /// Whether `peer` is a persistent peer (its messages survive cuts and restarts).
    pub(crate) fn is_persistent(&self, peer: PeerId) -> bool {
        self.shared.reliable.read().contains_key(&peer)
    }

    /// Whether `peer` has an open connection now.
    pub(crate) fn is_connected(&self, peer: PeerId) -> bool {
        self.shared.peers.read().contains_key(&peer)
    }

    /// Subscribes to the node's events.
    pub(crate) fn events(&self) -> broadcast::Receiver<NetworkEvent> {
        self.shared.events.subscribe()
    }

    /// This node's signed record: its id and the address peers dial it at. `None` cannot
    /// happen (one address, no name: within every bound), but is not worth a panic.
    pub(crate) fn own_record(&self) -> Option<crate::peers::record::PeerRecord> {
        let addr = self.shared.advertised_addr;
        crate::peers::record::PeerRecord::sign(&self.shared.keypair, vec![addr], 1, None, None).ok()
    }

    /// This node's record with a name, a state hash and a sequence number.
    ///
    /// # Errors
    /// A name longer than the record allows.
    pub(crate) fn signed_record(
        &self,
        seq: u64,
        name: Option<String>,
        state_hash: Option<[u8; 32]>,
    ) -> Result<crate::peers::record::PeerRecord, crate::peers::record::RecordError> {
        let addr = self.shared.advertised_addr;
        crate::peers::record::PeerRecord::sign(
            &self.shared.keypair,
            vec![addr],
            seq,
            name,
            state_hash,
        )
    }

    /// The data directory's database, if the node has one.
    pub(crate) fn store(&self) -> Option<Arc<crate::store::Store>> {
        self.shared.store.clone()
    }

    /// The address of `peer`'s open connection.
    pub(crate) fn peer_addr(&self, peer: PeerId) -> Option<SocketAddr> {
        self.shared
            .peers
            .read()
            .get(&peer)
            .map(|socket| socket.addr)
    }

    /// Dials `addr`, which must prove to be `expected`.
    pub(crate) async fn dial(
        &self,
        addr: SocketAddr,
        expected: PeerId,
    ) -> Result<PeerId, ConnectError> {
        let commands = self.commands.upgrade().ok_or(ConnectError::Closed)?;
        let (reply, rx) = oneshot::channel();
        commands
            .send(Command::Connect {
                addr,
                expected: Some(expected),
                reply,
            })
            .await
            .map_err(|_| ConnectError::Closed)?;
        // Dropping the strong sender before waiting: a dial never keeps the node alive.
        drop(commands);
        rx.await.map_err(|_| ConnectError::Closed)?
    }

    /// Bans `peer` for `Config::ban_duration` (reason: the application's request), without
    /// waiting. Returns false when the node is gone or its command queue is full.
    pub(crate) fn ban(&self, peer: PeerId) -> bool {
        let Some(commands) = self.commands.upgrade() else {
            return false;
        };
        // The reply is not awaited: a ban takes effect in the actor's own time.
        let (reply, _) = oneshot::channel();
        commands
            .try_send(Command::Ban {
                peer,
                duration: self.shared.ban_duration,
                reply,
            })
            .is_ok()
    }
}

impl<M> Network<M> {
    /// The handle a protocol above the face keeps (see [`ProtocolFace`]).
    pub(crate) fn protocol_face(&self) -> ProtocolFace {
        ProtocolFace {
            commands: self.commands.downgrade(),
            shared: self.shared.clone(),
        }
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ShutDown> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ShutDown)?;
        rx.await.map_err(|_| ShutDown)
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

    /// Crashes the node, for tests of crash faults inside one process: stops accepting and
    /// drops every connection at once, with no goodbye and no flush, as a killed process would
    /// (peers see the connection end without a goodbye and, for persistent peers, redial and
    /// resend what this node never acknowledged). Everything queued here is lost, as in a
    /// crash. Afterwards the handle behaves as after [`Network::shutdown`]; a node started again
    /// with the same key and address is a restarted process.
    pub async fn abort(&self) {
        let _ = self.request(|reply| Command::Abort { reply }).await;
        let actor = self.shared.actor.lock().take();
        if let Some(actor) = actor {
            let _ = actor.await;
        }
    }
}

impl<M: Serialize + 'static> Network<M> {
    /// The application's entries in the node's data directory (`None` without
    /// [`Config::data_dir`]): small settings that must survive a restart of this node.
    pub fn data(&self) -> Option<crate::store::DataStore> {
        self.shared.store.clone().map(crate::store::DataStore::new)
    }

    /// This node's proven identity.
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_id
    }

    /// The address the listener is bound to (with the real port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Dials `addr`, runs the handshake, and returns the proven id of whoever answered once
    /// both sides have admitted the connection: the remote's welcome has arrived, so the remote
    /// already counts us as connected (its `is_connected` is true, and a `send` from either side
    /// right after this returns is delivered). Also returns when the peer is connected through a
    /// concurrent connection that won the duplicate tie-break.
    ///
    /// # Errors
    /// Dial, timeout, handshake and limit errors; [`ConnectError::ConnectionClosed`] when the
    /// remote refused or closed the connection before welcoming it (the reason says why);
    /// [`ConnectError::Closed`] after shutdown.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the dial; the connection may still open.
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerId, ConnectError> {
        self.request(|reply| Command::Connect {
            addr,
            expected: None,
            reply,
        })
        .await
        .map_err(|_| ConnectError::Closed)?
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
    ) -> Result<PeerId, ConnectError> {
        self.request(|reply| Command::Connect {
            addr,
            expected: Some(expected),
            reply,
        })
        .await
        .map_err(|_| ConnectError::Closed)?
    }

    /// Closes the connection to `peer` gracefully (queued messages are flushed first). Returns
    /// whether the peer was connected.
    ///
    /// # Errors
    /// [`ShutDown`] after shutdown.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, ShutDown> {
        self.request(|reply| Command::Disconnect { peer, reply })
            .await
    }

    /// Bans `peer` for `duration` (for example after it equivocated): closes its connection,
    /// emits [`NetworkEvent::Banned`], and refuses it until the ban expires. Persistent peers
    /// are banned too (and redialed only after the ban).
    ///
    /// # Errors
    /// [`ShutDown`] after shutdown.
    pub async fn ban(&self, peer: PeerId, duration: std::time::Duration) -> Result<(), ShutDown> {
        self.request(|reply| Command::Ban {
            peer,
            duration,
            reply,
        })
        .await
    }

    /// Lifts a peer's ban; returns whether it was banned.
    ///
    /// # Errors
    /// [`ShutDown`] after shutdown.
    pub async fn unban(&self, peer: PeerId) -> Result<bool, ShutDown> {
        self.request(|reply| Command::Unban { peer, reply }).await
    }

    fn route(&self) -> Route<'_> {
        Route {
            shared: &self.shared,
            lane: 0,
        }
    }

    /// Opens channel `id` (declared with [`Config::channel`]) for messages of type `T`: returns
    /// a cheap, cloneable sending handle and the channel's inbox. Messages that arrived on the
    /// channel before this call wait in the inbox, within the channel's bounds, and come first.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), peerwire::NetworkError> {
    /// use peerwire::{ChannelSpec, Config, Keypair, Network};
    /// let config = Config::default()
    ///     .network_id("doc-channels")
    ///     .channel(1, ChannelSpec::critical());
    /// let (a, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
    /// let (b, _) = Network::<String>::start(config, Keypair::generate()).await?;
    /// let (votes, _) = a.channel::<u64>(1)?;
    /// let (_, mut b_votes) = b.channel::<u64>(1)?;
    /// a.connect(b.local_addr()).await?;
    /// votes.send(b.local_peer_id(), &7).await?;
    /// assert_eq!(b_votes.recv().await, Some((a.local_peer_id(), 7)));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ChannelError::UnknownChannel`] if `id` was not declared,
    /// [`ChannelError::ChannelOpen`] if it was opened before (channel 0 is opened by `start`),
    /// [`ChannelError::Closed`] after shutdown.
    pub fn channel<T>(&self, id: ChannelId) -> Result<(Channel<T>, Inbox<T>), ChannelError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let lane = self
            .shared
            .channels
            .index(id)
            .ok_or(ChannelError::UnknownChannel(id))?;
        let slots = self.shared.slots.upgrade().ok_or(ChannelError::Closed)?;
        let inbox = slots[lane]
            .open::<T>()
            .ok_or(ChannelError::ChannelOpen(id))?;
        Ok((Channel::new(self.shared.clone(), lane, id), inbox))
    }

    /// A sending handle for raw bytes on channel `id`, without opening its receiving side (a
    /// protocol opens that with [`Network::open_handler`]).
    pub(crate) fn raw_sender(&self, id: ChannelId) -> Result<Channel<Bytes>, ChannelError> {
        let lane = self
            .shared
            .channels
            .index(id)
            .ok_or(ChannelError::UnknownChannel(id))?;
        Ok(Channel::new(self.shared.clone(), lane, id))
    }

    /// Opens channel `id`'s receiving side for a protocol's [`Handler`], which then gets every
    /// message on the peers' read tasks (its backlog first).
    pub(crate) fn open_handler(
        &self,
        id: ChannelId,
        handler: Arc<dyn Handler>,
    ) -> Result<(), ChannelError> {
        let lane = self
            .shared
            .channels
            .index(id)
            .ok_or(ChannelError::UnknownChannel(id))?;
        let slots = self.shared.slots.upgrade().ok_or(ChannelError::Closed)?;
        if slots[lane].open_handler(handler) {
            Ok(())
        } else {
            Err(ChannelError::ChannelOpen(id))
        }
    }

    /// Encodes a message once, for sending to many peers with the `*_encoded` methods.
    ///
    /// # Errors
    /// [`CodecError`] when it cannot be encoded or exceeds `max_message_size`.
    pub fn encode(&self, message: &M) -> Result<Encoded<M>, CodecError> {
        Encoded::new(message, self.shared.channels.spec(0).max_message_size)
    }

    /// Queues `message` to `peer` on the default channel, waiting at most
    /// [`Config::send_wait`] while the peer's queue is full (and not at all if the peer's queue
    /// is already marked stalled, see `send_wait`).
    ///
    /// # Errors
    /// [`SendError::NotConnected`] (also if the peer disconnects while waiting),
    /// [`SendError::Full`] when the wait ran out (the message was not queued; counted as
    /// `dropped_queue_full`), [`SendError::Codec`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before completing, the message was not queued.
    pub async fn send(&self, peer: PeerId, message: &M) -> Result<(), SendError> {
        let max = self.shared.channels.spec(0).max_message_size;
        match self.route().start_send(peer, encode_body(message, max)?) {
            Ok(()) => Ok(()),
            Err(started) => self.route().finish(peer, started).await,
        }
    }

    /// [`Network::send`] for an already encoded message.
    ///
    /// # Errors
    /// As [`Network::send`].
    ///
    /// # Cancel safety
    /// As [`Network::send`].
    pub async fn send_encoded(&self, peer: PeerId, message: &Encoded<M>) -> Result<(), SendError> {
        self.route().send(peer, message.bytes.clone()).await
    }

    /// Queues `message` to `peer` without ever waiting.
    ///
    /// # Errors
    /// [`SendError::Full`] when the peer's queue is full (counted as `dropped_queue_full`),
    /// [`SendError::NotConnected`], [`SendError::Codec`].
    pub fn try_send(&self, peer: PeerId, message: &M) -> Result<(), SendError> {
        let encoded = self.encode(message)?;
        self.route().try_send(peer, encoded.bytes)
    }

    /// [`Network::try_send`] for an already encoded message.
    ///
    /// # Errors
    /// As [`Network::try_send`].
    pub fn try_send_encoded(&self, peer: PeerId, message: &Encoded<M>) -> Result<(), SendError> {
        self.route().try_send(peer, message.bytes.clone())
    }

    fn open_links(&self) -> Vec<Arc<crate::driver::link::SocketShared>> {
        self.shared.peers.read().values().cloned().collect()
    }

    /// Encodes `message` once and queues it to every connected peer and every persistent peer
    /// (those away get it when they are back), without waiting: a peer whose queue is full is
    /// skipped and counted, so one slow peer never delays the others or the caller.
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn try_broadcast(&self, message: &M) -> Result<BroadcastReport, CodecError> {
        Ok(self.try_broadcast_encoded(&self.encode(message)?))
    }

    /// [`Network::try_broadcast`] for an already encoded message.
    pub fn try_broadcast_encoded(&self, message: &Encoded<M>) -> BroadcastReport {
        self.route().try_broadcast(&message.bytes)
    }

    /// Encodes `message` once and queues it to every connected peer and every persistent peer.
    /// Peers with room get it at once; peers whose queue is full are waited for together, at
    /// most [`Config::send_wait`] in all, then skipped and counted (a peer that stays stalled
    /// is skipped at once on later calls, and disconnected after `write_timeout`). So one peer
    /// that stops reading delays the caller by at most `send_wait`, once, and never delays
    /// other peers' delivery.
    ///
    /// # Errors
    /// [`CodecError`].
    ///
    /// # Cancel safety
    /// Not cancel safe: if dropped while waiting, the message has been queued to some peers only.
    pub async fn broadcast(&self, message: &M) -> Result<BroadcastReport, CodecError> {
        let encoded = self.encode(message)?;
        Ok(self.route().broadcast(&encoded.bytes).await)
    }

    /// [`Network::broadcast`] for an already encoded message.
    ///
    /// # Cancel safety
    /// As [`Network::broadcast`].
    pub async fn broadcast_encoded(&self, message: &Encoded<M>) -> BroadcastReport {
        self.route().broadcast(&message.bytes).await
    }

    /// For a persistent peer: messages (and bytes) accepted and not yet acknowledged by it,
    /// whether sent or waiting for it to come back. `None` for other peers.
    pub fn pending(&self, peer: PeerId) -> Option<Pending> {
        let stream = self.shared.reliable.read().get(&peer).cloned();
        stream.map(|r| {
            let (messages, bytes) = r.depth();
            Pending { messages, bytes }
        })
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

    /// Subscribes to connection events. The first call after [`Network::start`] gets every
    /// event since the node started (persistent peers are dialed at once, and their
    /// `Connected` may come before the caller could subscribe); later calls get events from
    /// then on. Each subscriber buffers up to `event_capacity` events; one that falls behind
    /// loses the oldest and its next `recv` reports how many it missed
    /// (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<NetworkEvent> {
        self.shared
            .first_events
            .lock()
            .take()
            .unwrap_or_else(|| self.shared.events.subscribe())
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

/// What a persistent peer has not acknowledged yet, on all channels: see [`Network::pending`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pending {
    /// Messages accepted and not yet acknowledged.
    pub messages: usize,
    /// Their encoded bytes.
    pub bytes: usize,
}

/// A message of type `M` encoded once, to be queued to one or many peers without encoding
/// again. Typed, so a message encoded for one type cannot be sent as another.
pub struct Encoded<M> {
    bytes: Bytes,
    _message: PhantomData<fn(M) -> M>,
}

impl<M> Encoded<M> {
    fn new(message: &M, max: usize) -> Result<Self, CodecError>
    where
        M: Serialize + 'static,
    {
        Ok(Self {
            bytes: crate::codec::encode_body_kept(message, max)?,
            _message: PhantomData,
        })
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoding is empty (a unit-like message).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<M> Clone for Encoded<M> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Encoded<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("len", &self.bytes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    /// A waiting send to a peer between two connections (the remote closed the one senders
    /// used as the duplicate of one still in its handshake here, so its departure is held)
    /// waits for the replacement instead of failing with `NotConnected`; if the departure is
    /// reported instead, it fails then.
    // One thread: a spawned send runs until it waits whenever this test yields, so whether it
    // is waiting is known, not raced.
    #[tokio::test(flavor = "current_thread")]
    async fn a_send_to_a_peer_between_two_connections_waits_for_it_to_settle() {
        use std::time::Duration;
        // A send_wait longer than the test: the send is waiting when it is checked, however
        // slow the machine.
        let patient = Config {
            send_wait: Duration::from_secs(600),
            ..Config::default()
        };
        let (a, _a_in) = Network::<bytes::Bytes>::start(patient, Keypair::generate())
            .await
            .unwrap();
        let (b, b_in) = Network::<bytes::Bytes>::start(Config::default(), Keypair::generate())
            .await
            .unwrap();
        let b_id = b.local_peer_id();
        let soon = Duration::from_secs(20);
        tokio::time::timeout(soon, a.connect(b.local_addr()))
            .await
            .unwrap()
            .unwrap();
        // What the driver does when the remote closes our connection as a duplicate.
        let unpublish = || {
            let link = a.shared.peers.write().remove(&b_id).unwrap();
            a.shared.between.lock().insert(b_id);
            link
        };
        let settle = || {
            a.shared.between.lock().remove(&b_id);
            a.shared.settled.notify_waiters();
        };
        let message = bytes::Bytes::from_static(b"between");
        let link = unpublish();
        assert!(matches!(
            a.route().start_send(b_id, message.clone()),
            Err(send::Started::Between(_))
        ));
        let send = {
            let a = a.clone();
            let message = message.clone();
            tokio::spawn(async move { a.send(b_id, &message).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!send.is_finished(), "gave up at once");
        // The replacement is published: the send goes through it.
        a.shared.peers.write().insert(b_id, link);
        settle();
        let sent = tokio::time::timeout(soon, send).await.unwrap().unwrap();
        assert!(sent.is_ok(), "{sent:?}");
        let got = tokio::time::timeout(soon, b_in.recv()).await.unwrap();
        assert_eq!(got, Some((a.local_peer_id(), message.clone())));
        // The departure is reported instead: the send fails.
        let _link = unpublish();
        let send = {
            let a = a.clone();
            let message = message.clone();
            tokio::spawn(async move { a.send(b_id, &message).await })
        };
        settle();
        let sent = tokio::time::timeout(soon, send).await.unwrap().unwrap();
        assert!(
            matches!(sent, Err(SendError::NotConnected(p)) if p == b_id),
            "{sent:?}"
        );
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn handles_are_send_sync_static() {
        assert_send_sync::<Network<bytes::Bytes>>();
        assert_send_sync::<Inbox<bytes::Bytes>>();
        assert_send_sync::<Channel<bytes::Bytes>>();
        assert_send_sync::<Encoded<bytes::Bytes>>();
        assert_send_sync::<NetworkEvent>();
    }
}
