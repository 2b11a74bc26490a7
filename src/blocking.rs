//! A blocking face for engines with a synchronous loop: [`Network`] owns its tokio runtime, so
//! a program with no async code can start a node, connect, send, broadcast, receive with a
//! timeout and shut down.
//!
//! It is the async [`crate::Network`] driven by the façade's own runtime: same wire, same
//! limits, same counters, and the same [`Inbox`], whose `recv_timeout` and `blocking_recv`
//! already wait in plain threads. Call it from plain threads only: a method that waits would
//! block a runtime's worker, so inside a tokio runtime use the async face.
//!
//! ```
//! use std::time::Duration;
//! use peerwire::blocking::Network;
//! use peerwire::{Config, Keypair};
//!
//! # fn main() -> Result<(), peerwire::NetworkError> {
//! let config = Config::default().network_id("doc-blocking").deliver_to_self(true);
//! let (a, a_inbox) = Network::<Vec<u8>>::start(config.clone(), Keypair::generate())?;
//! let (b, b_inbox) = Network::<Vec<u8>>::start(config, Keypair::generate())?;
//! let b_id = a.connect(b.local_addr())?;
//! a.broadcast(&b"vote".to_vec())?;
//! // Both b and a itself (deliver_to_self) get the vote, tagged with a's id.
//! let (from, vote) = b_inbox.recv_timeout(Duration::from_secs(10)).expect("b gets it");
//! assert_eq!((from, vote.as_slice()), (a.local_peer_id(), &b"vote"[..]));
//! assert_eq!(a_inbox.recv_timeout(Duration::from_secs(10)).expect("a gets it").0, a.local_peer_id());
//! # let _ = b_id;
//! a.shutdown();
//! b.shutdown();
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::CodecError;
use crate::error::{ChannelError, ConnectError, SendError, ShutDown, StartError};
use crate::identity::{Keypair, PeerId};
use crate::network::{BroadcastReport, Channel};
use crate::session::{ChannelId, ConnectionInfo};
use crate::{Config, Inbox, NetworkStats};

struct Owned<M> {
    /// Taken only when the last handle is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Drives futures from the caller's thread (the runtime's workers drive timers and I/O).
    handle: tokio::runtime::Handle,
    net: crate::Network<M>,
}

impl<M> Drop for Owned<M> {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped inside some async context, where blocking is not allowed: cut at once.
            runtime.shutdown_background();
            return;
        }
        // The last handle: a graceful shutdown, as the async face does when its last handle
        // goes.
        let net = self.net.clone();
        runtime.block_on(async move { net.shutdown().await });
    }
}

/// A blocking handle to a running node; see the [module docs](self).
///
/// Cheap to clone, `Send + Sync`: threads of an engine can share it. When the last clone is
/// dropped the node shuts down gracefully and the runtime stops.
///
/// # Panics
/// Methods that wait (`start`, `connect`, `send`, `broadcast`, `disconnect`, `shutdown`,
/// `abort`) panic if called from inside a tokio runtime; use the async [`crate::Network`] there.
pub struct Network<M> {
    owned: Arc<Owned<M>>,
}

impl<M> Clone for Network<M> {
    fn clone(&self) -> Self {
        Self {
            owned: self.owned.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Network<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("blocking::Network")
            .field(&self.owned.net)
            .finish()
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Starts a runtime (two worker threads) and a node on it; returns the handle and the
    /// default channel's inbox.
    ///
    /// # Errors
    /// [`StartError::Runtime`] when the runtime cannot start, else as
    /// [`crate::Network::start`].
    pub fn start(config: Config, keypair: Keypair) -> Result<(Self, Inbox<M>), StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("peerwire")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let (net, inbox) = runtime.block_on(crate::Network::start(config, keypair))?;
        let owned = Arc::new(Owned {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            net,
        });
        Ok((Self { owned }, inbox))
    }
}

impl<M: Serialize + 'static> Network<M> {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.owned.handle.block_on(future)
    }

    /// The async handle of the same node, for what this face does not wrap (events, channels'
    /// waiting sends) from async code.
    pub fn as_async(&self) -> &crate::Network<M> {
        &self.owned.net
    }

    /// A handle to the façade's runtime, to run async code beside the node.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.owned.handle.clone()
    }

    /// This node's proven identity.
    pub fn local_peer_id(&self) -> PeerId {
        self.owned.net.local_peer_id()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.owned.net.local_addr()
    }

    /// Dials `addr`; returns the peer's proven id once both sides have admitted the
    /// connection (see [`crate::Network::connect`]).
    ///
    /// # Errors
    /// As [`crate::Network::connect`].
    pub fn connect(&self, addr: SocketAddr) -> Result<PeerId, ConnectError> {
        self.block_on(self.owned.net.connect(addr))
    }

    /// Dials `addr`, which must prove `expected`.
    ///
    /// # Errors
    /// As [`crate::Network::connect_to`].
    pub fn connect_to(&self, addr: SocketAddr, expected: PeerId) -> Result<PeerId, ConnectError> {
        self.block_on(self.owned.net.connect_to(addr, expected))
    }

    /// Queues `message` to `peer`, blocking at most `send_wait` while its queue is full.
    ///
    /// # Errors
    /// As [`crate::Network::send`].
    pub fn send(&self, peer: PeerId, message: &M) -> Result<(), SendError> {
        self.block_on(self.owned.net.send(peer, message))
    }

    /// Queues `message` to `peer` without blocking.
    ///
    /// # Errors
    /// As [`crate::Network::try_send`].
    pub fn try_send(&self, peer: PeerId, message: &M) -> Result<(), SendError> {
        self.owned.net.try_send(peer, message)
    }

    /// Queues `message` to every peer (and to this node with `deliver_to_self`), blocking at
    /// most `send_wait` in all for peers whose queue is full.
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn broadcast(&self, message: &M) -> Result<BroadcastReport, CodecError> {
        self.block_on(self.owned.net.broadcast(message))
    }

    /// Queues `message` to every peer without blocking.
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn try_broadcast(&self, message: &M) -> Result<BroadcastReport, CodecError> {
        self.owned.net.try_broadcast(message)
    }

    /// Opens a declared channel (see [`crate::Network::channel`]); its `try_*` methods never
    /// block, its waiting ones run on [`Network::runtime`].
    ///
    /// # Errors
    /// As [`crate::Network::channel`].
    pub fn channel<T>(&self, id: ChannelId) -> Result<(Channel<T>, Inbox<T>), ChannelError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        self.owned.net.channel(id)
    }

    /// Closes the connection to `peer` gracefully; returns whether it was connected.
    ///
    /// # Errors
    /// [`ShutDown`] after shutdown.
    pub fn disconnect(&self, peer: PeerId) -> Result<bool, ShutDown> {
        self.block_on(self.owned.net.disconnect(peer))
    }

    /// Whether `peer` has an open connection now.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.owned.net.is_connected(peer)
    }

    /// [`crate::Network::add_persistent_peer`], waiting on the node's runtime.
    ///
    /// # Errors
    /// As [`crate::Network::add_persistent_peer`].
    pub fn add_persistent_peer(
        &self,
        addr: std::net::SocketAddr,
        id: PeerId,
    ) -> Result<bool, crate::PersistError> {
        self.block_on(self.owned.net.add_persistent_peer(addr, id))
    }

    /// [`crate::Network::add_durable_peer`], waiting on the node's runtime.
    ///
    /// # Errors
    /// As [`crate::Network::add_durable_peer`].
    pub fn add_durable_peer(
        &self,
        addr: std::net::SocketAddr,
        id: PeerId,
    ) -> Result<bool, crate::PersistError> {
        self.block_on(self.owned.net.add_durable_peer(addr, id))
    }

    /// [`crate::Network::remove_persistent_peer`], waiting on the node's runtime.
    ///
    /// # Errors
    /// As [`crate::Network::remove_persistent_peer`].
    pub fn remove_persistent_peer(&self, id: PeerId) -> Result<bool, crate::PersistError> {
        self.block_on(self.owned.net.remove_persistent_peer(id))
    }

    /// [`crate::Network::persistent_peers`].
    pub fn persistent_peers(&self) -> Vec<crate::PersistentPeer> {
        self.block_on(self.owned.net.persistent_peers())
    }

    /// The peers with an open connection.
    pub fn peers(&self) -> Vec<ConnectionInfo> {
        self.owned.net.peers()
    }

    /// Node-wide counters.
    pub fn stats(&self) -> NetworkStats {
        self.owned.net.stats()
    }

    /// Shuts the node down gracefully (see [`crate::Network::shutdown`]); the runtime stops
    /// when the last handle is dropped.
    pub fn shutdown(&self) {
        self.block_on(self.owned.net.shutdown());
    }

    /// Crashes the node (see [`crate::Network::abort`]).
    pub fn abort(&self) {
        self.block_on(self.owned.net.abort());
    }
}
