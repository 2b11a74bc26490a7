//! The per-peer send queue as shared memory, between senders (any task or thread) and the
//! connection's writer: the pure [`OutboundQueue`] (lanes, priorities, acknowledgements, the
//! stalled mark, the goodbye-after-drain rule) behind a short lock, plus two [`Notify`]s. The
//! writer's stores its wake-up if the writer is busy, so a push never blocks on the writer and
//! no wake-up is lost; the other wakes senders waiting for room, at most until their deadline
//! (`send_wait`), after which the lane is marked stalled.

use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::{ControlMessage, GoodbyeReason};
use crate::session::queue::OutboundQueue;
pub(crate) use crate::session::queue::{Batch, LaneSpec, PushError, Refused};

/// The send queue of one connection; see the module docs.
#[derive(Debug)]
pub(crate) struct SendQueue {
    state: Mutex<OutboundQueue>,
    /// Wakes the writer: something was queued or the queue is closing.
    writer_wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

impl SendQueue {
    pub(crate) fn new(lanes: &[LaneSpec]) -> Self {
        Self {
            state: Mutex::new(OutboundQueue::new(lanes)),
            writer_wake: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Queues an encoded message on lane `lane` without waiting; a refused message is handed
    /// back.
    pub(crate) fn try_push(&self, lane: usize, message: Bytes) -> Result<(), Refused> {
        self.state.lock().try_push(lane, message, Instant::now)?;
        self.writer_wake.notify_one();
        Ok(())
    }

    /// Queues an encoded message, waiting for room while the lane is full, until `deadline`.
    /// When the wait runs out the lane is marked stalled (see `session::queue`).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before it returns, the message was not queued.
    pub(crate) async fn push(
        &self,
        lane: usize,
        mut message: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<(), Refused> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Register interest before checking, so a wake-up between check and await is kept.
            room.as_mut().enable();
            match self.try_push(lane, message) {
                Ok(()) => return Ok(()),
                Err((PushError::Full, back)) => {
                    message = back;
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        self.state.lock().mark_stalled(lane);
                        return Err((PushError::Full, message));
                    }
                }
                Err(refused) => return Err(refused),
            }
        }
    }

    /// Queues a control message ahead of all data. Returns false if it was dropped because the
    /// control lane was full or the queue is closed.
    pub(crate) fn push_control(&self, message: ControlMessage) -> bool {
        if !self.state.lock().push_control(message) {
            return false;
        }
        self.writer_wake.notify_one();
        true
    }

    /// Takes control messages first, then pieces of data in channel priority order up to about
    /// `max_bytes`.
    pub(crate) fn take_batch(&self, max_bytes: usize, batch: &mut Batch) {
        let freed = self.state.lock().take_batch(max_bytes, batch);
        if freed {
            self.room.notify_waiters();
        }
    }

    /// Wakes the writer (new reliable data, or a rewind).
    pub(crate) fn wake(&self) {
        self.writer_wake.notify_one();
    }

    /// Sets the acknowledgement to send next on lane `lane`, replacing one not yet sent, so
    /// acknowledgements never pile up.
    pub(crate) fn set_ack(&self, lane: usize, next: u64) {
        if self.state.lock().set_ack(lane, next) {
            self.writer_wake.notify_one();
        }
    }

    /// Takes only the waiting control messages (used between fragments of a large message).
    pub(crate) fn take_control(&self, batch: &mut Batch) {
        self.state.lock().take_control(batch);
    }

    /// Waits until the writer has something to do.
    ///
    /// # Cancel safety
    /// Cancel safe: a stored wake-up is kept for the next call.
    pub(crate) async fn wait_for_work(&self) {
        self.writer_wake.notified().await;
    }

    /// How long senders have found a data lane full without the writer taking anything.
    pub(crate) fn full_for(&self) -> Option<Duration> {
        self.state.lock().full_since().map(|t| t.elapsed())
    }

    /// Stops accepting data and asks the writer to flush, then send `reason` and stop.
    pub(crate) fn close_gracefully(&self, reason: GoodbyeReason) {
        if self.state.lock().close_gracefully(reason) {
            self.writer_wake.notify_one();
            self.room.notify_waiters();
        }
    }

    /// Closes the queue at once; returns how many accepted data messages were never written.
    pub(crate) fn close(&self) -> usize {
        let dropped = self.state.lock().close();
        self.writer_wake.notify_one();
        self.room.notify_waiters();
        dropped
    }

    /// Messages and bytes waiting in all data lanes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        self.state.lock().depth()
    }

    /// Messages and bytes waiting in lane `lane`.
    pub(crate) fn depth_of(&self, lane: usize) -> (usize, usize) {
        self.state.lock().depth_of(lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(60)
    }

    fn queue(capacity: usize, max_bytes: usize) -> SendQueue {
        SendQueue::new(&[LaneSpec {
            channel: 0,
            capacity,
            max_bytes,
            weight: 2,
        }])
    }

    #[tokio::test]
    async fn waiting_push_resumes_when_writer_drains() {
        let q = std::sync::Arc::new(queue(1, 1000));
        q.try_push(0, msg(1)).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push(0, msg(2), far()).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(q.depth(), (1, 2));
    }

    #[tokio::test]
    async fn waiting_push_fails_when_queue_closes() {
        let q = std::sync::Arc::new(queue(1, 1000));
        q.try_push(0, msg(1)).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push(0, msg(2), far()).await });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap().unwrap_err().0, PushError::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_bounded_and_then_the_lane_refuses_at_once_until_progress() {
        let q = queue(1, 1000);
        q.try_push(0, msg(1)).unwrap();
        let started = tokio::time::Instant::now();
        let refused = q
            .push(0, msg(2), started + Duration::from_millis(200))
            .await;
        assert_eq!(refused.unwrap_err().0, PushError::Full);
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        // Stalled: the next waiting push is refused without waiting.
        let again = tokio::time::Instant::now();
        assert_eq!(
            q.push(0, msg(3), far()).await.unwrap_err().0,
            PushError::Stalled
        );
        assert_eq!(again.elapsed(), Duration::ZERO);
        assert!(q.full_for().is_some());
        // The writer takes: progress clears the stall.
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert!(q.full_for().is_none());
        assert!(q.try_push(0, msg(4)).is_ok());
    }
}
