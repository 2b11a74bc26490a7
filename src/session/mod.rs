//! One connection after the handshake, as pure rules: its vocabulary (who dialed, why it ended),
//! its state machine, its reliable-stream positions and its rate limits. Nothing here holds a
//! socket, spawns a task or reads a clock: callers pass `now`.

pub(crate) mod channel;
pub(crate) mod inbound;
mod info;
pub(crate) mod liveness;
pub(crate) mod outbound;
pub(crate) mod queue;
pub(crate) mod rate;
pub(crate) mod reliable;
pub(crate) mod state;

use crate::codec::{CodecError, GoodbyeReason};
use crate::handshake::HandshakeError;

pub use channel::{
    ChannelId, ChannelSpec, DEFAULT_CHANNEL, MAX_CHANNELS, Overflow, Priority, RESERVED_CHANNELS,
};
pub use info::{ChannelStats, ConnectionInfo, PeerStats};
pub use state::SocketState;
pub(crate) use state::StateCell;
pub use state::illegal_state_transitions;

/// Identifies one connection for the lifetime of a node (a peer may have several over time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which side dialed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The remote dialed us.
    Inbound,
    /// We dialed the remote.
    Outbound,
}

/// Why a connection (or a peer) went away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The local application called `disconnect`.
    #[error("disconnected by the local application")]
    Requested,
    /// The local node is shutting down.
    #[error("local shutdown")]
    Shutdown,
    /// The remote said goodbye.
    #[error("remote said goodbye: {0:?}")]
    RemoteGoodbye(GoodbyeReason),
    /// The remote closed the TCP connection.
    #[error("remote closed the connection")]
    Eof,
    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(std::io::ErrorKind),
    /// The encrypted frame layer failed (forged or corrupted frame, oversize frame header).
    #[error("frame error: {0}")]
    Codec(CodecError),
    /// The peer spent its misbehaviour budget.
    #[error("misbehaviour budget spent ({score} points)")]
    Misbehaviour {
        /// Points charged.
        score: u64,
    },
    /// The peer stopped accepting bytes, or its send queue stayed full, for `write_timeout`.
    #[error("peer stopped reading (write stalled)")]
    WriteStalled,
    /// Nothing arrived from the peer for `idle_timeout`.
    #[error("nothing received for the idle timeout")]
    IdleTimeout,
    /// Another connection to the same peer won the duplicate tie-break.
    #[error("replaced by another connection to the same peer")]
    Duplicate,
    /// The peer is banned (by the misbehaviour score or by the application).
    #[error("banned")]
    Banned,
    /// Refused after the handshake: `max_inbound` non-persistent inbound peers are open.
    #[error("inbound connection limit reached")]
    InboundLimit,
    /// The handshake failed (label of the [`HandshakeError`]).
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    /// The application dropped its inbox; nothing can be delivered any more.
    #[error("application inbox closed")]
    InboxClosed,
}

impl DisconnectReason {
    /// Every [`DisconnectReason::label`], so a metric can show each reason from the start.
    /// (A test checks it names every variant once.)
    pub const LABELS: [&'static str; 14] = [
        Self::Requested.label(),
        Self::Shutdown.label(),
        Self::RemoteGoodbye(GoodbyeReason::Shutdown).label(),
        Self::Eof.label(),
        Self::Io(std::io::ErrorKind::Other).label(),
        Self::Codec(CodecError::Authentication).label(),
        Self::Misbehaviour { score: 0 }.label(),
        Self::WriteStalled.label(),
        Self::IdleTimeout.label(),
        Self::Duplicate.label(),
        Self::Banned.label(),
        Self::InboundLimit.label(),
        Self::Handshake("").label(),
        Self::InboxClosed.label(),
    ];

    /// A short stable name for metrics and logs (one of [`DisconnectReason::LABELS`]).
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Shutdown => "shutdown",
            Self::RemoteGoodbye(_) => "remote_goodbye",
            Self::Eof => "eof",
            Self::Io(_) => "io",
            Self::Codec(_) => "codec",
            Self::Misbehaviour { .. } => "misbehaviour",
            Self::WriteStalled => "write_stalled",
            Self::IdleTimeout => "idle_timeout",
            Self::Duplicate => "duplicate",
            Self::Banned => "banned",
            Self::InboundLimit => "inbound_limit",
            Self::Handshake(_) => "handshake",
            Self::InboxClosed => "inbox_closed",
        }
    }

    /// Whether this ending is a fault (the connection passes through `Errored`), as opposed to
    /// a close someone asked for (shutdown, disconnect, duplicate, goodbye, limits, bans).
    pub(crate) fn is_fault(&self) -> bool {
        matches!(
            self,
            Self::Io(_)
                | Self::Codec(_)
                | Self::Misbehaviour { .. }
                | Self::WriteStalled
                | Self::IdleTimeout
                | Self::Eof
        )
    }

    pub(crate) fn from_handshake(error: &HandshakeError) -> Self {
        Self::Handshake(error.label())
    }
}
