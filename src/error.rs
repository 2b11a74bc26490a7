//! Errors, one type per operation ([`StartError`], [`ConnectError`], [`SendError`],
//! [`ChannelError`], [`PersistError`], [`ShutDown`]), so a caller matches only what that call
//! can return; and [`NetworkError`], which every one of them converts into, for code that
//! propagates them all with `?`.

use std::net::SocketAddr;

use crate::codec::CodecError;
use crate::handshake::HandshakeError;
use crate::identity::PeerId;

/// Any error of the [`crate::Network`] API: what each operation's own error type converts into,
/// for code that propagates several kinds with `?`. Match on the operation's own type (inside
/// each variant) for the details.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The network has shut down (or is shutting down).
    #[error("network is shut down")]
    Closed,
    /// Starting the node failed.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A dial failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A send failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Opening a channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A message could not be encoded (for example by `broadcast`).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Adding or removing a persistent peer failed.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// Why [`crate::Network::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration value is unusable; the text names the field and the fix.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Binding the listen address failed (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The data directory (`Config::data_dir`) could not be opened: in use by another process,
    /// or not writable.
    #[error("{0}")]
    DataDir(#[from] crate::store::StoreError),
    /// The blocking façade could not start its runtime (threads or OS resources exhausted).
    #[error("cannot start the network's runtime: {0}; check the process's thread and file limits")]
    Runtime(#[source] std::io::Error),
}

/// Why [`crate::Network::connect`] or [`crate::Network::connect_to`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The network has shut down (or is shutting down).
    #[error("network is shut down")]
    Closed,
    /// The TCP dial failed.
    #[error("dial {addr} failed: {source}")]
    Dial {
        /// The dialed address.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The TCP dial did not finish within `connect_timeout`.
    #[error("dial {addr} timed out")]
    DialTimeout {
        /// The dialed address.
        addr: SocketAddr,
    },
    /// The handshake failed or the peer was refused (wrong network, version, identity).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The dialed address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// `max_outbound` connections are already open or opening.
    #[error("outbound connection limit reached")]
    OutboundLimit,
    /// The connection closed before it opened (refused by a limit or a ban, or cut).
    #[error("connection to {addr} closed before it opened: {reason}")]
    ConnectionClosed {
        /// The dialed address.
        addr: SocketAddr,
        /// Why.
        reason: crate::session::DisconnectReason,
    },
}

/// Why a send (`send`, `try_send` and their `*_encoded` forms, on [`crate::Network`] or a
/// [`crate::Channel`]) failed. The message was not queued.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), peerwire::NetworkError> {
/// use peerwire::{Config, Keypair, Network, SendError};
/// let (net, _) = Network::<Vec<u8>>::start(Config::default().max_message_size(1024), Keypair::generate()).await?;
/// let stranger = Keypair::generate().peer_id();
/// match net.try_send(stranger, &vec![0u8; 16]) {
///     Err(SendError::NotConnected(peer)) => assert_eq!(peer, stranger),
///     other => panic!("{other:?}"),
/// }
/// // Too large for the channel: refused before anything is queued.
/// assert!(matches!(net.encode(&vec![0u8; 4096]), Err(peerwire::codec::CodecError::MessageTooLarge { .. })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No open connection to this peer (it is not a persistent peer either).
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// The peer's queue (or persistent-peer stream) on this channel is full (`try_send`), or
    /// stayed full for `send_wait` (`send`). Counted as `dropped_queue_full`.
    #[error("send queue to {0} is full")]
    Full(PeerId),
    /// The message could not be encoded or is larger than the channel's `max_message_size`.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A durable peer's message was accepted and will be sent, but could not be written to
    /// the data directory, so it would not survive a crash of this node (the reason says why:
    /// the disk, or the journal's queue full). Check the data directory's disk.
    #[error("message to {0} accepted but not kept on disk: {1}")]
    NotKept(PeerId, String),
}

/// Why [`crate::Network::channel`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel was not declared with `Config::channel` before `start`.
    #[error("channel {0} is not declared; add it with Config::channel before start")]
    UnknownChannel(u16),
    /// The channel was opened before (each opens once; clone the `Channel` handle to share
    /// it). Channel 0 is opened by `start`.
    #[error("channel {0} is already open; clone its Channel handle instead")]
    ChannelOpen(u16),
    /// The network has shut down.
    #[error("network is shut down")]
    Closed,
}

/// Why [`crate::Network::add_persistent_peer`], [`crate::Network::add_durable_peer`] or
/// [`crate::Network::remove_persistent_peer`] failed. Nothing changed when it fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// The network has shut down.
    #[error("network is shut down")]
    Closed,
    /// The id is this node's own.
    #[error("{0} is this node's own id; a node cannot be its own persistent peer")]
    OwnId(PeerId),
    /// A durable peer needs a data directory to keep its messages in.
    #[error(
        "a durable peer needs a data directory (Config::data_dir, --data-dir); start the node with one"
    )]
    NoDataDir,
    /// [`crate::MAX_PERSISTENT_PEERS`] persistent peers already.
    #[error("{max} persistent peers already; remove one first")]
    TooMany {
        /// The bound.
        max: usize,
    },
    /// The peer is persistent already, durable or not as it says: durability does not change
    /// in place.
    #[error(
        "{peer} is a persistent peer already (durable: {durable}); remove it first to change that"
    )]
    Durability {
        /// The peer.
        peer: PeerId,
        /// Whether it is durable now.
        durable: bool,
    },
    /// The data directory could not keep the change.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<ShutDown> for PersistError {
    fn from(_: ShutDown) -> Self {
        Self::Closed
    }
}

/// The network has shut down, so the command could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("network is shut down")]
pub struct ShutDown;

impl From<ShutDown> for NetworkError {
    fn from(_: ShutDown) -> Self {
        Self::Closed
    }
}
