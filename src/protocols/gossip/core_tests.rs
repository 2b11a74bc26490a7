//! The gossip core driven by hand: messages passed by the test, time moved by the test.

use super::*;
use crate::identity::PeerId;

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn publication(origin: u8, seq: u64, len: usize) -> Publication {
    Publication {
        topic: "t".into(),
        origin: peer(origin),
        seq,
        payload: Bytes::from(vec![1u8; len]),
        signature: [0; 64],
    }
}

fn yes(_: &Publication, _: &MsgId) -> bool {
    true
}

/// A core (`peer(100)`) in topic "t" with neighbours `peers`, all of which joined it too and
/// took it as their parent: it is their tree's root, every link eager.
fn node(peers: &[u8], now: Instant) -> Core {
    node_with(Limits::for_tests(), peers, now)
}

/// A core (`peer(100)`) in topic "t" with neighbours `peers` that joined it but told no place
/// in its tree yet: every link lazy.
fn lazy_node(peers: &[u8], now: Instant) -> Core {
    lazy_node_as(peer(100), peers, now)
}

/// `lazy_node`, the core being `me`.
fn lazy_node_as(me: PeerId, peers: &[u8], now: Instant) -> Core {
    lazy_node_with(Limits::for_tests(), me, peers, now)
}

/// `lazy_node_as`, with `limits`.
fn lazy_node_with(limits: Limits, me: PeerId, peers: &[u8], now: Instant) -> Core {
    let mut core = Core::new(limits, me);
    core.join("t", true, &mut Vec::new()).unwrap();
    joined(&mut core, peers, now);
    core
}

/// `peers` connect to `core` and join "t": lazy links until they tell their places.
fn joined(core: &mut Core, peers: &[u8], now: Instant) {
    let mut out = Vec::new();
    for p in peers {
        core.on_connected(peer(*p), now, &mut out);
        core.on_wire(
            peer(*p),
            Wire::Join {
                topics: vec!["t".into()],
            },
            now,
            &mut yes,
            &mut out,
        );
    }
}

/// `Tree` from `peer` about its place in "t".
fn place(root: PeerId, dist: u8, parent: bool) -> Wire {
    Wire::Tree {
        topic: "t".into(),
        root,
        seq: 0,
        dist,
        parent,
        stamp: [0; 64],
    }
}

fn sends(out: &[Output]) -> Vec<(PeerId, &Wire)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { peer, wire } => Some((*peer, wire)),
            _ => None,
        })
        .collect()
}

fn push(p: Publication, hops: u8) -> Wire {
    Wire::Push {
        hops,
        by_source: false,
        publication: p,
    }
}

#[test]
fn a_new_publication_is_delivered_then_forwarded_only_when_accepted() {
    let now = Instant::now();
    let mut core = node(&[1, 2, 3], now);
    let mut out = Vec::new();
    core.on_wire(
        peer(1),
        push(publication(9, 1, 10), 1),
        now,
        &mut yes,
        &mut out,
    );
    let Some(Output::Deliver {
        id, origin, hops, ..
    }) = out.first().cloned()
    else {
        panic!("not delivered: {out:?}");
    };
    assert_eq!((origin, hops), (peer(9), 1));
    assert!(sends(&out).is_empty(), "forwarded before the verdict");
    out.clear();
    core.verdict(id, Verdict::Accept, now, &mut out);
    let to: Vec<PeerId> = sends(&out).iter().map(|(p, _)| *p).collect();
    assert_eq!(
        to,
        vec![peer(2), peer(3)],
        "eager push to all but the sender"
    );
}

#[test]
fn no_verdict_in_time_counts_as_ignore_and_reject_charges_the_relay() {
    let now = Instant::now();
    let mut core = node(&[1, 2], now);
    let mut out = Vec::new();
    core.on_wire(
        peer(1),
        push(publication(9, 1, 10), 1),
        now,
        &mut yes,
        &mut out,
    );
    core.on_wire(
        peer(1),
        push(publication(9, 2, 10), 1),
        now,
        &mut yes,
        &mut out,
    );
    let ids = delivered(&out);
    out.clear();
    core.verdict(ids[1], Verdict::Reject, now, &mut out);
    assert!(matches!(out[..], [Output::Charge { points: 10, .. }]));
    assert_eq!(
        out[0],
        Output::Charge {
            peer: peer(1),
            points: 10,
            why: "relayed a publication the application rejected"
        }
    );
    out.clear();
    core.poll(now + Duration::from_secs(2), &mut out);
    assert!(
        sends(&out).is_empty(),
        "an unjudged publication was forwarded: {out:?}"
    );
    // The late verdict changes nothing.
    core.verdict(ids[0], Verdict::Accept, now, &mut out);
    assert!(sends(&out).is_empty());
    assert_eq!(core.stats("t").unwrap().dropped, 2);
}

/// Ids of `n` nodes sorted by their rank as a root of "t" (best first).
fn by_rank(n: u8) -> Vec<PeerId> {
    let mut ids: Vec<PeerId> = (10..10 + n).map(peer).collect();
    ids.sort_by_key(|id| root_rank("t", id));
    ids
}

/// The places `out` tells, as (receiver, root, dist, parent), in the order they are sent.
fn told(out: &[Output]) -> Vec<(PeerId, PeerId, u8, bool)> {
    sends(out)
        .into_iter()
        .filter_map(|(to, wire)| match wire {
            Wire::Tree {
                root, dist, parent, ..
            } => Some((to, *root, *dist, *parent)),
            _ => None,
        })
        .collect()
}

/// `told`, sorted by receiver (the neighbours are kept in a hash map: any order).
fn told_sorted(out: &[Output]) -> Vec<(PeerId, PeerId, u8, bool)> {
    let mut told = told(out);
    told.sort_by_key(|t| t.0);
    told
}

#[test]
fn the_parent_is_the_neighbour_nearest_the_best_root_and_a_tie_keeps_the_first() {
    let now = Instant::now();
    let ranked = by_rank(5);
    let (best, worse, me) = (ranked[0], ranked[1], ranked[2]);
    let worst = ranked[4];
    // Set up by hand: the places told while the neighbours join are checked below.
    let mut core = Core::new(Limits::for_tests(), me);
    let mut out = Vec::new();
    core.join("t", true, &mut out).unwrap();
    for p in [1, 2, 3] {
        core.on_connected(peer(p), now, &mut out);
        core.on_wire(
            peer(p),
            Wire::Join {
                topics: vec!["t".into()],
            },
            now,
            &mut yes,
            &mut out,
        );
    }
    // Alone: its own root, every link lazy; each joining neighbour was told so.
    assert_eq!(core.place("t"), Some((me, 0, None)));
    assert_eq!(core.links("t"), (0, 3));
    assert_eq!(
        told(&out).last(),
        Some(&(peer(3), me, 0, false)),
        "a neighbour joining the topic learns our place"
    );
    // A root that ranks below its own is not taken.
    out.clear();
    core.on_wire(peer(1), place(worst, 1, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((me, 0, None)));
    assert!(out.is_empty());
    // A better root, 3 hops from neighbour 1: 1 is the parent, and everybody is told.
    core.on_wire(peer(1), place(worse, 3, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((worse, 4, Some(peer(1)))));
    assert_eq!(
        told_sorted(&out),
        vec![
            (peer(1), worse, 4, true),
            (peer(2), worse, 4, false),
            (peer(3), worse, 4, false)
        ]
    );
    assert_eq!(core.links("t"), (1, 2));
    // As near by another neighbour: the first offer stays (nothing to tell).
    out.clear();
    core.on_wire(peer(2), place(worse, 3, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((worse, 4, Some(peer(1)))));
    assert!(out.is_empty());
    // Nearer: the parent changes.
    core.on_wire(peer(3), place(worse, 1, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((worse, 2, Some(peer(3)))));
    // The parent's way grows longer than the one we told: not feasible (it may lead back
    // through us), nor are the others' (3 hops, not under our 2). We leave that root and ask
    // the neighbours offering it for a refresh of its sequence number.
    out.clear();
    core.on_wire(peer(3), place(worse, 5, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((me, 0, None)));
    let mut asked: Vec<(PeerId, &Wire)> = sends(&out)
        .into_iter()
        .filter(|(_, w)| matches!(w, Wire::Refresh { .. }))
        .collect();
    asked.sort_by_key(|(p, _)| *p);
    let refresh = Wire::Refresh {
        topic: "t".into(),
        root: worse,
        seq: 1,
    };
    assert_eq!(
        asked,
        vec![
            (peer(1), &refresh),
            (peer(2), &refresh),
            (peer(3), &refresh)
        ]
    );
    // A better root, even farther: taken. Leaving a root for a better one asks for nothing.
    out.clear();
    core.on_wire(peer(2), place(best, 9, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((best, 10, Some(peer(2)))));
    assert!(
        !sends(&out)
            .iter()
            .any(|(_, w)| matches!(w, Wire::Refresh { .. })),
        "{out:?}"
    );
    // A neighbour that takes us as parent is a child: its link is eager too, and it is never
    // our parent, whatever it offers.
    core.on_wire(peer(1), place(best, 11, true), now, &mut yes, &mut out);
    assert_eq!(core.links("t"), (2, 1));
    core.on_wire(peer(1), place(best, 1, true), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((best, 10, Some(peer(2)))));
    // A way at the distance bound is no way.
    core.on_wire(
        peer(3),
        place(best, MAX_TREE_DIST - 1, false),
        now,
        &mut yes,
        &mut out,
    );
    assert_eq!(core.place("t"), Some((best, 10, Some(peer(2)))));
    // The parent leaves: the best way left is taken (3 offers `best` at the bound, so none
    // is left towards it, and 3's old offer of `worse` is gone): alone again.
    out.clear();
    core.on_disconnected(peer(2), now, &mut out);
    assert_eq!(core.place("t"), Some((me, 0, None)));
    assert_eq!(core.stats("t").unwrap().parent_changes, 5);
    // A duplicate along the tree changes nothing in it (the tree is the places, not the copies).
    out.clear();
    core.on_wire(
        peer(1),
        push(publication(9, 1, 10), 3),
        now,
        &mut yes,
        &mut out,
    );
    core.on_wire(
        peer(3),
        push(publication(9, 1, 10), 1),
        now,
        &mut yes,
        &mut out,
    );
    assert!(told(&out).is_empty());
    assert_eq!(core.stats("t").unwrap().duplicates, 1);
}

/// Cores wired by hand: every message is delivered at once, in order, until none is left.
struct Net {
    cores: Vec<Core>,
    links: Vec<(usize, usize)>,
}

impl Net {
    /// `n` cores (ids `by_rank(n)`, so core 0 ranks best) in topic "t" over `links`.
    fn new(n: u8, links: &[(usize, usize)]) -> Self {
        let now = Instant::now();
        let ids = by_rank(n);
        let mut net = Self {
            cores: ids
                .iter()
                .map(|id| Core::new(Limits::for_tests(), *id))
                .collect(),
            links: links.to_vec(),
        };
        let mut queue = Vec::new();
        for (i, core) in net.cores.iter_mut().enumerate() {
            let mut out = Vec::new();
            core.join("t", true, &mut out).unwrap();
            for &(a, b) in links {
                let other = if a == i {
                    b
                } else if b == i {
                    a
                } else {
                    continue;
                };
                core.on_connected(ids[other], now, &mut out);
            }
            queue.extend(out.into_iter().map(|o| (i, o)));
        }
        net.run(queue);
        net
    }

    /// Delivers until quiet, and says how many messages that took; panics past a bound (a
    /// tree that never settles).
    fn run(&mut self, mut queue: Vec<(usize, Output)>) -> usize {
        let now = Instant::now();
        let ids = by_rank(self.cores.len() as u8);
        let mut delivered = 0;
        let index = |id: PeerId| ids.iter().position(|x| *x == id).unwrap_or(usize::MAX);
        while !queue.is_empty() {
            let mut next = Vec::new();
            for (from, output) in queue {
                let (peer, wire) = match output {
                    Output::Send { peer, wire } => (peer, wire),
                    Output::Charge { peer, why, .. } => {
                        panic!("core {from} charged {peer:?} ({why}): honest cores never are")
                    }
                    Output::Deliver { .. } => continue,
                };
                let to = index(peer);
                assert!(
                    self.links.contains(&(from, to)) || self.links.contains(&(to, from)),
                    "core {from} sent {wire:?} to core {to}, which it has no link to"
                );
                delivered += 1;
                assert!(delivered < 100_000, "the trees never settled");
                let mut out = Vec::new();
                self.cores[to].on_wire(ids[from], wire, now, &mut yes, &mut out);
                next.extend(out.into_iter().map(|o| (to, o)));
            }
            queue = next;
        }
        delivered
    }

    /// Asserts that the cores `alive` are one tree rooted at `root`, each at its shortest
    /// distance over the live links, eager at both ends of exactly the tree's links.
    fn check(&self, root: usize, alive: &[usize]) {
        let ids = by_rank(self.cores.len() as u8);
        let mut d = vec![usize::MAX; self.cores.len()];
        d[root] = 0;
        for _ in 0..self.cores.len() {
            for &(a, b) in &self.links {
                d[a] = d[a].min(d[b].saturating_add(1));
                d[b] = d[b].min(d[a].saturating_add(1));
            }
        }
        let mut eager_ends = 0;
        for &i in alive {
            let (r, dist, parent) = self.cores[i].place("t").unwrap();
            assert_eq!(r, ids[root], "core {i} is in another tree");
            assert_eq!(usize::from(dist), d[i], "core {i}'s distance");
            assert_eq!(parent.is_none(), i == root);
            eager_ends += self.cores[i].links("t").0;
        }
        assert_eq!(
            eager_ends,
            2 * (alive.len() - 1),
            "not a tree eager at both ends"
        );
    }

    /// Cuts the link between cores `a` and `b` (both are told), then delivers until quiet.
    fn cut(&mut self, a: usize, b: usize) -> usize {
        let ids = by_rank(self.cores.len() as u8);
        self.links.retain(|&l| l != (a, b) && l != (b, a));
        let mut queue = Vec::new();
        for (i, other) in [(a, b), (b, a)] {
            let mut out = Vec::new();
            self.cores[i].on_disconnected(ids[other], Instant::now(), &mut out);
            queue.extend(out.into_iter().map(|o| (i, o)));
        }
        self.run(queue)
    }

    /// Links cores `a` and `b` (both are told they connected), then delivers until quiet.
    fn link(&mut self, a: usize, b: usize) -> usize {
        let ids = by_rank(self.cores.len() as u8);
        self.links.push((a, b));
        let mut queue = Vec::new();
        for (i, other) in [(a, b), (b, a)] {
            let mut out = Vec::new();
            self.cores[i].on_connected(ids[other], Instant::now(), &mut out);
            queue.extend(out.into_iter().map(|o| (i, o)));
        }
        self.run(queue)
    }

    /// Cuts core `i` off: its neighbours are told it disconnected. Returns the messages the
    /// others exchanged before they settled.
    fn kill(&mut self, i: usize) -> usize {
        let ids = by_rank(self.cores.len() as u8);
        let mut queue = Vec::new();
        for &(a, b) in &self.links.clone() {
            let other = if a == i {
                b
            } else if b == i {
                a
            } else {
                continue;
            };
            let mut out = Vec::new();
            self.cores[other].on_disconnected(ids[i], Instant::now(), &mut out);
            queue.extend(out.into_iter().map(|o| (other, o)));
        }
        self.links.retain(|&(a, b)| a != i && b != i);
        self.run(queue)
    }
}

#[test]
fn the_cores_settle_on_one_tree_and_on_another_when_its_root_dies() {
    // A ring of 6 with two chords; core 0 ranks best.
    let links = [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 5),
        (5, 0),
        (1, 4),
        (2, 5),
    ];
    let mut net = Net::new(6, &links);
    net.check(0, &[0, 1, 2, 3, 4, 5]);
    // The root dies: nobody takes a way to it that might lead through itself (those left
    // are not feasible), so nobody counts towards it; core 1 (next best) is everybody's root.
    let messages = net.kill(0);
    net.check(1, &[1, 2, 3, 4, 5]);
    // 26 measured; counting to the distance bound instead took 557.
    assert!(
        messages <= 100,
        "{messages} messages to settle: counted to infinity?"
    );
}

#[test]
fn a_node_whose_only_way_left_is_longer_has_the_root_refresh_its_tree() {
    // 0 is the root; 2 reaches it through 1 (2 hops) or through 4 and 3 (3 hops).
    let mut net = Net::new(5, &[(0, 1), (1, 2), (0, 3), (3, 4), (4, 2)]);
    net.check(0, &[0, 1, 2, 3, 4]);
    // 1 dies: the way through 4 is longer than the one 2 told, so 2 may not take it (for all
    // 2 knows it leads back through itself) until the root, asked through 4 and 3, raises its
    // sequence number; then 2 takes it.
    let seq = net.cores[0].root_seq("t");
    net.kill(1);
    net.check(0, &[0, 2, 3, 4]);
    assert_ne!(
        net.cores[0].root_seq("t"),
        seq,
        "the root raised its number"
    );
}

#[test]
fn an_announced_publication_is_fetched_after_the_timeout_and_the_tree_stays() {
    let t0 = Instant::now();
    let mut core = lazy_node(&[1], t0);
    let mut out = Vec::new();
    let timeout = Limits::for_tests().fetch_timeout;
    let id = publication(9, 1, 10).id();
    core.on_wire(
        peer(1),
        Wire::IHave {
            topic: "t".into(),
            ids: vec![(id, 2, 0)],
        },
        t0,
        &mut yes,
        &mut out,
    );
    core.poll(t0 + timeout / 2, &mut out);
    assert!(sends(&out).is_empty(), "asked before the timeout");
    core.poll(t0 + timeout, &mut out);
    assert_eq!(
        sends(&out),
        vec![(
            peer(1),
            &Wire::Want {
                topic: "t".into(),
                ids: vec![id]
            }
        )]
    );
    out.clear();
    core.on_wire(
        peer(1),
        push(publication(9, 1, 10), 3),
        t0 + timeout,
        &mut yes,
        &mut out,
    );
    assert!(matches!(out[..], [Output::Deliver { hops: 3, .. }]));
    assert_eq!(core.links("t"), (0, 1), "a fetch leaves the tree as it is");
    assert_eq!(core.stats("t").unwrap().repairs, 1);
}

#[test]
fn large_publications_are_announced_then_fetched_at_once() {
    let now = Instant::now();
    let mut sender = node(&[2], now);
    let mut out = Vec::new();
    let big = publication(1, 1, 100 * 1024);
    let id = big.id();
    let mut receiver = node(&[1], now);
    sender
        .publish(
            Publication {
                origin: peer(1),
                ..big.clone()
            },
            now,
            &mut out,
        )
        .unwrap();
    // Not pushed: announced (at the next announcement tick).
    assert!(sends(&out).is_empty());
    sender.poll(now + Duration::from_millis(20), &mut out);
    let announced = sends(&out);
    assert!(matches!(announced[..], [(_, Wire::IHave { .. })]));
    // The receiver asks at once, without grafting; the sender answers with the publication.
    let mut asked = Vec::new();
    receiver.on_wire(peer(1), announced[0].1.clone(), now, &mut yes, &mut asked);
    receiver.poll(now, &mut asked);
    let want = sends(&asked);
    assert_eq!(
        want,
        vec![(
            peer(1),
            &Wire::Want {
                topic: "t".into(),
                ids: vec![id]
            }
        )]
    );
    let mut served = Vec::new();
    sender.on_wire(peer(2), want[0].1.clone(), now, &mut yes, &mut served);
    assert!(matches!(&sends(&served)[..], [(_, Wire::Push { .. })]));
    // A late answer is a large transfer: asked again only after LARGE_FETCH_WAIT timeouts,
    // not one (a second copy of it costs as much as the first).
    let timeout = Limits::for_tests().fetch_timeout;
    let mut again = Vec::new();
    receiver.poll(
        now + timeout * LARGE_FETCH_WAIT - Duration::from_millis(1),
        &mut again,
    );
    assert!(sends(&again).is_empty(), "{again:?}");
    receiver.poll(now + timeout * LARGE_FETCH_WAIT, &mut again);
    assert!(
        matches!(&sends(&again)[..], [(_, Wire::Want { .. })]),
        "{again:?}"
    );
}

#[test]
fn joins_and_publications_are_bounded() {
    let now = Instant::now();
    let mut core = Core::new(
        Limits {
            max_topics: 2,
            ..Limits::for_tests()
        },
        peer(100),
    );
    let mut out = Vec::new();
    core.join("a", true, &mut out).unwrap();
    assert_eq!(
        core.join("a", true, &mut out),
        Err(JoinError::AlreadySubscribed("a".into()))
    );
    core.join("b", false, &mut out).unwrap();
    assert_eq!(
        core.join("c", true, &mut out),
        Err(JoinError::TooManyTopics(2))
    );
    assert_eq!(core.join("", true, &mut out), Err(JoinError::BadName(128)));
    assert_eq!(
        core.join(&"n".repeat(129), true, &mut out),
        Err(JoinError::BadName(128))
    );
    // A name of exactly the bound is taken (in the place of "b").
    core.leave("b", false, &mut out);
    core.join(&"n".repeat(128), true, &mut out).unwrap();
    let too_big = Publication {
        topic: "a".into(),
        ..publication(1, 1, (1 << 20) + 1)
    };
    assert!(matches!(
        core.publish(too_big, now, &mut out),
        Err(PublishError::TooLarge { .. })
    ));
    let largest = Publication {
        topic: "a".into(),
        ..publication(1, 1, 1 << 20)
    };
    assert!(
        core.publish(largest, now, &mut out).is_ok(),
        "exactly the bound"
    );
    let elsewhere = Publication {
        topic: "z".into(),
        ..publication(1, 1, 1)
    };
    assert_eq!(
        core.publish(elsewhere, now, &mut out),
        Err(PublishError::NotJoined("z".into()))
    );
    // A neighbour claiming more topics than the limit is charged.
    core.on_connected(peer(5), now, &mut out);
    out.clear();
    let many = (0..3).map(|i| format!("x{i}")).collect();
    core.on_wire(
        peer(5),
        Wire::Join { topics: many },
        now,
        &mut yes,
        &mut out,
    );
    assert!(matches!(out[..], [Output::Charge { points: 1, .. }]));
    // A name of exactly the length bound is taken from a neighbour; one longer is charged.
    core.on_connected(peer(6), now, &mut out);
    out.clear();
    let named = |len| Wire::Join {
        topics: vec!["m".repeat(len)],
    };
    core.on_wire(peer(6), named(128), now, &mut yes, &mut out);
    assert!(out.is_empty(), "{out:?}");
    core.on_wire(peer(6), named(129), now, &mut yes, &mut out);
    assert!(matches!(out[..], [Output::Charge { points: 1, .. }]));
    core.on_disconnected(peer(6), now, &mut out);
    // Leaving tells the neighbours.
    out.clear();
    core.leave("a", false, &mut out);
    assert_eq!(
        sends(&out),
        vec![(
            peer(5),
            &Wire::Leave {
                topics: vec!["a".into()]
            }
        )]
    );
}

#[test]
fn a_late_answer_is_asked_for_again_then_given_up() {
    let t0 = Instant::now();
    let mut core = lazy_node(&[1], t0);
    let mut out = Vec::new();
    let id = publication(9, 1, 10).id();
    core.on_wire(
        peer(1),
        Wire::IHave {
            topic: "t".into(),
            ids: vec![(id, 2, 0)],
        },
        t0,
        &mut yes,
        &mut out,
    );
    let timeout = Limits::for_tests().fetch_timeout;
    let mut asked = 0;
    for k in 1..=6u32 {
        out.clear();
        core.poll(t0 + timeout * k, &mut out);
        asked += sends(&out).len();
    }
    // The only announcer is asked 4 times (its answer may be late), then the id is given up.
    assert_eq!(asked, 4);
    assert_eq!(core.stats("t").unwrap().dropped, 1);
    assert_eq!(core.next_deadline(), None);
}

#[test]
fn a_root_raises_its_number_at_most_once_per_interval() {
    let t0 = Instant::now();
    // peer(100) is the root of its tree with children 1 and 2.
    let mut core = node(&[1, 2], t0);
    let refresh = |seq| Wire::Refresh {
        topic: "t".into(),
        root: peer(100),
        seq,
    };
    let raised_to = |out: &[Output]| -> Vec<u16> {
        sends(out)
            .iter()
            .filter_map(|(_, w)| match w {
                Wire::Tree { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    };
    let mut out = Vec::new();
    core.on_wire(peer(1), refresh(1), t0, &mut yes, &mut out);
    assert_eq!(
        raised_to(&out),
        vec![1, 1],
        "the first request is met at once"
    );
    // A flood of requests within the interval: nothing now, one raise at its end, to the
    // highest number asked.
    out.clear();
    for seq in 2..50 {
        core.on_wire(peer(2), refresh(seq), t0, &mut yes, &mut out);
    }
    core.on_wire(peer(2), refresh(3), t0, &mut yes, &mut out);
    assert!(out.is_empty());
    assert_eq!(core.next_deadline(), Some(t0 + RAISE_INTERVAL));
    core.poll(t0 + RAISE_INTERVAL, &mut out);
    assert_eq!(raised_to(&out), vec![49, 49]);
    // That raise starts the next interval.
    out.clear();
    let just_after = t0 + RAISE_INTERVAL + Duration::from_millis(1);
    core.on_wire(peer(1), refresh(50), just_after, &mut yes, &mut out);
    assert!(out.is_empty(), "raised again within the interval: {out:?}");
    core.poll(t0 + RAISE_INTERVAL * 2, &mut out);
    assert_eq!(raised_to(&out), vec![50, 50]);
    // An old number is no request.
    out.clear();
    core.on_wire(
        peer(1),
        refresh(40),
        t0 + RAISE_INTERVAL * 3,
        &mut yes,
        &mut out,
    );
    assert!(out.is_empty());
}

#[test]
fn a_node_cut_off_and_linked_again_at_the_same_distance_rejoins_through_a_refresh() {
    // 0 is the root. 1 hangs under 0, 2 under 1; 3 hangs under 4 under 0.
    let mut net = Net::new(5, &[(0, 1), (1, 2), (0, 4), (4, 3)]);
    net.check(0, &[0, 1, 2, 3, 4]);
    let seq = net.cores[0].root_seq("t");
    // 2 loses its link: it is its own root now, with 0's record at 2 hops kept.
    net.cut(1, 2);
    assert_eq!(net.cores[2].place("t").map(|(_, dist, _)| dist), Some(0));
    // Linked to 3, also 2 hops from 0: not shorter than 2's record, so not feasible, but a
    // better root than 2 itself. 2 asks for a refresh; the root raises its number; 2 rejoins.
    net.link(2, 3);
    net.check(0, &[0, 1, 2, 3, 4]);
    assert_ne!(
        net.cores[0].root_seq("t"),
        seq,
        "the root raised its number"
    );
}

#[test]
fn a_way_at_the_distance_bound_is_not_taken_and_impossible_places_are_charged() {
    let now = Instant::now();
    let ranked = by_rank(3);
    let (best, me) = (ranked[0], ranked[2]);
    let mut core = lazy_node(&[1, 2], now);
    let _ = me;
    let mut out = Vec::new();
    // A better root we never heard of, at the bound and far beyond it: no way.
    for dist in [MAX_TREE_DIST - 1, u8::MAX] {
        core.on_wire(peer(1), place(best, dist, false), now, &mut yes, &mut out);
        assert_eq!(core.place("t").map(|(root, ..)| root), Some(peer(100)));
    }
    assert!(out.is_empty(), "{out:?}");
    // 0 hops from a root that is not the sender: only a root is 0 hops from itself.
    core.on_wire(peer(1), place(best, 0, false), now, &mut yes, &mut out);
    assert!(matches!(out[..], [Output::Charge { points: 10, .. }]));
    assert_eq!(core.place("t").map(|(root, ..)| root), Some(peer(100)));
    // Taken at 2 hops; then a sequence number far ahead of the one recorded is refused.
    out.clear();
    core.on_wire(peer(2), place(best, 2, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((best, 3, Some(peer(2)))));
    out.clear();
    core.on_wire(
        peer(1),
        Wire::Tree {
            topic: "t".into(),
            root: best,
            seq: SEQ_WINDOW + 1,
            dist: 1,
            parent: false,
            stamp: [0; 64],
        },
        now,
        &mut yes,
        &mut out,
    );
    assert!(matches!(out[..], [Output::Charge { points: 1, .. }]));
    assert_eq!(core.place("t"), Some((best, 3, Some(peer(2)))));
    // Exactly the window ahead is still a number the root may have reached: taken.
    out.clear();
    core.on_wire(
        peer(1),
        Wire::Tree {
            topic: "t".into(),
            root: best,
            seq: SEQ_WINDOW,
            dist: 1,
            parent: false,
            stamp: [0; 64],
        },
        now,
        &mut yes,
        &mut out,
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Charge { .. })),
        "{out:?}"
    );
    assert_eq!(core.place("t"), Some((best, 2, Some(peer(1)))));
}

#[test]
fn a_refresh_is_passed_up_once_per_number() {
    let now = Instant::now();
    let ranked = by_rank(2);
    let root = ranked[0];
    let mut core = lazy_node(&[1, 2], now);
    let mut out = Vec::new();
    core.on_wire(peer(1), place(root, 1, false), now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((root, 2, Some(peer(1)))));
    let refresh = |seq| Wire::Refresh {
        topic: "t".into(),
        root,
        seq,
    };
    let passed = |out: &[Output]| -> Vec<(PeerId, Wire)> {
        sends(out)
            .into_iter()
            .filter(|(_, w)| matches!(w, Wire::Refresh { .. }))
            .map(|(p, w)| (p, w.clone()))
            .collect()
    };
    out.clear();
    core.on_wire(peer(2), refresh(1), now, &mut yes, &mut out);
    assert_eq!(passed(&out), vec![(peer(1), refresh(1))], "to the parent");
    out.clear();
    core.on_wire(peer(2), refresh(1), now, &mut yes, &mut out);
    core.on_wire(peer(2), refresh(0), now, &mut yes, &mut out);
    assert!(
        passed(&out).is_empty(),
        "the same number again, or an old one"
    );
    // For a root it is not under, nothing.
    core.on_wire(
        peer(2),
        Wire::Refresh {
            topic: "t".into(),
            root: ranked[1],
            seq: 5,
        },
        now,
        &mut yes,
        &mut out,
    );
    assert!(passed(&out).is_empty());
    core.on_wire(peer(2), refresh(2), now, &mut yes, &mut out);
    assert_eq!(passed(&out), vec![(peer(1), refresh(2))]);
}

#[test]
fn a_neighbour_that_leaves_the_topic_is_no_longer_the_parent() {
    let now = Instant::now();
    let ranked = by_rank(2);
    let mut core = lazy_node(&[1, 2], now);
    let mut out = Vec::new();
    core.on_wire(peer(1), place(ranked[0], 1, false), now, &mut yes, &mut out);
    core.on_wire(peer(2), place(ranked[0], 1, false), now, &mut yes, &mut out);
    let parent = core.place("t").and_then(|(_, _, p)| p);
    assert!(parent.is_some());
    let (gone, other) = if parent == Some(peer(1)) {
        (peer(1), peer(2))
    } else {
        (peer(2), peer(1))
    };
    // Its leave, with its name listed again and names it never joined: one settle.
    out.clear();
    core.on_wire(
        gone,
        Wire::Leave {
            topics: vec!["t".into(), "t".into(), "never".into()],
        },
        now,
        &mut yes,
        &mut out,
    );
    assert_eq!(core.place("t"), Some((ranked[0], 2, Some(other))));
    assert_eq!(core.links("t"), (1, 0), "the one left is the parent");
    assert_eq!(told(&out).len(), 1, "told once, to the one left");

    // The same leave naming the topic once.
    let mut core = lazy_node(&[1, 2], now);
    core.on_wire(peer(1), place(ranked[0], 1, false), now, &mut yes, &mut out);
    core.on_wire(peer(2), place(ranked[0], 1, false), now, &mut yes, &mut out);
    let parent = core.place("t").and_then(|(_, _, p)| p);
    let (gone, other) = if parent == Some(peer(1)) {
        (peer(1), peer(2))
    } else {
        (peer(2), peer(1))
    };
    let leave = Wire::Leave {
        topics: vec!["t".into()],
    };
    core.on_wire(gone, leave, now, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((ranked[0], 2, Some(other))));
    assert_eq!(core.links("t"), (1, 0));
}

#[test]
fn a_tree_joined_starts_at_the_sequence_number_the_driver_sets() {
    let now = Instant::now();
    let mut core = Core::new(Limits::for_tests(), peer(100));
    core.set_seq_base(500);
    let mut out = Vec::new();
    core.join("t", true, &mut out).unwrap();
    core.on_connected(peer(1), now, &mut out);
    out.clear();
    core.on_wire(
        peer(1),
        Wire::Join {
            topics: vec!["t".into()],
        },
        now,
        &mut yes,
        &mut out,
    );
    assert!(
        matches!(
            sends(&out)[..],
            [(
                _,
                Wire::Tree {
                    seq: 500,
                    dist: 0,
                    ..
                }
            )]
        ),
        "{out:?}"
    );
    assert_eq!(core.root_seq("t"), Some(500));
}

#[test]
fn an_announcer_that_disconnects_is_not_asked_and_what_only_it_announced_is_dropped() {
    let t0 = Instant::now();
    let mut core = lazy_node(&[1, 2], t0);
    let mut out = Vec::new();
    let (both, only_1) = (publication(9, 1, 10).id(), publication(9, 2, 10).id());
    core.on_wire(
        peer(1),
        Wire::IHave {
            topic: "t".into(),
            ids: vec![(both, 2, 0), (only_1, 2, 0)],
        },
        t0,
        &mut yes,
        &mut out,
    );
    core.on_wire(
        peer(2),
        Wire::IHave {
            topic: "t".into(),
            ids: vec![(both, 2, 0)],
        },
        t0,
        &mut yes,
        &mut out,
    );
    core.on_disconnected(peer(1), t0, &mut out);
    out.clear();
    core.poll(t0 + Limits::for_tests().fetch_timeout, &mut out);
    assert_eq!(
        sends(&out),
        vec![(
            peer(2),
            &Wire::Want {
                topic: "t".into(),
                ids: vec![both]
            }
        )],
        "only the one still connected is asked, and only for what it announced"
    );
}

#[test]
fn leaving_a_topic_drops_its_publications_awaiting_a_verdict_and_no_others() {
    let now = Instant::now();
    let mut core = node(&[1, 2], now);
    let mut out = Vec::new();
    core.join("u", true, &mut out).unwrap();
    for p in [1, 2] {
        core.on_wire(
            peer(p),
            Wire::Join {
                topics: vec!["u".into()],
            },
            now,
            &mut yes,
            &mut out,
        );
        core.on_wire(
            peer(p),
            Wire::Tree {
                topic: "u".into(),
                root: peer(100),
                seq: 0,
                dist: 1,
                parent: true,
                stamp: [0; 64],
            },
            now,
            &mut yes,
            &mut out,
        );
    }
    out.clear();
    let in_t = publication(9, 1, 10);
    let in_u = Publication {
        topic: "u".into(),
        ..publication(9, 2, 10)
    };
    let (id_t, id_u) = (in_t.id(), in_u.id());
    core.on_wire(peer(1), push(in_t, 1), now, &mut yes, &mut out);
    core.on_wire(peer(1), push(in_u, 1), now, &mut yes, &mut out);
    core.leave("t", false, &mut out);
    out.clear();
    core.verdict(id_t, Verdict::Accept, now, &mut out);
    assert!(
        out.is_empty(),
        "a publication of a topic left was forwarded"
    );
    core.verdict(id_u, Verdict::Accept, now, &mut out);
    assert_eq!(
        sends(&out)
            .iter()
            .filter(|(_, w)| matches!(w, Wire::Push { .. }))
            .count(),
        1,
        "the other topic's publication goes on: {out:?}"
    );
}

#[test]
fn of_two_roots_out_of_reach_the_refresh_is_asked_for_the_better_one() {
    // Which of the two ways out of reach is looked at first follows the neighbour map's
    // order, random per map: twenty fresh nodes see both orders (a rule that kept the first
    // one seen passes all twenty with odds of one in a million).
    for _ in 0..20 {
        let t0 = Instant::now();
        let ranked = by_rank(4);
        let (r0, r1) = (ranked[0], ranked[1]);
        let mut core = lazy_node_as(ranked[3], &[1, 2, 3], t0);
        let mut out = Vec::new();
        // r0 at sequence number 7 (r1 at 0).
        let r0_at = |dist| Wire::Tree {
            topic: "t".into(),
            root: r0,
            seq: 7,
            dist,
            parent: false,
            stamp: [0; 64],
        };
        core.on_wire(peer(1), place(r1, 1, false), t0, &mut yes, &mut out);
        core.on_wire(peer(2), r0_at(1), t0, &mut yes, &mut out);
        assert_eq!(core.place("t"), Some((r0, 2, Some(peer(2)))));
        let asked = |out: &[Output]| -> Vec<(PeerId, Wire)> {
            sends(out)
                .into_iter()
                .filter(|(_, w)| matches!(w, Wire::Refresh { .. }))
                .map(|(p, w)| (p, w.clone()))
                .collect()
        };
        let r0_asked = vec![(
            peer(2),
            Wire::Refresh {
                topic: "t".into(),
                root: r0,
                seq: 8,
            },
        )];
        // 2's way to r0 grows: not feasible; back under r1 through 1, and r0 is asked for a
        // number past the one we told (7).
        out.clear();
        core.on_wire(peer(2), r0_at(5), t0, &mut yes, &mut out);
        assert_eq!(core.place("t"), Some((r1, 2, Some(peer(1)))));
        assert_eq!(asked(&out), r0_asked);
        // 3 offers r1 farther than we told it: also out of reach, but no better than our root.
        // Nothing is asked again before `REFRESH_RETRY`.
        out.clear();
        core.on_wire(peer(3), place(r1, 4, false), t0, &mut yes, &mut out);
        let almost = t0 + REFRESH_RETRY - Duration::from_millis(1);
        core.on_wire(peer(3), place(r1, 4, false), almost, &mut yes, &mut out);
        assert!(asked(&out).is_empty(), "{out:?}");
        // Then, still out of reach: r0, the better, is asked for again, from 2.
        core.on_wire(
            peer(3),
            place(r1, 4, false),
            t0 + REFRESH_RETRY,
            &mut yes,
            &mut out,
        );
        assert_eq!(asked(&out), r0_asked);
    }
}

#[test]
fn a_record_of_a_root_left_is_forgotten_after_its_time_and_its_ways_are_takeable_again() {
    let t0 = Instant::now();
    let ranked = by_rank(2);
    let r0 = ranked[0];
    let mut core = lazy_node(&[1], t0);
    let mut out = Vec::new();
    core.on_wire(peer(1), place(r0, 1, false), t0, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((r0, 2, Some(peer(1)))));
    // 1's way grows: not feasible, so r0 is left.
    core.on_wire(peer(1), place(r0, 4, false), t0, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((peer(100), 0, None)));
    // Offered again just before the record expires: still not takeable; at its expiry, it is.
    let offer = |core: &mut Core, at: Instant, out: &mut Vec<Output>| {
        core.on_wire(peer(1), place(r0, 4, false), at, &mut yes, out);
    };
    offer(
        &mut core,
        t0 + FEASIBLE_TTL - Duration::from_millis(1),
        &mut out,
    );
    assert_eq!(core.place("t"), Some((peer(100), 0, None)));
    offer(&mut core, t0 + FEASIBLE_TTL, &mut out);
    assert_eq!(core.place("t"), Some((r0, 5, Some(peer(1)))));
}

#[test]
fn tree_messages_past_their_burst_and_rate_are_dropped_and_charged() {
    let t0 = Instant::now();
    let ranked = by_rank(1);
    let mut core = lazy_node(&[1], t0);
    let burst = Limits::for_tests().max_topics as u64 + TREE_RATE;
    let mut out = Vec::new();
    for k in 0..burst {
        core.on_wire(
            peer(1),
            place(ranked[0], 1 + (k % 2) as u8, false),
            t0,
            &mut yes,
            &mut out,
        );
    }
    assert!(
        !out.iter().any(|o| matches!(o, Output::Charge { .. })),
        "charged within the burst"
    );
    out.clear();
    core.on_wire(peer(1), place(ranked[0], 1, false), t0, &mut yes, &mut out);
    assert_eq!(
        out,
        vec![Output::Charge {
            peer: peer(1),
            points: 1,
            why: "gossip tree messages over their rate"
        }]
    );
    // A second later, TREE_RATE more.
    out.clear();
    let later = t0 + Duration::from_secs(1);
    for _ in 0..TREE_RATE {
        core.on_wire(
            peer(1),
            place(ranked[0], 1, false),
            later,
            &mut yes,
            &mut out,
        );
    }
    assert!(!out.iter().any(|o| matches!(o, Output::Charge { .. })));
    core.on_wire(
        peer(1),
        place(ranked[0], 1, false),
        later,
        &mut yes,
        &mut out,
    );
    assert!(out.iter().any(|o| matches!(o, Output::Charge { .. })));
}

#[test]
fn the_record_of_the_root_we_are_under_does_not_expire() {
    let t0 = Instant::now();
    let ranked = by_rank(2);
    let r0 = ranked[0];
    let mut core = lazy_node(&[1, 2], t0);
    let mut out = Vec::new();
    core.on_wire(peer(1), place(r0, 1, false), t0, &mut yes, &mut out);
    core.on_wire(peer(2), place(r0, 2, false), t0, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((r0, 2, Some(peer(1)))));
    // Long after, the parent goes: 2's way is no shorter than the one we told (it may run
    // through us), so r0 is left rather than taken through 2.
    core.on_disconnected(peer(1), t0 + FEASIBLE_TTL * 2, &mut out);
    assert_eq!(core.place("t"), Some((peer(100), 0, None)));
}

/// Checks stamps against the roots' real keys (publications: accepted), counting the stamps
/// it checks.
#[derive(Default)]
struct RealKeys {
    cache: crate::identity::VerifierCache,
    stamps_checked: usize,
}

impl Checks for RealKeys {
    fn publication(&mut self, _: &Publication, _: &MsgId) -> bool {
        true
    }
    fn stamp(&mut self, root: &PeerId, signed: &[u8], stamp: &[u8; 64]) -> bool {
        self.stamps_checked += 1;
        self.cache.verify(root, signed, stamp)
    }
}

/// The (sequence number, stamp) of each place `out` tells.
fn stamps(out: &[Output]) -> Vec<(u16, [u8; 64])> {
    sends(out)
        .into_iter()
        .filter_map(|(_, wire)| match wire {
            Wire::Tree { seq, stamp, .. } => Some((*seq, *stamp)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_root_signs_its_sequence_number_and_every_raise() {
    let key = crate::identity::Keypair::generate();
    let me = key.peer_id();
    let now = Instant::now();
    let mut core = Core::new(Limits::for_tests(), me);
    core.set_seq_base(40);
    core.set_signer(Box::new(move |bytes| key.sign(bytes)));
    let mut out = Vec::new();
    core.join("t", true, &mut out).unwrap();
    core.on_connected(peer(1), now, &mut out);
    out.clear();
    let join = Wire::Join {
        topics: vec!["t".into()],
    };
    core.on_wire(peer(1), join, now, &mut yes, &mut out);
    let told = stamps(&out);
    assert_eq!(told.len(), 1, "{out:?}");
    assert_eq!(told[0].0, 40);
    assert!(me.verify(&seq_signed_bytes("t", 40), &told[0].1).is_ok());

    // A node of the tree asks for number 45: the root raises and signs 45.
    out.clear();
    let refresh = Wire::Refresh {
        topic: "t".into(),
        root: me,
        seq: 45,
    };
    core.on_wire(peer(1), refresh, now, &mut yes, &mut out);
    let told = stamps(&out);
    assert_eq!(told.len(), 1, "{out:?}");
    assert_eq!(told[0].0, 45);
    assert!(me.verify(&seq_signed_bytes("t", 45), &told[0].1).is_ok());
    assert!(me.verify(&seq_signed_bytes("t", 40), &told[0].1).is_err());
}

/// A root that ranks below `peer(100)` in "t", with its key.
fn better_root() -> crate::identity::Keypair {
    loop {
        let key = crate::identity::Keypair::generate();
        if root_rank("t", &key.peer_id()) < root_rank("t", &peer(100)) {
            return key;
        }
    }
}

#[test]
fn a_place_whose_number_its_root_did_not_sign_is_refused_and_charged() {
    let key = better_root();
    let root = key.peer_id();
    let now = Instant::now();
    let mut core = lazy_node(&[1], now);
    let mut keys = RealKeys::default();
    let mut out = Vec::new();
    // A root we have no record of, far ahead, with the stamp of another number: before stamps,
    // taken, and it made the root's real places look old for up to a minute.
    let forged = Wire::Tree {
        topic: "t".into(),
        root,
        seq: 60_000,
        dist: 1,
        parent: false,
        stamp: key.sign(&seq_signed_bytes("t", 3)),
    };
    core.on_wire(peer(1), forged, now, &mut keys, &mut out);
    assert!(
        matches!(out[..], [Output::Charge { peer: p, points: 10, .. }] if p == peer(1)),
        "{out:?}"
    );
    // The root's real number 3 is taken at once: nothing was recorded from the forgery.
    out.clear();
    let genuine = |dist| Wire::Tree {
        topic: "t".into(),
        root,
        seq: 3,
        dist,
        parent: false,
        stamp: key.sign(&seq_signed_bytes("t", 3)),
    };
    core.on_wire(peer(1), genuine(1), now, &mut keys, &mut out);
    assert_eq!(told(&out), vec![(peer(1), root, 2, true)], "{out:?}");
    assert_eq!(stamps(&out)[0], (3, key.sign(&seq_signed_bytes("t", 3))));
    // The same stamp told again is not checked again.
    assert_eq!(keys.stamps_checked, 2);
    core.on_wire(peer(1), genuine(2), now, &mut keys, &mut out);
    assert_eq!(keys.stamps_checked, 2);
    // The known stamp of 3 on the next number is checked, not taken from what is known.
    out.clear();
    let replayed = Wire::Tree {
        topic: "t".into(),
        root,
        seq: 4,
        dist: 1,
        parent: false,
        stamp: key.sign(&seq_signed_bytes("t", 3)),
    };
    core.on_wire(peer(1), replayed, now, &mut keys, &mut out);
    assert_eq!(keys.stamps_checked, 3);
    assert!(
        matches!(out[..], [Output::Charge { points: 10, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_large_publication_announced_lazily_first_is_asked_of_the_tree_neighbour_and_waited_for() {
    let now = Instant::now();
    let timeout = Limits::for_tests().fetch_timeout;
    // peer(1) is a tree neighbour (our child), peer(3) a lazy one.
    let mut core = node(&[1], now);
    let mut out = Vec::new();
    core.on_connected(peer(3), now, &mut out);
    let join = Wire::Join {
        topics: vec!["t".into()],
    };
    core.on_wire(peer(3), join, now, &mut yes, &mut out);
    let id = publication(9, 1, 100 * 1024).id();
    let ihave = Wire::IHave {
        topic: "t".into(),
        ids: vec![(id, 2, 0)],
    };
    core.on_wire(peer(3), ihave.clone(), now, &mut yes, &mut out);
    core.on_wire(peer(1), ihave, now, &mut yes, &mut out);
    out.clear();
    core.poll(now, &mut out);
    let want = Wire::Want {
        topic: "t".into(),
        ids: vec![id],
    };
    assert_eq!(sends(&out), vec![(peer(1), &want)], "{out:?}");
    out.clear();
    core.poll(
        now + timeout * LARGE_FETCH_WAIT - Duration::from_millis(1),
        &mut out,
    );
    assert!(sends(&out).is_empty(), "{out:?}");
    core.poll(now + timeout * LARGE_FETCH_WAIT, &mut out);
    assert_eq!(sends(&out), vec![(peer(3), &want)], "{out:?}");
}

#[test]
fn the_total_of_the_topics_adds_every_count_of_each() {
    let counts = |k: u64| TopicStats {
        published: k,
        delivered: 2 * k,
        received: 3 * k,
        duplicates: 4 * k,
        announced: 5 * k,
        repairs: 6 * k,
        parent_changes: 7 * k,
        eager_bytes: 8 * k,
        lazy_bytes: 9 * k,
        evicted: 10 * k,
        dropped: 11 * k,
        sources_refused: 12 * k,
    };
    let mut total = counts(1);
    total.add(&counts(100));
    assert_eq!(total, counts(101));

    // A node in two topics: its total is their sum.
    let now = Instant::now();
    let mut core = node(&[1], now);
    let mut out = Vec::new();
    core.join("u", true, &mut out).unwrap();
    core.publish(publication(100, 1, 10), now, &mut out)
        .unwrap();
    let mut other = publication(100, 1, 10);
    other.topic = "u".into();
    core.publish(other, now, &mut out).unwrap();
    let (t, u) = (core.stats("t").unwrap(), core.stats("u").unwrap());
    assert_eq!((t.published, u.published), (1, 1));
    let mut sum = t.clone();
    sum.add(&u);
    assert_eq!(core.total_stats(), sum);
}

#[test]
fn a_signer_s_debug_says_whether_one_is_set() {
    assert_eq!(format!("{:?}", Signer(None)), "NoSigner");
    let key = Box::new(|_: &[u8]| [7u8; 64]) as SignFn;
    assert_eq!(format!("{:?}", Signer(Some(key))), "Signer");
}

#[test]
fn joining_again_as_a_subscriber_upgrades_a_relay_and_as_a_relay_changes_nothing() {
    let mut core = Core::new(Limits::for_tests(), peer(100));
    let mut out = Vec::new();
    core.join("r", false, &mut out).unwrap();
    assert_eq!(core.topics(), [("r".to_owned(), false)]);
    core.join("r", false, &mut out).unwrap();
    core.join("r", true, &mut out).unwrap();
    assert_eq!(core.topics(), [("r".to_owned(), true)]);
    core.join("r", false, &mut out).unwrap();
    assert_eq!(core.topics(), [("r".to_owned(), true)], "still subscribed");
    assert_eq!(
        core.join("r", true, &mut out),
        Err(JoinError::AlreadySubscribed("r".into()))
    );
}

#[test]
fn a_different_root_out_of_reach_is_asked_at_once_even_for_the_same_number() {
    let t0 = Instant::now();
    let ranked = by_rank(4);
    let (r0, r1, r2) = (ranked[0], ranked[1], ranked[2]);
    let mut core = lazy_node_as(ranked[3], &[1, 2, 3], t0);
    let mut out = Vec::new();
    let at = |root, dist| Wire::Tree {
        topic: "t".into(),
        root,
        seq: 7,
        dist,
        parent: false,
        stamp: [0; 64],
    };
    // Under r1 (number 7) through 3, then under r0 (number 7) through 2: both told, so both
    // recorded. Node 1 offers r2, the worst.
    core.on_wire(peer(1), place(r2, 1, false), t0, &mut yes, &mut out);
    core.on_wire(peer(3), at(r1, 1), t0, &mut yes, &mut out);
    core.on_wire(peer(2), at(r0, 1), t0, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((r0, 2, Some(peer(2)))));
    // Both ways grow out of reach: back under r2, and r0 (the better) is asked for 8.
    core.on_wire(peer(3), at(r1, 5), t0, &mut yes, &mut out);
    out.clear();
    core.on_wire(peer(2), at(r0, 5), t0, &mut yes, &mut out);
    assert_eq!(core.place("t"), Some((r2, 2, Some(peer(1)))));
    let refreshes = |out: &[Output]| -> Vec<(PeerId, PeerId, u16)> {
        sends(out)
            .into_iter()
            .filter_map(|(p, w)| match w {
                Wire::Refresh { root, seq, .. } => Some((p, *root, *seq)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(refreshes(&out), [(peer(2), r0, 8)]);
    // Node 2 goes: r1 is now the best root out of reach, and is asked at once for its own
    // next number (also 8), not held back as if it were the same request.
    out.clear();
    core.on_disconnected(peer(2), t0, &mut out);
    assert_eq!(refreshes(&out), [(peer(3), r1, 8)]);
}

#[test]
fn a_publication_up_to_eager_max_goes_whole_to_the_tree_and_as_an_id_to_the_rest_after_the_interval()
 {
    let now = Instant::now();
    // Eager links to 1 and 2 (they took this node as parent); 3 and 4 joined only: lazy.
    let mut core = node(&[1, 2], now);
    joined(&mut core, &[3, 4], now);
    let mut out = Vec::new();
    let largest_whole = 64 * 1024;
    core.publish(publication(100, 1, largest_whole), now, &mut out)
        .unwrap();
    let pushed: Vec<PeerId> = sends(&out)
        .into_iter()
        .filter(|(_, w)| matches!(w, Wire::Push { .. }))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(pushed.len(), 2, "{out:?}");
    let stats = core.stats("t").unwrap();
    assert_eq!(stats.eager_bytes, 2 * largest_whole as u64);
    assert_eq!(
        (stats.announced, stats.lazy_bytes),
        (2, 40),
        "an id is 20 bytes"
    );
    // The ids go out with the next announcement, one interval (20 ms) later.
    let mut early = Vec::new();
    core.poll(now + Duration::from_millis(19), &mut early);
    assert!(
        !sends(&early)
            .iter()
            .any(|(_, w)| matches!(w, Wire::IHave { .. })),
        "{early:?}"
    );
    let mut due = Vec::new();
    core.poll(now + Duration::from_millis(20), &mut due);
    let announced: Vec<PeerId> = sends(&due)
        .into_iter()
        .filter(|(_, w)| matches!(w, Wire::IHave { .. }))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(announced.len(), 2, "{due:?}");
    // One byte more is large: announced to every neighbour, pushed to none.
    out.clear();
    core.publish(publication(100, 2, largest_whole + 1), now, &mut out)
        .unwrap();
    assert!(
        !sends(&out)
            .iter()
            .any(|(_, w)| matches!(w, Wire::Push { .. })),
        "{out:?}"
    );
    assert_eq!(core.stats("t").unwrap().announced, 6);
}

#[test]
fn ids_waiting_for_an_announcement_past_the_batch_bound_drop_the_oldest_and_are_counted() {
    let now = Instant::now();
    let limits = Limits {
        max_announce_batch: 2,
        ..Limits::for_tests()
    };
    let mut core = lazy_node_with(limits, peer(100), &[3], now);
    let mut out = Vec::new();
    for seq in 1..=3 {
        core.publish(publication(100, seq, 10), now, &mut out)
            .unwrap();
    }
    assert_eq!(core.stats("t").unwrap().evicted, 1);
    let mut due = Vec::new();
    core.poll(now + Duration::from_secs(1), &mut due);
    let ids: usize = sends(&due)
        .iter()
        .map(|(_, w)| match w {
            Wire::IHave { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(ids, 2);
}

/// `node`, with `limits`.
fn node_with(limits: Limits, peers: &[u8], now: Instant) -> Core {
    let mut core = lazy_node_with(limits, peer(100), peers, now);
    let mut out = Vec::new();
    for p in peers {
        core.on_wire(peer(*p), place(peer(100), 1, true), now, &mut yes, &mut out);
    }
    core
}

fn delivered(out: &[Output]) -> Vec<MsgId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

/// (received, delivered, dropped) in "t".
fn counts(core: &Core) -> (u64, u64, u64) {
    let stats = core.stats("t").unwrap();
    (stats.received, stats.delivered, stats.dropped)
}

#[test]
fn pushes_past_a_neighbour_s_rate_are_dropped_and_counted() {
    let now = Instant::now();
    let limits = Limits {
        max_pushes_per_sec: 2,
        ..Limits::for_tests()
    };
    let mut core = lazy_node_with(limits, peer(100), &[1], now);
    let mut out = Vec::new();
    for seq in 1..=3 {
        let p = push(publication(9, seq, 10), 1);
        core.on_wire(peer(1), p, now, &mut yes, &mut out);
    }
    assert_eq!(delivered(&out).len(), 2, "{out:?}");
    assert_eq!(counts(&core), (2, 2, 1));
}

#[test]
fn pushes_over_the_payload_bound_forged_or_past_the_hop_bound_are_dropped_and_counted() {
    let now = Instant::now();
    let limits = Limits {
        max_payload: 100,
        max_hops: 5,
        ..Limits::for_tests()
    };
    let mut core = lazy_node_with(limits, peer(100), &[1], now);
    let mut out = Vec::new();
    let exactly = push(publication(9, 1, 100), 1);
    core.on_wire(peer(1), exactly, now, &mut yes, &mut out);
    assert_eq!(delivered(&out).len(), 1, "exactly the bound: {out:?}");
    out.clear();
    let over = push(publication(9, 2, 101), 1);
    core.on_wire(peer(1), over, now, &mut yes, &mut out);
    assert_eq!(
        out,
        vec![Output::Charge {
            peer: peer(1),
            points: 1,
            why: "publication over max_payload"
        }]
    );
    out.clear();
    let forged = push(publication(9, 3, 10), 1);
    let mut no = |_: &Publication, _: &MsgId| false;
    core.on_wire(peer(1), forged, now, &mut no, &mut out);
    assert_eq!(
        out,
        vec![Output::Charge {
            peer: peer(1),
            points: 10,
            why: "forged or altered publication"
        }]
    );
    out.clear();
    let far = push(publication(9, 4, 10), 5);
    core.on_wire(peer(1), far, now, &mut yes, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(counts(&core), (1, 1, 3));
}

#[test]
fn publications_past_the_verdict_bound_are_dropped_and_a_verdict_in_time_still_forwards() {
    let now = Instant::now();
    let limits = Limits {
        max_pending_validation: 1,
        ..Limits::for_tests()
    };
    let wait = limits.validation_timeout;
    let mut core = node_with(limits, &[1, 2], now);
    let mut out = Vec::new();
    for seq in 1..=2 {
        let p = push(publication(9, seq, 10), 1);
        core.on_wire(peer(1), p, now, &mut yes, &mut out);
    }
    let ids = delivered(&out);
    assert_eq!(ids.len(), 1, "{out:?}");
    assert_eq!(counts(&core), (2, 1, 1));
    out.clear();
    let later = now + wait - Duration::from_millis(1);
    core.poll(later, &mut out);
    core.verdict(ids[0], Verdict::Accept, later, &mut out);
    let to: Vec<PeerId> = sends(&out).iter().map(|(p, _)| *p).collect();
    assert_eq!(to, vec![peer(2)], "{out:?}");
}

fn ihave(ids: Vec<MsgId>) -> Wire {
    Wire::IHave {
        topic: "t".into(),
        ids: ids.into_iter().map(|id| (id, 1, 0)).collect(),
    }
}

fn want(ids: Vec<MsgId>) -> Wire {
    Wire::Want {
        topic: "t".into(),
        ids,
    }
}

fn ids(n: u64) -> Vec<MsgId> {
    (1..=n).map(|seq| publication(9, seq, 10).id()).collect()
}

#[test]
fn an_announcement_is_bounded_in_ids_and_the_ids_awaited_are_bounded_too() {
    let t0 = Instant::now();
    let timeout = Limits::for_tests().fetch_timeout;
    let limits = Limits {
        max_announce_batch: 3,
        max_missing: 4,
        ..Limits::for_tests()
    };
    let mut core = lazy_node_with(limits, peer(100), &[1, 2], t0);
    let mut out = Vec::new();
    let all = ids(7);
    // Exactly the batch bound: taken, uncharged.
    core.on_wire(peer(1), ihave(all[..3].to_vec()), t0, &mut yes, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // One over: charged, and only the first three read; of those, two find no room (four
    // awaited at most).
    core.on_wire(peer(2), ihave(all[3..7].to_vec()), t0, &mut yes, &mut out);
    assert_eq!(
        out,
        vec![Output::Charge {
            peer: peer(2),
            points: 1,
            why: "announcement over max_announce_batch"
        }]
    );
    assert_eq!(core.stats("t").unwrap().evicted, 2);
    out.clear();
    core.poll(t0 + timeout, &mut out);
    // Asked in the order of the ids (the awaited ids are a sorted map).
    let mut first = all[..3].to_vec();
    first.sort();
    assert_eq!(
        sends(&out),
        vec![(peer(1), &want(first)), (peer(2), &want(vec![all[3]]))]
    );
}

#[test]
fn an_id_keeps_sixteen_announcers_each_once() {
    let t0 = Instant::now();
    let timeout = Limits::for_tests().fetch_timeout;
    let peers: Vec<u8> = (1..=17).collect();
    let mut core = lazy_node(&peers, t0);
    let mut out = Vec::new();
    let id = ids(1);
    // Peer 1 twice: it is kept once, and the second ask goes to the next announcer.
    core.on_wire(peer(1), ihave(id.clone()), t0, &mut yes, &mut out);
    for p in &peers {
        core.on_wire(peer(*p), ihave(id.clone()), t0, &mut yes, &mut out);
    }
    core.poll(t0 + timeout, &mut out);
    core.poll(t0 + timeout * 2, &mut out);
    let to: Vec<PeerId> = sends(&out).iter().map(|(p, _)| *p).collect();
    assert_eq!(to, vec![peer(1), peer(2)]);
    // The seventeenth was not kept: when the sixteen leave, nobody is left to ask.
    for p in 1..=16 {
        core.on_disconnected(peer(p), t0, &mut out);
    }
    out.clear();
    core.poll(t0 + timeout * 3, &mut out);
    assert!(sends(&out).is_empty(), "{out:?}");
    assert_eq!(core.next_deadline(), None);
}

#[test]
fn a_publication_asked_of_a_lazy_neighbour_then_announced_by_the_tree_is_waited_for_longer() {
    let t0 = Instant::now();
    let timeout = Limits::for_tests().fetch_timeout;
    // peer(1) is a tree neighbour (our child), peer(3) a lazy one.
    let mut core = node(&[1], t0);
    joined(&mut core, &[3], t0);
    let id = ids(1);
    let mut out = Vec::new();
    core.on_wire(peer(3), ihave(id.clone()), t0, &mut yes, &mut out);
    out.clear();
    core.poll(t0 + timeout, &mut out);
    assert_eq!(sends(&out), vec![(peer(3), &want(id.clone()))]);
    // Now the tree announces it: large, already asked, so its answer gets LARGE_FETCH_WAIT
    // timeouts from now instead of one.
    core.on_wire(peer(1), ihave(id.clone()), t0 + timeout, &mut yes, &mut out);
    out.clear();
    let due = t0 + timeout + timeout * (LARGE_FETCH_WAIT - 1);
    core.poll(due - Duration::from_millis(1), &mut out);
    assert!(sends(&out).is_empty(), "{out:?}");
    core.poll(due, &mut out);
    assert_eq!(sends(&out).len(), 1, "{out:?}");
}

#[test]
fn a_want_is_served_from_the_cache_and_its_bytes_counted() {
    let now = Instant::now();
    let mut core = lazy_node(&[1], now);
    let mut out = Vec::new();
    let p = publication(100, 1, 300);
    core.publish(p.clone(), now, &mut out).unwrap();
    assert_eq!(core.stats("t").unwrap().eager_bytes, 0);
    out.clear();
    let unknown = publication(9, 1, 10).id();
    core.on_wire(
        peer(1),
        want(vec![unknown, p.id()]),
        now,
        &mut yes,
        &mut out,
    );
    assert_eq!(sends(&out), vec![(peer(1), &push(p, 1))]);
    assert_eq!(core.stats("t").unwrap().eager_bytes, 300);
}

#[test]
fn a_publication_asked_for_the_last_time_is_waited_for_one_timeout_then_given_up() {
    let t0 = Instant::now();
    let timeout = Limits::for_tests().fetch_timeout;
    let mut core = lazy_node(&[1], t0);
    let mut out = Vec::new();
    core.on_wire(peer(1), ihave(ids(1)), t0, &mut yes, &mut out);
    for k in 1..=MAX_ASKS {
        out.clear();
        core.poll(t0 + timeout * u32::from(k), &mut out);
        assert_eq!(sends(&out).len(), 1, "ask {k}: {out:?}");
    }
    let last = t0 + timeout * u32::from(MAX_ASKS + 1);
    assert_eq!(
        core.stats("t").unwrap().dropped,
        0,
        "given up before the last answer was due"
    );
    assert_eq!(core.next_deadline(), Some(last));
    core.poll(last - Duration::from_millis(1), &mut out);
    assert_eq!(core.stats("t").unwrap().dropped, 0);
    core.poll(last, &mut out);
    assert_eq!(core.stats("t").unwrap().dropped, 1, "not given up when due");
}

#[test]
fn the_neighbours_are_those_connected() {
    let now = Instant::now();
    let mut core = lazy_node(&[1, 2], now);
    let mut listed = core.neighbours();
    listed.sort();
    assert_eq!(listed, vec![peer(1), peer(2)]);
    core.on_disconnected(peer(1), now, &mut Vec::new());
    assert_eq!(core.neighbours(), vec![peer(2)]);
}

#[test]
fn past_the_seen_bound_the_oldest_id_is_forgotten_and_counted() {
    let now = Instant::now();
    let limits = Limits {
        seen_capacity: 2,
        ..Limits::for_tests()
    };
    let mut core = lazy_node_with(limits, peer(100), &[1], now);
    let mut out = Vec::new();
    for seq in [1, 2, 3, 1] {
        let p = push(publication(9, seq, 10), 1);
        core.on_wire(peer(1), p, now, &mut yes, &mut out);
    }
    // The first, forgotten when the third came, is taken again.
    assert_eq!(delivered(&out).len(), 4, "{out:?}");
    assert_eq!(core.stats("t").unwrap().evicted, 2);
}

#[test]
fn past_the_cache_bound_the_oldest_publication_is_no_longer_served() {
    let now = Instant::now();
    let limits = Limits {
        cache_capacity: 1,
        ..Limits::for_tests()
    };
    let mut core = lazy_node_with(limits, peer(100), &[1], now);
    let mut out = Vec::new();
    let (a, b) = (publication(100, 1, 10), publication(100, 2, 10));
    core.publish(a.clone(), now, &mut out).unwrap();
    core.publish(b.clone(), now, &mut out).unwrap();
    assert_eq!(core.stats("t").unwrap().evicted, 1);
    out.clear();
    core.on_wire(peer(1), want(vec![a.id(), b.id()]), now, &mut yes, &mut out);
    assert_eq!(sends(&out), vec![(peer(1), &push(b, 1))]);
}

#[test]
fn seen_ids_and_cached_publications_expire_after_their_time() {
    let t0 = Instant::now();
    let limits = Limits::for_tests();
    let (seen_ttl, cache_ttl) = (limits.seen_ttl, limits.cache_ttl);
    assert!(cache_ttl < seen_ttl);
    let mut core = lazy_node(&[1, 2], t0);
    let mut out = Vec::new();
    let mine = publication(100, 1, 10);
    core.publish(mine.clone(), t0, &mut out).unwrap();
    let theirs = publication(9, 1, 10);
    core.on_wire(peer(1), push(theirs.clone(), 1), t0, &mut yes, &mut out);
    let asked = |core: &mut Core, at: Instant| {
        let mut out = Vec::new();
        core.poll(at, &mut out);
        out.clear();
        core.on_wire(peer(2), want(vec![mine.id()]), at, &mut yes, &mut out);
        sends(&out).len()
    };
    assert_eq!(
        asked(&mut core, t0 + cache_ttl - Duration::from_millis(1)),
        1
    );
    assert_eq!(
        asked(&mut core, t0 + cache_ttl),
        0,
        "served after cache_ttl"
    );
    let again = |core: &mut Core, at: Instant| {
        let mut out = Vec::new();
        core.poll(at, &mut out);
        out.clear();
        core.on_wire(peer(1), push(theirs.clone(), 1), at, &mut yes, &mut out);
        delivered(&out).len()
    };
    assert_eq!(
        again(&mut core, t0 + seen_ttl - Duration::from_millis(1)),
        0
    );
    assert_eq!(
        again(&mut core, t0 + seen_ttl),
        1,
        "still seen after seen_ttl"
    );
}

#[path = "source_tests.rs"]
mod source;
