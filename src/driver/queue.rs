//! The bounded per-peer send queue between senders (any task or thread) and the socket's writer.
//!
//! Two lanes: control messages (always served first) and encoded application messages. Senders
//! push under a short lock and signal the writer through a [`Notify`], which stores the wake-up if
//! the writer is busy, so a push never blocks on the writer and no wake-up is lost. The data lane
//! is bounded by message count and by bytes; when full, `try_push` fails at once and `push`
//! waits for room. A graceful close stops new pushes, lets the writer flush what was accepted,
//! and then send the goodbye.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::{ControlMessage, GoodbyeReason};

/// Largest number of control messages waiting; beyond it, new control messages are dropped
/// (pings are retried by their sender, and only one goodbye is ever sent).
pub(crate) const CONTROL_CAPACITY: usize = 64;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The data lane is at its message or byte limit.
    Full,
    /// The queue is closing or closed; the connection is going away.
    Closed,
}

#[derive(Debug, Default)]
struct Lanes {
    data: VecDeque<Bytes>,
    data_bytes: usize,
    control: VecDeque<ControlMessage>,
    /// Set by a graceful close: the goodbye to send once the data lane is flushed.
    goodbye: Option<GoodbyeReason>,
    closed: bool,
    /// When a push first found the lane full since the writer last caught up.
    full_since: Option<Instant>,
    /// The latest acknowledgement to send for the peer's reliable stream; later ones replace
    /// earlier ones, so acknowledgements never pile up.
    ack: Option<u64>,
    /// The last acknowledgement taken by the writer (to skip repeats).
    sent_ack: Option<u64>,
}

/// A refused push: why, and the message back.
pub(crate) type Refused = (PushError, Bytes);

/// What the writer takes from the queue in one go.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) control: Vec<ControlMessage>,
    pub(crate) data: Vec<Bytes>,
    /// The queue is closing and the data lane is now empty: send this goodbye and stop.
    pub(crate) goodbye: Option<GoodbyeReason>,
    /// The queue was closed hard: stop without a goodbye.
    pub(crate) closed: bool,
}

/// A bounded two-lane queue; see the module docs.
#[derive(Debug)]
pub(crate) struct SendQueue {
    lanes: Mutex<Lanes>,
    /// Wakes the writer: something was queued or the queue is closing.
    writer_wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
    capacity: usize,
    max_bytes: usize,
}

impl SendQueue {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            lanes: Mutex::new(Lanes::default()),
            writer_wake: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn try_push_locked(&self, lanes: &mut Lanes, message: Bytes) -> Result<(), Refused> {
        if lanes.closed || lanes.goodbye.is_some() {
            return Err((PushError::Closed, message));
        }
        // One message is always accepted into an empty lane, so any message up to
        // `max_message_size` can be sent even if it exceeds the byte limit alone.
        let fits = lanes.data.is_empty()
            || (lanes.data.len() < self.capacity
                && lanes.data_bytes + message.len() <= self.max_bytes);
        if !fits {
            lanes.full_since.get_or_insert_with(Instant::now);
            return Err((PushError::Full, message));
        }
        lanes.data_bytes += message.len();
        lanes.data.push_back(message);
        Ok(())
    }

    /// Queues an encoded message without waiting; a refused message is handed back.
    pub(crate) fn try_push(&self, message: Bytes) -> Result<(), Refused> {
        self.try_push_locked(&mut self.lanes.lock(), message)?;
        self.writer_wake.notify_one();
        Ok(())
    }

    /// Queues an encoded message, waiting for room while the lane is full.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before it returns, the message was not queued.
    pub(crate) async fn push(&self, mut message: Bytes) -> Result<(), PushError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Register interest before checking, so a wake-up between check and await is kept.
            room.as_mut().enable();
            match self.try_push(message) {
                Ok(()) => return Ok(()),
                Err((PushError::Full, back)) => {
                    message = back;
                    room.await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Queues a control message ahead of all data. Returns false if it was dropped because the
    /// control lane was full or the queue is closed.
    pub(crate) fn push_control(&self, message: ControlMessage) -> bool {
        {
            let mut lanes = self.lanes.lock();
            if lanes.closed || lanes.control.len() >= CONTROL_CAPACITY {
                return false;
            }
            lanes.control.push_back(message);
        }
        self.writer_wake.notify_one();
        true
    }

    /// Takes control messages first, then data up to about `max_bytes`.
    pub(crate) fn take_batch(&self, max_bytes: usize, batch: &mut Batch) {
        let mut freed = false;
        {
            let mut lanes = self.lanes.lock();
            batch.control.extend(lanes.control.drain(..));
            if let Some(next) = lanes.ack.take() {
                lanes.sent_ack = Some(next);
                batch.control.push(ControlMessage::Ack { next });
            }
            let mut taken = 0;
            while let Some(front) = lanes.data.front() {
                if taken > 0 && taken + front.len() > max_bytes {
                    break;
                }
                taken += front.len();
                if let Some(message) = lanes.data.pop_front() {
                    batch.data.push(message);
                }
                freed = true;
            }
            lanes.data_bytes -= taken;
            if lanes.data.is_empty() {
                lanes.full_since = None;
                if batch.control.is_empty() {
                    batch.goodbye = lanes.goodbye;
                }
            }
            batch.closed = lanes.closed;
        }
        if freed {
            self.room.notify_waiters();
        }
    }

    /// Wakes the writer (new reliable data, or a rewind).
    pub(crate) fn wake(&self) {
        self.writer_wake.notify_one();
    }

    /// Sets the acknowledgement to send next, replacing one not yet sent, so acknowledgements
    /// never pile up.
    pub(crate) fn set_ack(&self, next: u64) {
        {
            let mut lanes = self.lanes.lock();
            if lanes.closed || lanes.sent_ack == Some(next) {
                return;
            }
            lanes.ack = Some(next);
        }
        self.writer_wake.notify_one();
    }

    /// Takes only the waiting control messages (used between fragments of a large message).
    pub(crate) fn take_control(&self, batch: &mut Batch) {
        batch.control.extend(self.lanes.lock().control.drain(..));
    }

    /// Waits until the writer has something to do.
    ///
    /// # Cancel safety
    /// Cancel safe: a stored wake-up is kept for the next call.
    pub(crate) async fn wait_for_work(&self) {
        self.writer_wake.notified().await;
    }

    /// How long senders have found the data lane full without the writer catching up.
    pub(crate) fn full_for(&self) -> Option<Duration> {
        self.lanes.lock().full_since.map(|t| t.elapsed())
    }

    /// Stops accepting data and asks the writer to flush, then send `reason` and stop.
    pub(crate) fn close_gracefully(&self, reason: GoodbyeReason) {
        {
            let mut lanes = self.lanes.lock();
            if lanes.closed || lanes.goodbye.is_some() {
                return;
            }
            lanes.goodbye = Some(reason);
        }
        self.writer_wake.notify_one();
        self.room.notify_waiters();
    }

    /// Closes the queue at once; returns how many accepted data messages were never written.
    pub(crate) fn close(&self) -> usize {
        let dropped = {
            let mut lanes = self.lanes.lock();
            lanes.closed = true;
            lanes.data_bytes = 0;
            lanes.control.clear();
            std::mem::take(&mut lanes.data).len()
        };
        self.writer_wake.notify_one();
        self.room.notify_waiters();
        dropped
    }

    /// Messages and bytes waiting in the data lane.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let lanes = self.lanes.lock();
        (lanes.data.len(), lanes.data_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn bounded_by_count_and_bytes_but_one_message_always_fits() {
        let q = SendQueue::new(2, 100);
        assert!(q.try_push(msg(500)).is_ok()); // alone, larger than the byte limit
        assert_eq!(q.try_push(msg(1)).unwrap_err().0, PushError::Full);
        let mut b = Batch::default();
        q.take_batch(1 << 20, &mut b);
        assert_eq!(b.data.len(), 1);
        assert!(q.try_push(msg(10)).is_ok());
        assert!(q.try_push(msg(10)).is_ok());
        assert_eq!(q.try_push(msg(10)).unwrap_err().0, PushError::Full); // count limit
        assert!(q.full_for().is_some());
    }

    #[test]
    fn control_comes_first_and_goodbye_after_data() {
        let q = SendQueue::new(10, 1000);
        q.try_push(msg(1)).unwrap();
        q.push_control(ControlMessage::Ping { nonce: 1 });
        q.close_gracefully(GoodbyeReason::Shutdown);
        assert_eq!(q.try_push(msg(1)).unwrap_err().0, PushError::Closed);
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert_eq!(b.control, vec![ControlMessage::Ping { nonce: 1 }]);
        assert_eq!(b.data.len(), 1);
        // Control was in this batch, so the goodbye waits for the next one.
        assert_eq!(b.goodbye, None);
        let mut b2 = Batch::default();
        q.take_batch(1000, &mut b2);
        assert_eq!(b2.goodbye, Some(GoodbyeReason::Shutdown));
    }

    #[test]
    fn hard_close_reports_dropped_messages() {
        let q = SendQueue::new(10, 1000);
        q.try_push(msg(1)).unwrap();
        q.try_push(msg(1)).unwrap();
        assert_eq!(q.close(), 2);
        assert_eq!(q.try_push(msg(1)).unwrap_err().0, PushError::Closed);
        assert!(!q.push_control(ControlMessage::Ping { nonce: 0 }));
    }

    #[tokio::test]
    async fn waiting_push_resumes_when_writer_drains() {
        let q = std::sync::Arc::new(SendQueue::new(1, 1000));
        q.try_push(msg(1)).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push(msg(2)).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(q.depth(), (1, 2));
    }

    #[tokio::test]
    async fn waiting_push_fails_when_queue_closes() {
        let q = std::sync::Arc::new(SendQueue::new(1, 1000));
        q.try_push(msg(1)).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push(msg(2)).await });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), Err(PushError::Closed));
    }
}
