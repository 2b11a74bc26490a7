//! The application inbox: decoded messages tagged with their proven sender.
//!
//! Readers hand messages over with a non-blocking push, so a slow application never stalls a
//! socket (and so never stalls pings or other peers). The inbox is bounded by count
//! ([`crate::Config::inbox_capacity`]) and by encoded bytes ([`crate::Config::inbox_bytes`]);
//! when either is reached, new messages are dropped and counted per peer as
//! `dropped_inbox_full`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::identity::PeerId;

struct Delivery<M> {
    peer: PeerId,
    message: M,
    size: usize,
}

/// Why [`Inbox::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No message is waiting now.
    #[error("inbox is empty")]
    Empty,
    /// The network has shut down and every message has been received.
    #[error("network is shut down")]
    Closed,
}

/// Receives `(sender, message)` pairs from every peer, in per-peer order.
///
/// `recv` returns `None` once the network has shut down and the inbox is drained.
pub struct Inbox<M> {
    rx: mpsc::Receiver<Delivery<M>>,
    bytes: Arc<AtomicUsize>,
}

impl<M> std::fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("queued", &self.rx.len())
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl<M> Inbox<M> {
    fn take(&self, d: Delivery<M>) -> (PeerId, M) {
        self.bytes.fetch_sub(d.size, Ordering::Relaxed);
        (d.peer, d.message)
    }

    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<(PeerId, M)> {
        let d = self.rx.recv().await?;
        Some(self.take(d))
    }

    /// Takes the next message without waiting, for engines with a synchronous loop.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting, [`TryRecvError::Closed`] after shutdown.
    pub fn try_recv(&mut self) -> Result<(PeerId, M), TryRecvError> {
        match self.rx.try_recv() {
            Ok(d) => Ok(self.take(d)),
            Err(mpsc::error::TryRecvError::Empty) => Err(TryRecvError::Empty),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(TryRecvError::Closed),
        }
    }

    /// Waits for at least one message, then moves up to `limit` into `out`; returns how many
    /// (0 only after shutdown). Cheaper per message than `recv` under load.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv_many(&mut self, out: &mut Vec<(PeerId, M)>, limit: usize) -> usize {
        let mut batch = Vec::with_capacity(limit.min(1024));
        let n = self.rx.recv_many(&mut batch, limit).await;
        let mut bytes = 0;
        out.extend(batch.into_iter().map(|d| {
            bytes += d.size;
            (d.peer, d.message)
        }));
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        n
    }

    /// Messages waiting now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is waiting now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// Why a delivery into the inbox failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliverError {
    Full,
    Closed,
}

/// The sending half, cloned into every socket reader.
pub(crate) struct InboxSender<M> {
    tx: mpsc::Sender<Delivery<M>>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl<M> Clone for InboxSender<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            max_bytes: self.max_bytes,
        }
    }
}

impl<M> InboxSender<M> {
    /// Pushes without waiting; `size` is the encoded size, charged against the byte bound.
    pub(crate) fn try_deliver(
        &self,
        peer: PeerId,
        message: M,
        size: usize,
    ) -> Result<(), DeliverError> {
        if self.bytes.load(Ordering::Relaxed) + size > self.max_bytes {
            return if self.tx.is_closed() {
                Err(DeliverError::Closed)
            } else {
                Err(DeliverError::Full)
            };
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        match self.tx.try_send(Delivery {
            peer,
            message,
            size,
        }) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => Err(DeliverError::Full),
                    mpsc::error::TrySendError::Closed(_) => Err(DeliverError::Closed),
                }
            }
        }
    }
}

/// Creates a bounded inbox.
pub(crate) fn inbox<M>(capacity: usize, max_bytes: usize) -> (InboxSender<M>, Inbox<M>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        InboxSender {
            tx,
            bytes: bytes.clone(),
            max_bytes,
        },
        Inbox { rx, bytes },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn bounded_by_count_and_bytes_and_reports_closed() {
        let peer = Keypair::generate().peer_id();
        let (tx, mut rx) = inbox::<u8>(2, 100);
        assert_eq!(tx.try_deliver(peer, 1, 10), Ok(()));
        assert_eq!(tx.try_deliver(peer, 2, 95), Err(DeliverError::Full)); // bytes
        assert_eq!(tx.try_deliver(peer, 3, 10), Ok(()));
        assert_eq!(tx.try_deliver(peer, 4, 10), Err(DeliverError::Full)); // count
        assert_eq!(rx.try_recv(), Ok((peer, 1)));
        assert_eq!(rx.try_recv(), Ok((peer, 3)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
        let (tx, rx) = inbox::<u8>(2, 100);
        drop(rx);
        assert_eq!(tx.try_deliver(peer, 1, 1), Err(DeliverError::Closed));
    }
}
