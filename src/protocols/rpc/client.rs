//! The asking side: [`RpcClient`] opens requests (one answer or a stream of chunks) and
//! cancels them when the caller stops waiting.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::core::Failure;
use super::task::{Alive, Inner, StreamItem};
use super::wire::{self, HeaderKind};
use super::{RequestError, RpcStats};
use crate::codec::{CodecError, decode_body, encode_body};
use crate::identity::PeerId;

/// Per-request settings for [`RpcClient::request_opts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RequestOptions {
    /// Total time for this request (for a stream: until its first chunk); `None` uses
    /// [`super::RpcConfig::timeout`].
    pub timeout: Option<Duration>,
    /// Safe to run twice: to a persistent peer, the request survives a reconnect (sent again
    /// after it) instead of failing with [`RequestError::Disconnected`].
    pub idempotent: bool,
}

impl RequestOptions {
    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the request idempotent.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
}

/// Sends requests of type `Q` and gets answers of type `A`; from [`crate::Network::rpc`].
/// Cheap to clone, `Send + Sync`.
pub struct RpcClient<Q, A> {
    alive: Arc<Alive>,
    _types: PhantomData<fn(Q) -> A>,
}

impl<Q, A> Clone for RpcClient<Q, A> {
    fn clone(&self) -> Self {
        Self {
            alive: self.alive.clone(),
            _types: PhantomData,
        }
    }
}

impl<Q, A> std::fmt::Debug for RpcClient<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("channel", &self.alive.0.config.channel)
            .finish()
    }
}

/// Cancels a request whose caller stopped waiting (a dropped future or stream): the server
/// is told, and nothing is charged to anyone.
struct InFlight<'a> {
    inner: &'a Inner,
    id: u64,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            self.inner.with(|state, out| {
                state.unary.remove(&id);
                state.streams.remove(&id);
                state.core.cancel(id, out);
            });
        }
    }
}

impl<Q, A> RpcClient<Q, A>
where
    Q: Serialize + DeserializeOwned + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
{
    pub(super) fn new(alive: Arc<Alive>) -> Self {
        Self {
            alive,
            _types: PhantomData,
        }
    }

    fn inner(&self) -> &Inner {
        &self.alive.0
    }

    /// Asks `peer` and waits for its answer, at most [`super::RpcConfig::timeout`].
    ///
    /// # Errors
    /// Every [`RequestError`]; none after more than the timeout.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the request: the server's handler sees
    /// [`super::Request::cancelled`] and its answer is discarded.
    pub async fn request(&self, peer: PeerId, request: &Q) -> Result<A, RequestError> {
        self.request_opts(peer, request, RequestOptions::default())
            .await
    }

    /// [`RpcClient::request`] with its own timeout.
    ///
    /// # Errors
    /// As [`RpcClient::request`].
    ///
    /// # Cancel safety
    /// As [`RpcClient::request`].
    pub async fn request_with(
        &self,
        peer: PeerId,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, RequestError> {
        self.request_opts(peer, request, RequestOptions::default().timeout(timeout))
            .await
    }

    /// [`RpcClient::request`] for a request that is safe to run twice: to a persistent peer it
    /// is sent again after a reconnect, and completes then (within its timeout).
    ///
    /// # Errors
    /// As [`RpcClient::request`].
    ///
    /// # Cancel safety
    /// As [`RpcClient::request`].
    pub async fn request_idempotent(&self, peer: PeerId, request: &Q) -> Result<A, RequestError> {
        self.request_opts(peer, request, RequestOptions::default().idempotent())
            .await
    }

    /// [`RpcClient::request`] with [`RequestOptions`].
    ///
    /// # Errors
    /// As [`RpcClient::request`].
    ///
    /// # Cancel safety
    /// As [`RpcClient::request`].
    pub async fn request_opts(
        &self,
        peer: PeerId,
        request: &Q,
        options: RequestOptions,
    ) -> Result<A, RequestError> {
        let inner = self.inner();
        let (tx, rx) = oneshot::channel();
        let mut guard = self
            .open(peer, request, options, false, |state, id| {
                state.unary.insert(id, tx);
            })
            .await?;
        let result = rx.await;
        guard.done = true;
        match result {
            Ok(Ok(body)) => decode_body::<A>(body).map_err(|_| {
                // The peer answered with something that is not an `A`.
                inner.with(|state, out| state.core.malformed(peer, out));
                RequestError::Undecodable
            }),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(RequestError::Closed),
        }
    }

    /// Asks `peer` for a streamed answer: chunks arrive as the server sends them, at most
    /// [`super::RpcConfig::stream_window`] ahead of what the caller has taken, so a large
    /// answer never sits in memory whole. The first chunk must come within the request
    /// timeout, each next one within [`super::RpcConfig::stream_idle_timeout`].
    ///
    /// # Errors
    /// Those known before anything is sent ([`RequestError::Busy`],
    /// [`RequestError::NotConnected`], [`RequestError::TooLarge`], ...); later ones arrive as
    /// the stream's items.
    ///
    /// # Cancel safety
    /// Dropping the future or the stream cancels the request.
    pub async fn request_stream(
        &self,
        peer: PeerId,
        request: &Q,
    ) -> Result<ResponseStream<A>, RequestError> {
        let window = self.inner().config.stream_window.max(1) as usize;
        // Room for every chunk of the window (twice, for credit granted early) and the end.
        let (tx, rx) = mpsc::channel(2 * window + 1);
        let mut guard = self
            .open(
                peer,
                request,
                RequestOptions::default(),
                true,
                |state, id| {
                    state.streams.insert(id, tx);
                },
            )
            .await?;
        guard.done = true;
        Ok(ResponseStream {
            alive: self.alive.clone(),
            id: guard.id,
            rx,
            finished: false,
            _answer: PhantomData,
        })
    }

    /// Registers, encodes and sends one request; the returned guard cancels it if dropped.
    async fn open(
        &self,
        peer: PeerId,
        request: &Q,
        options: RequestOptions,
        stream: bool,
        register: impl FnOnce(&mut super::task::State, u64),
    ) -> Result<InFlight<'_>, RequestError> {
        let inner = self.inner();
        let max = inner.requests.max_message_size();
        let body =
            encode_body(request, max.saturating_sub(wire::MAX_HEADER)).map_err(|e| match e {
                CodecError::MessageTooLarge { .. } => RequestError::TooLarge,
                e => RequestError::Codec(e),
            })?;
        let timeout = options.timeout.unwrap_or(inner.config.timeout);
        let window = inner.config.stream_window.max(1);
        let id = inner.with(|state, _| -> Result<u64, RequestError> {
            let id = state
                .core
                .start(peer, Instant::now(), timeout, stream)
                .map_err(RequestError::from)?;
            register(state, id);
            if let Some(deadline) = state.core.next_deadline() {
                inner.arm(state, deadline);
            }
            Ok(id)
        })?;
        let mut guard = InFlight {
            inner,
            id,
            done: false,
        };
        let kind = HeaderKind::Request {
            stream,
            idempotent: options.idempotent,
            window,
        };
        let mut frame: BytesMut = wire::header(kind, id, body.len());
        frame.put_slice(&body);
        let frame: Bytes = frame.freeze();
        if options.idempotent {
            inner.with(|state, _| state.core.keep_for_resend(id, frame.clone()));
        }
        if let Err(error) = inner.requests.send(peer, &frame).await {
            guard.done = true;
            inner.with(|state, _| {
                state.unary.remove(&id);
                state.streams.remove(&id);
                state.core.abandon(id);
            });
            return Err(error.into());
        }
        Ok(guard)
    }

    /// The protocol's counters (both sides of this node).
    pub fn stats(&self) -> RpcStats {
        let inner = self.inner();
        let state = inner.state.lock();
        let c = &state.core.counts;
        RpcStats {
            requests_sent: c.requests_sent,
            responses_received: c.responses_received,
            timeouts: c.timeouts,
            busy_local: c.busy_local,
            busy_received: c.busy_received,
            cancelled_by_caller: c.cancelled_by_caller,
            late_answers: c.late_answers,
            requests_served: c.requests_served,
            busy_sent: c.busy_sent,
            cancelled_by_peer: c.cancelled_by_peer,
            duplicate_requests: c.duplicate_requests,
            violations: c.violations,
            resent_after_reconnect: c.resent_after_reconnect,
            frames_dropped: inner
                .frames_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            serving: state.core.serving(),
            waiting: state.core.waiting(),
        }
    }
}

impl From<Failure> for RequestError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Timeout => Self::Timeout,
            Failure::Busy => Self::Busy,
            Failure::Disconnected => Self::Disconnected,
            Failure::Rejected(code) => Self::Rejected(code),
            Failure::Omitted => Self::Omitted,
            Failure::Unavailable => Self::Unavailable,
            Failure::TooLarge => Self::TooLarge,
            Failure::Undecodable => Self::Undecodable,
            Failure::Protocol => Self::Protocol,
        }
    }
}

/// A streamed answer: chunks of type `A` in order, then the end (`None`); from
/// [`RpcClient::request_stream`]. Taking a chunk grants the server room for another.
/// Dropping it before the end cancels the request.
pub struct ResponseStream<A> {
    alive: Arc<Alive>,
    id: u64,
    rx: mpsc::Receiver<StreamItem>,
    finished: bool,
    _answer: PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for ResponseStream<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<A: DeserializeOwned + 'static> ResponseStream<A> {
    /// The next chunk; `None` after the last one (or after an error).
    ///
    /// # Cancel safety
    /// Cancel safe: a chunk is taken only when this returns it.
    pub async fn next(&mut self) -> Option<Result<A, RequestError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<A, RequestError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let id = self.id;
        let inner = &self.alive.0;
        Poll::Ready(match item {
            Some(StreamItem::Chunk(body)) => {
                inner.with(|state, out| state.core.consumed(id, 1, out));
                match decode_body::<A>(body) {
                    Ok(chunk) => Some(Ok(chunk)),
                    Err(_) => {
                        self.finished = true;
                        Some(Err(RequestError::Undecodable))
                    }
                }
            }
            Some(StreamItem::End) => {
                self.finished = true;
                None
            }
            Some(StreamItem::Fail(failure)) => {
                self.finished = true;
                Some(Err(failure.into()))
            }
            None => {
                self.finished = true;
                Some(Err(RequestError::Closed))
            }
        })
    }
}

impl<A: DeserializeOwned + 'static> futures_core::Stream for ResponseStream<A> {
    type Item = Result<A, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl<A> Drop for ResponseStream<A> {
    fn drop(&mut self) {
        let id = self.id;
        self.alive.0.with(|state, out| {
            state.streams.remove(&id);
            // A stream that ended already is gone from the core: this does nothing then.
            state.core.cancel(id, out);
        });
    }
}
