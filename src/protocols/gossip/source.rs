//! Source trees, pure: besides the topic's one elected tree, a publisher that keeps publishing
//! roots a tree of its own, built from shortest distances to it, and its publications go down
//! that tree. The elected tree serves every publisher, but a publication from a node far from
//! its root climbs to the root and down again (up to twice the root's distance across); a
//! source tree takes it the shortest way, as few hops as the publisher's distance to the
//! farthest node.
//!
//! A node's place in a source tree is kept like its place in the elected tree (a distance
//! vector with Babel's feasibility, a number only the origin can raise, signed by it), with two
//! simplifications: the root is fixed (the origin), so there is no election; and a node that
//! loses its way and may take no other has *no way* until the origin raises its number (at
//! its next publication once `RAISE` has passed), and meanwhile gets the origin's publications
//! along the elected tree, from the neighbours that know it has no way. No publication waits on
//! a source tree: one that is incomplete is filled by the elected tree and the announcements.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::identity::PeerId;

/// Distances in a tree (the elected one or a source tree) at or beyond this are unreachable (a
/// tree deeper than this would be cut in two, joined by fetches).
pub(super) const MAX_TREE_DIST: u8 = 32;

/// The distance that says "I have no way to this origin" (sent when a way is lost).
pub(super) const NO_WAY: u8 = u8::MAX;

/// Source trees kept per topic: a new origin past it is refused (counted `sources_refused`)
/// and its publications take the elected tree.
pub(super) const MAX_SOURCES: usize = 8;

/// A publisher whose previous publication on a topic is at most this old roots a tree of its
/// own: a one-off publisher costs no tree (telling a tree costs a message on every link).
pub(super) const ACTIVE: Duration = Duration::from_secs(10);

/// An origin raises its tree's number at a publication once this long has passed since the
/// last raise: nodes that lost their way (a failure) take the new number's ways, within a
/// publication of it.
pub(super) const RAISE: Duration = Duration::from_secs(5);

/// A publisher's publications go down its source tree once this long has passed since it
/// rooted it (a tree is told across the topic at the speed of the links; until then they take
/// the elected tree, as before it was rooted).
pub(super) const SETTLE: Duration = Duration::from_millis(250);

/// A source tree with no publication and no message about it for this long is forgotten
/// (everywhere at about the same time, since everybody sees the same publications; an origin
/// that publishes again after it raises first, which tells the tree again).
pub(super) const TTL: Duration = Duration::from_secs(60);

/// Stamps remembered per origin (checked once each).
const MAX_STAMPS: usize = 4;

/// Sequence number `a` is later than `b` (wrapping); for both kinds of tree.
pub(super) fn newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

/// What a neighbour last told of its way to one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Offer {
    pub(super) seq: u16,
    /// `NO_WAY`: it has none.
    pub(super) dist: u8,
    /// We are its next hop towards the origin.
    pub(super) parent_is_us: bool,
    pub(super) stamp: [u8; 64],
}

/// This node's way to one origin: the origin's number (and signature), the distance, the next
/// hop (`None`: this node is the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Way {
    pub(super) seq: u16,
    pub(super) dist: u8,
    pub(super) parent: Option<PeerId>,
    pub(super) stamp: [u8; 64],
}

/// One origin's tree, as this node sees it.
#[derive(Debug)]
pub(super) struct Source {
    /// Our way to the origin (`None`: none we may take).
    pub(super) way: Option<Way>,
    /// The shortest distance we told at the latest number we told (Babel's feasibility: a way
    /// is taken only at a later number, or at this one and strictly shorter, so it cannot lead
    /// through us).
    feasible: Option<(u16, u8)>,
    /// The neighbours' ways, as they told them (ordered, so ties are broken the same way on
    /// every run).
    pub(super) offers: BTreeMap<PeerId, Offer>,
    /// Last publication or message about this origin (see `TTL`).
    pub(super) at: Instant,
    /// As the origin: when the number was last raised, and when the tree was rooted.
    pub(super) raised: Option<Instant>,
    pub(super) rooted: Instant,
    /// Stamps checked lately (number, stamp).
    stamps: VecDeque<(u16, [u8; 64])>,
}

impl Source {
    /// A tree this node learned of from a neighbour: no way yet.
    pub(super) fn learned(now: Instant) -> Self {
        Self {
            way: None,
            feasible: None,
            offers: BTreeMap::new(),
            at: now,
            raised: None,
            rooted: now,
            stamps: VecDeque::new(),
        }
    }

    /// This node's own tree, at number `seq` signed by `stamp`.
    pub(super) fn rooted(seq: u16, stamp: [u8; 64], now: Instant) -> Self {
        Self {
            way: Some(Way {
                seq,
                dist: 0,
                parent: None,
                stamp,
            }),
            raised: Some(now),
            ..Self::learned(now)
        }
    }

    /// Whether this node is the origin.
    pub(super) fn is_origin(&self) -> bool {
        self.way.is_some_and(|w| w.parent.is_none())
    }

    /// As the origin: the tree's number becomes `seq`, signed by `stamp`.
    pub(super) fn raise(&mut self, seq: u16, stamp: [u8; 64], now: Instant) {
        self.way = Some(Way {
            seq,
            dist: 0,
            parent: None,
            stamp,
        });
        self.raised = Some(now);
        self.at = now;
    }

    /// Whether a number `seq` is more than `window` ahead of the latest we know: refused (a
    /// neighbour claiming a number far ahead would make every honest way look old).
    pub(super) fn far_ahead(&self, seq: u16, window: u16) -> bool {
        self.feasible
            .is_some_and(|(known, _)| newer(seq, known) && seq.wrapping_sub(known) > window)
    }

    /// Whether `stamp` was checked already for number `seq` (and keeps it first).
    pub(super) fn stamp_known(&mut self, seq: u16, stamp: &[u8; 64]) -> bool {
        let Some(i) = self
            .stamps
            .iter()
            .position(|(s, st)| *s == seq && st == stamp)
        else {
            return false;
        };
        if let Some(known) = self.stamps.remove(i) {
            self.stamps.push_front(known);
        }
        true
    }

    /// Remembers a stamp that checked.
    pub(super) fn stamp_checked(&mut self, seq: u16, stamp: [u8; 64]) {
        self.stamps.push_front((seq, stamp));
        self.stamps.truncate(MAX_STAMPS);
    }

    fn may_take(&self, offer: &Offer) -> bool {
        self.feasible.is_none_or(|(seq, dist)| {
            newer(offer.seq, seq) || (offer.seq == seq && offer.dist < dist)
        })
    }

    /// Recomputes our way from the offers: the shortest we may take, the current next hop
    /// kept on a tie (the first to offer the shortest way, usually the fastest, stays). The
    /// origin's way never changes here. Returns whether the way changed (to be told).
    pub(super) fn settle(&mut self) -> bool {
        if self.is_origin() {
            return false;
        }
        let current = self.way.and_then(|w| w.parent);
        let mut best: Option<(PeerId, Offer)> = None;
        for (peer, offer) in &self.offers {
            if offer.parent_is_us || offer.dist >= MAX_TREE_DIST - 1 || !self.may_take(offer) {
                continue;
            }
            let better = best.is_none_or(|(_, b)| {
                offer.dist < b.dist || (offer.dist == b.dist && current == Some(*peer))
            });
            if better {
                best = Some((*peer, *offer));
            }
        }
        let way = best.map(|(peer, offer)| Way {
            seq: offer.seq,
            dist: offer.dist + 1,
            parent: Some(peer),
            stamp: offer.stamp,
        });
        if let Some(w) = way {
            self.feasible = Some(match self.feasible {
                Some((seq, dist)) if seq == w.seq => (seq, dist.min(w.dist)),
                Some((seq, dist)) if newer(seq, w.seq) => (seq, dist),
                _ => (w.seq, w.dist),
            });
        }
        let changed = way != self.way;
        self.way = way;
        changed
    }

    /// `peer` takes us as its next hop towards the origin: it gets the origin's publications
    /// from us.
    pub(super) fn child(&self, peer: &PeerId) -> bool {
        self.offers
            .get(peer)
            .is_some_and(|o| o.parent_is_us && o.dist != NO_WAY)
    }

    /// `peer` has a way to the origin: it gets the origin's publications from its own next
    /// hop, not along the elected tree.
    pub(super) fn in_tree(&self, peer: &PeerId) -> bool {
        self.offers.get(peer).is_some_and(|o| o.dist != NO_WAY)
    }

    /// What we tell `peer` of our way (`NO_WAY` when we have none).
    pub(super) fn told_to(&self, peer: &PeerId) -> (u16, u8, bool, [u8; 64]) {
        match self.way {
            Some(w) => (w.seq, w.dist, w.parent == Some(*peer), w.stamp),
            None => (
                self.feasible.map_or(0, |(seq, _)| seq),
                NO_WAY,
                false,
                [0; 64],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn offer(seq: u16, dist: u8) -> Offer {
        Offer {
            seq,
            dist,
            parent_is_us: false,
            stamp: [0; 64],
        }
    }

    #[test]
    fn the_shortest_way_is_taken_and_kept_on_a_tie() {
        let now = Instant::now();
        let mut s = Source::learned(now);
        s.offers.insert(peer(2), offer(1, 3));
        assert!(s.settle());
        assert_eq!(s.way.map(|w| (w.dist, w.parent)), Some((4, Some(peer(2)))));
        // A shorter way wins; an equal one does not move us.
        s.offers.insert(peer(1), offer(1, 3));
        assert!(!s.settle(), "a tie keeps the current next hop");
        s.offers.insert(peer(3), offer(1, 1));
        assert!(s.settle());
        assert_eq!(s.way.map(|w| (w.dist, w.parent)), Some((2, Some(peer(3)))));
        assert!(!s.settle(), "settled: nothing to tell");
    }

    #[test]
    fn a_lost_way_is_replaced_only_by_a_shorter_or_newer_one() {
        let now = Instant::now();
        let mut s = Source::learned(now);
        s.offers.insert(peer(1), offer(5, 1));
        s.offers.insert(peer(2), offer(5, 1));
        s.offers.insert(peer(3), offer(5, 3));
        s.settle();
        assert_eq!(s.way.map(|w| (w.dist, w.parent)), Some((2, Some(peer(1)))));
        // The next hop goes: the other way as short as it was is still ours to take.
        s.offers.remove(&peer(1));
        assert!(s.settle());
        assert_eq!(s.way.map(|w| (w.dist, w.parent)), Some((2, Some(peer(2)))));
        // That one goes too: peer 3's way (3 hops) may lead through us (we told 2): no way.
        s.offers.remove(&peer(2));
        assert!(s.settle());
        assert_eq!(s.way, None);
        assert_eq!(s.told_to(&peer(3)).1, NO_WAY);
        // The origin raises its number: the same neighbour's way at the new number is taken.
        s.offers.insert(peer(3), offer(6, 3));
        assert!(s.settle());
        assert_eq!(s.way.map(|w| (w.seq, w.dist)), Some((6, 4)));
    }

    #[test]
    fn children_and_neighbours_without_a_way_are_not_offers() {
        let now = Instant::now();
        let mut s = Source::learned(now);
        s.offers.insert(
            peer(1),
            Offer {
                parent_is_us: true,
                ..offer(1, 1)
            },
        );
        s.offers.insert(peer(2), offer(1, NO_WAY));
        s.offers.insert(peer(3), offer(1, MAX_TREE_DIST - 1));
        assert!(!s.settle());
        assert_eq!(s.way, None);
        assert!(s.child(&peer(1)) && s.in_tree(&peer(1)));
        assert!(!s.child(&peer(2)) && !s.in_tree(&peer(2)));
        assert!(!s.child(&peer(3)) && s.in_tree(&peer(3)));
    }

    #[test]
    fn the_origin_s_way_is_its_own_and_tells_the_next_hop_only_to_it() {
        let now = Instant::now();
        let mut s = Source::rooted(7, [1; 64], now);
        s.offers.insert(peer(1), offer(7, 0));
        assert!(!s.settle(), "an origin takes no way");
        assert!(s.is_origin());
        assert_eq!(s.told_to(&peer(1)), (7, 0, false, [1; 64]));
        s.raise(8, [2; 64], now);
        assert_eq!(s.told_to(&peer(1)), (8, 0, false, [2; 64]));

        let mut t = Source::learned(now);
        t.offers.insert(peer(4), offer(9, 0));
        t.settle();
        assert_eq!(t.told_to(&peer(4)), (9, 1, true, [0; 64]));
        assert_eq!(t.told_to(&peer(5)), (9, 1, false, [0; 64]));
    }

    #[test]
    fn numbers_far_ahead_are_flagged_and_stamps_are_remembered() {
        let now = Instant::now();
        let mut s = Source::learned(now);
        assert!(!s.far_ahead(1000, 64), "nothing known yet");
        s.offers.insert(peer(1), offer(10, 0));
        s.settle();
        assert!(!s.far_ahead(74, 64));
        assert!(s.far_ahead(75, 64));
        assert!(!s.far_ahead(9, 64), "an older number is not ahead");
        assert!(!s.stamp_known(10, &[3; 64]));
        s.stamp_checked(10, [3; 64]);
        assert!(s.stamp_known(10, &[3; 64]));
        assert!(!s.stamp_known(11, &[3; 64]));
        for seq in 0..MAX_STAMPS as u16 {
            s.stamp_checked(100 + seq, [4; 64]);
        }
        assert!(!s.stamp_known(10, &[3; 64]), "the oldest is forgotten");
    }
}
