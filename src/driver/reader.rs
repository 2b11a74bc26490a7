//! The read task: reads chunks from TCP, splits and opens frames, decodes records, and hands
//! messages to the inbox without ever waiting on the application. Control messages are handled
//! here; record violations are charged to the peer until its budget is spent.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::inbox::{DeliverError, InboxSender};
use super::link::SocketShared;
use super::stream::Reliable;
use crate::codec::cipher::Opener;
use crate::codec::frame::FrameDecoder;
use crate::codec::record::{Inbound, RecordDecoder};
use crate::codec::{ControlMessage, Violation, decode_control, decode_message};
use crate::identity::PeerId;
use crate::session::DisconnectReason;
use crate::session::rate::TokenBucket;
use crate::session::reliable::{RecvSeq, Verdict};
use parking_lot::Mutex;

pub(crate) struct Reader<M> {
    pub(crate) shared: Arc<SocketShared>,
    pub(crate) peer: PeerId,
    pub(crate) inbox: InboxSender<M>,
    pub(crate) read_chunk_size: usize,
    pub(crate) max_message_size: usize,
    pub(crate) budget: u32,
    /// Inbound messages per second.
    pub(crate) message_rate: TokenBucket,
    /// Inbound encoded bytes per second.
    pub(crate) byte_rate: TokenBucket,
    /// Our position in this peer's reliable stream (shared with its other connections).
    pub(crate) recv: Arc<Mutex<RecvSeq>>,
    /// This connection's running sequence number, once the peer sent a resume marker.
    pub(crate) seq: Option<u64>,
    /// Our reliable stream to this peer, if it is a persistent peer (for its acks and rewinds).
    pub(crate) reliable: Option<Arc<Reliable>>,
    /// A rewind request not yet queued (the control lane was full); retried after every frame,
    /// since the stream from this peer is stalled until the sender gets it.
    pub(crate) pending_rewind: Option<u64>,
}

/// Why a frame's records made the reader stop.
enum Stop {
    Goodbye(crate::codec::GoodbyeReason),
    Misbehaviour(u64),
    InboxClosed,
}

impl<M: DeserializeOwned + Send + 'static> Reader<M> {
    /// Runs until the connection ends; returns why, or `None` when cancelled.
    pub(crate) async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut stream: R,
        mut buf: BytesMut,
        opener: Opener,
    ) -> Option<DisconnectReason> {
        let mut frames = FrameDecoder::new(opener);
        let mut records = RecordDecoder::new(self.max_message_size);
        loop {
            loop {
                match frames.decode(&mut buf) {
                    Ok(Some(plaintext)) => {
                        self.shared.stats.frames_in.fetch_add(1, Relaxed);
                        if let Some(stop) = self.handle_frame(&mut records, plaintext) {
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
            buf.reserve(self.read_chunk_size);
            let read = {
                let mut limited = (&mut buf).limit(self.read_chunk_size);
                tokio::select! {
                    biased;
                    () = self.shared.cancel.cancelled() => return None,
                    r = stream.read_buf(&mut limited) => r,
                }
            };
            match read {
                Ok(0) => return Some(DisconnectReason::Eof),
                Ok(_) => self.shared.touch(),
                Err(e) => return Some(DisconnectReason::Io(e.kind())),
            }
        }
    }

    fn handle_frame(&mut self, records: &mut RecordDecoder, plaintext: BytesMut) -> Option<Stop> {
        let mut stop = None;
        let (mut messages, mut bytes) = (0u64, 0u64);
        let now = std::time::Instant::now();
        let recv = self.recv.clone();
        let mut recv = recv.lock();
        records.decode_frame(plaintext, &mut |item| {
            if stop.is_some() {
                return;
            }
            match item {
                Inbound::Message(encoded) => {
                    let verdict = match self.seq {
                        Some(seq) => {
                            self.seq = Some(seq + 1);
                            recv.judge(seq)
                        }
                        None => Verdict::Deliver,
                    };
                    if verdict != Verdict::Deliver {
                        // Already delivered, or after a gap we asked the sender to refill.
                        return;
                    }
                    if !(self.message_rate.try_take(1, now)
                        && self.byte_rate.try_take(encoded.len() as u64, now))
                    {
                        self.shared.stats.dropped_rate_limited.fetch_add(1, Relaxed);
                        self.undelivered(&mut recv);
                        stop = self.charge(&Violation::RateLimited);
                        return;
                    }
                    match decode_message::<M>(&encoded) {
                        Ok(message) => {
                            messages += 1;
                            bytes += encoded.len() as u64;
                            match self.inbox.try_deliver(self.peer, message, encoded.len()) {
                                Ok(()) => {}
                                Err(DeliverError::Full) => {
                                    self.shared.stats.dropped_inbox_full.fetch_add(1, Relaxed);
                                    self.undelivered(&mut recv);
                                }
                                Err(DeliverError::Closed) => stop = Some(Stop::InboxClosed),
                            }
                        }
                        // The sender's fault: consumed (not resent), and charged.
                        Err(violation) => stop = self.charge(&violation),
                    }
                }
                Inbound::Control(encoded) => match decode_control(&encoded) {
                    Ok(ControlMessage::Goodbye { reason }) => stop = Some(Stop::Goodbye(reason)),
                    Ok(ControlMessage::Ping { nonce }) => {
                        // Answered ahead of data; if the control lane is full the pinger retries.
                        self.shared
                            .queue
                            .push_control(ControlMessage::Pong { nonce });
                    }
                    Ok(ControlMessage::Pong { nonce }) => self.shared.pong(nonce),
                    Ok(ControlMessage::Resume {
                        incarnation,
                        first_seq,
                    }) => {
                        recv.resume(incarnation, first_seq);
                        self.seq = Some(first_seq);
                    }
                    Ok(ControlMessage::Ack { next }) => {
                        if let Some(reliable) = &self.reliable {
                            reliable.ack(next);
                        }
                    }
                    Ok(ControlMessage::Rewind { from }) => {
                        if let Some(reliable) = &self.reliable {
                            reliable.rewind(from);
                        }
                    }
                    Err(violation) => stop = self.charge(&violation),
                },
                Inbound::Violation(violation) => stop = self.charge(&violation),
            }
        });
        if self.seq.is_some() {
            // Acknowledge only what reached the inbox; coalesced with any ack not yet sent.
            self.shared.queue.set_ack(recv.ack());
        }
        if let Some(from) = self.pending_rewind {
            if self
                .shared
                .queue
                .push_control(ControlMessage::Rewind { from })
            {
                self.pending_rewind = None;
            }
        }
        drop(recv);
        self.shared.stats.messages_in.fetch_add(messages, Relaxed);
        self.shared.stats.bytes_in.fetch_add(bytes, Relaxed);
        stop
    }

    /// A sequenced message judged deliverable was dropped locally: ask for a resend from it
    /// (queued after this frame, with any acknowledgement).
    fn undelivered(&mut self, recv: &mut RecvSeq) {
        if self.seq.is_some() {
            if let Some(from) = recv.dropped() {
                self.pending_rewind = Some(from);
            }
        }
    }

    /// Charges a violation; returns a stop when the budget is spent.
    fn charge(&self, violation: &Violation) -> Option<Stop> {
        tracing::debug!(peer = %self.peer, %violation, "rejected inbound message");
        self.shared.stats.rejected.fetch_add(1, Relaxed);
        let score = self
            .shared
            .stats
            .misbehaviour
            .fetch_add(u64::from(violation.cost()), Relaxed)
            + u64::from(violation.cost());
        (score >= u64::from(self.budget)).then_some(Stop::Misbehaviour(score))
    }
}
