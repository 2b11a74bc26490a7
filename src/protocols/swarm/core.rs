//! The swarm's state machine: which blobs this node holds or wants, who holds which pieces,
//! which pieces are asked of whom, and the dealing of a push. Pure: it takes messages, events
//! and `now`, and returns messages to send and decisions (`Output`); unit-tested with a
//! hand-moved clock in `core_tests.rs`.
//!
//! Selection: a piece is asked of one member at a time, rarest first among the members that
//! announced it (ties broken by a per-node shuffle, so receivers start on different pieces),
//! with at most `pipeline` requests in flight per member. When no more than `endgame` pieces
//! are missing, a piece already asked for may be asked of a second member too.
//!
//! Push: the offer lists the receivers; piece i is receiver i mod N's share. A receiver asks
//! the pushing node (the origin) only for its own share, and for any other piece only when its
//! owner cannot give it (not connected, gone, or caught sending a bad piece), in the endgame,
//! or after `timeout_min` without progress. So the origin uploads each piece about once and
//! the receivers carry the other copies, while no fault leaves a piece out of reach.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::merkle::{self, BlobId, Hash, Info, Tree};
use super::wire::{MAX_OFFER_MEMBERS, Wire};
use crate::identity::{PeerId, PeerMap};

/// The core's bounds (from `SwarmConfig`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_blob_size: u64,
    pub(crate) max_blobs: usize,
    pub(crate) max_memory: u64,
    /// Bytes of blobs held on disk only (0: no data directory, nothing goes there).
    pub(crate) max_disk: u64,
    pub(crate) pipeline: usize,
    pub(crate) upload_slots: usize,
    pub(crate) busy_retry: Duration,
    pub(crate) endgame: u32,
    pub(crate) max_members: usize,
    pub(crate) timeout_min: Duration,
    pub(crate) timeout_per_mib: Duration,
    pub(crate) accept_offers: bool,
    pub(crate) seed: u64,
}

/// What the core asks its driver to do.
#[derive(Debug)]
pub(crate) enum Output {
    Send {
        peer: PeerId,
        wire: Wire,
        data: Option<Bytes>,
    },
    Charge {
        peer: PeerId,
        points: u32,
        why: &'static str,
    },
    /// A peer pushed a blob and this node took it on.
    Offered {
        blob: BlobId,
        from: PeerId,
        len: u64,
    },
    /// Every piece of `blob` is here and verified.
    Complete { blob: BlobId },
    /// The blob will not be had: removed, or over a bound once its length was known.
    Failed { blob: BlobId, why: FetchError },
    /// A push ended: every receiver holds the blob or left.
    Pushed { blob: BlobId, report: PushReport },
    /// Keep the blob's description on disk (with a data directory).
    Keep { blob: BlobId, info: Info },
    /// Keep a verified piece on disk.
    KeepPiece {
        blob: BlobId,
        index: u32,
        proof: Vec<Hash>,
        data: Bytes,
        /// The blob lives on disk: once written, call `stored` with this incarnation of it to
        /// drop the memory copy.
        release: Option<u64>,
    },
    /// Send piece `index` of `blob` to `peer`, read from disk (the blob lives there), after
    /// checking it against `info` like a piece from a peer.
    SendFromDisk {
        peer: PeerId,
        blob: BlobId,
        index: u32,
        proof: Vec<Hash>,
        info: Info,
    },
    /// Forget the blob on disk.
    Forget { blob: BlobId },
}

/// Offers from one peer that may be incomplete here at once (beyond: declined).
const MAX_OFFERS_PER_PEER: usize = 4;

/// A blob taken on from an offer that gets no new piece for this long, and that the
/// application does not fetch, is dropped: offers whose pieces never come cannot hold the
/// blob slots for good.
pub(crate) const OFFER_IDLE: Duration = Duration::from_secs(60);

/// A complete blob in memory, as [`Core::whole`] finds it.
#[derive(Debug)]
pub(crate) enum Whole {
    /// Its buffer, made already.
    Made(Bytes),
    /// Its pieces in order, to [`assemble`].
    Parts(Vec<Bytes>),
}

/// One buffer from a blob's pieces (a copy of every byte: done outside the swarm's lock).
pub(crate) fn assemble(parts: &[Bytes]) -> Bytes {
    let mut whole = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for piece in parts {
        whole.extend_from_slice(piece);
    }
    whole.freeze()
}

/// What assembling a blob that lives on disk needs: each piece still in memory, or the proof
/// to check the one read back.
#[derive(Debug)]
pub(crate) struct Assembly {
    pub(crate) info: Info,
    pub(crate) pieces: Vec<(Option<Bytes>, Vec<Hash>)>,
}

/// How a push ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// Receivers that hold every piece.
    pub completed: Vec<PeerId>,
    /// Receivers that were not connected, declined the blob or disconnected before holding it.
    pub failed: Vec<PeerId>,
    /// Receivers that two others caught sending pieces that fail their proof: the pusher
    /// stopped serving them and did not wait for them.
    pub refused: Vec<PeerId>,
}

/// Where one blob stands on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Pieces held and verified.
    pub pieces: u32,
    /// Pieces in the blob (0 while its length is not known yet).
    pub total: u32,
    /// The blob's length in bytes (0 while not known).
    pub len: u64,
    /// Piece bytes received that were new.
    pub received_bytes: u64,
    /// Piece bytes received for pieces already held (endgame, late answers).
    pub duplicate_bytes: u64,
    /// Piece bytes sent to other members.
    pub uploaded_bytes: u64,
    /// Pieces that failed their proof (each charged to its sender).
    pub bad_pieces: u64,
    /// Requests that got no answer in time and were asked again elsewhere.
    pub timeouts: u64,
    /// Peers taking part in this blob with this node.
    pub members: usize,
}

impl Progress {
    /// Whether every piece is here.
    pub fn is_complete(&self) -> bool {
        self.total > 0 && self.pieces == self.total
    }
}

/// Counters of the whole swarm on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwarmStats {
    /// Blobs held or wanted now.
    pub blobs: usize,
    /// Bytes of blobs whose length is known, held or reserved in memory.
    pub memory_bytes: u64,
    /// Bytes of blobs held in the data directory only (`SwarmConfig::max_disk`).
    pub disk_bytes: u64,
    /// Offers declined (offers off, or a bound reached).
    pub offers_declined: u64,
    /// Blobs taken on from an offer and dropped after `OFFER_IDLE` without a new piece, none
    /// of them fetched by the application (each frees its slot, and its pusher is told).
    pub offers_evicted: u64,
    /// Messages about blobs this node does not take part in (ignored).
    pub unsolicited: u64,
    /// Pieces that failed their proof.
    pub bad_pieces: u64,
    /// Requests answered `Busy` (every upload slot of the blob taken).
    pub busy: u64,
    /// Receivers of a push this node stopped serving: two others caught each sending bad
    /// pieces.
    pub receivers_refused: u64,
    /// Piece requests answered `Reject` because this node caught the asker sending a piece of
    /// that blob that failed its proof.
    pub liars_refused: u64,
}

/// Where a blob added here will be held ([`Core::reserve_added`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Here, complete, already.
    Held,
    /// In memory; nothing reserved.
    Memory,
    /// On disk; a slot and its length reserved.
    Disk,
}

/// `Swarm::add` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddError {
    /// Larger than `SwarmConfig::max_blob_size`.
    #[error(
        "a blob of {len} bytes is over max_blob_size ({max}); raise SwarmConfig::max_blob_size or split it"
    )]
    TooLarge {
        /// The blob's length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// `SwarmConfig::max_blobs` blobs are held or wanted already.
    #[error("{max} blobs are held or wanted already (SwarmConfig::max_blobs); remove one first")]
    TooManyBlobs {
        /// The bound.
        max: usize,
    },
    /// The blobs held would exceed `SwarmConfig::max_memory`.
    #[error(
        "holding {len} more bytes would exceed max_memory ({max}); remove a blob or raise SwarmConfig::max_memory"
    )]
    OutOfMemory {
        /// The blob's length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    File {
        /// The file.
        path: String,
        /// What the system said.
        error: String,
    },
    /// A blob's pieces could not be written to the data directory.
    #[error("cannot keep {path} in the data directory: {error}; check the disk it is on")]
    Store {
        /// The file, or `a blob of N bytes` for one added from memory.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// The swarm has stopped.
    #[error("the swarm has stopped (the network shut down)")]
    Closed,
}

/// `Swarm::fetch` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Larger than `SwarmConfig::max_blob_size`.
    #[error(
        "the blob is {len} bytes, over max_blob_size ({max}); raise SwarmConfig::max_blob_size to fetch it"
    )]
    TooLarge {
        /// The blob's length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// `SwarmConfig::max_blobs` blobs are held or wanted already.
    #[error("{max} blobs are held or wanted already (SwarmConfig::max_blobs); remove one first")]
    TooManyBlobs {
        /// The bound.
        max: usize,
    },
    /// The blobs held would exceed `SwarmConfig::max_memory`.
    #[error(
        "the blob's {len} bytes would exceed max_memory ({max}); remove a blob or raise SwarmConfig::max_memory"
    )]
    OutOfMemory {
        /// The blob's length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// `Swarm::remove` was called while fetching.
    #[error("the blob was removed while being fetched")]
    Removed,
    /// The blob lives in the data directory and could not be read back.
    #[error(
        "the blob's pieces could not be read back from the data directory; check the disk, then remove and fetch it again"
    )]
    Unreadable,
    /// The swarm has stopped.
    #[error("the swarm has stopped (the network shut down)")]
    Closed,
}

/// `Swarm::push` failed before it began.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// This node does not hold the whole blob.
    #[error("this node does not hold every piece of {0}; add or fetch it first")]
    NotHeld(BlobId),
    /// A push of this blob is under way.
    #[error("{0} is being pushed already; wait for that push to end")]
    AlreadyPushing(BlobId),
    /// The swarm has stopped.
    #[error("the swarm has stopped (the network shut down)")]
    Closed,
}

#[derive(Debug)]
struct Member {
    has: Vec<bool>,
    has_count: u32,
    /// This node sent it a `Have`.
    told: bool,
    /// It sent this node a `Have` (the first is answered with one).
    heard: bool,
    inflight: Vec<(u32, Instant)>,
    /// Sent a piece that failed its proof: asked nothing more for this blob.
    bad: bool,
    /// Requests of it that timed out since its last piece: it is asked one at a time, after
    /// the others.
    timeouts: u32,
    /// It answered `Busy`: asked nothing until then.
    busy_until: Option<Instant>,
}

impl Member {
    fn new(n: u32) -> Self {
        Self {
            has: vec![false; n as usize],
            has_count: 0,
            told: false,
            heard: false,
            inflight: Vec::new(),
            bad: false,
            timeouts: 0,
            busy_until: None,
        }
    }
}

/// A push this node makes: who has yet to hold the blob.
#[derive(Debug)]
struct Deal {
    pending: HashSet<PeerId>,
    report: PushReport,
    receivers: Vec<PeerId>,
    /// Receivers accused of sending bad pieces, with their distinct accusers.
    accused: PeerMap<HashSet<PeerId>>,
    /// Accused by two receivers or more: asked for a piece, it gets `Reject`.
    refused: HashSet<PeerId>,
}

/// A push this node receives: the origin and the receivers in share order.
#[derive(Debug)]
struct Origin {
    peer: PeerId,
    receivers: Vec<PeerId>,
}

#[derive(Debug)]
struct Blob {
    /// Told apart from an earlier blob of the same id that was removed: a write of the
    /// earlier one finishing late must not drop this one's pieces from memory.
    incarnation: u64,
    info: Option<Info>,
    n: u32,
    have: Vec<bool>,
    have_count: u32,
    pieces: Vec<Option<Bytes>>,
    proofs: Vec<Vec<Hash>>,
    /// For a blob added here: the tree gives every proof.
    tree: Option<Tree>,
    /// Lives in the data directory: a piece's memory copy is dropped once it is written.
    on_disk: bool,
    whole: Option<Bytes>,
    members: PeerMap<Member>,
    availability: Vec<u32>,
    requested: Vec<u8>,
    rank: Vec<u32>,
    hints: Vec<PeerId>,
    /// Pieces served to each peer and not yet announced back by it, with when they were
    /// served: one upload slot per peer listed.
    uploads: PeerMap<Vec<(u32, Instant)>>,
    deal: Option<Deal>,
    origin: Option<Origin>,
    /// Members that left or declined: their share of a push is asked of the origin.
    departed: Vec<PeerId>,
    /// The last time a new piece arrived (or the fetch began).
    last_progress: Option<Instant>,
    /// No progress for `timeout_min`: the origin may be asked for anything.
    opened: bool,
    /// The application fetches it (`fetch`): never dropped for idling.
    wanted: bool,
    /// Its byte and event counters (the rest of `Progress` is read off the blob).
    progress: Progress,
}

impl Blob {
    /// The pusher of an offer taken on here that has had no new piece for `OFFER_IDLE` and
    /// that the application does not fetch.
    fn idle_offer(&self, now: Instant) -> Option<PeerId> {
        let origin = self.origin.as_ref()?;
        let idle = self
            .last_progress
            .is_some_and(|at| now.saturating_duration_since(at) >= OFFER_IDLE);
        (idle && !self.wanted && !self.complete()).then_some(origin.peer)
    }

    fn unknown(incarnation: u64) -> Self {
        Self {
            incarnation,
            info: None,
            n: 0,
            have: Vec::new(),
            have_count: 0,
            pieces: Vec::new(),
            proofs: Vec::new(),
            tree: None,
            on_disk: false,
            whole: None,
            members: PeerMap::default(),
            availability: Vec::new(),
            requested: Vec::new(),
            rank: Vec::new(),
            hints: Vec::new(),
            uploads: PeerMap::default(),
            deal: None,
            origin: None,
            departed: Vec::new(),
            last_progress: None,
            opened: false,
            wanted: false,
            progress: Progress::default(),
        }
    }

    /// Every piece was just added here, not fetched (`got` the ones that were missing): nothing
    /// is asked for any more, the members are told, and fetches waiting for it (`wanted`) end.
    fn completed_here(&mut self, id: BlobId, got: Vec<u32>, wanted: bool, out: &mut Vec<Output>) {
        self.requested.iter_mut().for_each(|r| *r = 0);
        for member in self.members.values_mut() {
            member.inflight.clear();
        }
        if got.is_empty() {
            return;
        }
        for peer in self.members.keys() {
            out.push(Output::Send {
                peer: *peer,
                wire: Wire::Got {
                    blob: id,
                    pieces: got.clone(),
                },
                data: None,
            });
        }
        if wanted {
            out.push(Output::Complete { blob: id });
        }
    }

    fn complete(&self) -> bool {
        self.info.is_some() && self.have_count == self.n
    }

    /// Where it stands: the counters kept in `progress`, the rest read off the blob.
    fn progress(&self) -> Progress {
        Progress {
            pieces: self.have_count,
            total: self.n,
            len: self.info.map_or(0, |i| i.len),
            members: self.members.len(),
            ..self.progress
        }
    }

    /// Sizes everything for `info` (members announced nothing before it was known).
    fn learn(&mut self, info: Info, n: u32, seed: u64) {
        let len = n as usize;
        self.info = Some(info);
        self.n = n;
        self.have = vec![false; len];
        self.pieces = vec![None; len];
        self.proofs = vec![Vec::new(); len];
        self.availability = vec![0; len];
        self.requested = vec![0; len];
        self.rank = (0..n).map(|i| shuffle(seed, i)).collect();
        for member in self.members.values_mut() {
            *member = Member {
                told: member.told,
                heard: member.heard,
                ..Member::new(n)
            };
        }
    }

    fn bits(&self) -> Vec<u8> {
        let mut bits = vec![0u8; (self.n as usize).div_ceil(8)];
        for i in 0..self.n {
            if self.have[i as usize] {
                bits[i as usize / 8] |= 1 << (i % 8);
            }
        }
        bits
    }

    /// Whether `peer` may be asked for piece `index`. The origin of a push is asked for this
    /// node's share; for the share of a receiver that cannot give it (not connected, gone, or
    /// caught lying) by one substitute per piece, spread over the other receivers, and only
    /// while no other member holds the piece; for anything once `open` (no progress for a
    /// while).
    fn may_ask(
        &self,
        peer: PeerId,
        index: u32,
        local: PeerId,
        connected: &HashSet<PeerId>,
        open: bool,
    ) -> bool {
        let Some(origin) = &self.origin else {
            return true;
        };
        let n = origin.receivers.len();
        if peer != origin.peer || open || n == 0 {
            return true;
        }
        let usable = |r: &PeerId| {
            *r == local
                || (connected.contains(r)
                    && !self.departed.contains(r)
                    && !self.members.get(r).is_some_and(|m| m.bad))
        };
        let owner = origin.receivers[index as usize % n];
        if usable(&owner) {
            return owner == local;
        }
        // The share of a receiver that cannot give it is spread over the others (by the
        // piece's round, not its position), so no single substitute carries all of it.
        let round = index as usize / n;
        let substitute = (0..n)
            .map(|k| origin.receivers[(round + k) % n])
            .find(|r| *r != owner && usable(r));
        substitute == Some(local) && self.availability[index as usize] <= 1
    }

    fn proof(&self, index: u32) -> Vec<Hash> {
        match &self.tree {
            Some(tree) => tree.proof(index),
            None => self.proofs.get(index as usize).cloned().unwrap_or_default(),
        }
    }

    fn piece_timeout(&self, limits: &Limits) -> Duration {
        let size = self.info.map_or(0, |i| i.piece_size);
        let scaled = limits
            .timeout_per_mib
            .mul_f64(f64::from(size) / f64::from(1u32 << 20));
        scaled.max(limits.timeout_min)
    }

    fn set_has(&mut self, peer: PeerId, index: u32) -> bool {
        let Some(member) = self.members.get_mut(&peer) else {
            return false;
        };
        let at = index as usize;
        // What a member caught lying holds is not counted.
        let counted = !member.bad && member.has.get(at) == Some(&false);
        if counted {
            member.has[at] = true;
            member.has_count += 1;
            self.availability[at] += 1;
        }
        // The peer holds it now: the upload is done and frees its share of the slot. Only a
        // piece newly held does, so announcing one piece over and over frees nothing; a liar's
        // announcements still end uploads to it (nodes that have not caught it yet serve it
        // like anybody).
        if counted || member.bad {
            if let Some(uploads) = self.uploads.get_mut(&peer) {
                uploads.retain(|(i, _)| *i != index);
                if uploads.is_empty() {
                    self.uploads.remove(&peer);
                }
            }
        }
        counted
    }

    /// Forgets `peer`'s in-flight request for `index`, if any.
    fn cancel(&mut self, peer: PeerId, index: u32) -> bool {
        let Some(member) = self.members.get_mut(&peer) else {
            return false;
        };
        let Some(at) = member.inflight.iter().position(|(i, _)| *i == index) else {
            return false;
        };
        member.inflight.swap_remove(at);
        let count = &mut self.requested[index as usize];
        *count = count.saturating_sub(1);
        true
    }

    fn remove_member(&mut self, peer: PeerId) -> Option<Member> {
        self.uploads.remove(&peer);
        let member = self.members.remove(&peer)?;
        for (i, had) in member.has.iter().enumerate() {
            if *had {
                self.availability[i] = self.availability[i].saturating_sub(1);
            }
        }
        for (i, _) in &member.inflight {
            let count = &mut self.requested[*i as usize];
            *count = count.saturating_sub(1);
        }
        Some(member)
    }
}

/// A per-node order for breaking ties between equally rare pieces (SplitMix64 of the node's
/// seed and the piece).
fn shuffle(seed: u64, i: u32) -> u32 {
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    (mix(mix(seed) ^ u64::from(i)) >> 32) as u32
}

/// What `select` needs besides the blob: who asks, who is connected, and whether the origin
/// is open for anything (no progress for `timeout_min`).
struct Asking<'a> {
    local: PeerId,
    connected: &'a HashSet<PeerId>,
    open: bool,
    endgame: bool,
}

/// The piece to ask `peer` for next, if any: the rarest it holds that is neither here nor
/// asked for (in the endgame: asked of one other member at most).
fn select(blob: &Blob, peer: PeerId, member: &Member, asking: &Asking<'_>) -> Option<u32> {
    let mut best: Option<(u8, u32, u32, u32)> = None;
    for i in 0..blob.n {
        let at = i as usize;
        if blob.have[at] || !member.has[at] {
            continue;
        }
        let asked = blob.requested[at];
        if asked > 0
            && (!asking.endgame || asked >= 2 || member.inflight.iter().any(|(p, _)| *p == i))
        {
            continue;
        }
        let key = (asked, blob.availability[at], blob.rank[at], i);
        if best.is_some_and(|b| key >= b) {
            continue;
        }
        if !blob.may_ask(peer, i, asking.local, asking.connected, asking.open) {
            continue;
        }
        best = Some(key);
    }
    best.map(|(_, _, _, i)| i)
}

fn parse_bits(bits: &[u8], n: u32) -> Option<Vec<bool>> {
    if bits.is_empty() {
        return Some(vec![false; n as usize]);
    }
    if bits.len() != (n as usize).div_ceil(8) {
        return None;
    }
    let has: Vec<bool> = (0..n)
        .map(|i| bits[i as usize / 8] & (1 << (i % 8)) != 0)
        .collect();
    // Bits past the last piece must be clear: one encoding per set.
    let used = (0..bits.len() * 8)
        .filter(|i| bits[i / 8] & (1 << (i % 8)) != 0)
        .count();
    (used == has.iter().filter(|h| **h).count()).then_some(has)
}

/// The swarm of one node.
#[derive(Debug)]
pub(crate) struct Core {
    limits: Limits,
    local: PeerId,
    blobs: HashMap<BlobId, Blob>,
    connected: HashSet<PeerId>,
    memory: u64,
    disk: u64,
    /// Blobs being written into the data directory by `add` or `add_file`, each holding a blob slot
    /// and its length of `disk` until `add_kept` or `unreserve_file`.
    adding: usize,
    /// Blobs made so far (`Blob::incarnation`).
    incarnations: u64,
    stats: SwarmStats,
}

impl Core {
    pub(crate) fn new(limits: Limits, local: PeerId) -> Self {
        Self {
            limits,
            local,
            blobs: HashMap::new(),
            connected: HashSet::new(),
            memory: 0,
            disk: 0,
            adding: 0,
            incarnations: 0,
            stats: SwarmStats::default(),
        }
    }

    /// A blob not known yet, told apart from every other made here.
    fn fresh_blob(&mut self) -> Blob {
        self.incarnations += 1;
        Blob::unknown(self.incarnations)
    }

    /// Blob slots taken: blobs held or wanted, and files being added.
    fn slots_used(&self) -> usize {
        self.blobs.len() + self.adding
    }

    /// Where a blob of `len` bytes added here (`id`, once hashed) will be held:
    /// [`Placed::Held`] when it is here, complete, already; [`Placed::Memory`] (nothing is
    /// reserved: [`Core::add`] it whole); [`Placed::Disk`], with a blob slot and `len` bytes
    /// of `max_disk` reserved for it until [`Core::add_kept`] or [`Core::unreserve_file`].
    /// A blob being fetched here already needs no new slot.
    pub(crate) fn reserve_added(
        &mut self,
        len: u64,
        id: Option<BlobId>,
    ) -> Result<Placed, AddError> {
        let known = id.and_then(|id| self.blobs.get(&id));
        if known.is_some_and(Blob::complete) {
            return Ok(Placed::Held);
        }
        if known.is_none() && self.slots_used() >= self.limits.max_blobs {
            return Err(AddError::TooManyBlobs {
                max: self.limits.max_blobs,
            });
        }
        if !self.room(len)? {
            return Ok(Placed::Memory);
        }
        self.adding += 1;
        self.reserve(true, len);
        Ok(Placed::Disk)
    }

    /// Gives back what [`Core::reserve_added`] reserved for a blob that was not added.
    pub(crate) fn unreserve_file(&mut self, len: u64) {
        self.adding = self.adding.saturating_sub(1);
        self.disk = self.disk.saturating_sub(len);
    }

    /// Holds a blob whose every piece was written to the data directory by `add_file` (with
    /// a reservation from [`Core::reserve_added`]): it lives on disk, complete. A blob being
    /// fetched is completed by it, and whatever that blob had reserved is given back (the
    /// file's reservation on disk covers it now).
    pub(crate) fn add_kept(&mut self, info: Info, tree: Tree, out: &mut Vec<Output>) -> BlobId {
        let id = info.id();
        let n = info.pieces().unwrap_or(1);
        self.adding = self.adding.saturating_sub(1);
        let seed = self.limits.seed;
        let wanted = self.blobs.contains_key(&id);
        match self.blobs.get(&id) {
            Some(blob) if blob.complete() => {
                self.disk = self.disk.saturating_sub(info.len);
                return id;
            }
            Some(blob) if blob.info.is_some() => {
                if blob.on_disk {
                    self.disk = self.disk.saturating_sub(info.len);
                } else {
                    self.memory = self.memory.saturating_sub(info.len);
                }
            }
            _ => {}
        }
        let fresh = self.fresh_blob();
        let blob = self.blobs.entry(id).or_insert(fresh);
        if blob.info.is_none() {
            blob.learn(info, n, seed);
        }
        blob.on_disk = true;
        blob.whole = None;
        let got: Vec<u32> = (0..n).filter(|i| !blob.have[*i as usize]).collect();
        blob.have.iter_mut().for_each(|h| *h = true);
        blob.pieces.iter_mut().for_each(|p| *p = None);
        blob.have_count = n;
        blob.tree = Some(tree);
        blob.completed_here(id, got, wanted, out);
        id
    }

    pub(crate) fn connected_peers(&self) -> Vec<PeerId> {
        self.connected.iter().copied().collect()
    }

    pub(crate) fn stats(&self) -> SwarmStats {
        SwarmStats {
            blobs: self.blobs.len(),
            memory_bytes: self.memory,
            disk_bytes: self.disk,
            ..self.stats
        }
    }

    /// Peers holding an upload slot of `blob` now.
    #[cfg(test)]
    pub(crate) fn uploading(&self, blob: &BlobId) -> usize {
        self.blobs.get(blob).map_or(0, |b| b.uploads.len())
    }

    /// Members of `blob` that left or declined, remembered (their share is dealt round).
    #[cfg(test)]
    pub(crate) fn departed(&self, blob: &BlobId) -> usize {
        self.blobs.get(blob).map_or(0, |b| b.departed.len())
    }

    /// Peers remembered as hints for `blob` (asked when they connect).
    #[cfg(test)]
    pub(crate) fn hints(&self, blob: &BlobId) -> usize {
        self.blobs.get(blob).map_or(0, |b| b.hints.len())
    }

    pub(crate) fn progress(&self, blob: &BlobId) -> Option<Progress> {
        self.blobs.get(blob).map(Blob::progress)
    }

    /// The whole blob, if every piece is here. The first call copies the pieces into one
    /// buffer and makes them slices of it, so the frames they arrived in are freed.
    #[cfg(test)]
    pub(crate) fn get(&mut self, blob: &BlobId) -> Option<Bytes> {
        match self.whole(blob)? {
            Whole::Made(whole) => Some(whole),
            Whole::Parts(parts) => Some(self.set_whole(blob, assemble(&parts))),
        }
    }

    /// A complete blob held in memory: its buffer if made already, else its pieces (shared,
    /// not copied) for [`assemble`] to copy outside the swarm's lock. `None` for a blob that
    /// is not complete or lives on disk (read from there by `Swarm::fetch`).
    pub(crate) fn whole(&self, blob: &BlobId) -> Option<Whole> {
        let blob = self
            .blobs
            .get(blob)
            .filter(|b| b.complete() && !b.on_disk)?;
        if let Some(whole) = &blob.whole {
            return Some(Whole::Made(whole.clone()));
        }
        Some(Whole::Parts(
            blob.pieces.iter().flatten().cloned().collect(),
        ))
    }

    /// Keeps `whole` (assembled from [`Whole::Parts`]) as the blob's buffer and makes its
    /// pieces slices of it, so the frames they arrived in are freed; returns the buffer to hand
    /// out (the one made first if another assembly won the race).
    pub(crate) fn set_whole(&mut self, blob: &BlobId, whole: Bytes) -> Bytes {
        let Some(blob) = self.blobs.get_mut(blob).filter(|b| b.complete()) else {
            return whole;
        };
        if let Some(made) = &blob.whole {
            return made.clone();
        }
        let Some(info) = blob.info.filter(|i| i.len == whole.len() as u64) else {
            return whole;
        };
        if !blob.on_disk {
            let mut start = 0;
            for (i, piece) in blob.pieces.iter_mut().enumerate() {
                let len = info.piece_len(i as u32);
                *piece = Some(whole.slice(start..start + len));
                start += len;
            }
            blob.whole = Some(whole.clone());
        }
        whole
    }

    pub(crate) fn blobs(&self) -> Vec<(BlobId, Progress)> {
        self.blobs
            .iter()
            .map(|(id, b)| (*id, b.progress()))
            .collect()
    }

    /// Where a blob of `len` bytes can live: in memory while `max_memory` allows, else in the
    /// data directory while `max_disk` allows (`true`: on disk).
    fn room(&self, len: u64) -> Result<bool, AddError> {
        if len > self.limits.max_blob_size {
            return Err(AddError::TooLarge {
                len,
                max: self.limits.max_blob_size,
            });
        }
        if self.memory.saturating_add(len) <= self.limits.max_memory {
            return Ok(false);
        }
        if self.limits.max_disk > 0 && self.disk.saturating_add(len) <= self.limits.max_disk {
            return Ok(true);
        }
        Err(AddError::OutOfMemory {
            len,
            max: self.limits.max_memory,
        })
    }

    /// Counts `len` bytes where the blob lives.
    fn reserve(&mut self, on_disk: bool, len: u64) {
        if on_disk {
            self.disk += len;
        } else {
            self.memory += len;
        }
    }

    /// Whether `blob` lives on disk (its whole is read from there, not from memory).
    pub(crate) fn is_on_disk(&self, blob: &BlobId) -> bool {
        self.blobs.get(blob).is_some_and(|b| b.on_disk)
    }

    /// The pieces of a complete blob that are still in memory (`None`: on disk only, which
    /// means written), for reading a blob that lives on disk.
    pub(crate) fn assembly(&self, blob: &BlobId) -> Option<Assembly> {
        let b = self.blobs.get(blob).filter(|b| b.complete())?;
        let info = b.info?;
        let pieces = (0..b.n)
            .map(|i| match &b.pieces[i as usize] {
                Some(data) => (Some(data.clone()), Vec::new()),
                None => (None, b.proof(i)),
            })
            .collect();
        Some(Assembly { info, pieces })
    }

    /// Piece `index` of `blob` (its `incarnation`, from `KeepPiece`) is written: a blob
    /// living on disk drops its memory copy. Nothing is dropped when the blob was removed
    /// and made again since: the new one's piece stays in memory until its own write.
    pub(crate) fn stored(&mut self, blob: &BlobId, index: u32, incarnation: u64) {
        if let Some(blob) = self
            .blobs
            .get_mut(blob)
            .filter(|b| b.on_disk && b.incarnation == incarnation)
        {
            if let Some(piece) = blob.pieces.get_mut(index as usize) {
                *piece = None;
            }
        }
    }

    /// Holds `data` whole, split as `info` says, with its `tree`. A blob being fetched is
    /// completed by it.
    pub(crate) fn add(
        &mut self,
        info: Info,
        tree: Tree,
        data: Bytes,
        out: &mut Vec<Output>,
    ) -> Result<BlobId, AddError> {
        let id = info.id();
        let n = info.pieces().unwrap_or(1);
        let place = match self.blobs.get(&id) {
            Some(blob) if blob.complete() => return Ok(id),
            Some(blob) if blob.info.is_some() => None,
            Some(_) => Some(self.room(info.len)?),
            None => {
                if self.slots_used() >= self.limits.max_blobs {
                    return Err(AddError::TooManyBlobs {
                        max: self.limits.max_blobs,
                    });
                }
                Some(self.room(info.len)?)
            }
        };
        if let Some(on_disk) = place {
            self.reserve(on_disk, info.len);
        }
        let seed = self.limits.seed;
        let wanted = self.blobs.contains_key(&id);
        let fresh = self.fresh_blob();
        let blob = self.blobs.entry(id).or_insert(fresh);
        if blob.info.is_none() {
            blob.learn(info, n, seed);
            blob.on_disk = place == Some(true);
        }
        let release = blob.on_disk.then_some(blob.incarnation);
        let mut got = Vec::new();
        out.push(Output::Keep { blob: id, info });
        for i in 0..n {
            let start = i as usize * info.piece_size as usize;
            let piece = data.slice(start..start + info.piece_len(i));
            if !blob.have[i as usize] {
                got.push(i);
                blob.have[i as usize] = true;
                out.push(Output::KeepPiece {
                    blob: id,
                    index: i,
                    proof: tree.proof(i),
                    data: piece.clone(),
                    release,
                });
            }
            blob.pieces[i as usize] = Some(piece);
        }
        blob.have_count = n;
        blob.tree = Some(tree);
        if !blob.on_disk {
            blob.whole = Some(data);
        }
        blob.completed_here(id, got, wanted, out);
        Ok(id)
    }

    /// Takes back a blob kept on disk: its description and the pieces that were stored, each
    /// checked against the id again (the disk is not trusted more than a peer). Returns the
    /// pieces kept and the ones dropped. The blob is then held (complete) or wanted (a fetch
    /// carries on from these pieces).
    pub(crate) fn restore(
        &mut self,
        info: Info,
        pieces: Vec<crate::store::KeptPiece>,
    ) -> Result<(u32, u32), AddError> {
        let id = info.id();
        let Some(n) = info.pieces() else {
            return Ok((0, u32::try_from(pieces.len()).unwrap_or(u32::MAX)));
        };
        if self.blobs.contains_key(&id) {
            return Ok((0, 0));
        }
        if self.slots_used() >= self.limits.max_blobs {
            return Err(AddError::TooManyBlobs {
                max: self.limits.max_blobs,
            });
        }
        let on_disk = self.room(info.len)?;
        let mut blob = self.fresh_blob();
        blob.learn(info, n, self.limits.seed);
        blob.on_disk = on_disk;
        let (mut kept, mut dropped) = (0, 0);
        for (index, proof, data, len) in pieces {
            let at = index as usize;
            // A piece read back is checked now; one listed only (a blob living on disk, whose
            // bytes were not loaded) is checked when it is read to be sent or assembled.
            let valid = index < n
                && !blob.have[at]
                && len == info.piece_len(index)
                && match &data {
                    Some(data) => merkle::verify(&info.root, n, index, data, &proof),
                    None => on_disk,
                };
            if !valid {
                dropped += 1;
                continue;
            }
            blob.have[at] = true;
            // A blob living on disk is read from there when asked for.
            blob.pieces[at] = if on_disk { None } else { data };
            blob.proofs[at] = proof;
            kept += 1;
        }
        blob.have_count = kept;
        self.reserve(on_disk, info.len);
        self.blobs.insert(id, blob);
        Ok((kept, dropped))
    }

    /// Whether a blob of `len` bytes would live on disk if taken now (`None`: it would not
    /// fit at all).
    pub(crate) fn would_live_on_disk(&self, len: u64) -> Option<bool> {
        self.room(len).ok()
    }

    /// Wants `blob`, asking `hints` (now if connected, else when they connect) and anybody
    /// who announces it. Returns whether it is here already.
    pub(crate) fn fetch(
        &mut self,
        blob: BlobId,
        hints: &[PeerId],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<bool, FetchError> {
        if !self.blobs.contains_key(&blob) {
            if self.slots_used() >= self.limits.max_blobs {
                return Err(FetchError::TooManyBlobs {
                    max: self.limits.max_blobs,
                });
            }
            let fresh = self.fresh_blob();
            self.blobs.insert(blob, fresh);
        }
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.last_progress.get_or_insert(now);
            b.wanted = true;
        }
        self.hint(blob, hints, out);
        self.fill(blob, now, out);
        Ok(self.blobs.get(&blob).is_some_and(Blob::complete))
    }

    fn hint(&mut self, id: BlobId, peers: &[PeerId], out: &mut Vec<Output>) {
        let max = self.limits.max_members;
        let Some(blob) = self.blobs.get_mut(&id) else {
            return;
        };
        for peer in peers {
            if *peer == self.local {
                continue;
            }
            if !blob.hints.contains(peer) && blob.hints.len() < max {
                blob.hints.push(*peer);
            }
            if self.connected.contains(peer) {
                Self::join(blob, id, *peer, max, out);
            }
        }
    }

    /// Makes `peer` a member of `blob` and tells it what this node holds.
    fn join(blob: &mut Blob, id: BlobId, peer: PeerId, max: usize, out: &mut Vec<Output>) {
        if !blob.members.contains_key(&peer) {
            if blob.members.len() >= max {
                return;
            }
            blob.members.insert(peer, Member::new(blob.n));
        }
        let bits = blob.bits();
        if let Some(member) = blob.members.get_mut(&peer) {
            if !member.told {
                member.told = true;
                out.push(Output::Send {
                    peer,
                    wire: Wire::Have {
                        blob: id,
                        info: blob.info,
                        bits,
                    },
                    data: None,
                });
            }
        }
    }

    /// Pushes `blob`, held whole, to `receivers`: see the module's account of dealing.
    pub(crate) fn push(
        &mut self,
        id: BlobId,
        receivers: &[PeerId],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), PushError> {
        let Some(blob) = self.blobs.get_mut(&id).filter(|b| b.complete()) else {
            return Err(PushError::NotHeld(id));
        };
        if blob.deal.is_some() {
            return Err(PushError::AlreadyPushing(id));
        }
        let Some(info) = blob.info else {
            return Err(PushError::NotHeld(id));
        };
        let mut report = PushReport::default();
        let mut live = Vec::new();
        for peer in receivers {
            if *peer == self.local || live.contains(peer) || report.failed.contains(peer) {
                continue;
            }
            if self.connected.contains(peer) {
                live.push(*peer);
            } else {
                report.failed.push(*peer);
            }
        }
        if live.is_empty() {
            out.push(Output::Pushed { blob: id, report });
            return Ok(());
        }
        let _ = now;
        // Shares are by position in the offer's list, which holds at most this many.
        report
            .failed
            .extend(live.drain(live.len().min(MAX_OFFER_MEMBERS)..));
        blob.deal = Some(Deal {
            pending: live.iter().copied().collect(),
            report,
            receivers: live.clone(),
            accused: PeerMap::default(),
            refused: HashSet::new(),
        });
        let members: Vec<PeerId> = live.clone();
        let n = blob.n;
        if let Some(deal) = &mut blob.deal {
            for peer in &live {
                if blob.members.get(peer).is_some_and(|m| m.has_count == n) {
                    deal.pending.remove(peer);
                    deal.report.completed.push(*peer);
                }
            }
        }
        for peer in &live {
            if !blob.members.contains_key(peer) {
                blob.members.insert(*peer, Member::new(blob.n));
            }
            out.push(Output::Send {
                peer: *peer,
                wire: Wire::Offer {
                    blob: id,
                    info,
                    members: members.clone(),
                },
                data: None,
            });
        }
        // A receiver that holds it all already answers with a full `Have`.
        Ok(())
    }

    /// Ends the push of `blob` without a report (its caller went away).
    pub(crate) fn end_push(&mut self, blob: &BlobId) {
        if let Some(blob) = self.blobs.get_mut(blob) {
            blob.deal = None;
        }
    }

    /// A piece of a blob living on disk could not be queued for writing: it is given up (and
    /// fetched again) rather than held in memory for good.
    pub(crate) fn lost(&mut self, blob: &BlobId, index: u32) {
        let Some(blob) = self.blobs.get_mut(blob).filter(|b| b.on_disk) else {
            return;
        };
        if let Some(have) = blob.have.get_mut(index as usize).filter(|h| **h) {
            *have = false;
            blob.have_count = blob.have_count.saturating_sub(1);
            blob.pieces[index as usize] = None;
            blob.whole = None;
        }
    }

    /// Forgets `blob`: its fetches fail, its push ends.
    pub(crate) fn remove(&mut self, id: BlobId, out: &mut Vec<Output>) -> bool {
        let Some(mut blob) = self.blobs.remove(&id) else {
            return false;
        };
        if let Some(info) = blob.info {
            if blob.on_disk {
                self.disk = self.disk.saturating_sub(info.len);
            } else {
                self.memory = self.memory.saturating_sub(info.len);
            }
            out.push(Output::Forget { blob: id });
        }
        if !blob.complete() {
            out.push(Output::Failed {
                blob: id,
                why: FetchError::Removed,
            });
        }
        if let Some(mut deal) = blob.deal.take() {
            deal.report.failed.extend(deal.pending.drain());
            out.push(Output::Pushed {
                blob: id,
                report: deal.report,
            });
        }
        true
    }

    pub(crate) fn on_connected(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Output>) {
        self.connected.insert(peer);
        let max = self.limits.max_members;
        let ids: Vec<BlobId> = self
            .blobs
            .iter()
            .filter(|(_, b)| b.hints.contains(&peer) && !b.members.contains_key(&peer))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(blob) = self.blobs.get_mut(&id) {
                Self::join(blob, id, peer, max, out);
            }
            self.fill(id, now, out);
        }
    }

    pub(crate) fn on_disconnected(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Output>) {
        self.connected.remove(&peer);
        let ids: Vec<BlobId> = self.blobs.keys().copied().collect();
        for id in ids {
            self.leave(id, peer, now, out);
        }
    }

    /// `peer` takes no more part in `id` (gone, or declined it): what it was asked is asked
    /// elsewhere, and its undealt share of a push goes round the other receivers.
    fn leave(&mut self, id: BlobId, peer: PeerId, now: Instant, out: &mut Vec<Output>) {
        let Some(blob) = self.blobs.get_mut(&id) else {
            return;
        };
        if blob.remove_member(peer).is_none() {
            return;
        }
        if !blob.departed.contains(&peer) && blob.departed.len() < MAX_OFFER_MEMBERS {
            blob.departed.push(peer);
        }
        if let Some(deal) = &mut blob.deal {
            if deal.pending.remove(&peer) {
                deal.report.failed.push(peer);
            }
        }
        self.settle(id, now, out);
    }

    /// Ends the push when nobody is pending, and asks for more pieces.
    fn settle(&mut self, id: BlobId, now: Instant, out: &mut Vec<Output>) {
        let Some(blob) = self.blobs.get_mut(&id) else {
            return;
        };
        if blob.deal.as_ref().is_some_and(|d| d.pending.is_empty()) {
            if let Some(deal) = blob.deal.take() {
                out.push(Output::Pushed {
                    blob: id,
                    report: deal.report,
                });
            }
        }
        self.fill(id, now, out);
    }

    fn charge(out: &mut Vec<Output>, peer: PeerId, points: u32, why: &'static str) {
        out.push(Output::Charge { peer, points, why });
    }

    pub(crate) fn on_wire(
        &mut self,
        peer: PeerId,
        wire: Wire,
        data: Bytes,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match wire {
            Wire::Offer {
                blob,
                info,
                members,
            } => self.on_offer(peer, blob, info, &members, now, out),
            Wire::Decline { blob } => self.leave(blob, peer, now, out),
            Wire::Have { blob, info, bits } => self.on_have(peer, blob, info, &bits, now, out),
            Wire::Got { blob, pieces } => {
                let Some(b) = self.blobs.get_mut(&blob) else {
                    self.stats.unsolicited += 1;
                    return;
                };
                if !b.members.contains_key(&peer) || b.info.is_none() {
                    self.stats.unsolicited += 1;
                    return;
                }
                if pieces.iter().any(|i| *i >= b.n) {
                    Self::charge(out, peer, 5, "a swarm announcement of a piece past the end");
                    return;
                }
                for i in pieces {
                    b.set_has(peer, i);
                }
                self.track(blob, peer);
                self.settle(blob, now, out);
            }
            Wire::Request { blob, piece } => self.on_request(peer, blob, piece, now, out),
            Wire::Reject { blob, piece } => {
                let Some(b) = self.blobs.get_mut(&blob) else {
                    return;
                };
                if b.cancel(peer, piece) {
                    if let Some(member) = b.members.get_mut(&peer) {
                        if let Some(bit) = member.has.get_mut(piece as usize) {
                            if *bit {
                                *bit = false;
                                member.has_count -= 1;
                                b.availability[piece as usize] -= 1;
                            }
                        }
                    }
                }
                self.fill(blob, now, out);
            }
            Wire::Accuse {
                blob,
                peer: accused,
            } => {
                let Some(deal) = self.blobs.get_mut(&blob).and_then(|b| b.deal.as_mut()) else {
                    self.stats.unsolicited += 1;
                    return;
                };
                // Only a receiver may accuse, only another receiver, and each accuser counts
                // once: one lying receiver cannot have an honest one refused alone.
                let valid = accused != peer
                    && deal.receivers.contains(&peer)
                    && deal.receivers.contains(&accused);
                if !valid {
                    self.stats.unsolicited += 1;
                    return;
                }
                let accusers = deal.accused.entry(accused).or_default();
                accusers.insert(peer);
                if accusers.len() >= 2 && deal.refused.insert(accused) {
                    self.stats.receivers_refused += 1;
                    // Not waited for: the push ends when the honest receivers hold it.
                    if deal.pending.remove(&accused) {
                        deal.report.refused.push(accused);
                    }
                    self.settle(blob, now, out);
                }
            }
            Wire::Busy { blob, piece } => {
                let retry = now + self.limits.busy_retry;
                let Some(b) = self.blobs.get_mut(&blob) else {
                    return;
                };
                if b.cancel(peer, piece) {
                    if let Some(member) = b.members.get_mut(&peer) {
                        member.busy_until = Some(retry);
                    }
                }
                self.fill(blob, now, out);
            }
            Wire::Piece { blob, piece, proof } => {
                self.on_piece(peer, blob, piece, proof, data, now, out);
            }
        }
    }

    fn on_offer(
        &mut self,
        peer: PeerId,
        id: BlobId,
        info: Info,
        members: &[PeerId],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if info.id() != id || info.pieces().is_none() {
            Self::charge(
                out,
                peer,
                10,
                "a swarm offer whose description is not its id",
            );
            return;
        }
        if !self.blobs.contains_key(&id) {
            // One peer's offers still incomplete here are bounded, so junk offers from one
            // peer cannot take every blob slot.
            let from_peer = self
                .blobs
                .values()
                .filter(|b| !b.complete() && b.origin.as_ref().is_some_and(|o| o.peer == peer))
                .count();
            let refused = !self.limits.accept_offers
                || self.slots_used() >= self.limits.max_blobs
                || from_peer >= MAX_OFFERS_PER_PEER
                || self.room(info.len).is_err();
            if refused {
                self.stats.offers_declined += 1;
                out.push(Output::Send {
                    peer,
                    wire: Wire::Decline { blob: id },
                    data: None,
                });
                return;
            }
            let fresh = self.fresh_blob();
            self.blobs.insert(id, fresh);
            out.push(Output::Offered {
                blob: id,
                from: peer,
                len: info.len,
            });
        }
        if !self.learn(id, info, out) {
            // Over a bound now that its length is known: the pusher must not wait for us.
            out.push(Output::Send {
                peer,
                wire: Wire::Decline { blob: id },
                data: None,
            });
            return;
        }
        // Every offer is answered with what this node holds, also when the pusher is a
        // member already (a second push of a blob held here completes at once).
        if let Some(blob) = self.blobs.get(&id) {
            if blob.members.get(&peer).is_some_and(|m| m.told) {
                out.push(Output::Send {
                    peer,
                    wire: Wire::Have {
                        blob: id,
                        info: blob.info,
                        bits: blob.bits(),
                    },
                    data: None,
                });
            }
        }
        if let Some(blob) = self.blobs.get_mut(&id) {
            if blob.origin.is_none() && !blob.complete() {
                blob.origin = Some(Origin {
                    peer,
                    receivers: members.iter().take(MAX_OFFER_MEMBERS).copied().collect(),
                });
                blob.last_progress = Some(now);
            }
        }
        let mut hints = vec![peer];
        hints.extend(members.iter().take(MAX_OFFER_MEMBERS));
        self.hint(id, &hints, out);
        self.fill(id, now, out);
    }

    /// Takes `info` for a blob that lacked it; false when the blob is over a bound (and has
    /// been dropped).
    fn learn(&mut self, id: BlobId, info: Info, out: &mut Vec<Output>) -> bool {
        let Some(blob) = self.blobs.get(&id) else {
            return false;
        };
        if blob.info.is_some() {
            return true;
        }
        let Some(n) = info.pieces() else {
            return false;
        };
        let on_disk = match self.room(info.len) {
            Ok(on_disk) => on_disk,
            Err(e) => {
                self.blobs.remove(&id);
                let why = match e {
                    AddError::TooLarge { len, max } => FetchError::TooLarge { len, max },
                    AddError::OutOfMemory { len, max } => FetchError::OutOfMemory { len, max },
                    _ => FetchError::Removed,
                };
                out.push(Output::Failed { blob: id, why });
                return false;
            }
        };
        self.reserve(on_disk, info.len);
        let seed = self.limits.seed;
        if let Some(blob) = self.blobs.get_mut(&id) {
            blob.learn(info, n, seed);
            blob.on_disk = on_disk;
        }
        out.push(Output::Keep { blob: id, info });
        true
    }

    fn on_have(
        &mut self,
        peer: PeerId,
        id: BlobId,
        info: Option<Info>,
        bits: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if !self.blobs.contains_key(&id) {
            self.stats.unsolicited += 1;
            return;
        }
        if let Some(info) = info {
            if info.id() != id || info.pieces().is_none() {
                Self::charge(
                    out,
                    peer,
                    10,
                    "a swarm announcement whose description is not its id",
                );
                return;
            }
            if !self.learn(id, info, out) {
                return;
            }
        }
        let max = self.limits.max_members;
        let Some(blob) = self.blobs.get_mut(&id) else {
            return;
        };
        let has = if blob.info.is_some() {
            match parse_bits(bits, blob.n) {
                Some(has) => has,
                None => {
                    Self::charge(out, peer, 5, "a swarm announcement of the wrong length");
                    return;
                }
            }
        } else if bits.is_empty() {
            Vec::new()
        } else {
            Self::charge(
                out,
                peer,
                5,
                "a swarm announcement of pieces without the blob's description",
            );
            return;
        };
        if !blob.members.contains_key(&peer) {
            if blob.members.len() >= max {
                return;
            }
            blob.members.insert(peer, Member::new(blob.n));
        }
        let first = blob
            .members
            .get_mut(&peer)
            .is_some_and(|m| !std::mem::replace(&mut m.heard, true));
        for (i, had) in has.iter().enumerate() {
            if *had {
                blob.set_has(peer, i as u32);
            }
        }
        if first {
            let bits = blob.bits();
            if let Some(member) = blob.members.get_mut(&peer) {
                member.told = true;
            }
            out.push(Output::Send {
                peer,
                wire: Wire::Have {
                    blob: id,
                    info: blob.info,
                    bits,
                },
                data: None,
            });
        }
        self.track(id, peer);
        self.settle(id, now, out);
    }

    /// A pushing node notes a receiver that holds everything.
    fn track(&mut self, id: BlobId, peer: PeerId) {
        let Some(blob) = self.blobs.get_mut(&id) else {
            return;
        };
        // A deal is made only for a blob held whole, so its `n` is known (at least 1).
        if let Some(deal) = &mut blob.deal {
            let full = blob
                .members
                .get(&peer)
                .is_some_and(|m| m.has_count == blob.n);
            if full && deal.pending.remove(&peer) {
                deal.report.completed.push(peer);
            }
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        id: BlobId,
        index: u32,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(blob) = self.blobs.get_mut(&id) else {
            self.stats.unsolicited += 1;
            out.push(Output::Send {
                peer,
                wire: Wire::Reject {
                    blob: id,
                    piece: index,
                },
                data: None,
            });
            return;
        };
        let in_memory = blob.pieces.get(index as usize).cloned().flatten();
        let on_disk = blob.on_disk && blob.have.get(index as usize).copied().unwrap_or(false);
        let refused = blob
            .deal
            .as_ref()
            .is_some_and(|d| d.refused.contains(&peer));
        // A member this node caught lying about this blob is served nothing more of it: its
        // proof failure is evidence nobody can forge, and every piece sent to it is upload the
        // honest members need (with one liar among n receivers, their upload is all used).
        let liar = blob.members.get(&peer).is_some_and(|m| m.bad);
        if liar {
            self.stats.liars_refused += 1;
        }
        if refused || liar || (in_memory.is_none() && !on_disk) {
            out.push(Output::Send {
                peer,
                wire: Wire::Reject {
                    blob: id,
                    piece: index,
                },
                data: None,
            });
            return;
        }
        // Upload slots: at most `upload_slots` peers served at once per blob, each with at
        // most two pipelines' worth served and not yet announced back. Served pieces a peer
        // never announces expire after two piece timeouts, so a silent peer cannot hold a slot.
        let expiry = blob.piece_timeout(&self.limits) * 2;
        blob.uploads.retain(|_, served| {
            served.retain(|(_, at)| now.saturating_duration_since(*at) < expiry);
            !served.is_empty()
        });
        let slots = self.limits.upload_slots.max(1);
        let busy = match blob.uploads.get(&peer) {
            Some(served) => served.len() >= 2 * self.limits.pipeline.max(1),
            None => blob.uploads.len() >= slots,
        };
        if busy {
            self.stats.busy += 1;
            out.push(Output::Send {
                peer,
                wire: Wire::Busy {
                    blob: id,
                    piece: index,
                },
                data: None,
            });
            return;
        }
        blob.uploads.entry(peer).or_default().push((index, now));
        let proof = blob.proof(index);
        let Some(info) = blob.info else {
            return;
        };
        blob.progress.uploaded_bytes += info.piece_len(index) as u64;
        match in_memory {
            Some(data) => out.push(Output::Send {
                peer,
                wire: Wire::Piece {
                    blob: id,
                    piece: index,
                    proof,
                },
                data: Some(data),
            }),
            None => out.push(Output::SendFromDisk {
                peer,
                blob: id,
                index,
                proof,
                info,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_piece(
        &mut self,
        peer: PeerId,
        id: BlobId,
        index: u32,
        proof: Vec<Hash>,
        data: Bytes,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(blob) = self.blobs.get_mut(&id) else {
            self.stats.unsolicited += 1;
            return;
        };
        let Some(info) = blob.info else {
            self.stats.unsolicited += 1;
            return;
        };
        if index >= blob.n {
            Self::charge(out, peer, 5, "a swarm piece past the end");
            return;
        }
        if blob.members.get(&peer).is_some_and(|m| m.bad) {
            // Known to lie about this blob: not worth a proof check.
            return;
        }
        blob.cancel(peer, index);
        if blob.have[index as usize] {
            blob.progress.duplicate_bytes += data.len() as u64;
            self.fill(id, now, out);
            return;
        }
        let valid = data.len() == info.piece_len(index)
            && merkle::verify(&info.root, blob.n, index, &data, &proof);
        if !valid {
            blob.progress.bad_pieces += 1;
            self.stats.bad_pieces += 1;
            if let Some(member) = blob.members.get_mut(&peer) {
                member.bad = true;
                // Nothing more is asked of it; what it still owes is asked elsewhere, and what
                // it claims to hold no longer counts toward a piece's availability.
                for (i, _) in std::mem::take(&mut member.inflight) {
                    let count = &mut blob.requested[i as usize];
                    *count = count.saturating_sub(1);
                }
                for (i, had) in member.has.iter_mut().enumerate() {
                    if std::mem::replace(had, false) {
                        blob.availability[i] = blob.availability[i].saturating_sub(1);
                    }
                }
                member.has_count = 0;
            }
            // The pusher learns of it: from two receivers, it stops dealing to the liar.
            if let Some(origin) = &blob.origin {
                out.push(Output::Send {
                    peer: origin.peer,
                    wire: Wire::Accuse { blob: id, peer },
                    data: None,
                });
            }
            Self::charge(
                out,
                peer,
                25,
                "a swarm piece that does not match the blob's id",
            );
            self.fill(id, now, out);
            return;
        }
        if let Some(member) = blob.members.get_mut(&peer) {
            member.timeouts = 0;
        }
        blob.last_progress = Some(now);
        blob.opened = false;
        blob.have[index as usize] = true;
        blob.have_count += 1;
        blob.pieces[index as usize] = Some(data.clone());
        out.push(Output::KeepPiece {
            blob: id,
            index,
            proof: proof.clone(),
            data: data.clone(),
            release: blob.on_disk.then_some(blob.incarnation),
        });
        blob.proofs[index as usize] = proof;
        blob.progress.received_bytes += data.len() as u64;
        // Requests for it elsewhere are forgotten; their answers count as duplicates.
        blob.requested[index as usize] = 0;
        for member in blob.members.values_mut() {
            member.inflight.retain(|(i, _)| *i != index);
        }
        for member in blob.members.keys() {
            out.push(Output::Send {
                peer: *member,
                wire: Wire::Got {
                    blob: id,
                    pieces: vec![index],
                },
                data: None,
            });
        }
        if blob.complete() {
            // Assembled into one buffer only when asked for (`get`): a node that only relays
            // serves the pieces as they came.
            out.push(Output::Complete { blob: id });
            return;
        }
        self.fill(id, now, out);
    }

    /// Asks members for pieces while they have free request slots: members that answer in
    /// time first, each up to `pipeline` requests; a member whose requests timed out, one.
    fn fill(&mut self, id: BlobId, now: Instant, out: &mut Vec<Output>) {
        let pipeline = self.limits.pipeline.max(1);
        let Some(blob) = self.blobs.get_mut(&id) else {
            return;
        };
        if blob.info.is_none() || blob.complete() {
            return;
        }
        let timeout = blob.piece_timeout(&self.limits);
        let open = blob.opened;
        let asking = Asking {
            local: self.local,
            connected: &self.connected,
            open,
            endgame: blob.n - blob.have_count <= self.limits.endgame,
        };
        let mut peers: Vec<(u32, PeerId)> = blob
            .members
            .iter()
            .filter(|(_, m)| !m.bad && m.has_count > 0 && m.busy_until.is_none_or(|at| at <= now))
            .map(|(p, m)| (m.timeouts, *p))
            .collect();
        peers.sort_unstable();
        for (timeouts, peer) in peers {
            let slots = if timeouts > 0 { 1 } else { pipeline };
            while let Some(index) = blob
                .members
                .get(&peer)
                .filter(|m| m.inflight.len() < slots)
                .and_then(|member| select(blob, peer, member, &asking))
            {
                blob.requested[index as usize] = blob.requested[index as usize].saturating_add(1);
                if let Some(member) = blob.members.get_mut(&peer) {
                    member.inflight.push((index, now + timeout));
                }
                out.push(Output::Send {
                    peer,
                    wire: Wire::Request {
                        blob: id,
                        piece: index,
                    },
                    data: None,
                });
            }
        }
    }

    /// Requests past their time are asked again elsewhere; a stalled deal is ended.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<Output>) {
        let ids: Vec<BlobId> = self.blobs.keys().copied().collect();
        for id in ids {
            let Some(blob) = self.blobs.get_mut(&id) else {
                continue;
            };
            let mut expired = Vec::new();
            for (peer, member) in &mut blob.members {
                member.inflight.retain(|(i, at)| {
                    let late = *at <= now;
                    if late {
                        expired.push((*peer, *i));
                    }
                    !late
                });
                if expired.iter().any(|(p, _)| p == peer) {
                    member.timeouts += 1;
                }
                if member.busy_until.is_some_and(|at| at <= now) {
                    member.busy_until = None;
                }
            }
            for (_, i) in &expired {
                let count = &mut blob.requested[*i as usize];
                *count = count.saturating_sub(1);
                blob.progress.timeouts += 1;
            }
            let stalled = blob
                .last_progress
                .is_some_and(|at| now.saturating_duration_since(at) >= self.limits.timeout_min);
            if blob.origin.is_some() && stalled && !blob.opened {
                blob.opened = true;
            }
            if let Some(origin) = blob.idle_offer(now) {
                self.stats.offers_evicted += 1;
                if self.connected.contains(&origin) {
                    out.push(Output::Send {
                        peer: origin,
                        wire: Wire::Decline { blob: id },
                        data: None,
                    });
                }
                self.remove(id, out);
                continue;
            }
            self.settle(id, now, out);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| {
            if next.is_none_or(|n| at < n) {
                next = Some(at);
            }
        };
        for blob in self.blobs.values() {
            for member in blob.members.values() {
                for (_, at) in &member.inflight {
                    consider(*at);
                }
                if let Some(at) = member.busy_until {
                    consider(at);
                }
            }
            if let (Some(_), Some(at)) = (&blob.origin, blob.last_progress) {
                if !blob.complete() && !blob.opened {
                    consider(at + self.limits.timeout_min);
                }
                if !blob.complete() && !blob.wanted {
                    consider(at + OFFER_IDLE);
                }
            }
        }
        next
    }
}

#[cfg(test)]
#[path = "core_share_tests.rs"]
mod share_tests;
