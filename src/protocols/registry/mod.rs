//! A registry (Weaviate's "genesis"): one well-known node lists the others. A node registers
//! with a signed record of itself (id, address, name, state hash); the registry dials the
//! advertised address back, and lists the node only if a handshake there proves the same id.
//! The answer carries the network's settings (an application compatibility value, the
//! heartbeat interval) and the whole list; later changes (joins, leaves, state-hash changes)
//! are pushed to every member as numbered deltas. A member silent for 3 heartbeat intervals is
//! dropped; a graceful stop ([`Membership::leave`]) deregisters at once. Members re-verify every
//! record they are sent, so a registry can omit a node but never forge or alter one.
//!
//! Pure core in `core.rs` (the registry's directory and a member's view), messages in
//! `wire.rs`, one task per side in `task.rs`. Both run as requests on one channel.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use peerwire::protocols::registry::{MembershipConfig, RegistryConfig};
//! use peerwire::{ChannelSpec, Config, Keypair, Network};
//! const REGISTRY: u16 = 40;
//! let config = Config::default().network_id("doc-registry").channel(REGISTRY, ChannelSpec::high());
//! let (genesis, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
//! let registry = genesis.registry(RegistryConfig::new(REGISTRY))?;
//! let at = (genesis.local_addr(), genesis.local_peer_id());
//! let (b, _) = Network::<String>::start(config, Keypair::generate()).await?;
//! let members = b.membership(MembershipConfig::new(REGISTRY, at.0, at.1).name("WeaviateB"))?;
//! while members.resolve("WeaviateB").is_none() {
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! }
//! assert_eq!(members.resolve("WeaviateB"), Some(b.local_peer_id()));
//! assert_eq!(registry.members().len(), 1);
//! members.leave().await; // deregistered at once
//! # Ok(())
//! # }
//! ```

mod core;
mod task;
mod wire;

#[cfg(test)]
mod core_tests;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::core::{Member, MembershipEvent, Refusal};
pub use task::{Membership, MembershipStatus, RegistryServer, RegistryStats};

use crate::error::ChannelError;
use crate::identity::PeerId;
use crate::network::Network;
use crate::session::ChannelId;

/// How a registry runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The channel registration travels on (declare it in [`crate::Config`]; every node of the
    /// network uses the same one).
    pub channel: ChannelId,
    /// The application's compatibility value, given to every member; a member with another
    /// value is refused and stops. Default 0.
    pub compat: u64,
    /// How often members send a heartbeat. Default 1 s.
    pub heartbeat: Duration,
    /// Heartbeat intervals of silence before a member is dropped. Default 3.
    pub missed_heartbeats: u32,
    /// Nodes listed at most (beyond: refused as [`Refusal::Full`]). Default 1,024.
    pub max_members: usize,
    /// Registrations being dialed back at once (beyond: refused as [`Refusal::Busy`], and
    /// the node retries). Default 64.
    pub max_pending: usize,
    /// How long a dial-back may take. Default 3 s.
    pub dial_back_timeout: Duration,
    /// List changes kept for deltas; a member further behind gets the whole list. Default 256.
    pub change_log: usize,
}

impl RegistryConfig {
    /// Defaults, on `channel`.
    pub fn new(channel: ChannelId) -> Self {
        Self {
            channel,
            compat: 0,
            heartbeat: Duration::from_secs(1),
            missed_heartbeats: 3,
            max_members: 1024,
            max_pending: 64,
            dial_back_timeout: Duration::from_secs(3),
            change_log: 256,
        }
    }

    /// Sets [`RegistryConfig::compat`].
    pub fn compat(mut self, value: u64) -> Self {
        self.compat = value;
        self
    }

    /// Sets [`RegistryConfig::heartbeat`].
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }
}

impl From<ChannelId> for RegistryConfig {
    fn from(channel: ChannelId) -> Self {
        Self::new(channel)
    }
}

/// How a node registers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// The registry's channel.
    pub channel: ChannelId,
    /// Where the registry listens.
    pub registry_addr: SocketAddr,
    /// The registry's id (proven by the handshake when dialing it).
    pub registry_id: PeerId,
    /// The name to register under (unique in the registry; at most 64 bytes).
    pub name: Option<String>,
    /// This node's compatibility value; it must equal the registry's. Default 0.
    pub compat: u64,
    /// Longest wait between two registration attempts (doubling from 200 ms). Default 5 s.
    pub backoff_cap: Duration,
    /// Nodes kept in this node's copy of the list (beyond: not kept). Default 4,096.
    pub max_members: usize,
    /// Dial every listed node this node is not connected to (as they join, and again at each
    /// heartbeat, at most 16 dials at once; each dial checks the listed id). Default false:
    /// the list is only known.
    pub connect_members: bool,
}

impl MembershipConfig {
    /// Registers with the registry at `addr`, proving `id`, on `channel`.
    pub fn new(channel: ChannelId, addr: SocketAddr, id: PeerId) -> Self {
        Self {
            channel,
            registry_addr: addr,
            registry_id: id,
            name: None,
            compat: 0,
            backoff_cap: Duration::from_secs(5),
            max_members: 4096,
            connect_members: false,
        }
    }

    /// Sets [`MembershipConfig::connect_members`].
    pub fn connect_members(mut self, connect: bool) -> Self {
        self.connect_members = connect;
        self
    }

    /// Sets [`MembershipConfig::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets [`MembershipConfig::compat`].
    pub fn compat(mut self, value: u64) -> Self {
        self.compat = value;
        self
    }
}

/// Why a node stopped trying to register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The registry runs another compatibility value.
    #[error(
        "the registry runs compatibility value {theirs}, this node {ours}: upgrade or \
         reconfigure one of them"
    )]
    Mismatch {
        /// Ours.
        ours: u64,
        /// The registry's.
        theirs: u64,
    },
    /// The registry refused the registration for good.
    #[error("the registry refused the registration: {0}")]
    Refused(Refusal),
    /// The node at the registry's address belongs to another network, or proved another id.
    #[error("the registry could not be joined: {0}")]
    Handshake(String),
    /// The name is longer than a record allows.
    #[error("the name is longer than 64 bytes")]
    NameTooLong,
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Runs a registry on `config`'s channel (a bare channel id means
    /// [`RegistryConfig::new`] on it). Keep the handle: dropping it stops the registry.
    ///
    /// # Errors
    /// As [`Network::rpc`].
    pub fn registry(
        &self,
        config: impl Into<RegistryConfig>,
    ) -> Result<RegistryServer, ChannelError> {
        let config = config.into();
        let (client, server) = self.rpc(config.channel)?;
        Ok(task::spawn_registry(
            config,
            self.protocol_face(),
            client,
            server,
        ))
    }

    /// Registers this node with a registry and keeps its copy of the list. Keep the handle:
    /// dropping it stops heartbeats (the registry drops the node after its missed
    /// heartbeats); [`Membership::leave`] deregisters at once.
    ///
    /// # Errors
    /// As [`Network::rpc`].
    pub fn membership(&self, config: MembershipConfig) -> Result<Membership, ChannelError> {
        let (client, server) = self.rpc(config.channel)?;
        Ok(task::spawn_member(
            config,
            self.protocol_face(),
            client,
            server,
        ))
    }
}
