//! Channel inboxes: decoded messages tagged with their proven sender, one bounded inbox per
//! channel.
//!
//! Readers hand messages over with a non-blocking push, so a slow application never stalls a
//! socket (and so never stalls pings, acknowledgements or other channels). Each inbox is bounded
//! by count and by encoded bytes; when either is reached, new messages are dropped and counted
//! per peer and channel as `dropped_inbox_full` (a persistent peer resends them, see
//! `session::inbound`).
//!
//! Decoding runs on the read task, in parallel per peer, through the channel's [`Slot`]: once
//! the application has opened the channel with its message type, the slot holds a typed sink
//! that decodes and pushes. Before that, the slot keeps the raw bytes in a backlog (within the
//! same bounds), which the typed [`Inbox`] decodes first when it is opened, so what arrives
//! early is neither lost nor reordered.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::codec::decode_message;
use crate::identity::PeerId;
use crate::session::inbound::Delivered;

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

/// Bytes that arrived on a channel before the application opened it.
struct Backlog<M> {
    /// Decodes the channel's type (fixed when the channel was opened).
    decode: fn(&[u8]) -> Option<M>,
    rx: mpsc::Receiver<Delivery<Bytes>>,
    bytes: Arc<AtomicUsize>,
    /// Backlog messages that did not decode as the channel's type (dropped and counted).
    undecodable: Arc<AtomicU64>,
}

/// Receives `(sender, message)` pairs on one channel from every peer, in per-peer order.
///
/// `recv` returns `None` once the network has shut down and the inbox is drained.
pub struct Inbox<M> {
    rx: mpsc::Receiver<Delivery<M>>,
    bytes: Arc<AtomicUsize>,
    backlog: Option<Backlog<M>>,
}

impl<M> std::fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("queued", &self.rx.len())
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .field("backlog", &self.backlog.as_ref().map(|b| b.rx.len()))
            .finish()
    }
}

impl<M> Inbox<M> {
    fn take(&self, d: Delivery<M>) -> (PeerId, M) {
        self.bytes.fetch_sub(d.size, Ordering::Relaxed);
        (d.peer, d.message)
    }

    /// The next message of the backlog (what arrived before the channel was opened), if any.
    fn next_early(&mut self) -> Option<(PeerId, M)> {
        let backlog = self.backlog.as_mut()?;
        loop {
            match backlog.rx.try_recv() {
                Ok(d) => {
                    backlog.bytes.fetch_sub(d.size, Ordering::Relaxed);
                    match (backlog.decode)(&d.message) {
                        Some(message) => return Some((d.peer, message)),
                        None => {
                            backlog.undecodable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // No sender is left once the channel is open: the backlog is done.
                Err(_) => {
                    self.backlog = None;
                    return None;
                }
            }
        }
    }

    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<(PeerId, M)> {
        if let Some(early) = self.next_early() {
            return Some(early);
        }
        let d = self.rx.recv().await?;
        Some(self.take(d))
    }

    /// Takes the next message without waiting, for engines with a synchronous loop.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting, [`TryRecvError::Closed`] after shutdown.
    pub fn try_recv(&mut self) -> Result<(PeerId, M), TryRecvError> {
        if let Some(early) = self.next_early() {
            return Ok(early);
        }
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
        let mut early = 0;
        while early < limit {
            match self.next_early() {
                Some(item) => {
                    out.push(item);
                    early += 1;
                }
                None => break,
            }
        }
        if early > 0 {
            return early;
        }
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
        self.rx.len() + self.backlog.as_ref().map_or(0, |b| b.rx.len())
    }

    /// Whether no message is waiting now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a delivery into an inbox failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliverError {
    Full,
    Closed,
}

/// The sending half of one inbox.
struct InboxSender<M> {
    tx: mpsc::Sender<Delivery<M>>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl<M> InboxSender<M> {
    /// Pushes without waiting; `size` is the encoded size, charged against the byte bound.
    fn try_deliver(&self, peer: PeerId, message: M, size: usize) -> Result<(), DeliverError> {
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

fn channel<M>(
    capacity: usize,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
) -> (InboxSender<M>, mpsc::Receiver<Delivery<M>>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        InboxSender {
            tx,
            bytes,
            max_bytes,
        },
        rx,
    )
}

impl From<Result<(), DeliverError>> for Delivered {
    fn from(result: Result<(), DeliverError>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(DeliverError::Full) => Self::Full,
            Err(DeliverError::Closed) => Self::Closed,
        }
    }
}

/// Decodes and delivers one channel's messages on the read task.
trait Sink: Send + Sync {
    fn deliver(&self, peer: PeerId, bytes: Bytes) -> Delivered;
}

impl<M: DeserializeOwned + Send> Sink for InboxSender<M> {
    fn deliver(&self, peer: PeerId, bytes: Bytes) -> Delivered {
        match decode_message::<M>(&bytes) {
            Ok(message) => self.try_deliver(peer, message, bytes.len()).into(),
            Err(violation) => Delivered::Undecodable(violation),
        }
    }
}

/// A backlog before its type is known.
struct RawBacklog {
    rx: mpsc::Receiver<Delivery<Bytes>>,
    undecodable: Arc<AtomicU64>,
}

/// One channel's delivery point, shared by every reader; see the module docs.
pub(crate) struct Slot {
    typed: OnceLock<Box<dyn Sink>>,
    /// Until the channel is opened: the backlog's sender, and its receiver to hand over.
    raw: Mutex<Option<(InboxSender<Bytes>, RawBacklog)>>,
    capacity: usize,
    max_bytes: usize,
    bytes: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("open", &self.typed.get().is_some())
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl Slot {
    /// A channel slot bounded by `capacity` messages and `max_bytes` encoded bytes, keeping a
    /// backlog until it is opened.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        let bytes = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel::<Bytes>(capacity, bytes.clone(), max_bytes);
        let backlog = RawBacklog {
            rx,
            undecodable: Arc::new(AtomicU64::new(0)),
        };
        Self {
            typed: OnceLock::new(),
            raw: Mutex::new(Some((tx, backlog))),
            capacity,
            max_bytes,
            bytes,
        }
    }

    /// A slot opened for `M` from the start (the default channel, whose type `start` knows).
    pub(crate) fn opened<M: DeserializeOwned + Send + 'static>(
        capacity: usize,
        max_bytes: usize,
    ) -> (Self, Inbox<M>) {
        let bytes = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel::<M>(capacity, bytes.clone(), max_bytes);
        let typed = OnceLock::new();
        let _ = typed.set(Box::new(tx) as Box<dyn Sink>);
        let slot = Self {
            typed,
            raw: Mutex::new(None),
            capacity,
            max_bytes,
            bytes: bytes.clone(),
        };
        let inbox = Inbox {
            rx,
            bytes,
            backlog: None,
        };
        (slot, inbox)
    }

    /// Opens the channel for message type `M`: from now on readers decode into the returned
    /// inbox, which first yields the backlog. `None` if it was opened before.
    pub(crate) fn open<M: DeserializeOwned + Send + 'static>(&self) -> Option<Inbox<M>> {
        let mut raw = self.raw.lock();
        let (raw_tx, backlog) = raw.take()?;
        let (tx, rx) = channel::<M>(self.capacity, self.bytes.clone(), self.max_bytes);
        // Installed before the backlog's sender goes, under the lock readers take for the
        // backlog: each reader's later messages go to the typed inbox, after its earlier ones.
        let _ = self.typed.set(Box::new(tx));
        drop(raw_tx);
        Some(Inbox {
            rx,
            bytes: self.bytes.clone(),
            backlog: Some(Backlog {
                decode: |bytes| decode_message::<M>(bytes).ok(),
                rx: backlog.rx,
                bytes: self.bytes.clone(),
                undecodable: backlog.undecodable,
            }),
        })
    }

    /// Hands one encoded message from `peer` to the channel.
    pub(crate) fn deliver(&self, peer: PeerId, bytes: Bytes) -> Delivered {
        if let Some(sink) = self.typed.get() {
            return sink.deliver(peer, bytes);
        }
        let raw = self.raw.lock();
        match (raw.as_ref(), self.typed.get()) {
            (_, Some(sink)) => sink.deliver(peer, bytes),
            (Some((tx, _)), None) => {
                let size = bytes.len();
                tx.try_deliver(peer, bytes, size).into()
            }
            // Opened and typed is set before raw is taken, so this cannot be reached.
            (None, None) => Delivered::Closed,
        }
    }

    /// Encoded bytes waiting in this channel's inbox (and backlog).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use crate::codec::encode_message;

    fn enc(v: u8) -> Bytes {
        encode_message(&v, 100).unwrap()
    }

    #[test]
    fn bounded_by_count_and_bytes_and_reports_closed() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(2, 4);
        let mut rx = slot.open::<u8>().unwrap();
        assert!(slot.open::<u8>().is_none(), "a channel opens once");
        assert_eq!(slot.deliver(peer, enc(1)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, enc(2)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, enc(9)), Delivered::Full); // count
        assert_eq!(rx.try_recv(), Ok((peer, 1)));
        assert_eq!(rx.try_recv(), Ok((peer, 2)));
        let big = Slot::new(8, 5);
        let mut vec_rx = big.open::<Vec<u8>>().unwrap();
        let vec_enc = |n: usize| encode_message(&vec![7u8; n], 100).unwrap();
        assert_eq!(big.deliver(peer, vec_enc(2)), Delivered::Ok); // 3 bytes
        assert_eq!(big.deliver(peer, vec_enc(2)), Delivered::Full); // 6 > 5 bytes
        assert_eq!(vec_rx.try_recv(), Ok((peer, vec![7, 7])));
        assert_eq!(slot.deliver(peer, enc(3)), Delivered::Ok);
        assert!(matches!(
            slot.deliver(peer, Bytes::from_static(&[])),
            Delivered::Undecodable(_)
        ));
        assert_eq!(rx.try_recv(), Ok((peer, 3)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(slot);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn messages_before_open_wait_in_the_backlog_in_order() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(3, 100);
        assert_eq!(slot.deliver(peer, enc(1)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, enc(2)), Delivered::Ok);
        assert_eq!(
            slot.deliver(peer, Bytes::from_static(&[1, 2])),
            Delivered::Ok
        );
        assert_eq!(
            slot.deliver(peer, enc(9)),
            Delivered::Full,
            "backlog bounded too"
        );
        let mut rx = slot.open::<u8>().unwrap();
        assert_eq!(slot.deliver(peer, enc(3)), Delivered::Ok);
        let got: Vec<u8> = std::iter::from_fn(|| rx.try_recv().ok().map(|(_, m)| m)).collect();
        // The undecodable early message is dropped (and counted), the rest keep their order.
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(slot.bytes(), 0);
    }
}
