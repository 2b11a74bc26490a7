//! Reliable, ordered, exactly-once delivery to persistent peers across reconnects and restarts.
//!
//! Sender side, [`ReliableBuffer`] (one per persistent peer, outliving its connections): every
//! accepted message gets the next sequence number and stays in the buffer until the peer
//! acknowledges it. The connection's writer reads from a cursor; a new connection (or a rewind
//! request) moves the cursor back to the oldest unacknowledged message and makes the next read
//! start with a resume marker `(incarnation, first_seq)`, taken atomically with the data it
//! numbers. The buffer is bounded by `offline_queue_capacity` messages and bytes.
//!
//! Receiver side, [`RecvSeq`] (one per sending peer, outliving connections): after a resume
//! marker, messages on the connection are numbered implicitly from `first_seq`. A message is
//! delivered only if it is the next expected one; older ones are duplicates (skipped), newer
//! ones follow a local drop and are discarded until the sender resumes from the gap. A new
//! incarnation (the sender restarted) resets the expectation.
//!
//! Both types are pure: no tasks, no clocks, no shared memory (the driver's `stream` module
//! shares a buffer between senders and connections).

use std::collections::VecDeque;

use bytes::Bytes;

use super::outbound::{Piece, Scheduler};

/// What the writer should send next: resume markers, then pieces of messages in order.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// `(channel index, first_seq)` for each channel whose numbering restarts at `first_seq`
    /// with the pieces below (written before them).
    pub(crate) resumes: Vec<(usize, u64)>,
    pub(crate) pieces: Vec<Piece>,
}

impl Taken {
    pub(crate) fn is_empty(&self) -> bool {
        self.resumes.is_empty() && self.pieces.is_empty()
    }
}

/// The sender's buffer of unacknowledged messages for one persistent peer.
#[derive(Debug)]
pub(crate) struct ReliableBuffer {
    /// This process's incarnation, so a restarted sender is told apart.
    incarnation: u64,
    unacked: VecDeque<Bytes>,
    bytes: usize,
    /// Sequence number of `unacked[0]` (or of the next message when empty).
    base_seq: u64,
    /// Index in `unacked` of the next message to write on the current connection.
    cursor: usize,
    /// How far the message at `cursor` has been written (pieces of a large message).
    partial: usize,
    /// A rewind that waits for the message in progress to be completed first, so the receiver
    /// never sees a new message start in the middle of one.
    rewind_to: Option<u64>,
    /// The next take must start with a resume marker.
    needs_resume: bool,
    capacity: usize,
    max_bytes: usize,
    /// For a durable peer: messages numbered below this are on disk, and only those may be
    /// written to the peer (what a peer may have seen must survive our crash, or a restarted
    /// process would number new messages as ones the peer already has). `None`: not durable.
    durable_upto: Option<u64>,
    /// Messages written more than once (after a reconnect or rewind).
    pub(crate) resent: u64,
}

impl ReliableBuffer {
    pub(crate) fn new(incarnation: u64, capacity: usize, max_bytes: usize) -> Self {
        Self {
            incarnation,
            unacked: VecDeque::new(),
            bytes: 0,
            base_seq: 0,
            cursor: 0,
            partial: 0,
            rewind_to: None,
            needs_resume: true,
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            durable_upto: None,
            resent: 0,
        }
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Accepts a message (one always fits into an empty buffer) and returns its sequence
    /// number; when full, hands it back.
    pub(crate) fn push(&mut self, message: Bytes) -> Result<u64, Bytes> {
        let fits = self.unacked.is_empty()
            || (self.unacked.len() < self.capacity && self.bytes + message.len() <= self.max_bytes);
        if !fits {
            return Err(message);
        }
        self.bytes += message.len();
        self.unacked.push_back(message);
        Ok(self.base_seq + self.unacked.len() as u64 - 1)
    }

    /// Puts back what an earlier process of this node had accepted and not seen acknowledged
    /// (read from the data directory): numbered from `base_seq`, all of it, past the bounds
    /// if need be (it was accepted once). Only on a fresh buffer.
    pub(crate) fn restore(&mut self, base_seq: u64, messages: Vec<Bytes>) {
        debug_assert!(self.unacked.is_empty());
        self.base_seq = base_seq;
        self.bytes = messages.iter().map(Bytes::len).sum();
        self.durable_upto = Some(base_seq + messages.len() as u64);
        self.unacked = messages.into();
        self.cursor = 0;
        self.partial = 0;
        self.needs_resume = true;
    }

    /// Takes back the message just pushed (its write to disk could not even be queued).
    pub(crate) fn unpush(&mut self) -> Option<Bytes> {
        let last = self.unacked.len().checked_sub(1)?;
        if self.cursor > last || (self.cursor == last && self.partial > 0) {
            // Already (partly) written: it stays.
            return None;
        }
        let message = self.unacked.pop_back()?;
        self.bytes -= message.len();
        Some(message)
    }

    /// Message `seq` (and every one before it) is on disk: it may be written to the peer.
    pub(crate) fn committed(&mut self, seq: u64) {
        if let Some(upto) = &mut self.durable_upto {
            *upto = (*upto).max(seq + 1);
        }
    }

    /// Whether anything is waiting to be written on the current connection (and, for a
    /// durable peer, is on disk).
    pub(crate) fn has_unsent(&self) -> bool {
        self.cursor < self.unacked.len()
            && self
                .durable_upto
                .is_none_or(|upto| self.base_seq + (self.cursor as u64) < upto)
    }

    /// Takes the next piece (at most 64 KiB) of the next unsent message; returns
    /// `(resume, piece)` where `resume` is `Some(first_seq)` when the numbering restarts here.
    #[cfg(test)]
    pub(crate) fn take_piece(&mut self, lane: usize) -> Option<(Option<u64>, Piece)> {
        self.take_piece_of(lane, super::channel::QUANTUM)
    }

    /// Takes the next piece (at most `piece` bytes) of the next unsent message, as
    /// `take_piece` does.
    fn take_piece_of(&mut self, lane: usize, piece: usize) -> Option<(Option<u64>, Piece)> {
        if !self.has_unsent() {
            return None;
        }
        let message = self.unacked.get(self.cursor)?.clone();
        let resume = if self.needs_resume {
            self.needs_resume = false;
            Some(self.base_seq + self.cursor as u64)
        } else {
            None
        };
        let start = self.partial;
        let end = start.saturating_add(piece).min(message.len());
        if end == message.len() {
            self.cursor += 1;
            self.partial = 0;
            if let Some(from) = self.rewind_to.take() {
                self.rewind(from);
            }
        } else {
            self.partial = end;
        }
        Some((
            resume,
            Piece {
                lane,
                message,
                start,
                end,
            },
        ))
    }

    /// The peer has everything before `next_expected`: drop those. Returns how many were freed.
    pub(crate) fn ack(&mut self, next_expected: u64) -> usize {
        let mut freed = 0;
        while self.base_seq < next_expected {
            if self.cursor == 0 && self.partial > 0 {
                // The front message is not even fully written: an ack for it is a lie.
                break;
            }
            let Some(message) = self.unacked.pop_front() else {
                // An ack beyond what was ever sent is a protocol violation by the peer; ignore
                // the excess rather than trusting it.
                break;
            };
            self.bytes -= message.len();
            self.base_seq += 1;
            self.cursor = self.cursor.saturating_sub(1);
            freed += 1;
        }
        freed
    }

    /// Replaces each kept message of at most `max` bytes by a copy of its own, so a message kept
    /// while the peer is away does not keep alive a larger buffer it was cut from.
    pub(crate) fn unshare_small(&mut self, max: usize) {
        for message in self.unacked.iter_mut().filter(|m| m.len() <= max) {
            *message = Bytes::copy_from_slice(message);
        }
    }

    /// A new connection: resend everything unacknowledged, starting with a resume marker.
    pub(crate) fn restart(&mut self) {
        self.resent += self.cursor as u64;
        self.cursor = 0;
        self.partial = 0;
        self.rewind_to = None;
        self.needs_resume = true;
    }

    /// The peer dropped messages from `from` on: resend from there (if still buffered).
    pub(crate) fn rewind(&mut self, from: u64) {
        if self.partial > 0 {
            self.rewind_to = Some(from);
            return;
        }
        if from < self.base_seq {
            return self.restart();
        }
        let index = usize::try_from(from - self.base_seq).unwrap_or(usize::MAX);
        if index < self.cursor {
            self.resent += (self.cursor - index) as u64;
            self.cursor = index;
            self.needs_resume = true;
        }
    }

    /// Messages accepted and not yet acknowledged, and their bytes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        (self.unacked.len(), self.bytes)
    }
}

/// A persistent peer's reliable streams, one per channel, with the scheduler that interleaves
/// them by channel priority.
#[derive(Debug)]
pub(crate) struct ReliableSet {
    buffers: Vec<ReliableBuffer>,
    scheduler: Scheduler,
}

impl ReliableSet {
    /// One stream per channel: `(capacity, max_bytes, weight)` by channel index.
    pub(crate) fn new(incarnation: u64, bounds: &[(usize, usize, usize)]) -> Self {
        let weights: Vec<usize> = bounds.iter().map(|b| b.2).collect();
        Self {
            buffers: bounds
                .iter()
                .map(|&(capacity, max_bytes, _)| {
                    ReliableBuffer::new(incarnation, capacity, max_bytes)
                })
                .collect(),
            scheduler: Scheduler::new(&weights),
        }
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.buffers.first().map_or(0, ReliableBuffer::incarnation)
    }

    pub(crate) fn buffer(&mut self, lane: usize) -> Option<&mut ReliableBuffer> {
        self.buffers.get_mut(lane)
    }

    /// Takes pieces in channel priority order up to about `max_bytes` (at least one if any).
    pub(crate) fn take(&mut self, max_bytes: usize, taken: &mut Taken) {
        let mut size = 0;
        while size < max_bytes.max(1) {
            let buffers = &self.buffers;
            let Some(lane) = self
                .scheduler
                .pick(|i| buffers.get(i).is_some_and(ReliableBuffer::has_unsent))
            else {
                break;
            };
            let limit = self.scheduler.piece();
            let Some((resume, piece)) = self.buffers[lane].take_piece_of(lane, limit) else {
                break;
            };
            if let Some(first_seq) = resume {
                taken.resumes.push((lane, first_seq));
            }
            let len = piece.end - piece.start;
            self.scheduler.charge(lane, len);
            size += len.max(1);
            taken.pieces.push(piece);
        }
    }

    /// [`ReliableBuffer::unshare_small`] on every channel.
    pub(crate) fn unshare_small(&mut self, max: usize) {
        for buffer in &mut self.buffers {
            buffer.unshare_small(max);
        }
    }

    /// A new connection: every channel resends what is unacknowledged.
    pub(crate) fn restart(&mut self) {
        self.buffers.iter_mut().for_each(ReliableBuffer::restart);
    }

    /// Messages accepted and not yet acknowledged on all channels, and their bytes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        self.buffers.iter().fold((0, 0), |(m, b), buf| {
            let (dm, db) = buf.depth();
            (m + dm, b + db)
        })
    }
}

/// What the receiver does with the next sequenced message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next expected message: deliver it (or call [`RecvSeq::dropped`] if that fails).
    Deliver,
    /// Already delivered before: skip it.
    Duplicate,
    /// After a gap the receiver made (a local drop): discard until the sender resumes.
    Discard,
}

/// The receiver's position in one peer's reliable stream (shared by that peer's connections;
/// each connection keeps its own running sequence number, see [`RecvSeq::resume`]).
#[derive(Debug, Default)]
pub(crate) struct RecvSeq {
    incarnation: Option<u64>,
    next_expected: u64,
    /// A rewind was requested and no resume has arrived since.
    awaiting_resume: bool,
    pub(crate) duplicates: u64,
}

impl RecvSeq {
    /// A resume marker arrived: the connection's next message has `first_seq`, which the caller
    /// keeps as that connection's running sequence number.
    pub(crate) fn resume(&mut self, incarnation: u64, first_seq: u64) {
        if self.incarnation != Some(incarnation) {
            // A sender we have not heard from, or one that restarted: its stream starts here.
            self.incarnation = Some(incarnation);
            self.next_expected = first_seq;
        } else if first_seq > self.next_expected {
            // The sender no longer has what we expected (it cannot happen with acks sent only
            // after delivery); resynchronise rather than stall forever.
            self.next_expected = first_seq;
        }
        self.awaiting_resume = false;
    }

    /// Classifies the message numbered `seq`.
    pub(crate) fn judge(&mut self, seq: u64) -> Verdict {
        if self.awaiting_resume || seq > self.next_expected {
            Verdict::Discard
        } else if seq < self.next_expected {
            self.duplicates += 1;
            Verdict::Duplicate
        } else {
            self.next_expected += 1;
            Verdict::Deliver
        }
    }

    /// The message just judged `Deliver` could not be delivered (inbox full): expect it again
    /// and return the sequence number to ask the sender to rewind to, unless already asked.
    pub(crate) fn dropped(&mut self) -> Option<u64> {
        self.next_expected -= 1;
        if self.awaiting_resume {
            return None;
        }
        self.awaiting_resume = true;
        Some(self.next_expected)
    }

    /// What to acknowledge: everything before this was delivered.
    pub(crate) fn ack(&self) -> u64 {
        self.next_expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::channel::QUANTUM;

    fn m(i: u8) -> Bytes {
        Bytes::from(vec![i])
    }

    #[test]
    fn a_durable_buffer_resumes_where_it_was_kept_and_sends_only_what_is_on_disk() {
        let mut b = ReliableBuffer::new(7, 100, 1 << 20);
        // Read back: messages 5 and 6 were on disk, unacknowledged.
        b.restore(5, vec![m(5), m(6)]);
        assert_eq!(b.depth(), (2, 2));
        // A new message gets the next number, but waits for its write.
        assert_eq!(b.push(m(7)), Ok(7));
        assert_eq!(take_all(&mut b), (Some(5), vec![5, 6]));
        assert!(!b.has_unsent(), "message 7 is not on disk yet");
        // Its write could not even be queued: taken back, never sent.
        assert_eq!(b.unpush(), Some(m(7)));
        assert_eq!(b.push(m(7)), Ok(7));
        b.committed(7);
        assert_eq!(take_all(&mut b), (None, vec![7]));
        assert_eq!(b.unpush(), None, "a message already written stays");
        // A reconnect resends from the oldest unacknowledged, numbered as before.
        b.ack(6);
        b.restart();
        assert_eq!(take_all(&mut b), (Some(6), vec![6, 7]));
    }

    fn take_all(b: &mut ReliableBuffer) -> (Option<u64>, Vec<u8>) {
        let mut resume = None;
        let mut out = Vec::new();
        while let Some((r, piece)) = b.take_piece(0) {
            resume = resume.or(r);
            out.push(piece.message[0]);
        }
        (resume, out)
    }

    #[test]
    fn sender_resends_unacked_after_restart_and_trims_on_ack() {
        let mut b = ReliableBuffer::new(7, 100, 1000);
        for i in 0..5 {
            b.push(m(i)).unwrap();
        }
        assert_eq!(take_all(&mut b), (Some(0), vec![0, 1, 2, 3, 4]));
        assert_eq!(take_all(&mut b), (None, vec![]));
        assert_eq!(b.ack(3), 3);
        b.push(m(5)).unwrap();
        assert_eq!(take_all(&mut b), (None, vec![5]));
        // The link dies: the next connection resends 3.. with a marker.
        b.restart();
        assert_eq!(take_all(&mut b), (Some(3), vec![3, 4, 5]));
        assert_eq!(b.resent, 3);
        // An ack beyond anything sent is not trusted past the buffer.
        assert_eq!(b.ack(1000), 3);
        assert_eq!(b.depth(), (0, 0));
    }

    #[test]
    fn sender_is_bounded_and_rewinds_to_a_gap() {
        let mut b = ReliableBuffer::new(1, 3, 1000);
        for i in 0..3 {
            b.push(m(i)).unwrap();
        }
        assert_eq!(b.push(m(9)).unwrap_err(), m(9), "refused and handed back");
        take_all(&mut b);
        b.rewind(1);
        assert_eq!(take_all(&mut b), (Some(1), vec![1, 2]));
        b.ack(3);
        assert!(b.push(m(3)).is_ok());
    }

    #[test]
    fn a_rewind_waits_for_the_large_message_in_progress() {
        let mut b = ReliableBuffer::new(1, 10, usize::MAX);
        b.push(m(0)).unwrap();
        b.push(Bytes::from(vec![1u8; 3 * QUANTUM])).unwrap();
        assert_eq!(b.take_piece(0).map(|(r, p)| (r, p.end)), Some((Some(0), 1)));
        let (_, first) = b.take_piece(0).unwrap();
        assert_eq!((first.start, first.end), (0, QUANTUM));
        // The receiver asks for 0 again while message 1 is half written: message 1 is finished
        // first (its receiver is mid-reassembly), then the stream restarts at 0 with a marker.
        b.rewind(0);
        let rest: Vec<_> = std::iter::from_fn(|| b.take_piece(0)).take(4).collect();
        assert_eq!(rest[0].1.start, QUANTUM);
        assert_eq!(rest[1].1.end, 3 * QUANTUM);
        assert_eq!((rest[2].0, rest[2].1.message.len()), (Some(0), 1));
        assert_eq!(rest[3].1.start, 0, "message 1 again, from its start");
        // An ack for the message not yet fully written is not trusted.
        let mut c = ReliableBuffer::new(1, 10, usize::MAX);
        c.push(Bytes::from(vec![1u8; 2 * QUANTUM])).unwrap();
        c.take_piece(0);
        assert_eq!(c.ack(1), 0);
    }

    #[test]
    fn a_set_serves_the_critical_stream_before_more_bulk() {
        // Lane 0 critical (weight 8), lane 1 bulk (weight 1).
        let mut set = ReliableSet::new(3, &[(100, usize::MAX, 8), (100, usize::MAX, 1)]);
        set.buffer(1)
            .unwrap()
            .push(Bytes::from(vec![0u8; 4 * QUANTUM]))
            .unwrap();
        let mut t = Taken::default();
        set.take(QUANTUM, &mut t);
        assert_eq!(t.resumes, vec![(1, 0)]);
        set.buffer(0).unwrap().push(m(7)).unwrap();
        let mut t = Taken::default();
        set.take(1, &mut t);
        assert_eq!(
            t.resumes,
            vec![(0, 0)],
            "the vote's stream starts with its own marker"
        );
        assert_eq!((t.pieces[0].lane, t.pieces[0].message.len()), (0, 1));
        assert_eq!(set.depth(), (2, 4 * QUANTUM + 1));
    }

    /// Judges `n` messages of a connection numbered from `first`.
    fn judge_run(r: &mut RecvSeq, first: u64, n: u64) -> Vec<Verdict> {
        (first..first + n).map(|seq| r.judge(seq)).collect()
    }

    #[test]
    fn receiver_delivers_exactly_once_in_order_across_reconnects() {
        let mut r = RecvSeq::default();
        r.resume(7, 0);
        assert_eq!(judge_run(&mut r, 0, 3), vec![Verdict::Deliver; 3]);
        assert_eq!(r.ack(), 3);
        // Reconnect: the sender resends from 1 (it had only seen an ack for 1).
        r.resume(7, 1);
        assert_eq!(
            judge_run(&mut r, 1, 3),
            vec![Verdict::Duplicate, Verdict::Duplicate, Verdict::Deliver]
        );
        assert_eq!(r.ack(), 4);
        assert_eq!(r.duplicates, 2);
    }

    #[test]
    fn receiver_drop_requests_one_rewind_and_discards_until_resumed() {
        let mut r = RecvSeq::default();
        r.resume(1, 10);
        assert_eq!(r.judge(10), Verdict::Deliver);
        assert_eq!(r.judge(11), Verdict::Deliver); // but the inbox is full
        assert_eq!(r.dropped(), Some(11));
        assert_eq!(r.judge(12), Verdict::Discard);
        assert_eq!(r.judge(13), Verdict::Discard);
        assert_eq!(r.ack(), 11);
        r.resume(1, 11);
        assert_eq!(judge_run(&mut r, 11, 2), vec![Verdict::Deliver; 2]);
    }

    #[test]
    fn restarted_sender_starts_a_new_stream() {
        let mut r = RecvSeq::default();
        r.resume(1, 0);
        judge_run(&mut r, 0, 50);
        r.resume(2, 0);
        assert_eq!(r.judge(0), Verdict::Deliver);
        assert_eq!(r.ack(), 1);
    }

    #[test]
    fn the_byte_bound_admits_an_exact_fit() {
        let mut b = ReliableBuffer::new(1, 10, 20);
        b.push(Bytes::from(vec![0; 10])).unwrap();
        assert!(b.push(Bytes::from(vec![0; 10])).is_ok(), "10 + 10 fits 20");
        assert!(b.push(Bytes::from(vec![0; 1])).is_err(), "21 does not");
    }

    #[test]
    fn a_set_numbers_its_resumes_with_its_incarnation_and_a_batch_is_empty_only_when_it_is() {
        let set = ReliableSet::new(7, &[(10, 1000, 1), (10, 1000, 1)]);
        assert_eq!(set.incarnation(), 7);
        let mut taken = Taken::default();
        assert!(taken.is_empty());
        taken.resumes.push((0, 3));
        assert!(
            !taken.is_empty(),
            "a resume marker alone is something to write"
        );
        let mut taken = Taken::default();
        taken.pieces.push(Piece {
            lane: 0,
            message: m(1),
            start: 0,
            end: 1,
        });
        assert!(!taken.is_empty(), "a piece alone is something to write");
    }

    #[test]
    fn only_a_message_not_yet_written_at_all_can_be_taken_back() {
        let mut b = ReliableBuffer::new(1, 10, usize::MAX);
        b.push(Bytes::from(vec![0u8; 2])).unwrap();
        b.push(Bytes::from(vec![1u8; 3])).unwrap();
        assert_eq!(b.depth(), (2, 5));
        // Not written: taken back, its bytes with it.
        assert_eq!(b.unpush(), Some(Bytes::from(vec![1u8; 3])));
        assert_eq!(b.depth(), (1, 2));
        // Half written (the first piece of a large message is out): it stays.
        b.push(Bytes::from(vec![2u8; 2 * QUANTUM])).unwrap();
        b.take_piece(0);
        b.take_piece(0);
        assert_eq!(b.unpush(), None, "partly written");
        // Written whole: it stays.
        let mut c = ReliableBuffer::new(1, 10, usize::MAX);
        c.push(m(5)).unwrap();
        c.take_piece(0);
        assert_eq!(c.unpush(), None, "written");
        // Not yet reached by the cursor, behind a written one: taken back.
        c.push(m(6)).unwrap();
        assert_eq!(c.unpush(), Some(m(6)));
    }

    #[test]
    fn acks_after_a_restart_free_what_was_sent_before_it() {
        let mut b = ReliableBuffer::new(1, 10, usize::MAX);
        for i in 0..3 {
            b.push(m(i)).unwrap();
        }
        take_all(&mut b);
        b.restart();
        // Nothing written on the new connection yet, but 0 and 1 reached the peer before.
        assert_eq!(b.ack(2), 2);
        assert_eq!(take_all(&mut b), (Some(2), vec![2]));
    }

    #[test]
    fn a_rewind_resends_from_its_number_before_behind_and_beyond_the_base() {
        let mut b = ReliableBuffer::new(1, 10, usize::MAX);
        for i in 0..5 {
            b.push(m(i)).unwrap();
        }
        take_all(&mut b);
        b.ack(2);
        // From 3, with 2 acknowledged: messages 3 and 4 again, counted as resent.
        b.rewind(3);
        assert_eq!(b.resent, 2);
        assert_eq!(take_all(&mut b), (Some(3), vec![3, 4]));
        // From below the base (acknowledged already): everything unacknowledged again.
        b.rewind(0);
        assert_eq!(b.resent, 5);
        assert_eq!(take_all(&mut b), (Some(2), vec![2, 3, 4]));
        // From the next number not sent yet: nothing to resend, and no new marker.
        b.push(m(5)).unwrap();
        b.rewind(5);
        assert_eq!(b.resent, 5);
        assert_eq!(take_all(&mut b), (None, vec![5]));
    }

    #[test]
    fn a_set_takes_up_to_its_budget_and_restarts_every_stream() {
        let mut set = ReliableSet::new(1, &[(10, 1 << 20, 1)]);
        for i in 0..3 {
            set.buffer(0)
                .unwrap()
                .push(Bytes::from(vec![i; 10]))
                .unwrap();
        }
        let mut taken = Taken::default();
        set.take(20, &mut taken);
        assert_eq!(taken.pieces.len(), 2, "10 + 10 fill a budget of 20");
        set.take(20, &mut Taken::default());
        // A new connection: every stream resends from its first unacknowledged message.
        set.restart();
        let mut again = Taken::default();
        set.take(usize::MAX, &mut again);
        assert_eq!(again.resumes, vec![(0, 0)]);
        assert_eq!(again.pieces.len(), 3);
        // Several channels: a large message goes in pieces, each counted at its own length.
        let mut set = ReliableSet::new(1, &[(10, usize::MAX, 2), (10, usize::MAX, 1)]);
        set.buffer(1)
            .unwrap()
            .push(Bytes::from(vec![0; 4 * QUANTUM]))
            .unwrap();
        let mut taken = Taken::default();
        set.take(3 * QUANTUM, &mut taken);
        assert_eq!(
            taken.pieces.len(),
            3,
            "three pieces of a quantum fill three quanta"
        );
    }

    #[test]
    fn a_receiver_follows_a_sender_that_skipped_ahead_and_discards_while_awaiting_a_resume() {
        let mut r = RecvSeq::default();
        r.resume(1, 0);
        assert_eq!(r.judge(0), Verdict::Deliver);
        // Same sender, numbering further on than expected: follow it rather than stall.
        r.resume(1, 5);
        assert_eq!(r.judge(5), Verdict::Deliver);
        // A local drop: even the expected number is discarded until the sender resumes.
        assert_eq!(r.judge(6), Verdict::Deliver);
        assert_eq!(r.dropped(), Some(6));
        assert_eq!(r.judge(6), Verdict::Discard);
        r.resume(1, 6);
        assert_eq!(r.judge(6), Verdict::Deliver);
    }
}
