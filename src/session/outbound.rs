//! Outbound ordering for one connection, pure: per-channel lanes of encoded messages, and the
//! deficit-round-robin [`Scheduler`] that decides which channel's bytes go next.
//!
//! With several channels the writer never takes a whole large message at once: it takes
//! *pieces* of at most [`QUANTUM`] bytes, and asks the scheduler again after each, so a critical
//! message queued behind a 16 MiB block part waits for at most one piece of it. With one channel
//! there is nothing to preempt, so a piece is a whole message (the frame encoder still splits
//! what does not fit in a frame), and a message that fits in a frame reaches the receiver as one
//! record it can hand on without copying.

use std::collections::VecDeque;

use bytes::Bytes;

use super::channel::QUANTUM;

/// Deficit round robin over channel indices, higher weights served first within a round.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    /// The largest piece of one message taken at a time: [`QUANTUM`] with several channels,
    /// unbounded with one.
    piece: usize,
    /// Quanta per round, by channel index.
    weights: Vec<i64>,
    /// Bytes each channel may still send this round; may dip below zero by at most one piece.
    deficit: Vec<i64>,
    /// Channel indices, heaviest weight first (ties by index).
    order: Vec<usize>,
}

impl Scheduler {
    pub(crate) fn new(weights: &[usize]) -> Self {
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(weights[i]), i));
        Self {
            piece: if weights.len() > 1 {
                QUANTUM
            } else {
                usize::MAX
            },
            weights: weights.iter().map(|&w| w.max(1) as i64).collect(),
            deficit: vec![0; weights.len()],
            order,
        }
    }

    /// The channel to serve next among those for which `busy` says true, or `None` if none is.
    pub(crate) fn pick(&mut self, busy: impl Fn(usize) -> bool) -> Option<usize> {
        if self.weights.len() == 1 {
            return busy(0).then_some(0);
        }
        for _ in 0..2 {
            let mut any = false;
            for &lane in &self.order {
                if !busy(lane) {
                    // An idle channel starts its next busy spell with one round's credit, no
                    // more: it goes ahead of lower channels at once (their current piece
                    // finishes first) but cannot save up a burst.
                    self.deficit[lane] = self.weights[lane] * QUANTUM as i64;
                    continue;
                }
                any = true;
                if self.deficit[lane] > 0 {
                    return Some(lane);
                }
            }
            if !any {
                return None;
            }
            // Every busy channel has spent its share: a new round.
            for &lane in &self.order {
                if busy(lane) {
                    self.deficit[lane] += self.weights[lane] * QUANTUM as i64;
                }
            }
        }
        // Unreachable: after a round every busy channel has a positive deficit.
        self.order.iter().copied().find(|&lane| busy(lane))
    }

    /// The largest piece of one message to take at a time.
    pub(crate) fn piece(&self) -> usize {
        self.piece
    }

    /// `bytes` of channel `lane` went out.
    pub(crate) fn charge(&mut self, lane: usize, bytes: usize) {
        if let Some(d) = self.deficit.get_mut(lane) {
            *d -= bytes as i64;
        }
    }
}

/// A piece of one message to write: bytes `start..end` of `message` on channel index `lane`.
/// `start == 0` begins the message; `end == message.len()` completes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) lane: usize,
    pub(crate) message: Bytes,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Piece {
    /// Whether this piece completes its message.
    pub(crate) fn completes(&self) -> bool {
        self.end == self.message.len()
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The channel's lane is at its message or byte bound.
    Full,
    /// The lane index is not a configured channel.
    NoSuchChannel,
}

#[derive(Debug)]
struct Lane {
    messages: VecDeque<Bytes>,
    /// Bytes of `messages`, counted whole until the last piece of a message is taken.
    bytes: usize,
    /// How far the front message has been taken.
    front_offset: usize,
    capacity: usize,
    max_bytes: usize,
}

impl Lane {
    /// With one channel there is nothing to schedule: whole messages in order, up to about
    /// `max_bytes` (at least one). The hot path of a node that declares no channels.
    fn take_whole(&mut self, max_bytes: usize, out: &mut Vec<Piece>) -> bool {
        let mut taken = 0;
        let mut freed = false;
        while let Some(front) = self.messages.front() {
            let len = front.len();
            if taken > 0 && taken + len > max_bytes {
                break;
            }
            taken += len.max(1);
            if let Some(message) = self.messages.pop_front() {
                out.push(Piece {
                    lane: 0,
                    message,
                    start: 0,
                    end: len,
                });
            }
            self.bytes -= len;
            freed = true;
        }
        freed
    }
}

/// The per-channel lanes of encoded messages waiting for one connection's writer.
#[derive(Debug)]
pub(crate) struct Lanes {
    lanes: Vec<Lane>,
    scheduler: Scheduler,
}

impl Lanes {
    /// One lane per channel, with `(capacity, max_bytes, weight)` each, by channel index.
    pub(crate) fn new(bounds: &[(usize, usize, usize)]) -> Self {
        let weights: Vec<usize> = bounds.iter().map(|b| b.2).collect();
        Self {
            lanes: bounds
                .iter()
                .map(|&(capacity, max_bytes, _)| Lane {
                    messages: VecDeque::new(),
                    bytes: 0,
                    front_offset: 0,
                    capacity: capacity.max(1),
                    max_bytes: max_bytes.max(1),
                })
                .collect(),
            scheduler: Scheduler::new(&weights),
        }
    }

    /// Queues `message` on lane `lane`. One message always fits into an empty lane, so any
    /// message up to the channel's maximum size can be sent even above the byte bound.
    pub(crate) fn push(&mut self, lane: usize, message: Bytes) -> Result<(), (Refusal, Bytes)> {
        let Some(l) = self.lanes.get_mut(lane) else {
            return Err((Refusal::NoSuchChannel, message));
        };
        let fits = l.messages.is_empty()
            || (l.messages.len() < l.capacity && l.bytes + message.len() <= l.max_bytes);
        if !fits {
            return Err((Refusal::Full, message));
        }
        l.bytes += message.len();
        l.messages.push_back(message);
        Ok(())
    }

    /// Takes pieces in scheduler order until about `max_bytes` are taken (at least one piece
    /// if anything waits). Returns whether any message left a lane completely (room freed).
    pub(crate) fn take(&mut self, max_bytes: usize, out: &mut Vec<Piece>) -> bool {
        if let [lane] = self.lanes.as_mut_slice() {
            return lane.take_whole(max_bytes, out);
        }
        let mut taken = 0;
        let mut freed = false;
        while taken < max_bytes.max(1) {
            let lanes = &self.lanes;
            let Some(index) = self
                .scheduler
                .pick(|i| lanes.get(i).is_some_and(|l| !l.messages.is_empty()))
            else {
                break;
            };
            let lane = &mut self.lanes[index];
            let Some(front) = lane.messages.front() else {
                break;
            };
            let start = lane.front_offset;
            let end = start
                .saturating_add(self.scheduler.piece())
                .min(front.len());
            let piece_len = end - start;
            if end == front.len() {
                let len = front.len();
                if let Some(message) = lane.messages.pop_front() {
                    out.push(Piece {
                        lane: index,
                        message,
                        start,
                        end,
                    });
                }
                lane.bytes -= len;
                lane.front_offset = 0;
                freed = true;
            } else {
                out.push(Piece {
                    lane: index,
                    message: front.clone(),
                    start,
                    end,
                });
                lane.front_offset = end;
            }
            self.scheduler.charge(index, piece_len);
            // Empty messages still count, so a flood of them ends the batch too.
            taken += piece_len.max(1);
        }
        freed
    }

    /// Drops everything queued; returns how many messages were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let mut dropped = 0;
        for lane in &mut self.lanes {
            dropped += lane.messages.len();
            lane.messages.clear();
            lane.bytes = 0;
            lane.front_offset = 0;
        }
        dropped
    }

    /// Whether nothing is queued on any lane.
    pub(crate) fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.messages.is_empty())
    }

    /// Messages and bytes queued on lane `lane`.
    pub(crate) fn depth_of(&self, lane: usize) -> (usize, usize) {
        self.lanes
            .get(lane)
            .map_or((0, 0), |l| (l.messages.len(), l.bytes))
    }

    /// Messages and bytes queued on all lanes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        self.lanes
            .iter()
            .fold((0, 0), |(m, b), l| (m + l.messages.len(), b + l.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRITICAL: usize = 8;
    const BULK: usize = 1;

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn one_channel_is_plain_fifo_batched_by_bytes() {
        let mut lanes = Lanes::new(&[(10, 1000, 2)]);
        for n in [10, 20, 30] {
            lanes.push(0, msg(n)).unwrap();
        }
        let mut out = Vec::new();
        assert!(lanes.take(25, &mut out));
        // 10 + 20 would pass the budget: the second waits for the next batch.
        assert_eq!(
            out.iter().map(|p| p.message.len()).collect::<Vec<_>>(),
            vec![10]
        );
        assert_eq!(lanes.depth(), (2, 50));
        // A message larger than the budget still goes when it is first, whole.
        out.clear();
        assert!(lanes.take(5, &mut out));
        assert_eq!((out[0].start, out[0].end), (0, 20));
    }

    #[test]
    fn lanes_are_bounded_by_count_and_bytes_but_one_message_always_fits() {
        let mut lanes = Lanes::new(&[(2, 100, 2), (2, 100, 1)]);
        assert!(lanes.push(1, msg(500)).is_ok());
        assert_eq!(lanes.push(1, msg(1)).unwrap_err().0, Refusal::Full);
        // Another channel's lane is unaffected by the full one.
        assert!(lanes.push(0, msg(10)).is_ok());
        assert!(lanes.push(0, msg(10)).is_ok());
        assert_eq!(lanes.push(0, msg(10)).unwrap_err().0, Refusal::Full);
        assert_eq!(lanes.push(7, msg(1)).unwrap_err().0, Refusal::NoSuchChannel);
    }

    #[test]
    fn a_critical_message_waits_for_at_most_one_piece_of_a_large_bulk_message() {
        // Channel 0 critical, channel 1 bulk.
        let mut lanes = Lanes::new(&[(100, 1 << 30, CRITICAL), (100, 1 << 30, BULK)]);
        lanes.push(1, msg(16 << 20)).unwrap();
        let mut out = Vec::new();
        lanes.take(QUANTUM, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].lane, out[0].start, out[0].end), (1, 0, QUANTUM));
        // The vote arrives while the block part is in progress.
        lanes.push(0, msg(200)).unwrap();
        out.clear();
        lanes.take(1, &mut out);
        assert_eq!(out[0].lane, 0, "critical goes before the next bulk piece");
        out.clear();
        lanes.take(QUANTUM, &mut out);
        assert_eq!(
            (out[0].lane, out[0].start),
            (1, QUANTUM),
            "bulk resumes where it was"
        );
    }

    #[test]
    fn a_critical_flood_leaves_bulk_its_share() {
        let mut lanes = Lanes::new(&[(1 << 20, 1 << 40, CRITICAL), (1 << 20, 1 << 40, BULK)]);
        for _ in 0..100_000 {
            lanes.push(0, msg(1000)).unwrap();
        }
        for _ in 0..100 {
            lanes.push(1, msg(1 << 20)).unwrap();
        }
        let mut out = Vec::new();
        let mut by_lane = [0usize; 2];
        // 200 batches of 256 KiB: less than either lane holds, so both stay busy throughout.
        for _ in 0..200 {
            out.clear();
            lanes.take(256 * 1024, &mut out);
            for p in &out {
                by_lane[p.lane] += p.end - p.start;
            }
        }
        let bulk_share = by_lane[1] as f64 / (by_lane[0] + by_lane[1]) as f64;
        // Weights 8 and 1: bulk's share is 1/9 (the issue asks for at least 1/16).
        assert!(bulk_share >= 1.0 / 10.0, "bulk share {bulk_share}");
        assert!(
            bulk_share <= 1.0 / 8.0,
            "critical keeps most: bulk share {bulk_share}"
        );
    }

    #[test]
    fn a_channel_waking_up_goes_first_with_one_round_of_credit_at_most() {
        let mut s = Scheduler::new(&[CRITICAL, BULK]);
        // Only bulk busy for a long time, then both: critical is served first.
        for _ in 0..100 {
            assert_eq!(s.pick(|i| i == 1), Some(1));
            s.charge(1, QUANTUM / 2);
        }
        assert_eq!(s.pick(|_| true), Some(0));
        // Its long idle spell earned it one round of credit (8 quanta), not 100 rounds: before
        // bulk goes again it sends at most that plus the next round's share.
        let mut critical_bytes = 0;
        while s.pick(|_| true) == Some(0) {
            s.charge(0, 1000);
            critical_bytes += 1000;
        }
        // (each share may overdraw by one piece, here 1000 bytes)
        assert!(
            critical_bytes <= 2 * (CRITICAL * QUANTUM + 1000),
            "{critical_bytes}"
        );
    }

    #[test]
    fn clear_reports_what_was_dropped() {
        let mut lanes = Lanes::new(&[(10, 1000, 2), (10, 1000, 1)]);
        lanes.push(0, msg(1)).unwrap();
        lanes.push(1, msg(1)).unwrap();
        assert_eq!(lanes.clear(), 2);
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_channel_back_from_idle_is_served_at_once_for_one_round_of_its_weight() {
        let mut sched = Scheduler::new(&[4, 1]);
        // Bulk (index 1) alone for a while: it spends, the idle critical channel saves nothing.
        for _ in 0..10 {
            assert_eq!(sched.pick(|l| l == 1), Some(1));
            sched.charge(1, QUANTUM);
        }
        // Critical wakes: it goes first at once, with one round's credit (4 pieces); bulk,
        // which spent its own, waits for the next round, where critical (heavier) goes first
        // again. Then the weights hold: 4 pieces to 1.
        let mut served = Vec::new();
        for _ in 0..12 {
            let lane = sched.pick(|_| true).unwrap();
            sched.charge(lane, QUANTUM);
            served.push(lane);
        }
        assert_eq!(served, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn a_batch_fills_its_budget_exactly_and_only_a_message_s_last_piece_completes_it() {
        // One channel: whole messages up to the budget, an exact fit included.
        let mut one = Lanes::new(&[(10, 1000, 2)]);
        for n in [10, 10, 10] {
            one.push(0, msg(n)).unwrap();
        }
        let mut out = Vec::new();
        one.take(20, &mut out);
        assert_eq!(out.len(), 2, "10 + 10 fits a budget of 20");
        assert!(out.iter().all(Piece::completes));
        // Several channels: a message longer than a quantum goes in pieces; only the last
        // completes it.
        let mut two = Lanes::new(&[(10, 1 << 20, 2), (10, 1 << 20, 1)]);
        two.push(1, msg(2 * QUANTUM + 5)).unwrap();
        let mut out = Vec::new();
        while two.take(usize::MAX, &mut out) {}
        let completes: Vec<bool> = out.iter().map(Piece::completes).collect();
        assert_eq!(completes, [false, false, true]);
    }

    #[test]
    fn taking_a_message_frees_its_bytes_for_the_lane_bound() {
        let mut lanes = Lanes::new(&[(10, 100, 2), (10, 100, 1)]);
        lanes.push(1, msg(60)).unwrap();
        assert_eq!(lanes.depth_of(1), (1, 60));
        let mut out = Vec::new();
        lanes.take(usize::MAX, &mut out);
        assert_eq!(lanes.depth_of(1), (0, 0));
        // The lane's byte bound counts only what is still queued.
        lanes.push(1, msg(60)).unwrap();
        lanes.push(1, msg(40)).unwrap();
        assert_eq!(lanes.depth_of(1), (2, 100));
    }
}
