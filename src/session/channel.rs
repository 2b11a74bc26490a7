//! Channels: what keeps traffic classes apart on one connection. Every application message
//! travels on a channel (a `u16` id on the wire); each channel has its own priority, send queue,
//! inbox, size limit and inbound rate limit, declared by a [`ChannelSpec`].
//!
//! [`ChannelTable`] maps the configured ids to dense indices `0..n` (index 0 is always channel
//! 0, the default channel), so the hot path indexes arrays instead of hashing ids.

use std::ops::RangeInclusive;

/// A channel's id on the wire.
pub type ChannelId = u16;

/// The default channel: what [`crate::Network`]'s own `send`, `broadcast` and inbox use.
pub const DEFAULT_CHANNEL: ChannelId = 0;

/// Channel ids reserved for the crate's own protocols (request/response, gossip, discovery,
/// distribution). [`crate::Config::channel`] refuses them.
pub const RESERVED_CHANNELS: RangeInclusive<ChannelId> = 0xFF00..=0xFFFF;

/// Most channels one node may declare (the default channel included). Each may hold one message
/// in reassembly per connection, so this also bounds per-connection reassembly memory.
pub const MAX_CHANNELS: usize = 32;

/// How a channel's traffic is ordered against other channels on the same connection.
///
/// The writer serves channels by deficit round robin: each round a busy channel may send its
/// weight times 64 KiB, higher classes first within a round. A channel that was idle starts
/// with one round of credit, so its message waits for at most the piece of a lower channel being
/// written (plus what the writer and the kernel already hold); a channel that is itself busy
/// beyond its share waits its turn in the round. A lower class still gets its share under a
/// flood: a busy channel gets its weight over the busy channels' total (bulk 1/9 against a
/// critical flood).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Priority {
    /// Votes, timeouts: smallest latency. Weight 8.
    Critical,
    /// Proposals, acknowledgements. Weight 4.
    High,
    /// Ordinary traffic (the default channel). Weight 2.
    Normal,
    /// Block parts, state sync, large payloads. Weight 1.
    Bulk,
}

/// Bytes a weight of 1 may send per round; also the largest piece of one message written before
/// the scheduler looks again (one frame's worth).
pub(crate) const QUANTUM: usize = 64 * 1024;

impl Priority {
    /// The round-robin weight: how many quanta per round.
    pub(crate) fn weight(self) -> usize {
        match self {
            Self::Critical => 8,
            Self::High => 4,
            Self::Normal => 2,
            Self::Bulk => 1,
        }
    }

    /// A stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Bulk => "bulk",
        }
    }
}

/// What happens to a message that arrives when its channel's inbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop the arriving message and count it (`dropped_inbox_full`). From a persistent peer it
    /// is not lost: the reader asks the sender to resend from it (go-back-N on that channel
    /// only), so other channels keep flowing.
    DropNewest,
}

/// The declaration of one channel: priority, queue and inbox bounds, size and rate limits.
///
/// Start from a class ([`ChannelSpec::critical`], [`ChannelSpec::high`],
/// [`ChannelSpec::normal`], [`ChannelSpec::bulk`]) and adjust with the builder methods.
///
/// ```
/// use peerwire::{ChannelSpec, Config};
/// let config = Config::default()
///     .channel(1, ChannelSpec::critical())
///     .channel(2, ChannelSpec::bulk().send_queue_bytes(256 << 20));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelSpec {
    /// Ordering against other channels.
    pub priority: Priority,
    /// Messages waiting per peer on this channel before `try_send` reports `Full` and `send`
    /// waits (at most [`crate::Config::send_wait`]).
    pub send_queue_capacity: usize,
    /// Bytes waiting per peer on this channel, same policy (one message always fits).
    pub send_queue_bytes: usize,
    /// Messages waiting in this channel's inbox for the application.
    pub inbox_capacity: usize,
    /// Encoded bytes waiting in this channel's inbox.
    pub inbox_bytes: usize,
    /// What happens when the inbox is full.
    pub overflow: Overflow,
    /// Largest encoded message on this channel, sent or received.
    pub max_message_size: usize,
    /// Inbound messages per second per connection on this channel (burst: one second's worth);
    /// each message over it is dropped, counted and charged 1 point. 0 means unlimited.
    pub max_inbound_messages_per_sec: u64,
    /// Inbound encoded bytes per second per connection on this channel, same policy.
    pub max_inbound_bytes_per_sec: u64,
    /// Whether `send` to the local peer and every `broadcast` on this channel also deliver to
    /// this node's own inbox (tagged with the local id). Off by default.
    pub deliver_to_self: bool,
}

impl ChannelSpec {
    fn class(priority: Priority, max_message_size: usize, queue: usize, bytes: usize) -> Self {
        Self {
            priority,
            send_queue_capacity: queue,
            send_queue_bytes: bytes,
            inbox_capacity: queue * 4,
            inbox_bytes: bytes * 4,
            overflow: Overflow::DropNewest,
            max_message_size,
            // The same ceiling as the default channel: far above honest traffic, but a peer
            // cannot make us decode without bound.
            max_inbound_messages_per_sec: 1_000_000,
            max_inbound_bytes_per_sec: 1 << 30,
            deliver_to_self: false,
        }
    }

    /// Small, urgent messages: 1 MiB max, 4096 queued (4 MiB) per peer.
    pub fn critical() -> Self {
        Self::class(Priority::Critical, 1 << 20, 4096, 4 << 20)
    }

    /// Proposals and the like: 16 MiB max, 1024 queued (32 MiB) per peer.
    pub fn high() -> Self {
        Self::class(Priority::High, 16 << 20, 1024, 32 << 20)
    }

    /// Ordinary traffic: 16 MiB max, 4096 queued (32 MiB) per peer.
    pub fn normal() -> Self {
        Self::class(Priority::Normal, 16 << 20, 4096, 32 << 20)
    }

    /// Large payloads: 16 MiB max, 256 queued (64 MiB) per peer.
    pub fn bulk() -> Self {
        Self::class(Priority::Bulk, 16 << 20, 256, 64 << 20)
    }
}

macro_rules! spec_setters {
    ($($name:ident: $ty:ty),* $(,)?) => {
        impl ChannelSpec {
            $(
                #[doc = concat!("Sets [`ChannelSpec::", stringify!($name), "`].")]
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

spec_setters! {
    priority: Priority,
    send_queue_capacity: usize,
    send_queue_bytes: usize,
    inbox_capacity: usize,
    inbox_bytes: usize,
    overflow: Overflow,
    max_message_size: usize,
    max_inbound_messages_per_sec: u64,
    max_inbound_bytes_per_sec: u64,
    deliver_to_self: bool,
}

/// The configured channels, sorted by id, with the default channel at index 0.
#[derive(Debug, Clone)]
pub(crate) struct ChannelTable {
    ids: Vec<ChannelId>,
    specs: Vec<ChannelSpec>,
}

impl ChannelTable {
    /// Builds the table; `default` is channel 0's spec, `others` must have distinct ids other
    /// than 0 (the config checks).
    pub(crate) fn new(default: ChannelSpec, others: &[(ChannelId, ChannelSpec)]) -> Self {
        let mut pairs: Vec<_> = others
            .iter()
            .filter(|(id, _)| *id != DEFAULT_CHANNEL)
            .cloned()
            .collect();
        pairs.sort_by_key(|(id, _)| *id);
        pairs.dedup_by_key(|(id, _)| *id);
        pairs.insert(0, (DEFAULT_CHANNEL, default));
        let (ids, specs) = pairs.into_iter().unzip();
        Self { ids, specs }
    }

    /// The index of channel `id`, if configured.
    pub(crate) fn index(&self, id: ChannelId) -> Option<usize> {
        if id == DEFAULT_CHANNEL {
            return Some(0);
        }
        self.ids[1..].binary_search(&id).ok().map(|i| i + 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn spec(&self, index: usize) -> &ChannelSpec {
        &self.specs[index]
    }

    /// Every (id, spec), by index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ChannelId, &ChannelSpec)> {
        self.ids.iter().copied().zip(self.specs.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_maps_ids_to_dense_indices_with_default_first() {
        let t = ChannelTable::new(
            ChannelSpec::normal(),
            &[(9, ChannelSpec::bulk()), (3, ChannelSpec::critical())],
        );
        assert_eq!(t.index(0), Some(0));
        assert_eq!(t.index(3), Some(1));
        assert_eq!(t.index(9), Some(2));
        assert_eq!(t.index(4), None);
        assert_eq!(t.spec(1).priority, Priority::Critical);
        let ids: Vec<_> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![0, 3, 9]);
        assert_eq!(t.len(), 3);
    }

    /// The presets are what their documentation (and ARCHITECTURE.md's channel table) says:
    /// largest message, queue per peer in messages and bytes, inbox four times that, and
    /// round-robin weights 8, 4, 2, 1 with the labels metrics use.
    #[test]
    fn the_presets_are_as_documented() {
        const MIB: usize = 1 << 20;
        let presets = [
            (
                ChannelSpec::critical(),
                Priority::Critical,
                MIB,
                4096,
                4 * MIB,
                8,
                "critical",
            ),
            (
                ChannelSpec::high(),
                Priority::High,
                16 * MIB,
                1024,
                32 * MIB,
                4,
                "high",
            ),
            (
                ChannelSpec::normal(),
                Priority::Normal,
                16 * MIB,
                4096,
                32 * MIB,
                2,
                "normal",
            ),
            (
                ChannelSpec::bulk(),
                Priority::Bulk,
                16 * MIB,
                256,
                64 * MIB,
                1,
                "bulk",
            ),
        ];
        for (spec, priority, max, queue, bytes, weight, label) in presets {
            assert_eq!(spec.priority, priority);
            assert_eq!(spec.max_message_size, max, "{label}");
            assert_eq!(spec.send_queue_capacity, queue, "{label}");
            assert_eq!(spec.send_queue_bytes, bytes, "{label}");
            assert_eq!(spec.inbox_capacity, 4 * queue, "{label}");
            assert_eq!(spec.inbox_bytes, 4 * bytes, "{label}");
            assert_eq!(spec.max_inbound_bytes_per_sec, 1 << 30, "{label}");
            assert_eq!(priority.weight(), weight);
            assert_eq!(priority.label(), label);
        }
    }
}
