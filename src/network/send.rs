//! The one send route behind every send method of [`super::Network`] and [`super::Channel`]:
//! where an encoded message goes (a persistent peer's reliable stream, or a connected peer's
//! channel lane), how a refusal is counted, and how long a waiting send may wait for one peer.
//!
//! No actor hop: the route reads the peer map under a read lock and pushes into the peer's
//! bounded queue on the caller's thread.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crate::driver::link::SocketShared;
use crate::driver::queue::PushError;
use crate::driver::shared::Shared;
use crate::driver::stream::StreamRefusal;
use crate::error::SendError;
use crate::identity::PeerId;
use crate::session::inbound::Delivered;
use crate::store::Commit;

/// The outcome of a broadcast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastReport {
    /// Peers the message was queued to (this node too, when the channel delivers to itself).
    pub queued: usize,
    /// Peers skipped because their queue on this channel was full (`try_broadcast`), or stayed
    /// full for `send_wait` or was already stalled (`broadcast`). Counted in
    /// [`crate::NetworkStats::broadcast_skipped_full`] and in each peer's `dropped_queue_full`.
    pub skipped_full: usize,
    /// Peers that disconnected while the broadcast waited for room (`broadcast` only).
    pub disconnected: usize,
    /// Every peer that did not get the message, and why. Empty, and never allocated, when
    /// every peer got it.
    pub skipped: Vec<(PeerId, Skipped)>,
}

/// Why a broadcast skipped a peer (see [`BroadcastReport::skipped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skipped {
    /// Its queue on the channel was full, stayed full for `send_wait`, or is marked stalled;
    /// for this node itself (`deliver_to_self`), its inbox was full.
    QueueFull,
    /// Its connection was closing.
    Closing,
    /// It disconnected while the broadcast waited for room.
    NotConnected,
}

/// How the non-waiting part of a send ended, when it did not finish it.
#[derive(Debug)]
pub(crate) enum Started {
    /// Refused for good (not connected, own inbox full, closed).
    Refused(SendError),
    /// The peer's queue is full: the message back, to wait with.
    Wait(Bytes),
    /// Accepted for a durable peer: waiting for the data directory to hold it (`None`: the
    /// journal's queue was full, so it will not).
    Commit(Option<Commit>),
    /// The peer is between two connections (see `Shared::between`): the message back, to
    /// wait for the replacement with.
    Between(Bytes),
}

/// Waits until a durable peer's message is on disk.
async fn committed(peer: PeerId, commit: Option<Commit>) -> Result<(), SendError> {
    let Some(commit) = commit else {
        return Err(SendError::NotKept(
            peer,
            "the journal's queue is full".into(),
        ));
    };
    match commit.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(SendError::NotKept(peer, reason)),
        Err(_) => Err(SendError::NotKept(peer, "the journal stopped".into())),
    }
}

/// What a push into a persistent peer's stream owes the caller: nothing, or (durable peer)
/// the wait for the disk.
enum Pushed {
    Done,
    Durable(Option<Commit>),
}

/// Why a non-blocking push was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Full,
    NotConnected,
}

/// A route into one channel (by dense index) of one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) lane: usize,
}

impl Route<'_> {
    /// Whether this channel delivers sends to the local peer, and broadcasts, to this node.
    fn delivers_to_self(&self) -> bool {
        self.shared.channels.spec(self.lane).deliver_to_self
    }

    /// Puts `message` in this node's own inbox for the channel, tagged with the local id,
    /// without waiting (the inbox is drained by the caller's own application).
    fn deliver_self(&self, message: Bytes) -> Result<(), SendError> {
        let local = self.shared.local_id;
        let Some(slots) = self.shared.slots.upgrade() else {
            return Err(SendError::NotConnected(local));
        };
        match slots
            .get(self.lane)
            .map(|slot| slot.deliver(local, crate::driver::inbox::LOCAL, message))
        {
            Some(Delivered::Ok) => Ok(()),
            Some(Delivered::Full | Delivered::OverShare) => {
                self.shared.counters.self_inbox_full.inc();
                Err(SendError::Full(local))
            }
            // Closed after shutdown; a message of the channel's own type always decodes.
            _ => Err(SendError::NotConnected(local)),
        }
    }

    fn count_drop(&self, link: &SocketShared) {
        if let Some(c) = link.stats.channels.get(self.lane) {
            c.dropped_queue_full.fetch_add(1, Relaxed);
        }
    }

    /// Pushes without waiting, under the peer maps' read locks (no reference counting on the
    /// hot path). A refused message is handed back.
    fn try_push(&self, peer: PeerId, message: Bytes) -> Result<Pushed, (Refusal, Bytes)> {
        if let Some(reliable) = self.shared.reliable.read().get(&peer) {
            // A persistent peer: accepted whether or not it is connected now.
            let durable = reliable.is_durable();
            return reliable
                .push(self.lane, message)
                .map(|commit| {
                    if durable {
                        Pushed::Durable(commit)
                    } else {
                        Pushed::Done
                    }
                })
                .map_err(|(refusal, message)| match refusal {
                    StreamRefusal::Removed => (Refusal::NotConnected, message),
                    _ => (Refusal::Full, message),
                });
        }
        let peers = self.shared.peers.read();
        let Some(link) = peers.get(&peer) else {
            return Err((Refusal::NotConnected, message));
        };
        link.queue
            .try_push(self.lane, message)
            .map(|()| Pushed::Done)
            .map_err(|(error, message)| {
                let refusal = match error {
                    PushError::Full | PushError::Stalled => Refusal::Full,
                    PushError::Closed => Refusal::NotConnected,
                };
                (refusal, message)
            })
    }

    /// Counts a message refused for `peer` because its queue or stream was full.
    fn refused_full(&self, peer: PeerId) {
        match self.shared.peers.read().get(&peer) {
            Some(link) => self.count_drop(link),
            None => self.shared.counters.offline_full.inc(),
        }
    }

    /// A `try_*` send: refusal for a full queue is a drop, counted on the peer.
    pub(crate) fn try_send(&self, peer: PeerId, message: Bytes) -> Result<(), SendError> {
        if peer == self.shared.local_id && self.delivers_to_self() {
            return self.deliver_self(message);
        }
        self.try_push(peer, message)
            .map(|_| ())
            .map_err(|(refusal, _)| match refusal {
                Refusal::Full => {
                    self.refused_full(peer);
                    SendError::Full(peer)
                }
                Refusal::NotConnected => SendError::NotConnected(peer),
            })
    }

    /// After a push was refused because the peer's queue was full: waits for room until
    /// `deadline` (the waits below try again first), then refuses the message for that peer
    /// and counts it.
    async fn push_until(
        &self,
        peer: PeerId,
        message: Bytes,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), SendError> {
        // The clock is read only once a wait is needed, never on the hot path.
        let deadline =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + self.shared.send_wait);
        let reliable = self.shared.reliable.read().get(&peer).cloned();
        let outcome = if let Some(reliable) = reliable {
            let durable = reliable.is_durable();
            match reliable.push_wait(self.lane, message, deadline).await {
                Ok(commit) if durable => return committed(peer, commit).await,
                Ok(_) => Ok(()),
                Err((StreamRefusal::Full, _)) => Err(PushError::Full),
                Err((StreamRefusal::Stalled | StreamRefusal::NoSuchChannel, _)) => {
                    Err(PushError::Stalled)
                }
                Err((StreamRefusal::Removed, _)) => Err(PushError::Closed),
            }
        } else {
            // Full: wait for room outside the lock.
            let link = self
                .shared
                .peers
                .read()
                .get(&peer)
                .cloned()
                .ok_or(SendError::NotConnected(peer))?;
            link.queue
                .push(self.lane, message, deadline)
                .await
                .map_err(|(error, _)| error)
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                // Waited until the deadline.
                self.shared.counters.send_wait_expired.inc();
                self.refused_full(peer);
                Err(SendError::Full(peer))
            }
            Err(PushError::Stalled) => {
                self.refused_full(peer);
                Err(SendError::Full(peer))
            }
            Err(PushError::Closed) => Err(SendError::NotConnected(peer)),
        }
    }

    /// Pushes, waiting at most `send_wait` for room.
    pub(crate) async fn send(&self, peer: PeerId, message: Bytes) -> Result<(), SendError> {
        match self.start_send(peer, message) {
            Ok(()) => Ok(()),
            Err(started) => self.finish(peer, started).await,
        }
    }

    /// The waiting part of a send that `start_send` did not finish.
    pub(crate) async fn finish(&self, peer: PeerId, started: Started) -> Result<(), SendError> {
        match started {
            Started::Refused(error) => Err(error),
            Started::Wait(message) => self.wait_send(peer, message).await,
            Started::Commit(commit) => committed(peer, commit).await,
            Started::Between(message) => Box::pin(self.after_replacement(peer, message)).await,
        }
    }

    /// A send to a peer between two connections: waits at most `send_wait` for the peer to
    /// settle (its replacement published, or its departure reported), then sends as usual.
    async fn after_replacement(&self, peer: PeerId, message: Bytes) -> Result<(), SendError> {
        let deadline = tokio::time::Instant::now() + self.shared.send_wait;
        loop {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a settling in between is not missed.
            settled.as_mut().enable();
            if !self.shared.between.lock().contains(&peer) {
                break;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        match self.try_push(peer, message) {
            Ok(Pushed::Done) => Ok(()),
            Ok(Pushed::Durable(commit)) => committed(peer, commit).await,
            Err((Refusal::NotConnected, _)) => Err(SendError::NotConnected(peer)),
            Err((Refusal::Full, message)) => self.wait_send(peer, message).await,
        }
    }

    /// The part of a waiting send that never waits: queued, refused for good, or handed back
    /// because the peer's queue is full. Not async, so the message goes from the caller
    /// straight into the queue without passing through a future's state.
    pub(crate) fn start_send(&self, peer: PeerId, message: Bytes) -> Result<(), Started> {
        if peer == self.shared.local_id && self.delivers_to_self() {
            return self.deliver_self(message).map_err(Started::Refused);
        }
        match self.try_push(peer, message) {
            Ok(Pushed::Done) => Ok(()),
            Ok(Pushed::Durable(commit)) => Err(Started::Commit(commit)),
            Err((Refusal::NotConnected, message)) => {
                if self.shared.between.lock().contains(&peer) {
                    Err(Started::Between(message))
                } else {
                    Err(Started::Refused(SendError::NotConnected(peer)))
                }
            }
            Err((Refusal::Full, message)) => Err(Started::Wait(message)),
        }
    }

    /// The rest of a send whose peer's queue was full: waits at most `send_wait`. Boxed, so
    /// the future of every send stays small: only a send that has to wait pays for it.
    pub(crate) async fn wait_send(&self, peer: PeerId, message: Bytes) -> Result<(), SendError> {
        Box::pin(self.push_until(peer, message, None)).await
    }

    /// Offers `message` once to every persistent and every connected peer. A peer with room
    /// gets it; a stalled one is skipped and counted; a full one goes to `waiting` when the
    /// caller will wait for it, and is skipped and counted otherwise.
    fn offer(
        &self,
        message: &Bytes,
        report: &mut BroadcastReport,
        mut waiting: Option<&mut Vec<PeerId>>,
        mut commits: Option<&mut Vec<(PeerId, Option<Commit>)>>,
    ) {
        if self.delivers_to_self() {
            // First, so this node sees its own broadcast in the order it made them.
            match self.deliver_self(message.clone()) {
                Ok(()) => report.queued += 1,
                Err(_) => self.skip(report, self.shared.local_id, Skipped::QueueFull),
            }
        }
        // One read of the map for the whole offer (it is never read twice at once).
        let persistent = self.shared.reliable.read();
        for (peer, reliable) in persistent.iter() {
            match (reliable.push(self.lane, message.clone()), waiting.as_mut()) {
                (Ok(commit), _) => {
                    report.queued += 1;
                    if let (true, Some(commits)) = (reliable.is_durable(), commits.as_mut()) {
                        commits.push((*peer, commit));
                    }
                }
                (Err((StreamRefusal::Full, _)), Some(waiting)) => waiting.push(*peer),
                // Removed a moment ago: no longer one of ours.
                (Err((StreamRefusal::Removed, _)), _) => {}
                // Stalled, or nobody waits: no refusal is silent.
                (Err(_), _) => {
                    self.refused_full(*peer);
                    self.skip(report, *peer, Skipped::QueueFull);
                }
            }
        }
        // Under the map's read lock (every push here is non-blocking): no vector of links and
        // no reference counting per peer per broadcast. Persistent peers were served above,
        // through their reliable streams.
        let peers = self.shared.peers.read();
        let plain = peers.iter().filter(|(id, _)| !persistent.contains_key(id));
        for (_, link) in plain {
            match (
                link.queue.try_push(self.lane, message.clone()),
                waiting.as_mut(),
            ) {
                (Ok(()), _) => report.queued += 1,
                (Err((PushError::Full, _)), Some(waiting)) => {
                    if let Some(peer) = link.peer.get() {
                        waiting.push(*peer);
                    }
                }
                (Err((PushError::Closed, _)), _) => {
                    if let Some(peer) = link.peer.get() {
                        report.skipped.push((*peer, Skipped::Closing));
                    }
                }
                // A stalled peer costs a broadcast nothing but the refusal.
                (Err(_), _) => {
                    self.count_drop(link);
                    if let Some(peer) = link.peer.get() {
                        self.skip(report, *peer, Skipped::QueueFull);
                    }
                }
            }
        }
    }

    /// Queues to every connected and every persistent peer without waiting; a full peer is
    /// skipped and counted.
    pub(crate) fn try_broadcast(&self, message: &Bytes) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        self.offer(message, &mut report, None, None);
        report
    }

    /// Records a peer skipped for a full queue (or inbox).
    fn skip(&self, report: &mut BroadcastReport, peer: PeerId, why: Skipped) {
        self.shared.counters.broadcast_skipped_full.inc();
        report.skipped_full += 1;
        report.skipped.push((peer, why));
    }

    /// Queues to every connected and every persistent peer; peers whose queue is full are
    /// waited for together, until one shared deadline `send_wait` away, then skipped and
    /// counted. So a broadcast takes at most about `send_wait` however many peers are stalled.
    pub(crate) async fn broadcast(&self, message: &Bytes) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        let mut waiting = Vec::new();
        let mut commits = Vec::new();
        self.offer(message, &mut report, Some(&mut waiting), Some(&mut commits));
        // Durable peers' copies are on disk before the broadcast returns (a failure is logged
        // by the journal; the copy is still sent).
        for (peer, commit) in commits {
            if let Err(e) = committed(peer, commit).await {
                tracing::warn!(%peer, error = %e, "broadcast to a durable peer not kept on disk");
            }
        }
        if waiting.is_empty() {
            return report;
        }
        let deadline = Some(tokio::time::Instant::now() + self.shared.send_wait);
        for peer in waiting {
            match self.push_until(peer, message.clone(), deadline).await {
                Ok(()) => report.queued += 1,
                Err(SendError::Full(_)) => self.skip(&mut report, peer, Skipped::QueueFull),
                Err(_) => {
                    report.disconnected += 1;
                    report.skipped.push((peer, Skipped::NotConnected));
                }
            }
        }
        report
    }
}
