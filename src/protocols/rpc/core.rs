//! The request protocol's state machine, pure: frames, events and `now` in; frames to send,
//! completions, deliveries and timers out. Both sides live here: the requests this node has
//! asked (client) and the ones it is answering (server). The driver (`task.rs` and the
//! handles) keeps only the waiters, keyed by the ids this core hands out.

use crate::session::rate::TokenBucket;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{FailReason, Frame};
use crate::identity::{PeerId, PeerMap};

/// The bounds the core enforces (see `RpcConfig` for each one's meaning and default).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_outbound_per_peer: usize,
    pub(crate) max_inbound_per_peer: usize,
    pub(crate) max_inbound_total: usize,
    pub(crate) stream_idle_timeout: Duration,
    pub(crate) window: u32,
    pub(crate) busy_allowance_per_sec: u64,
    pub(crate) budget: u32,
}

/// Why a request ended without an answer, as the core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Timeout,
    Busy,
    Disconnected,
    Rejected(u32),
    Omitted,
    Unavailable,
    TooLarge,
    Undecodable,
    /// The peer broke the protocol (for example more chunks than it was granted).
    Protocol,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Send `frame` to `peer`, on the stream channel when `stream`.
    Send {
        peer: PeerId,
        frame: Frame,
        stream: bool,
    },
    /// A unary request ended: wake its waiter.
    Complete {
        id: u64,
        result: Result<Bytes, Failure>,
    },
    /// A streamed request got a chunk.
    Chunk { id: u64, body: Bytes },
    /// A streamed request ended (`Ok` after its last chunk).
    StreamDone {
        id: u64,
        result: Result<(), Failure>,
    },
    /// A request for the local server.
    Deliver {
        peer: PeerId,
        id: u64,
        stream: bool,
        body: Bytes,
    },
    /// Send an idempotent request's kept frame again, after a reconnect.
    Resend { peer: PeerId, id: u64, frame: Bytes },
    /// The client granted more chunks to a stream this node is sending: wake its sender.
    Credit { peer: PeerId, id: u64 },
    /// The client no longer waits for this request (cancelled, or its connection closed):
    /// its handler's `cancelled()` fires and its answer is not sent.
    Cancelled { peer: PeerId, id: u64 },
    /// The peer spent its protocol budget: ban it.
    Ban { peer: PeerId, score: u32 },
}

/// How a server-side stream stands when its sender wants to send a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    /// One chunk of credit spent: send it.
    Sent,
    /// No credit: wait for an [`Output::Credit`].
    Wait,
    /// The request is gone (cancelled or disconnected).
    Gone,
}

/// Counters, all monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) requests_sent: u64,
    pub(crate) responses_received: u64,
    pub(crate) timeouts: u64,
    pub(crate) busy_local: u64,
    pub(crate) busy_received: u64,
    pub(crate) cancelled_by_caller: u64,
    pub(crate) late_answers: u64,
    pub(crate) requests_served: u64,
    pub(crate) busy_sent: u64,
    pub(crate) cancelled_by_peer: u64,
    pub(crate) duplicate_requests: u64,
    pub(crate) violations: u64,
    pub(crate) resent_after_reconnect: u64,
}

#[derive(Debug)]
struct Outgoing {
    peer: PeerId,
    deadline: Instant,
    /// Kept for an idempotent request to a persistent peer: sent again after a reconnect.
    resend: Option<Bytes>,
    parked: bool,
    stream: Option<ClientStream>,
}

#[derive(Debug, Default)]
struct ClientStream {
    granted: u64,
    received: u64,
    unreported: u32,
}

#[derive(Debug)]
struct Incoming {
    stream: bool,
    credit: u64,
}

#[derive(Debug)]
struct PeerIn {
    in_flight: usize,
    /// Busy answers allowed before the peer is charged.
    busy: TokenBucket,
}

/// Both sides of the request protocol for one node.
#[derive(Debug)]
pub(crate) struct Core {
    limits: Limits,
    next_id: u64,
    outgoing: HashMap<u64, Outgoing>,
    out_per_peer: PeerMap<usize>,
    deadlines: BTreeSet<(Instant, u64)>,
    incoming: HashMap<(PeerId, u64), Incoming>,
    in_per_peer: PeerMap<PeerIn>,
    in_total: usize,
    scores: PeerMap<u32>,
    pub(crate) counts: Counts,
}

impl Core {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            // Ids start at 1 so that 0 is never a live request.
            next_id: 1,
            outgoing: HashMap::new(),
            out_per_peer: PeerMap::default(),
            deadlines: BTreeSet::new(),
            incoming: HashMap::new(),
            in_per_peer: PeerMap::default(),
            in_total: 0,
            scores: PeerMap::default(),
            counts: Counts::default(),
        }
    }

    // ---- client side ----

    /// Opens a request to `peer` that must end by `now + timeout` (for a stream: its first
    /// chunk by then, each next one within the idle timeout). Returns its id.
    ///
    /// # Errors
    /// [`Failure::Busy`] when `peer` already has `max_outbound_per_peer` requests in flight:
    /// refused at once, never queued.
    pub(crate) fn start(
        &mut self,
        peer: PeerId,
        now: Instant,
        timeout: Duration,
        stream: bool,
    ) -> Result<u64, Failure> {
        let count = self.out_per_peer.entry(peer).or_default();
        if *count >= self.limits.max_outbound_per_peer {
            self.counts.busy_local += 1;
            return Err(Failure::Busy);
        }
        *count += 1;
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + timeout;
        self.deadlines.insert((deadline, id));
        self.outgoing.insert(
            id,
            Outgoing {
                peer,
                deadline,
                resend: None,
                parked: false,
                stream: stream.then(|| ClientStream {
                    granted: u64::from(self.limits.window),
                    ..ClientStream::default()
                }),
            },
        );
        self.counts.requests_sent += 1;
        Ok(id)
    }

    /// Keeps an idempotent request's frame, to send again after a reconnect.
    pub(crate) fn keep_for_resend(&mut self, id: u64, frame: Bytes) {
        if let Some(request) = self.outgoing.get_mut(&id) {
            request.resend = Some(frame);
        }
    }

    /// The request could not be sent (local error): forget it, nothing to tell the peer.
    pub(crate) fn abandon(&mut self, id: u64) {
        self.remove_outgoing(id);
    }

    /// The caller stopped waiting: forget the request and tell the server, which stops its
    /// handler. Never charged to anyone.
    pub(crate) fn cancel(&mut self, id: u64, out: &mut Vec<Output>) {
        if let Some(request) = self.remove_outgoing(id) {
            self.counts.cancelled_by_caller += 1;
            if !request.parked {
                out.push(Output::Send {
                    peer: request.peer,
                    frame: Frame::Cancel { id },
                    stream: false,
                });
            }
        }
    }

    /// The consumer of stream `id` took `chunks` chunks: grant the server as many more, in
    /// batches of half a window so credit frames stay rare.
    pub(crate) fn consumed(&mut self, id: u64, chunks: u32, out: &mut Vec<Output>) {
        let batch = (self.limits.window / 2).max(1);
        let Some(request) = self.outgoing.get_mut(&id) else {
            return;
        };
        let Some(stream) = request.stream.as_mut() else {
            return;
        };
        stream.unreported = stream.unreported.saturating_add(chunks);
        if stream.unreported >= batch {
            let chunks = std::mem::take(&mut stream.unreported);
            stream.granted += u64::from(chunks);
            out.push(Output::Send {
                peer: request.peer,
                frame: Frame::Credit { id, chunks },
                stream: false,
            });
        }
    }

    fn remove_outgoing(&mut self, id: u64) -> Option<Outgoing> {
        let request = self.outgoing.remove(&id)?;
        self.deadlines.remove(&(request.deadline, id));
        if let Some(count) = self.out_per_peer.get_mut(&request.peer) {
            *count -= 1;
            if *count == 0 {
                self.out_per_peer.remove(&request.peer);
            }
        }
        Some(request)
    }

    fn finish_outgoing(&mut self, id: u64, result: Result<Bytes, Failure>, out: &mut Vec<Output>) {
        if let Some(request) = self.remove_outgoing(id) {
            out.push(match (request.stream.is_some(), result) {
                (false, result) => Output::Complete { id, result },
                (true, result) => Output::StreamDone {
                    id,
                    result: result.map(|_| ()),
                },
            });
        }
    }

    /// When the next request times out, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Ends every request whose deadline has passed with [`Failure::Timeout`], and tells each
    /// server to stop.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.counts.timeouts += 1;
            let parked = self.outgoing.get(&id).is_some_and(|r| r.parked);
            let peer = self.outgoing.get(&id).map(|r| r.peer);
            self.finish_outgoing(id, Err(Failure::Timeout), out);
            if let (Some(peer), false) = (peer, parked) {
                out.push(Output::Send {
                    peer,
                    frame: Frame::Cancel { id },
                    stream: false,
                });
            }
        }
    }

    // ---- both sides ----

    /// A frame from `peer`.
    pub(crate) fn on_frame(
        &mut self,
        peer: PeerId,
        frame: Frame,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match frame {
            Frame::Request {
                id,
                stream,
                window,
                body,
                ..
            } => self.on_request(peer, id, stream, window, body, now, out),
            Frame::Cancel { id } => {
                if self.finish_incoming(peer, id) {
                    self.counts.cancelled_by_peer += 1;
                    out.push(Output::Cancelled { peer, id });
                }
            }
            Frame::Credit { id, chunks } => {
                let cap = 2 * u64::from(self.limits.window);
                match self.incoming.get_mut(&(peer, id)) {
                    Some(incoming) if incoming.stream => {
                        incoming.credit += u64::from(chunks);
                        if incoming.credit > cap {
                            // More credit than a window is outstanding: a broken client.
                            incoming.credit = cap;
                            self.violation(peer, out);
                        }
                        out.push(Output::Credit { peer, id });
                    }
                    Some(_) => self.violation(peer, out),
                    // A credit for a stream that just ended crossed its end on the wire.
                    None => {}
                }
            }
            Frame::Response { id, body } => self.on_answer(peer, id, Answer::Body(body), out),
            Frame::Fail { id, reason, code } => {
                let failure = match reason {
                    FailReason::Busy => Failure::Busy,
                    FailReason::Omitted => Failure::Omitted,
                    FailReason::Rejected => Failure::Rejected(code),
                    FailReason::Unavailable => Failure::Unavailable,
                    FailReason::TooLarge => Failure::TooLarge,
                    FailReason::Undecodable => Failure::Undecodable,
                };
                if failure == Failure::Busy {
                    self.counts.busy_received += 1;
                }
                self.on_answer(peer, id, Answer::Fail(failure), out);
            }
            Frame::Chunk { id, body } => self.on_answer(peer, id, Answer::Chunk(body, now), out),
            Frame::End { id } => self.on_answer(peer, id, Answer::End, out),
        }
    }

    fn on_answer(&mut self, peer: PeerId, id: u64, answer: Answer, out: &mut Vec<Output>) {
        let Some(request) = self.outgoing.get_mut(&id) else {
            if id >= self.next_id {
                // An answer to a request this node never made.
                self.violation(peer, out);
            } else {
                // Answers to requests that timed out or were cancelled cross on the wire.
                self.counts.late_answers += 1;
            }
            return;
        };
        if request.peer != peer || request.parked {
            // Only the asked peer may answer, on the connection the request went out on.
            if request.peer != peer {
                self.violation(peer, out);
            }
            return;
        }
        match (answer, request.stream.as_mut()) {
            (Answer::Body(body), None) => {
                self.counts.responses_received += 1;
                self.finish_outgoing(id, Ok(body), out);
            }
            (Answer::Fail(failure), _) => self.finish_outgoing(id, Err(failure), out),
            (Answer::Chunk(body, now), Some(stream)) => {
                if stream.received >= stream.granted {
                    self.finish_outgoing(id, Err(Failure::Protocol), out);
                    self.violation(peer, out);
                    return;
                }
                stream.received += 1;
                // A stream has no total deadline: each chunk restarts its idle timer, so a
                // large answer is never cut by a fixed limit.
                let deadline = now + self.limits.stream_idle_timeout;
                self.deadlines.remove(&(request.deadline, id));
                request.deadline = deadline;
                self.deadlines.insert((deadline, id));
                out.push(Output::Chunk { id, body });
            }
            (Answer::End, Some(_)) => {
                self.counts.responses_received += 1;
                self.finish_outgoing(id, Ok(Bytes::new()), out);
            }
            // A whole answer to a stream request, or chunks to a unary one.
            (Answer::Body(_) | Answer::Chunk(..) | Answer::End, _) => {
                self.finish_outgoing(id, Err(Failure::Protocol), out);
                self.violation(peer, out);
            }
        }
    }

    // ---- server side ----

    #[allow(clippy::too_many_arguments)]
    fn on_request(
        &mut self,
        peer: PeerId,
        id: u64,
        stream: bool,
        window: u32,
        body: Bytes,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.incoming.contains_key(&(peer, id)) {
            // The same request again: an idempotent one resent after a reconnect while the
            // first is still running. One handler answers both.
            self.counts.duplicate_requests += 1;
            return;
        }
        let allowance = self.limits.busy_allowance_per_sec;
        let max_per_peer = self.limits.max_inbound_per_peer;
        let state = self.in_per_peer.entry(peer).or_insert(PeerIn {
            in_flight: 0,
            busy: TokenBucket::new(allowance, allowance, now),
        });
        if state.in_flight >= max_per_peer || self.in_total >= self.limits.max_inbound_total {
            self.counts.busy_sent += 1;
            out.push(Output::Send {
                peer,
                frame: Frame::Fail {
                    id,
                    reason: FailReason::Busy,
                    code: 0,
                },
                stream: false,
            });
            // Busy is cheap to answer; a peer that keeps asking far past it is charged.
            // An allowance of 0 charges every busy answer (the bucket would read 0 as no limit).
            if allowance == 0 || !state.busy.try_take(1, now) {
                self.violation(peer, out);
            }
            return;
        }
        state.in_flight += 1;
        self.in_total += 1;
        self.counts.requests_served += 1;
        self.incoming.insert(
            (peer, id),
            Incoming {
                stream,
                credit: u64::from(window.min(self.limits.window.saturating_mul(2))),
            },
        );
        out.push(Output::Deliver {
            peer,
            id,
            stream,
            body,
        });
    }

    /// The local handler of `(peer, id)` is done (answered, rejected or dropped). Returns
    /// whether the request was still wanted, that is whether its answer should be sent.
    pub(crate) fn finish_incoming(&mut self, peer: PeerId, id: u64) -> bool {
        if self.incoming.remove(&(peer, id)).is_none() {
            return false;
        }
        self.in_total -= 1;
        if let Some(state) = self.in_per_peer.get_mut(&peer) {
            state.in_flight -= 1;
        }
        true
    }

    /// The local handler of stream `(peer, id)` wants to send a chunk.
    pub(crate) fn spend(&mut self, peer: PeerId, id: u64) -> Spend {
        match self.incoming.get_mut(&(peer, id)) {
            None => Spend::Gone,
            Some(incoming) if incoming.credit == 0 => Spend::Wait,
            Some(incoming) => {
                incoming.credit -= 1;
                Spend::Sent
            }
        }
    }

    /// Requests the local server is handling now.
    pub(crate) fn serving(&self) -> usize {
        self.in_total
    }

    /// Requests this node is waiting on now.
    pub(crate) fn waiting(&self) -> usize {
        self.outgoing.len()
    }

    /// Peers with requests in flight either way.
    pub(crate) fn peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.out_per_peer.keys().copied().collect();
        peers.extend(self.in_per_peer.keys().copied());
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    // ---- connections ----

    /// `peer`'s connection closed. Its requests to us stop; ours to it fail with
    /// [`Failure::Disconnected`], except idempotent ones to a persistent peer, which wait
    /// (within their deadline) for the reconnect.
    pub(crate) fn on_disconnected(
        &mut self,
        peer: PeerId,
        persistent: bool,
        out: &mut Vec<Output>,
    ) {
        let theirs: Vec<u64> = self
            .incoming
            .keys()
            .filter(|(p, _)| *p == peer)
            .map(|(_, id)| *id)
            .collect();
        for id in theirs {
            self.finish_incoming(peer, id);
            out.push(Output::Cancelled { peer, id });
        }
        self.in_per_peer.remove(&peer);
        self.scores.remove(&peer);
        let ours: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, r)| r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ours {
            match self.outgoing.get_mut(&id) {
                Some(request) if persistent && request.resend.is_some() => request.parked = true,
                _ => self.finish_outgoing(id, Err(Failure::Disconnected), out),
            }
        }
    }

    /// `peer` is connected (again): parked idempotent requests go out once more.
    pub(crate) fn on_connected(&mut self, peer: PeerId, out: &mut Vec<Output>) {
        for (id, request) in &mut self.outgoing {
            if request.peer == peer && request.parked {
                request.parked = false;
                if let Some(frame) = &request.resend {
                    self.counts.resent_after_reconnect += 1;
                    out.push(Output::Resend {
                        peer,
                        id: *id,
                        frame: frame.clone(),
                    });
                }
            }
        }
    }

    fn violation(&mut self, peer: PeerId, out: &mut Vec<Output>) {
        self.counts.violations += 1;
        let score = self.scores.entry(peer).or_default();
        *score += 1;
        if *score == self.limits.budget {
            out.push(Output::Ban {
                peer,
                score: *score,
            });
        }
    }

    /// Charges `peer` for a frame that is not one of ours.
    pub(crate) fn malformed(&mut self, peer: PeerId, out: &mut Vec<Output>) {
        self.violation(peer, out);
    }
}

enum Answer {
    Body(Bytes),
    Fail(Failure),
    Chunk(Bytes, Instant),
    End,
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
