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

/// A core in topic "t" with neighbours `peers`, all of which joined it too.
fn node(peers: &[u8], now: Instant) -> Core {
    let mut core = Core::new(Limits::for_tests());
    let mut out = Vec::new();
    core.join("t", true, &mut out).unwrap();
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
    core
}

fn sends(out: &[Output]) -> Vec<(PeerId, &Wire)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { peer, wire } => Some((*peer, wire)),
            _ => None,
        })
        .collect()
}

fn push(p: Publication, hops: u8, detour: bool) -> Wire {
    Wire::Push {
        hops,
        detour,
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
        push(publication(9, 1, 10), 1, false),
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
        push(publication(9, 1, 10), 1, false),
        now,
        &mut yes,
        &mut out,
    );
    core.on_wire(
        peer(1),
        push(publication(9, 2, 10), 1, false),
        now,
        &mut yes,
        &mut out,
    );
    let ids: Vec<MsgId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
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

#[test]
fn a_duplicate_along_the_tree_prunes_the_longer_link_but_a_detour_prunes_nothing() {
    let now = Instant::now();
    let mut core = node(&[1, 2, 3], now);
    let mut out = Vec::new();
    core.on_wire(
        peer(1),
        push(publication(9, 1, 10), 3, false),
        now,
        &mut yes,
        &mut out,
    );
    out.clear();
    // The same from 2 with more hops: 2's link goes lazy.
    core.on_wire(
        peer(2),
        push(publication(9, 1, 10), 5, false),
        now,
        &mut yes,
        &mut out,
    );
    assert_eq!(
        sends(&out),
        vec![(peer(2), &Wire::Prune { topic: "t".into() })]
    );
    assert_eq!(core.links("t"), (2, 1));
    // From 3 with fewer hops: the first link (1) goes lazy instead.
    out.clear();
    core.on_wire(
        peer(3),
        push(publication(9, 1, 10), 1, false),
        now,
        &mut yes,
        &mut out,
    );
    assert_eq!(
        sends(&out),
        vec![(peer(1), &Wire::Prune { topic: "t".into() })]
    );
    // A copy that took a detour says nothing about the tree.
    out.clear();
    core.on_wire(
        peer(3),
        push(publication(9, 2, 10), 1, false),
        now,
        &mut yes,
        &mut out,
    );
    out.clear();
    core.on_wire(
        peer(2),
        push(publication(9, 2, 10), 9, true),
        now,
        &mut yes,
        &mut out,
    );
    assert!(sends(&out).is_empty());
    assert_eq!(core.stats("t").unwrap().duplicates, 3);
}

#[test]
fn an_announced_publication_is_fetched_after_the_timeout_and_a_broken_tree_is_grafted() {
    let t0 = Instant::now();
    let mut core = node(&[1], t0);
    let mut out = Vec::new();
    // Peer 1 goes lazy (a prune), then only announces.
    core.on_wire(
        peer(1),
        Wire::Prune { topic: "t".into() },
        t0,
        &mut yes,
        &mut out,
    );
    let timeout = Limits::for_tests().graft_timeout;
    let mut at = t0;
    for seq in 1..=4u64 {
        let id = publication(9, seq, 10).id();
        out.clear();
        core.on_wire(
            peer(1),
            Wire::IHave {
                topic: "t".into(),
                ids: vec![(id, 2)],
            },
            at,
            &mut yes,
            &mut out,
        );
        core.poll(at + timeout / 2, &mut out);
        assert!(sends(&out).is_empty(), "asked before the timeout");
        core.poll(at + timeout, &mut out);
        let asked = sends(&out);
        assert_eq!(asked.len(), 1);
        // Three fetches in a row with no tree copy: the fourth grafts (repairs the tree).
        match (seq, asked[0].1) {
            (1..=3, Wire::Want { ids, .. }) | (4, Wire::Graft { ids, .. }) => {
                assert_eq!(ids, &vec![id])
            }
            (_, other) => panic!("publication {seq}: {other:?}"),
        }
        out.clear();
        core.on_wire(
            peer(1),
            push(publication(9, seq, 10), 3, true),
            at + timeout,
            &mut yes,
            &mut out,
        );
        at += timeout * 2;
    }
    assert_eq!(
        core.links("t"),
        (1, 0),
        "the announcer is eager after the graft"
    );
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
}

#[test]
fn joins_and_publications_are_bounded() {
    let now = Instant::now();
    let mut core = Core::new(Limits {
        max_topics: 2,
        ..Limits::for_tests()
    });
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
    let too_big = Publication {
        topic: "a".into(),
        ..publication(1, 1, (1 << 20) + 1)
    };
    assert!(matches!(
        core.publish(too_big, now, &mut out),
        Err(PublishError::TooLarge { .. })
    ));
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
    let mut core = node(&[1], t0);
    let mut out = Vec::new();
    core.on_wire(
        peer(1),
        Wire::Prune { topic: "t".into() },
        t0,
        &mut yes,
        &mut out,
    );
    let id = publication(9, 1, 10).id();
    core.on_wire(
        peer(1),
        Wire::IHave {
            topic: "t".into(),
            ids: vec![(id, 2)],
        },
        t0,
        &mut yes,
        &mut out,
    );
    let timeout = Limits::for_tests().graft_timeout;
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
