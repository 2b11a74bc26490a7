//! The answering side: [`RpcServer`] yields requests from peers; each [`Request`] is answered
//! once (whole, rejected, or as a stream through a [`ResponseSink`]), from any task.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::RespondError;
use super::core::Spend;
use super::task::{Alive, Delivery, Inner};
use super::wire::{self, FailReason, Frame, HeaderKind};
use crate::codec::{CodecError, decode_body, encode_body};
use crate::identity::PeerId;

/// Receives the requests peers send on one request protocol; from [`crate::Network::rpc`].
/// Dropping it makes later requests fail with `Unavailable` at their callers.
pub struct RpcServer<Q, A> {
    alive: Arc<Alive>,
    rx: mpsc::Receiver<Delivery>,
    _types: PhantomData<fn(Q) -> A>,
}

impl<Q, A> std::fmt::Debug for RpcServer<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("channel", &self.alive.0.config.channel)
            .finish()
    }
}

impl<Q, A> Drop for RpcServer<Q, A> {
    fn drop(&mut self) {
        // Close the queue first so no new request lands in it, then fail the queued ones.
        self.alive.0.server.lock().take();
        self.rx.close();
        while let Ok(delivery) = self.rx.try_recv() {
            fail(
                &self.alive.0,
                delivery.peer,
                delivery.id,
                delivery.stream,
                FailReason::Unavailable,
                0,
            );
        }
    }
}

impl<Q, A> RpcServer<Q, A>
where
    Q: DeserializeOwned + Send + 'static,
    A: Serialize + Send + 'static,
{
    pub(super) fn new(alive: Arc<Alive>, rx: mpsc::Receiver<Delivery>) -> Self {
        Self {
            alive,
            rx,
            _types: PhantomData,
        }
    }

    /// The next request; `None` once the network has shut down. A request whose body is not
    /// a `Q` is answered `Undecodable` and charged to its sender, and never returned.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Request<Q, A>> {
        loop {
            let delivery = tokio::select! {
                delivery = self.rx.recv() => delivery?,
                () = self.alive.0.stop.cancelled() => return None,
            };
            let inner = &self.alive.0;
            match decode_body::<Q>(delivery.body) {
                Ok(body) => {
                    return Some(Request {
                        alive: self.alive.clone(),
                        peer: delivery.peer,
                        id: delivery.id,
                        stream: delivery.stream,
                        body,
                        cancel: delivery.cancel,
                        answered: false,
                        _answer: PhantomData,
                    });
                }
                Err(_) => {
                    let peer = delivery.peer;
                    inner.with(|state, out| state.core.malformed(peer, out));
                    fail(
                        inner,
                        peer,
                        delivery.id,
                        delivery.stream,
                        FailReason::Undecodable,
                        0,
                    );
                }
            }
        }
    }
}

/// Ends a request at this server with a failure frame, if the client still waits.
fn fail(inner: &Inner, peer: PeerId, id: u64, stream: bool, reason: FailReason, code: u32) {
    let wanted = inner.with(|state, _| {
        state.handlers.remove(&(peer, id));
        state.sinks.remove(&(peer, id));
        state.core.finish_incoming(peer, id)
    });
    if wanted {
        inner.send_now(
            peer,
            wire::control(&Frame::Fail { id, reason, code }),
            stream,
        );
    }
}

/// One request from a peer, to answer once: [`Request::respond`], [`Request::reject`] or
/// [`Request::respond_stream`]. Dropping it unanswered tells the client `Omitted`. `Send`, so
/// it can be answered from another task.
pub struct Request<Q, A> {
    alive: Arc<Alive>,
    peer: PeerId,
    id: u64,
    stream: bool,
    body: Q,
    cancel: CancellationToken,
    answered: bool,
    _answer: PhantomData<fn(A)>,
}

impl<Q: std::fmt::Debug, A> std::fmt::Debug for Request<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("peer", &self.peer)
            .field("id", &self.id)
            .field("body", &self.body)
            .finish()
    }
}

impl<Q, A> Drop for Request<Q, A> {
    fn drop(&mut self) {
        if !self.answered {
            fail(
                &self.alive.0,
                self.peer,
                self.id,
                self.stream,
                FailReason::Omitted,
                0,
            );
        }
    }
}

impl<Q, A: Serialize + 'static> Request<Q, A> {
    /// The proven sender.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The request.
    pub fn body(&self) -> &Q {
        &self.body
    }

    /// Whether the client asked for a streamed answer ([`RpcClient::request_stream`]).
    ///
    /// [`RpcClient::request_stream`]: super::RpcClient::request_stream
    pub fn wants_stream(&self) -> bool {
        self.stream
    }

    /// Resolves when the client no longer waits (it cancelled, timed out, or its connection
    /// closed): the handler may stop, its answer would be discarded.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the client no longer waits.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Sends the answer. To a client that asked for a stream it goes as one chunk and the end.
    ///
    /// # Errors
    /// [`RespondError::Cancelled`] if the client no longer waits; [`RespondError::TooLarge`]
    /// (the client is told); [`RespondError::Full`] or [`RespondError::NotConnected`] when it
    /// cannot be queued (the client times out).
    pub fn respond(mut self, answer: &A) -> Result<(), RespondError> {
        self.answered = true;
        let inner = &self.alive.0;
        let channel = if self.stream {
            &inner.streams
        } else {
            &inner.requests
        };
        let kind = if self.stream {
            HeaderKind::Chunk
        } else {
            HeaderKind::Response
        };
        let frame = match encode_frame(kind, self.id, answer, channel.max_message_size()) {
            Ok(frame) => frame,
            Err(error) => {
                fail(
                    inner,
                    self.peer,
                    self.id,
                    self.stream,
                    FailReason::TooLarge,
                    0,
                );
                return Err(error);
            }
        };
        let (peer, id) = (self.peer, self.id);
        let wanted = inner.with(|state, _| {
            state.handlers.remove(&(peer, id));
            state.core.finish_incoming(peer, id)
        });
        if !wanted {
            return Err(RespondError::Cancelled);
        }
        channel.try_send(peer, &frame)?;
        if self.stream {
            channel.try_send(peer, &wire::control(&Frame::End { id }))?;
        }
        Ok(())
    }

    /// Refuses the request with an application code; the client gets
    /// [`super::RequestError::Rejected`] with it.
    ///
    /// # Errors
    /// [`RespondError::Cancelled`] if the client no longer waits.
    pub fn reject(mut self, code: u32) -> Result<(), RespondError> {
        self.answered = true;
        let inner = &self.alive.0;
        let (peer, id) = (self.peer, self.id);
        let wanted = inner.with(|state, _| {
            state.handlers.remove(&(peer, id));
            state.core.finish_incoming(peer, id)
        });
        if !wanted {
            return Err(RespondError::Cancelled);
        }
        let channel = if self.stream {
            &inner.streams
        } else {
            &inner.requests
        };
        channel.try_send(
            peer,
            &wire::control(&Frame::Fail {
                id,
                reason: FailReason::Rejected,
                code,
            }),
        )?;
        Ok(())
    }

    /// Answers with a stream of chunks, sent as the client grants credit.
    ///
    /// # Errors
    /// [`RespondError::NotStream`] if the client asked for one answer (the request is
    /// dropped: the client gets `Omitted`).
    pub fn respond_stream(mut self) -> Result<ResponseSink<A>, RespondError> {
        if !self.stream {
            return Err(RespondError::NotStream);
        }
        self.answered = true;
        let notify = Arc::new(Notify::new());
        let (peer, id) = (self.peer, self.id);
        self.alive.0.with(|state, _| {
            state.sinks.insert((peer, id), notify.clone());
        });
        Ok(ResponseSink {
            alive: self.alive.clone(),
            peer,
            id,
            cancel: self.cancel.clone(),
            notify,
            finished: false,
            _answer: PhantomData,
        })
    }
}

fn encode_frame<A: Serialize + 'static>(
    kind: HeaderKind,
    id: u64,
    answer: &A,
    max: usize,
) -> Result<Bytes, RespondError> {
    let body = encode_body(answer, max.saturating_sub(wire::MAX_HEADER)).map_err(|e| match e {
        CodecError::MessageTooLarge { len, max } => RespondError::TooLarge { len, max },
        e => RespondError::Codec(e),
    })?;
    let mut frame = wire::header(kind, id, body.len());
    frame.put_slice(&body);
    Ok(frame.freeze())
}

/// Sends a streamed answer chunk by chunk, each when the client has room for it; from
/// [`Request::respond_stream`]. [`ResponseSink::finish`] ends it; dropping it unfinished
/// tells the client `Omitted`.
pub struct ResponseSink<A> {
    alive: Arc<Alive>,
    peer: PeerId,
    id: u64,
    cancel: CancellationToken,
    notify: Arc<Notify>,
    finished: bool,
    _answer: PhantomData<fn(A)>,
}

impl<A> std::fmt::Debug for ResponseSink<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSink")
            .field("peer", &self.peer)
            .field("id", &self.id)
            .finish()
    }
}

impl<A> Drop for ResponseSink<A> {
    fn drop(&mut self) {
        if !self.finished {
            fail(
                &self.alive.0,
                self.peer,
                self.id,
                true,
                FailReason::Omitted,
                0,
            );
        }
    }
}

impl<A: Serialize + 'static> ResponseSink<A> {
    /// Sends one chunk, first waiting until the client has granted room for it, then for
    /// room in the stream channel's queue (at most `Config::send_wait`).
    ///
    /// # Errors
    /// [`RespondError::Cancelled`] once the client stopped waiting (stop sending then);
    /// [`RespondError::TooLarge`] for a chunk over the channel's limit; queue errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped while waiting for the queue, the chunk may be lost after
    /// its credit was spent; the client then times out.
    pub async fn send(&mut self, chunk: &A) -> Result<(), RespondError> {
        let inner = &self.alive.0;
        let frame = encode_frame(
            HeaderKind::Chunk,
            self.id,
            chunk,
            inner.streams.max_message_size(),
        )?;
        let (peer, id) = (self.peer, self.id);
        loop {
            // Register interest before looking, so a credit between the look and the wait
            // is not missed (`notify_one` also keeps a permit when nobody waits).
            let notified = self.notify.notified();
            match inner.with(|state, _| state.core.spend(peer, id)) {
                Spend::Sent => break,
                Spend::Gone => return Err(RespondError::Cancelled),
                Spend::Wait => {
                    tokio::select! {
                        () = notified => {}
                        () = self.cancel.cancelled() => return Err(RespondError::Cancelled),
                    }
                }
            }
        }
        inner.streams.send(peer, &frame).await?;
        Ok(())
    }

    /// Whether the client no longer waits.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Ends the stream: the client's stream returns `None` after the last chunk.
    ///
    /// # Errors
    /// [`RespondError::Cancelled`] if the client no longer waits; queue errors.
    pub async fn finish(mut self) -> Result<(), RespondError> {
        self.finished = true;
        let inner = &self.alive.0;
        let (peer, id) = (self.peer, self.id);
        let wanted = inner.with(|state, _| {
            state.handlers.remove(&(peer, id));
            state.sinks.remove(&(peer, id));
            state.core.finish_incoming(peer, id)
        });
        if !wanted {
            return Err(RespondError::Cancelled);
        }
        inner
            .streams
            .send(peer, &wire::control(&Frame::End { id }))
            .await?;
        Ok(())
    }
}
