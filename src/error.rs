//! [`NetworkError`]: everything the public API can fail with.

use std::net::SocketAddr;

use crate::codec::CodecError;
use crate::handshake::HandshakeError;
use crate::identity::PeerId;

/// Errors of the [`crate::Network`] API.
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
