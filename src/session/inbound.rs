//! Inbound protocol for one connection, pure: everything the read task decides about a frame's
//! records. Sequence judging of reliable streams, per-channel rate limits, delivery (through a
//! callback the driver supplies), go-back-N rewinds when a channel's inbox is full, control
//! messages, and the misbehaviour budget. `now` is passed in; the read task only applies the
//! [`Action`]s.

use std::time::Instant;

use bytes::BytesMut;

use super::rate::TokenBucket;
use super::reliable::{RecvSeq, Verdict};
use crate::codec::record::{Body, Record, RecordDecoder};
use crate::codec::{ControlMessage, GoodbyeReason, Violation, decode_control};

/// What became of one message handed to the application's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// In the channel's inbox.
    Ok,
    /// The channel's inbox is full; dropped.
    Full,
    /// The application is gone; nothing can be delivered any more.
    Closed,
    /// The bytes are not a message of the channel's type (the sender's fault).
    Undecodable(Violation),
}

/// An effect for the read task to apply to shared state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Queue this control message (pong, rewind request) ahead of data.
    Send(ControlMessage),
    /// A pong arrived with this nonce (liveness).
    Pong(u64),
    /// The peer acknowledged our reliable stream on channel index `lane` up to `next`.
    Acked { lane: usize, next: u64 },
    /// The peer asks us to resend our reliable stream on `lane` from `from`.
    Rewind { lane: usize, from: u64 },
    /// Acknowledge the peer's stream on `lane`: everything before `next` was delivered.
    Ack { lane: usize, next: u64 },
    /// The peer has admitted the connection.
    Welcomed,
}

/// Why the connection must stop reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The peer said goodbye.
    Goodbye(GoodbyeReason),
    /// The peer spent its misbehaviour budget (total points).
    Misbehaviour(u64),
    /// The application dropped the inbox.
    InboxClosed,
}

/// Counters of one frame, per channel index, for the read task to publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) dropped_inbox_full: u64,
    pub(crate) dropped_rate_limited: u64,
}

/// One channel's inbound limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneLimits {
    pub(crate) id: u16,
    pub(crate) max_message_size: usize,
    pub(crate) messages_per_sec: u64,
    pub(crate) bytes_per_sec: u64,
}

#[derive(Debug)]
struct LaneState {
    id: u16,
    /// This connection's running sequence number on this channel, once the peer sent a
    /// resume marker for it.
    seq: Option<u64>,
    /// A rewind request not yet queued (the control lane was full); retried after every frame,
    /// since this channel's stream from the peer is stalled until the sender gets it.
    pending_rewind: Option<u64>,
    message_rate: TokenBucket,
    byte_rate: TokenBucket,
}

/// The inbound state of one connection.
#[derive(Debug)]
pub(crate) struct InboundSession {
    records: RecordDecoder,
    judge: Judge,
}

/// Everything but the record decoder, so records are judged as the decoder yields them.
#[derive(Debug)]
struct Judge {
    lanes: Vec<LaneState>,
    budget: u64,
    /// Misbehaviour points charged on this connection.
    score: u64,
    /// Records rejected on this connection.
    rejected: u64,
}

impl InboundSession {
    /// `lanes` by channel index (index 0 is the default channel); `budget` misbehaviour points.
    pub(crate) fn new(lanes: &[LaneLimits], budget: u32, now: Instant) -> Self {
        let decoder_limits: Vec<(u16, usize)> =
            lanes.iter().map(|l| (l.id, l.max_message_size)).collect();
        Self {
            records: RecordDecoder::with_channels(&decoder_limits),
            judge: Judge {
                lanes: lanes
                    .iter()
                    .map(|l| LaneState {
                        id: l.id,
                        seq: None,
                        pending_rewind: None,
                        message_rate: TokenBucket::new(l.messages_per_sec, l.messages_per_sec, now),
                        byte_rate: TokenBucket::new(l.bytes_per_sec, l.bytes_per_sec, now),
                    })
                    .collect(),
                budget: u64::from(budget),
                score: 0,
                rejected: 0,
            },
        }
    }

    /// Misbehaviour points charged on this connection.
    pub(crate) fn score(&self) -> u64 {
        self.judge.score
    }

    /// Records rejected on this connection.
    pub(crate) fn rejected(&self) -> u64 {
        self.judge.rejected
    }

    /// Handles one frame's plaintext. `recv` holds our position in the peer's reliable stream
    /// per channel index (shared with the peer's other connections); `deliver` hands one
    /// message to channel index `lane`'s sink. Effects go to `out`, counters to `tally` (by
    /// channel index). Returns why reading must stop, if it must.
    pub(crate) fn on_frame(
        &mut self,
        plaintext: BytesMut,
        now: Instant,
        recv: &mut [RecvSeq],
        deliver: &mut dyn FnMut(usize, Body<'_>) -> Delivered,
        out: &mut Vec<Action>,
        tally: &mut [Tally],
    ) -> Option<Stop> {
        let (records, judge) = (&mut self.records, &mut self.judge);
        let mut stop = None;
        let frame = plaintext.freeze();
        records.decode_borrowed(&frame, &mut |item| {
            if stop.is_some() {
                // Nothing after a stop is acted on.
                return;
            }
            stop = match item {
                Record::Message { channel, body } => {
                    judge.on_message(channel, body, now, recv, deliver, tally)
                }
                Record::Control(body) => judge.on_control(body, recv, out),
                Record::Violation(violation) => judge.charge(&violation),
            };
        });
        for (lane, state) in self.judge.lanes.iter_mut().enumerate() {
            if state.seq.is_some() {
                if let Some(position) = recv.get(lane) {
                    // Acknowledge only what reached the inbox; coalesced with any ack not sent.
                    out.push(Action::Ack {
                        lane,
                        next: position.ack(),
                    });
                }
            }
            if let Some(from) = state.pending_rewind.take() {
                out.push(Action::Send(ControlMessage::Rewind {
                    channel: state.id,
                    from,
                }));
            }
        }
        stop
    }

    /// The read task could not queue the rewind request for `lane` (control lane full): keep it
    /// for the next frame.
    pub(crate) fn rewind_not_sent(&mut self, channel: u16, from: u64) {
        if let Some(lane) = self.judge.lane_of(channel) {
            self.judge.lanes[lane].pending_rewind.get_or_insert(from);
        }
    }
}

impl Judge {
    /// Charges a violation; returns a stop when the budget is spent.
    fn charge(&mut self, violation: &Violation) -> Option<Stop> {
        self.rejected += 1;
        self.score += u64::from(violation.cost());
        (self.score >= self.budget).then_some(Stop::Misbehaviour(self.score))
    }

    fn lane_of(&self, channel: u16) -> Option<usize> {
        // The default channel is always index 0.
        if channel == 0 {
            return Some(0);
        }
        self.lanes.iter().position(|l| l.id == channel)
    }

    fn on_message(
        &mut self,
        channel: u16,
        bytes: Body<'_>,
        now: Instant,
        recv: &mut [RecvSeq],
        deliver: &mut dyn FnMut(usize, Body<'_>) -> Delivered,
        tally: &mut [Tally],
    ) -> Option<Stop> {
        // The record decoder only yields channels it was given, which are ours.
        let lane = self.lane_of(channel)?;
        let state = &mut self.lanes[lane];
        let verdict = match state.seq {
            Some(seq) => {
                state.seq = Some(seq + 1);
                recv.get_mut(lane)
                    .map_or(Verdict::Deliver, |r| r.judge(seq))
            }
            None => Verdict::Deliver,
        };
        if verdict != Verdict::Deliver {
            // Already delivered, or after a gap we asked the sender to refill.
            return None;
        }
        let len = bytes.len();
        if !(state.message_rate.try_take(1, now) && state.byte_rate.try_take(len as u64, now)) {
            if let Some(t) = tally.get_mut(lane) {
                t.dropped_rate_limited += 1;
            }
            self.undelivered(lane, recv);
            return self.charge(&Violation::RateLimited);
        }
        match deliver(lane, bytes) {
            Delivered::Ok => {
                if let Some(t) = tally.get_mut(lane) {
                    t.messages += 1;
                    t.bytes += len as u64;
                }
                None
            }
            Delivered::Full => {
                if let Some(t) = tally.get_mut(lane) {
                    t.messages += 1;
                    t.bytes += len as u64;
                    t.dropped_inbox_full += 1;
                }
                self.undelivered(lane, recv);
                None
            }
            Delivered::Closed => Some(Stop::InboxClosed),
            // The sender's fault: consumed (not resent), and charged.
            Delivered::Undecodable(violation) => self.charge(&violation),
        }
    }

    /// A sequenced message judged deliverable was dropped locally: ask for a resend from it
    /// (queued after this frame, with any acknowledgement).
    fn undelivered(&mut self, lane: usize, recv: &mut [RecvSeq]) {
        let state = &mut self.lanes[lane];
        if state.seq.is_some() {
            if let Some(from) = recv.get_mut(lane).and_then(RecvSeq::dropped) {
                state.pending_rewind = Some(from);
            }
        }
    }

    fn on_control(
        &mut self,
        body: &[u8],
        recv: &mut [RecvSeq],
        out: &mut Vec<Action>,
    ) -> Option<Stop> {
        let message = match decode_control(body) {
            Ok(message) => message,
            Err(violation) => return self.charge(&violation),
        };
        match message {
            ControlMessage::Goodbye { reason } => return Some(Stop::Goodbye(reason)),
            // Answered ahead of data; if the control lane is full the pinger retries.
            ControlMessage::Ping { nonce } => {
                out.push(Action::Send(ControlMessage::Pong { nonce }))
            }
            ControlMessage::Pong { nonce } => out.push(Action::Pong(nonce)),
            ControlMessage::Welcome => out.push(Action::Welcomed),
            ControlMessage::Resume {
                channel,
                incarnation,
                first_seq,
            } => {
                let Some(lane) = self.lane_of(channel) else {
                    return self.charge(&Violation::UnknownChannel(channel));
                };
                if let Some(position) = recv.get_mut(lane) {
                    position.resume(incarnation, first_seq);
                }
                self.lanes[lane].seq = Some(first_seq);
            }
            ControlMessage::Ack { channel, next } => match self.lane_of(channel) {
                Some(lane) => out.push(Action::Acked { lane, next }),
                None => return self.charge(&Violation::UnknownChannel(channel)),
            },
            ControlMessage::Rewind { channel, from } => match self.lane_of(channel) {
                Some(lane) => out.push(Action::Rewind { lane, from }),
                None => return self.charge(&Violation::UnknownChannel(channel)),
            },
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_control;
    use crate::codec::record::{CHANNEL_LEN, RecordKind, put_header};
    use bytes::BufMut;
    use std::time::Duration;

    const VOTES: u16 = 1;
    const PARTS: u16 = 2;

    fn lanes(rate: u64) -> Vec<LaneLimits> {
        [0, VOTES, PARTS]
            .into_iter()
            .map(|id| LaneLimits {
                id,
                max_message_size: 1000,
                messages_per_sec: rate,
                bytes_per_sec: 0,
            })
            .collect()
    }

    #[derive(Default)]
    struct Frame(BytesMut);

    impl Frame {
        fn message(mut self, channel: u16, body: &[u8]) -> Self {
            put_header(&mut self.0, RecordKind::Message, CHANNEL_LEN + body.len());
            self.0.put_u16(channel);
            self.0.extend_from_slice(body);
            self
        }
        fn control(mut self, message: ControlMessage) -> Self {
            let body = encode_control(&message);
            put_header(&mut self.0, RecordKind::Control, body.len());
            self.0.extend_from_slice(&body);
            self
        }
    }

    /// Drives one session with a hand-moved clock and an application whose inboxes are full
    /// for the channels in `full`.
    struct Harness {
        session: InboundSession,
        recv: Vec<RecvSeq>,
        now: Instant,
        delivered: Vec<(usize, u8)>,
        full: Vec<usize>,
    }

    impl Harness {
        fn new(rate: u64, budget: u32) -> Self {
            let now = Instant::now();
            Self {
                session: InboundSession::new(&lanes(rate), budget, now),
                recv: (0..3).map(|_| RecvSeq::default()).collect(),
                now,
                delivered: Vec::new(),
                full: Vec::new(),
            }
        }

        fn frame(&mut self, frame: Frame) -> (Vec<Action>, Option<Stop>, Vec<Tally>) {
            let mut out = Vec::new();
            let mut tally = vec![Tally::default(); 3];
            let (full, delivered) = (&self.full, &mut self.delivered);
            let mut deliver = |lane: usize, body: Body<'_>| {
                if full.contains(&lane) {
                    return Delivered::Full;
                }
                match body.as_slice().first() {
                    Some(&b) => {
                        delivered.push((lane, b));
                        Delivered::Ok
                    }
                    None => Delivered::Undecodable(Violation::Undecodable("empty".into())),
                }
            };
            let stop = self.session.on_frame(
                frame.0,
                self.now,
                &mut self.recv,
                &mut deliver,
                &mut out,
                &mut tally,
            );
            (out, stop, tally)
        }
    }

    fn resume(channel: u16, first_seq: u64) -> ControlMessage {
        ControlMessage::Resume {
            channel,
            incarnation: 7,
            first_seq,
        }
    }

    #[test]
    fn a_full_bulk_inbox_rewinds_bulk_only_while_votes_keep_flowing() {
        let mut h = Harness::new(0, 100);
        h.full = vec![2];
        let (out, stop, tally) = h.frame(
            Frame::default()
                .control(resume(VOTES, 0))
                .control(resume(PARTS, 0))
                .message(PARTS, &[10])
                .message(VOTES, &[1])
                .message(PARTS, &[11])
                .message(VOTES, &[2]),
        );
        assert_eq!(stop, None);
        assert_eq!(
            h.delivered,
            vec![(1, 1), (1, 2)],
            "votes delivered in order"
        );
        assert_eq!(
            tally[2].dropped_inbox_full, 1,
            "the second part is discarded unread"
        );
        assert!(out.contains(&Action::Ack { lane: 1, next: 2 }));
        assert!(out.contains(&Action::Ack { lane: 2, next: 0 }));
        assert!(out.contains(&Action::Send(ControlMessage::Rewind {
            channel: PARTS,
            from: 0
        })));
        // The application catches up; the sender resends parts from 0 after a new marker.
        h.full.clear();
        h.delivered.clear();
        let (out, _, _) = h.frame(
            Frame::default()
                .message(VOTES, &[3])
                .control(resume(PARTS, 0))
                .message(PARTS, &[10])
                .message(PARTS, &[11]),
        );
        assert_eq!(h.delivered, vec![(1, 3), (2, 10), (2, 11)]);
        assert!(out.contains(&Action::Ack { lane: 2, next: 2 }));
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::Send(ControlMessage::Rewind { .. })))
        );
    }

    #[test]
    fn duplicates_after_a_reconnect_are_skipped_per_channel() {
        let mut h = Harness::new(0, 100);
        h.frame(
            Frame::default()
                .control(resume(VOTES, 0))
                .message(VOTES, &[1])
                .message(VOTES, &[2]),
        );
        // A new connection resends from 1: the first is a duplicate.
        let mut h2 = Harness {
            session: InboundSession::new(&lanes(0), 100, h.now),
            recv: std::mem::take(&mut h.recv),
            now: h.now,
            delivered: Vec::new(),
            full: Vec::new(),
        };
        h2.frame(
            Frame::default()
                .control(resume(VOTES, 1))
                .message(VOTES, &[2])
                .message(VOTES, &[3]),
        );
        assert_eq!(h2.delivered, vec![(1, 3)]);
    }

    #[test]
    fn violations_are_charged_until_the_budget_is_spent() {
        let mut h = Harness::new(0, 30);
        // Undecodable (10) and an undeclared channel (1): still open.
        let (_, stop, _) = h.frame(Frame::default().message(VOTES, &[]).message(9, &[1]));
        assert_eq!(stop, None);
        assert_eq!((h.session.score(), h.session.rejected()), (11, 2));
        // An ack on an undeclared channel (1), then undecodable (10) twice: 32 passes 30.
        let (_, stop, _) = h.frame(
            Frame::default()
                .control(ControlMessage::Ack {
                    channel: 9,
                    next: 1,
                })
                .message(0, &[])
                .message(0, &[])
                .message(0, &[5]),
        );
        assert_eq!(stop, Some(Stop::Misbehaviour(32)));
        assert!(
            h.delivered.is_empty(),
            "nothing after the stop is delivered"
        );
    }

    #[test]
    fn each_channel_has_its_own_rate_limit_on_a_hand_moved_clock() {
        let mut h = Harness::new(2, 1000);
        let (_, _, tally) = h.frame(
            Frame::default()
                .message(VOTES, &[1])
                .message(VOTES, &[2])
                .message(VOTES, &[3])
                .message(PARTS, &[9]),
        );
        assert_eq!(tally[1].dropped_rate_limited, 1);
        assert_eq!(
            h.delivered,
            vec![(1, 1), (1, 2), (2, 9)],
            "parts unaffected"
        );
        h.now += Duration::from_millis(500); // one token back
        h.delivered.clear();
        h.frame(Frame::default().message(VOTES, &[4]).message(VOTES, &[5]));
        assert_eq!(h.delivered, vec![(1, 4)]);
    }

    #[test]
    fn control_goes_to_actions_and_goodbye_stops() {
        let mut h = Harness::new(0, 100);
        let (out, stop, _) = h.frame(
            Frame::default()
                .control(ControlMessage::Ping { nonce: 9 })
                .control(ControlMessage::Pong { nonce: 4 })
                .control(ControlMessage::Ack {
                    channel: PARTS,
                    next: 3,
                })
                .control(ControlMessage::Rewind {
                    channel: VOTES,
                    from: 1,
                })
                .control(ControlMessage::Goodbye {
                    reason: GoodbyeReason::Shutdown,
                })
                .message(0, &[1]),
        );
        assert_eq!(
            out,
            vec![
                Action::Send(ControlMessage::Pong { nonce: 9 }),
                Action::Pong(4),
                Action::Acked { lane: 2, next: 3 },
                Action::Rewind { lane: 1, from: 1 },
            ]
        );
        assert_eq!(stop, Some(Stop::Goodbye(GoodbyeReason::Shutdown)));
        assert!(h.delivered.is_empty());
    }
}
