//! Persistent peers added and removed while the node runs, kept in the data directory so a
//! restarted node stays connected to them without being told again.

use std::net::SocketAddr;

use serde::Serialize;

use super::Network;
use crate::config::{MAX_PERSISTENT_PEERS, PersistentPeer};
use crate::driver::node::Command;
use crate::error::PersistError;
use crate::identity::PeerId;

impl<M: Serialize + 'static> Network<M> {
    /// Makes `id` (dialed at `addr`) a persistent peer from now on, as
    /// [`crate::Config::persistent_peer`] does at start: it is dialed and redialed forever,
    /// and what is sent to it is accepted while it is away and delivered exactly once, in
    /// order, when it is back. With a data directory the choice is kept: a restarted node
    /// takes it back (the `Config`'s own entry wins for a peer in both).
    ///
    /// If the peer is connected now, its connection (opened without the reliable streams) is
    /// closed gracefully, after what was queued on it is flushed, and redialed: the
    /// application sees it leave and come back. Returns whether it is new; for a peer that
    /// is persistent already only the address changes.
    ///
    /// # Errors
    /// [`PersistError::OwnId`], [`PersistError::TooMany`], [`PersistError::Durability`] (it
    /// is durable already), [`PersistError::Store`] if the data directory refused the change,
    /// [`PersistError::Closed`] after shutdown.
    pub async fn add_persistent_peer(
        &self,
        addr: SocketAddr,
        id: PeerId,
    ) -> Result<bool, PersistError> {
        self.persist(PersistentPeer {
            addr,
            id,
            durable: false,
        })
        .await
    }

    /// [`Network::add_persistent_peer`] for a durable peer ([`crate::Config::durable_peer`]):
    /// every message accepted for it is written to the data directory first, and delivered
    /// after this node's own crash and restart.
    ///
    /// # Errors
    /// As [`Network::add_persistent_peer`], and [`PersistError::NoDataDir`].
    pub async fn add_durable_peer(
        &self,
        addr: SocketAddr,
        id: PeerId,
    ) -> Result<bool, PersistError> {
        self.persist(PersistentPeer {
            addr,
            id,
            durable: true,
        })
        .await
    }

    async fn persist(&self, peer: PersistentPeer) -> Result<bool, PersistError> {
        if peer.id == self.shared.local_id {
            return Err(PersistError::OwnId(peer.id));
        }
        let store = self.shared.store.clone();
        if peer.durable && store.is_none() {
            return Err(PersistError::NoDataDir);
        }
        let mut persistence = self.shared.persistence.lock().await;
        let known = persistence.peers.get(&peer.id).copied();
        match known {
            Some(known) if known.durable != peer.durable => {
                return Err(PersistError::Durability {
                    peer: peer.id,
                    durable: known.durable,
                });
            }
            None if persistence.peers.len() >= MAX_PERSISTENT_PEERS => {
                return Err(PersistError::TooMany {
                    max: MAX_PERSISTENT_PEERS,
                });
            }
            _ => {}
        }
        // On disk first, so a failure changes nothing; the disk is not touched on a tokio
        // worker.
        let maker = persistence.maker.clone();
        let stream = blocking(move || {
            if let Some(store) = &store {
                store.put_persistent(&peer.id, peer.addr, peer.durable)?;
            }
            match known {
                Some(_) => Ok(None),
                None => maker
                    .make(peer.id, peer.durable)
                    .map(Some)
                    .inspect_err(|_| {
                        // Its streams could not be made: it is not kept either.
                        if let Some(store) = &store {
                            let _ = store.remove_persistent(&peer.id);
                        }
                    }),
            }
        })
        .await?;
        if let Some(stream) = stream {
            self.shared.reliable.write().insert(peer.id, stream);
        }
        persistence.peers.insert(peer.id, peer);
        let (addr, id) = (peer.addr, peer.id);
        self.request(|reply| Command::Persist { addr, id, reply })
            .await?;
        Ok(known.is_none())
    }

    /// Stops keeping `id` connected: it is no longer redialed, and the messages accepted for
    /// it and not yet acknowledged are let go (counted in
    /// [`crate::NetworkStats::persistent_removed`] and `peerwire_dropped_total`); a durable
    /// peer's are deleted from the data directory. An open connection, which carries the
    /// numbered streams, is closed gracefully (the application sees the peer leave); the peer
    /// may connect again, as an ordinary one. A peer from the `Config` comes back at the next
    /// start unless it is taken out of the `Config` too. Returns whether it was persistent.
    ///
    /// # Errors
    /// [`PersistError::Store`] if the data directory refused the change (the peer is then
    /// still persistent), [`PersistError::Closed`] after shutdown.
    pub async fn remove_persistent_peer(&self, id: PeerId) -> Result<bool, PersistError> {
        let mut persistence = self.shared.persistence.lock().await;
        if !persistence.peers.contains_key(&id) {
            return Ok(false);
        }
        if let Some(store) = self.shared.store.clone() {
            blocking(move || store.remove_persistent(&id).map(|_| ())).await?;
        }
        persistence.peers.remove(&id);
        // The connection goes first (unpublished, closing): until the streams are taken out
        // below, sends still go into them, so nothing is ever queued on that connection
        // outside its numbered streams.
        let closed = self.request(|reply| Command::Unpersist { id, reply }).await;
        let stream = self.shared.reliable.write().remove(&id);
        if let Some(stream) = stream {
            let dropped = stream.close().await;
            self.shared
                .counters
                .persistent_removed
                .add(u64::try_from(dropped).unwrap_or(u64::MAX));
        }
        closed?;
        Ok(true)
    }

    /// The persistent peers now: configured, kept from an earlier run, and added since.
    pub async fn persistent_peers(&self) -> Vec<PersistentPeer> {
        let mut peers: Vec<PersistentPeer> = self
            .shared
            .persistence
            .lock()
            .await
            .peers
            .values()
            .copied()
            .collect();
        peers.sort_by_key(|p| *p.id.as_bytes());
        peers
    }
}

/// Runs `work` (which touches the disk) on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, PersistError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(PersistError::from),
        // Only a panic in `work` gets here, or a runtime shutting down.
        Err(_) => Err(PersistError::Closed),
    }
}
