//! Peer exchange: a node that knows one peer finds the rest. Each node signs a record of
//! itself (`peers::record`); on every new connection the two ask each other for peers (a
//! request on the discovery channel) and answer with their own record and a sample of the
//! records they hold. Records are verified, placed in the poison-resistant address book
//! (`peers::book`, the neighbour that told us as the source) and dialed until the node has
//! `target_peers` connections. Requests are rate-limited per peer and answers are capped and
//! sampled on acceptance.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use peerwire::{ChannelSpec, Config, Keypair, Network};
//! const PEX: u16 = 30;
//! let config = Config::default().network_id("doc-pex").channel(PEX, ChannelSpec::high());
//! let (seed, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
//! let (a, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
//! let (b, _) = Network::<String>::start(config, Keypair::generate()).await?;
//! let _discovery = [seed.discovery(PEX)?, a.discovery(PEX)?, b.discovery(PEX)?];
//! a.connect(seed.local_addr()).await?;
//! b.connect(seed.local_addr()).await?;
//! // b learns a from the seed and connects to it by itself.
//! while !b.is_connected(a.local_peer_id()) {
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! }
//! # Ok(())
//! # }
//! ```

mod task;

#[cfg(test)]
mod poison_tests;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use task::Discovery;

use crate::error::ChannelError;
use crate::network::Network;
use crate::session::ChannelId;

/// How peer exchange runs. Every node of a network should use the same channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryConfig {
    /// The channel exchanges travel on (declare it in [`crate::Config`]).
    pub channel: ChannelId,
    /// Connections this node keeps by dialing peers from its address book. Only connections
    /// it dialed count, so inbound connections (which anybody can open) never take these
    /// slots. Default 8.
    pub target_peers: usize,
    /// How often the node looks for peers to dial while under `target_peers`, and asks a
    /// connected peer for more. Default 1 s.
    pub interval: Duration,
    /// Records in one answer (beyond: the rest is not sent; a longer answer received is cut).
    /// Default 32.
    pub max_answer: usize,
    /// Records taken from one answer, chosen at random (a flood of addresses from one peer
    /// cannot fill the book). Default 8.
    pub accept_per_answer: usize,
    /// Shortest time between two requests from one peer; sooner ones are refused (and, past
    /// the request protocol's allowance, charged). Default 5 s.
    pub min_request_interval: Duration,
    /// How often a node at `target_peers` still asks one neighbour for peers, so that what it
    /// knows keeps up with the network (nodes that joined after its first exchanges). Default
    /// 10 s.
    pub refresh: Duration,
    /// Address-book entries learned from one source /24 (or /48). Default 10.
    pub max_per_source: usize,
    /// Address-book entries per address /24 (or /48). Default 4.
    pub max_per_24: usize,
    /// Address-book entries per address /16 (or /32). Default 16.
    pub max_per_16: usize,
}

impl DiscoveryConfig {
    /// Defaults, on `channel`.
    pub fn new(channel: ChannelId) -> Self {
        Self {
            channel,
            target_peers: 8,
            interval: Duration::from_secs(1),
            max_answer: 32,
            accept_per_answer: 8,
            min_request_interval: Duration::from_secs(5),
            refresh: Duration::from_secs(10),
            max_per_source: 10,
            max_per_24: 4,
            max_per_16: 16,
        }
    }

    /// Sets the address book's network caps: entries per source /24, per address /24 and per
    /// address /16. The defaults resist one network filling the book; a test or a private
    /// network where every node shares one /24 (loopback) raises them.
    pub fn subnet_caps(mut self, per_source: usize, per_24: usize, per_16: usize) -> Self {
        self.max_per_source = per_source;
        self.max_per_24 = per_24;
        self.max_per_16 = per_16;
        self
    }

    /// Sets [`DiscoveryConfig::target_peers`].
    pub fn target_peers(mut self, n: usize) -> Self {
        self.target_peers = n;
        self
    }
}

/// `net.discovery(CHANNEL)`: defaults on that channel.
impl From<ChannelId> for DiscoveryConfig {
    fn from(channel: ChannelId) -> Self {
        Self::new(channel)
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Starts peer exchange on `config`'s channel (a bare channel id means
    /// [`DiscoveryConfig::new`] on it). Keep the handle: dropping it stops discovery.
    ///
    /// # Errors
    /// As [`Network::rpc`].
    pub fn discovery(&self, config: impl Into<DiscoveryConfig>) -> Result<Discovery, ChannelError> {
        let config = config.into();
        let (client, server) = self.rpc(config.channel)?;
        Ok(task::spawn(config, self.protocol_face(), client, server))
    }
}
