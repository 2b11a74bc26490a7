//! The bounded per-peer send queue between senders (any task or thread) and the connection's
//! writer.
//!
//! A control lane (always served first) and one data lane per channel (see
//! [`crate::session::outbound::Lanes`], which also orders channels by priority). Senders push
//! under a short lock and signal the writer through a [`Notify`], which stores the wake-up if the
//! writer is busy, so a push never blocks on the writer and no wake-up is lost. Each data lane is
//! bounded by message count and by bytes; when full, `try_push` fails at once and `push` waits
//! for room, at most `send_wait`. A lane whose wait ran out is *stalled*: further pushes to it
//! fail at once until the writer takes from the queue again, so a peer that stops reading costs
//! each sender one bounded wait, not one per message. A graceful close stops new pushes, lets the
//! writer flush what was accepted, and then send the goodbye.

use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::{ControlMessage, GoodbyeReason};
use crate::session::outbound::{Lanes, Piece, Refusal};

/// Largest number of control messages waiting; beyond it, new control messages are dropped
/// (pings are retried by their sender, and only one goodbye is ever sent).
pub(crate) const CONTROL_CAPACITY: usize = 64;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The channel's lane is at its message or byte limit (for a waiting push: it stayed so
    /// until the deadline).
    Full,
    /// The lane is full and stalled (a wait already ran out with no progress since): refused
    /// without waiting.
    Stalled,
    /// The queue is closing or closed; the connection is going away.
    Closed,
}

#[derive(Debug)]
struct State {
    data: Lanes,
    /// Channel ids by lane index, for acknowledgements.
    channel_ids: Vec<u16>,
    control: std::collections::VecDeque<ControlMessage>,
    /// Set by a graceful close: the goodbye to send once the data lanes are flushed.
    goodbye: Option<GoodbyeReason>,
    closed: bool,
    /// When a push first found a lane full since the writer last took anything.
    full_since: Option<Instant>,
    /// Lanes whose wait for room ran out since the writer last took anything.
    stalled: Vec<bool>,
    /// Per lane: the latest acknowledgement to send for the peer's reliable stream on that
    /// channel; later ones replace earlier ones, so acknowledgements never pile up.
    ack: Vec<Option<u64>>,
    /// Per lane: the last acknowledgement taken by the writer (to skip repeats).
    sent_ack: Vec<Option<u64>>,
}

/// A refused push: why, and the message back.
pub(crate) type Refused = (PushError, Bytes);

/// What the writer takes from the queue in one go.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) control: Vec<ControlMessage>,
    pub(crate) data: Vec<Piece>,
    /// The queue is closing and the data lanes are now empty: send this goodbye and stop.
    pub(crate) goodbye: Option<GoodbyeReason>,
    /// The queue was closed hard: stop without a goodbye.
    pub(crate) closed: bool,
}

/// One lane's bounds and round-robin weight, by channel index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneSpec {
    pub(crate) channel: u16,
    pub(crate) capacity: usize,
    pub(crate) max_bytes: usize,
    pub(crate) weight: usize,
}

/// A bounded control lane plus one bounded data lane per channel; see the module docs.
#[derive(Debug)]
pub(crate) struct SendQueue {
    state: Mutex<State>,
    /// Wakes the writer: something was queued or the queue is closing.
    writer_wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

impl SendQueue {
    pub(crate) fn new(lanes: &[LaneSpec]) -> Self {
        let bounds: Vec<_> = lanes
            .iter()
            .map(|l| (l.capacity, l.max_bytes, l.weight))
            .collect();
        Self {
            state: Mutex::new(State {
                data: Lanes::new(&bounds),
                channel_ids: lanes.iter().map(|l| l.channel).collect(),
                control: Default::default(),
                goodbye: None,
                closed: false,
                full_since: None,
                stalled: vec![false; lanes.len()],
                ack: vec![None; lanes.len()],
                sent_ack: vec![None; lanes.len()],
            }),
            writer_wake: Notify::new(),
            room: Notify::new(),
        }
    }

    fn try_push_locked(state: &mut State, lane: usize, message: Bytes) -> Result<(), Refused> {
        if state.closed || state.goodbye.is_some() {
            return Err((PushError::Closed, message));
        }
        if state.stalled.get(lane).copied().unwrap_or(false) {
            return Err((PushError::Stalled, message));
        }
        state
            .data
            .push(lane, message)
            .map_err(|(refusal, message)| {
                match refusal {
                    // The clock is read only when the lane is full, never on the hot path.
                    Refusal::Full => {
                        state.full_since.get_or_insert_with(Instant::now);
                    }
                    // Callers resolve lanes from the channel table the queue was built from.
                    Refusal::NoSuchChannel => {}
                }
                (PushError::Full, message)
            })
    }

    /// Queues an encoded message on lane `lane` without waiting; a refused message is handed
    /// back.
    pub(crate) fn try_push(&self, lane: usize, message: Bytes) -> Result<(), Refused> {
        Self::try_push_locked(&mut self.state.lock(), lane, message)?;
        self.writer_wake.notify_one();
        Ok(())
    }

    /// Queues an encoded message, waiting for room while the lane is full, until `deadline`.
    /// When the wait runs out the lane is marked stalled (see the module docs).
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
                        if let Some(stalled) = self.state.lock().stalled.get_mut(lane) {
                            *stalled = true;
                        }
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
        {
            let mut state = self.state.lock();
            if state.closed || state.control.len() >= CONTROL_CAPACITY {
                return false;
            }
            state.control.push_back(message);
        }
        self.writer_wake.notify_one();
        true
    }

    /// Takes control messages first, then pieces of data in channel priority order up to about
    /// `max_bytes`.
    pub(crate) fn take_batch(&self, max_bytes: usize, batch: &mut Batch) {
        let freed;
        {
            let mut state = self.state.lock();
            let state = &mut *state;
            batch.control.extend(state.control.drain(..));
            for (lane, ack) in state.ack.iter_mut().enumerate() {
                if let Some(next) = ack.take() {
                    state.sent_ack[lane] = Some(next);
                    batch.control.push(ControlMessage::Ack {
                        channel: state.channel_ids[lane],
                        next,
                    });
                }
            }
            let before = batch.data.len();
            freed = state.data.take(max_bytes, &mut batch.data);
            if batch.data.len() > before {
                // Progress: senders may wait for room again.
                state.full_since = None;
                state.stalled.iter_mut().for_each(|s| *s = false);
            }
            if state.data.is_empty() {
                state.full_since = None;
                if batch.control.is_empty() {
                    batch.goodbye = state.goodbye;
                }
            }
            batch.closed = state.closed;
        }
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
        {
            let mut state = self.state.lock();
            if state.closed || state.sent_ack.get(lane) == Some(&Some(next)) {
                return;
            }
            if let Some(ack) = state.ack.get_mut(lane) {
                *ack = Some(next);
            }
        }
        self.writer_wake.notify_one();
    }

    /// Takes only the waiting control messages (used between fragments of a large message).
    pub(crate) fn take_control(&self, batch: &mut Batch) {
        batch.control.extend(self.state.lock().control.drain(..));
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
        self.state.lock().full_since.map(|t| t.elapsed())
    }

    /// Stops accepting data and asks the writer to flush, then send `reason` and stop.
    pub(crate) fn close_gracefully(&self, reason: GoodbyeReason) {
        {
            let mut state = self.state.lock();
            if state.closed || state.goodbye.is_some() {
                return;
            }
            state.goodbye = Some(reason);
        }
        self.writer_wake.notify_one();
        self.room.notify_waiters();
    }

    /// Closes the queue at once; returns how many accepted data messages were never written.
    pub(crate) fn close(&self) -> usize {
        let dropped = {
            let mut state = self.state.lock();
            state.closed = true;
            state.control.clear();
            state.data.clear()
        };
        self.writer_wake.notify_one();
        self.room.notify_waiters();
        dropped
    }

    /// Messages and bytes waiting in all data lanes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        self.state.lock().data.depth()
    }

    /// Messages and bytes waiting in lane `lane`.
    pub(crate) fn depth_of(&self, lane: usize) -> (usize, usize) {
        self.state.lock().data.depth_of(lane)
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

    #[test]
    fn control_comes_first_and_goodbye_after_data() {
        let q = queue(10, 1000);
        q.try_push(0, msg(1)).unwrap();
        q.push_control(ControlMessage::Ping { nonce: 1 });
        q.close_gracefully(GoodbyeReason::Shutdown);
        assert_eq!(q.try_push(0, msg(1)).unwrap_err().0, PushError::Closed);
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
        let q = queue(10, 1000);
        q.try_push(0, msg(1)).unwrap();
        q.try_push(0, msg(1)).unwrap();
        assert_eq!(q.close(), 2);
        assert_eq!(q.try_push(0, msg(1)).unwrap_err().0, PushError::Closed);
        assert!(!q.push_control(ControlMessage::Ping { nonce: 0 }));
    }

    #[test]
    fn acks_are_per_channel_and_coalesced() {
        let q = SendQueue::new(&[
            LaneSpec {
                channel: 0,
                capacity: 1,
                max_bytes: 1,
                weight: 2,
            },
            LaneSpec {
                channel: 7,
                capacity: 1,
                max_bytes: 1,
                weight: 1,
            },
        ]);
        q.set_ack(1, 3);
        q.set_ack(1, 5);
        q.set_ack(0, 2);
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert_eq!(
            b.control,
            vec![
                ControlMessage::Ack {
                    channel: 0,
                    next: 2
                },
                ControlMessage::Ack {
                    channel: 7,
                    next: 5
                },
            ]
        );
        q.set_ack(1, 5); // already sent: not repeated
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert!(b.control.is_empty());
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
