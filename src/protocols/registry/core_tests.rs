use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::core::*;
use crate::Keypair;
use crate::peers::record::PeerRecord;

const HEARTBEAT: Duration = Duration::from_secs(1);

fn limits() -> DirectoryLimits {
    DirectoryLimits {
        max_members: 4,
        heartbeat: HEARTBEAT,
        missed: 3,
        log: 8,
    }
}

fn key(n: u8) -> Keypair {
    Keypair::from_secret_bytes(&[n; 32])
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn record(n: u8, seq: u64, name: Option<&str>, state: Option<u8>) -> PeerRecord {
    PeerRecord::sign(
        &key(n),
        vec![addr(7000 + u16::from(n))],
        seq,
        name.map(str::to_owned),
        state.map(|s| [s; 32]),
    )
    .unwrap()
}

fn joined_ids(events: &[MembershipEvent]) -> Vec<crate::PeerId> {
    events
        .iter()
        .filter_map(|e| match e {
            MembershipEvent::Joined(m) => Some(m.id),
            _ => None,
        })
        .collect()
}

#[test]
fn members_follow_the_list_by_deltas_and_resolve_names() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    let mut view = View::new(key(1).peer_id(), 16);
    dir.admit(key(1).peer_id(), record(1, 1, Some("a"), None), t0)
        .unwrap();
    // Registration answers with the whole list.
    assert_eq!(dir.version(), 1);
    let events = view.reset(dir.version(), dir.records());
    assert!(events.is_empty(), "its own listing is not news: {events:?}");

    dir.admit(key(2).peer_id(), record(2, 1, Some("b"), None), t0)
        .unwrap();
    dir.admit(key(3).peer_id(), record(3, 1, Some("c"), None), t0)
        .unwrap();
    let delta = dir.since(view.version());
    assert!(matches!(&delta, Delta::Changes { base: 1, changes } if changes.len() == 2));
    let events = view.apply(delta).unwrap();
    assert_eq!(joined_ids(&events), [key(2).peer_id(), key(3).peer_id()]);
    assert_eq!(view.version(), 3);
    assert_eq!(view.resolve("b"), Some(key(2).peer_id()));
    assert_eq!(view.resolve("nobody"), None);
    assert_eq!(view.members().len(), 3);

    // The same delta again changes nothing; an overlapping one applies only its new part.
    assert!(view.apply(dir.since(1)).unwrap().is_empty());
    assert!(dir.leave(key(2).peer_id()));
    let events = view.apply(dir.since(2)).unwrap();
    assert_eq!(events, [MembershipEvent::Left(key(2).peer_id())]);
    assert_eq!(view.resolve("b"), None);
}

#[test]
fn registrations_are_refused_for_a_foreign_record_a_taken_name_or_a_full_list() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    // A record signed by node 2, sent over node 1's connection.
    assert_eq!(
        dir.check(key(1).peer_id(), &record(2, 1, None, None)),
        Err(Refusal::BadRecord)
    );
    dir.admit(key(1).peer_id(), record(1, 1, Some("a"), None), t0)
        .unwrap();
    assert_eq!(
        dir.check(key(2).peer_id(), &record(2, 1, Some("a"), None)),
        Err(Refusal::NameTaken)
    );
    // Its own name again (a restart) is fine.
    assert_eq!(
        dir.check(key(1).peer_id(), &record(1, 2, Some("a"), None)),
        Ok(())
    );
    for n in 2..=4 {
        dir.admit(key(n).peer_id(), record(n, 1, None, None), t0)
            .unwrap();
    }
    assert_eq!(
        dir.check(key(5).peer_id(), &record(5, 1, None, None)),
        Err(Refusal::Full)
    );
    // Re-registering a listed node is not refused for a full list.
    assert_eq!(
        dir.admit(key(4).peer_id(), record(4, 2, None, None), t0),
        Ok(())
    );
    assert_eq!(dir.len(), 4);
}

#[test]
fn silent_members_are_dropped_after_the_missed_heartbeats_and_only_then() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    let (a, b) = (record(1, 1, None, None), record(2, 1, None, None));
    dir.admit(a.id(), a.clone(), t0).unwrap();
    dir.admit(b.id(), b.clone(), t0).unwrap();
    assert_eq!(
        dir.next_due(),
        Some(t0 + 3 * HEARTBEAT + Duration::from_millis(1))
    );
    // A beats every second, B never.
    for s in 1..=3 {
        let now = t0 + s * HEARTBEAT;
        assert_eq!(dir.heartbeat(a.id(), &a, now), Beat::Ok(2));
        assert!(dir.expire(now).is_empty(), "nobody is dropped at {s} s");
    }
    let now = t0 + 3 * HEARTBEAT + Duration::from_millis(2);
    assert_eq!(dir.expire(now), [b.id()]);
    assert!(dir.contains(&a.id()));
    assert_eq!(dir.heartbeat(b.id(), &b, now), Beat::Unknown);
    assert_eq!(dir.version(), 3, "the drop is a numbered change");
}

#[test]
fn a_new_state_hash_is_an_update_and_a_new_address_needs_a_new_registration() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    let mut view = View::new(key(9).peer_id(), 16);
    let old = record(1, 1, Some("a"), None);
    dir.admit(old.id(), old.clone(), t0).unwrap();
    view.apply(dir.since(0)).unwrap();

    let newer = record(1, 2, Some("a"), Some(7));
    assert_eq!(dir.heartbeat(old.id(), &newer, t0), Beat::Ok(2));
    let events = view.apply(dir.since(1)).unwrap();
    assert!(
        matches!(&events[..], [MembershipEvent::Updated(m)] if m.state_hash == Some([7; 32])),
        "{events:?}"
    );
    // An older record (a replay) changes nothing.
    assert_eq!(dir.heartbeat(old.id(), &old, t0), Beat::Ok(2));

    let moved = PeerRecord::sign(&key(1), vec![addr(9999)], 3, Some("a".into()), None).unwrap();
    assert_eq!(dir.heartbeat(old.id(), &moved, t0), Beat::Unknown);
    assert!(
        !dir.contains(&old.id()),
        "an unverified address is not kept"
    );
}

#[test]
fn a_member_far_behind_gets_a_snapshot_and_a_gap_is_detected() {
    let t0 = Instant::now();
    let mut dir = Directory::new(DirectoryLimits { log: 2, ..limits() });
    let mut view = View::new(key(9).peer_id(), 16);
    dir.admit(key(1).peer_id(), record(1, 1, None, None), t0)
        .unwrap();
    view.apply(dir.since(0)).unwrap();
    dir.admit(key(2).peer_id(), record(2, 1, None, None), t0)
        .unwrap();
    dir.admit(key(3).peer_id(), record(3, 1, None, None), t0)
        .unwrap();
    let pushed = dir.since(2);
    // Change 2 was never applied: change 3 alone leaves a gap.
    assert_eq!(view.apply(pushed), Err(Gap));
    dir.leave(key(1).peer_id());
    // Three changes behind a log of two: a snapshot, whose difference is reported.
    let delta = dir.since(view.version());
    assert!(matches!(delta, Delta::Snapshot { version: 4, .. }));
    let events = view.apply(delta).unwrap();
    assert_eq!(events[0], MembershipEvent::Left(key(1).peer_id()));
    assert_eq!(joined_ids(&events), [key(2).peer_id(), key(3).peer_id()]);
    assert_eq!(view.version(), 4);
}

#[test]
fn a_registry_cannot_forge_a_member() {
    let mut view = View::new(key(9).peer_id(), 16);
    let genuine = record(1, 1, Some("a"), None);
    // Node 1's record with one bit of its signature changed (a registry altering it).
    let mut bytes = crate::codec::encode_message(&genuine, 4096)
        .unwrap()
        .to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let forged: PeerRecord = crate::codec::decode_message(&bytes).unwrap();
    let events = view
        .apply(Delta::Changes {
            base: 0,
            changes: vec![
                Change::Joined(forged),
                Change::Joined(record(2, 1, None, None)),
            ],
        })
        .unwrap();
    assert_eq!(joined_ids(&events), [key(2).peer_id()]);
    assert_eq!(view.bad_records, 1);
    assert_eq!(view.resolve("a"), None);
}

/// `record` with one bit of its signature changed.
fn forged(record: &PeerRecord) -> PeerRecord {
    let mut bytes = crate::codec::encode_message(record, 4096).unwrap().to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    crate::codec::decode_message(&bytes).unwrap()
}

#[test]
fn only_a_verified_heartbeat_keeps_a_member_alive_and_only_a_change_is_numbered() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut dir = Directory::new(limits());
    let first = record(1, 1, None, None);
    let id = first.id();
    dir.admit(id, first.clone(), t0).unwrap();
    // The same record again is no change; a newer one is.
    dir.admit(id, first.clone(), t0).unwrap();
    assert_eq!(dir.version(), 1);
    let second = record(1, 2, None, None);
    dir.admit(id, second.clone(), t0).unwrap();
    assert_eq!(dir.version(), 2);
    // An older record (a node that has not seen its own update yet) still says it is alive.
    assert_eq!(dir.heartbeat(id, &first, t0 + ms(2500)), Beat::Ok(2));
    assert!(dir.expire(t0 + ms(3500)).is_empty());
    // A forged record, or another node's, does not.
    assert_eq!(
        dir.heartbeat(id, &forged(&second), t0 + ms(5000)),
        Beat::Ok(2)
    );
    let other = record(2, 9, None, None);
    assert_eq!(dir.heartbeat(id, &other, t0 + ms(5000)), Beat::Ok(2));
    assert_eq!(dir.expire(t0 + ms(5502)), [id]);
    // Leaving twice is one change.
    assert!(!dir.leave(id));
    assert_eq!(dir.version(), 3);
}

#[test]
fn a_heartbeat_with_a_new_name_must_register_again() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    let named = record(1, 1, Some("a"), None);
    dir.admit(named.id(), named.clone(), t0).unwrap();
    let renamed = record(1, 2, Some("b"), None);
    assert_eq!(dir.heartbeat(named.id(), &renamed, t0), Beat::Unknown);
    assert!(!dir.contains(&named.id()));
    assert_eq!(
        dir.since(1),
        Delta::Changes {
            base: 1,
            changes: vec![Change::Left(named.id())]
        }
    );
}

#[test]
fn the_next_due_is_the_first_member_to_fall_silent() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    assert_eq!(dir.next_due(), None);
    let (a, b) = (record(1, 1, None, None), record(2, 1, None, None));
    dir.admit(a.id(), a.clone(), t0).unwrap();
    dir.admit(b.id(), b.clone(), t0 + HEARTBEAT).unwrap();
    let grace = 3 * HEARTBEAT + Duration::from_millis(1);
    assert_eq!(dir.next_due(), Some(t0 + grace));
    dir.heartbeat(a.id(), &a, t0 + 2 * HEARTBEAT);
    assert_eq!(dir.next_due(), Some(t0 + HEARTBEAT + grace));
}

#[test]
fn a_member_ahead_of_the_registry_gets_a_snapshot() {
    let t0 = Instant::now();
    let mut dir = Directory::new(limits());
    for n in 1..=2 {
        dir.admit(key(n).peer_id(), record(n, 1, None, None), t0)
            .unwrap();
    }
    // A member that followed an earlier life of this registry, further along, as far as a
    // version can go.
    for ahead in [5, u64::MAX] {
        assert!(matches!(
            dir.since(ahead),
            Delta::Snapshot { version: 2, ref records } if records.len() == 2
        ));
    }
    assert_eq!(
        dir.since(2),
        Delta::Changes {
            base: 2,
            changes: Vec::new()
        }
    );
    // The whole log is there from version 0.
    assert!(matches!(dir.since(0), Delta::Changes { base: 0, ref changes } if changes.len() == 2));
}

#[test]
fn a_view_holds_at_most_its_maximum_and_reports_only_real_changes_of_others() {
    let me = key(9).peer_id();
    let mut view = View::new(me, 2);
    let events = view.reset(
        7,
        vec![
            record(1, 1, None, None),
            record(2, 1, None, None),
            record(3, 1, None, None),
        ],
    );
    assert_eq!(events.len(), 2);
    assert_eq!((view.members().len(), view.version()), (2, 7));
    let listed: Vec<_> = view.members().iter().map(|m| m.id).collect();
    // Which of the three nodes was left out is the hash map's choice.
    let number = |id: crate::PeerId| (1..=3u8).find(|n| key(*n).peer_id() == id).unwrap();
    let left_out = (1..=3u8)
        .find(|n| !listed.contains(&key(*n).peer_id()))
        .unwrap();
    let insider = listed[0];
    let n = number(insider);
    let changes = vec![
        // Full: a new node is left out.
        Change::Joined(record(left_out, 1, None, None)),
        // A listed node's newer record is an update; the same record again is nothing.
        Change::Updated(record(n, 2, None, Some(4))),
        Change::Updated(record(n, 2, None, Some(4))),
        // Leaving: a node never listed is nothing; this node itself is not news to itself.
        Change::Left(key(8).peer_id()),
        Change::Left(me),
    ];
    let events = view.apply(Delta::Changes { base: 7, changes }).unwrap();
    assert!(
        matches!(&events[..], [MembershipEvent::Updated(m)] if m.id == insider && m.state_hash == Some([4; 32])),
        "{events:?}"
    );
    assert_eq!(view.version(), 12);
    assert_eq!(view.records().len(), 2);
    // A snapshot with a changed record reports the update; one equal to the view, nothing.
    let same = view.records();
    assert!(view.reset(12, same.clone()).is_empty());
    let mut changed: Vec<PeerRecord> = same.into_iter().filter(|r| r.id() != insider).collect();
    changed.push(record(n, 3, Some("x"), None));
    let events = view.reset(13, changed);
    assert!(
        matches!(&events[..], [MembershipEvent::Updated(m)] if m.name.as_deref() == Some("x")),
        "{events:?}"
    );
    // A registry gone: the next list starts from nothing.
    view.clear_version();
    assert_eq!(view.version(), 0);
    let members = view.members();
    assert_eq!(members.len(), 2, "the nodes are kept until the next list");
    let m = members.iter().find(|m| m.id == insider).unwrap();
    assert_eq!(m.addr, addr(7000 + u16::from(n)));
    assert_eq!(view.bad_records, 0, "every record here verifies");
}
