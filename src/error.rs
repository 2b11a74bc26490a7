//! Errors, one type per operation ([`StartError`], [`ConnectError`], [`SendError`],
//! [`ChannelError`], [`ShutDown`]), so a caller matches only what that call can return; and
//! [`NetworkError`], which every one of them converts into, for code that propagates them all
//! with `?`.

use std::net::SocketAddr;

use crate::codec::CodecError;
use crate::handshake::HandshakeError;
use crate::identity::PeerId;

/// Any error of the [`crate::Network`] API: what each operation's own error type converts into,
/// for code that propagates several kinds with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The network has shut down (or is shutting down).
    #[error("network is shut down")]
    Closed,
    /// No open connection to this peer.
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// The peer's send queue (or persistent-peer stream) on this channel is full (`try_send`),
    /// or stayed full for `send_wait` (`send`); the message was not queued.
    #[error("send queue to {0} is full")]
    Full(PeerId),
    /// The message could not be encoded or is larger than `max_message_size`.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The handshake with a dialed address failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The dialed address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// The TCP dial failed.
    #[error("dial {addr} failed: {source}")]
    Dial {
        /// The dialed address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TCP dial did not finish within `connect_timeout`.
    #[error("dial {addr} timed out")]
    DialTimeout {
        /// The dialed address.
        addr: SocketAddr,
    },
    /// `max_outbound` connections are already open or opening.
    #[error("outbound connection limit reached")]
    OutboundLimit,
    /// The connection closed before it opened.
    #[error("connection to {addr} closed before it opened: {reason}")]
    ConnectionClosed {
        /// The dialed address.
        addr: SocketAddr,
        /// Why.
        reason: crate::session::DisconnectReason,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// [`crate::Network::channel`] named a channel the config did not declare.
    #[error("channel {0} is not declared; add it with Config::channel before start")]
    UnknownChannel(u16),
    /// [`crate::Network::channel`] named a channel already opened (each opens once; clone the
    /// returned `Channel` to share it). Channel 0 is opened by `start`.
    #[error("channel {0} is already open; clone its Channel handle instead")]
    ChannelOpen(u16),
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
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

/// The network has shut down, so the command could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("network is shut down")]
pub struct ShutDown;

impl From<StartError> for NetworkError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::InvalidConfig(what) => Self::InvalidConfig(what),
            StartError::Bind { addr, source } => Self::Bind { addr, source },
        }
    }
}

impl From<ConnectError> for NetworkError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Closed => Self::Closed,
            ConnectError::Dial { addr, source } => Self::Dial { addr, source },
            ConnectError::DialTimeout { addr } => Self::DialTimeout { addr },
            ConnectError::Handshake { addr, source } => Self::Handshake { addr, source },
            ConnectError::OutboundLimit => Self::OutboundLimit,
            ConnectError::ConnectionClosed { addr, reason } => {
                Self::ConnectionClosed { addr, reason }
            }
        }
    }
}

impl From<SendError> for NetworkError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotConnected(peer) => Self::NotConnected(peer),
            SendError::Full(peer) => Self::Full(peer),
            SendError::Codec(e) => Self::Codec(e),
        }
    }
}

impl From<ChannelError> for NetworkError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::UnknownChannel(id) => Self::UnknownChannel(id),
            ChannelError::ChannelOpen(id) => Self::ChannelOpen(id),
            ChannelError::Closed => Self::Closed,
        }
    }
}

impl From<ShutDown> for NetworkError {
    fn from(_: ShutDown) -> Self {
        Self::Closed
    }
}
