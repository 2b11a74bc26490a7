//! The core's source trees driven by hand (the pure tree in `source.rs` has its own tests).

use super::*;
use crate::protocols::gossip::source::{ACTIVE, MAX_SOURCES, NO_WAY, RAISE, SETTLE, TTL};

/// `Source` from a neighbour: its way to `origin` in "t".
fn way(origin: PeerId, seq: u16, dist: u8, parent: bool) -> Wire {
    Wire::Source {
        topic: "t".into(),
        origin,
        seq,
        dist,
        parent,
        stamp: [0; 64],
    }
}

/// The source ways `out` tells: (to, origin, dist, parent), sorted.
fn ways(out: &[Output]) -> Vec<(PeerId, PeerId, u8, bool)> {
    let mut told: Vec<_> = sends(out)
        .into_iter()
        .filter_map(|(to, wire)| match wire {
            Wire::Source {
                origin,
                dist,
                parent,
                ..
            } => Some((to, *origin, *dist, *parent)),
            _ => None,
        })
        .collect();
    told.sort();
    told
}

/// The pushes in `out`: (to, whether it goes down a source tree), sorted.
fn pushes(out: &[Output]) -> Vec<(PeerId, bool)> {
    let mut pushed: Vec<_> = sends(out)
        .into_iter()
        .filter_map(|(to, wire)| match wire {
            Wire::Push { by_source, .. } => Some((to, *by_source)),
            _ => None,
        })
        .collect();
    pushed.sort();
    pushed
}

fn charges(out: &[Output]) -> Vec<u32> {
    out.iter()
        .filter_map(|o| match o {
            Output::Charge { points, .. } => Some(*points),
            _ => None,
        })
        .collect()
}

#[test]
fn a_publisher_roots_its_own_tree_at_its_second_publication_and_uses_it_once_told() {
    let t0 = Instant::now();
    let me = peer(100);
    let mut core = node(&[1, 2, 3], t0);
    let mut out = Vec::new();
    core.publish(publication(100, 1, 10), t0, &mut out).unwrap();
    assert!(ways(&out).is_empty(), "a first publication roots nothing");
    assert_eq!(core.source_way("t", &me), None);

    // The second within ACTIVE: the tree is told to every neighbour before the publication,
    // which still takes the elected tree (nobody has had time to hear of it).
    out.clear();
    let t1 = t0 + ACTIVE - Duration::from_millis(1);
    core.publish(publication(100, 2, 10), t1, &mut out).unwrap();
    assert_eq!(
        ways(&out),
        vec![
            (peer(1), me, 0, false),
            (peer(2), me, 0, false),
            (peer(3), me, 0, false)
        ]
    );
    let first_push = out.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                wire: Wire::Push { .. },
                ..
            }
        )
    });
    let last_way = out.iter().rposition(|o| {
        matches!(
            o,
            Output::Send {
                wire: Wire::Source { .. },
                ..
            }
        )
    });
    assert!(last_way < first_push, "the tree is told first: {out:?}");
    assert_eq!(
        pushes(&out),
        vec![(peer(1), false), (peer(2), false), (peer(3), false)]
    );
    assert_eq!(core.source_way("t", &me), Some((0, None)));

    // The neighbours tell their ways: 1 takes us as next hop, 2 has a way through another
    // node, 3 has told nothing yet.
    core.on_wire(peer(1), way(me, 0, 1, true), t1, &mut yes, &mut out);
    core.on_wire(peer(2), way(me, 0, 2, false), t1, &mut yes, &mut out);
    out.clear();
    // Before SETTLE: still the elected tree.
    let t2 = t1 + SETTLE - Duration::from_millis(1);
    core.publish(publication(100, 3, 10), t2, &mut out).unwrap();
    assert_eq!(
        pushes(&out),
        vec![(peer(1), false), (peer(2), false), (peer(3), false)]
    );
    // After: down the source tree to the child; to 3, which has no way in it, along the
    // elected tree; 2 gets it from its own next hop, so only an announcement (which says no
    // copy comes from us, so it waits for its own).
    out.clear();
    let t3 = t1 + SETTLE;
    core.publish(publication(100, 4, 10), t3, &mut out).unwrap();
    assert_eq!(pushes(&out), vec![(peer(1), true), (peer(3), true)]);
    assert!(ways(&out).is_empty(), "no raise before RAISE");
    out.clear();
    core.poll(t3 + Limits::for_tests().announce_interval, &mut out);
    let id = publication(100, 4, 10).id();
    assert_eq!(
        sends(&out),
        vec![(
            peer(2),
            &Wire::IHave {
                topic: "t".into(),
                ids: vec![(id, 0, BY_SOURCE)]
            }
        )]
    );

    // RAISE after the last raise, a publication raises the number and tells it again.
    out.clear();
    let before = core.topics["t"].source_seq;
    core.publish(publication(100, 5, 10), t1 + RAISE, &mut out)
        .unwrap();
    assert_eq!(ways(&out).len(), 3, "{out:?}");
    assert_eq!(core.topics["t"].source_seq, before.wrapping_add(1));
}

#[test]
fn a_publisher_that_publishes_seldom_roots_no_tree() {
    let t0 = Instant::now();
    let mut core = node(&[1, 2], t0);
    let mut out = Vec::new();
    for k in 0..3 {
        let at = t0 + ACTIVE * k;
        core.publish(publication(100, u64::from(k), 10), at, &mut out)
            .unwrap();
    }
    assert!(ways(&out).is_empty(), "{out:?}");
    assert_eq!(core.source_way("t", &peer(100)), None);
}

#[test]
fn a_neighbour_s_way_is_taken_told_on_and_lost_with_it() {
    let now = Instant::now();
    let mut core = lazy_node(&[1, 2, 3], now);
    let mut out = Vec::new();
    core.on_wire(peer(1), way(peer(1), 5, 0, false), now, &mut yes, &mut out);
    assert_eq!(core.source_way("t", &peer(1)), Some((1, Some(peer(1)))));
    assert_eq!(
        ways(&out),
        vec![
            (peer(1), peer(1), 1, true),
            (peer(2), peer(1), 1, false),
            (peer(3), peer(1), 1, false)
        ]
    );
    // A longer way from 2 changes nothing.
    out.clear();
    core.on_wire(peer(2), way(peer(1), 5, 3, false), now, &mut yes, &mut out);
    assert!(ways(&out).is_empty());
    // The origin goes: 2's way (3 hops, longer than the 1 we told) may lead through us: no
    // way, told to the neighbours left.
    out.clear();
    core.on_disconnected(peer(1), now, &mut out);
    assert_eq!(core.source_way("t", &peer(1)), None);
    assert_eq!(
        ways(&out),
        vec![
            (peer(2), peer(1), NO_WAY, false),
            (peer(3), peer(1), NO_WAY, false)
        ]
    );
    // A neighbour that joins the topic later hears of the trees we have a way in.
    let mut core = lazy_node(&[1], now);
    core.on_wire(peer(1), way(peer(1), 5, 0, false), now, &mut yes, &mut out);
    out.clear();
    joined(&mut core, &[4], now);
    core.on_wire(
        peer(4),
        Wire::Join {
            topics: vec!["t".into()],
        },
        now,
        &mut yes,
        &mut out,
    );
    assert!(ways(&out).is_empty(), "told once, when it joined");
}

#[test]
fn impossible_forged_and_far_ahead_ways_are_charged_and_not_recorded() {
    let now = Instant::now();
    let key = crate::identity::Keypair::generate();
    let origin = key.peer_id();
    let mut core = lazy_node(&[1, 2], now);
    let mut keys = RealKeys::default();
    let mut out = Vec::new();
    // 0 hops from a node that is not the origin.
    core.on_wire(peer(2), way(peer(9), 1, 0, false), now, &mut keys, &mut out);
    assert_eq!(charges(&out), vec![10]);
    assert_eq!(core.source_way("t", &peer(9)), None);
    // A number the origin did not sign; then its signature of the elected tree's number,
    // which is not a source tree's.
    let signed = |seq: u16, bytes: Vec<u8>| Wire::Source {
        topic: "t".into(),
        origin,
        seq,
        dist: 1,
        parent: false,
        stamp: key.sign(&bytes),
    };
    out.clear();
    core.on_wire(peer(1), way(origin, 3, 1, false), now, &mut keys, &mut out);
    core.on_wire(
        peer(1),
        signed(3, seq_signed_bytes("t", 3)),
        now,
        &mut keys,
        &mut out,
    );
    assert_eq!(charges(&out), vec![10, 10]);
    assert_eq!(core.source_way("t", &origin), None);
    assert!(core.topics["t"].sources.is_empty(), "nothing recorded");
    // Signed: taken, and the stamp is checked once.
    out.clear();
    let good = signed(3, source_signed_bytes("t", 3));
    core.on_wire(peer(1), good.clone(), now, &mut keys, &mut out);
    assert_eq!(core.source_way("t", &origin), Some((2, Some(peer(1)))));
    let checked = keys.stamps_checked;
    core.on_wire(peer(2), good, now, &mut keys, &mut out);
    assert_eq!(
        keys.stamps_checked, checked,
        "a known stamp is not checked again"
    );
    assert!(charges(&out).is_empty());
    // Far ahead of the number we know, although signed: charged a point, not taken.
    let ahead = 3 + 65;
    out.clear();
    core.on_wire(
        peer(2),
        signed(ahead, source_signed_bytes("t", ahead)),
        now,
        &mut keys,
        &mut out,
    );
    assert_eq!(charges(&out), vec![1]);
    assert_eq!(core.source_way("t", &origin), Some((2, Some(peer(1)))));
}

#[test]
fn past_max_sources_a_new_origin_is_refused_and_counted_until_one_is_idle_for_ttl() {
    let now = Instant::now();
    let mut core = lazy_node(&[1], now);
    let mut out = Vec::new();
    let origins: Vec<PeerId> = (10..=10 + MAX_SOURCES as u8).map(peer).collect();
    for origin in &origins {
        core.on_wire(peer(1), way(*origin, 1, 1, false), now, &mut yes, &mut out);
    }
    let kept = origins
        .iter()
        .filter(|o| core.source_way("t", o).is_some())
        .count();
    assert_eq!(kept, MAX_SOURCES);
    assert_eq!(core.stats("t").unwrap().sources_refused, 1);
    assert_eq!(core.source_way("t", &origins[MAX_SOURCES]), None);
    // A neighbour without a way teaches nothing: not counted either.
    core.on_wire(
        peer(1),
        way(peer(50), 1, NO_WAY, false),
        now,
        &mut yes,
        &mut out,
    );
    assert_eq!(core.stats("t").unwrap().sources_refused, 1);
    // One keeps being used; the others go idle for TTL and make room.
    let later = now + TTL;
    core.on_wire(
        peer(1),
        way(origins[0], 2, 1, false),
        now + TTL / 2,
        &mut yes,
        &mut out,
    );
    core.on_wire(
        peer(1),
        way(origins[MAX_SOURCES], 1, 1, false),
        later,
        &mut yes,
        &mut out,
    );
    assert!(core.source_way("t", &origins[MAX_SOURCES]).is_some());
    assert!(core.source_way("t", &origins[0]).is_some());
    assert_eq!(core.topics["t"].sources.len(), 2);
}

#[test]
fn an_announcement_says_whether_a_copy_is_coming() {
    let t0 = Instant::now();
    let timeout = Limits::for_tests().fetch_timeout;
    let announce = |flags: u8, k: u64| Wire::IHave {
        topic: "t".into(),
        ids: vec![(publication(9, k, 10).id(), 2, flags)],
    };
    let asked = |out: &[Output]| {
        sends(out)
            .iter()
            .filter(|(_, w)| matches!(w, Wire::Want { .. }))
            .count()
    };
    // From an elected-tree neighbour routing by the elected tree: it would have pushed it,
    // so it is large: asked at once.
    let mut core = node(&[1], t0);
    let mut out = Vec::new();
    core.on_wire(peer(1), announce(0, 1), t0, &mut yes, &mut out);
    core.poll(t0, &mut out);
    assert_eq!(asked(&out), 1);
    // The same neighbour routing by a source tree: no copy promised, so wait for ours.
    out.clear();
    core.on_wire(peer(1), announce(BY_SOURCE, 2), t0, &mut yes, &mut out);
    core.poll(t0, &mut out);
    assert_eq!(asked(&out), 0);
    core.poll(t0 + timeout, &mut out);
    assert_eq!(asked(&out), 1);
    // A lazy neighbour that says it would have pushed it: asked at once.
    let mut core = lazy_node(&[1], t0);
    out.clear();
    core.on_wire(
        peer(1),
        announce(BY_SOURCE | WOULD_PUSH, 3),
        t0,
        &mut yes,
        &mut out,
    );
    core.poll(t0, &mut out);
    assert_eq!(asked(&out), 1);
}
