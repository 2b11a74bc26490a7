//! # peerwire
//!
//! The peer-to-peer network layer for a consensus engine: actor-style, over TCP, every
//! connection authenticated (ed25519 identities, Noise XX) and encrypted (AES-256-GCM), with
//! bounded queues everywhere and typed errors for everything a peer can do wrong.
//!
//! - [`Network`] is the handle: `connect`, `send`/`try_send`, `broadcast`/`try_broadcast`,
//!   `peers`, `events`, `disconnect`, `shutdown`.
//! - [`Inbox`] delivers every application message as `(PeerId, M)`, the sender proven by the
//!   handshake.
//! - [`Config`] holds every setting with its default (the table is in the README); errors are
//!   one type per operation ([`StartError`], [`ConnectError`], [`SendError`], ...).
//! - [`NetworkEvent`]s tell who joined, left and was banned; [`Network::stats`] and
//!   [`Network::metrics_text`] count everything.
//! - [`blocking`] is the same node for a synchronous loop; [`protocols`] holds request/response,
//!   topic gossip and peer exchange.
//! - [`codec`] and [`handshake`] are internal: public for the fuzz targets, not a stable API.
//!
//! Runnable programs: `examples/async_engine.rs` and `examples/sync_engine.rs`
//! (`cargo run --example sync_engine`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), peerwire::NetworkError> {
//! use peerwire::{Config, Keypair, Network};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum Consensus { Proposal { height: u64, block: Vec<u8> }, Vote { height: u64 } }
//!
//! let config = Config::default().network_id("example");
//! let (leader, _) = Network::<Consensus>::start(config.clone(), Keypair::generate()).await?;
//! let (replica, mut inbox) = Network::<Consensus>::start(config, Keypair::generate()).await?;
//! leader.connect(replica.local_addr()).await?;
//! leader.broadcast(&Consensus::Proposal { height: 1, block: vec![0; 64] }).await?;
//! let (from, message) = inbox.recv().await.unwrap();
//! assert_eq!(from, leader.local_peer_id());
//! assert!(matches!(message, Consensus::Proposal { height: 1, .. }));
//! leader.shutdown().await;
//! replica.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod blocking;
pub mod codec;
mod config;
mod driver;
mod error;
pub mod handshake;
pub mod identity;
mod metrics;
mod network;
mod peers;
pub mod protocols;
mod session;
mod store;

pub use config::{Config, MAX_PERSISTENT_PEERS, PersistentPeer};
pub use driver::inbox::{Inbox, RecvTimeoutError, TryRecvError};
pub use driver::shared::{NetworkStats, Totals};
pub use error::{
    ChannelError, ConnectError, NetworkError, PersistError, SendError, ShutDown, StartError,
};
pub use identity::{Keypair, PeerId};
pub use metrics::prometheus_text;
pub use network::{BroadcastReport, Channel, Encoded, Network, Pending, Skipped};
pub use peers::backoff::Backoff;
pub use peers::{BanReason, NetworkEvent};
pub use session::{
    ChannelId, ChannelSpec, ChannelStats, ConnectionId, ConnectionInfo, DEFAULT_CHANNEL, Direction,
    DisconnectReason, MAX_CHANNELS, Overflow, PeerStats, Priority, RESERVED_CHANNELS, SocketState,
    illegal_state_transitions,
};
pub use store::{DataStore, MAX_APP_ENTRIES, MAX_APP_KEY, MAX_APP_VALUE, StoreError};

/// Compiles the README's examples as doctests, so the documented usage cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
