//! Gossip's state machine, pure: a spanning tree per topic over the neighbours that take part
//! in it, with lazy announcements on every other link (PlumTree's push and repair on a tree
//! built like a bridge's spanning tree). Each node tells its neighbours its place in the tree
//! (`Tree`: the root it reaches and in how many hops); the root is the node of the lowest
//! rank (a hash of topic and id), and every other node takes as parent the neighbour nearest
//! that root. Publications go whole along the tree (*eager* links: the parent and the
//! children) and as ids to the other (*lazy*) neighbours; an announced publication that does
//! not arrive in time is fetched (`Want`). About one copy per node, and a tree that is the
//! same for every publisher, shallow (shortest paths to the root) and never split by
//! publications crossing. Large publications are only announced and fetched on demand, so a
//! node that has one costs an id, not a copy.
//!
//! Messages in, `now` in; messages out, deliveries out, one deadline. Signatures are checked
//! by the caller's [`Checks`] (the driver's checks the signer's key; the simulation's accepts)
//! and made by the signer the driver sets. Everything kept is bounded, with a counted policy
//! when full.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::source::{self, MAX_TREE_DIST, Offer, Source, newer};
use super::wire::{
    BY_SOURCE, MsgId, Publication, WOULD_PUSH, Wire, root_rank, seq_signed_bytes,
    source_signed_bytes,
};
use crate::identity::{PeerId, PeerMap};
use crate::session::rate::TokenBucket;

/// The bounds and timings the core works with (see `GossipConfig` for meanings and defaults).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_topics: usize,
    pub(crate) max_topic_len: usize,
    pub(crate) max_payload: usize,
    pub(crate) eager_max: usize,
    pub(crate) seen_capacity: usize,
    pub(crate) seen_ttl: Duration,
    pub(crate) cache_capacity: usize,
    pub(crate) cache_ttl: Duration,
    pub(crate) announce_interval: Duration,
    pub(crate) max_announce_batch: usize,
    pub(crate) fetch_timeout: Duration,
    pub(crate) max_missing: usize,
    pub(crate) validation_timeout: Duration,
    pub(crate) max_pending_validation: usize,
    pub(crate) max_hops: u8,
    pub(crate) max_pushes_per_sec: u64,
}

impl Limits {
    /// Values for tests and the simulation.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            max_topics: 64,
            max_topic_len: 128,
            max_payload: 1 << 20,
            eager_max: 64 * 1024,
            seen_capacity: 65_536,
            seen_ttl: Duration::from_secs(120),
            cache_capacity: 4096,
            cache_ttl: Duration::from_secs(30),
            announce_interval: Duration::from_millis(20),
            max_announce_batch: 5000,
            fetch_timeout: Duration::from_millis(500),
            max_missing: 4096,
            validation_timeout: Duration::from_secs(1),
            max_pending_validation: 1024,
            max_hops: 64,
            max_pushes_per_sec: 0,
        }
    }
}

/// The application's judgement of a delivered publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Not for us or not now: do not forward, charge nobody.
    Ignore,
    /// Invalid: do not forward, and charge the neighbour that relayed it.
    Reject,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    Send {
        peer: PeerId,
        wire: Wire,
    },
    /// A new publication for the local subscriber, to judge with [`Core::verdict`].
    Deliver {
        id: MsgId,
        topic: String,
        origin: PeerId,
        hops: u8,
        payload: Bytes,
    },
    /// `peer` broke the protocol or relayed something invalid.
    Charge {
        peer: PeerId,
        points: u32,
        why: &'static str,
    },
}

/// Why a publication was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Publish on a topic this node has not joined (subscribe or relay first).
    #[error("not joined to topic {0:?}; subscribe (or relay) first")]
    NotJoined(String),
    /// The payload exceeds `max_payload`.
    #[error("payload of {len} bytes exceeds the gossip limit of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why joining a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Already `max_topics` topics.
    #[error("already in {0} topics (max_topics); leave one first")]
    TooManyTopics(usize),
    /// The name is empty or longer than `max_topic_len`.
    #[error("topic name must be 1 to {0} bytes")]
    BadName(usize),
    /// Already subscribed to this topic (one `Topic` handle per topic).
    #[error("already subscribed to {0:?}")]
    AlreadySubscribed(String),
}

/// Counters of one topic (also summed over all topics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicStats {
    /// Publications this node originated.
    pub published: u64,
    /// Publications delivered to the local subscriber.
    pub delivered: u64,
    /// Publications received for the first time (delivered, relayed or dropped).
    pub received: u64,
    /// Copies received of publications already seen.
    pub duplicates: u64,
    /// Ids announced to lazy neighbours.
    pub announced: u64,
    /// Fetches sent (announced publications whose tree copy was late, and large ones).
    pub repairs: u64,
    /// Times this node changed its parent in the topic's tree (or became its root).
    pub parent_changes: u64,
    /// Payload bytes pushed whole.
    pub eager_bytes: u64,
    /// Id bytes announced.
    pub lazy_bytes: u64,
    /// Entries evicted from the seen or message cache because it was full.
    pub evicted: u64,
    /// Publications dropped: bad signature, too many hops, over the rate, no verdict in time,
    /// rejected or ignored.
    pub dropped: u64,
    /// Source trees not kept because `MAX_SOURCES` (8) were kept already: that origin's
    /// publications take the elected tree here.
    pub sources_refused: u64,
}

impl TopicStats {
    pub(crate) fn add(&mut self, other: &Self) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.announced += other.announced;
        self.repairs += other.repairs;
        self.parent_changes += other.parent_changes;
        self.eager_bytes += other.eager_bytes;
        self.lazy_bytes += other.lazy_bytes;
        self.evicted += other.evicted;
        self.dropped += other.dropped;
        self.sources_refused += other.sources_refused;
    }
}

#[derive(Debug)]
struct Cached {
    at: Instant,
    hops: u8,
    /// Routed by its origin's source tree (see `Wire::Push`).
    by_source: bool,
    publication: Publication,
}

/// Requests for one announced publication before it is given up (counted as dropped).
const MAX_ASKS: u8 = 4;

/// Roots whose feasibility is remembered per topic (the oldest record goes first past it).
const MAX_FEASIBLE: usize = 64;

/// How far ahead of our record a root's sequence number may be told: a root raises its number
/// at most once per `RAISE_INTERVAL`, and every raise reaches us, so an honest neighbour is
/// never far ahead. A place further ahead is refused and charged (it would make the ways our
/// neighbours offer look old, and keep us out of the tree).
const SEQ_WINDOW: u16 = 64;

/// A refresh not answered (the better root's ways still not takeable) is asked again after
/// this long.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// A feasibility record not renewed for this long is forgotten (our own root's is renewed as
/// long as we are in its tree): it is needed while an old tree empties (a second or two), and
/// a record made from a lying neighbour's place must not keep this node out of the tree for
/// ever.
const FEASIBLE_TTL: Duration = Duration::from_secs(60);

/// `Tree` and `Refresh` a neighbour may send per second, past a burst of one per topic.
const TREE_RATE: u64 = 64;

/// A root raises its sequence number at most this often: each raise is told down the whole
/// tree, so a neighbour sending `Refresh` after `Refresh` must not make the root flood it.
/// Requests in between are met together at the end of the interval.
const RAISE_INTERVAL: Duration = Duration::from_millis(500);

/// A place in a topic's tree: the root reached, its rank, the root's sequence number (and the
/// root's signature of it), the hops to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    root: PeerId,
    rank: u64,
    seq: u16,
    dist: u8,
    stamp: [u8; 64],
}

/// The signature checks the core needs from its caller.
pub(crate) trait Checks {
    /// Whether `publication` (whose id is `id`) is signed by its origin.
    fn publication(&mut self, publication: &Publication, id: &MsgId) -> bool;
    /// Whether `stamp` is `root`'s signature of `signed` (a sequence number of its tree).
    fn stamp(&mut self, root: &PeerId, signed: &[u8], stamp: &[u8; 64]) -> bool;
}

/// Tests pass a closure for publications; it accepts every stamp (the stamp tests pass a
/// `Checks` of their own).
#[cfg(test)]
impl<F: FnMut(&Publication, &MsgId) -> bool> Checks for F {
    fn publication(&mut self, publication: &Publication, id: &MsgId) -> bool {
        self(publication, id)
    }
    fn stamp(&mut self, _: &PeerId, _: &[u8], _: &[u8; 64]) -> bool {
        true
    }
}

/// Signs this node's sequence numbers as a root (the driver's signs with the node's key; with
/// none, as in most unit tests, the stamp is zeros).
pub(crate) type SignFn = Box<dyn Fn(&[u8]) -> [u8; 64] + Send + Sync>;

struct Signer(Option<SignFn>);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Signer"
        } else {
            "NoSigner"
        })
    }
}

impl Signer {
    fn stamp(&self, topic: &str, seq: u16) -> [u8; 64] {
        self.0
            .as_ref()
            .map_or([0; 64], |sign| sign(&seq_signed_bytes(topic, seq)))
    }

    /// The stamp of number `seq` of this node's source tree of `topic`.
    fn source_stamp(&self, topic: &str, seq: u16) -> [u8; 64] {
        self.0
            .as_ref()
            .map_or([0; 64], |sign| sign(&source_signed_bytes(topic, seq)))
    }
}

/// Stamps checked, per topic: a place told again with the same root, number and stamp is not
/// checked again (the oldest forgotten past the bound).
const MAX_STAMPS: usize = 64;

/// The best place towards `root` this node has told its neighbours: a way to that root is
/// taken only if it is newer (a higher `seq`) or strictly shorter, so it cannot lead through
/// this node or through a node that still counts on it (Babel's feasibility condition). That
/// is what keeps the distances towards a dead root from counting up round the old tree's
/// loops: a node whose way is gone and finds no feasible one leaves that root at once, and
/// asks the root for a new sequence number (`Refresh`), which only a live root can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Feasible {
    root: PeerId,
    seq: u16,
    dist: u8,
    /// When it was last told (see `FEASIBLE_TTL`).
    at: Instant,
}

impl Place {
    /// Lower is better: the root with the lowest rank, then the shortest way to it.
    fn key(&self) -> (u64, PeerId, u8) {
        (self.rank, self.root, self.dist)
    }
}

/// This node's place in a topic's tree, and its parent (`None`: it is the root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Own {
    place: Place,
    parent: Option<PeerId>,
}

/// A neighbour's place in a topic's tree, as it last told us.
#[derive(Debug, Clone, Copy)]
struct Told {
    place: Place,
    /// We are its parent.
    parent_is_us: bool,
}

#[derive(Debug)]
struct Missing {
    /// Neighbours that announced it, oldest first, not asked yet.
    announcers: VecDeque<PeerId>,
    /// When to ask the next announcer.
    due: Instant,
    /// A request for it is out.
    asked: bool,
    /// Requests sent for it so far.
    asks: u8,
    /// Announced by a tree neighbour, so large (see `LARGE_FETCH_WAIT`).
    large: bool,
}

/// How many `fetch_timeout`s a request for a large publication is given before the next
/// announcer is asked: its answer is a large transfer (slower on a loaded node than the
/// timeout), and asking again too soon costs a whole second copy. A lost announcer delays it
/// by this much instead.
const LARGE_FETCH_WAIT: u32 = 4;

#[derive(Debug)]
struct Pending {
    from: PeerId,
    hops: u8,
    by_source: bool,
    publication: Publication,
    due: Instant,
}

#[derive(Debug)]
struct Topic {
    /// Delivered to the local application (subscribed), or only relayed.
    deliver: bool,
    /// This node's place in the tree.
    own: Own,
    /// The tree's links here: the parent and the children (neighbours whose parent we are).
    eager: BTreeSet<PeerId>,
    /// The topic's other neighbours.
    lazy: BTreeSet<PeerId>,
    /// Publications seen.
    seen: HashSet<MsgId>,
    seen_order: VecDeque<(Instant, MsgId)>,
    cache: HashMap<MsgId, Cached>,
    cache_order: VecDeque<MsgId>,
    missing: BTreeMap<MsgId, Missing>,
    /// Per root (the current one and a few left lately), the best place told.
    feasible: Vec<Feasible>,
    /// The sequence number this node gives its tree as root (raised by `Refresh`), and its
    /// signature of it.
    seq: u16,
    stamp: [u8; 64],
    /// Stamps checked lately (root, sequence number, stamp), the newest first.
    stamps: VecDeque<(PeerId, u16, [u8; 64])>,
    /// The last `Refresh` passed on towards the root (root, seq): each once.
    refreshed: Option<(PeerId, u16)>,
    /// The last refresh this node asked for (root, seq, when), asked again after
    /// `REFRESH_RETRY` while the better place stays out of reach.
    asked: Option<(PeerId, u16, Instant)>,
    /// As root: when the sequence number was last raised, and a raise waiting for
    /// `RAISE_INTERVAL` to pass (to which number, when).
    raised: Option<Instant>,
    raise: Option<(u16, Instant)>,
    /// Source trees (see `source.rs`) by origin, this node's own among them while it keeps
    /// publishing; at most `source::MAX_SOURCES`.
    sources: BTreeMap<PeerId, Source>,
    /// When this node last published here (a second publication within `source::ACTIVE`
    /// roots its source tree).
    last_published: Option<Instant>,
    /// The number this node's source tree had last (only ever raised, so a tree rooted again
    /// after it was forgotten is newer than any record a neighbour kept of the old one).
    source_seq: u16,
    stats: TopicStats,
}

impl Topic {
    /// As root: raises this tree's number to `seq`, signed by `stamp`, at `now` (the two
    /// change together: a number told without its own stamp is refused).
    fn renumber(&mut self, seq: u16, stamp: [u8; 64], now: Instant) {
        self.seq = seq;
        self.stamp = stamp;
        self.raised = Some(now);
    }

    /// Whether a neighbour's place may be taken: a root we have no record of, a later
    /// sequence number, or the same one and a shorter way than any we told.
    fn feasible(&self, place: &Place) -> bool {
        self.feasible
            .iter()
            .find(|f| f.root == place.root)
            .is_none_or(|f| newer(place.seq, f.seq) || (place.seq == f.seq && place.dist < f.dist))
    }

    /// Records the place we tell (the newest first; the oldest forgotten past the bound).
    fn told_place(&mut self, place: &Place, now: Instant) {
        if let Some(i) = self.feasible.iter().position(|f| f.root == place.root) {
            let mut f = self.feasible.remove(i);
            if newer(place.seq, f.seq) {
                f.seq = place.seq;
                f.dist = place.dist;
            } else if place.seq == f.seq {
                f.dist = f.dist.min(place.dist);
            }
            f.at = now;
            self.feasible.insert(0, f);
        } else {
            self.feasible.insert(
                0,
                Feasible {
                    root: place.root,
                    seq: place.seq,
                    dist: place.dist,
                    at: now,
                },
            );
            self.feasible.truncate(MAX_FEASIBLE);
        }
    }
}

#[derive(Debug)]
struct Neighbour {
    /// Topics it said it takes part in (bounded by `max_topics`).
    topics: HashSet<String>,
    /// Its place in the trees of those topics we take part in too.
    told: HashMap<String, Told>,
    /// Ids (with their hops and flags) to announce to it, by topic, sent every
    /// `announce_interval`.
    announce: BTreeMap<String, Vec<(MsgId, u8, u8)>>,
    /// Push allowance (`max_pushes_per_sec`, as deep; 0 is no limit).
    pushes: TokenBucket,
    /// Allowance for `Tree` and `Refresh` (`max_topics` + `TREE_RATE` deep, `TREE_RATE` per
    /// second): each may make this node tell all its neighbours.
    trees: TokenBucket,
}

/// Gossip for one node.
#[derive(Debug)]
pub(crate) struct Core {
    /// This node.
    me: PeerId,
    /// The sequence number a topic's tree starts at when this node is its root: the driver
    /// sets it from the wall clock in quarter seconds, which runs faster than a root may raise
    /// (twice a second), so a node that restarts starts ahead of every number it used before.
    seq_base: u16,
    signer: Signer,
    limits: Limits,
    topics: HashMap<String, Topic>,
    neighbours: PeerMap<Neighbour>,
    pending: HashMap<MsgId, Pending>,
    next_announce: Option<Instant>,
}

impl Core {
    pub(crate) fn new(limits: Limits, me: PeerId) -> Self {
        Self {
            me,
            seq_base: 0,
            signer: Signer(None),
            limits,
            topics: HashMap::new(),
            neighbours: PeerMap::default(),
            pending: HashMap::new(),
            next_announce: None,
        }
    }

    /// Sets the sequence number trees joined from now on start at (see `Core::seq_base`).
    pub(crate) fn set_seq_base(&mut self, base: u16) {
        self.seq_base = base;
    }

    /// Sets how this node signs its sequence numbers as a root (see [`Wire::Tree`]'s stamp),
    /// for trees joined from now on.
    pub(crate) fn set_signer(&mut self, sign: SignFn) {
        self.signer = Signer(Some(sign));
    }

    // ---- membership ----

    /// Joins `topic`, delivering its publications (`deliver`) or only relaying them. Joining
    /// again as a subscriber upgrades a relay. Opens no connection: the topic's neighbours are
    /// the connected peers that take part in it too.
    pub(crate) fn join(
        &mut self,
        topic: &str,
        deliver: bool,
        out: &mut Vec<Output>,
    ) -> Result<(), JoinError> {
        if topic.is_empty() || topic.len() > self.limits.max_topic_len {
            return Err(JoinError::BadName(self.limits.max_topic_len));
        }
        if let Some(existing) = self.topics.get_mut(topic) {
            if deliver && existing.deliver {
                return Err(JoinError::AlreadySubscribed(topic.to_owned()));
            }
            existing.deliver |= deliver;
            return Ok(());
        }
        if self.topics.len() >= self.limits.max_topics {
            return Err(JoinError::TooManyTopics(self.limits.max_topics));
        }
        // The root of a tree of one, until the neighbours tell their places.
        let stamp = self.signer.stamp(topic, self.seq_base);
        let own = alone(self.me, topic, self.seq_base, stamp);
        let mut state = Topic {
            deliver,
            own,
            eager: BTreeSet::new(),
            lazy: BTreeSet::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            missing: BTreeMap::new(),
            feasible: Vec::new(),
            seq: self.seq_base,
            stamp,
            stamps: VecDeque::new(),
            refreshed: None,
            asked: None,
            raised: None,
            raise: None,
            sources: BTreeMap::new(),
            last_published: None,
            source_seq: self.seq_base,
            stats: TopicStats::default(),
        };
        for (peer, n) in &self.neighbours {
            if n.topics.contains(topic) {
                state.lazy.insert(*peer);
            }
        }
        for peer in self.neighbours.keys() {
            out.push(Output::Send {
                peer: *peer,
                wire: Wire::Join {
                    topics: vec![topic.to_owned()],
                },
            });
            // After the join, which the neighbour handles first; it answers with its place.
            if state.lazy.contains(peer) {
                out.push(tell(topic, &own, *peer));
            }
        }
        self.topics.insert(topic.to_owned(), state);
        Ok(())
    }

    /// Stops delivering `topic`; with `relay` false, leaves it altogether (forgetting its
    /// caches and telling the neighbours).
    pub(crate) fn leave(&mut self, topic: &str, relay: bool, out: &mut Vec<Output>) {
        if relay {
            if let Some(state) = self.topics.get_mut(topic) {
                state.deliver = false;
            }
            return;
        }
        if self.topics.remove(topic).is_some() {
            self.pending.retain(|_, p| p.publication.topic != topic);
            for (peer, n) in &mut self.neighbours {
                // What they told of this topic's tree, and ids waiting to be announced, go too:
                // joined again, the topic starts afresh.
                n.told.remove(topic);
                n.announce.remove(topic);
                out.push(Output::Send {
                    peer: *peer,
                    wire: Wire::Leave {
                        topics: vec![topic.to_owned()],
                    },
                });
            }
        }
    }

    /// A neighbour connected: tell it our topics (in batches).
    pub(crate) fn on_connected(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Output>) {
        self.neighbours.entry(peer).or_insert_with(|| Neighbour {
            topics: HashSet::new(),
            told: HashMap::new(),
            announce: BTreeMap::new(),
            pushes: TokenBucket::new(
                self.limits.max_pushes_per_sec,
                self.limits.max_pushes_per_sec,
                now,
            ),
            trees: TokenBucket::new(TREE_RATE, self.limits.max_topics as u64 + TREE_RATE, now),
        });
        let topics: Vec<String> = self.topics.keys().cloned().collect();
        for batch in topics.chunks(256) {
            out.push(Output::Send {
                peer,
                wire: Wire::Join {
                    topics: batch.to_vec(),
                },
            });
        }
    }

    /// A neighbour left: it leaves every topic (a tree it was in settles without it); what
    /// only it announced is asked elsewhere (or given up).
    pub(crate) fn on_disconnected(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Output>) {
        let Some(gone) = self.neighbours.remove(&peer) else {
            return;
        };
        for topic in gone.topics {
            let Some(state) = self.topics.get_mut(&topic) else {
                continue;
            };
            state.eager.remove(&peer);
            state.lazy.remove(&peer);
            for missing in state.missing.values_mut() {
                missing.announcers.retain(|p| *p != peer);
            }
            state.missing.retain(|_, m| !m.announcers.is_empty());
            self.settle(&topic, now, out);
            self.forget_source_offers(&topic, peer, out);
        }
    }

    /// Recomputes this node's place in `topic`'s tree from what the neighbours told: the
    /// parent is the neighbour nearest the best root among the ways it may take (feasible:
    /// see [`Feasible`]), the current parent kept on a tie (so the first neighbour to offer the
    /// shortest way, usually the fastest, stays); this node is the root when nobody offers a
    /// better one. The links follow: eager to the parent and to the children, lazy to the
    /// rest. A changed place is told to every neighbour in the topic. When a better place is
    /// offered only on ways it may not take, the neighbours offering it are asked to have its
    /// root refresh its sequence number (again after `REFRESH_RETRY` while that lasts).
    fn settle(&mut self, topic: &str, now: Instant, out: &mut Vec<Output>) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        // Records expire, but never our own root's: while we are in its tree, it is what keeps
        // a longer way through our own descendants from being taken.
        let current = state.own.place.root;
        state
            .feasible
            .retain(|f| f.root == current || now < f.at + FEASIBLE_TTL);
        let mut best: Option<(Place, PeerId)> = None;
        // The best place offered on a way we may not take.
        let mut blocked: Option<Place> = None;
        for (peer, n) in &self.neighbours {
            if !n.topics.contains(topic) {
                continue;
            }
            let Some(told) = n.told.get(topic) else {
                continue;
            };
            // A child's way to the root runs through us; a root named after us is an old
            // tree's (we would know); a distance at the bound is no way at all.
            if told.parent_is_us
                || told.place.root == self.me
                || told.place.dist >= MAX_TREE_DIST - 1
            {
                continue;
            }
            if !state.feasible(&told.place) {
                if blocked.is_none_or(|b| told.place.key() < b.key()) {
                    blocked = Some(told.place);
                }
                continue;
            }
            let better = match &best {
                None => true,
                Some((b, _)) => {
                    told.place.key() < b.key()
                        || (told.place.key() == b.key() && state.own.parent == Some(*peer))
                }
            };
            if better {
                best = Some((told.place, *peer));
            }
        }
        let alone = alone(self.me, topic, state.seq, state.stamp);
        let own = match best {
            Some((place, peer)) if place.key() < alone.place.key() => Own {
                place: Place {
                    dist: place.dist.saturating_add(1),
                    ..place
                },
                parent: Some(peer),
            },
            _ => alone,
        };
        let mut eager = BTreeSet::new();
        let mut lazy = BTreeSet::new();
        for (peer, n) in &self.neighbours {
            if !n.topics.contains(topic) {
                continue;
            }
            let child = n.told.get(topic).is_some_and(|t| t.parent_is_us);
            if own.parent == Some(*peer) || child {
                eager.insert(*peer);
            } else {
                lazy.insert(*peer);
            }
        }
        state.eager = eager;
        state.lazy = lazy;
        // A better root than ours is offered, but only on ways we may not take (they may
        // lead through us, as far as we know): ask it, through those neighbours, for a newer
        // sequence number. A live root gives one; a dead one cannot, and its old ways die out.
        // (Within our own root we hold the shortest feasible way already: a blocked one there
        // is an old number on its way out, and asks for nothing.)
        match blocked {
            Some(b) if (b.rank, b.root) < (own.place.rank, own.place.root) => {
                let seq = state
                    .feasible
                    .iter()
                    .find(|f| f.root == b.root)
                    .map_or(b.seq, |f| f.seq)
                    .wrapping_add(1);
                let due = state.asked.is_none_or(|(root, asked, at)| {
                    root != b.root || asked != seq || now >= at + REFRESH_RETRY
                });
                if due {
                    state.asked = Some((b.root, seq, now));
                    for (peer, n) in &self.neighbours {
                        if n.told.get(topic).is_some_and(|t| t.place.root == b.root) {
                            out.push(Output::Send {
                                peer: *peer,
                                wire: Wire::Refresh {
                                    topic: topic.to_owned(),
                                    root: b.root,
                                    seq,
                                },
                            });
                        }
                    }
                }
            }
            _ => state.asked = None,
        }
        // Feasibility records: of our root, and of roots still offered (a record nobody needs
        // any more is forgotten, so a root that comes back later starts afresh).
        if own.place.root != self.me {
            state.told_place(&own.place, now);
        }
        if own != state.own {
            if own.parent != state.own.parent {
                state.stats.parent_changes += 1;
            }
            state.own = own;
            for (peer, n) in &self.neighbours {
                if n.topics.contains(topic) {
                    out.push(tell(topic, &own, *peer));
                }
            }
        }
    }

    // ---- publishing ----

    /// Publishes a signed publication this node originated.
    pub(crate) fn publish(
        &mut self,
        publication: Publication,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<MsgId, PublishError> {
        let len = publication.payload.len();
        if len > self.limits.max_payload {
            return Err(PublishError::TooLarge {
                len,
                max: self.limits.max_payload,
            });
        }
        let id = publication.id();
        let Some(state) = self.topics.get_mut(&publication.topic) else {
            return Err(PublishError::NotJoined(publication.topic.clone()));
        };
        state.stats.published += 1;
        remember(state, &self.limits, id, now);
        // Before the publication, so every neighbour hears of the tree (a raise included)
        // before this publication reaches it on the same link.
        let by_source = self.publishing(&publication.topic, now, out);
        self.forward(None, 0, by_source, publication, id, now, out);
        Ok(id)
    }

    /// This node publishes on `topic`: a second publication within `source::ACTIVE` roots its
    /// source tree (told to every neighbour in the topic); then its number is raised at a
    /// publication once `source::RAISE` has passed, so nodes that lost their way take new
    /// ways. Returns whether this publication goes down the source tree: only once the tree
    /// has had `source::SETTLE` to be told across the topic (before, nodes that know of it and
    /// nodes that do not yet would each count on the other for a copy).
    fn publishing(&mut self, topic: &str, now: Instant, out: &mut Vec<Output>) -> bool {
        let me = self.me;
        let Some(state) = self.topics.get_mut(topic) else {
            return false;
        };
        let active = state
            .last_published
            .is_some_and(|at| now < at + source::ACTIVE);
        state.last_published = Some(now);
        let raise = match state.sources.get_mut(&me) {
            Some(own) => {
                own.at = now;
                own.raised.is_none_or(|at| now >= at + source::RAISE)
            }
            None if active => {
                if make_room(state, now) {
                    true
                } else {
                    state.stats.sources_refused += 1;
                    false
                }
            }
            None => false,
        };
        let settled = |state: &Topic| {
            state
                .sources
                .get(&me)
                .is_some_and(|own| now >= own.rooted + source::SETTLE)
        };
        if !raise {
            return settled(state);
        }
        state.source_seq = state.source_seq.wrapping_add(1);
        let seq = state.source_seq;
        let stamp = self.signer.source_stamp(topic, seq);
        let own = state
            .sources
            .entry(me)
            .or_insert_with(|| Source::rooted(seq, stamp, now));
        own.raise(seq, stamp, now);
        tell_source_all(&self.neighbours, topic, me, own, out);
        settled(state)
    }

    /// Sends a publication on: whole to the neighbours its tree reaches through us (the
    /// elected tree's links, or, `by_source`, the origin's source tree as below) unless it is
    /// large, as an id to the others; keeps it to answer fetches.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        from: Option<PeerId>,
        hops: u8,
        by_source: bool,
        publication: Publication,
        id: MsgId,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let limits = &self.limits;
        let Some(state) = self.topics.get_mut(&publication.topic) else {
            return;
        };
        let large = publication.payload.len() > limits.eager_max;
        // The origin's source tree, when this node knows of one: its children here get the
        // publication pushed, and of the elected tree's links only those to neighbours
        // without a way in it (they get nothing from the source tree). Otherwise the elected
        // tree's links.
        let routed = state.sources.get(&publication.origin).filter(|_| by_source);
        let flags = if routed.is_some() { BY_SOURCE } else { 0 };
        let mut announce_to = Vec::new();
        for peer in state.eager.iter().chain(state.lazy.iter()) {
            if Some(*peer) == from || *peer == publication.origin {
                continue;
            }
            let push = match routed {
                Some(tree) => {
                    tree.child(peer) || (state.eager.contains(peer) && !tree.in_tree(peer))
                }
                None => state.eager.contains(peer),
            };
            if !large && push {
                state.stats.eager_bytes += publication.payload.len() as u64;
                out.push(Output::Send {
                    peer: *peer,
                    wire: Wire::Push {
                        hops: hops.saturating_add(1),
                        by_source,
                        publication: publication.clone(),
                    },
                });
            } else {
                announce_to.push((*peer, flags | if push { WOULD_PUSH } else { 0 }));
            }
        }
        state.stats.announced += announce_to.len() as u64;
        state.stats.lazy_bytes += 20 * announce_to.len() as u64;
        cache(state, limits, id, hops, by_source, publication.clone(), now);
        let topic = publication.topic;
        for (peer, flags) in announce_to {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                let ids = n.announce.entry(topic.clone()).or_default();
                if ids.len() >= limits.max_announce_batch {
                    // Oldest first out: the newest ids matter most to a lagging neighbour.
                    ids.remove(0);
                    state.stats.evicted += 1;
                }
                ids.push((id, hops, flags));
            }
        }
        if self.next_announce.is_none() {
            self.next_announce = Some(now + limits.announce_interval);
        }
    }

    // ---- receiving ----

    /// A message from neighbour `peer`. `verify` checks a new publication's signature and a
    /// root's stamp not seen before.
    pub(crate) fn on_wire(
        &mut self,
        peer: PeerId,
        wire: Wire,
        now: Instant,
        verify: &mut dyn Checks,
        out: &mut Vec<Output>,
    ) {
        if !self.neighbours.contains_key(&peer) {
            // Messages from a peer we were not told is connected (a race with its event):
            // treat it as connected now.
            self.on_connected(peer, now, out);
        }
        match wire {
            Wire::Join { topics } => self.on_join(peer, topics, out),
            Wire::Leave { topics } => {
                for topic in topics {
                    // Only a topic it was in counts (a list of names it never joined, or the
                    // same name again, costs nothing).
                    let was_in = self.neighbours.get_mut(&peer).is_some_and(|n| {
                        n.told.remove(&topic);
                        n.topics.remove(&topic)
                    });
                    if !was_in {
                        continue;
                    }
                    if let Some(state) = self.topics.get_mut(&topic) {
                        state.eager.remove(&peer);
                        state.lazy.remove(&peer);
                        self.settle(&topic, now, out);
                        self.forget_source_offers(&topic, peer, out);
                    }
                }
            }
            Wire::Push {
                hops,
                by_source,
                publication,
            } => {
                self.on_push(peer, hops, by_source, publication, now, verify, out);
            }
            Wire::IHave { topic, ids } => self.on_ihave(peer, &topic, ids, now, out),
            Wire::Want { topic, ids } => self.serve(peer, &topic, ids, out),
            Wire::Tree {
                topic,
                root,
                seq,
                dist,
                parent,
                stamp,
            } => {
                if !self.tree_allowance(peer, now, out) {
                    return;
                }
                // Only for a topic both take part in (its join came first on this link).
                let Some(state) = self.topics.get(&topic) else {
                    return;
                };
                if dist == 0 && root != peer {
                    // Only a root is 0 hops from its root.
                    out.push(Output::Charge {
                        peer,
                        points: 10,
                        why: "gossip tree place 0 hops from another node",
                    });
                    return;
                }
                if state.feasible.iter().any(|f| {
                    f.root == root && newer(seq, f.seq) && seq.wrapping_sub(f.seq) > SEQ_WINDOW
                }) {
                    out.push(Output::Charge {
                        peer,
                        points: 1,
                        why: "gossip tree sequence number far ahead of its root's",
                    });
                    return;
                }
                if !self
                    .neighbours
                    .get(&peer)
                    .is_some_and(|n| n.topics.contains(&topic))
                {
                    return;
                }
                if !self.stamp_checked(&topic, root, seq, &stamp, verify) {
                    out.push(Output::Charge {
                        peer,
                        points: 10,
                        why: "gossip tree place with a sequence number its root did not sign",
                    });
                    return;
                }
                let Some(n) = self.neighbours.get_mut(&peer) else {
                    return;
                };
                let told = Told {
                    place: Place {
                        root,
                        rank: root_rank(&topic, &root),
                        seq,
                        dist,
                        stamp,
                    },
                    parent_is_us: parent,
                };
                n.told.insert(topic.clone(), told);
                self.settle(&topic, now, out);
            }
            Wire::Refresh { topic, root, seq } => {
                if self.tree_allowance(peer, now, out) {
                    self.on_refresh(&topic, root, seq, now, out);
                }
            }
            Wire::Source {
                topic,
                origin,
                seq,
                dist,
                parent,
                stamp,
            } => {
                if self.tree_allowance(peer, now, out) {
                    let offer = Offer {
                        seq,
                        dist,
                        parent_is_us: parent,
                        stamp,
                    };
                    self.on_source(peer, &topic, origin, offer, now, verify, out);
                }
            }
        }
    }

    /// A neighbour's way to `origin` in its source tree.
    #[allow(clippy::too_many_arguments)]
    fn on_source(
        &mut self,
        peer: PeerId,
        topic: &str,
        origin: PeerId,
        offer: Offer,
        now: Instant,
        verify: &mut dyn Checks,
        out: &mut Vec<Output>,
    ) {
        if !self
            .neighbours
            .get(&peer)
            .is_some_and(|n| n.topics.contains(topic))
        {
            return;
        }
        let me = self.me;
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        if offer.dist == 0 && origin != peer {
            out.push(Output::Charge {
                peer,
                points: 10,
                why: "gossip source tree way 0 hops from another node",
            });
            return;
        }
        if origin == me {
            // Of our own tree only who takes us as next hop matters (our children). Not
            // rooting one (any more): nothing to learn.
            if let Some(own) = state.sources.get_mut(&me) {
                own.offers.insert(peer, offer);
            }
            return;
        }
        let known = state.sources.contains_key(&origin);
        if !known {
            if offer.dist == source::NO_WAY {
                return; // nothing to learn of a tree from a neighbour with no way in it
            }
            if !make_room(state, now) {
                state.stats.sources_refused += 1;
                return;
            }
        }
        if offer.dist != source::NO_WAY {
            let tree = state.sources.get_mut(&origin);
            if tree
                .as_ref()
                .is_some_and(|t| t.far_ahead(offer.seq, SEQ_WINDOW))
            {
                out.push(Output::Charge {
                    peer,
                    points: 1,
                    why: "gossip source tree number far ahead of its origin's",
                });
                return;
            }
            let checked = tree.is_some_and(|t| t.stamp_known(offer.seq, &offer.stamp));
            if !checked {
                let signed = source_signed_bytes(topic, offer.seq);
                if !verify.stamp(&origin, &signed, &offer.stamp) {
                    out.push(Output::Charge {
                        peer,
                        points: 10,
                        why: "gossip source tree number its origin did not sign",
                    });
                    return;
                }
                state
                    .sources
                    .entry(origin)
                    .or_insert_with(|| Source::learned(now))
                    .stamp_checked(offer.seq, offer.stamp);
            }
        }
        let Some(tree) = state.sources.get_mut(&origin) else {
            return;
        };
        tree.at = now;
        tree.offers.insert(peer, offer);
        if tree.settle() {
            tell_source_all(&self.neighbours, topic, origin, tree, out);
        }
    }

    /// `peer` left `topic` (or disconnected): its ways in the source trees go, and ours are
    /// recomputed without them.
    fn forget_source_offers(&mut self, topic: &str, peer: PeerId, out: &mut Vec<Output>) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        for (origin, tree) in &mut state.sources {
            if tree.offers.remove(&peer).is_some() && tree.settle() {
                tell_source_all(&self.neighbours, topic, *origin, tree, out);
            }
        }
    }

    /// Whether `stamp` is `root`'s signature of number `seq` of `topic`'s tree: checked once,
    /// then remembered.
    fn stamp_checked(
        &mut self,
        topic: &str,
        root: PeerId,
        seq: u16,
        stamp: &[u8; 64],
        verify: &mut dyn Checks,
    ) -> bool {
        let Some(state) = self.topics.get_mut(topic) else {
            return false;
        };
        if let Some(i) = state
            .stamps
            .iter()
            .position(|(r, s, st)| *r == root && *s == seq && st == stamp)
        {
            if let Some(known) = state.stamps.remove(i) {
                state.stamps.push_front(known);
            }
            return true;
        }
        if !verify.stamp(&root, &seq_signed_bytes(topic, seq), stamp) {
            return false;
        }
        state.stamps.push_front((root, seq, *stamp));
        state.stamps.truncate(MAX_STAMPS);
        true
    }

    /// Takes one of `peer`'s `Tree`/`Refresh` tokens; none left: the message is dropped and
    /// the neighbour charged a point.
    fn tree_allowance(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Output>) -> bool {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return false;
        };
        if n.trees.try_take(1, now) {
            return true;
        }
        out.push(Output::Charge {
            peer,
            points: 1,
            why: "gossip tree messages over their rate",
        });
        false
    }

    /// A node lost its way to `root` and asks for sequence number `seq`: the root raises its
    /// own (to `seq` if that is at most `SEQ_WINDOW` ahead, else by one: a neighbour cannot
    /// move it far) and tells its tree; any other node in that tree passes the request to its
    /// parent, once per number. A node in another tree, or a dead root, lets it go.
    fn on_refresh(
        &mut self,
        topic: &str,
        root: PeerId,
        seq: u16,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        if state.own.place.root != root {
            return;
        }
        match state.own.parent {
            None => {
                if !newer(seq, state.seq) {
                    return;
                }
                let seq = if seq.wrapping_sub(state.seq) <= SEQ_WINDOW {
                    seq
                } else {
                    state.seq.wrapping_add(1)
                };
                if let Some((waiting, at)) = state.raise {
                    // A raise is waiting already: it goes as far as the highest asked.
                    if newer(seq, waiting) {
                        state.raise = Some((seq, at));
                    }
                    return;
                }
                let at = state.raised.map_or(now, |r| (r + RAISE_INTERVAL).max(now));
                if at <= now {
                    state.renumber(seq, self.signer.stamp(topic, seq), now);
                    state.raise = None;
                    self.settle(topic, now, out);
                } else {
                    state.raise = Some((seq, at));
                }
            }
            Some(parent) => {
                if state
                    .refreshed
                    .is_some_and(|(r, s)| r == root && !newer(seq, s))
                    || !newer(seq, state.own.place.seq)
                {
                    return;
                }
                state.refreshed = Some((root, seq));
                out.push(Output::Send {
                    peer: parent,
                    wire: Wire::Refresh {
                        topic: topic.to_owned(),
                        root,
                        seq,
                    },
                });
            }
        }
    }

    fn on_join(&mut self, peer: PeerId, topics: Vec<String>, out: &mut Vec<Output>) {
        let max = self.limits.max_topics;
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        let mut over = false;
        for topic in topics {
            if topic.len() > self.limits.max_topic_len {
                over = true;
                continue;
            }
            if n.topics.len() >= max && !n.topics.contains(&topic) {
                over = true;
                continue;
            }
            if let Some(state) = self.topics.get_mut(&topic) {
                // Lazy until the trees say otherwise; it learns our place, we learn its.
                if !state.eager.contains(&peer) && state.lazy.insert(peer) {
                    out.push(tell(&topic, &state.own, peer));
                    for (origin, tree) in &state.sources {
                        if tree.way.is_some() {
                            out.push(tell_source(&topic, *origin, tree, peer));
                        }
                    }
                }
            }
            n.topics.insert(topic);
        }
        if over {
            out.push(Output::Charge {
                peer,
                points: 1,
                why: "joined more topics than max_topics, or a name too long",
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_push(
        &mut self,
        peer: PeerId,
        hops: u8,
        by_source: bool,
        publication: Publication,
        now: Instant,
        verify: &mut dyn Checks,
        out: &mut Vec<Output>,
    ) {
        let limits = self.limits.clone();
        // (A rate of 0 is no limit: the bucket says so itself.)
        if let Some(n) = self.neighbours.get_mut(&peer) {
            if !n.pushes.try_take(1, now) {
                if let Some(state) = self.topics.get_mut(&publication.topic) {
                    state.stats.dropped += 1;
                }
                return;
            }
        }
        let Some(state) = self.topics.get_mut(&publication.topic) else {
            // Not ours (any more): a push that crossed our leave.
            return;
        };
        if publication.payload.len() > limits.max_payload {
            state.stats.dropped += 1;
            out.push(Output::Charge {
                peer,
                points: 1,
                why: "publication over max_payload",
            });
            return;
        }
        let id = publication.id();
        if state.seen.contains(&id) {
            // The tree changed under this publication, or its fetched copy beat the tree's.
            // The tree is the neighbours' places, not the copies: nothing to prune.
            state.stats.duplicates += 1;
            return;
        }
        if !verify.publication(&publication, &id) {
            state.stats.dropped += 1;
            out.push(Output::Charge {
                peer,
                points: 10,
                why: "forged or altered publication",
            });
            return;
        }
        state.missing.remove(&id);
        // Remembered either way: a copy that made too many hops is not taken again either.
        remember(state, &limits, id, now);
        if let Some(tree) = state.sources.get_mut(&publication.origin) {
            tree.at = now;
        }
        if hops >= limits.max_hops {
            state.stats.dropped += 1;
            return;
        }
        state.stats.received += 1;
        if state.deliver {
            if self.pending.len() >= limits.max_pending_validation {
                state.stats.dropped += 1;
                return;
            }
            state.stats.delivered += 1;
            out.push(Output::Deliver {
                id,
                topic: publication.topic.clone(),
                origin: publication.origin,
                hops,
                payload: publication.payload.clone(),
            });
            self.pending.insert(
                id,
                Pending {
                    from: peer,
                    hops,
                    by_source,
                    publication,
                    due: now + limits.validation_timeout,
                },
            );
        } else {
            self.forward(Some(peer), hops, by_source, publication, id, now, out);
        }
    }

    fn on_ihave(
        &mut self,
        peer: PeerId,
        topic: &str,
        ids: Vec<(MsgId, u8, u8)>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let limits = &self.limits;
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        if ids.len() > limits.max_announce_batch {
            out.push(Output::Charge {
                peer,
                points: 1,
                why: "announcement over max_announce_batch",
            });
        }
        for (id, _hops, flags) in ids.into_iter().take(limits.max_announce_batch) {
            if state.seen.contains(&id) {
                continue;
            }
            // No copy is coming from this neighbour: it says so, or (when it did not route by
            // a source tree) it is a link of ours in the elected tree, which pushes everything
            // small.
            let expected =
                flags & WOULD_PUSH != 0 || (flags & BY_SOURCE == 0 && state.eager.contains(&peer));
            let room = state.missing.len() < limits.max_missing;
            match state.missing.get_mut(&id) {
                Some(missing) => {
                    if missing.announcers.len() < 16 && !missing.announcers.contains(&peer) {
                        missing.announcers.push_back(peer);
                    }
                    if expected && !missing.large {
                        // Announced by a lazy neighbour first, now by a tree one: large. Not
                        // asked yet: ask the tree neighbour now. Asked: wait longer for it.
                        missing.large = true;
                        if missing.asked {
                            missing.due = missing
                                .due
                                .max(now + limits.fetch_timeout * (LARGE_FETCH_WAIT - 1));
                        } else if let Some(i) = missing.announcers.iter().position(|a| *a == peer) {
                            missing.announcers.remove(i);
                            missing.announcers.push_front(peer);
                            missing.due = now;
                        }
                    }
                }
                None if room => {
                    // An eager neighbour announcing means the publication is large: fetch it
                    // now. From a lazy one, wait: the tree's copy is probably on its way.
                    let large = expected;
                    let due = if large {
                        now
                    } else {
                        now + limits.fetch_timeout
                    };
                    state.missing.insert(
                        id,
                        Missing {
                            announcers: VecDeque::from([peer]),
                            due,
                            asked: false,
                            asks: 0,
                            large,
                        },
                    );
                }
                None => state.stats.evicted += 1,
            }
        }
    }

    fn serve(&mut self, peer: PeerId, topic: &str, ids: Vec<MsgId>, out: &mut Vec<Output>) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        for id in ids.into_iter().take(self.limits.max_announce_batch) {
            if let Some(cached) = state.cache.get(&id) {
                state.stats.eager_bytes += cached.publication.payload.len() as u64;
                out.push(Output::Send {
                    peer,
                    wire: Wire::Push {
                        hops: cached.hops.saturating_add(1),
                        by_source: cached.by_source,
                        publication: cached.publication.clone(),
                    },
                });
            }
        }
    }

    /// The application's verdict on a delivered publication.
    pub(crate) fn verdict(
        &mut self,
        id: MsgId,
        verdict: Verdict,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(pending) = self.pending.remove(&id) else {
            return; // too late: it counted as ignored
        };
        match verdict {
            Verdict::Accept => self.forward(
                Some(pending.from),
                pending.hops,
                pending.by_source,
                pending.publication,
                id,
                now,
                out,
            ),
            Verdict::Ignore => {
                if let Some(state) = self.topics.get_mut(&pending.publication.topic) {
                    state.stats.dropped += 1;
                }
            }
            Verdict::Reject => {
                if let Some(state) = self.topics.get_mut(&pending.publication.topic) {
                    state.stats.dropped += 1;
                }
                out.push(Output::Charge {
                    peer: pending.from,
                    points: 10,
                    why: "relayed a publication the application rejected",
                });
            }
        }
    }

    // ---- time ----

    /// The next time [`Core::poll`] has work.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let missing = self
            .topics
            .values()
            .flat_map(|t| t.missing.values().map(|m| m.due))
            .min();
        let pending = self.pending.values().map(|p| p.due).min();
        let raise = self
            .topics
            .values()
            .filter_map(|t| t.raise.map(|(_, at)| at))
            .min();
        [self.next_announce, missing, pending, raise]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sends due announcements, asks for overdue publications, expires caches and verdicts.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<Output>) {
        let raises: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, t)| t.raise.is_some_and(|(_, at)| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for topic in raises {
            if let Some(state) = self.topics.get_mut(&topic) {
                if let Some((seq, _)) = state.raise.take() {
                    state.renumber(seq, self.signer.stamp(&topic, seq), now);
                }
            }
            self.settle(&topic, now, out);
        }
        if self.next_announce.is_some_and(|at| at <= now) {
            self.next_announce = None;
            for (peer, n) in &mut self.neighbours {
                for (topic, ids) in std::mem::take(&mut n.announce) {
                    out.push(Output::Send {
                        peer: *peer,
                        wire: Wire::IHave { topic, ids },
                    });
                }
            }
        }
        let limits = self.limits.clone();
        for (topic, state) in &mut self.topics {
            let mut asks: BTreeMap<PeerId, Vec<MsgId>> = BTreeMap::new();
            for (id, missing) in &mut state.missing {
                if missing.due > now {
                    continue;
                }
                if missing.asks >= MAX_ASKS {
                    continue; // given up below
                }
                if let Some(announcer) = missing.announcers.pop_front() {
                    missing.asked = true;
                    missing.asks += 1;
                    asks.entry(announcer).or_default().push(*id);
                    // One request out per id at a time; the next announcer (or this one again,
                    // when it is the only one: its answer may just be late) is asked only if
                    // this one does not deliver in time.
                    missing.announcers.push_back(announcer);
                    missing.due = now
                        + if missing.large {
                            limits.fetch_timeout * LARGE_FETCH_WAIT
                        } else {
                            limits.fetch_timeout
                        };
                }
            }
            // Publications asked for MAX_ASKS times without an answer are given up: every other
            // id due was just asked again (its announcers are never empty: one is put back
            // after each ask, and a disconnect removes an id whose last announcer went), so
            // an id still due is one past its last ask's wait.
            let before = state.missing.len();
            state.missing.retain(|_, m| m.due > now);
            state.stats.dropped += (before - state.missing.len()) as u64;
            for (peer, ids) in asks {
                state.stats.repairs += ids.len() as u64;
                out.push(Output::Send {
                    peer,
                    wire: Wire::Want {
                        topic: topic.clone(),
                        ids,
                    },
                });
            }
            expire(state, &limits, now);
        }
        let overdue: Vec<MsgId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            // No verdict in time counts as Ignore.
            self.verdict(id, Verdict::Ignore, now, out);
        }
    }

    // ---- observation ----

    pub(crate) fn stats(&self, topic: &str) -> Option<TopicStats> {
        self.topics.get(topic).map(|t| t.stats.clone())
    }

    pub(crate) fn total_stats(&self) -> TopicStats {
        let mut total = TopicStats::default();
        for t in self.topics.values() {
            total.add(&t.stats);
        }
        total
    }

    pub(crate) fn topics(&self) -> Vec<(String, bool)> {
        let mut topics: Vec<_> = self
            .topics
            .iter()
            .map(|(n, t)| (n.clone(), t.deliver))
            .collect();
        topics.sort();
        topics
    }

    /// Neighbours known to be connected.
    pub(crate) fn neighbours(&self) -> Vec<PeerId> {
        self.neighbours.keys().copied().collect()
    }

    /// The eager neighbours of `topic` (the simulation reads the tree from them).
    #[cfg(test)]
    pub(crate) fn eager(&self, topic: &str) -> Vec<PeerId> {
        self.topics
            .get(topic)
            .map_or_else(Vec::new, |t| t.eager.iter().copied().collect())
    }

    /// This node's place in `topic`'s tree: (root, hops to it, parent).
    #[cfg(test)]
    pub(crate) fn place(&self, topic: &str) -> Option<(PeerId, u8, Option<PeerId>)> {
        self.topics
            .get(topic)
            .map(|t| (t.own.place.root, t.own.place.dist, t.own.parent))
    }

    /// This node's way in `origin`'s source tree of `topic`: hops and next hop (`None`: it is
    /// the origin); `None` without one.
    #[cfg(test)]
    pub(crate) fn source_way(&self, topic: &str, origin: &PeerId) -> Option<(u8, Option<PeerId>)> {
        self.topics
            .get(topic)?
            .sources
            .get(origin)?
            .way
            .map(|w| (w.dist, w.parent))
    }

    /// The sequence number of `topic`'s root as this node knows it.
    #[cfg(test)]
    pub(crate) fn root_seq(&self, topic: &str) -> Option<u16> {
        self.topics.get(topic).map(|t| t.own.place.seq)
    }

    /// (eager, lazy) neighbours of `topic`.
    pub(crate) fn links(&self, topic: &str) -> (usize, usize) {
        self.topics
            .get(topic)
            .map_or((0, 0), |t| (t.eager.len(), t.lazy.len()))
    }
}

/// `me` as the root of a tree of one in `topic`, at sequence number `seq`.
fn alone(me: PeerId, topic: &str, seq: u16, stamp: [u8; 64]) -> Own {
    Own {
        place: Place {
            root: me,
            rank: root_rank(topic, &me),
            seq,
            dist: 0,
            stamp,
        },
        parent: None,
    }
}

/// The message that tells `peer` our place in `topic`'s tree.
fn tell(topic: &str, own: &Own, peer: PeerId) -> Output {
    Output::Send {
        peer,
        wire: Wire::Tree {
            topic: topic.to_owned(),
            root: own.place.root,
            seq: own.place.seq,
            dist: own.place.dist,
            parent: own.parent == Some(peer),
            stamp: own.place.stamp,
        },
    }
}

fn remember(state: &mut Topic, limits: &Limits, id: MsgId, now: Instant) {
    if state.seen.len() >= limits.seen_capacity {
        if let Some((_, old)) = state.seen_order.pop_front() {
            state.seen.remove(&old);
            state.stats.evicted += 1;
        }
    }
    if state.seen.insert(id) {
        state.seen_order.push_back((now, id));
    }
}

fn cache(
    state: &mut Topic,
    limits: &Limits,
    id: MsgId,
    hops: u8,
    by_source: bool,
    publication: Publication,
    now: Instant,
) {
    if state.cache.contains_key(&id) {
        return;
    }
    if state.cache.len() >= limits.cache_capacity {
        if let Some(old) = state.cache_order.pop_front() {
            state.cache.remove(&old);
            state.stats.evicted += 1;
        }
    }
    state.cache.insert(
        id,
        Cached {
            at: now,
            hops,
            by_source,
            publication,
        },
    );
    state.cache_order.push_back(id);
}

/// Forgets the source trees idle for `source::TTL`; whether there is room for one more.
fn make_room(state: &mut Topic, now: Instant) -> bool {
    state
        .sources
        .retain(|_, tree| now.saturating_duration_since(tree.at) < source::TTL);
    state.sources.len() < source::MAX_SOURCES
}

/// The message that tells `peer` our way in `origin`'s source tree of `topic`.
fn tell_source(topic: &str, origin: PeerId, tree: &Source, peer: PeerId) -> Output {
    let (seq, dist, parent, stamp) = tree.told_to(&peer);
    Output::Send {
        peer,
        wire: Wire::Source {
            topic: topic.to_owned(),
            origin,
            seq,
            dist,
            parent,
            stamp,
        },
    }
}

/// Tells every neighbour in `topic` our way in `origin`'s source tree.
fn tell_source_all(
    neighbours: &PeerMap<Neighbour>,
    topic: &str,
    origin: PeerId,
    tree: &Source,
    out: &mut Vec<Output>,
) {
    for (peer, n) in neighbours {
        if n.topics.contains(topic) {
            out.push(tell_source(topic, origin, tree, *peer));
        }
    }
}

fn expire(state: &mut Topic, limits: &Limits, now: Instant) {
    make_room(state, now);
    while let Some(&(at, id)) = state.seen_order.front() {
        if now.saturating_duration_since(at) < limits.seen_ttl {
            break;
        }
        state.seen_order.pop_front();
        state.seen.remove(&id);
    }
    while let Some(id) = state.cache_order.front() {
        match state.cache.get(id) {
            Some(c) if now.saturating_duration_since(c.at) < limits.cache_ttl => break,
            _ => {
                if let Some(id) = state.cache_order.pop_front() {
                    state.cache.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
