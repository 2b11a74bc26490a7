//! The read task: reads chunks from TCP, splits and opens frames, and hands each frame's
//! plaintext to the pure [`InboundSession`], then applies what it decided: deliveries into the
//! channel slots (never waiting on the application), control messages, acknowledgements and
//! rewinds, counters. It decides nothing itself.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use super::inbox::{Slot, Source, Stage};
use super::link::SocketShared;
use super::stream::Reliable;
use crate::codec::ControlMessage;
use crate::codec::cipher::Opener;
use crate::codec::frame::FrameDecoder;
use crate::codec::record::Body;
use crate::identity::PeerId;
use crate::session::DisconnectReason;
use crate::session::inbound::{Action, Delivered, InboundSession, Stop, Tally};
use crate::session::reliable::RecvSeq;

pub(crate) struct Reader {
    pub(crate) shared: Arc<SocketShared>,
    pub(crate) peer: PeerId,
    /// The node's channel slots, by channel index.
    pub(crate) slots: Arc<[Slot]>,
    pub(crate) read_chunk_size: usize,
    pub(crate) session: InboundSession,
    /// Our position in this peer's reliable streams, by channel index (shared with its other
    /// connections).
    pub(crate) recv: Arc<Mutex<Vec<RecvSeq>>>,
    /// Our reliable streams to this peer, if it is a persistent peer (for its acks and rewinds).
    pub(crate) reliable: Option<Arc<Reliable>>,
    /// The connection's address as an inbox share source (`inbox::source_of`, hashed once).
    pub(crate) source: Source,
}

impl Reader {
    /// Runs until the connection ends; returns why, or `None` when cancelled.
    pub(crate) async fn run(
        mut self,
        mut stream: OwnedReadHalf,
        mut buf: BytesMut,
        opener: Opener,
    ) -> Option<DisconnectReason> {
        let mut frames = FrameDecoder::new(opener);
        let mut actions = Vec::new();
        let mut tally = vec![Tally::default(); self.slots.len()];
        let mut handoff = Handoff {
            compactors: (0..self.slots.len())
                .map(|_| Compactor::new(self.read_chunk_size))
                .collect(),
            stagers: (0..self.slots.len()).map(|_| None).collect(),
        };
        // Reads start small and double while they fill what was reserved, up to a chunk: an
        // idle connection (pings, acks) holds a few KiB instead of a whole read chunk.
        let mut want = MIN_READ.min(self.read_chunk_size);
        // Whether the frames of the last read carried application messages.
        let mut data = false;
        loop {
            loop {
                match frames.decode(&mut buf) {
                    Ok(Some(plaintext)) => {
                        self.shared.stats.frames_in.fetch_add(1, Relaxed);
                        if let Some(stop) =
                            self.frame(plaintext, &mut actions, &mut tally, &mut handoff, &mut data)
                        {
                            return Some(match stop {
                                Stop::Goodbye(r) => DisconnectReason::RemoteGoodbye(r),
                                Stop::Misbehaviour(score) => {
                                    DisconnectReason::Misbehaviour { score }
                                }
                                Stop::InboxClosed => DisconnectReason::InboxClosed,
                            });
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Some(DisconnectReason::Codec(e)),
                }
            }
            if buf.is_empty() && !data && want == MIN_READ {
                // Idle (only control traffic, small reads, nothing partial): hold no buffer
                // while waiting for bytes; the read below allocates one when they are there. A
                // connection carrying messages keeps its buffer and reads as usual.
                buf = BytesMut::new();
                let ready = tokio::select! {
                    biased;
                    () = self.shared.cancel.cancelled() => return None,
                    () = sleep_until(self.session.next_deadline()) => {
                        self.poll_session(&mut actions);
                        continue;
                    }
                    r = stream.readable() => r,
                };
                if let Err(e) = ready {
                    return Some(DisconnectReason::Io(e.kind()));
                }
            }
            data = false;
            buf.reserve(want);
            let read = {
                let mut limited = (&mut buf).limit(want);
                tokio::select! {
                    biased;
                    () = self.shared.cancel.cancelled() => return None,
                    () = sleep_until(self.session.next_deadline()) => {
                        self.poll_session(&mut actions);
                        continue;
                    }
                    r = stream.read_buf(&mut limited) => r,
                }
            };
            match read {
                Ok(0) => return Some(DisconnectReason::Eof),
                Ok(n) => {
                    self.shared.touch();
                    want = next_read_size(want, n, self.read_chunk_size);
                }
                Err(e) => return Some(DisconnectReason::Io(e.kind())),
            }
        }
    }

    /// Runs the session's timed work (deferred resend requests) and applies what it decided.
    fn poll_session(&mut self, actions: &mut Vec<Action>) {
        self.session.poll(std::time::Instant::now(), actions);
        for action in actions.drain(..) {
            self.apply(action);
        }
    }

    fn frame(
        &mut self,
        plaintext: BytesMut,
        actions: &mut Vec<Action>,
        tally: &mut [Tally],
        handoff: &mut Handoff,
        data: &mut bool,
    ) -> Option<Stop> {
        let (score, rejected) = (self.session.score(), self.session.rejected());
        let rtt = self.shared.stats.rtt_micros.load(Relaxed);
        self.session
            .set_rewind_interval(crate::session::inbound::rewind_interval(rtt));
        let stop = {
            let recv = self.recv.clone();
            let mut recv = recv.lock();
            let (peer, slots, source) = (self.peer, &self.slots, self.source);
            let Handoff {
                compactors,
                stagers,
            } = handoff;
            let mut deliver = |lane: usize, body: Body<'_>| {
                let (Some(slot), Some(stager), Some(compactor)) = (
                    slots.get(lane),
                    stagers.get_mut(lane),
                    compactors.get_mut(lane),
                ) else {
                    return Delivered::Closed;
                };
                if stager.is_none() {
                    *stager = slot.stager(source);
                }
                match stager {
                    // Staged: the frame's messages reach the inbox together, below.
                    Some(s) if s.keeps_bodies() => s.stage_bytes(peer, compactor.compact(body)),
                    // Decoded straight from the frame: no reference to it is taken.
                    Some(s) => s.stage_slice(peer, body.as_slice()),
                    // Not opened yet: into the backlog, one by one.
                    None if slot.keeps_bodies() => {
                        slot.deliver(peer, source, compactor.compact(body))
                    }
                    None => slot.deliver_slice(peer, source, body.as_slice()),
                }
            };
            let stop = self.session.on_frame(
                plaintext,
                std::time::Instant::now(),
                &mut recv,
                &mut deliver,
                actions,
                tally,
            );
            // One lock per channel per frame; before the acknowledgements go out, so they
            // cover only what is in the inbox.
            let mut closed = false;
            for stager in stagers.iter_mut().flatten() {
                closed |= !stager.flush();
            }
            stop.or(closed.then_some(Stop::InboxClosed))
        };
        for action in actions.drain(..) {
            // An inbox that closed under the batch got nothing: acknowledge nothing.
            if stop == Some(Stop::InboxClosed) && matches!(action, Action::Ack { .. }) {
                continue;
            }
            self.apply(action);
        }
        let stats = &self.shared.stats;
        if self.session.score() > score {
            tracing::debug!(peer = %self.peer, score = self.session.score(), "rejected inbound records");
            stats
                .misbehaviour
                .fetch_add(self.session.score() - score, Relaxed);
            stats
                .rejected
                .fetch_add(self.session.rejected() - rejected, Relaxed);
        }
        for (lane, t) in tally.iter_mut().enumerate() {
            if *t == Tally::default() {
                continue;
            }
            *data = true;
            if let Some(c) = stats.channels.get(lane) {
                c.messages_in.fetch_add(t.messages, Relaxed);
                c.bytes_in.fetch_add(t.bytes, Relaxed);
                c.dropped_inbox_full
                    .fetch_add(t.dropped_inbox_full, Relaxed);
                c.dropped_rate_limited
                    .fetch_add(t.dropped_rate_limited, Relaxed);
            }
            *t = Tally::default();
        }
        stop
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Send(message) => {
                let rewind = match &message {
                    ControlMessage::Rewind { channel, from } => Some((*channel, *from)),
                    _ => None,
                };
                if !self.shared.queue.push_control(message) {
                    // A full control lane: a lost pong is retried by the pinger, but a lost
                    // rewind would stall that channel's stream, so it is kept for next frame.
                    if let Some((channel, from)) = rewind {
                        self.session.rewind_not_sent(channel, from);
                    }
                }
            }
            Action::Pong(nonce) => self.shared.pong(nonce),
            Action::Acked { lane, next } => {
                if let Some(reliable) = &self.reliable {
                    reliable.ack(lane, next);
                }
            }
            Action::Rewind { lane, from } => {
                if let Some(reliable) = &self.reliable {
                    reliable.rewind(lane, from);
                }
            }
            Action::Ack { lane, next } => self.shared.queue.set_ack(lane, next),
            Action::Welcomed => {
                self.shared
                    .welcome_seen
                    .store(true, std::sync::atomic::Ordering::Release);
                self.shared.welcomed.notify_one();
            }
        }
    }
}

/// How a read task hands messages over, per channel: the arena for kept small bodies, and a
/// batch once the channel is open.
struct Handoff {
    /// One arena per channel: a channel's inbox is first in, first out, so its arenas are freed
    /// in order as the application takes the messages (one arena shared by a fast and a slow
    /// channel could be pinned whole by one slow message).
    compactors: Vec<Compactor>,
    stagers: Vec<Option<Box<dyn Stage>>>,
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The first read's size, and the smallest.
const MIN_READ: usize = 4 * 1024;

/// The next read's size after a read of `got` bytes into `want`: double when it filled what was
/// reserved (more is waiting), halve when it used under a quarter, within `MIN_READ..=max`.
fn next_read_size(want: usize, got: usize, max: usize) -> usize {
    if got >= want {
        (want * 2).min(max)
    } else if got < want / 4 {
        (want / 2).max(MIN_READ).min(max)
    } else {
        want
    }
}

/// Where a small body that the application will keep (a raw [`Bytes`] channel, or a channel's
/// backlog) is copied before delivery.
///
/// A body handed over as a slice of its frame keeps the whole receive buffer it was read into
/// alive: a 64-byte message held in an inbox would pin a 64 KiB chunk, and an inbox of them
/// thousands of times its byte bound. So bodies below half a read chunk are copied into a shared
/// arena, packed densely (one allocation per arena, not per message), and only larger bodies,
/// whose buffer is mostly theirs, go through without a copy. Each channel has its own arena and
/// its inbox is first in, first out, so arenas are freed in order: memory pinned by kept bodies is
/// the bytes the inbox holds (which it bounds) plus at most one partly used arena per read task
/// and channel.
#[derive(Debug)]
pub(crate) struct Compactor {
    arena: BytesMut,
    /// Bodies this long or longer are delivered as slices of their frame.
    slice_from: usize,
}

/// Size of one arena.
const ARENA: usize = 64 * 1024;

impl Compactor {
    pub(crate) fn new(read_chunk_size: usize) -> Self {
        Self {
            arena: BytesMut::new(),
            slice_from: (read_chunk_size / 2).max(ARENA / 2),
        }
    }

    /// The body to deliver: a slice of its frame if large, else a copy in the arena.
    pub(crate) fn compact(&mut self, body: Body<'_>) -> Bytes {
        if body.len() >= self.slice_from {
            return body.into_bytes();
        }
        if self.arena.capacity() < body.len() {
            // The old arena lives on only in the bodies cut from it.
            self.arena = BytesMut::with_capacity(ARENA.max(body.len()));
        }
        self.arena.extend_from_slice(body.as_slice());
        self.arena.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grow_while_full_and_shrink_when_mostly_empty() {
        let max = 64 * 1024;
        assert_eq!(next_read_size(4096, 4096, max), 8192);
        assert_eq!(next_read_size(32 * 1024, 32 * 1024, max), max);
        assert_eq!(next_read_size(max, max, max), max, "never above a chunk");
        assert_eq!(next_read_size(max, 100, max), 32 * 1024);
        assert_eq!(
            next_read_size(4096, 10, max),
            4096,
            "never below the minimum"
        );
        assert_eq!(next_read_size(8192, 4000, max), 8192, "half full: kept");
        assert_eq!(
            next_read_size(4096, 4096, 2048),
            2048,
            "a chunk below the minimum"
        );
    }

    #[test]
    fn small_bodies_are_packed_into_an_arena_and_large_ones_pass_through() {
        let mut compactor = Compactor::new(64 * 1024);
        let frame = Bytes::from(vec![7u8; 64 * 1024]);
        let body = |start, end| Body::Frame {
            frame: &frame,
            start,
            end,
        };
        let small = compactor.compact(body(10, 74));
        assert_eq!(&small[..], &frame[10..74]);
        assert_ne!(
            small.as_ptr(),
            frame[10..].as_ptr(),
            "copied out of the frame"
        );
        let next = compactor.compact(body(100, 164));
        // Packed: the second body sits right after the first in the same arena.
        assert_eq!(next.as_ptr(), small.as_ptr().wrapping_add(64));
        let large = compactor.compact(body(0, 40 * 1024));
        assert_eq!(large.as_ptr(), frame.as_ptr(), "a large body is not copied");
        // A full arena is replaced, not grown: earlier bodies keep their bytes.
        for _ in 0..2000 {
            let kept = compactor.compact(body(0, 64));
            assert_eq!(&kept[..], &[7u8; 64][..]);
        }
        assert_eq!(&small[..], &frame[10..74]);
    }
}
