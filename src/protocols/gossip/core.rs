//! Gossip's state machine, pure: PlumTree over the neighbours that take part in each topic.
//! Publications go whole to a few *eager* neighbours per topic and as ids to the other (*lazy*)
//! ones; a duplicate turns its eager sender lazy (`Prune`), and an announced publication that
//! does not arrive in time is asked for and turns its announcer eager (`Graft`). The eager
//! links converge to a spanning tree: about one copy per node. Large publications are only
//! announced and fetched on demand (`Want`), so a node that has one costs an id, not a copy.
//!
//! Messages in, `now` in; messages out, deliveries out, one deadline. Signatures are checked
//! by a function the caller passes (the driver's checks the origin's key; the simulation's
//! accepts). Everything kept is bounded, with a counted policy when full.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{MsgId, Publication, Wire};
use crate::identity::{PeerId, PeerMap};

/// The bounds and timings the core works with (see `GossipConfig` for meanings and defaults).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) eager_degree: usize,
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
    pub(crate) graft_timeout: Duration,
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
            eager_degree: 6,
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
            graft_timeout: Duration::from_millis(500),
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
    /// Grafts and wants sent (repairs and fetches of announced publications).
    pub repairs: u64,
    /// Prunes sent (a duplicate arrived from an eager neighbour).
    pub prunes: u64,
    /// Payload bytes pushed whole.
    pub eager_bytes: u64,
    /// Id bytes announced.
    pub lazy_bytes: u64,
    /// Entries evicted from the seen or message cache because it was full.
    pub evicted: u64,
    /// Publications dropped: bad signature, too many hops, over the rate, no verdict in time,
    /// rejected or ignored.
    pub dropped: u64,
}

impl TopicStats {
    pub(crate) fn add(&mut self, other: &Self) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.announced += other.announced;
        self.repairs += other.repairs;
        self.prunes += other.prunes;
        self.eager_bytes += other.eager_bytes;
        self.lazy_bytes += other.lazy_bytes;
        self.evicted += other.evicted;
        self.dropped += other.dropped;
    }
}

#[derive(Debug)]
struct Cached {
    at: Instant,
    hops: u8,
    publication: Publication,
}

/// Requests for one announced publication before it is given up (counted as dropped).
const MAX_ASKS: u8 = 4;

/// Publications in a row fetched on announcement (the tree's copy late or absent) before a
/// fetch also grafts: a slow tree is left alone, a broken one is repaired.
const FETCHES_BEFORE_GRAFT: u32 = 3;

/// How the first copy of a publication came.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Off the tree: as an answer to our request, or forwarded from one (`Push::detour`). A
    /// later copy is then the tree's, slow, not a cycle's, and prunes nothing.
    detour: bool,
    hops: u8,
    /// The neighbour it came from (`None`: we published it).
    from: Option<PeerId>,
}

#[derive(Debug)]
struct Missing {
    /// Neighbours that announced it, oldest first, not asked yet.
    announcers: VecDeque<PeerId>,
    /// When to ask the next announcer.
    due: Instant,
    /// Large publications are fetched without grafting.
    large: bool,
    /// A request for it is out.
    asked: bool,
    /// Requests sent for it so far.
    asks: u8,
}

#[derive(Debug)]
struct Pending {
    from: PeerId,
    hops: u8,
    publication: Publication,
    due: Instant,
}

#[derive(Debug, Default)]
struct Topic {
    /// Delivered to the local application (subscribed), or only relayed.
    deliver: bool,
    eager: BTreeSet<PeerId>,
    lazy: BTreeSet<PeerId>,
    /// Publications seen, with how their first copy came.
    seen: HashMap<MsgId, Seen>,
    seen_order: VecDeque<(Instant, MsgId)>,
    cache: HashMap<MsgId, Cached>,
    cache_order: VecDeque<MsgId>,
    missing: BTreeMap<MsgId, Missing>,
    /// Publications in a row that had to be fetched: past `FETCHES_BEFORE_GRAFT` the tree
    /// is taken as broken here and the next fetch grafts its announcer.
    fetch_streak: u32,
    stats: TopicStats,
}

#[derive(Debug)]
struct Neighbour {
    /// Topics it said it takes part in (bounded by `max_topics`).
    topics: HashSet<String>,
    /// Ids (with their hops) to announce to it, by topic, sent every `announce_interval`.
    announce: BTreeMap<String, Vec<(MsgId, u8)>>,
    /// Push allowance (token bucket, refilled per second).
    tokens: u64,
    refilled: Instant,
}

/// Gossip for one node.
#[derive(Debug)]
pub(crate) struct Core {
    limits: Limits,
    topics: HashMap<String, Topic>,
    neighbours: PeerMap<Neighbour>,
    pending: HashMap<MsgId, Pending>,
    next_announce: Option<Instant>,
}

impl Core {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            topics: HashMap::new(),
            neighbours: PeerMap::default(),
            pending: HashMap::new(),
            next_announce: None,
        }
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
        let mut state = Topic {
            deliver,
            ..Topic::default()
        };
        for (peer, n) in &self.neighbours {
            if n.topics.contains(topic) {
                if state.eager.len() < self.limits.eager_degree {
                    state.eager.insert(*peer);
                } else {
                    state.lazy.insert(*peer);
                }
            }
        }
        for peer in self.neighbours.keys() {
            out.push(Output::Send {
                peer: *peer,
                wire: Wire::Join {
                    topics: vec![topic.to_owned()],
                },
            });
            // Lazy at both ends (after the join, which the neighbour handles first).
            if state.lazy.contains(peer) {
                out.push(Output::Send {
                    peer: *peer,
                    wire: Wire::Prune {
                        topic: topic.to_owned(),
                    },
                });
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
            for peer in self.neighbours.keys() {
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
            announce: BTreeMap::new(),
            tokens: self.limits.max_pushes_per_sec,
            refilled: now,
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

    /// A neighbour left: it leaves every topic; what only it announced is asked elsewhere
    /// (or given up).
    pub(crate) fn on_disconnected(&mut self, peer: PeerId, out: &mut Vec<Output>) {
        self.neighbours.remove(&peer);
        for (topic, state) in &mut self.topics {
            let was_eager = state.eager.remove(&peer);
            state.lazy.remove(&peer);
            if was_eager {
                promote(state, topic, out);
            }
            for missing in state.missing.values_mut() {
                missing.announcers.retain(|p| *p != peer);
            }
            state.missing.retain(|_, m| !m.announcers.is_empty());
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
        remember(
            state,
            &self.limits,
            id,
            now,
            Seen {
                detour: false,
                hops: 0,
                from: None,
            },
        );
        self.forward(None, 0, publication, id, now, out);
        Ok(id)
    }

    /// Sends a publication on: whole to the eager neighbours (unless it is large), as an id to
    /// the others; keeps it to answer grafts.
    fn forward(
        &mut self,
        from: Option<PeerId>,
        hops: u8,
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
        let detour = state.seen.get(&id).is_some_and(|s| s.detour);
        let mut announce_to = Vec::new();
        for peer in state.eager.iter().chain(state.lazy.iter()) {
            if Some(*peer) == from || *peer == publication.origin {
                continue;
            }
            if !large && state.eager.contains(peer) {
                state.stats.eager_bytes += publication.payload.len() as u64;
                out.push(Output::Send {
                    peer: *peer,
                    wire: Wire::Push {
                        hops: hops.saturating_add(1),
                        detour,
                        publication: publication.clone(),
                    },
                });
            } else {
                announce_to.push(*peer);
            }
        }
        state.stats.announced += announce_to.len() as u64;
        state.stats.lazy_bytes += 20 * announce_to.len() as u64;
        cache(state, limits, id, hops, publication.clone(), now);
        let topic = publication.topic;
        for peer in announce_to {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                let ids = n.announce.entry(topic.clone()).or_default();
                if ids.len() >= limits.max_announce_batch {
                    // Oldest first out: the newest ids matter most to a lagging neighbour.
                    ids.remove(0);
                    state.stats.evicted += 1;
                }
                ids.push((id, hops));
            }
        }
        if self.next_announce.is_none() {
            self.next_announce = Some(now + limits.announce_interval);
        }
    }

    // ---- receiving ----

    /// A message from neighbour `peer`. `verify` checks a new publication's signature.
    pub(crate) fn on_wire(
        &mut self,
        peer: PeerId,
        wire: Wire,
        now: Instant,
        verify: &mut dyn FnMut(&Publication, &MsgId) -> bool,
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
                    if let Some(n) = self.neighbours.get_mut(&peer) {
                        n.topics.remove(&topic);
                    }
                    if let Some(state) = self.topics.get_mut(&topic) {
                        let was_eager = state.eager.remove(&peer);
                        state.lazy.remove(&peer);
                        if was_eager {
                            promote(state, &topic, out);
                        }
                    }
                }
            }
            Wire::Push {
                hops,
                detour,
                publication,
            } => self.on_push(peer, hops, detour, publication, now, verify, out),
            Wire::IHave { topic, ids } => self.on_ihave(peer, &topic, ids, now, out),
            Wire::Graft { topic, ids } => {
                if let Some(state) = self.topics.get_mut(&topic) {
                    if state.lazy.remove(&peer) || state.eager.contains(&peer) {
                        state.eager.insert(peer);
                    }
                }
                self.serve(peer, &topic, ids, out);
            }
            Wire::Want { topic, ids } => self.serve(peer, &topic, ids, out),
            Wire::Prune { topic } => {
                if let Some(state) = self.topics.get_mut(&topic) {
                    if state.eager.remove(&peer) {
                        state.lazy.insert(peer);
                    }
                }
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
                if !state.eager.contains(&peer) && !state.lazy.contains(&peer) {
                    if state.eager.len() < self.limits.eager_degree {
                        state.eager.insert(peer);
                    } else {
                        // Full: lazy, and the neighbour is told, so the link is lazy at both
                        // ends (a link eager on one side only carries publications one way).
                        state.lazy.insert(peer);
                        out.push(Output::Send {
                            peer,
                            wire: Wire::Prune {
                                topic: topic.clone(),
                            },
                        });
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
        detour: bool,
        publication: Publication,
        now: Instant,
        verify: &mut dyn FnMut(&Publication, &MsgId) -> bool,
        out: &mut Vec<Output>,
    ) {
        let limits = self.limits.clone();
        if limits.max_pushes_per_sec > 0 {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                let elapsed = now.saturating_duration_since(n.refilled);
                let refill = (elapsed.as_micros() as u64).saturating_mul(limits.max_pushes_per_sec)
                    / 1_000_000;
                if refill > 0 {
                    n.tokens = (n.tokens + refill).min(limits.max_pushes_per_sec);
                    n.refilled = now;
                }
                if n.tokens == 0 {
                    if let Some(state) = self.topics.get_mut(&publication.topic) {
                        state.stats.dropped += 1;
                    }
                    return;
                }
                n.tokens -= 1;
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
        if let Some(&Seen {
            detour: first_detour,
            hops: first_hops,
            from: first_from,
        }) = state.seen.get(&id)
        {
            state.stats.duplicates += 1;
            if first_detour && !detour {
                // The tree's copy came after all: the tree is slow here, not broken.
                state.fetch_streak = 0;
            }
            // Two copies that both came along the tree mean it has a cycle through both
            // links: one of them goes lazy, both ways, which breaks the cycle whichever it is.
            // Keep the one whose copy made fewer hops, so the tree grows shallow (wide and
            // short paths for every publisher, not only the fastest for one). A copy off the
            // tree proves nothing. (The pruned neighbour may be one we hold as lazy already:
            // its view of the link can differ from ours.)
            if !first_detour && !detour {
                let longer = match first_from {
                    Some(first) if hops < first_hops && state.eager.contains(&first) => first,
                    _ => peer,
                };
                if state.eager.remove(&longer) || state.lazy.contains(&longer) {
                    state.lazy.insert(longer);
                    state.stats.prunes += 1;
                    out.push(Output::Send {
                        peer: longer,
                        wire: Wire::Prune {
                            topic: publication.topic,
                        },
                    });
                }
                if longer != peer {
                    // The shorter path is now this one.
                    if let Some(seen) = state.seen.get_mut(&id) {
                        seen.from = Some(peer);
                        seen.hops = hops;
                    }
                }
            }
            return;
        }
        if !verify(&publication, &id) {
            state.stats.dropped += 1;
            out.push(Output::Charge {
                peer,
                points: 10,
                why: "forged or altered publication",
            });
            return;
        }
        let fetched = state.missing.remove(&id).is_some_and(|m| m.asked);
        let detour = detour || fetched;
        // Remembered either way: a copy that made too many hops is not taken again either.
        let seen = Seen {
            detour,
            hops,
            from: Some(peer),
        };
        remember(state, &limits, id, now, seen);
        if hops >= limits.max_hops {
            state.stats.dropped += 1;
            return;
        }
        state.stats.received += 1;
        if fetched {
            state.fetch_streak += 1;
        } else {
            state.fetch_streak = 0;
            // A neighbour pushing along the tree is part of it: the link becomes eager on our
            // side too (views can differ: the eager cap at join time, a prune that crossed a
            // push), so publications from our side use it as well.
            if !detour && state.lazy.remove(&peer) {
                state.eager.insert(peer);
            }
        }
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
                    publication,
                    due: now + limits.validation_timeout,
                },
            );
        } else {
            self.forward(Some(peer), hops, publication, id, now, out);
        }
    }

    fn on_ihave(
        &mut self,
        peer: PeerId,
        topic: &str,
        ids: Vec<(MsgId, u8)>,
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
        for (id, _hops) in ids.into_iter().take(limits.max_announce_batch) {
            if state.seen.contains_key(&id) {
                continue;
            }
            let room = state.missing.len() < limits.max_missing;
            match state.missing.get_mut(&id) {
                Some(missing) => {
                    if missing.announcers.len() < 16 && !missing.announcers.contains(&peer) {
                        missing.announcers.push_back(peer);
                    }
                }
                None if room => {
                    // An eager neighbour announcing means the publication is large: fetch it
                    // now. From a lazy one, wait: the tree's copy is probably on its way.
                    let large = state.eager.contains(&peer);
                    let due = if large {
                        now
                    } else {
                        now + limits.graft_timeout
                    };
                    state.missing.insert(
                        id,
                        Missing {
                            announcers: VecDeque::from([peer]),
                            due,
                            large,
                            asked: false,
                            asks: 0,
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
                        detour: true,
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
        [self.next_announce, missing, pending]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sends due announcements, asks for overdue publications, expires caches and verdicts.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<Output>) {
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
            let graft = state.fetch_streak >= FETCHES_BEFORE_GRAFT;
            let mut asks: BTreeMap<(PeerId, bool), Vec<MsgId>> = BTreeMap::new();
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
                    asks.entry((announcer, missing.large || !graft))
                        .or_default()
                        .push(*id);
                    // One request out per id at a time; the next announcer (or this one again,
                    // when it is the only one: its answer may just be late) is asked only if
                    // this one does not deliver in time.
                    missing.announcers.push_back(announcer);
                    missing.due = now + limits.graft_timeout;
                }
            }
            let before = state.missing.len();
            state
                .missing
                .retain(|_, m| m.due > now || (!m.announcers.is_empty() && m.asks < MAX_ASKS));
            // Publications asked for MAX_ASKS times without an answer are given up.
            state.stats.dropped += (before - state.missing.len()) as u64;
            for ((peer, fetch_only), ids) in asks {
                state.stats.repairs += ids.len() as u64;
                let wire = if fetch_only {
                    Wire::Want {
                        topic: topic.clone(),
                        ids,
                    }
                } else {
                    state.fetch_streak = 0;
                    // The announcer becomes eager: the tree is repaired through it.
                    if state.lazy.remove(&peer) {
                        state.eager.insert(peer);
                    }
                    Wire::Graft {
                        topic: topic.clone(),
                        ids,
                    }
                };
                out.push(Output::Send { peer, wire });
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

    /// (eager, lazy) neighbours of `topic`.
    pub(crate) fn links(&self, topic: &str) -> (usize, usize) {
        self.topics
            .get(topic)
            .map_or((0, 0), |t| (t.eager.len(), t.lazy.len()))
    }
}

/// An eager neighbour is gone: one lazy neighbour takes its place, told with an empty graft
/// (the tree is repaired at once instead of after the next publications' fetches).
fn promote(state: &mut Topic, topic: &str, out: &mut Vec<Output>) {
    let Some(peer) = state.lazy.pop_first() else {
        return;
    };
    state.eager.insert(peer);
    out.push(Output::Send {
        peer,
        wire: Wire::Graft {
            topic: topic.to_owned(),
            ids: Vec::new(),
        },
    });
}

fn remember(state: &mut Topic, limits: &Limits, id: MsgId, now: Instant, seen: Seen) {
    if state.seen.len() >= limits.seen_capacity {
        if let Some((_, old)) = state.seen_order.pop_front() {
            state.seen.remove(&old);
            state.stats.evicted += 1;
        }
    }
    if state.seen.insert(id, seen).is_none() {
        state.seen_order.push_back((now, id));
    }
}

fn cache(
    state: &mut Topic,
    limits: &Limits,
    id: MsgId,
    hops: u8,
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
            publication,
        },
    );
    state.cache_order.push_back(id);
}

fn expire(state: &mut Topic, limits: &Limits, now: Instant) {
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
