//! Message bodies under hostile input: `decode_message::<M>` for realistic application types and
//! `decode_control`.
//!
//! The first input byte picks the type; the rest is the encoded message. Properties: no panic;
//! every error is `Violation::Undecodable` (`Violation::BadControl` for control messages); and
//! where decoding succeeds, the value re-encodes with `encode_message` into at most as many
//! bytes as it was read from, that encoding decodes to an equal value, and a trailing byte makes
//! the input undecodable (one encoding has one meaning).
//!
//! Shared by the fuzz target `fuzz_targets/message_decoder.rs` and by `tests/fuzz_regressions.rs`,
//! which replays the seeds and kept inputs under `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::common::Reader;
use bytes::Bytes;
use peerwire::codec::{Violation, decode_control, decode_message, encode_control, encode_message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A consensus engine's message, as an application would define it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Consensus {
    Proposal {
        height: u64,
        round: u32,
        proposer: [u8; 32],
        parent: Option<[u8; 32]>,
        block: Bytes,
        transactions: Vec<Vec<u8>>,
        note: String,
    },
    Vote(Vote),
    Commit {
        height: u64,
        block_hash: [u8; 32],
        votes: Vec<Vote>,
    },
    Timeout {
        height: u64,
        round: u32,
        last_seen: Option<u64>,
    },
    SyncRequest {
        from: u64,
        to: Option<u64>,
        peers: Vec<(String, u16)>,
    },
    Evidence {
        first: Vote,
        second: Vote,
        offset: i64,
        slashed: bool,
        reason: Option<String>,
        marker: char,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Vote {
    height: u64,
    round: u32,
    kind: VoteKind,
    block_hash: Option<[u8; 32]>,
    voter: u16,
    signature: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum VoteKind {
    Prevote,
    Precommit,
}

/// Runs one input through the target's properties (panics on a violation).
pub(crate) fn run(data: &[u8]) {
    let mut input = Reader::new(data);
    let Some(selector) = input.byte() else {
        return;
    };
    let bytes = input.rest();
    match selector % 6 {
        0 => round_trip::<Bytes>(bytes),
        1 => round_trip::<Consensus>(bytes),
        2 => round_trip::<(u64, String, Vec<u8>)>(bytes),
        3 => round_trip::<Vec<Consensus>>(bytes),
        4 => round_trip::<BTreeMap<u64, Option<String>>>(bytes),
        _ => control(bytes),
    }
}

fn round_trip<M>(bytes: &[u8])
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = match decode_message::<M>(bytes) {
        Ok(value) => value,
        Err(Violation::Undecodable(_)) => return,
        Err(other) => panic!("decode_message returned {other:?}"),
    };
    // Re-encoding never needs more room than the bytes the value was read from.
    let encoded = encode_message(&value, bytes.len()).expect("re-encode");
    let again = decode_message::<M>(&encoded).expect("decode re-encoded");
    assert_eq!(again, value);
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(
        decode_message::<M>(&longer),
        Err(Violation::Undecodable(_))
    ));
}

fn control(bytes: &[u8]) {
    let message = match decode_control(bytes) {
        Ok(message) => message,
        Err(Violation::BadControl) => return,
        Err(other) => panic!("decode_control returned {other:?}"),
    };
    let encoded = encode_control(&message);
    assert!(encoded.len() <= bytes.len());
    assert_eq!(decode_control(&encoded), Ok(message));
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert_eq!(decode_control(&longer), Err(Violation::BadControl));
}
