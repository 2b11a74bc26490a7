//! Topic gossip: publish/subscribe over many hops, each node forwarding a publication once, on
//! the connections the node already has (joining a topic opens none).
//!
//! Pure core in `core.rs` (a spanning tree per topic, rooted at the node of the lowest rank and
//! built from the places the neighbours tell; eager push along it, lazy announcements to the
//! other neighbours, fetch of what is late) and `wire.rs` (messages, ids, what is signed); the
//! driver (`task.rs`) is one task that checks signatures, hands publications to subscribers
//! and sends what the core asks for on the gossip channel. A deterministic simulation of 1,000
//! nodes runs the core in `cargo test` (`sim_tests.rs`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use peerwire::protocols::gossip::GossipConfig;
//! use peerwire::{ChannelSpec, Config, Keypair, Network};
//! const GOSSIP: u16 = 20;
//! let config = Config::default().network_id("doc-gossip").channel(GOSSIP, ChannelSpec::normal());
//! let (a, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
//! let (b, _) = Network::<String>::start(config, Keypair::generate()).await?;
//! let (a_gossip, b_gossip) = (a.gossip(GOSSIP)?, b.gossip(GOSSIP)?);
//! let mut updates = b_gossip.subscribe::<String>("doc/1")?;
//! let doc = a_gossip.subscribe::<String>("doc/1")?;
//! a.connect(b.local_addr()).await?;
//! # while a_gossip.neighbours("doc/1") == 0 { tokio::time::sleep(std::time::Duration::from_millis(5)).await; }
//! doc.publish(&"title = peerwire".to_string()).await?;
//! let message = updates.recv().await.expect("a publication");
//! assert_eq!((message.origin, message.payload.as_str()), (a.local_peer_id(), "title = peerwire"));
//! message.accept(); // forwarded on only now
//! # Ok(())
//! # }
//! ```

mod core;
#[cfg(test)]
mod sim_tests;
mod source;
mod task;
mod wire;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::core::{JoinError, PublishError, TopicStats, Verdict};
pub use task::{Gossip, GossipMessage, Topic};
pub use wire::MsgId;

use crate::error::ChannelError;
use crate::network::Network;
use crate::session::ChannelId;

/// How gossip runs: its channel and its bounds. Every node of a network should use the same.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GossipConfig {
    /// The channel gossip's messages travel on (declare it in [`crate::Config`]; its
    /// `max_message_size` must hold `max_payload` plus about 300 bytes).
    pub channel: ChannelId,
    /// Topics this node takes part in (and topics a neighbour may say it takes part in).
    /// Default 4,096. An idle topic costs a few hundred bytes.
    pub max_topics: usize,
    /// Longest topic name, in bytes. Default 256.
    pub max_topic_len: usize,
    /// Largest payload. Default 1 MiB (larger: use a swarm).
    pub max_payload: usize,
    /// Payloads larger than this are announced before they are pushed, so a node that has
    /// one already costs an id, not a copy. Default 64 KiB.
    pub eager_max: usize,
    /// Ids remembered per topic to drop duplicates: count (oldest forgotten first) and age.
    /// Defaults 65,536 and 120 s.
    pub seen_capacity: usize,
    /// See `seen_capacity`.
    pub seen_ttl: Duration,
    /// Publications kept per topic to answer neighbours that ask for them: count and age.
    /// Defaults 1,024 and 30 s.
    pub cache_capacity: usize,
    /// See `cache_capacity`.
    pub cache_ttl: Duration,
    /// Announcements to a neighbour are batched for this long. Default 20 ms.
    pub announce_interval: Duration,
    /// Ids per announcement (oldest dropped first, counted). Default 5,000.
    pub max_announce_batch: usize,
    /// How long an announced publication may take to arrive along the tree before it is asked
    /// for (`Want`) from its announcer, then from the next one. Default 500 ms.
    pub fetch_timeout: Duration,
    /// Announced publications waited for at once, per topic. Default 4,096.
    pub max_missing: usize,
    /// How long the application has to judge a publication; no verdict counts as
    /// [`Verdict::Ignore`]. Default 5 s.
    pub validation_timeout: Duration,
    /// Publications waiting for a verdict (beyond: dropped, counted). Default 4,096.
    pub max_pending_validation: usize,
    /// Publications that made more hops are dropped. Default 64.
    pub max_hops: u8,
    /// Whole publications a neighbour may push per second (beyond: dropped, counted); 0 is
    /// unlimited. Default 10,000.
    pub max_pushes_per_sec: u64,
    /// Publications waiting in one subscription for `recv` (beyond: not delivered, counted
    /// as dropped, and not forwarded). Default 1,024.
    pub topic_queue: usize,
    /// Protocol violations (undecodable messages, forged or rejected publications) before
    /// the neighbour is banned for `Config::ban_duration`. Default 100 points.
    pub misbehaviour_budget: u32,
}

impl GossipConfig {
    /// Defaults, on `channel`.
    pub fn new(channel: ChannelId) -> Self {
        Self {
            channel,
            max_topics: 4096,
            max_topic_len: 256,
            max_payload: 1 << 20,
            eager_max: 64 * 1024,
            seen_capacity: 65_536,
            seen_ttl: Duration::from_secs(120),
            cache_capacity: 1024,
            cache_ttl: Duration::from_secs(30),
            announce_interval: Duration::from_millis(20),
            max_announce_batch: 5000,
            fetch_timeout: Duration::from_millis(500),
            max_missing: 4096,
            validation_timeout: Duration::from_secs(5),
            max_pending_validation: 4096,
            max_hops: 64,
            max_pushes_per_sec: 10_000,
            topic_queue: 1024,
            misbehaviour_budget: 100,
        }
    }

    /// Sets [`GossipConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`GossipConfig::fetch_timeout`].
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Sets [`GossipConfig::validation_timeout`].
    pub fn validation_timeout(mut self, timeout: Duration) -> Self {
        self.validation_timeout = timeout;
        self
    }

    /// Sets [`GossipConfig::misbehaviour_budget`].
    pub fn misbehaviour_budget(mut self, points: u32) -> Self {
        self.misbehaviour_budget = points;
        self
    }

    pub(crate) fn limits(&self) -> core::Limits {
        core::Limits {
            max_topics: self.max_topics.max(1),
            max_topic_len: self.max_topic_len.max(1),
            max_payload: self.max_payload,
            eager_max: self.eager_max,
            seen_capacity: self.seen_capacity.max(1),
            seen_ttl: self.seen_ttl,
            cache_capacity: self.cache_capacity.max(1),
            cache_ttl: self.cache_ttl,
            announce_interval: self.announce_interval,
            max_announce_batch: self.max_announce_batch.max(1),
            fetch_timeout: self.fetch_timeout,
            max_missing: self.max_missing.max(1),
            validation_timeout: self.validation_timeout,
            max_pending_validation: self.max_pending_validation.max(1),
            max_hops: self.max_hops.max(1),
            max_pushes_per_sec: self.max_pushes_per_sec,
        }
    }
}

/// `net.gossip(CHANNEL)`: defaults on that channel.
impl From<ChannelId> for GossipConfig {
    fn from(channel: ChannelId) -> Self {
        Self::new(channel)
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Starts gossip on `config`'s channel (declared in [`crate::Config`]; a bare channel id
    /// means [`GossipConfig::new`] on it) and returns its handle, cheap to clone.
    ///
    /// # Errors
    /// As [`Network::channel`].
    pub fn gossip(&self, config: impl Into<GossipConfig>) -> Result<Gossip, ChannelError> {
        let config = config.into();
        let (channel, inbox) = self.channel::<bytes::Bytes>(config.channel)?;
        Ok(task::spawn(config, self.protocol_face(), channel, inbox))
    }
}
