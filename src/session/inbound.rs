//! Inbound protocol for one connection, pure: everything the read task decides about a frame's
//! records. Sequence judging of reliable streams, per-channel rate limits, delivery (through a
//! callback the driver supplies), go-back-N rewinds when a channel's inbox is full, control
//! messages, and the misbehaviour budget. `now` is passed in; the read task only applies the
//! [`Action`]s.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::rate::TokenBucket;
use super::reliable::{RecvSeq, Verdict};
use crate::codec::record::{Inbound as Record, RecordDecoder};
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
    /// Reused between frames, so decoding a frame allocates nothing once warm.
    items: Vec<Record>,
    lanes: Vec<LaneState>,
    budget: u64,
    /// Misbehaviour points charged on this connection.
    pub(crate) score: u64,
    /// Records rejected on this connection.
    pub(crate) rejected: u64,
}

impl InboundSession {
    /// `lanes` by channel index (index 0 is the default channel); `budget` misbehaviour points.
    pub(crate) fn new(lanes: &[LaneLimits], budget: u32, now: Instant) -> Self {
        let decoder_limits: Vec<(u16, usize)> =
            lanes.iter().map(|l| (l.id, l.max_message_size)).collect();
        Self {
            records: RecordDecoder::with_channels(&decoder_limits),
            items: Vec::new(),
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
        }
    }

    fn lane_of(&self, channel: u16) -> Option<usize> {
        self.lanes.iter().position(|l| l.id == channel)
    }

    /// Charges a violation; returns a stop when the budget is spent.
    fn charge(&mut self, violation: &Violation) -> Option<Stop> {
        self.rejected += 1;
        self.score += u64::from(violation.cost());
        (self.score >= self.budget).then_some(Stop::Misbehaviour(self.score))
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
        deliver: &mut dyn FnMut(usize, Bytes) -> Delivered,
        out: &mut Vec<Action>,
        tally: &mut [Tally],
    ) -> Option<Stop> {
        let mut items = std::mem::take(&mut self.items);
        self.records
            .decode_frame(plaintext, &mut |item| items.push(item));
        let mut stop = None;
        for item in items.drain(..) {
            if stop.is_some() {
                break;
            }
            stop = match item {
                Record::Message { channel, bytes } => {
                    self.on_message(channel, bytes, now, recv, deliver, tally)
                }
                Record::Control(body) => self.on_control(&body, recv, out),
                Record::Violation(violation) => self.charge(&violation),
            };
        }
        self.items = items;
        for (lane, state) in self.lanes.iter_mut().enumerate() {
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
        if let Some(lane) = self.lane_of(channel) {
            self.lanes[lane].pending_rewind.get_or_insert(from);
        }
    }

    fn on_message(
        &mut self,
        channel: u16,
        bytes: Bytes,
        now: Instant,
        recv: &mut [RecvSeq],
        deliver: &mut dyn FnMut(usize, Bytes) -> Delivered,
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
