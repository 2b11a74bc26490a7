//! Channel inboxes: decoded messages tagged with their proven sender, one bounded inbox per
//! channel.
//!
//! Readers hand messages over with a non-blocking push, so a slow application never stalls a
//! socket (and so never stalls pings, acknowledgements or other channels). Each inbox is bounded
//! by count and by encoded bytes; when either is reached, new messages are dropped and counted
//! per peer and channel as `dropped_inbox_full` (a persistent peer resends them, see
//! `session::inbound`).
//!
//! An inbox is one bounded queue under a mutex, with two ways to wait on it: a tokio `Notify`
//! for tasks and a condition variable for plain threads. So the receiving handle is `&self`,
//! cloneable (several tasks or threads may take from one channel) and usable outside tokio
//! (`recv_timeout`, `blocking_recv`), which a consensus engine's synchronous loop needs.
//!
//! Decoding runs on the read task, in parallel per peer, through the channel's [`Slot`]: once
//! the application has opened the channel with its message type, the slot holds a typed sink
//! that decodes and pushes. Before that, the slot keeps the raw bytes in a backlog (within the
//! same bounds), decoded into the typed inbox when the channel is opened, so what arrives early
//! is neither lost nor reordered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::codec::{decode_body, decode_message, is_raw};
use crate::identity::PeerId;
use crate::session::inbound::Delivered;

struct Delivery<M> {
    peer: PeerId,
    source: Source,
    message: M,
    size: usize,
}

/// Where messages come from, for the inbox's fair shares: the sending connection's IP address
/// (identities cost nothing to make; addresses do), hashed once per connection.
pub(crate) type Source = u64;

/// The source of this node's own messages (`deliver_to_self`); [`source_of`] never returns it.
pub(crate) const LOCAL: Source = 0;

/// The [`Source`] of messages from a connection with `ip`.
pub(crate) fn source_of(ip: std::net::IpAddr) -> Source {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut hasher);
    hasher.finish() | 1
}

/// What one source holds in an inbox: messages waiting or reserved, and their bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    count: usize,
    bytes: usize,
}

/// The inbox's sources with what each holds; entries go when they reach zero, so the map is
/// bounded by the sources with messages waiting (at most the connections). Keyed by the source
/// itself, already a hash: every message taken updates it, so it must cost next to nothing.
type Holders = std::collections::HashMap<Source, Held, std::hash::BuildHasherDefault<SourceHasher>>;

/// Passes a [`Source`] through as its own hash.
#[derive(Default)]
struct SourceHasher(u64);

impl std::hash::Hasher for SourceHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in, to stay correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn hold(holders: &mut Holders, source: Source, count: usize, bytes: usize) {
    let held = holders.entry(source).or_default();
    held.count += count;
    held.bytes += bytes;
}

fn release(holders: &mut Holders, source: Source, count: usize, bytes: usize) {
    if let Some(held) = holders.get_mut(&source) {
        held.count = held.count.saturating_sub(count);
        held.bytes = held.bytes.saturating_sub(bytes);
        if held.count == 0 && held.bytes == 0 {
            holders.remove(&source);
        }
    }
}

/// Why [`Inbox::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No message is waiting now.
    #[error("inbox is empty")]
    Empty,
    /// The network has shut down and every message has been received.
    #[error("network is shut down")]
    Closed,
}

/// Why [`Inbox::recv_timeout`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No message arrived within the timeout.
    #[error("no message within the timeout")]
    Timeout,
    /// The network has shut down and every message has been received.
    #[error("network is shut down")]
    Closed,
}

struct State<M> {
    items: VecDeque<Delivery<M>>,
    /// Encoded bytes of `items`.
    bytes: usize,
    /// No message will be pushed any more (the network is gone).
    closed: bool,
    /// Every receiving handle was dropped: the application closed the channel.
    abandoned: bool,
    /// Threads blocked in `recv_timeout`/`blocking_recv`.
    sleepers: usize,
    /// Places and bytes reserved by read tasks' [`Stager`]s for messages they are staging:
    /// counted against the bounds, so staged batches never overshoot them.
    reserved: usize,
    reserved_bytes: usize,
    /// What each source holds (waiting and reserved), for the fair shares.
    holders: Holders,
}

impl<M> State<M> {
    /// Whether `source` is past its fair share (see [`State::share_left`]), and if so how to
    /// refuse it: a source alone is refused as by a full inbox (not charged: nobody else is
    /// kept out), one among others as over its share (charged, see `session::inbound`).
    fn over_share(
        &self,
        source: Source,
        size: usize,
        capacity: usize,
        max_bytes: usize,
    ) -> Option<DeliverError> {
        let (places, bytes) = self.share_left(source, capacity, max_bytes);
        if places > 0 && bytes >= size {
            return None;
        }
        Some(if self.sharers(source) <= 1 {
            DeliverError::Full
        } else {
            DeliverError::OverShare
        })
    }

    /// Places and bytes `source` may still take. The N sources holding messages (this one
    /// counted, and any refused for a full inbox since it last emptied) may each hold three
    /// quarters of the inbox divided by N, by count and by bytes: alone, three quarters;
    /// together, never more than three quarters. So a sender arriving at an inbox full of
    /// others' messages always finds room, and one address (one peer, or many connections
    /// from one IP) cannot take the others' part. A source holding nothing may take a message
    /// of any size, as an empty inbox takes one.
    fn share_left(&self, source: Source, capacity: usize, max_bytes: usize) -> (usize, usize) {
        let held = self.holders.get(&source).copied().unwrap_or_default();
        let active = self.sharers(source);
        let line = capacity - capacity / 4;
        let line_bytes = max_bytes - max_bytes / 4;
        let places = (line / active).max(1).saturating_sub(held.count);
        let bytes = if held.bytes == 0 {
            usize::MAX
        } else {
            (line_bytes / active).saturating_sub(held.bytes)
        };
        (places, bytes)
    }

    /// The sources sharing the inbox, `source` counted: those in `holders` (holding messages,
    /// or refused for a full inbox), plus `source` if it is not among them.
    fn sharers(&self, source: Source) -> usize {
        self.holders.len() + usize::from(!self.holders.contains_key(&source))
    }

    /// Takes the front message and releases its hold. An empty inbox forgets the sources
    /// that were waiting for room (see [`State::refused_full`]).
    fn pop_front(&mut self) -> Option<Delivery<M>> {
        let d = self.items.pop_front()?;
        self.bytes -= d.size;
        release(&mut self.holders, d.source, 1, d.size);
        if self.items.is_empty() && self.reserved == 0 {
            self.holders.retain(|_, h| h.count > 0 || h.bytes > 0);
        }
        Some(d)
    }

    /// `source` found the inbox full: it counts among the sources sharing it from now on
    /// (holding nothing yet), so the next places freed are not all taken by a sender that was
    /// alone, until it has its share or the inbox empties.
    fn refused_full(&mut self, source: Source) -> DeliverError {
        self.holders.entry(source).or_default();
        DeliverError::Full
    }
}

/// One channel's bounded queue, shared by the sink that fills it and every receiving handle.
struct Queue<M> {
    state: Mutex<State<M>>,
    /// Wakes tasks waiting in `recv`.
    ready: Notify,
    /// Wakes threads waiting in `recv_timeout`/`blocking_recv`.
    ready_sync: Condvar,
    capacity: usize,
    max_bytes: usize,
    /// Receiving handles alive ([`Inbox`] clones).
    receivers: AtomicUsize,
}

/// What one attempt to take a message found.
enum Took<T> {
    Item(T),
    Empty,
    Closed,
}

impl<M> Queue<M> {
    fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                abandoned: false,
                sleepers: 0,
                reserved: 0,
                reserved_bytes: 0,
                holders: Holders::default(),
            }),
            ready: Notify::new(),
            ready_sync: Condvar::new(),
            capacity: capacity.max(1),
            max_bytes,
            receivers: AtomicUsize::new(1),
        }
    }

    /// Pushes without waiting; `size` is the encoded size, charged against the byte bound (one
    /// message always fits an empty inbox, so a bound below the largest message cannot wedge a
    /// channel).
    fn push(
        &self,
        peer: PeerId,
        source: Source,
        message: M,
        size: usize,
    ) -> Result<(), DeliverError> {
        let mut state = self.state.lock();
        if state.closed || state.abandoned {
            return Err(DeliverError::Closed);
        }
        let empty = state.items.is_empty() && state.reserved == 0;
        let over_bytes = !empty && state.bytes + state.reserved_bytes + size > self.max_bytes;
        if state.items.len() + state.reserved >= self.capacity || over_bytes {
            return Err(state.refused_full(source));
        }
        if let Some(refusal) = state.over_share(source, size, self.capacity, self.max_bytes) {
            return Err(refusal);
        }
        let was_empty = state.items.is_empty();
        state.bytes += size;
        hold(&mut state.holders, source, 1, size);
        state.items.push_back(Delivery {
            peer,
            source,
            message,
            size,
        });
        let sleepers = state.sleepers;
        drop(state);
        // Receivers wait only on an empty inbox, and one that takes a message and leaves others
        // wakes the next: so only the first message into an empty inbox needs a wake-up (a
        // notification per message was ~2 % of a small message's cost).
        if was_empty {
            self.wake(sleepers);
        }
        Ok(())
    }

    /// Wakes one waiting task (or stores the wake-up for the next one) and, if threads sleep,
    /// one thread. A woken receiver that leaves messages behind wakes the next one in turn.
    fn wake(&self, sleepers: usize) {
        self.ready.notify_one();
        if sleepers > 0 {
            self.ready_sync.notify_one();
        }
    }

    /// Takes up to `limit` messages into `out` under one lock.
    fn take(&self, out: &mut Vec<(PeerId, M)>, limit: usize) -> Took<()> {
        let mut state = self.state.lock();
        let n = state.items.len().min(limit);
        if n == 0 {
            return if state.closed {
                Took::Closed
            } else {
                Took::Empty
            };
        }
        out.reserve(n);
        for _ in 0..n {
            if let Some(d) = state.pop_front() {
                out.push((d.peer, d.message));
            }
        }
        let (left, sleepers) = (state.items.len(), state.sleepers);
        drop(state);
        if left > 0 {
            self.wake(sleepers);
        }
        Took::Item(())
    }

    /// Takes the front message with the lock held, releases the lock and wakes the next
    /// receiver if messages are left; an empty queue hands the lock back.
    fn pop<'a>(
        &self,
        mut state: MutexGuard<'a, State<M>>,
    ) -> Result<(PeerId, M), MutexGuard<'a, State<M>>> {
        let Some(d) = state.pop_front() else {
            return Err(state);
        };
        let (left, sleepers) = (state.items.len(), state.sleepers);
        drop(state);
        if left > 0 {
            self.wake(sleepers);
        }
        Ok((d.peer, d.message))
    }

    fn take_one(&self) -> Took<(PeerId, M)> {
        match self.pop(self.state.lock()) {
            Ok(item) => Took::Item(item),
            Err(state) if state.closed => Took::Closed,
            Err(_) => Took::Empty,
        }
    }

    /// Blocks the calling thread until a message, the close, or `deadline`.
    fn take_blocking(&self, deadline: Option<Instant>) -> Result<(PeerId, M), RecvTimeoutError> {
        let mut state = self.state.lock();
        loop {
            state = match self.pop(state) {
                Ok(item) => return Ok(item),
                Err(state) => state,
            };
            if state.closed {
                return Err(RecvTimeoutError::Closed);
            }
            state.sleepers += 1;
            let timed_out = match deadline {
                Some(deadline) => self.ready_sync.wait_until(&mut state, deadline).timed_out(),
                None => {
                    self.ready_sync.wait(&mut state);
                    false
                }
            };
            state.sleepers -= 1;
            if timed_out && state.items.is_empty() {
                return Err(if state.closed {
                    RecvTimeoutError::Closed
                } else {
                    RecvTimeoutError::Timeout
                });
            }
        }
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_waiters();
        // A stored wake-up too, for a task between its check and its wait.
        self.ready.notify_one();
        self.ready_sync.notify_all();
    }

    fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// Receives `(sender, message)` pairs on one channel from every peer, in per-peer order.
///
/// Cheap to clone: clones take from the same inbox (each message goes to one of them), so
/// several tasks or threads can serve one channel. All methods take `&self`. `recv` waits in a
/// task; `recv_timeout` and `blocking_recv` wait in a plain thread (outside any tokio runtime),
/// `try_recv` never waits. Every way returns `None`/`Closed` once the network has shut down and
/// the inbox is drained.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), peerwire::NetworkError> {
/// use std::time::Duration;
/// use peerwire::{Config, Keypair, Network, RecvTimeoutError};
/// let config = Config::default().network_id("doc-inbox");
/// let (a, _) = Network::<u64>::start(config.clone(), Keypair::generate()).await?;
/// let (b, inbox) = Network::<u64>::start(config, Keypair::generate()).await?;
/// a.connect(b.local_addr()).await?;
/// a.send(b.local_peer_id(), &7).await?;
/// // A thread with no runtime takes the message, waiting at most a second for it.
/// let engine = std::thread::spawn(move || inbox.recv_timeout(Duration::from_secs(5)));
/// let got = tokio::task::spawn_blocking(move || engine.join()).await.unwrap().unwrap();
/// assert_eq!(got, Ok((a.local_peer_id(), 7)));
/// # let _ = RecvTimeoutError::Timeout;
/// # Ok(())
/// # }
/// ```
pub struct Inbox<M> {
    queue: Arc<Queue<M>>,
}

impl<M> Clone for Inbox<M> {
    fn clone(&self) -> Self {
        self.queue.receivers.fetch_add(1, Ordering::Relaxed);
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<M> Drop for Inbox<M> {
    fn drop(&mut self) {
        if self.queue.receivers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last receiver: the channel is closed, and what waits in it is freed now.
            let mut state = self.queue.state.lock();
            state.abandoned = true;
            state.items.clear();
            state.bytes = 0;
            state.holders.clear();
        }
    }
}

impl<M> std::fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.queue.state.lock();
        f.debug_struct("Inbox")
            .field("queued", &state.items.len())
            .field("bytes", &state.bytes)
            .field("closed", &state.closed)
            .finish()
    }
}

impl<M> Inbox<M> {
    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn recv(&self) -> Option<(PeerId, M)> {
        self.wait_for(|| self.queue.take_one()).await
    }

    /// Runs `attempt` until it finds something (or the close), waiting on the queue's task
    /// waker in between.
    async fn wait_for<T>(&self, mut attempt: impl FnMut() -> Took<T>) -> Option<T> {
        loop {
            match attempt() {
                Took::Item(item) => return Some(item),
                Took::Closed => return None,
                Took::Empty => {}
            }
            // Registered before looking again, so a push in between is not missed.
            let notified = self.queue.ready.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            match attempt() {
                Took::Item(item) => return Some(item),
                Took::Closed => return None,
                Took::Empty => notified.await,
            }
        }
    }

    /// Takes the next message without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting, [`TryRecvError::Closed`] after shutdown.
    pub fn try_recv(&self) -> Result<(PeerId, M), TryRecvError> {
        match self.queue.take_one() {
            Took::Item(item) => Ok(item),
            Took::Empty => Err(TryRecvError::Empty),
            Took::Closed => Err(TryRecvError::Closed),
        }
    }

    /// Blocks the calling thread until a message arrives or `timeout` passes. For threads
    /// outside tokio (a synchronous consensus loop); inside a runtime it would block a worker.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`], or [`RecvTimeoutError::Closed`] after shutdown.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<(PeerId, M), RecvTimeoutError> {
        self.queue.take_blocking(Some(
            Instant::now() + timeout.min(Duration::from_secs(1 << 32)),
        ))
    }

    /// Blocks the calling thread until a message arrives; `None` after shutdown. For threads
    /// outside tokio, like [`Inbox::recv_timeout`].
    pub fn blocking_recv(&self) -> Option<(PeerId, M)> {
        self.queue.take_blocking(None).ok()
    }

    /// Waits for at least one message, then moves up to `limit` into `out` under one lock;
    /// returns how many (0 only after shutdown, or when `limit` is 0). Cheaper per message
    /// than `recv` under load.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv_many(&self, out: &mut Vec<(PeerId, M)>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let before = out.len();
        match self.wait_for(|| self.queue.take(out, limit)).await {
            Some(()) => out.len() - before,
            None => 0,
        }
    }

    /// Messages waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no message is waiting now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a delivery into an inbox failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliverError {
    Full,
    /// The inbox is under pressure and the source holds its share (see `State::over_share`).
    OverShare,
    Closed,
}

impl From<Result<(), DeliverError>> for Delivered {
    fn from(result: Result<(), DeliverError>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(DeliverError::Full) => Self::Full,
            Err(DeliverError::OverShare) => Self::OverShare,
            Err(DeliverError::Closed) => Self::Closed,
        }
    }
}

/// The filling side of one inbox; dropping it closes the inbox (receivers drain, then see the
/// close).
struct InboxSender<M> {
    queue: Arc<Queue<M>>,
}

impl<M> Drop for InboxSender<M> {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Places a stager reserves at a time (one lock per this many messages at most).
const RESERVE: usize = 256;
/// Bytes a stager reserves at a time (more when one message is larger).
const RESERVE_BYTES: usize = 1 << 20;

/// One read task's batch for one channel: a frame's messages are decoded into it and handed to
/// the inbox under one lock when the frame is done, instead of a lock (and a possible wake-up)
/// per message. Room is reserved in the inbox first, so whether each message fits is decided at
/// once, exactly as if it had been pushed alone.
pub(crate) trait Stage: Send {
    /// Stages a body the channel keeps as it is (a raw channel). A stager belongs to one
    /// connection, so every message it stages has the source it was made with.
    fn stage_bytes(&mut self, peer: PeerId, bytes: Bytes) -> Delivered;
    /// Stages a body borrowed from its frame (a typed channel decodes it in place).
    fn stage_slice(&mut self, peer: PeerId, body: &[u8]) -> Delivered;
    /// Whether the channel keeps bodies as they are (see [`Slot::keeps_bodies`]).
    fn keeps_bodies(&self) -> bool;
    /// Hands everything staged to the inbox and returns the unused reservation; `false` when
    /// the inbox is closed (what was staged is dropped).
    fn flush(&mut self) -> bool;
}

struct Stager<M> {
    queue: Arc<Queue<M>>,
    /// The connection's source: its reservations and messages count towards that share.
    source: Source,
    staged: Vec<Delivery<M>>,
    staged_bytes: usize,
    /// Places and bytes reserved and not used yet.
    room: usize,
    room_bytes: usize,
}

impl<M> Stager<M> {
    fn new(queue: Arc<Queue<M>>, source: Source) -> Self {
        Self {
            queue,
            source,
            staged: Vec::new(),
            staged_bytes: 0,
            room: 0,
            room_bytes: 0,
        }
    }

    /// Reserves room for at least one message of `size` bytes.
    fn reserve(&mut self, size: usize) -> Result<(), DeliverError> {
        let queue = &self.queue;
        let mut state = queue.state.lock();
        if state.closed || state.abandoned {
            return Err(DeliverError::Closed);
        }
        // Give back what is left first, so the accounting is only staged + room.
        state.reserved -= self.room;
        state.reserved_bytes -= self.room_bytes;
        release(&mut state.holders, self.source, self.room, self.room_bytes);
        self.room = 0;
        self.room_bytes = 0;
        let free = queue
            .capacity
            .saturating_sub(state.items.len() + state.reserved);
        let free_bytes = queue
            .max_bytes
            .saturating_sub(state.bytes + state.reserved_bytes);
        // One message always fits an empty inbox, whatever its size.
        let empty = state.items.is_empty() && state.reserved == 0;
        if free == 0 || (free_bytes < size && !empty) {
            return Err(state.refused_full(self.source));
        }
        if let Some(refusal) = state.over_share(self.source, size, queue.capacity, queue.max_bytes)
        {
            return Err(refusal);
        }
        // An eighth of what is free, so read tasks staging at once share the last places
        // instead of one holding them unused (which would refuse messages that fit), and no
        // more than the source's share has left, so a reservation never takes another
        // sender's part.
        let (places, _) = state.share_left(self.source, queue.capacity, queue.max_bytes);
        self.room = (free / 8).clamp(1, RESERVE).min(places).max(1);
        self.room_bytes = if free_bytes >= size {
            (free_bytes / 8).clamp(size, RESERVE_BYTES.max(size))
        } else {
            size
        };
        state.reserved += self.room;
        state.reserved_bytes += self.room_bytes;
        hold(&mut state.holders, self.source, self.room, self.room_bytes);
        Ok(())
    }

    fn stage(&mut self, peer: PeerId, message: M, size: usize) -> Delivered {
        if self.room == 0 || self.room_bytes < size {
            if let Err(e) = self.reserve(size) {
                return Err(e).into();
            }
        }
        self.room -= 1;
        self.room_bytes -= size;
        self.staged_bytes += size;
        self.staged.push(Delivery {
            peer,
            source: self.source,
            message,
            size,
        });
        Delivered::Ok
    }

    fn flush_staged(&mut self) -> bool {
        if self.staged.is_empty() && self.room == 0 && self.room_bytes == 0 {
            return true;
        }
        let mut state = self.queue.state.lock();
        state.reserved -= self.staged.len() + self.room;
        state.reserved_bytes -= self.staged_bytes + self.room_bytes;
        // The staged messages keep their hold as they become items; the unused room goes.
        release(&mut state.holders, self.source, self.room, self.room_bytes);
        self.room = 0;
        self.room_bytes = 0;
        let added = self.staged_bytes;
        self.staged_bytes = 0;
        if state.closed || state.abandoned {
            release(&mut state.holders, self.source, self.staged.len(), added);
            self.staged.clear();
            return false;
        }
        if self.staged.is_empty() {
            return true;
        }
        let was_empty = state.items.is_empty();
        state.bytes += added;
        state.items.extend(self.staged.drain(..));
        let sleepers = state.sleepers;
        drop(state);
        if was_empty {
            self.queue.wake(sleepers);
        }
        true
    }
}

impl<M> Drop for Stager<M> {
    fn drop(&mut self) {
        self.flush_staged();
    }
}

impl<M: DeserializeOwned + Send + 'static> Stage for Stager<M> {
    fn stage_bytes(&mut self, peer: PeerId, bytes: Bytes) -> Delivered {
        let size = bytes.len();
        match decode_body::<M>(bytes) {
            Ok(message) => self.stage(peer, message, size),
            Err(violation) => Delivered::Undecodable(violation),
        }
    }

    fn stage_slice(&mut self, peer: PeerId, body: &[u8]) -> Delivered {
        if is_raw::<M>() {
            return self.stage_bytes(peer, Bytes::copy_from_slice(body));
        }
        match decode_message::<M>(body) {
            Ok(message) => self.stage(peer, message, body.len()),
            Err(violation) => Delivered::Undecodable(violation),
        }
    }

    fn keeps_bodies(&self) -> bool {
        is_raw::<M>()
    }

    fn flush(&mut self) -> bool {
        self.flush_staged()
    }
}

/// A protocol that takes its channel's messages on the read task itself, a frame's worth at a
/// time, instead of through an inbox and a task of its own (one wake-up less per message).
/// It runs on the sending peer's read task, so it must never block or wait: it may only lock
/// briefly and hand things on without waiting.
pub(crate) trait Handler: Send + Sync {
    /// Takes every message of `batch` (the vector is reused).
    fn handle(&self, batch: &mut Vec<(PeerId, Bytes)>);
}

/// A slot's sink when a [`Handler`] serves the channel.
struct HandlerSink(Arc<dyn Handler>);

impl Sink for HandlerSink {
    fn stager(&self, _source: Source) -> Box<dyn Stage> {
        Box::new(HandlerStager {
            handler: self.0.clone(),
            staged: Vec::new(),
        })
    }

    fn deliver(&self, peer: PeerId, _source: Source, bytes: Bytes) -> Delivered {
        self.0.handle(&mut vec![(peer, bytes)]);
        Delivered::Ok
    }

    fn deliver_slice(&self, peer: PeerId, source: Source, body: &[u8]) -> Delivered {
        self.deliver(peer, source, Bytes::copy_from_slice(body))
    }

    fn keeps_bodies(&self) -> bool {
        true
    }
}

/// One read task's batch for a handled channel: a frame's messages, handed over together.
struct HandlerStager {
    handler: Arc<dyn Handler>,
    staged: Vec<(PeerId, Bytes)>,
}

impl Drop for HandlerStager {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Stage for HandlerStager {
    fn stage_bytes(&mut self, peer: PeerId, bytes: Bytes) -> Delivered {
        self.staged.push((peer, bytes));
        Delivered::Ok
    }

    fn stage_slice(&mut self, peer: PeerId, body: &[u8]) -> Delivered {
        self.stage_bytes(peer, Bytes::copy_from_slice(body))
    }

    fn keeps_bodies(&self) -> bool {
        true
    }

    fn flush(&mut self) -> bool {
        if !self.staged.is_empty() {
            self.handler.handle(&mut self.staged);
            self.staged.clear();
        }
        true
    }
}

/// Decodes and delivers one channel's messages on the read task.
trait Sink: Send + Sync {
    /// A batch for one read task, whose messages come from `source`.
    fn stager(&self, source: Source) -> Box<dyn Stage>;
    fn deliver(&self, peer: PeerId, source: Source, bytes: Bytes) -> Delivered;
    /// Delivers a body borrowed from its frame (typed channels decode it in place).
    fn deliver_slice(&self, peer: PeerId, source: Source, body: &[u8]) -> Delivered;
    /// Whether delivered bodies are kept as they are (raw [`Bytes`] channels), so a small one
    /// must not pin a large receive buffer.
    fn keeps_bodies(&self) -> bool;
}

impl<M: DeserializeOwned + Send + 'static> Sink for InboxSender<M> {
    fn stager(&self, source: Source) -> Box<dyn Stage> {
        Box::new(Stager::new(self.queue.clone(), source))
    }

    fn deliver(&self, peer: PeerId, source: Source, bytes: Bytes) -> Delivered {
        let size = bytes.len();
        match decode_body::<M>(bytes) {
            Ok(message) => self.queue.push(peer, source, message, size).into(),
            Err(violation) => Delivered::Undecodable(violation),
        }
    }

    fn deliver_slice(&self, peer: PeerId, source: Source, body: &[u8]) -> Delivered {
        if is_raw::<M>() {
            return self.deliver(peer, source, Bytes::copy_from_slice(body));
        }
        match decode_message::<M>(body) {
            Ok(message) => self.queue.push(peer, source, message, body.len()).into(),
            Err(violation) => Delivered::Undecodable(violation),
        }
    }

    fn keeps_bodies(&self) -> bool {
        is_raw::<M>()
    }
}

/// One channel's delivery point, shared by every reader; see the module docs.
pub(crate) struct Slot {
    typed: OnceLock<Box<dyn Sink>>,
    /// Until the channel is opened: the backlog of raw bodies.
    raw: Mutex<Option<InboxSender<Bytes>>>,
    capacity: usize,
    max_bytes: usize,
    /// Backlog messages that did not decode as the channel's type when it was opened (dropped).
    undecodable: AtomicU64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("open", &self.typed.get().is_some())
            .finish()
    }
}

impl Slot {
    /// A channel slot bounded by `capacity` messages and `max_bytes` encoded bytes, keeping a
    /// backlog until it is opened.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            typed: OnceLock::new(),
            raw: Mutex::new(Some(InboxSender {
                queue: Arc::new(Queue::new(capacity, max_bytes)),
            })),
            capacity,
            max_bytes,
            undecodable: AtomicU64::new(0),
        }
    }

    /// A slot opened for `M` from the start (the default channel, whose type `start` knows).
    pub(crate) fn opened<M: DeserializeOwned + Send + 'static>(
        capacity: usize,
        max_bytes: usize,
    ) -> (Self, Inbox<M>) {
        let slot = Self {
            typed: OnceLock::new(),
            raw: Mutex::new(None),
            capacity,
            max_bytes,
            undecodable: AtomicU64::new(0),
        };
        let inbox = slot.open::<M>().unwrap_or_else(|| Inbox {
            queue: Arc::new(Queue::new(capacity, max_bytes)),
        });
        (slot, inbox)
    }

    /// Opens the channel for message type `M`: from now on readers decode into the returned
    /// inbox, which first holds the backlog, decoded. `None` if it was opened before.
    pub(crate) fn open<M: DeserializeOwned + Send + 'static>(&self) -> Option<Inbox<M>> {
        if self.typed.get().is_some() {
            return None;
        }
        let mut raw = self.raw.lock();
        let queue = Arc::new(Queue::<M>::new(self.capacity, self.max_bytes));
        if let Some(backlog) = raw.take() {
            // Decoded under the lock readers take for the backlog: a reader's later messages
            // go to the typed inbox after its earlier ones.
            let mut early = backlog.queue.state.lock();
            let mut typed = queue.state.lock();
            early.holders.clear();
            for d in early.items.drain(..) {
                match decode_body::<M>(d.message) {
                    Ok(message) => {
                        typed.bytes += d.size;
                        hold(&mut typed.holders, d.source, 1, d.size);
                        typed.items.push_back(Delivery {
                            peer: d.peer,
                            source: d.source,
                            message,
                            size: d.size,
                        });
                    }
                    Err(_) => {
                        self.undecodable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            early.bytes = 0;
        }
        let sink = InboxSender {
            queue: queue.clone(),
        };
        if self.typed.set(Box::new(sink)).is_err() {
            return None;
        }
        Some(Inbox { queue })
    }

    /// Opens the channel for a [`Handler`]: from now on readers hand its messages to it. The
    /// backlog goes to it first, before any later message (readers wait on the backlog's lock
    /// meanwhile). `false` if the channel was opened before.
    pub(crate) fn open_handler(&self, handler: Arc<dyn Handler>) -> bool {
        if self.typed.get().is_some() {
            return false;
        }
        let mut raw = self.raw.lock();
        if let Some(backlog) = raw.as_ref() {
            let mut early: Vec<(PeerId, Bytes)> = {
                let mut state = backlog.queue.state.lock();
                state.bytes = 0;
                state.holders.clear();
                state.items.drain(..).map(|d| (d.peer, d.message)).collect()
            };
            handler.handle(&mut early);
        }
        if self.typed.set(Box::new(HandlerSink(handler))).is_err() {
            return false;
        }
        raw.take();
        true
    }

    /// A batch for one read task, once the channel is open (before, messages go to the backlog
    /// one by one).
    pub(crate) fn stager(&self, source: Source) -> Option<Box<dyn Stage>> {
        self.typed.get().map(|sink| sink.stager(source))
    }

    /// Whether a body handed to this slot may be kept as it is (a raw channel, or a backlog):
    /// then a small body should be copied out of the receive buffer first, see
    /// `reader::Compactor`.
    pub(crate) fn keeps_bodies(&self) -> bool {
        self.typed.get().is_none_or(|sink| sink.keeps_bodies())
    }

    /// Hands one encoded message from `peer` (at `source`) to the channel.
    pub(crate) fn deliver(&self, peer: PeerId, source: Source, bytes: Bytes) -> Delivered {
        if let Some(sink) = self.typed.get() {
            return sink.deliver(peer, source, bytes);
        }
        let raw = self.raw.lock();
        match (raw.as_ref(), self.typed.get()) {
            (_, Some(sink)) => sink.deliver(peer, source, bytes),
            (Some(backlog), None) => {
                let size = bytes.len();
                backlog.queue.push(peer, source, bytes, size).into()
            }
            // Opened and typed is set before raw is taken, so this cannot be reached.
            (None, None) => Delivered::Closed,
        }
    }

    /// Hands one encoded message from `peer` to the channel, borrowed from its frame: a typed
    /// channel decodes it in place; a channel that keeps bodies gets a copy.
    pub(crate) fn deliver_slice(&self, peer: PeerId, source: Source, body: &[u8]) -> Delivered {
        match self.typed.get() {
            Some(sink) => sink.deliver_slice(peer, source, body),
            None => self.deliver(peer, source, Bytes::copy_from_slice(body)),
        }
    }

    /// Encoded bytes waiting in this channel's backlog.
    #[cfg(test)]
    fn backlog_bytes(&self) -> usize {
        self.raw.lock().as_ref().map_or(0, |b| b.queue.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The source of the tests' messages (one address; fairness has its own test).
    const SRC: Source = 7;
    use crate::Keypair;
    use crate::codec::encode_message;

    fn enc(v: u8) -> Bytes {
        encode_message(&v, 100).unwrap()
    }

    /// Records every message a handler is given, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(PeerId, Bytes)>>);

    impl Handler for Recorder {
        fn handle(&self, batch: &mut Vec<(PeerId, Bytes)>) {
            self.0.lock().append(batch);
        }
    }

    #[test]
    fn a_handler_gets_the_backlog_first_then_every_later_message_in_order() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(8, 1000);
        let m = |b: u8| Bytes::from(vec![b]);
        assert_eq!(slot.deliver(peer, SRC, m(1)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, SRC, m(2)), Delivered::Ok);
        let recorder = Arc::new(Recorder::default());
        assert!(slot.open_handler(recorder.clone()));
        assert!(!slot.open_handler(recorder.clone()), "a channel opens once");
        assert!(slot.open::<u8>().is_none());
        assert_eq!(slot.backlog_bytes(), 0);
        assert_eq!(slot.deliver(peer, SRC, m(3)), Delivered::Ok);
        let mut stager = slot.stager(SRC).unwrap();
        assert_eq!(stager.stage_slice(peer, &[4]), Delivered::Ok);
        assert_eq!(stager.stage_bytes(peer, m(5)), Delivered::Ok);
        // Staged messages reach the handler together, when the frame is done.
        assert_eq!(recorder.0.lock().len(), 3);
        assert!(stager.flush());
        let got: Vec<u8> = recorder.0.lock().iter().map(|(_, b)| b[0]).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_flooding_address_gets_its_share_and_the_others_keep_theirs() {
        let (flooder, honest) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        let (flood, calm) = (
            source_of([10, 0, 0, 1].into()),
            source_of([10, 0, 0, 2].into()),
        );
        let slot = Slot::new(100, 1 << 20);
        let rx = slot.open::<u8>().unwrap();
        // Alone, the flooder may fill three quarters of the inbox; past them it is refused as
        // by a full inbox (not charged: nobody else is kept out).
        let mut stager = slot.stager(flood).unwrap();
        let mut taken = 0;
        while stager.stage_slice(flooder, &[1]) == Delivered::Ok {
            taken += 1;
        }
        assert_eq!(stager.stage_slice(flooder, &[1]), Delivered::Full);
        assert!(stager.flush());
        assert_eq!(taken, 75);
        // The honest address arrives: it gets the last quarter (its share, three quarters
        // halved, is more), and the flood, now among others, is refused as over its share.
        let mut honest_in = 0;
        while slot.deliver(honest, calm, enc(2)) == Delivered::Ok {
            honest_in += 1;
        }
        assert_eq!(honest_in, 25);
        assert_eq!(slot.deliver(flooder, flood, enc(1)), Delivered::Full);
        for _ in 0..50 {
            rx.try_recv().unwrap();
        }
        assert_eq!(slot.deliver(flooder, flood, enc(1)), Delivered::Ok);
        assert_eq!(slot.deliver(honest, calm, enc(2)), Delivered::Ok);
        // Two share three quarters, 37 each: the flood (26) may take 11 more, then it is over
        // its share.
        for _ in 0..11 {
            assert_eq!(slot.deliver(flooder, flood, enc(1)), Delivered::Ok);
        }
        assert_eq!(slot.deliver(flooder, flood, enc(1)), Delivered::OverShare);
        let mut from_honest = 0;
        while let Ok((peer, m)) = rx.try_recv() {
            if peer == honest {
                assert_eq!(m, 2);
                from_honest += 1;
            }
        }
        assert_eq!(from_honest, honest_in + 1);
        // Drained, the shares are forgotten: the flooder may fill it again.
        assert_eq!(slot.deliver(flooder, flood, enc(1)), Delivered::Ok);
    }

    #[test]
    fn bounded_by_count_and_bytes_and_reports_closed() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(2, 4);
        let rx = slot.open::<u8>().unwrap();
        assert!(slot.open::<u8>().is_none(), "a channel opens once");
        assert_eq!(slot.deliver(peer, SRC, enc(1)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, SRC, enc(2)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, SRC, enc(9)), Delivered::Full); // count
        assert_eq!(rx.try_recv(), Ok((peer, 1)));
        assert_eq!(rx.try_recv(), Ok((peer, 2)));
        let big = Slot::new(8, 5);
        let vec_rx = big.open::<Vec<u8>>().unwrap();
        let vec_enc = |n: usize| encode_message(&vec![7u8; n], 100).unwrap();
        assert_eq!(big.deliver(peer, SRC, vec_enc(2)), Delivered::Ok); // 3 bytes
        assert_eq!(big.deliver(peer, SRC, vec_enc(2)), Delivered::Full); // 6 > 5 bytes
        assert_eq!(vec_rx.try_recv(), Ok((peer, vec![7, 7])));
        // Exactly the byte bound fits (from two sources: one alone may hold three quarters).
        let exact = Slot::new(8, 6);
        let _exact_rx = exact.open::<Vec<u8>>().unwrap();
        assert_eq!(exact.deliver(peer, SRC, vec_enc(2)), Delivered::Ok); // 3 bytes
        assert_eq!(exact.deliver(peer, SRC + 1, vec_enc(2)), Delivered::Ok); // 6 = 6 bytes
        assert_ne!(exact.deliver(peer, SRC + 2, vec_enc(0)), Delivered::Ok); // 7 > 6
        // One message always fits an empty inbox, whatever its size.
        assert_eq!(big.deliver(peer, SRC, vec_enc(9)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, SRC, enc(3)), Delivered::Ok);
        assert!(matches!(
            slot.deliver(peer, SRC, Bytes::from_static(&[])),
            Delivered::Undecodable(_)
        ));
        assert_eq!(rx.try_recv(), Ok((peer, 3)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(slot);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Closed)
        );
    }

    #[test]
    fn messages_before_open_wait_in_the_backlog_in_order() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(3, 100);
        assert!(slot.keeps_bodies(), "a backlog keeps bodies");
        assert_eq!(slot.deliver(peer, SRC, enc(1)), Delivered::Ok);
        assert_eq!(slot.deliver(peer, SRC, enc(2)), Delivered::Ok);
        assert_eq!(
            slot.deliver(peer, SRC, Bytes::from_static(&[1, 2])),
            Delivered::Ok
        );
        assert_eq!(
            slot.deliver(peer, SRC, enc(9)),
            Delivered::Full,
            "backlog bounded too"
        );
        assert_eq!(slot.backlog_bytes(), 4);
        let rx = slot.open::<u8>().unwrap();
        assert!(!slot.keeps_bodies(), "a typed channel decodes");
        assert_eq!(slot.deliver(peer, SRC, enc(3)), Delivered::Ok);
        let got: Vec<u8> = std::iter::from_fn(|| rx.try_recv().ok().map(|(_, m)| m)).collect();
        // The undecodable early message is dropped (and counted), the rest keep their order.
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(slot.undecodable.load(Ordering::Relaxed), 1);
        assert_eq!(rx.queue.bytes(), 0);
    }

    #[test]
    fn a_raw_channel_keeps_bodies_and_hands_them_over_as_they_are() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(4, 100);
        let rx = slot.open::<Bytes>().unwrap();
        assert!(slot.keeps_bodies());
        let body = Bytes::from_static(b"\x00anything");
        assert_eq!(slot.deliver(peer, SRC, body.clone()), Delivered::Ok);
        let (_, got) = rx.try_recv().unwrap();
        assert_eq!(got.as_ptr(), body.as_ptr(), "no copy");
    }

    #[test]
    fn clones_share_one_inbox_and_threads_wait_with_a_timeout() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(8, 100);
        let rx = slot.open::<u8>().unwrap();
        let dropped = rx.clone();
        drop(dropped);
        assert_eq!(
            slot.deliver(peer, SRC, enc(1)),
            Delivered::Ok,
            "another receiver is left"
        );
        assert_eq!(rx.try_recv(), Ok((peer, 1)));
        let other = rx.clone();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        let waiter = std::thread::spawn(move || other.recv_timeout(Duration::from_secs(30)));
        // Whether the thread is asleep yet or not, the message reaches it.
        assert_eq!(slot.deliver(peer, SRC, enc(5)), Delivered::Ok);
        assert_eq!(waiter.join().unwrap(), Ok((peer, 5)));
        assert!(rx.is_empty(), "each message goes to one receiver");
        let blocked = {
            let rx = rx.clone();
            std::thread::spawn(move || rx.blocking_recv())
        };
        drop(slot);
        assert_eq!(
            blocked.join().unwrap(),
            None,
            "the close wakes a blocked thread"
        );
        // Dropping every receiver closes the channel for the readers.
        let slot = Slot::new(8, 100);
        let rx = slot.open::<u8>().unwrap();
        assert_eq!(slot.deliver(peer, SRC, enc(1)), Delivered::Ok);
        drop(rx);
        assert_eq!(slot.deliver(peer, SRC, enc(2)), Delivered::Closed);
    }

    #[tokio::test]
    async fn a_task_waiting_in_recv_is_woken_by_a_push_and_by_the_close() {
        let peer = Keypair::generate().peer_id();
        let slot = Arc::new(Slot::new(8, 100));
        let rx = slot.open::<u8>().unwrap();
        let waiting = tokio::spawn({
            let rx = rx.clone();
            async move { rx.recv().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(slot.deliver(peer, SRC, enc(4)), Delivered::Ok);
        assert_eq!(waiting.await.unwrap(), Some((peer, 4)));
        for v in 0..3 {
            assert_eq!(slot.deliver(peer, SRC, enc(v)), Delivered::Ok);
        }
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 2).await, 2);
        assert_eq!(rx.recv_many(&mut out, 8).await, 1);
        assert_eq!(out.iter().map(|(_, v)| *v).collect::<Vec<_>>(), [0, 1, 2]);
        let waiting = tokio::spawn({
            let rx = rx.clone();
            async move { rx.recv().await }
        });
        tokio::task::yield_now().await;
        drop(slot);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[test]
    fn staged_batches_keep_the_bounds_exact_and_arrive_in_order() {
        let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        let slot = Slot::new(5, 100);
        assert!(
            slot.stager(SRC).is_none(),
            "no batch before the channel is open"
        );
        let rx = slot.open::<u8>().unwrap();
        let (mut sa, mut sb) = (slot.stager(SRC).unwrap(), slot.stager(SRC).unwrap());
        // Two read tasks of one address stage at once: together they get the four places of
        // its three quarters (the fifth is kept for another address), never more.
        let mut ok = 0;
        for v in 0..4 {
            ok += usize::from(sa.stage_slice(a, &enc(v)) == Delivered::Ok);
            ok += usize::from(sb.stage_slice(b, &enc(10 + v)) == Delivered::Ok);
        }
        assert_eq!(ok, 4);
        // A direct push sees the reserved places as taken: the address, alone, is refused as
        // by a full inbox; another address gets the last place, then the inbox is full.
        assert_eq!(slot.deliver(a, SRC, enc(99)), Delivered::Full);
        assert_eq!(slot.deliver(b, SRC + 2, enc(98)), Delivered::Ok);
        assert_eq!(slot.deliver(b, SRC + 4, enc(97)), Delivered::Full);
        assert_eq!(
            rx.len(),
            1,
            "staged messages are not visible before the flush"
        );
        assert!(sa.flush() && sb.flush());
        let got: Vec<(PeerId, u8)> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 5);
        let from_a: Vec<u8> = got
            .iter()
            .filter(|(p, _)| *p == a)
            .map(|(_, v)| *v)
            .collect();
        assert!(
            from_a.windows(2).all(|w| w[0] < w[1]),
            "per-peer order kept: {from_a:?}"
        );
        // Unused reservations were returned: the inbox takes four from the address again.
        for v in 0..4 {
            assert_eq!(sa.stage_slice(a, &enc(v)), Delivered::Ok);
        }
        assert_eq!(sa.stage_slice(a, &enc(5)), Delivered::Full);
        assert!(sa.flush());
        assert_eq!(rx.len(), 4);
        // An undecodable body is the sender's fault, not a place taken.
        assert!(matches!(sb.stage_slice(b, &[]), Delivered::Undecodable(_)));
        // A closed inbox: the batch is dropped and the reader told.
        while rx.try_recv().is_ok() {}
        assert_eq!(sb.stage_slice(b, &enc(1)), Delivered::Ok);
        drop(rx);
        assert!(!sb.flush());
    }

    #[test]
    fn one_large_message_fits_an_empty_inbox_through_a_batch_too() {
        let peer = Keypair::generate().peer_id();
        let slot = Slot::new(8, 4);
        let rx = slot.open::<Vec<u8>>().unwrap();
        let mut stager = slot.stager(SRC).unwrap();
        let big = encode_message(&vec![1u8; 50], 100).unwrap();
        assert_eq!(stager.stage_slice(peer, &big), Delivered::Ok);
        assert_eq!(
            stager.stage_slice(peer, &big),
            Delivered::Full,
            "the byte bound holds"
        );
        assert!(stager.flush());
        assert_eq!(rx.try_recv().unwrap().1.len(), 50);
    }
}
