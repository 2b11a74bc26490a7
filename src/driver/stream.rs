//! A persistent peer's reliable streams as shared memory: the pure [`ReliableSet`] (one stream
//! per channel) behind a lock, the wake-ups of senders waiting for room, and which connection
//! carries the streams now.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::link::SocketShared;
use crate::identity::PeerId;
use crate::session::reliable::{ReliableSet, Taken};
use crate::store::{Commit, Committed, Journal};

impl Committed for Reliable {
    /// The journal committed message `seq` on `lane` (and those before it): it may go out now.
    fn committed(&self, lane: usize, seq: u64) {
        if let Some(buffer) = self.inner.lock().set.buffer(lane) {
            buffer.committed(seq);
        }
        if let Some(socket) = &*self.attached.lock() {
            socket.queue.wake();
        }
    }
}

/// Why a reliable push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRefusal {
    /// The channel's stream is at its bound (the peer has not acknowledged enough); for a
    /// waiting push, it stayed so until the deadline.
    Full,
    /// The stream is full and stalled (a wait already ran out with no acknowledgement since),
    /// or the peer is away: refused without waiting.
    Stalled,
    /// The channel is not configured.
    NoSuchChannel,
    /// The peer is no longer persistent (`Network::remove_persistent_peer`).
    Removed,
}

#[derive(Debug)]
struct Inner {
    set: ReliableSet,
    /// When a push first found a stream full since the last acknowledgement freed room.
    full_since: Option<Instant>,
    /// A waiting push ran out of time since the last acknowledgement freed room: later waiting
    /// pushes give up at once instead of each waiting `send_wait` again.
    stalled: bool,
    /// The peer stopped being persistent: nothing more is accepted, kept or written.
    closed: bool,
    /// No connection carries the streams: what is accepted now may be kept for long, so a
    /// small message is copied out of the shared encoding buffer it may have been cut from
    /// (`codec::POOL_CHUNK`), and so is every small one kept when the connection went away.
    away: bool,
}

/// A persistent peer's reliable streams as shared by senders, its connections and the node.
#[derive(Debug)]
pub(crate) struct Reliable {
    inner: Mutex<Inner>,
    /// Wakes senders waiting for room (acknowledgements free it; disconnects and shutdown end
    /// the wait).
    room: Notify,
    /// The connection currently writing these streams, if the peer is connected.
    attached: Mutex<Option<Arc<SocketShared>>>,
    /// For a durable peer: its id, the journal every accepted message and acknowledgement is
    /// written to, and a handle on these streams for the journal to say what is on disk.
    durable: Option<(PeerId, Journal, Weak<dyn Committed>)>,
}

impl Reliable {
    pub(crate) fn new(incarnation: u64, bounds: &[(usize, usize, usize)]) -> Self {
        Self {
            inner: Mutex::new(Inner {
                set: ReliableSet::new(incarnation, bounds),
                full_since: None,
                stalled: false,
                closed: false,
                away: true,
            }),
            room: Notify::new(),
            attached: Mutex::new(None),
            durable: None,
        }
    }

    /// A durable peer's streams, put back from what the data directory kept (`kept`: per
    /// channel index, where its unacknowledged messages start and the messages), journaling
    /// from now on.
    pub(crate) fn durable(
        peer: PeerId,
        incarnation: u64,
        bounds: &[(usize, usize, usize)],
        kept: Vec<(u64, Vec<Bytes>)>,
        journal: Journal,
    ) -> Arc<Self> {
        let mut set = ReliableSet::new(incarnation, bounds);
        for lane in 0..bounds.len() {
            let (base, messages) = kept.get(lane).cloned().unwrap_or_default();
            if let Some(buffer) = set.buffer(lane) {
                buffer.restore(base, messages);
            }
        }
        Arc::new_cyclic(|me: &Weak<Self>| Self {
            inner: Mutex::new(Inner {
                set,
                full_since: None,
                stalled: false,
                closed: false,
                away: true,
            }),
            room: Notify::new(),
            attached: Mutex::new(None),
            durable: Some((peer, journal, me.clone() as Weak<dyn Committed>)),
        })
    }

    /// Accepts a message on channel index `lane` and wakes the attached writer, if any; when
    /// refused, hands it back. For a durable peer, also returns the pending write of the
    /// message to the data directory (`None` if the journal's queue was full).
    pub(crate) fn push(
        &self,
        lane: usize,
        message: Bytes,
    ) -> Result<Option<Commit>, (StreamRefusal, Bytes)> {
        let commit = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err((StreamRefusal::Removed, message));
            }
            let stalled = inner.stalled;
            let message = if inner.away && message.len() <= crate::codec::POOLED_MAX {
                Bytes::copy_from_slice(&message)
            } else {
                message
            };
            let Some(buffer) = inner.set.buffer(lane) else {
                return Err((StreamRefusal::NoSuchChannel, message));
            };
            // Only a durable peer pays for the clone (a reference count).
            let kept = self.durable.as_ref().map(|_| message.clone());
            match buffer.push(message) {
                Ok(seq) => match (&self.durable, kept) {
                    // Queued for the disk under the lock, so each lane's writes reach the
                    // journal in sequence order and commit as a prefix.
                    (Some((peer, journal, me)), Some(message)) => {
                        match journal.append(peer, lane, seq, message, me.clone()) {
                            Some(commit) => Some(commit),
                            None => {
                                // The journal's queue is full: not accepted.
                                let back = buffer.unpush().unwrap_or_default();
                                return Err((StreamRefusal::Full, back));
                            }
                        }
                    }
                    _ => None,
                },
                Err(message) => {
                    inner.full_since.get_or_insert_with(Instant::now);
                    let refusal = if stalled {
                        StreamRefusal::Stalled
                    } else {
                        StreamRefusal::Full
                    };
                    return Err((refusal, message));
                }
            }
        };
        if commit.is_none() {
            if let Some(socket) = &*self.attached.lock() {
                socket.queue.wake();
            }
        }
        Ok(commit)
    }

    /// Whether messages to this peer are kept in the data directory.
    pub(crate) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Accepts a message, waiting for acknowledgements to make room until `deadline`; gives up
    /// earlier when the peer is not connected (nothing can free room until it is back).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before it returns, the message was not accepted.
    pub(crate) async fn push_wait(
        &self,
        lane: usize,
        mut message: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Commit>, (StreamRefusal, Bytes)> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(lane, message) {
                Ok(commit) => return Ok(commit),
                Err((StreamRefusal::Full, back)) => {
                    if self.attached.lock().is_none() {
                        return Err((StreamRefusal::Stalled, back));
                    }
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        self.inner.lock().stalled = true;
                        return Err((StreamRefusal::Full, back));
                    }
                    message = back;
                }
                Err(refused) => return Err(refused),
            }
        }
    }

    /// `socket` now carries these streams: resend everything unacknowledged on it. Done under
    /// the `attached` lock (then the buffer lock, the order `take_for` uses too), so no other
    /// connection's writer can read the streams, or their resume markers, after this point.
    ///
    /// Refused (returns `false`) for a connection already told to close: the node may have
    /// admitted it, then replaced it by another connection of the same peer before its task
    /// got to attach. Attached then, it would take the streams from its replacement and leave
    /// them with nobody once it closed: the peer connected, pinging, and never sent another
    /// message. The node marks the old connection closing before it admits the new one, and
    /// the check is made under the lock that `attach` takes, so whichever order the two tasks
    /// run in, the replacement ends up carrying the streams.
    pub(crate) fn attach(&self, socket: &Arc<SocketShared>) -> bool {
        let mut attached = self.attached.lock();
        if socket.is_closing() {
            return false;
        }
        {
            let mut inner = self.inner.lock();
            inner.away = false;
            inner.set.restart();
            // A new connection starts with a clean slate: time spent full while the peer was
            // away is not held against it.
            inner.full_since = None;
            inner.stalled = false;
        }
        *attached = Some(socket.clone());
        drop(attached);
        socket.queue.wake();
        true
    }

    /// Takes the next pieces for `socket`'s writer, only if `socket` carries the streams now;
    /// returns the incarnation for resume markers.
    pub(crate) fn take_for(
        &self,
        socket: &Arc<SocketShared>,
        max_bytes: usize,
        taken: &mut Taken,
    ) -> u64 {
        let attached = self.attached.lock();
        let mut inner = self.inner.lock();
        if attached.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            inner.set.take(max_bytes, taken);
        }
        inner.set.incarnation()
    }

    /// `socket` closed: stop waking it (unless another connection took over already), and wake
    /// senders waiting for room so they stop waiting for a peer that is gone.
    pub(crate) fn detach(&self, socket: &Arc<SocketShared>) {
        let mut attached = self.attached.lock();
        if attached.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            *attached = None;
            // Under the `attached` lock, so a connection attaching meanwhile finds it done; a
            // push after this sees `away` and copies its own.
            let mut inner = self.inner.lock();
            inner.away = true;
            inner.set.unshare_small(crate::codec::POOLED_MAX);
        }
        drop(attached);
        self.room.notify_waiters();
    }

    /// Ends every wait for room (shutdown).
    pub(crate) fn wake_all(&self) {
        self.room.notify_waiters();
    }

    /// The peer acknowledged everything before `next_expected` on channel index `lane`.
    pub(crate) fn ack(&self, lane: usize, next_expected: u64) {
        let freed = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return;
            }
            let freed = inner.set.buffer(lane).map_or(0, |b| b.ack(next_expected));
            if freed > 0 {
                inner.full_since = None;
                inner.stalled = false;
            }
            freed
        };
        if freed > 0 {
            if let Some((peer, journal, _)) = &self.durable {
                journal.acked(peer, lane, next_expected);
            }
            self.room.notify_waiters();
        }
    }

    /// The peer asks for a resend from `from` on channel index `lane`.
    pub(crate) fn rewind(&self, lane: usize, from: u64) {
        if let Some(buffer) = self.inner.lock().set.buffer(lane) {
            buffer.rewind(from);
        }
        if let Some(socket) = &*self.attached.lock() {
            socket.queue.wake();
        }
    }

    /// How long a stream has been full without an acknowledgement freeing room.
    pub(crate) fn full_for(&self) -> Option<Duration> {
        self.inner.lock().full_since.map(|t| t.elapsed())
    }

    /// Messages (and bytes) accepted and not yet acknowledged, on all channels.
    pub(crate) fn depth(&self) -> (usize, usize) {
        self.inner.lock().set.depth()
    }

    /// The peer is no longer persistent: refuses every later push, lets go of what was not
    /// acknowledged and returns how many messages that was. For a durable peer, its rows in the
    /// data directory are deleted after every write already queued (the journal keeps order;
    /// nothing is appended once closed).
    pub(crate) async fn close(&self) -> usize {
        let dropped = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            let (dropped, _) = inner.set.depth();
            let incarnation = inner.set.incarnation();
            inner.set = ReliableSet::new(incarnation, &[]);
            dropped
        };
        self.room.notify_waiters();
        if let Some((peer, journal, _)) = &self.durable {
            journal.forget(peer).await;
        }
        dropped
    }
}

/// The persistent peers as the application set them (in the `Config`, kept in the data
/// directory, or added since), and the maker of their streams.
#[derive(Debug)]
pub(crate) struct Persistence {
    pub(crate) peers: crate::identity::PeerMap<crate::config::PersistentPeer>,
    pub(crate) maker: Arc<StreamMaker>,
}

/// Makes persistent peers' streams: at start for the configured and kept peers, and for those
/// added at runtime. Every stream of this process shares one incarnation; a durable peer's
/// keeps the one it had (from the data directory), so the peer tells a resend from new
/// messages.
#[derive(Debug)]
pub(crate) struct StreamMaker {
    incarnation: u64,
    /// Per channel index: message bound, byte bound, weight.
    bounds: Vec<(usize, usize, usize)>,
    store: Option<Arc<crate::store::Store>>,
    /// Started with the first durable peer, then shared by all of them.
    journal: Mutex<Option<Journal>>,
}

impl StreamMaker {
    pub(crate) fn new(
        incarnation: u64,
        bounds: Vec<(usize, usize, usize)>,
        store: Option<Arc<crate::store::Store>>,
    ) -> Self {
        Self {
            incarnation,
            bounds,
            store,
            journal: Mutex::new(None),
        }
    }

    /// `peer`'s streams; a durable peer's come back from the data directory (blocking: call
    /// it off the async workers at runtime).
    ///
    /// # Errors
    /// The data directory could not be read or written, or its journal not started; a durable
    /// peer without a data directory.
    pub(crate) fn make(
        &self,
        peer: PeerId,
        durable: bool,
    ) -> Result<Arc<Reliable>, crate::store::StoreError> {
        if !durable {
            return Ok(Arc::new(Reliable::new(self.incarnation, &self.bounds)));
        }
        let Some(store) = &self.store else {
            return Err(crate::store::StoreError::Io {
                path: std::path::PathBuf::from("(no data directory)"),
                reason: "a durable peer needs a data directory".into(),
            });
        };
        let journal = {
            let mut journal = self.journal.lock();
            match &*journal {
                Some(j) => j.clone(),
                None => journal.insert(Journal::start(store.clone())?).clone(),
            }
        };
        let kept = store.load_stream(&peer, self.bounds.len())?;
        let own = match kept.incarnation {
            Some(kept) => kept,
            None => {
                store.set_incarnation(&peer, self.incarnation)?;
                self.incarnation
            }
        };
        Ok(Reliable::durable(
            peer,
            own,
            &self.bounds,
            kept.lanes,
            journal,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::DisconnectReason;

    /// The node admitted `old`, then replaced it by `new` before `old`'s task attached: `old`
    /// attaching late must not take the streams from `new` (the streams would be left with
    /// nobody once `old` closed, and nothing more would reach the peer).
    #[test]
    fn a_replaced_connection_attaching_late_leaves_the_streams_with_its_replacement() {
        let reliable = Reliable::new(1, &[(16, 1 << 20, 1)]);
        let (old, new) = (SocketShared::for_test(1, 16), SocketShared::for_test(2, 16));
        old.close_gracefully(DisconnectReason::Duplicate);
        assert!(reliable.attach(&new));
        assert!(
            !reliable.attach(&old),
            "a closing connection is not attached"
        );
        reliable.detach(&old);
        reliable.push(0, Bytes::from_static(b"m")).unwrap();
        let mut taken = Taken::default();
        reliable.take_for(&old, 1 << 20, &mut taken);
        assert!(taken.pieces.is_empty());
        reliable.take_for(&new, 1 << 20, &mut taken);
        assert_eq!(taken.pieces.len(), 1, "the replacement writes the message");
    }

    /// What `socket` would write now: each piece's bytes and where they live.
    fn written(reliable: &Reliable, socket: &Arc<SocketShared>) -> Vec<(Bytes, *const u8)> {
        let mut taken = Taken::default();
        reliable.take_for(socket, 1 << 20, &mut taken);
        taken
            .pieces
            .iter()
            .map(|p| (p.message.clone(), p.message.as_ptr()))
            .collect()
    }

    /// A message cut from a shared encoding buffer and kept while its peer is away would keep
    /// that whole buffer alive for as long: kept messages are copied out then, and only then.
    #[test]
    fn small_messages_kept_while_the_peer_is_away_hold_no_shared_buffer() {
        let reliable = Reliable::new(1, &[(16, 1 << 20, 1)]);
        let shared = Bytes::from(vec![7u8; 4096]);
        let (early, connected) = (shared.slice(0..10), shared.slice(10..20));
        reliable.push(0, early.clone()).unwrap();
        let socket = SocketShared::for_test(1, 16);
        assert!(reliable.attach(&socket));
        reliable.push(0, connected.clone()).unwrap();
        let first = written(&reliable, &socket);
        assert_eq!(first[0].0, early);
        assert_ne!(first[0].1, early.as_ptr(), "pushed while away: copied");
        assert_eq!(first[1].0, connected);
        assert_eq!(
            first[1].1,
            connected.as_ptr(),
            "pushed while connected: no copy"
        );
        // The connection goes with both unacknowledged: both are copied out.
        reliable.detach(&socket);
        let again = SocketShared::for_test(2, 16);
        assert!(reliable.attach(&again));
        let resent = written(&reliable, &again);
        assert_eq!(resent.len(), 2);
        assert_eq!((&resent[0].0, &resent[1].0), (&early, &connected));
        assert!(
            resent
                .iter()
                .all(|(_, at)| *at != early.as_ptr() && *at != connected.as_ptr())
        );
    }
}
