//! The data directory (`Config::data_dir`): what a node keeps across its own restart, in one
//! embedded database file (`peerwire.redb`, redb: transactions, crash-safe commits, and a lock
//! that keeps a second process out). Tables are byte keys to byte values; each user encodes its
//! own (signed peer records, addresses), and a value that no longer decodes is skipped by it, as
//! from a hostile source.
//!
//! Tables: `book` (peer exchange's records), `anchors` (the peers last reached by dialing,
//! newest first), `registry` (a member's last copy of its registry's list), `app` (the
//! application's own entries, [`DataStore`]).
//!
//! This is a thin adapter over the disk, like the driver over sockets: no policy lives here.

// redb's error type is large (160 bytes); its errors are rare (a failing disk) and never on
// the message path, so it is passed as it is rather than boxed at every `?`.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::identity::PeerId;

/// Every entry of a table, in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes to bytes.
type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

pub(crate) const BOOK: Table = TableDefinition::new("book");
pub(crate) const ANCHORS: Table = TableDefinition::new("anchors");
pub(crate) const REGISTRY: Table = TableDefinition::new("registry");
const APP: Table = TableDefinition::new("app");
/// A durable peer's stream incarnation: peer id → u64 (little-endian).
const STREAMS: Table = TableDefinition::new("streams");
/// Messages to durable peers not known to be acknowledged: peer ‖ channel index (u16 BE) ‖
/// sequence number (u64 BE) → the encoded message.
const OUTBOX: Table = TableDefinition::new("outbox");
/// Where each durable stream's unacknowledged messages start: peer ‖ channel index → u64 BE.
const ACKED: Table = TableDefinition::new("acked");

/// Blobs of the swarm: blob id → its description (length, piece size, root).
const SWARM_BLOBS: Table = TableDefinition::new("swarm_blobs");
/// Their verified pieces: blob id ‖ piece index (u32 BE) → proof length (u8) ‖ proof ‖ bytes.
const SWARM_PIECES: Table = TableDefinition::new("swarm_pieces");
/// Persistent peers added at runtime: peer id → `[durable: 0|1][address as text]`.
const PERSISTENT: Table = TableDefinition::new("persistent");
/// The database's page cache (redb's default is 1 GiB, which a node keeping large blobs on
/// disk would fill: memory the swarm's `max_memory` does not see). Written pieces are read
/// back from the kernel's page cache.
const CACHE_BYTES: usize = 32 << 20;
/// Swarm writes waiting for their thread, at most (beyond: the piece is held in memory only,
/// counted). The pieces queued are shared with memory, not copies.
const PIECE_QUEUE: usize = 4096;
/// Forgets waiting for room in a full queue, at most (one per blob removed meanwhile); past
/// it a Forget is counted in `not_kept` and the blob comes back at the next start.
const MAX_FORGETS_WAITING: usize = 65_536;
/// Bytes of pieces waiting for the swarm's writer, at most. A piece of a blob that lives on
/// disk stays in memory until written, outside `SwarmConfig::max_memory`: this bounds that
/// (beyond: refused like a full queue, counted, and the piece given up).
pub(crate) const PIECE_QUEUE_BYTES: u64 = 256 << 20;
/// Swarm writes committed in one transaction, at most (16 pieces of 256 KiB: 4 MiB, so a
/// crash loses little and a commit never holds the thread long).
const PIECE_BATCH: usize = 16;

/// Journal operations waiting for the writer thread, at most (beyond: `send` waits for room,
/// `try_send` writes nothing and the message is kept in memory only, counted).
const JOURNAL_QUEUE: usize = 8192;
/// Operations the writer thread commits in one transaction, at most.
const JOURNAL_BATCH: usize = 4096;

/// The file in the data directory.
const FILE: &str = "peerwire.redb";

/// Longest application key and value ([`DataStore`]).
pub const MAX_APP_KEY: usize = 1024;
/// Longest application value.
pub const MAX_APP_VALUE: usize = 1 << 20;
/// Application entries at most (beyond: `put` of a new key is refused).
pub const MAX_APP_ENTRIES: usize = 65_536;

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another node in this one) has the data directory open.
    #[error("{path} is in use by another peerwire process; give each node its own data directory")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The directory or its database could not be created, opened, read or written.
    #[error("data directory {path}: {reason}")]
    Io {
        /// The database file (or the directory).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An application entry over its bounds ([`MAX_APP_KEY`], [`MAX_APP_VALUE`],
    /// [`MAX_APP_ENTRIES`]).
    #[error("entry refused: {0}")]
    TooLarge(&'static str),
}

/// The open database of a data directory.
#[derive(Debug)]
pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the data directory and its database.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |path: &Path, e: &dyn std::fmt::Display| StoreError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        #[cfg(unix)]
        {
            // The book and lists say whom the node knows: the owner's only.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join(FILE);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::InUse { path: path.clone() }
                }
                other => io(&path, &other),
            })?;
        let store = Self { db, path };
        // Every table exists from the start, so reads never meet a missing one.
        store.write(|tx| {
            for table in [
                BOOK,
                ANCHORS,
                REGISTRY,
                APP,
                STREAMS,
                OUTBOX,
                ACKED,
                SWARM_BLOBS,
                SWARM_PIECES,
                PERSISTENT,
            ] {
                tx.open_table(table)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.error(e))?;
        f(&tx).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    /// Every entry of `table`, in key order.
    pub(crate) fn load(&self, table: Table) -> Result<Entries, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = tx.open_table(table).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            out.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Replaces every entry of `table` with `entries`, in one transaction (all or nothing).
    pub(crate) fn replace(
        &self,
        table: Table,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.delete_table(table)?;
            let mut open = tx.open_table(table)?;
            for (key, value) in entries {
                open.insert(key.as_slice(), value.as_slice())?;
            }
            Ok(())
        })
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut full = false;
        self.write(|tx| {
            let mut open = tx.open_table(table)?;
            let known = open.get(key)?.is_some();
            if !known && open.len()? >= MAX_APP_ENTRIES as u64 {
                full = true;
                return Ok(());
            }
            open.insert(key, value)?;
            Ok(())
        })?;
        if full {
            return Err(StoreError::TooLarge(
                "the table holds MAX_APP_ENTRIES already",
            ));
        }
        Ok(())
    }

    fn remove(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let mut removed = false;
        self.write(|tx| {
            let mut open = tx.open_table(table)?;
            removed = open.remove(key)?.is_some();
            Ok(())
        })?;
        Ok(removed)
    }
}

fn lane_key(peer: &PeerId, lane: usize) -> Vec<u8> {
    let mut key = peer.as_bytes().to_vec();
    key.extend_from_slice(&u16::try_from(lane).unwrap_or(u16::MAX).to_be_bytes());
    key
}

fn message_key(peer: &PeerId, lane: usize, seq: u64) -> Vec<u8> {
    let mut key = lane_key(peer, lane);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// Keeps `peer` as a persistent peer added at runtime (replacing what was kept for it).
    pub(crate) fn put_persistent(
        &self,
        peer: &PeerId,
        addr: std::net::SocketAddr,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut value = vec![u8::from(durable)];
        value.extend_from_slice(addr.to_string().as_bytes());
        self.write(|tx| {
            tx.open_table(PERSISTENT)?
                .insert(peer.as_bytes().as_slice(), value.as_slice())?;
            Ok(())
        })
    }

    /// Forgets a persistent peer added at runtime; returns whether one was kept.
    pub(crate) fn remove_persistent(&self, peer: &PeerId) -> Result<bool, StoreError> {
        self.remove(PERSISTENT, peer.as_bytes())
    }

    /// The persistent peers added at runtime, as `(id, address, durable)`. A row that does not
    /// read back (a damaged file) is skipped with a warning rather than stopping the node.
    pub(crate) fn load_persistent(
        &self,
    ) -> Result<Vec<(PeerId, std::net::SocketAddr, bool)>, StoreError> {
        let mut peers = Vec::new();
        for (key, value) in self.load(PERSISTENT)? {
            let id = <[u8; 32]>::try_from(key.as_slice())
                .ok()
                .map(PeerId::from_bytes);
            let durable = match value.first() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            };
            let addr = value
                .get(1..)
                .and_then(|text| std::str::from_utf8(text).ok())
                .and_then(|text| text.parse().ok());
            match (id, addr, durable) {
                (Some(id), Some(addr), Some(durable)) => peers.push((id, addr, durable)),
                _ => tracing::warn!(
                    path = %self.path.display(),
                    "a kept persistent peer does not read back; skipped (add it again)"
                ),
            }
        }
        Ok(peers)
    }
}

/// A durable peer's streams as read back: the incarnation, and per channel index where the
/// unacknowledged messages start and the messages themselves, in order.
#[derive(Debug, Default)]
pub(crate) struct KeptStream {
    pub(crate) incarnation: Option<u64>,
    pub(crate) lanes: Vec<(u64, Vec<bytes::Bytes>)>,
}

impl Store {
    /// Reads back a durable peer's streams (`lanes` channels). Messages from the first gap on
    /// (a write that never committed) are not taken: the stream resumes before them.
    pub(crate) fn load_stream(
        &self,
        peer: &PeerId,
        lanes: usize,
    ) -> Result<KeptStream, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let streams = tx.open_table(STREAMS).map_err(|e| self.error(e))?;
        let incarnation = streams
            .get(peer.as_bytes().as_slice())
            .map_err(|e| self.error(e))?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map(u64::from_le_bytes);
        let acked = tx.open_table(ACKED).map_err(|e| self.error(e))?;
        let outbox = tx.open_table(OUTBOX).map_err(|e| self.error(e))?;
        let mut kept = KeptStream {
            incarnation,
            lanes: Vec::with_capacity(lanes),
        };
        for lane in 0..lanes {
            let prefix = lane_key(peer, lane);
            let base = acked
                .get(prefix.as_slice())
                .map_err(|e| self.error(e))?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map_or(0, u64::from_be_bytes);
            let start = message_key(peer, lane, base);
            let end = message_key(peer, lane, u64::MAX);
            let mut messages = Vec::new();
            let entries = outbox
                .range(start.as_slice()..=end.as_slice())
                .map_err(|e| self.error(e))?;
            for (next, entry) in (base..).zip(entries) {
                let (key, value) = entry.map_err(|e| self.error(e))?;
                let seq = key
                    .value()
                    .get(prefix.len()..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                if seq != Some(next) {
                    break;
                }
                messages.push(bytes::Bytes::copy_from_slice(value.value()));
            }
            kept.lanes.push((base, messages));
        }
        Ok(kept)
    }

    /// Records a durable peer's stream incarnation (once, when it is new).
    pub(crate) fn set_incarnation(
        &self,
        peer: &PeerId,
        incarnation: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut streams = tx.open_table(STREAMS)?;
            streams.insert(
                peer.as_bytes().as_slice(),
                incarnation.to_le_bytes().as_slice(),
            )?;
            Ok(())
        })
    }
}

/// Whoever must hear that a durable message is on disk (a durable peer's streams, which hold
/// each message back until then).
pub(crate) trait Committed: Send + Sync {
    /// Message `seq` on `lane`, and every one before it, is on disk.
    fn committed(&self, lane: usize, seq: u64);
}

/// A message committed to the data directory (or the reason it could not be).
pub(crate) type Commit = tokio::sync::oneshot::Receiver<Result<(), String>>;

enum JournalOp {
    Append {
        key: Vec<u8>,
        message: bytes::Bytes,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
        /// Told once the message is on disk: the streams it belongs to, its lane and number.
        streams: (std::sync::Weak<dyn Committed>, usize, u64),
    },
    Acked {
        peer: PeerId,
        lane: usize,
        next: u64,
    },
    /// The peer is no longer durable: every row of its streams goes.
    Forget { peer: PeerId },
}

/// Writes durable peers' messages and acknowledgements on a thread of its own, many to a
/// transaction (group commit): a waiting `send` costs one commit shared with every other send
/// and acknowledgement that arrived meanwhile, and never blocks a tokio worker on the disk.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    ops: tokio::sync::mpsc::Sender<JournalOp>,
    /// Appends not written because the queue was full (`try_send`): kept in memory only.
    pub(crate) dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for JournalOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalOp")
    }
}

impl Journal {
    /// Starts the writer thread; it ends when the last `Journal` clone is dropped.
    pub(crate) fn start(store: Arc<Store>) -> Result<Self, StoreError> {
        let (ops, rx) = tokio::sync::mpsc::channel(JOURNAL_QUEUE);
        std::thread::Builder::new()
            .name("peerwire-journal".into())
            .spawn(move || journal_thread(&store, rx))
            .map_err(|e| StoreError::Io {
                path: PathBuf::from("(journal thread)"),
                reason: e.to_string(),
            })?;
        Ok(Self {
            ops,
            dropped: Arc::default(),
        })
    }

    /// Queues message `seq` of `peer`'s stream on `lane`; the returned receiver answers once
    /// it is committed. `None` (and counted) when the queue is full: the caller does not wait.
    pub(crate) fn append(
        &self,
        peer: &PeerId,
        lane: usize,
        seq: u64,
        message: bytes::Bytes,
        streams: std::sync::Weak<dyn Committed>,
    ) -> Option<Commit> {
        let (done, commit) = tokio::sync::oneshot::channel();
        let op = JournalOp::Append {
            key: message_key(peer, lane, seq),
            message,
            done: Some(done),
            streams: (streams, lane, seq),
        };
        match self.ops.try_send(op) {
            Ok(()) => Some(commit),
            Err(_) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    }

    /// The peer acknowledged everything before `next` on `lane`: those are deleted at the next
    /// commit. A full queue skips it (a later acknowledgement covers it; at worst messages are
    /// resent after a crash and the receiver skips them as duplicates).
    pub(crate) fn acked(&self, peer: &PeerId, lane: usize, next: u64) {
        let _ = self.ops.try_send(JournalOp::Acked {
            peer: *peer,
            lane,
            next,
        });
    }

    /// Deletes every row of `peer`'s streams, after the writes queued before it. Waits for
    /// room in the queue rather than skip it: a row left behind would be resent if the peer
    /// became durable again.
    pub(crate) async fn forget(&self, peer: &PeerId) {
        let _ = self.ops.send(JournalOp::Forget { peer: *peer }).await;
    }
}

/// Waits for one operation, then takes what else is queued, up to `max`, so that everything
/// that arrived meanwhile shares one commit. False once the queue is closed and empty.
fn gather<T>(rx: &mut tokio::sync::mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    let Some(first) = rx.blocking_recv() else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    true
}

fn journal_thread(store: &Store, mut rx: tokio::sync::mpsc::Receiver<JournalOp>) {
    let mut batch = Vec::with_capacity(JOURNAL_BATCH);
    while gather(&mut rx, &mut batch, JOURNAL_BATCH) {
        let mut done = Vec::new();
        let mut written = Vec::new();
        let mut acks: std::collections::BTreeMap<(PeerId, usize), u64> = Default::default();
        let result = store.write(|tx| {
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut acked = tx.open_table(ACKED)?;
            for op in batch.drain(..) {
                match op {
                    JournalOp::Append {
                        key,
                        message,
                        done: reply,
                        streams,
                    } => {
                        outbox.insert(key.as_slice(), message.as_ref())?;
                        done.extend(reply);
                        written.push(streams);
                    }
                    JournalOp::Acked { peer, lane, next } => {
                        let at = acks.entry((peer, lane)).or_default();
                        *at = (*at).max(next);
                    }
                    JournalOp::Forget { peer } => {
                        // Keys are the peer's id then the lane (then the number): one range
                        // covers every lane of it in both tables.
                        let start = peer.as_bytes().to_vec();
                        let mut end = start.clone();
                        end.extend_from_slice(&[0xff; 16]);
                        for table in [&mut outbox, &mut acked] {
                            let gone: Vec<Vec<u8>> = table
                                .range(start.as_slice()..=end.as_slice())?
                                .filter_map(|e| e.ok().map(|(k, _)| k.value().to_vec()))
                                .collect();
                            for key in gone {
                                table.remove(key.as_slice())?;
                            }
                        }
                        acks.retain(|(p, _), _| *p != peer);
                        tx.open_table(STREAMS)?.remove(peer.as_bytes().as_slice())?;
                    }
                }
            }
            for ((peer, lane), next) in &acks {
                // Everything before `next`, stale appends that committed after their
                // acknowledgement included.
                let start = message_key(peer, *lane, 0);
                let end = message_key(peer, *lane, *next);
                let gone: Vec<Vec<u8>> = outbox
                    .range(start.as_slice()..end.as_slice())?
                    .filter_map(|e| e.ok().map(|(k, _)| k.value().to_vec()))
                    .collect();
                for key in gone {
                    outbox.remove(key.as_slice())?;
                }
                acked.insert(
                    lane_key(peer, *lane).as_slice(),
                    next.to_be_bytes().as_slice(),
                )?;
            }
            Ok(())
        });
        let answer = result.map_err(|e| e.to_string());
        match &answer {
            // On disk: now they may be sent (in order: each lane's appends came in sequence).
            Ok(()) => {
                for (streams, lane, seq) in written.drain(..) {
                    if let Some(streams) = streams.upgrade() {
                        streams.committed(lane, seq);
                    }
                }
            }
            // Not on disk: they are never sent by this process (a restart resends what did
            // commit); the senders are told.
            Err(e) => {
                tracing::warn!(error = %e, "durable peers: cannot write to the data directory");
                written.clear();
            }
        }
        for reply in done {
            let _ = reply.send(answer.clone());
        }
    }
}

/// A kept piece as read back: its index, proof, bytes (when asked for) and length, each still
/// to be checked by the reader.
pub(crate) type KeptPiece = (u32, Vec<[u8; 32]>, Option<bytes::Bytes>, usize);

/// A kept blob's id and description as read back.
pub(crate) type KeptInfo = ([u8; 32], Vec<u8>);

impl Store {
    /// Every kept blob: its id and description (still to be checked by the reader).
    pub(crate) fn load_blob_infos(&self) -> Result<Vec<KeptInfo>, StoreError> {
        Ok(self
            .load(SWARM_BLOBS)?
            .into_iter()
            .filter_map(|(key, info)| Some((key.try_into().ok()?, info)))
            .collect())
    }

    /// The kept pieces of blob `id`, in order. With `with_data` false only their proofs and
    /// lengths are kept in memory (the pages are read, the bytes not copied): a blob that will
    /// live on disk is not loaded whole to be taken back. A record that does not parse is
    /// skipped.
    pub(crate) fn load_pieces(
        &self,
        id: &[u8; 32],
        with_data: bool,
    ) -> Result<Vec<KeptPiece>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = tx.open_table(SWARM_PIECES).map_err(|e| self.error(e))?;
        let (start, end) = (piece_key(id, 0), piece_key(id, u32::MAX));
        let mut out = Vec::new();
        for entry in table
            .range(start.as_slice()..=end.as_slice())
            .map_err(|e| self.error(e))?
        {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let Some(index) = key.value().get(32..36) else {
                continue;
            };
            let index = u32::from_be_bytes(index.try_into().unwrap_or_default());
            let value = value.value();
            let Some((&count, rest)) = value.split_first() else {
                continue;
            };
            let hashes = usize::from(count) * 32;
            let Some(data) = rest.get(hashes..) else {
                continue;
            };
            let proof = rest[..hashes]
                .chunks_exact(32)
                .filter_map(|h| h.try_into().ok())
                .collect();
            let bytes = with_data.then(|| bytes::Bytes::copy_from_slice(data));
            out.push((index, proof, bytes, data.len()));
        }
        Ok(out)
    }
}

impl std::fmt::Debug for PieceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PieceOp")
    }
}

impl Store {
    /// The bytes of one kept piece, if kept.
    pub(crate) fn read_piece(
        &self,
        id: &[u8; 32],
        index: u32,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = tx.open_table(SWARM_PIECES).map_err(|e| self.error(e))?;
        let Some(value) = table
            .get(piece_key(id, index).as_slice())
            .map_err(|e| self.error(e))?
        else {
            return Ok(None);
        };
        let value = value.value();
        let Some((&count, rest)) = value.split_first() else {
            return Ok(None);
        };
        Ok(rest
            .get(usize::from(count) * 32..)
            .map(bytes::Bytes::copy_from_slice))
    }
}

/// What the swarm asks its writer thread to keep or forget.
pub(crate) enum PieceOp {
    Blob {
        id: [u8; 32],
        info: Vec<u8>,
    },
    Piece {
        id: [u8; 32],
        index: u32,
        proof: Vec<[u8; 32]>,
        data: bytes::Bytes,
        /// Called once the piece is committed.
        done: Option<Box<dyn FnOnce() + Send>>,
    },
    Forget {
        id: [u8; 32],
    },
}

/// Writes the swarm's blobs and pieces on a thread of its own, many to a transaction, so a
/// piece never waits for the disk on a tokio worker. Losing the queue (a crash) loses only
/// pieces that are fetched again.
#[derive(Debug, Clone)]
pub(crate) struct PieceWriter {
    ops: tokio::sync::mpsc::Sender<PieceOp>,
    /// Operations not written because the queue was full.
    pub(crate) not_kept: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of the pieces queued now, given back by the thread once it has written them.
    queued_bytes: Arc<std::sync::atomic::AtomicU64>,
    max_bytes: u64,
    /// Forgets that found the queue full, in order, waiting for room (at most
    /// `MAX_FORGETS_WAITING`). While any waits, nothing else is queued: a blob kept again
    /// after it was forgotten must not be overtaken by its own Forget.
    forgets: Arc<parking_lot::Mutex<std::collections::VecDeque<PieceOp>>>,
}

impl PieceWriter {
    /// Starts the writer thread; it ends when the last `PieceWriter` clone is dropped.
    pub(crate) fn start(store: Arc<Store>) -> Result<Self, StoreError> {
        Self::start_bounded(store, PIECE_QUEUE_BYTES)
    }

    /// [`PieceWriter::start`] with `max_bytes` of pieces queued at most.
    fn start_bounded(store: Arc<Store>, max_bytes: u64) -> Result<Self, StoreError> {
        let (ops, rx) = tokio::sync::mpsc::channel(PIECE_QUEUE);
        let queued_bytes = Arc::<std::sync::atomic::AtomicU64>::default();
        let given_back = queued_bytes.clone();
        std::thread::Builder::new()
            .name("peerwire-pieces".into())
            .spawn(move || piece_thread(&store, rx, &given_back))
            .map_err(|e| StoreError::Io {
                path: PathBuf::from("(swarm writer thread)"),
                reason: e.to_string(),
            })?;
        Ok(Self {
            ops,
            not_kept: Arc::default(),
            queued_bytes,
            max_bytes,
            forgets: Arc::default(),
        })
    }

    /// Queues `op` without waiting; false (and counted) when the queue is full, by count or
    /// by the bytes of its pieces.
    pub(crate) fn send(&self, op: PieceOp) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.forgets.lock().is_empty() {
            // Full, in effect: a Forget waits for room ahead of it.
            self.not_kept.fetch_add(1, Relaxed);
            return false;
        }
        let bytes = op.piece_bytes();
        let room = self
            .queued_bytes
            .fetch_update(Relaxed, Relaxed, |queued| {
                queued
                    .checked_add(bytes)
                    .filter(|total| *total <= self.max_bytes)
            })
            .is_ok();
        let queued = room && self.ops.try_send(op).is_ok();
        if room && !queued {
            self.queued_bytes.fetch_sub(bytes, Relaxed);
        }
        if !queued {
            self.not_kept.fetch_add(1, Relaxed);
        }
        queued
    }

    /// Queues `op` from a thread outside the runtime (an `add_file` writing a file's pieces),
    /// waiting while the queue is full by count; false once the writer is gone. Its bytes
    /// are counted with the queue's but not refused past `max_bytes`: the caller bounds what
    /// it has in flight itself (`swarm::file::Window`).
    pub(crate) fn send_blocking(&self, op: PieceOp) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Behind the Forgets waiting for room (checked, not held: a Forget that starts
        // waiting after this check is for a blob other than the one being added, unless it
        // was removed meanwhile, which `add_kept` does not bring back).
        while !self.forgets.lock().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let bytes = op.piece_bytes();
        self.queued_bytes.fetch_add(bytes, Relaxed);
        let sent = self.ops.blocking_send(op).is_ok();
        if !sent {
            self.queued_bytes.fetch_sub(bytes, Relaxed);
        }
        sent
    }

    /// Queues forgetting blob `id`. Not dropped: a full queue is waited on by a task of its
    /// own (a Forget left out would bring the blob back at the next start), up to
    /// `MAX_FORGETS_WAITING`, and nothing queued after it overtakes it. Must be called
    /// within a tokio runtime.
    pub(crate) fn forget(&self, id: [u8; 32]) {
        let op = PieceOp::Forget { id };
        let mut forgets = self.forgets.lock();
        if !forgets.is_empty() {
            // The task below is running and takes it in turn.
            if forgets.len() >= MAX_FORGETS_WAITING {
                self.not_kept
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "swarm: {MAX_FORGETS_WAITING} removed blobs wait to be forgotten on disk; one more comes back at the next start (is the data directory's disk stuck?)"
                );
                return;
            }
            forgets.push_back(op);
            return;
        }
        // Queued, or the writer is gone.
        let Err(tokio::sync::mpsc::error::TrySendError::Full(op)) = self.ops.try_send(op) else {
            return;
        };
        forgets.push_back(op);
        // One task queues the waiting Forgets, in order, each as room appears, and ends
        // once none is left (decided under the lock that `forget` pushes under).
        let ops = self.ops.clone();
        let waiting = self.forgets.clone();
        tokio::spawn(async move {
            loop {
                let Ok(room) = ops.reserve().await else {
                    waiting.lock().clear();
                    return;
                };
                let mut waiting = waiting.lock();
                if let Some(op) = waiting.pop_front() {
                    room.send(op);
                }
                if waiting.is_empty() {
                    return;
                }
            }
        });
    }

    /// Bytes of the pieces queued and not yet written.
    #[cfg(test)]
    fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl PieceOp {
    /// The bytes of a piece this operation holds in memory until it is written.
    fn piece_bytes(&self) -> u64 {
        match self {
            Self::Piece { data, .. } => data.len() as u64,
            Self::Blob { .. } | Self::Forget { .. } => 0,
        }
    }
}

fn piece_key(id: &[u8; 32], index: u32) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..32].copy_from_slice(id);
    key[32..].copy_from_slice(&index.to_be_bytes());
    key
}

fn piece_thread(
    store: &Store,
    mut rx: tokio::sync::mpsc::Receiver<PieceOp>,
    queued_bytes: &std::sync::atomic::AtomicU64,
) {
    let mut batch = Vec::with_capacity(PIECE_BATCH);
    let mut committed: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    while gather(&mut rx, &mut batch, PIECE_BATCH) {
        let written: u64 = batch.iter().map(PieceOp::piece_bytes).sum();
        let result = store.write(|tx| {
            let mut blobs = tx.open_table(SWARM_BLOBS)?;
            let mut pieces = tx.open_table(SWARM_PIECES)?;
            for op in batch.drain(..) {
                match op {
                    PieceOp::Blob { id, info } => {
                        blobs.insert(id.as_slice(), info.as_slice())?;
                    }
                    PieceOp::Piece {
                        id,
                        index,
                        proof,
                        data,
                        done,
                    } => {
                        committed.extend(done);
                        let mut value = Vec::with_capacity(1 + proof.len() * 32 + data.len());
                        value.push(u8::try_from(proof.len()).unwrap_or(u8::MAX));
                        for hash in &proof {
                            value.extend_from_slice(hash);
                        }
                        value.extend_from_slice(&data);
                        pieces.insert(piece_key(&id, index).as_slice(), value.as_slice())?;
                    }
                    PieceOp::Forget { id } => {
                        blobs.remove(id.as_slice())?;
                        let (start, end) = (piece_key(&id, 0), piece_key(&id, u32::MAX));
                        let gone: Vec<Vec<u8>> = pieces
                            .range(start.as_slice()..=end.as_slice())?
                            .filter_map(|e| e.ok().map(|(k, _)| k.value().to_vec()))
                            .collect();
                        for key in gone {
                            pieces.remove(key.as_slice())?;
                        }
                    }
                }
            }
            Ok(())
        });
        // Out of the queue, written or not (a failed write leaves the pieces with the blob).
        queued_bytes.fetch_sub(written, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => committed.drain(..).for_each(|done| done()),
            Err(e) => {
                // Not written: the memory copies stay.
                committed.clear();
                tracing::warn!(error = %e, "swarm: cannot write to the data directory; pieces held in memory only");
            }
        }
    }
}

/// The application's own entries in the node's data directory: small durable settings that
/// belong with the node (for example which peers it replicates to). From
/// [`crate::Network::data`]. Every write is committed before it returns.
#[derive(Debug, Clone)]
pub struct DataStore {
    store: std::sync::Arc<Store>,
}

impl DataStore {
    pub(crate) fn new(store: std::sync::Arc<Store>) -> Self {
        Self { store }
    }

    /// Stores `value` under `key` (replacing it), durably.
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] past the bounds; [`StoreError::Io`] if the disk refused.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_APP_KEY {
            return Err(StoreError::TooLarge("key longer than MAX_APP_KEY"));
        }
        if value.len() > MAX_APP_VALUE {
            return Err(StoreError::TooLarge("value longer than MAX_APP_VALUE"));
        }
        self.store.put(APP, key, value)
    }

    /// Removes `key`; returns whether it was there.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.store.remove(APP, key)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn entries(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut all = self.store.load(APP)?;
        all.retain(|(k, _)| k.starts_with(prefix));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peerwire-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn entries_survive_reopening_and_replace_is_whole() {
        let dir = dir("reopen");
        {
            let store = Store::open(&dir).unwrap();
            let entries = vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
            ];
            store.replace(BOOK, &entries).unwrap();
            store.replace(BOOK, &entries[1..]).unwrap();
            let app = DataStore::new(std::sync::Arc::new(store));
            app.put(b"replica/x", b"").unwrap();
            app.put(b"other", b"v").unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.load(BOOK).unwrap(), [(b"b".to_vec(), b"2".to_vec())]);
        assert!(store.load(ANCHORS).unwrap().is_empty());
        let app = DataStore::new(std::sync::Arc::new(store));
        assert_eq!(
            app.entries(b"replica/").unwrap(),
            [(b"replica/x".to_vec(), Vec::new())]
        );
        assert!(app.remove(b"other").unwrap());
        assert!(!app.remove(b"other").unwrap());
        assert!(matches!(
            app.put(&[0; MAX_APP_KEY + 1], b""),
            Err(StoreError::TooLarge(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kept_pieces_come_back_until_their_blob_is_forgotten() {
        let dir = dir("pieces");
        {
            let store = Arc::new(Store::open(&dir).unwrap());
            let writer = PieceWriter::start(store.clone()).unwrap();
            assert!(writer.send(PieceOp::Blob {
                id: [1; 32],
                info: vec![9; 44]
            }));
            assert!(writer.send(PieceOp::Blob {
                id: [2; 32],
                info: vec![8; 44]
            }));
            for (id, index) in [([1; 32], 0), ([1; 32], 7), ([2; 32], 3)] {
                let piece = PieceOp::Piece {
                    id,
                    index,
                    proof: vec![[index as u8; 32]],
                    data: bytes::Bytes::from(vec![index as u8; 10]),
                    done: None,
                };
                assert!(writer.send(piece));
            }
            assert!(writer.send(PieceOp::Forget { id: [2; 32] }));
            drop(writer);
            // The thread ends once it has written everything queued; a load waits for no
            // commit, so poll until the last one is visible.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while store.load(SWARM_BLOBS).unwrap().len() != 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer never caught up"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // The writer thread lets go of the database once it has seen the queue close.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(&dir) {
                Ok(store) => break store,
                Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(store.load_blob_infos().unwrap(), [([1; 32], vec![9; 44])]);
        let pieces = store.load_pieces(&[1; 32], true).unwrap();
        let summary: Vec<(u32, usize, Option<usize>, usize)> = pieces
            .iter()
            .map(|(i, proof, data, len)| (*i, proof.len(), data.as_ref().map(|d| d.len()), *len))
            .collect();
        assert_eq!(summary, [(0, 1, Some(10), 10), (7, 1, Some(10), 10)]);
        assert_eq!(pieces[1].1[0], [7; 32]);
        // Without the bytes: proofs and lengths only.
        let listed = store.load_pieces(&[1; 32], false).unwrap();
        assert!(
            listed
                .iter()
                .all(|(_, _, data, len)| data.is_none() && *len == 10)
        );
        assert_eq!(listed.len(), 2);
        assert!(store.load_pieces(&[2; 32], true).unwrap().is_empty());
        assert_eq!(
            store.read_piece(&[1; 32], 7).unwrap(),
            Some(vec![7u8; 10].into())
        );
        assert_eq!(store.read_piece(&[1; 32], 1).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_piece_writer_bounds_the_bytes_it_holds_and_gives_them_back_once_written() {
        let dir = dir("pieces-bound");
        let store = Arc::new(Store::open(&dir).unwrap());
        let writer = PieceWriter::start_bounded(store.clone(), 1000).unwrap();
        let piece =
            |index: u32, len: usize, done: Option<Box<dyn FnOnce() + Send>>| PieceOp::Piece {
                id: [1; 32],
                index,
                proof: vec![],
                data: bytes::Bytes::from(vec![1; len]),
                done,
            };
        assert!(!writer.send(piece(0, 1001, None)), "over the bound alone");
        // The thread waits for the database while a write transaction is open here: what is
        // queued meanwhile stays counted.
        let hold = store.db.begin_write().unwrap();
        let (tx, written) = std::sync::mpsc::channel();
        assert!(writer.send(piece(
            1,
            600,
            Some(Box::new(move || {
                let _ = tx.send(());
            }))
        )));
        assert_eq!(writer.queued_bytes(), 600);
        assert!(!writer.send(piece(2, 600, None)), "600 + 600 > 1000");
        assert!(
            writer.send(PieceOp::Forget { id: [2; 32] }),
            "no bytes held"
        );
        assert_eq!(
            writer.not_kept.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        drop(hold);
        written
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(writer.queued_bytes(), 0, "given back once written");
        assert!(writer.send(piece(2, 600, None)));
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn blob_op(id: u8) -> PieceOp {
        PieceOp::Blob {
            id: [id; 32],
            info: vec![id; 44],
        }
    }

    /// A writer that has queued blob 7, then as many of blob 1 as fit while its thread is
    /// blocked on the database (until the transaction returned is dropped).
    fn writer_full_behind_blob_7(dir: &Path) -> (Arc<Store>, PieceWriter, redb::WriteTransaction) {
        let store = Arc::new(Store::open(dir).unwrap());
        let writer = PieceWriter::start(store.clone()).unwrap();
        assert!(writer.send(blob_op(7)));
        let hold = store.db.begin_write().unwrap();
        let mut queued = 0;
        while writer.send(blob_op(1)) {
            queued += 1;
            assert!(queued <= 2 * PIECE_QUEUE, "the queue never filled");
        }
        (store, writer, hold)
    }

    #[tokio::test]
    async fn forgetting_a_blob_waits_for_room_instead_of_being_dropped() {
        let dir = dir("pieces-forget");
        let (store, writer, hold) = writer_full_behind_blob_7(&dir);
        writer.forget([7; 32]);
        drop(hold);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let blobs = store.load(SWARM_BLOBS).unwrap();
            if blobs.len() == 1 && blobs[0].0 == [1; 32] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "blob 7 still kept: {} blobs",
                blobs.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_blob_kept_again_after_it_was_forgotten_is_not_overtaken_by_its_forget() {
        let dir = dir("pieces-forget-order");
        let (store, writer, hold) = writer_full_behind_blob_7(&dir);
        let info = blob_op;
        // Blob 7 removed (its Forget waits for room), then kept again once the queue has
        // room, before the waiting Forget's task has had a turn (this runtime has one thread
        // and it is not yielded to).
        writer.forget([7; 32]);
        drop(hold);
        std::thread::sleep(std::time::Duration::from_millis(500));
        while !writer.send(info(7)) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // A marker after it: once the marker is kept, everything before it was applied.
        while !writer.send(info(9)) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let blobs = loop {
            let blobs = store.load(SWARM_BLOBS).unwrap();
            if blobs.iter().any(|(id, _)| *id == [9; 32]) {
                break blobs;
            }
            assert!(std::time::Instant::now() < deadline, "marker never kept");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert!(
            blobs.iter().any(|(id, _)| *id == [7; 32]),
            "blob 7, kept after it was forgotten, is gone"
        );
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_opener_is_told_the_directory_is_in_use() {
        let dir = dir("in-use");
        let _first = Store::open(&dir).unwrap();
        let second = Store::open(&dir);
        assert!(
            matches!(second, Err(StoreError::InUse { .. })),
            "{second:?}"
        );
        let text = second.unwrap_err().to_string();
        assert!(text.contains("its own data directory"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
