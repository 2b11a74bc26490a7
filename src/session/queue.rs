//! The rules of one connection's send queue, pure: a control lane always served first, one
//! bounded data lane per channel (ordered by [`super::outbound::Lanes`]), coalesced
//! acknowledgements per channel, the *stalled* mark, and the closing rules: a graceful close
//! refuses new data, lets what was accepted drain, and only then hands out the goodbye; a hard
//! close drops what is left and counts it. The driver's `SendQueue` puts this behind a lock and
//! adds the wake-ups; nothing here waits, locks or reads a clock (the caller passes `now`).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::outbound::{Lanes, Piece, Refusal};
use crate::codec::{ControlMessage, GoodbyeReason};

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

/// The state of one connection's send queue; see the module docs.
#[derive(Debug)]
pub(crate) struct OutboundQueue {
    data: Lanes,
    /// Channel ids by lane index, for acknowledgements.
    channel_ids: Vec<u16>,
    control: VecDeque<ControlMessage>,
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

impl OutboundQueue {
    pub(crate) fn new(lanes: &[LaneSpec]) -> Self {
        let bounds: Vec<_> = lanes
            .iter()
            .map(|l| (l.capacity, l.max_bytes, l.weight))
            .collect();
        Self {
            data: Lanes::new(&bounds),
            channel_ids: lanes.iter().map(|l| l.channel).collect(),
            control: VecDeque::new(),
            goodbye: None,
            closed: false,
            full_since: None,
            stalled: vec![false; lanes.len()],
            ack: vec![None; lanes.len()],
            sent_ack: vec![None; lanes.len()],
        }
    }

    /// Queues an encoded message on lane `lane`; a refused message is handed back. `now` is
    /// called only when the lane is full (no clock read on the hot path).
    pub(crate) fn try_push(
        &mut self,
        lane: usize,
        message: Bytes,
        now: impl FnOnce() -> Instant,
    ) -> Result<(), Refused> {
        if self.closed || self.goodbye.is_some() {
            return Err((PushError::Closed, message));
        }
        if self.stalled.get(lane).copied().unwrap_or(false) {
            return Err((PushError::Stalled, message));
        }
        let full_since = &mut self.full_since;
        self.data.push(lane, message).map_err(|(refusal, message)| {
            match refusal {
                Refusal::Full => {
                    full_since.get_or_insert_with(now);
                }
                // Callers resolve lanes from the channel table the queue was built from.
                Refusal::NoSuchChannel => {}
            }
            (PushError::Full, message)
        })
    }

    /// A waiting push to `lane` ran out of time: later pushes to it are refused at once until
    /// the writer takes anything.
    pub(crate) fn mark_stalled(&mut self, lane: usize) {
        if let Some(stalled) = self.stalled.get_mut(lane) {
            *stalled = true;
        }
    }

    /// Queues a control message ahead of all data. Returns false if it was dropped because the
    /// control lane was full or the queue is closed.
    pub(crate) fn push_control(&mut self, message: ControlMessage) -> bool {
        if self.closed || self.control.len() >= CONTROL_CAPACITY {
            return false;
        }
        self.control.push_back(message);
        true
    }

    /// Takes control messages and acknowledgements first, then pieces of data in channel
    /// priority order up to about `max_bytes`; the goodbye only once the data lanes are empty
    /// and no control message is in this batch. Returns whether room was freed.
    pub(crate) fn take_batch(&mut self, max_bytes: usize, batch: &mut Batch) -> bool {
        batch.control.extend(self.control.drain(..));
        for (lane, ack) in self.ack.iter_mut().enumerate() {
            if let Some(next) = ack.take() {
                self.sent_ack[lane] = Some(next);
                batch.control.push(ControlMessage::Ack {
                    channel: self.channel_ids[lane],
                    next,
                });
            }
        }
        let before = batch.data.len();
        let freed = self.data.take(max_bytes, &mut batch.data);
        if batch.data.len() > before {
            // Progress: senders may wait for room again.
            self.full_since = None;
            self.stalled.iter_mut().for_each(|s| *s = false);
        }
        if self.data.is_empty() {
            self.full_since = None;
            if batch.control.is_empty() {
                batch.goodbye = self.goodbye;
            }
        }
        batch.closed = self.closed;
        freed
    }

    /// Sets the acknowledgement to send next on lane `lane`, replacing one not yet sent.
    /// Returns whether there is something new for the writer.
    pub(crate) fn set_ack(&mut self, lane: usize, next: u64) -> bool {
        if self.closed || self.sent_ack.get(lane) == Some(&Some(next)) {
            return false;
        }
        match self.ack.get_mut(lane) {
            Some(ack) => {
                *ack = Some(next);
                true
            }
            None => false,
        }
    }

    /// Takes only the waiting control messages (used between fragments of a large message).
    pub(crate) fn take_control(&mut self, batch: &mut Batch) {
        batch.control.extend(self.control.drain(..));
    }

    /// Since when senders have found a data lane full without the writer taking anything.
    pub(crate) fn full_since(&self) -> Option<Instant> {
        self.full_since
    }

    /// Stops accepting data; the writer flushes, then sends `reason`. Returns false if the
    /// queue was already closing or closed.
    pub(crate) fn close_gracefully(&mut self, reason: GoodbyeReason) -> bool {
        if self.closed || self.goodbye.is_some() {
            return false;
        }
        self.goodbye = Some(reason);
        true
    }

    /// Closes at once; returns how many accepted data messages were never written.
    pub(crate) fn close(&mut self) -> usize {
        self.closed = true;
        self.control.clear();
        self.data.clear()
    }

    /// Messages and bytes waiting in all data lanes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        self.data.depth()
    }

    /// Messages and bytes waiting in lane `lane`.
    pub(crate) fn depth_of(&self, lane: usize) -> (usize, usize) {
        self.data.depth_of(lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn queue(capacity: usize, max_bytes: usize) -> OutboundQueue {
        OutboundQueue::new(&[LaneSpec {
            channel: 0,
            capacity,
            max_bytes,
            weight: 2,
        }])
    }

    fn never() -> Instant {
        panic!("the clock is read only when a lane is full")
    }

    #[test]
    fn control_comes_first_and_goodbye_after_data() {
        let mut q = queue(10, 1000);
        q.try_push(0, msg(1), never).unwrap();
        q.push_control(ControlMessage::Ping { nonce: 1 });
        assert!(q.close_gracefully(GoodbyeReason::Shutdown));
        assert!(!q.close_gracefully(GoodbyeReason::Requested), "one goodbye");
        assert_eq!(
            q.try_push(0, msg(1), never).unwrap_err().0,
            PushError::Closed
        );
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
    fn the_goodbye_waits_until_every_lane_is_drained() {
        let mut q = OutboundQueue::new(&[
            LaneSpec {
                channel: 0,
                capacity: 10,
                max_bytes: 1 << 20,
                weight: 2,
            },
            LaneSpec {
                channel: 5,
                capacity: 10,
                max_bytes: 1 << 20,
                weight: 1,
            },
        ]);
        q.try_push(1, msg(300), never).unwrap();
        q.try_push(1, msg(300), never).unwrap();
        q.close_gracefully(GoodbyeReason::Requested);
        let mut b = Batch::default();
        q.take_batch(300, &mut b);
        assert_eq!(
            (b.data.len(), b.goodbye),
            (1, None),
            "one message still queued"
        );
        let mut b = Batch::default();
        q.take_batch(300, &mut b);
        assert_eq!(
            (b.data.len(), b.goodbye),
            (1, Some(GoodbyeReason::Requested))
        );
    }

    #[test]
    fn hard_close_reports_dropped_messages() {
        let mut q = queue(10, 1000);
        q.try_push(0, msg(1), never).unwrap();
        q.try_push(0, msg(1), never).unwrap();
        assert_eq!(q.close(), 2);
        assert_eq!(
            q.try_push(0, msg(1), never).unwrap_err().0,
            PushError::Closed
        );
        assert!(!q.push_control(ControlMessage::Ping { nonce: 0 }));
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert!(b.closed);
    }

    #[test]
    fn acks_are_per_channel_and_coalesced() {
        let mut q = OutboundQueue::new(&[
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
        assert!(q.set_ack(1, 3));
        assert!(q.set_ack(1, 5));
        assert!(q.set_ack(0, 2));
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
        assert!(!q.set_ack(1, 5), "already sent: not repeated");
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert!(b.control.is_empty());
    }

    #[test]
    fn a_stalled_lane_refuses_until_the_writer_takes_anything() {
        let t0 = Instant::now();
        let mut q = queue(1, 1000);
        q.try_push(0, msg(1), never).unwrap();
        assert_eq!(q.try_push(0, msg(2), || t0).unwrap_err().0, PushError::Full);
        assert_eq!(q.full_since(), Some(t0));
        q.mark_stalled(0);
        assert_eq!(
            q.try_push(0, msg(2), never).unwrap_err().0,
            PushError::Stalled
        );
        let mut b = Batch::default();
        assert!(q.take_batch(1000, &mut b), "room freed");
        assert_eq!(q.full_since(), None);
        assert!(q.try_push(0, msg(3), never).is_ok());
    }

    #[test]
    fn the_control_lane_is_bounded() {
        let mut q = queue(1, 1);
        for nonce in 0..CONTROL_CAPACITY as u64 {
            assert!(q.push_control(ControlMessage::Ping { nonce }));
        }
        assert!(!q.push_control(ControlMessage::Ping { nonce: 999 }));
    }

    #[test]
    fn only_progress_clears_a_stall() {
        let mut q = queue(1, 1000);
        q.mark_stalled(0);
        let mut b = Batch::default();
        assert!(
            !q.take_batch(1000, &mut b),
            "nothing to take, nothing freed"
        );
        assert_eq!(
            q.try_push(0, msg(1), never).unwrap_err().0,
            PushError::Stalled
        );
    }

    #[test]
    fn control_can_be_taken_alone_between_the_pieces_of_a_message() {
        let mut q = queue(10, 1000);
        q.try_push(0, msg(5), never).unwrap();
        q.push_control(ControlMessage::Ping { nonce: 3 });
        let mut b = Batch::default();
        q.take_control(&mut b);
        assert_eq!(b.control, vec![ControlMessage::Ping { nonce: 3 }]);
        assert!(b.data.is_empty(), "data waits for the next batch");
        let mut next = Batch::default();
        q.take_batch(1000, &mut next);
        assert!(next.control.is_empty(), "taken once");
        assert_eq!(next.data.len(), 1);
    }

    #[test]
    fn depth_counts_the_messages_and_bytes_waiting() {
        let mut q = queue(10, 1000);
        assert_eq!(q.depth(), (0, 0));
        q.try_push(0, msg(3), never).unwrap();
        q.try_push(0, msg(4), never).unwrap();
        assert_eq!(q.depth(), (2, 7));
        assert_eq!(q.depth_of(0), (2, 7));
        let mut b = Batch::default();
        q.take_batch(1000, &mut b);
        assert_eq!((q.depth(), q.depth_of(0)), ((0, 0), (0, 0)));
    }
}
