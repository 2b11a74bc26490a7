//! Large payloads in pieces, spread by the peers themselves: a node that pushes a blob to N
//! receivers uploads about one copy, and every receiver gets all of it.
//!
//! A blob is content-addressed: its [`BlobId`] is the root of a SHA-256 Merkle tree over its
//! pieces, bound to its length and piece size. Every piece travels with its proof, so a
//! receiver checks each piece on arrival, serves it on before it holds the whole blob, and
//! charges a sender whose piece does not match (and asks it nothing more for that blob).
//!
//! - [`Swarm::push`]: the pusher deals piece i to receiver i mod N and tells each receiver only
//!   of its own share; receivers announce what they get and fetch the rest from each other,
//!   rarest first, with at most `pipeline` requests in flight per peer and duplicate requests
//!   only for the last `endgame` pieces.
//! - [`Swarm::fetch`]: gets a blob from the hinted peers and whoever they bring, the same way.
//!
//! Messages about pieces (announcements, requests) go on a control channel and the pieces on
//! a bulk channel, so a request never waits behind queued pieces and pieces never delay a
//! critical channel. Pure core in `core.rs`, Merkle proofs in `merkle.rs`, messages in
//! `wire.rs`, the driver in `task.rs`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use peerwire::protocols::swarm::SwarmConfig;
//! use peerwire::{Config, Keypair, Network};
//! let swarm_config = SwarmConfig::new(30, 31);
//! let config = swarm_config.declare(Config::default().network_id("doc-swarm"));
//! let (a, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
//! let (b, _) = Network::<String>::start(config, Keypair::generate()).await?;
//! let (a_swarm, b_swarm) = (a.swarm(swarm_config.clone())?, b.swarm(swarm_config)?);
//! let b_id = a.connect(b.local_addr()).await?;
//! let blob = a_swarm.add(vec![7u8; 1_000_000]).await?;
//! let report = a_swarm.push(&blob, &[b_id]).await?;
//! assert_eq!(report.completed, vec![b_id]);
//! assert_eq!(b_swarm.get(&blob).map(|data| data.len()), Some(1_000_000));
//! # Ok(())
//! # }
//! ```

mod core;
#[cfg(test)]
mod core_tests;
mod file;
mod merkle;
mod task;
mod wire;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::core::{AddError, FetchError, Progress, PushError, PushReport, SwarmStats};
pub use merkle::{BadBlobId, BlobId};
pub use task::{Swarm, SwarmEvent};

use crate::config::Config;
use crate::error::ChannelError;
use crate::network::Network;
use crate::session::{ChannelId, ChannelSpec};

/// Room a piece's frame needs besides the piece: the header and a proof of up to 32 hashes.
pub(crate) const PIECE_OVERHEAD: usize = 2048;

/// How the swarm runs: its two channels and its bounds. Every node of a network should use
/// the same channels and piece size.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwarmConfig {
    /// The channel for announcements and requests (small messages; declare it, e.g. with
    /// [`SwarmConfig::declare`]).
    pub control_channel: ChannelId,
    /// The channel pieces travel on (bulk priority; its `max_message_size` must hold a piece
    /// plus 2 KiB, or pieces are made smaller to fit).
    pub pieces_channel: ChannelId,
    /// Bytes per piece for blobs under 1 GiB (from 1 GiB: at least 1 MiB). Default 256 KiB.
    pub piece_size: u32,
    /// Largest blob added, fetched or accepted from a push. Default 4 GiB.
    pub max_blob_size: u64,
    /// Blobs held or wanted at once (beyond: refused). Default 16.
    pub max_blobs: usize,
    /// Bytes of all blobs held or wanted in memory at once, counted when their length is
    /// known. Beyond it, with a data directory, a blob lives there (its pieces are dropped from
    /// memory once written and read back when asked for), up to `max_disk`; without one, or
    /// beyond both, it is refused (a fetch fails with `OutOfMemory`). Default 1 GiB.
    pub max_memory: u64,
    /// Bytes of blobs living in the data directory (see `max_memory`). Default 16 GiB.
    pub max_disk: u64,
    /// Piece requests in flight to one peer, per blob. Default 8.
    pub pipeline: usize,
    /// Peers this node uploads one blob to at once (a peer holds a slot while pieces sent to
    /// it are not yet announced back, at most two piece timeouts); beyond, a request is
    /// answered `Busy` and asked again after `busy_retry` or elsewhere. Default 8.
    pub upload_slots: usize,
    /// How long a peer that answered `Busy` is not asked again. Default 250 ms.
    pub busy_retry: Duration,
    /// Missing pieces at or under which a piece already asked for may be asked of a second
    /// peer. Default 4.
    pub endgame: u32,
    /// Peers taking part in one blob with this node. Default 64.
    pub max_members: usize,
    /// A request unanswered for max(`timeout_min`, `timeout_per_mib` × piece size) is asked
    /// elsewhere; a push whose dealing makes no progress for `timeout_min` lets every
    /// receiver fetch anything from the pusher. Default 2 s.
    pub timeout_min: Duration,
    /// See `timeout_min`. Default 4 s per MiB.
    pub timeout_per_mib: Duration,
    /// Whether a blob pushed by a peer is taken on (within the bounds). Default true.
    pub accept_offers: bool,
    /// With a data directory (`Config::data_dir`): every blob held and every verified piece
    /// is also written there, and a restarted node takes them back (checking each piece
    /// again), so a fetch cut by a restart carries on from the pieces it had. Default true.
    pub keep_on_disk: bool,
    /// Events kept for a slow [`Swarm::events`] receiver. Default 256.
    pub event_queue: usize,
    /// Protocol violations (undecodable messages, pieces that fail their proof: 25 points
    /// each) before the peer is banned for `Config::ban_duration`. Default 100 points.
    pub misbehaviour_budget: u32,
    /// Fault injection for tests of a lying member: every piece this node uploads has its
    /// first byte flipped. Never set it on a real node.
    #[doc(hidden)]
    pub corrupt_uploads: bool,
}

impl SwarmConfig {
    /// Defaults, on these two channels.
    pub fn new(control_channel: ChannelId, pieces_channel: ChannelId) -> Self {
        Self {
            control_channel,
            pieces_channel,
            piece_size: 256 * 1024,
            max_blob_size: 4 << 30,
            max_blobs: 16,
            max_memory: 1 << 30,
            max_disk: 16 << 30,
            pipeline: 8,
            upload_slots: 8,
            busy_retry: Duration::from_millis(250),
            endgame: 4,
            max_members: 64,
            timeout_min: Duration::from_secs(2),
            timeout_per_mib: Duration::from_secs(4),
            accept_offers: true,
            keep_on_disk: true,
            event_queue: 256,
            misbehaviour_budget: 100,
            corrupt_uploads: false,
        }
    }

    /// Test-only: this node corrupts every piece it uploads (see `corrupt_uploads`).
    #[doc(hidden)]
    #[must_use]
    pub fn corrupt_uploads_for_tests(mut self) -> Self {
        self.corrupt_uploads = true;
        self
    }

    /// Declares the two channels in `config`: control at normal priority, pieces at bulk
    /// priority sized for a 1 MiB piece.
    pub fn declare(&self, config: Config) -> Config {
        config
            .channel(self.control_channel, ChannelSpec::normal())
            .channel(
                self.pieces_channel,
                ChannelSpec::bulk().max_message_size((1 << 20) + PIECE_OVERHEAD),
            )
    }

    /// Sets [`SwarmConfig::piece_size`].
    #[must_use]
    pub fn piece_size(mut self, bytes: u32) -> Self {
        self.piece_size = bytes;
        self
    }

    /// Sets [`SwarmConfig::max_blob_size`].
    #[must_use]
    pub fn max_blob_size(mut self, bytes: u64) -> Self {
        self.max_blob_size = bytes;
        self
    }

    /// Sets [`SwarmConfig::max_blobs`].
    #[must_use]
    pub fn max_blobs(mut self, blobs: usize) -> Self {
        self.max_blobs = blobs;
        self
    }

    /// Sets [`SwarmConfig::max_memory`].
    #[must_use]
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Sets [`SwarmConfig::max_disk`].
    #[must_use]
    pub fn max_disk(mut self, bytes: u64) -> Self {
        self.max_disk = bytes;
        self
    }

    /// Sets [`SwarmConfig::timeout_min`].
    #[must_use]
    pub fn timeout_min(mut self, timeout: Duration) -> Self {
        self.timeout_min = timeout;
        self
    }

    /// Sets [`SwarmConfig::upload_slots`].
    #[must_use]
    pub fn upload_slots(mut self, peers: usize) -> Self {
        self.upload_slots = peers;
        self
    }

    /// Sets [`SwarmConfig::accept_offers`].
    #[must_use]
    pub fn accept_offers(mut self, accept: bool) -> Self {
        self.accept_offers = accept;
        self
    }

    pub(crate) fn limits(&self, seed: u64) -> core::Limits {
        core::Limits {
            max_blob_size: self.max_blob_size,
            max_blobs: self.max_blobs.max(1),
            max_memory: self.max_memory,
            max_disk: self.max_disk,
            pipeline: self.pipeline.max(1),
            upload_slots: self.upload_slots.max(1),
            busy_retry: self.busy_retry,
            endgame: self.endgame,
            max_members: self.max_members.max(1),
            timeout_min: self.timeout_min,
            timeout_per_mib: self.timeout_per_mib,
            accept_offers: self.accept_offers,
            seed,
        }
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Starts the swarm on `config`'s two channels (declared in [`crate::Config`], e.g. with
    /// [`SwarmConfig::declare`]) and returns its handle, cheap to clone.
    ///
    /// # Errors
    /// As [`Network::channel`], for either channel.
    pub fn swarm(&self, config: SwarmConfig) -> Result<Swarm, ChannelError> {
        let control = self.channel::<bytes::Bytes>(config.control_channel)?;
        let pieces = self.channel::<bytes::Bytes>(config.pieces_channel)?;
        Ok(task::spawn(config, self.protocol_face(), control, pieces))
    }
}
