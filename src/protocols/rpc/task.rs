//! The request protocol's driver: the state the handles share (the core and the waiters
//! keyed by its ids), the handler that feeds it frames on the peers' read tasks, and the one
//! task that feeds it connection events and time. The task ends when every handle is gone or
//! the node ends, and then every waiter sees [`RequestError::Closed`](super::RequestError).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::RpcConfig;
use super::core::{Core, Failure, Limits, Output};
use super::wire::{self, Frame};
use crate::driver::inbox::Handler;
use crate::identity::PeerId;
use crate::network::{Channel, ProtocolFace};
use crate::peers::NetworkEvent;

/// One item of a streamed answer, as the client's stream receives it.
#[derive(Debug)]
pub(super) enum StreamItem {
    Chunk(Bytes),
    End,
    Fail(Failure),
}

/// A request on its way to the local server's handle.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) peer: PeerId,
    pub(super) id: u64,
    pub(super) stream: bool,
    pub(super) body: Bytes,
    pub(super) cancel: CancellationToken,
}

/// Everything behind the lock: the pure core and the waiters of its ids.
#[derive(Debug)]
pub(super) struct State {
    pub(super) core: Core,
    /// The caller of each unary request waits on the other end.
    pub(super) unary: HashMap<u64, oneshot::Sender<Result<Bytes, Failure>>>,
    /// Each streamed request's chunks; capacity covers the credit window, so a chunk within
    /// credit always fits.
    pub(super) streams: HashMap<u64, mpsc::Sender<StreamItem>>,
    /// The handler of each request being served holds the token: cancelled when the client
    /// stops waiting.
    pub(super) handlers: HashMap<(PeerId, u64), CancellationToken>,
    /// Senders of streamed answers waiting for credit.
    pub(super) sinks: HashMap<(PeerId, u64), Arc<Notify>>,
    /// The deadline the task sleeps until, so a new request wakes it only when it is earlier.
    armed: Option<Instant>,
}

/// What the handles and the task share.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) state: Mutex<State>,
    pub(super) config: RpcConfig,
    pub(super) requests: Channel<Bytes>,
    /// The stream channel, or `requests` again when none was declared.
    pub(super) streams: Channel<Bytes>,
    pub(super) face: ProtocolFace,
    /// Wakes the task for an earlier deadline.
    wake: Notify,
    /// Set when the last handle is dropped (or the network ends): the task stops.
    pub(super) stop: CancellationToken,
    /// The server's queue; taken (closed) when the server handle is dropped.
    pub(super) server: Mutex<Option<mpsc::Sender<Delivery>>>,
    pub(super) frames_dropped: AtomicU64,
}

impl Inner {
    /// Runs `f` on the state under the lock, then carries out what the core asked for.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut State, &mut Vec<Output>) -> R) -> R {
        let mut out = Vec::new();
        let mut state = self.state.lock();
        let result = f(&mut state, &mut out);
        self.apply(&mut state, &mut out);
        result
    }

    /// Wakes the task if `deadline` is earlier than the one it sleeps until.
    pub(super) fn arm(&self, state: &mut State, deadline: Instant) {
        if state.armed.is_none_or(|armed| deadline < armed) {
            state.armed = Some(deadline);
            self.wake.notify_one();
        }
    }

    /// Sends a protocol frame without waiting; a full queue drops it, counted (the protocol
    /// recovers: a lost cancel leaves an answer that is ignored, a lost credit or busy ends in
    /// the client's timeout).
    pub(super) fn send_now(&self, peer: PeerId, frame: Bytes, stream: bool) {
        let channel = if stream {
            &self.streams
        } else {
            &self.requests
        };
        if channel.try_send(peer, &frame).is_err() {
            self.frames_dropped.fetch_add(1, Relaxed);
        }
    }

    fn apply(&self, state: &mut State, out: &mut Vec<Output>) {
        for output in out.drain(..) {
            match output {
                Output::Send {
                    peer,
                    frame,
                    stream,
                } => self.send_now(peer, wire::control(&frame), stream),
                Output::Resend { peer, frame, .. } => self.send_now(peer, frame, false),
                Output::Complete { id, result } => {
                    if let Some(waiter) = state.unary.remove(&id) {
                        // The caller may have gone at the same moment; nothing to tell then.
                        let _ = waiter.send(result);
                    }
                }
                Output::Chunk { id, body } => {
                    if let Some(tx) = state.streams.get(&id) {
                        // Fits by the credit window; a consumer that is gone is cancelled by
                        // its stream's drop.
                        let _ = tx.try_send(StreamItem::Chunk(body));
                    }
                }
                Output::StreamDone { id, result } => {
                    if let Some(tx) = state.streams.remove(&id) {
                        let _ = tx.try_send(match result {
                            Ok(()) => StreamItem::End,
                            Err(failure) => StreamItem::Fail(failure),
                        });
                    }
                }
                Output::Deliver {
                    peer,
                    id,
                    stream,
                    body,
                } => {
                    let cancel = CancellationToken::new();
                    let delivery = Delivery {
                        peer,
                        id,
                        stream,
                        body,
                        cancel: cancel.clone(),
                    };
                    let queued = self
                        .server
                        .lock()
                        .as_ref()
                        .is_some_and(|tx| tx.try_send(delivery).is_ok());
                    if queued {
                        state.handlers.insert((peer, id), cancel);
                    } else {
                        // The server handle is gone (its queue holds max_inbound_total, which
                        // the core never exceeds).
                        state.core.finish_incoming(peer, id);
                        let fail = Frame::Fail {
                            id,
                            reason: wire::FailReason::Unavailable,
                            code: 0,
                        };
                        self.send_now(peer, wire::control(&fail), false);
                    }
                }
                Output::Credit { peer, id } => {
                    if let Some(notify) = state.sinks.get(&(peer, id)) {
                        notify.notify_one();
                    }
                }
                Output::Cancelled { peer, id } => {
                    if let Some(token) = state.handlers.remove(&(peer, id)) {
                        token.cancel();
                    }
                    if let Some(notify) = state.sinks.remove(&(peer, id)) {
                        notify.notify_one();
                    }
                }
                Output::Ban { peer, .. } => {
                    tracing::warn!(%peer, "banned: broke the request protocol too often");
                    self.face.ban(peer);
                }
            }
        }
    }
}

/// Held by the public handles (client clones, server, open streams): when the last one is
/// dropped the task stops. The task itself holds `Inner` directly, never this.
#[derive(Debug)]
pub(super) struct Alive(pub(super) Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.stop.cancel();
    }
}

/// What the channels' slots hold: every frame of the protocol's channels goes to the core on
/// the peer's read task (no hop through an inbox and a task). When the node ends, the slots
/// drop their handlers and the `_tether` with them, which tells the task to stop.
struct FrameHandler {
    inner: Arc<Inner>,
    _tether: Arc<oneshot::Sender<()>>,
}

impl Handler for FrameHandler {
    fn handle(&self, batch: &mut Vec<(PeerId, Bytes)>) {
        frames(&self.inner, batch);
    }
}

/// Builds the protocol's state and its task; returns the handles' anchor, the server queue and
/// the handler to open the channels with (one handler serves both).
pub(super) fn spawn(
    config: RpcConfig,
    face: ProtocolFace,
    requests: Channel<Bytes>,
    streams: Option<Channel<Bytes>>,
) -> (Arc<Alive>, mpsc::Receiver<Delivery>, Arc<dyn Handler>) {
    let limits = Limits {
        max_outbound_per_peer: config.max_outbound_requests.max(1),
        max_inbound_per_peer: config.max_inbound_requests.max(1),
        max_inbound_total: config.max_inbound_total.max(1),
        stream_idle_timeout: config.stream_idle_timeout,
        window: config.stream_window.max(1),
        busy_allowance_per_sec: config.busy_allowance_per_sec,
        budget: config.misbehaviour_budget.max(1),
    };
    let (server_tx, server_rx) = mpsc::channel(limits.max_inbound_total);
    let stream_channel = streams.unwrap_or_else(|| requests.clone());
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            core: Core::new(limits),
            unary: HashMap::new(),
            streams: HashMap::new(),
            handlers: HashMap::new(),
            sinks: HashMap::new(),
            armed: None,
        }),
        config,
        requests,
        streams: stream_channel,
        face,
        wake: Notify::new(),
        stop: CancellationToken::new(),
        server: Mutex::new(Some(server_tx)),
        frames_dropped: AtomicU64::new(0),
    });
    let events = inner.face.events();
    let (tether, node_gone) = oneshot::channel();
    let handler = Arc::new(FrameHandler {
        inner: inner.clone(),
        _tether: Arc::new(tether),
    });
    // Ends by itself: when every handle is dropped (`stop`) or the node ends (`node_gone`);
    // it joins nothing of its own.
    tokio::spawn(run(inner.clone(), node_gone, events));
    (Arc::new(Alive(inner)), server_rx, handler)
}

async fn run(
    inner: Arc<Inner>,
    mut node_gone: oneshot::Receiver<()>,
    mut events: tokio::sync::broadcast::Receiver<NetworkEvent>,
) {
    loop {
        let deadline = {
            let mut state = inner.state.lock();
            state.armed = state.core.next_deadline();
            state.armed
        };
        let sleep = crate::protocols::sleep_until(deadline);
        tokio::select! {
            biased;
            () = inner.stop.cancelled() => break,
            _ = &mut node_gone => break,
            event = events.recv() => match event {
                Ok(NetworkEvent::Connected { peer, .. }) => {
                    inner.with(|state, out| state.core.on_connected(peer, out));
                }
                Ok(NetworkEvent::Disconnected { peer, .. }) => {
                    let persistent = inner.face.is_persistent(peer);
                    inner.with(|state, out| state.core.on_disconnected(peer, persistent, out));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => reconcile(&inner),
                Err(RecvError::Closed) => break,
            },
            () = sleep => {
                inner.with(|state, out| state.core.poll(Instant::now(), out));
            }
            () = inner.wake.notified() => {}
        }
    }
    // Every waiter learns the end: dropping their senders reads as `Closed`.
    inner.stop.cancel();
    let mut state = inner.state.lock();
    state.unary.clear();
    state.streams.clear();
    for (_, token) in state.handlers.drain() {
        token.cancel();
    }
    for (_, notify) in state.sinks.drain() {
        notify.notify_one();
    }
}

fn frames(inner: &Inner, batch: &mut Vec<(PeerId, Bytes)>) {
    let now = Instant::now();
    inner.with(|state, out| {
        for (peer, bytes) in batch.drain(..) {
            match wire::decode(bytes) {
                Ok(frame) => state.core.on_frame(peer, frame, now, out),
                Err(error) => {
                    tracing::debug!(%peer, %error, "malformed request frame");
                    state.core.malformed(peer, out);
                }
            }
        }
    });
}

/// Events were lost: a peer with requests in flight that is no longer connected is treated
/// as disconnected.
fn reconcile(inner: &Inner) {
    let peers = inner.state.lock().core.peers();
    for peer in peers {
        if !inner.face.is_connected(peer) {
            let persistent = inner.face.is_persistent(peer);
            inner.with(|state, out| state.core.on_disconnected(peer, persistent, out));
        }
    }
}
