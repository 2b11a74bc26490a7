//! Snapshots of one connection, as the application and the metrics renderer see them.

use std::net::SocketAddr;

use super::{ConnectionId, Direction, SocketState};
use crate::identity::PeerId;

/// A snapshot of one connection: who, where, which state, and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// This connection's id.
    pub id: ConnectionId,
    /// The proven peer, once authenticated.
    pub peer: Option<PeerId>,
    /// The remote socket address.
    pub addr: SocketAddr,
    /// The listen address the peer advertised in the handshake.
    pub listen_addr: Option<SocketAddr>,
    /// Who dialed.
    pub direction: Direction,
    /// The state now.
    pub state: SocketState,
    /// Counters of the connection as a whole.
    pub stats: PeerStats,
    /// Counters per channel, the default channel first.
    pub channels: Vec<ChannelStats>,
}

/// A snapshot of one channel's counters on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// The channel id.
    pub channel: u16,
    /// Messages received on this channel (delivered or dropped at its inbox).
    pub messages_in: u64,
    /// Encoded bytes received on this channel.
    pub bytes_in: u64,
    /// Messages written on this channel.
    pub messages_out: u64,
    /// Encoded bytes written on this channel.
    pub bytes_out: u64,
    /// Inbound messages dropped because this channel's inbox was full.
    pub dropped_inbox_full: u64,
    /// Outbound messages refused because this channel's queue to the peer was full or stalled.
    pub dropped_queue_full: u64,
    /// Inbound messages dropped for exceeding this channel's rate limit.
    pub dropped_rate_limited: u64,
    /// Messages waiting in this channel's send queue now.
    pub queued_messages: usize,
    /// Bytes waiting in this channel's send queue now.
    pub queued_bytes: usize,
}

/// A snapshot of one connection's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Application messages received and delivered or dropped at the inbox.
    pub messages_in: u64,
    /// Encoded application bytes received.
    pub bytes_in: u64,
    /// Application messages written to the connection.
    pub messages_out: u64,
    /// Encoded application bytes written.
    pub bytes_out: u64,
    /// Encrypted frames received.
    pub frames_in: u64,
    /// Encrypted frames sent.
    pub frames_out: u64,
    /// Inbound messages rejected (oversize, undecodable, malformed records).
    pub rejected: u64,
    /// Misbehaviour points charged to the peer on this connection.
    pub misbehaviour: u64,
    /// Inbound messages dropped because the application inbox was full.
    pub dropped_inbox_full: u64,
    /// Outbound messages refused because this peer's send queue was full.
    pub dropped_queue_full: u64,
    /// Outbound messages still queued when the connection closed without flushing them.
    pub dropped_on_close: u64,
    /// Inbound messages dropped for exceeding the peer's rate limit.
    pub dropped_rate_limited: u64,
    /// Pings sent on this connection.
    pub pings_sent: u64,
    /// Matching pongs received.
    pub pongs_received: u64,
    /// The last measured round-trip time (ping to pong), once known.
    pub rtt: Option<std::time::Duration>,
    /// Messages waiting in the send queue now.
    pub queued_messages: usize,
    /// Bytes waiting in the send queue now.
    pub queued_bytes: usize,
}
