//! The swarm's driver: the core behind a lock shared by the handles, and one task that feeds
//! it both channels' messages, connection events and time, and carries out what it asks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use super::SwarmConfig;
use super::core::{
    AddError, Assembly, Core, FetchError, Output, Placed, Progress, PushError, PushReport,
    SwarmStats, Whole, assemble,
};
use super::file::FileError;
use super::merkle::{BlobId, Info, Tree};
use super::wire;
use crate::driver::inbox::Inbox;
use crate::identity::PeerId;
use crate::network::{Channel, ProtocolFace};
use crate::peers::NetworkEvent;
use crate::protocols::Scores;
use crate::store::{PieceOp, PieceWriter};

/// What happened to a blob on this node, from [`Swarm::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwarmEvent {
    /// `from` pushed a blob of `len` bytes and this node is fetching it.
    Offered {
        /// The blob.
        blob: BlobId,
        /// The pushing peer.
        from: PeerId,
        /// Its length in bytes.
        len: u64,
    },
    /// Every piece of `blob` is here and verified.
    Complete {
        /// The blob.
        blob: BlobId,
    },
}

type Waiter = oneshot::Sender<Result<Bytes, FetchError>>;

#[derive(Debug)]
struct State {
    core: Core,
    fetches: HashMap<BlobId, Vec<Waiter>>,
    pushes: HashMap<BlobId, oneshot::Sender<PushReport>>,
    scores: Scores,
    armed: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    config: SwarmConfig,
    control: Channel<Bytes>,
    pieces: Channel<Bytes>,
    face: ProtocolFace,
    wake: Notify,
    stop: CancellationToken,
    events: broadcast::Sender<SwarmEvent>,
    frames_dropped: AtomicU64,
    /// Writes blobs and pieces to the data directory (with one, and `keep_on_disk`).
    writer: Option<PieceWriter>,
    /// The data directory, to read back blobs that live there (with `writer`).
    store: Option<Arc<crate::store::Store>>,
    /// Reads of pieces from disk in flight (at most `MAX_DISK_READS`).
    disk_reads: Arc<std::sync::atomic::AtomicUsize>,
    /// Itself, for work that finishes after the lock is released (a piece written, a read
    /// from disk).
    me: std::sync::Weak<Self>,
}

impl Inner {
    fn with<R>(&self, f: impl FnOnce(&mut State, &mut Vec<Output>) -> R) -> R {
        let mut out = Vec::new();
        let mut state = self.state.lock();
        let result = f(&mut state, &mut out);
        self.apply(&mut state, out);
        if let Some(next) = state.core.next_deadline() {
            if state.armed.is_none_or(|armed| next < armed) {
                state.armed = Some(next);
                self.wake.notify_one();
            }
        }
        result
    }

    fn apply(&self, state: &mut State, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send {
                    peer,
                    wire,
                    mut data,
                } => {
                    if self.config.corrupt_uploads {
                        data = data.map(corrupt);
                    }
                    // Pieces go on the bulk channel; everything else on the control channel,
                    // so a request is never queued behind megabytes of pieces.
                    let channel = if data.is_some() {
                        &self.pieces
                    } else {
                        &self.control
                    };
                    let sent = wire::encode(&wire, data.as_ref(), channel.max_message_size())
                        .is_some_and(|frame| channel.try_send(peer, &frame).is_ok());
                    if !sent {
                        // A full queue to a slow member: what it asked for times out there and
                        // is asked elsewhere; an announcement lost is repaired by the next.
                        self.frames_dropped.fetch_add(1, Relaxed);
                    }
                }
                Output::Charge { peer, points, why } => {
                    let budget = (self.config.misbehaviour_budget, "swarm");
                    state.scores.charge(&self.face, budget, peer, points, why);
                }
                Output::Offered { blob, from, len } => {
                    let _ = self.events.send(SwarmEvent::Offered { blob, from, len });
                }
                Output::Complete { blob } => {
                    let waiters = state.fetches.remove(&blob).unwrap_or_default();
                    if !waiters.is_empty() {
                        if state.core.is_on_disk(&blob) {
                            self.read_for(blob, waiters, state.core.assembly(&blob));
                        } else if let Some(whole) = state.core.whole(&blob) {
                            self.hand_out(blob, whole, waiters);
                        }
                    }
                    let _ = self.events.send(SwarmEvent::Complete { blob });
                }
                Output::Failed { blob, why } => {
                    for waiter in state.fetches.remove(&blob).unwrap_or_default() {
                        let _ = waiter.send(Err(why.clone()));
                    }
                }
                Output::Pushed { blob, report } => {
                    if let Some(tx) = state.pushes.remove(&blob) {
                        let _ = tx.send(report);
                    }
                }
                Output::Keep { blob, info } => {
                    self.keep(PieceOp::Blob {
                        id: blob.0,
                        info: info.to_bytes(),
                    });
                }
                Output::KeepPiece {
                    blob,
                    index,
                    proof,
                    data,
                    release,
                } => {
                    // A blob living on disk drops a piece's memory copy once it is written.
                    let done: Option<Box<dyn FnOnce() + Send>> = release.map(|incarnation| {
                        let me = self.me.clone();
                        Box::new(move || {
                            if let Some(inner) = me.upgrade() {
                                inner.state.lock().core.stored(&blob, index, incarnation);
                            }
                        }) as Box<dyn FnOnce() + Send>
                    });
                    let queued = self.keep(PieceOp::Piece {
                        id: blob.0,
                        index,
                        proof,
                        data,
                        done,
                    });
                    if release.is_some() && !queued {
                        // Not written and not to be held in memory: fetched again.
                        state.core.lost(&blob, index);
                    }
                }
                Output::SendFromDisk {
                    peer,
                    blob,
                    index,
                    proof,
                    info,
                } => self.send_from_disk(peer, blob, index, proof, info),
                Output::Forget { blob } => {
                    if let Some(writer) = &self.writer {
                        writer.forget(blob.0);
                    }
                }
            }
        }
    }
}

impl Inner {
    /// Reads piece `index` of a blob living on disk off the async threads, then sends it to
    /// `peer` (or, if it cannot be read, says it is not available).
    fn send_from_disk(
        &self,
        peer: PeerId,
        blob: BlobId,
        index: u32,
        proof: Vec<super::merkle::Hash>,
        info: Info,
    ) {
        let (Some(store), Some(inner)) = (self.store.clone(), self.me.upgrade()) else {
            return;
        };
        // Reads in flight are bounded: past the bound the peer is told to come back later.
        let Some(permit) = DiskRead::take(&inner.disk_reads) else {
            let sent = wire::encode(
                &wire::Wire::Busy { blob, piece: index },
                None,
                inner.control.max_message_size(),
            )
            .is_some_and(|frame| inner.control.try_send(peer, &frame).is_ok());
            if !sent {
                inner.frames_dropped.fetch_add(1, Relaxed);
            }
            return;
        };
        tokio::spawn(async move {
            let checked = proof.clone();
            let read = tokio::task::spawn_blocking(move || {
                let data = store.read_piece(&blob.0, index).ok().flatten()?;
                // The disk is not trusted more than a peer: a piece that does not match its
                // proof is not sent.
                let valid = data.len() == info.piece_len(index)
                    && info.pieces().is_some_and(|n| {
                        super::merkle::verify(&info.root, n, index, &data, &checked)
                    });
                valid.then_some(data)
            })
            .await;
            drop(permit);
            let (wire, data) = match read {
                Ok(Some(data)) => (
                    wire::Wire::Piece {
                        blob,
                        piece: index,
                        proof,
                    },
                    Some(data),
                ),
                _ => {
                    tracing::warn!(%blob, index, "swarm: a piece kept on disk cannot be read back intact");
                    (wire::Wire::Reject { blob, piece: index }, None)
                }
            };
            let channel = if data.is_some() {
                &inner.pieces
            } else {
                &inner.control
            };
            let sent = wire::encode(&wire, data.as_ref(), channel.max_message_size())
                .is_some_and(|frame| channel.try_send(peer, &frame).is_ok());
            if !sent {
                inner.frames_dropped.fetch_add(1, Relaxed);
            }
        });
    }

    /// Assembles a whole blob that lives on disk, off the async threads, from the pieces still
    /// in memory and the others read back and checked against their proofs (a piece leaves
    /// memory only once written), and hands it to `waiters`.
    fn read_for(&self, blob: BlobId, waiters: Vec<Waiter>, plan: Option<Assembly>) {
        let (Some(store), Some(plan)) = (self.store.clone(), plan) else {
            return;
        };
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                let info = plan.info;
                let n = info.pieces()?;
                let mut whole = Vec::with_capacity(usize::try_from(info.len).unwrap_or(0));
                for (index, (piece, proof)) in plan.pieces.into_iter().enumerate() {
                    let index = u32::try_from(index).ok()?;
                    let piece = match piece {
                        Some(piece) => piece,
                        None => {
                            let data = store.read_piece(&blob.0, index).ok().flatten()?;
                            let valid = data.len() == info.piece_len(index)
                                && super::merkle::verify(&info.root, n, index, &data, &proof);
                            valid.then_some(data)?
                        }
                    };
                    whole.extend_from_slice(&piece);
                }
                Some(Bytes::from(whole))
            })
            .await;
            let result = match read {
                Ok(Some(data)) => Ok(data),
                // A written piece that cannot be read back intact: the disk failed under the
                // node.
                _ => Err(FetchError::Unreadable),
            };
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        });
    }

    /// Gives the waiters of a complete blob held in memory its buffer; one not made yet is
    /// assembled on the blocking pool, outside the swarm's lock, then kept.
    fn hand_out(&self, blob: BlobId, whole: Whole, waiters: Vec<Waiter>) {
        let parts = match whole {
            Whole::Made(data) => {
                for waiter in waiters {
                    let _ = waiter.send(Ok(data.clone()));
                }
                return;
            }
            Whole::Parts(parts) => parts,
        };
        let me = self.me.clone();
        tokio::spawn(async move {
            let Ok(data) = tokio::task::spawn_blocking(move || assemble(&parts)).await else {
                return; // the runtime is going away: the waiters see the swarm close
            };
            let data = match me.upgrade() {
                Some(inner) => inner.state.lock().core.set_whole(&blob, data),
                None => data,
            };
            for waiter in waiters {
                let _ = waiter.send(Ok(data.clone()));
            }
        });
    }

    /// Hands a write to the data directory's swarm writer, if the node keeps blobs there.
    /// Returns whether it was queued.
    fn keep(&self, op: PieceOp) -> bool {
        match &self.writer {
            // A full queue is counted by the writer.
            Some(writer) => writer.send(op),
            None => true,
        }
    }
}

/// Reads of pieces from disk in flight, at most (beyond: the asker gets `Busy`).
const MAX_DISK_READS: usize = 32;

/// One read from disk in flight; released when dropped.
struct DiskRead(Arc<std::sync::atomic::AtomicUsize>);

impl DiskRead {
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_DISK_READS).then_some(n + 1))
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for DiskRead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Held by the handles: the last one dropped stops the task.
#[derive(Debug)]
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.stop.cancel();
    }
}

/// Blobs in pieces on one node: add, push, fetch, and watch them. From
/// [`crate::Network::swarm`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Swarm {
    alive: Arc<Alive>,
}

pub(super) fn spawn(
    config: SwarmConfig,
    face: ProtocolFace,
    control: (Channel<Bytes>, Inbox<Bytes>),
    pieces: (Channel<Bytes>, Inbox<Bytes>),
) -> Swarm {
    let local = face.local_peer_id();
    let seed = u64::from_le_bytes(local.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    let (events, _) = broadcast::channel(config.event_queue.max(1));
    let store = face.store().filter(|_| config.keep_on_disk);
    let writer = store
        .clone()
        .and_then(|store| match PieceWriter::start(store) {
            Ok(writer) => Some(writer),
            Err(e) => {
                tracing::warn!(error = %e, "swarm: blobs are held in memory only");
                None
            }
        });
    let mut limits = config.limits(seed);
    if writer.is_none() {
        limits.max_disk = 0;
    }
    let mut core = Core::new(limits, local);
    if let (Some(store), Some(_)) = (&store, &writer) {
        restore(&mut core, store);
    }
    let store = store.filter(|_| writer.is_some());
    let inner = Arc::new_cyclic(|me| Inner {
        me: me.clone(),
        disk_reads: Arc::default(),
        store,
        state: Mutex::new(State {
            core,
            fetches: HashMap::new(),
            pushes: HashMap::new(),
            scores: Scores::default(),
            armed: None,
        }),
        config,
        control: control.0,
        pieces: pieces.0,
        face,
        wake: Notify::new(),
        stop: CancellationToken::new(),
        events,
        frames_dropped: AtomicU64::new(0),
        writer,
    });
    let net_events = inner.face.events();
    let now = Instant::now();
    let connected = inner.face.connected();
    inner.with(|state, out| {
        for peer in connected {
            state.core.on_connected(peer, now, out);
        }
    });
    tokio::spawn(run(inner.clone(), control.1, pieces.1, net_events));
    Swarm {
        alive: Arc::new(Alive(inner)),
    }
}

/// Takes back the blobs kept in the data directory (pieces checked again), as far as the
/// bounds allow; what does not fit stays on disk and is said.
fn restore(core: &mut Core, store: &crate::store::Store) {
    let kept = match store.load_blob_infos() {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(error = %e, "swarm: cannot read the kept blobs");
            return;
        }
    };
    for (id, info) in kept {
        let Some(info) = Info::from_bytes(&info).filter(|i| i.id().0 == id) else {
            tracing::warn!("swarm: a kept blob's description does not match its id; skipped");
            continue;
        };
        // A blob that will live on disk is listed, not loaded: its pieces are checked when
        // read. One held in memory is loaded and checked now.
        let on_disk = core.would_live_on_disk(info.len).unwrap_or(false);
        let pieces = match store.load_pieces(&id, !on_disk) {
            Ok(pieces) => pieces,
            Err(e) => {
                tracing::warn!(blob = %info.id(), error = %e, "swarm: cannot read a kept blob's pieces");
                continue;
            }
        };
        match core.restore(info, pieces) {
            Ok((pieces, dropped)) => tracing::info!(
                blob = %info.id(),
                pieces,
                dropped,
                on_disk,
                "swarm: blob taken back from the data directory"
            ),
            Err(e) => {
                tracing::warn!(blob = %info.id(), error = %e, "swarm: kept blob not taken back")
            }
        }
    }
}

async fn run(
    inner: Arc<Inner>,
    control: Inbox<Bytes>,
    pieces: Inbox<Bytes>,
    mut events: broadcast::Receiver<NetworkEvent>,
) {
    let mut batch = Vec::with_capacity(64);
    let mut piece_batch = Vec::with_capacity(16);
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
            n = control.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                frames(&inner, &mut batch);
            }
            n = pieces.recv_many(&mut piece_batch, 16) => {
                if n == 0 {
                    break;
                }
                frames(&inner, &mut piece_batch);
            }
            event = events.recv() => match event {
                Ok(NetworkEvent::Connected { peer, .. }) => {
                    inner.with(|state, out| state.core.on_connected(peer, Instant::now(), out));
                }
                Ok(NetworkEvent::Disconnected { peer, .. }) => {
                    inner.with(|state, out| {
                        state.scores.forget(&peer);
                        state.core.on_disconnected(peer, Instant::now(), out);
                    });
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
    inner.stop.cancel();
    let mut state = inner.state.lock();
    for (_, waiters) in state.fetches.drain() {
        for waiter in waiters {
            let _ = waiter.send(Err(FetchError::Closed));
        }
    }
    // Pushes see their end when their sender drops.
    state.pushes.clear();
}

fn frames(inner: &Inner, batch: &mut Vec<(PeerId, Bytes)>) {
    let now = Instant::now();
    inner.with(|state, out| {
        for (peer, frame) in batch.drain(..) {
            match wire::decode(&frame) {
                Some((wire, data)) => state.core.on_wire(peer, wire, data, now, out),
                None => out.push(Output::Charge {
                    peer,
                    points: 1,
                    why: "undecodable swarm message",
                }),
            }
        }
    });
}

/// Events were lost: members that left are dropped, connected peers are (re)considered.
fn reconcile(inner: &Inner) {
    let connected = inner.face.connected();
    let now = Instant::now();
    inner.with(|state, out| {
        for peer in state.core.connected_peers() {
            if !connected.contains(&peer) {
                state.core.on_disconnected(peer, now, out);
            }
        }
        for peer in connected {
            state.core.on_connected(peer, now, out);
        }
    });
}

impl Swarm {
    fn inner(&self) -> &Inner {
        &self.alive.0
    }

    /// The piece size for a blob of `len` bytes: the configured size (1 MiB from 1 GiB up),
    /// never more than the pieces channel carries with a proof.
    fn piece_size(&self, len: u64) -> u32 {
        let inner = self.inner();
        let wanted = if len >= 1 << 30 {
            inner.config.piece_size.max(1 << 20)
        } else {
            inner.config.piece_size
        };
        // Never more than MAX_PIECES pieces (peers refuse such a description).
        let fewest =
            u32::try_from(len.div_ceil(u64::from(super::merkle::MAX_PIECES))).unwrap_or(u32::MAX);
        let wanted = wanted.max(fewest);
        let fits = inner
            .pieces
            .max_message_size()
            .saturating_sub(super::PIECE_OVERHEAD);
        let fits = u32::try_from(fits).unwrap_or(u32::MAX);
        wanted.min(fits).max(1024)
    }

    /// Holds `data` as a blob and returns its id (hashing it off the async threads). A blob
    /// being fetched is completed by it.
    ///
    /// # Errors
    /// [`AddError`]: over `max_blob_size`, `max_blobs` or `max_memory`, or the swarm stopped.
    pub async fn add(&self, data: impl Into<Bytes>) -> Result<BlobId, AddError> {
        let data: Bytes = data.into();
        let len = data.len() as u64;
        let max = self.inner().config.max_blob_size;
        if len > max {
            return Err(AddError::TooLarge { len, max });
        }
        let piece_size = self.piece_size(len);
        let hashed = data.clone();
        let tree =
            tokio::task::spawn_blocking(move || Tree::build(hashed.chunks(piece_size as usize)))
                .await
                .map_err(|_| AddError::Closed)?;
        let info = Info {
            len,
            piece_size,
            root: tree.root(),
        };
        let inner = self.inner();
        let id = info.id();
        let placed = match &inner.writer {
            Some(_) => inner.with(|state, _| state.core.reserve_added(len, Some(id)))?,
            None => Placed::Memory,
        };
        match placed {
            Placed::Held => return Ok(id),
            Placed::Memory => {
                return inner.with(|state, out| state.core.add(info, tree, data, out));
            }
            Placed::Disk => {}
        }
        // On disk: every piece is written before the blob is held, waiting for room in the
        // writer's queue rather than giving pieces up (nobody else may have them).
        let what = format!("a blob of {len} bytes");
        let n = info.pieces().unwrap_or(1);
        let added = self
            .write_to_disk(info, tree, &what, move |_, keep| {
                (0..n).try_for_each(|i| {
                    let start = i as usize * piece_size as usize;
                    keep(i, data.slice(start..start + info.piece_len(i)))
                })
            })
            .await;
        if added.is_err() {
            inner.with(|state, _| state.core.unreserve_file(len));
        }
        added
    }

    /// [`Swarm::add`] for a file's contents. A file that fits in `max_memory` is read whole;
    /// a larger one, with a data directory, is read twice a piece at a time (to hash it, then
    /// to copy it there, each piece checked against the first reading), with at most 16 MiB
    /// of it in memory, and then lives on disk like any blob past `max_memory`.
    ///
    /// # Errors
    /// [`AddError::File`] when it cannot be read or changes while it is being added,
    /// [`AddError::Store`] when the data directory refuses its pieces, else as
    /// [`Swarm::add`].
    pub async fn add_file(&self, path: impl AsRef<Path>) -> Result<BlobId, AddError> {
        let path = path.as_ref();
        let file_error = |e: &dyn std::fmt::Display| AddError::File {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| file_error(&e))?
            .len();
        let max = self.inner().config.max_blob_size;
        if len > max {
            return Err(AddError::TooLarge { len, max });
        }
        let inner = self.inner();
        // Read whole unless it would live on disk (a place is reserved once it is hashed).
        let streamed = inner.writer.is_some()
            && inner.with(|state, _| state.core.would_live_on_disk(len)) == Some(true);
        if !streamed {
            let data = tokio::fs::read(path).await.map_err(|e| file_error(&e))?;
            return self.add(data).await;
        }
        self.stream_file(path, len).await
    }

    /// `add_file` for a file that will live on disk: hashed, then (its place reserved)
    /// copied into the data directory a window at a time, then held.
    async fn stream_file(&self, path: &Path, len: u64) -> Result<BlobId, AddError> {
        use super::file;
        let what = path.display().to_string();
        let piece_size = self.piece_size(len);
        let owned = path.to_path_buf();
        let leaves = tokio::task::spawn_blocking(move || file::hash_file(&owned, len, piece_size))
            .await
            .map_err(|_| AddError::Closed)?
            .map_err(|e| file_error(&what, e))?;
        let tree = Tree::from_leaves(leaves);
        let info = Info {
            len,
            piece_size,
            root: tree.root(),
        };
        let inner = self.inner();
        let id = info.id();
        match inner.with(|state, _| state.core.reserve_added(len, Some(id)))? {
            Placed::Held => return Ok(id),
            // Memory was freed meanwhile.
            Placed::Memory => {
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| file_error(&what, FileError::Io(e)))?;
                return self.add(data).await;
            }
            Placed::Disk => {}
        }
        let owned = path.to_path_buf();
        let added = self
            .write_to_disk(info, tree, &what, move |tree, keep| {
                file::copy_pieces(&owned, len, piece_size, tree, keep)
            })
            .await;
        if added.is_err() {
            inner.with(|state, _| state.core.unreserve_file(len));
        }
        added
    }

    /// Writes a blob added here that lives on disk (its place reserved by
    /// `Core::reserve_added`) into the data directory, then holds it, complete. `feed` runs
    /// on the blocking pool and hands every piece to `keep`, in order; at most
    /// `file::WINDOW_BYTES` of them are between it and the disk. `what` names the blob in
    /// errors.
    async fn write_to_disk<F>(
        &self,
        info: Info,
        tree: Tree,
        what: &str,
        feed: F,
    ) -> Result<BlobId, AddError>
    where
        F: FnOnce(
                &Tree,
                &mut dyn FnMut(u32, Bytes) -> Result<(), FileError>,
            ) -> Result<(), FileError>
            + Send
            + 'static,
    {
        use super::file::{self, Window};
        let inner = self.inner();
        let Some(writer) = inner.writer.clone() else {
            return Err(AddError::Closed);
        };
        let id = info.id();
        let n = info.pieces().unwrap_or(1);
        let copier = writer.clone();
        let copied = tokio::task::spawn_blocking(move || {
            let window = Window::new(file::WINDOW_BYTES);
            let written = Arc::new(AtomicU64::new(0));
            let blob = PieceOp::Blob {
                id: id.0,
                info: info.to_bytes(),
            };
            if !copier.send_blocking(blob) {
                return (tree, Err(FileError::WriterGone));
            }
            let copied = feed(&tree, &mut |i, data| {
                let held = window.hold(data.len() as u64);
                let done = written.clone();
                let op = PieceOp::Piece {
                    id: id.0,
                    index: i,
                    proof: tree.proof(i),
                    data,
                    // Only a committed piece counts; one dropped unwritten gives its bytes
                    // back all the same.
                    done: Some(Box::new(move || {
                        done.fetch_add(1, Relaxed);
                        drop(held);
                    })),
                };
                if copier.send_blocking(op) {
                    Ok(())
                } else {
                    Err(FileError::WriterGone)
                }
            });
            window.drain();
            let all = written.load(Relaxed) == u64::from(n);
            let copied = copied.and_then(|()| all.then_some(()).ok_or(FileError::NotWritten));
            (tree, copied)
        })
        .await
        .map_err(|_| AddError::Closed)?;
        let (tree, copied) = copied;
        if let Err(e) = copied {
            // What was written goes, unless a fetch of the same blob started meanwhile (its
            // pieces share the rows).
            if !inner.with(|state, _| state.core.progress(&id).is_some()) {
                writer.forget(id.0);
            }
            return Err(file_error(what, e));
        }
        Ok(inner.with(|state, out| state.core.add_kept(info, tree, out)))
    }

    /// Spreads `blob`, held whole here, to `receivers`: each is offered it, this node deals
    /// each piece to one receiver (so it uploads about one copy) and the receivers fetch the
    /// rest from each other. Returns when every receiver holds it or has left (a receiver
    /// that never answers keeps it waiting: bound it with a timeout).
    ///
    /// # Errors
    /// [`PushError`]: not held whole here, already being pushed, or the swarm stopped.
    pub async fn push(&self, blob: &BlobId, receivers: &[PeerId]) -> Result<PushReport, PushError> {
        let (tx, rx) = oneshot::channel();
        self.inner().with(|state, out| {
            if let Some(earlier) = state.pushes.get(blob) {
                if !earlier.is_closed() {
                    return Err(PushError::AlreadyPushing(*blob));
                }
                // Its caller went away: that push ends here, without a report.
                state.pushes.remove(blob);
                state.core.end_push(blob);
            }
            state.pushes.insert(*blob, tx);
            let pushed = state.core.push(*blob, receivers, Instant::now(), out);
            if pushed.is_err() {
                state.pushes.remove(blob);
            }
            pushed
        })?;
        rx.await.map_err(|_| PushError::Closed)
    }

    /// Gets `blob` from whoever has it: the `hints` (asked now if connected, or when they
    /// connect), peers that push or announce it, and every member they bring. Each piece is
    /// checked against the id on arrival. Resumable: a fetch dropped midway leaves the pieces
    /// here, and the next fetch of the blob carries on; `remove` forgets them.
    ///
    /// # Errors
    /// [`FetchError`]: over a bound (known once a peer describes the blob), removed, or the
    /// swarm stopped.
    pub async fn fetch(&self, blob: &BlobId, hints: &[PeerId]) -> Result<Bytes, FetchError> {
        let (tx, rx) = oneshot::channel();
        self.inner().with(|state, out| {
            let here = state.core.fetch(*blob, hints, Instant::now(), out)?;
            // Here already: read from the data directory, or handed out from memory (assembled
            // off the lock if need be), as for waiters when a fetch completes. Either way the
            // answer comes through `rx`.
            if here && state.core.is_on_disk(blob) {
                self.inner()
                    .read_for(*blob, vec![tx], state.core.assembly(blob));
            } else if let Some(whole) = state.core.whole(blob) {
                self.inner().hand_out(*blob, whole, vec![tx]);
            } else {
                let waiters = state.fetches.entry(*blob).or_default();
                waiters.retain(|w| !w.is_closed());
                waiters.push(tx);
            }
            Ok::<_, FetchError>(())
        })?;
        rx.await.map_err(|_| FetchError::Closed)?
    }

    /// The whole blob, if every piece is here and it is held in memory (a blob that lives in
    /// the data directory, beyond `max_memory`, is read with [`Swarm::fetch`]).
    pub fn get(&self, blob: &BlobId) -> Option<Bytes> {
        // The copy is made here, outside the lock, so the swarm's task and other callers are
        // not held up by it.
        let whole = self.inner().state.lock().core.whole(blob)?;
        match whole {
            Whole::Made(data) => Some(data),
            Whole::Parts(parts) => {
                let data = assemble(&parts);
                Some(self.inner().state.lock().core.set_whole(blob, data))
            }
        }
    }

    /// Where `blob` stands here, if held or wanted.
    pub fn progress(&self, blob: &BlobId) -> Option<Progress> {
        self.inner().state.lock().core.progress(blob)
    }

    /// Every blob held or wanted, with its progress.
    pub fn blobs(&self) -> Vec<(BlobId, Progress)> {
        self.inner().state.lock().core.blobs()
    }

    /// Forgets `blob` (its pieces, its fetches, its push). Returns whether it was here.
    pub fn remove(&self, blob: &BlobId) -> bool {
        self.inner()
            .with(|state, out| state.core.remove(*blob, out))
    }

    /// Counters of the whole swarm here.
    pub fn stats(&self) -> SwarmStats {
        self.inner().state.lock().core.stats()
    }

    /// Swarm messages that could not be queued to a member (its queue was full).
    pub fn frames_dropped(&self) -> u64 {
        self.inner().frames_dropped.load(Relaxed)
    }

    /// Offers taken on and blobs completed, as they happen (a receiver that lags loses the
    /// oldest, as a `broadcast` receiver does).
    pub fn events(&self) -> broadcast::Receiver<SwarmEvent> {
        self.inner().events.subscribe()
    }
}

/// Flips the first byte of a piece (`SwarmConfig::corrupt_uploads`).
fn corrupt(piece: Bytes) -> Bytes {
    let mut bad = piece.to_vec();
    if let Some(first) = bad.first_mut() {
        *first ^= 0xff;
    }
    bad.into()
}

/// What `add` or `add_file` failed with, for `what` (a path, or a blob added from memory).
fn file_error(what: &str, e: FileError) -> AddError {
    match e {
        FileError::WriterGone | FileError::NotWritten => AddError::Store {
            path: what.to_string(),
            error: e.to_string(),
        },
        e => AddError::File {
            path: what.to_string(),
            error: e.to_string(),
        },
    }
}
