//! The address book's rules, with fixed keys and hand-picked randomness.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;

fn id(n: u32) -> PeerId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = 1;
    PeerId::from_bytes(b)
}

fn addr(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(a, b, c, d), 7000))
}

fn book() -> Book {
    Book::new(id(0), [7; 32], BookLimits::default())
}

/// A splitmix generator for the tests' randomness.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn one_subnet_gets_a_few_entries_however_many_it_offers() {
    let mut book = book();
    // 200 addresses in one /24, each from a different honest source network.
    let accepted = (0..200u32)
        .filter(|i| {
            let source = Some(IpAddr::from([10, (*i % 200) as u8, 0, 1]));
            book.add(id(1 + i), addr(203, 0, 113, *i as u8), source)
                .is_ok()
        })
        .count();
    assert_eq!(accepted, 4, "per-/24 cap");
    // Across one /16: at most 16.
    let mut wide = 0;
    for i in 0..64u32 {
        let source = Some(IpAddr::from([11, i as u8, 0, 1]));
        if book
            .add(id(1000 + i), addr(198, 51, i as u8, 9), source)
            .is_ok()
        {
            wide += 1;
        }
    }
    assert_eq!(wide, 16, "per-/16 cap");
}

#[test]
fn an_attacker_answering_every_exchange_with_1000_addresses_gets_at_most_10_entries() {
    let mut book = book();
    let mut next = rng(1);
    // 200 attacker hosts in one /24, each answering with 1,000 addresses spread everywhere.
    let mut accepted = 0;
    for host in 0..200u32 {
        let source = Some(IpAddr::from([203, 0, 113, host as u8]));
        for k in 0..1000u32 {
            let r = next();
            let a = addr(
                (r >> 8) as u8 | 1,
                (r >> 16) as u8,
                (r >> 24) as u8,
                (r >> 32) as u8,
            );
            if book.add(id(host * 1000 + k + 1), a, source).is_ok() {
                accepted += 1;
            }
        }
    }
    assert!(accepted <= 10, "{accepted} entries from one source /24");
    assert_eq!(book.len(), accepted);
    // Honest sources still get in.
    let honest = Some(IpAddr::from([192, 0, 2, 1]));
    assert!(book.add(id(9_999_999), addr(100, 64, 1, 1), honest).is_ok());
}

#[test]
fn selection_has_no_recency_bias_and_splits_tried_and_new_evenly() {
    let mut book = book();
    // 100 entries, from different sources (a few land on a taken slot and are skipped).
    let mut held = Vec::new();
    let mut i = 0u32;
    while held.len() < 100 {
        i += 1;
        // A book that refuses nearly everything fails here instead of looping forever.
        assert!(
            i < 1_000,
            "only {} of {i} distinct entries taken",
            held.len()
        );
        let source = Some(IpAddr::from([10, i as u8, (i >> 8) as u8, 1]));
        let a = addr(20, i as u8, (i >> 8) as u8, 1);
        if book.add(id(i), a, source).is_ok() {
            held.push((id(i), a));
        }
    }
    // Reach the first 10 (the oldest): they move to tried.
    for (p, a) in &held[..10] {
        book.reached(*p, *a);
    }
    assert_eq!(book.tried_len(), 10);
    let tried: Vec<PeerId> = held[..10].iter().map(|(p, _)| *p).collect();
    let mut next = rng(2);
    let mut counts: HashMap<PeerId, u32> = HashMap::new();
    let mut tried_picks = 0;
    for _ in 0..20_000 {
        let (picked, _) = book.select(next(), next()).unwrap();
        *counts.entry(picked).or_default() += 1;
        if tried.contains(&picked) {
            tried_picks += 1;
        }
    }
    // Even odds between the tables...
    assert!(
        (9_000..11_000).contains(&tried_picks),
        "{tried_picks} tried picks of 20,000"
    );
    // ...and within the new table no entry is favoured: the oldest and the newest alike.
    let mean = 10_000.0 / 90.0;
    for (p, _) in &held[10..] {
        let c = f64::from(counts.get(p).copied().unwrap_or(0));
        assert!(c > mean * 0.6 && c < mean * 1.4, "{p}: {c}");
    }
}

#[test]
fn reached_peers_become_anchors_newest_first() {
    let mut book = book();
    for i in 1..=6u32 {
        book.reached(id(i), addr(30, i as u8, 0, 1));
    }
    let anchors: Vec<PeerId> = book.anchors().iter().map(|(p, _)| *p).collect();
    assert_eq!(anchors, vec![id(6), id(5), id(4), id(3)]);
    // Reached again: to the front, once.
    book.reached(id(4), addr(30, 4, 0, 1));
    let anchors: Vec<PeerId> = book.anchors().iter().map(|(p, _)| *p).collect();
    assert_eq!(anchors, vec![id(4), id(6), id(5), id(3)]);
    // Forgotten peers leave the anchors, and the book.
    assert!(book.contains(&id(6)) && book.is_tried(&id(6)));
    book.remove(&id(6));
    assert_eq!(book.anchors().len(), 3);
    assert!(!book.contains(&id(6)) && !book.is_tried(&id(6)));
    // Heard of but never reached: held, not tried.
    book.add(id(9), addr(31, 9, 0, 1), Some(IpAddr::from([10, 9, 0, 1])))
        .unwrap();
    assert!(book.contains(&id(9)) && !book.is_tried(&id(9)));
}

#[test]
fn failing_entries_are_forgotten_and_their_slots_freed() {
    let mut book = Book::new(
        id(0),
        [7; 32],
        BookLimits {
            max_failures: 3,
            ..BookLimits::default()
        },
    );
    let source = Some(IpAddr::from([10, 0, 0, 1]));
    book.add(id(1), addr(40, 0, 0, 1), source).unwrap();
    book.failed(&id(1));
    book.failed(&id(1));
    assert_eq!(book.len(), 1);
    book.failed(&id(1));
    assert_eq!(book.len(), 0);
    // Its counts went with it: the source may add again.
    assert!(book.add(id(2), addr(40, 0, 0, 2), source).is_ok());
    // A tried entry is never forgotten for failures (a restart may take long).
    book.reached(id(2), addr(40, 0, 0, 2));
    for _ in 0..10 {
        book.failed(&id(2));
    }
    assert_eq!(book.len(), 1);
}

#[test]
fn the_book_refuses_itself_and_duplicates_and_stays_within_its_tables() {
    let mut book = Book::new(
        id(0),
        [9; 32],
        BookLimits {
            new_buckets: 2,
            bucket_size: 4,
            ..BookLimits::default()
        },
    );
    assert_eq!(book.add(id(0), addr(1, 1, 1, 1), None), Err(Refused::Local));
    book.add(id(1), addr(1, 1, 1, 1), None).unwrap();
    assert_eq!(book.add(id(1), addr(2, 2, 2, 2), None), Err(Refused::Known));
    let mut taken = 0;
    for i in 2..200u32 {
        match book.add(
            id(i),
            addr(i as u8, (i >> 8) as u8, 1, 1),
            Some(IpAddr::from([10, i as u8, 0, 1])),
        ) {
            Ok(()) => {}
            Err(Refused::SlotTaken) => taken += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(book.len() <= 2 * 4, "{} entries in 8 slots", book.len());
    assert!(taken > 0);
}

#[test]
fn a_small_network_on_one_subnet_keeps_every_entry_despite_collisions() {
    // Loopback, or a private network on one /24: every entry shares a bucket, and 20 entries
    // in 32 slots collide somewhere almost always. With a few probes, none is lost.
    for seed in 0..50u32 {
        let mut book = Book::new(
            id(10_000 + seed),
            [7u8; 32],
            BookLimits {
                max_per_source: 64,
                max_per_24: 64,
                max_per_16: 64,
                ..BookLimits::default()
            },
        );
        for i in 1..=20u32 {
            let at = SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + i as u16));
            book.add(id(seed * 100 + i), at, Some(IpAddr::from([127, 0, 0, 1])))
                .unwrap();
        }
        assert_eq!(book.len(), 20, "seed {seed}");
    }
}

#[test]
fn reached_peers_spread_over_the_tried_buckets_and_a_full_bucket_evicts_into_new() {
    let mut book = book();
    // 700 peers, each on its own /16: their tried buckets (by /24) are spread, so far more
    // than one bucket's 32 are kept; some buckets overflow and evict an occupant.
    for i in 0..700u32 {
        let a = addr(1 + (i / 200) as u8, (i % 200) as u8, 7, 1);
        book.reached(id(i + 1), a);
    }
    let tried = book.tried_len();
    assert!(
        tried > 32,
        "{tried} tried entries: one bucket's worth at most"
    );
    assert!(tried <= 16 * 32, "{tried} tried entries");
    // An evicted entry went back to the new table (or was forgotten when its new slot was
    // taken); none is lost from the book while it has room.
    assert!(book.len() > tried, "evicted entries kept in new");
}

#[test]
fn a_removed_entry_frees_its_slot_and_its_source_s_place() {
    let mut book = book();
    let source = Some(IpAddr::from([10, 9, 9, 1]));
    // The source's ten places, each on its own /16.
    for i in 1..=10u32 {
        book.add(id(i), addr(50, i as u8, 0, 1), source).unwrap();
    }
    assert!(book.add(id(11), addr(50, 11, 0, 1), source).is_err());
    book.remove(&id(3));
    // Its slot is empty: every pick finds a live entry, never the removed one.
    for pick in 0..64 {
        let (picked, _) = book.select(1, pick).expect("nine entries left");
        assert_ne!(picked, id(3));
    }
    // And the source has a place again, one only.
    assert!(book.add(id(11), addr(50, 11, 0, 1), source).is_ok());
    assert!(book.add(id(12), addr(50, 12, 0, 1), source).is_err());
}
