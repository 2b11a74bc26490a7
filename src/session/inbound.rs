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
    /// The inbox is under pressure and the sender's address holds its fair share; dropped.
    OverShare,
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

/// Control records accepted per second per connection (burst: one second's worth). Far above an
/// honest peer's (at most a pong, a resume, an ack and a rewind per channel per frame of ours),
/// but a flood of them is cut: each one over the rate is ignored and charged a point.
pub(crate) const CONTROL_PER_SEC: u64 = 200_000;
/// Messages dropped past the sender's inbox share per misbehaviour point charged.
pub(crate) const OVER_SHARE_PER_POINT: u64 = 256;
/// Pings answered per second per connection (an honest peer pings every `ping_interval`).
pub(crate) const PINGS_PER_SEC: u64 = 10;
/// Least time between two resends a peer can ask for on one channel, before a round trip has
/// been measured: a second request within it waits until it passes, and further requests
/// meanwhile are charged. Once the round trip is known it is twice that (see
/// [`rewind_interval`]): an honest peer asks once per resume marker, so never sooner than a round
/// trip, and a resend storm gets at most one resend of the same data per round trip.
pub(crate) const REWIND_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The spacing of resend requests for a connection whose measured round trip is `rtt_micros`
/// (0: not measured yet): twice the round trip, within 1 ms and 100 ms.
pub(crate) fn rewind_interval(rtt_micros: u64) -> std::time::Duration {
    use std::time::Duration;
    if rtt_micros == 0 {
        return REWIND_INTERVAL;
    }
    Duration::from_micros(rtt_micros.saturating_mul(2))
        .clamp(Duration::from_millis(1), Duration::from_millis(100))
}
/// Largest first sequence number a `Resume` may carry: counting on from it can never wrap.
pub(crate) const MAX_FIRST_SEQ: u64 = u64::MAX / 2;

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
    /// When a resend request on this channel was last passed on.
    last_rewind: Option<Instant>,
    /// A resend request waiting for `REWIND_INTERVAL` to pass since the last one.
    deferred_rewind: Option<u64>,
}

impl LaneState {
    /// Whether a resend request may be passed on at `now`: `interval` since the last one.
    fn rewind_due(&self, now: Instant, interval: std::time::Duration) -> bool {
        self.last_rewind
            .is_none_or(|last| now.saturating_duration_since(last) >= interval)
    }
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
    /// Least time between two resends passed on per channel (see [`rewind_interval`]).
    rewind_interval: std::time::Duration,
    control_rate: TokenBucket,
    ping_rate: TokenBucket,
    budget: u64,
    /// Misbehaviour points charged on this connection.
    score: u64,
    /// Records rejected on this connection.
    rejected: u64,
    /// Messages dropped because this sender's address was past its share of the inbox.
    over_share: u64,
    /// This connection's draw on its address's node-wide message budget, if any.
    ip: Option<crate::session::rate::IpAllowance>,
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
                        last_rewind: None,
                        deferred_rewind: None,
                    })
                    .collect(),
                rewind_interval: REWIND_INTERVAL,
                control_rate: TokenBucket::new(CONTROL_PER_SEC, CONTROL_PER_SEC, now),
                ping_rate: TokenBucket::new(PINGS_PER_SEC, PINGS_PER_SEC, now),
                budget: u64::from(budget),
                score: 0,
                rejected: 0,
                over_share: 0,
                ip: None,
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

    /// Draws this connection's messages from its address's node-wide budget too.
    pub(crate) fn set_ip_budget(&mut self, budget: std::sync::Arc<crate::session::rate::IpBudget>) {
        self.judge.ip = Some(crate::session::rate::IpAllowance::new(budget));
    }

    /// Charges this connection's partly received messages to the node-wide `budget`.
    pub(crate) fn set_reassembly_budget(
        &mut self,
        budget: std::sync::Arc<crate::codec::record::ReassemblyBudget>,
    ) {
        self.records.set_budget(budget);
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
                Record::Control(body) => judge.on_control(body, now, recv, out),
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
        self.judge.due_rewinds(now, out);
        stop
    }

    /// Sets the spacing of resend requests (the read task passes [`rewind_interval`] of the
    /// connection's measured round trip).
    pub(crate) fn set_rewind_interval(&mut self, interval: std::time::Duration) {
        self.judge.rewind_interval = interval;
    }

    /// When [`InboundSession::poll`] must run next, if ever: a deferred resend request's time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let interval = self.judge.rewind_interval;
        self.judge
            .lanes
            .iter()
            .filter(|l| l.deferred_rewind.is_some())
            .filter_map(|l| l.last_rewind.map(|last| last + interval))
            .min()
    }

    /// Passes on the deferred resend requests that are due at `now` (the read task calls it at
    /// [`InboundSession::next_deadline`], so none waits for the peer's next frame).
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.judge.due_rewinds(now, out);
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

    /// Deferred resend requests whose interval has passed go to the stream now.
    fn due_rewinds(&mut self, now: Instant, out: &mut Vec<Action>) {
        let interval = self.rewind_interval;
        for (lane, state) in self.lanes.iter_mut().enumerate() {
            let Some(from) = state.deferred_rewind else {
                continue;
            };
            if state.rewind_due(now, interval) {
                state.deferred_rewind = None;
                state.last_rewind = Some(now);
                out.push(Action::Rewind { lane, from });
            }
        }
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
                // Checked: a Resume is bounded by MAX_FIRST_SEQ, so this never runs out, but a
                // wrap must never be possible.
                state.seq = seq.checked_add(1);
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
        let from_ip = self.ip.as_mut().is_none_or(|ip| ip.try_take(now));
        if !(from_ip
            && state.message_rate.try_take(1, now)
            && state.byte_rate.try_take(len as u64, now))
        {
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
            dropped @ (Delivered::Full | Delivered::OverShare) => {
                if let Some(t) = tally.get_mut(lane) {
                    t.messages += 1;
                    t.bytes += len as u64;
                    t.dropped_inbox_full += 1;
                }
                let sequenced = self.lanes[lane].seq.is_some();
                self.undelivered(lane, recv);
                if dropped == Delivered::Full {
                    return None;
                }
                // Past its share: a sequenced (persistent) peer gets it again by resend; anyone
                // else is flooding past its share while the application lags, charged a point
                // per OVER_SHARE_PER_POINT drops, so a burst costs little and a flood its link.
                self.over_share += 1;
                if !sequenced && self.over_share % OVER_SHARE_PER_POINT == 0 {
                    return self.charge(&Violation::InboxShare);
                }
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
        now: Instant,
        recv: &mut [RecvSeq],
        out: &mut Vec<Action>,
    ) -> Option<Stop> {
        if !self.control_rate.try_take(1, now) {
            return self.charge(&Violation::ControlRateLimited);
        }
        let message = match decode_control(body) {
            Ok(message) => message,
            Err(violation) => return self.charge(&violation),
        };
        match message {
            ControlMessage::Goodbye { reason } => return Some(Stop::Goodbye(reason)),
            // Answered ahead of data; if the control lane is full the pinger retries.
            ControlMessage::Ping { nonce } => {
                if !self.ping_rate.try_take(1, now) {
                    return self.charge(&Violation::ControlRateLimited);
                }
                out.push(Action::Send(ControlMessage::Pong { nonce }));
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
                if first_seq > MAX_FIRST_SEQ {
                    return self.charge(&Violation::SequenceOverflow);
                }
                if let Some(position) = recv.get_mut(lane) {
                    position.resume(incarnation, first_seq);
                }
                self.lanes[lane].seq = Some(first_seq);
            }
            ControlMessage::Ack { channel, next } => match self.lane_of(channel) {
                Some(lane) => out.push(Action::Acked { lane, next }),
                None => return self.charge(&Violation::UnknownChannel(channel)),
            },
            ControlMessage::Rewind { channel, from } => {
                let Some(lane) = self.lane_of(channel) else {
                    return self.charge(&Violation::UnknownChannel(channel));
                };
                let interval = self.rewind_interval;
                let state = &mut self.lanes[lane];
                let due = state.rewind_due(now, interval);
                if state.deferred_rewind.is_some() {
                    // Asked again while the last request still waits: an honest peer waits for
                    // the resume marker, which has not been sent.
                    let earliest = state.deferred_rewind.map_or(from, |d| d.min(from));
                    state.deferred_rewind = Some(earliest);
                    return self.charge(&Violation::ExcessRewind);
                }
                if due {
                    state.last_rewind = Some(now);
                    out.push(Action::Rewind { lane, from });
                } else {
                    // Too soon after the last resend: kept, and passed on once the interval
                    // has passed (at a later frame), so an honest request is never lost.
                    state.deferred_rewind = Some(from);
                }
            }
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
        /// The first fragment of a message of `total` bytes.
        fn start(mut self, channel: u16, total: u32, body: &[u8]) -> Self {
            put_header(&mut self.0, RecordKind::Start, CHANNEL_LEN + 4 + body.len());
            self.0.put_u16(channel);
            self.0.put_u32(total);
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
        /// Lanes whose inbox refuses as past this peer's share.
        over: Vec<usize>,
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
                over: Vec::new(),
            }
        }

        fn frame(&mut self, frame: Frame) -> (Vec<Action>, Option<Stop>, Vec<Tally>) {
            let mut out = Vec::new();
            let mut tally = vec![Tally::default(); 3];
            let (full, over, delivered) = (&self.full, &self.over, &mut self.delivered);
            let mut deliver = |lane: usize, body: Body<'_>| {
                if full.contains(&lane) {
                    return Delivered::Full;
                }
                if over.contains(&lane) {
                    return Delivered::OverShare;
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
            over: Vec::new(),
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
    fn the_byte_rate_limit_drops_and_charges_what_exceeds_it() {
        let mut h = Harness::new(0, 1000);
        let limits: Vec<LaneLimits> = lanes(0)
            .into_iter()
            .map(|l| LaneLimits {
                bytes_per_sec: 100,
                ..l
            })
            .collect();
        h.session = InboundSession::new(&limits, 1000, h.now);
        let body = |first: u8| vec![first; 60];
        // 100 bytes a second, burst 100: the first 60-byte message passes, the second does not.
        let (_, _, tally) = h.frame(
            Frame::default()
                .message(VOTES, &body(1))
                .message(VOTES, &body(2)),
        );
        assert_eq!(h.delivered, vec![(1, 1)]);
        assert_eq!(tally[1].dropped_rate_limited, 1);
        // One point per message over the rate (README: "rate-limited (1 each)").
        assert_eq!(h.session.score(), 1);
        // Each channel has its own byte budget.
        h.frame(Frame::default().message(PARTS, &body(3)));
        assert_eq!(h.delivered, vec![(1, 1), (2, 3)]);
        // 0.2 s later 20 bytes are back: 40 + 20 = 60 is enough again.
        h.now += Duration::from_millis(200);
        h.frame(Frame::default().message(VOTES, &body(4)));
        assert_eq!(h.delivered, vec![(1, 1), (2, 3), (1, 4)]);
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

    fn pongs(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send(ControlMessage::Pong { .. })))
            .count()
    }

    fn rewinds(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Rewind { from, .. } => Some(*from),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_ping_flood_is_answered_at_the_ping_rate_charged_and_cut() {
        let mut h = Harness::new(0, 100);
        let mut frame = Frame::default();
        for nonce in 0..(PINGS_PER_SEC + 5) {
            frame = frame.control(ControlMessage::Ping { nonce });
        }
        let (actions, stop, _) = h.frame(frame);
        assert_eq!(
            pongs(&actions),
            PINGS_PER_SEC as usize,
            "the rest is not answered"
        );
        assert_eq!(h.session.score(), 5, "each unanswered ping costs a point");
        assert_eq!(stop, None);
        // A second later the rate allows pings again; a flood spends the budget and is cut.
        h.now += Duration::from_secs(1);
        let mut frame = Frame::default();
        for nonce in 0..200 {
            frame = frame.control(ControlMessage::Ping { nonce });
        }
        let (actions, stop, _) = h.frame(frame);
        assert_eq!(pongs(&actions), PINGS_PER_SEC as usize);
        assert_eq!(stop, Some(Stop::Misbehaviour(100)));
    }

    #[test]
    fn control_records_beyond_the_control_rate_are_charged() {
        let mut h = Harness::new(0, u32::MAX);
        let mut frame = Frame::default();
        for next in 0..(CONTROL_PER_SEC + 3) {
            frame = frame.control(ControlMessage::Ack { channel: 0, next });
        }
        let (actions, _, _) = h.frame(frame);
        let acked = actions
            .iter()
            .filter(|a| matches!(a, Action::Acked { .. }))
            .count();
        assert_eq!(acked, CONTROL_PER_SEC as usize);
        assert_eq!(h.session.score(), 3);
    }

    #[test]
    fn resend_requests_are_spaced_and_a_storm_is_charged_but_none_is_lost() {
        let mut h = Harness::new(0, 1000);
        let rewind = |from| ControlMessage::Rewind {
            channel: VOTES,
            from,
        };
        let (actions, _, _) = h.frame(Frame::default().control(rewind(5)));
        assert_eq!(rewinds(&actions), vec![5], "the first is passed on at once");
        // Within the interval: kept for later, not charged (an honest peer may ask again one
        // round trip later on a fast link).
        h.now += REWIND_INTERVAL / 4;
        let (actions, _, _) = h.frame(Frame::default().control(rewind(7)));
        assert!(rewinds(&actions).is_empty());
        assert_eq!(h.session.score(), 0);
        // Asking again while that one waits is a storm: charged, folded into the earliest.
        let mut storm = Frame::default();
        for from in [3, 9, 4] {
            storm = storm.control(rewind(from));
        }
        let (actions, _, _) = h.frame(storm);
        assert!(rewinds(&actions).is_empty());
        assert_eq!(h.session.score(), 3);
        // Due when the interval has passed since the last one passed on: at that deadline the
        // read task polls, with no frame from the peer needed.
        let first = h.now - REWIND_INTERVAL / 4;
        assert_eq!(h.session.next_deadline(), Some(first + REWIND_INTERVAL));
        let mut polled = Vec::new();
        h.session.poll(first + REWIND_INTERVAL / 2, &mut polled);
        assert!(polled.is_empty(), "not yet due");
        h.session.poll(first + REWIND_INTERVAL, &mut polled);
        assert_eq!(rewinds(&polled), vec![3]);
        assert_eq!(h.session.next_deadline(), None);
        // A frame after that finds nothing deferred.
        h.now += REWIND_INTERVAL;
        let (actions, _, _) = h.frame(Frame::default().control(ControlMessage::Ack {
            channel: 0,
            next: 0,
        }));
        assert!(rewinds(&actions).is_empty());
    }

    #[test]
    fn resends_are_spaced_by_twice_the_round_trip_within_bounds() {
        assert_eq!(rewind_interval(0), REWIND_INTERVAL, "not measured yet");
        assert_eq!(rewind_interval(100), Duration::from_millis(1), "the floor");
        assert_eq!(rewind_interval(20_000), Duration::from_millis(40));
        assert_eq!(
            rewind_interval(u64::MAX),
            Duration::from_millis(100),
            "the ceiling"
        );
        let mut h = Harness::new(0, 1000);
        h.session.set_rewind_interval(Duration::from_millis(40));
        let rewind = |from| ControlMessage::Rewind {
            channel: VOTES,
            from,
        };
        let (actions, _, _) = h.frame(Frame::default().control(rewind(1)));
        assert_eq!(rewinds(&actions), vec![1]);
        h.now += Duration::from_millis(39);
        let (actions, _, _) = h.frame(Frame::default().control(rewind(2)));
        assert!(rewinds(&actions).is_empty(), "deferred");
        assert_eq!(
            h.session.next_deadline(),
            Some(h.now + Duration::from_millis(1))
        );
    }

    #[test]
    fn a_resume_that_would_wrap_is_charged_and_ignored() {
        let mut h = Harness::new(0, 1000);
        let (_, stop, _) = h.frame(
            Frame::default()
                .control(ControlMessage::Resume {
                    channel: VOTES,
                    incarnation: 1,
                    first_seq: u64::MAX,
                })
                .message(VOTES, &[1]),
        );
        assert_eq!(stop, None);
        assert_eq!(h.session.score(), Violation::SequenceOverflow.cost().into());
        // Ignored: the stream is not numbered from there, so nothing counts on from u64::MAX.
        assert_eq!(h.session.judge.lanes[1].seq, None);
        assert_eq!(h.delivered, vec![(1, 1)]);
    }

    #[test]
    fn delivered_and_dropped_messages_are_tallied_with_their_bytes() {
        let mut h = Harness::new(0, 1000);
        h.full = vec![2];
        let (_, stop, tally) = h.frame(
            Frame::default()
                .message(VOTES, &[1, 2, 3])
                .message(VOTES, &[4, 5, 6])
                .message(PARTS, &[7, 8])
                .message(PARTS, &[9, 10]),
        );
        assert_eq!(stop, None);
        assert_eq!((tally[1].messages, tally[1].bytes), (2, 6));
        // Received, then dropped at the full inbox: counted as both.
        assert_eq!((tally[2].messages, tally[2].bytes), (2, 4));
        assert_eq!(tally[2].dropped_inbox_full, 2);
        // A full inbox is the application's lag, never charged, however long it lasts.
        for _ in 0..OVER_SHARE_PER_POINT {
            h.frame(Frame::default().message(PARTS, &[1]));
        }
        assert_eq!(h.session.score(), 0);
    }

    #[test]
    fn drops_past_the_share_are_charged_a_point_per_batch_unless_the_peer_resends() {
        let mut h = Harness::new(0, 1000);
        h.over = vec![1, 2];
        h.frame(Frame::default().control(resume(PARTS, 0)));
        for _ in 0..OVER_SHARE_PER_POINT - 1 {
            h.frame(Frame::default().message(VOTES, &[1]));
        }
        assert_eq!(h.session.score(), 0, "a burst costs nothing");
        h.frame(Frame::default().message(VOTES, &[1]));
        let point = u64::from(Violation::InboxShare.cost());
        assert_eq!(h.session.score(), point, "a point per batch of drops");
        // A sequenced (persistent) peer's drops are resent, not charged.
        for seq in 0..2 * OVER_SHARE_PER_POINT {
            let (_, stop, _) = h.frame(Frame::default().message(PARTS, &[1]));
            assert_eq!(stop, None, "drop {seq}");
        }
        assert_eq!(h.session.score(), point);
    }

    #[test]
    fn the_largest_first_sequence_number_is_accepted() {
        // Half the range: a stream counting on from it never wraps.
        assert_eq!(MAX_FIRST_SEQ, (1 << 63) - 1);
        let mut h = Harness::new(0, 1000);
        h.frame(Frame::default().control(resume(VOTES, MAX_FIRST_SEQ)));
        assert_eq!(h.session.score(), 0);
        assert_eq!(h.session.judge.lanes[1].seq, Some(MAX_FIRST_SEQ));
        h.frame(Frame::default().control(resume(PARTS, MAX_FIRST_SEQ + 1)));
        assert_eq!(h.session.score(), Violation::SequenceOverflow.cost().into());
    }

    #[test]
    fn an_address_budget_limits_every_connection_drawing_from_it() {
        let mut h = Harness::new(0, 1000);
        let budget = std::sync::Arc::new(crate::session::rate::IpBudget::new(2, h.now));
        h.session.set_ip_budget(budget);
        let mut frame = Frame::default();
        for i in 0..5 {
            frame = frame.message(0, &[i]);
        }
        let (_, _, tally) = h.frame(frame);
        assert_eq!(h.delivered, vec![(0, 0), (0, 1)]);
        assert_eq!(tally[0].dropped_rate_limited, 3);
    }

    #[test]
    fn a_fragment_beyond_the_node_wide_reassembly_budget_is_refused() {
        let mut h = Harness::new(0, 1000);
        let budget = crate::codec::record::ReassemblyBudget::new(50);
        h.session.set_reassembly_budget(budget.clone());
        h.frame(Frame::default().start(0, 900, &[1; 100]));
        assert_eq!(budget.refused(), 1);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_resend_request_that_could_not_be_queued_goes_out_with_the_next_frame() {
        fn requests(actions: &[Action]) -> Vec<u64> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Send(ControlMessage::Rewind {
                        channel: PARTS,
                        from,
                    }) => Some(*from),
                    _ => None,
                })
                .collect()
        }
        let mut h = Harness::new(0, 1000);
        h.full = vec![2];
        let (out, _, _) = h.frame(
            Frame::default()
                .control(resume(PARTS, 0))
                .message(PARTS, &[10]),
        );
        assert_eq!(requests(&out), vec![0], "{out:?}");
        h.full.clear();
        let (out, _, _) = h.frame(Frame::default().message(VOTES, &[1]));
        assert_eq!(requests(&out), Vec::<u64>::new(), "asked once");
        // The read task's control lane was full: the request is handed back and goes out with
        // the next frame.
        h.session.rewind_not_sent(PARTS, 0);
        let (out, _, _) = h.frame(Frame::default().message(VOTES, &[2]));
        assert_eq!(requests(&out), vec![0], "asked again");
    }
}
