//! Which receiver of a push asks the origin for which piece (`Blob::may_ask`), on a blob
//! built by hand: the rule the module's documentation states, piece by piece.

use std::collections::{BTreeSet, HashSet};

use super::*;

fn peer(i: u8) -> PeerId {
    PeerId::from_bytes([i; 32])
}

const ORIGIN: u8 = 9;

/// A blob of `n` pieces pushed by `ORIGIN` to `receivers`.
fn pushed(receivers: &[u8], n: u32) -> Blob {
    let mut blob = Blob::unknown(1);
    let info = Info {
        len: u64::from(n) * 1024,
        piece_size: 1024,
        root: [0; 32],
    };
    blob.learn(info, n, 0);
    blob.origin = Some(Origin {
        peer: peer(ORIGIN),
        receivers: receivers.iter().map(|r| peer(*r)).collect(),
    });
    blob
}

/// The pieces `local` may ask the origin for, with `connected` its connections.
fn asks(blob: &Blob, local: u8, connected: &[u8]) -> BTreeSet<u32> {
    let connected: HashSet<PeerId> = connected.iter().map(|c| peer(*c)).collect();
    (0..blob.n)
        .filter(|i| blob.may_ask(peer(ORIGIN), *i, peer(local), &connected, false))
        .collect()
}

fn set(pieces: &[u32]) -> BTreeSet<u32> {
    pieces.iter().copied().collect()
}

#[test]
fn each_receiver_asks_the_origin_for_its_share_and_a_missing_share_goes_round_the_others() {
    // Receivers 1..=4; 4 is not connected to anyone. Piece i is receiver (i mod 4)'s share;
    // the share of 4 (pieces 3, 7, 11, 15, rounds 0..=3) goes to the receiver at the round's
    // position, skipping 4 itself: 1, 2, 3, then 1 again.
    let blob = pushed(&[1, 2, 3, 4], 16);
    assert_eq!(asks(&blob, 1, &[2, 3, ORIGIN]), set(&[0, 4, 8, 12, 3, 15]));
    assert_eq!(asks(&blob, 2, &[1, 3, ORIGIN]), set(&[1, 5, 9, 13, 7]));
    assert_eq!(asks(&blob, 3, &[1, 2, ORIGIN]), set(&[2, 6, 10, 14, 11]));

    // Anything may be asked of a member that is not the origin, and of the origin once the
    // fetch is open (no progress for a while).
    let connected: HashSet<PeerId> = [peer(2), peer(3)].into_iter().collect();
    for i in 0..16 {
        assert!(blob.may_ask(peer(2), i, peer(1), &connected, false), "{i}");
        assert!(
            blob.may_ask(peer(ORIGIN), i, peer(1), &connected, true),
            "{i}"
        );
    }
}

#[test]
fn a_missing_share_is_asked_of_the_origin_only_while_no_other_member_holds_the_piece() {
    let mut blob = pushed(&[1, 2, 3, 4], 16);
    // The origin's own announcement counts one: the piece is still out of reach elsewhere.
    blob.availability[7] = 1;
    assert!(asks(&blob, 2, &[1, 3, ORIGIN]).contains(&7));
    blob.availability[7] = 2;
    assert!(!asks(&blob, 2, &[1, 3, ORIGIN]).contains(&7));
    // A receiver's own share is asked of the origin whoever else holds it.
    blob.availability[5] = 3;
    assert!(asks(&blob, 2, &[1, 3, ORIGIN]).contains(&5));
}

#[test]
fn a_receiver_caught_lying_is_skipped_as_owner_and_as_substitute() {
    // 4 is gone and 2 was caught sending a bad piece: their shares are spread over 1 and 3,
    // each piece to exactly one of them, 2 never chosen in its place.
    let mut blob = pushed(&[1, 2, 3, 4], 16);
    blob.members.insert(
        peer(2),
        Member {
            bad: true,
            ..Member::new(16)
        },
    );
    let one = asks(&blob, 1, &[2, 3, ORIGIN]);
    let three = asks(&blob, 3, &[1, 2, ORIGIN]);
    assert_eq!(one, set(&[0, 4, 8, 12, 1, 13, 3, 15]));
    assert_eq!(three, set(&[2, 6, 10, 14, 5, 9, 7, 11]));
    assert!(one.is_disjoint(&three));
}

#[test]
fn the_tie_break_is_splitmix64_and_ranks_every_piece_apart() {
    // Expected values from an independent SplitMix64 (Python, 64-bit wrapping), whose first
    // two outputs for state 0 are Vigna's published e220a8397b1dcdaf and 6e789e6aa1b965f4:
    // shuffle(seed, i) is the high half of mix(mix(seed) ^ i).
    assert_eq!(shuffle(0, 0), 0xa706_dd2f);
    assert_eq!(shuffle(0, 1), 0x08b4_fda8);
    assert_eq!(shuffle(0, 2), 0xd7cc_9674);
    assert_eq!(shuffle(7919, 5), 0x7a5f_64ac);
    assert_eq!(shuffle(u64::MAX, u32::MAX), 0xe956_7729);
    // What the order is for: equally rare pieces ranked apart, differently on each node.
    for seed in [0, 7919, 15838] {
        let ranks: HashSet<u32> = (0..4096).map(|i| shuffle(seed, i)).collect();
        assert_eq!(ranks.len(), 4096, "seed {seed}");
    }
    let first: Vec<u32> = (0..64).map(|i| shuffle(0, i)).collect();
    let second: Vec<u32> = (0..64).map(|i| shuffle(7919, i)).collect();
    assert_ne!(first, second);
}
