//! Events the node reports to the application about its peers.

use std::net::SocketAddr;

use crate::identity::PeerId;
use crate::session::{Direction, DisconnectReason};

/// Something that happened to a peer, from [`crate::Network::events`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), peerwire::NetworkError> {
/// use peerwire::{Config, Keypair, Network, NetworkEvent};
/// let config = Config::default().network_id("doc-events");
/// let (a, _) = Network::<u64>::start(config.clone(), Keypair::generate()).await?;
/// let (b, _) = Network::<u64>::start(config, Keypair::generate()).await?;
/// // Subscribe before connecting, so the event cannot be missed.
/// let mut events = a.events();
/// a.connect(b.local_addr()).await?;
/// loop {
///     match events.recv().await {
///         Ok(NetworkEvent::Connected { peer, .. }) => {
///             assert_eq!(peer, b.local_peer_id());
///             break;
///         }
///         Ok(other) => println!("{other:?}"),
///         // A subscriber that falls behind is told how many events it missed.
///         Err(e) => println!("{e}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkEvent {
    /// A peer is now connected (its first connection opened).
    Connected {
        /// The proven peer.
        peer: PeerId,
        /// Its socket address.
        addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
    },
    /// A peer was banned: its connection is closed and it is refused until the ban expires.
    Banned {
        /// The peer.
        peer: PeerId,
        /// For how long.
        duration: std::time::Duration,
        /// Why: its misbehaviour score, or the application's request.
        reason: BanReason,
    },
    /// A peer is no longer connected (its connection closed and was not replaced).
    Disconnected {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason,
    },
}

/// Why a peer was banned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanReason {
    /// It spent its misbehaviour budget (this many points).
    Misbehaviour {
        /// Points charged.
        score: u64,
    },
    /// The application called [`crate::Network::ban`] (for example for equivocation).
    Application,
    /// Connections from its IP address stalled (stopped reading or acknowledging for
    /// `write_timeout`) `max_stalls_per_ip` times within `stall_window`.
    Stalled {
        /// How many stalls.
        stalls: u32,
    },
}
