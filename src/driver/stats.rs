//! Per-connection counters, updated lock-free by the reader and writer tasks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::session::{ChannelStats, PeerStats};

/// Live counters of one channel on one connection.
#[derive(Debug, Default)]
pub(crate) struct ChannelCounters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) dropped_inbox_full: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_rate_limited: AtomicU64,
}

impl ChannelCounters {
    pub(crate) fn snapshot(&self, channel: u16, queued: (usize, usize)) -> ChannelStats {
        ChannelStats {
            channel,
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            dropped_inbox_full: self.dropped_inbox_full.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            dropped_rate_limited: self.dropped_rate_limited.load(Relaxed),
            queued_messages: queued.0,
            queued_bytes: queued.1,
        }
    }
}

/// Live counters of one connection.
#[derive(Debug, Default)]
pub(crate) struct SocketStats {
    /// By channel index. The connection's message, byte and drop totals are their sums, so the
    /// hot paths count each message once.
    pub(crate) channels: Vec<ChannelCounters>,
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) misbehaviour: AtomicU64,
    pub(crate) dropped_on_close: AtomicU64,
    pub(crate) pings_sent: AtomicU64,
    pub(crate) pongs_received: AtomicU64,
    /// Nonce of the last ping sent (microseconds since the socket opened); a pong counts only
    /// if it echoes this.
    pub(crate) ping_nonce: AtomicU64,
    /// Last measured round-trip time in microseconds, 0 until the first pong.
    pub(crate) rtt_micros: AtomicU64,
}

impl SocketStats {
    pub(crate) fn new(channels: usize) -> Self {
        Self {
            channels: (0..channels).map(|_| ChannelCounters::default()).collect(),
            ..Self::default()
        }
    }

    pub(crate) fn snapshot(&self, queued_messages: usize, queued_bytes: usize) -> PeerStats {
        let total = |field: fn(&ChannelCounters) -> &AtomicU64| -> u64 {
            self.channels.iter().map(|c| field(c).load(Relaxed)).sum()
        };
        PeerStats {
            messages_in: total(|c| &c.messages_in),
            bytes_in: total(|c| &c.bytes_in),
            messages_out: total(|c| &c.messages_out),
            bytes_out: total(|c| &c.bytes_out),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            misbehaviour: self.misbehaviour.load(Relaxed),
            dropped_inbox_full: total(|c| &c.dropped_inbox_full),
            dropped_queue_full: total(|c| &c.dropped_queue_full),
            dropped_on_close: self.dropped_on_close.load(Relaxed),
            dropped_rate_limited: total(|c| &c.dropped_rate_limited),
            pings_sent: self.pings_sent.load(Relaxed),
            pongs_received: self.pongs_received.load(Relaxed),
            rtt: match self.rtt_micros.load(Relaxed) {
                0 => None,
                us => Some(std::time::Duration::from_micros(us)),
            },
            queued_messages,
            queued_bytes,
        }
    }
}
