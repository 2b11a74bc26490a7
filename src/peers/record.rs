//! Signed peer records: what a node says about itself (its addresses, a sequence number, an
//! optional name and state hash), signed with its node key. A registry or a peer-exchange
//! neighbour that passes a record on can drop it, but not forge or alter it: the record
//! verifies only against the key its id is. Pure.
//!
//! Carried by peer exchange (`protocols::discovery`); registration (issue 12) will carry them
//! too. Some accessors serve only the tests so far.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::encode_message;
use crate::identity::{Keypair, PeerId};

/// Addresses one record may list.
pub(crate) const MAX_ADDRS: usize = 8;
/// Longest name, in bytes.
pub(crate) const MAX_NAME: usize = 64;
/// What is signed, before the fields: ties a signature to this use of the key.
const DOMAIN: &[u8] = b"peerwire-peer-record-v1";

/// The signed part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    id: PeerId,
    addrs: Vec<SocketAddr>,
    seq: u64,
    name: Option<String>,
    state_hash: Option<[u8; 32]>,
}

/// A node's signed description of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    body: Body,
    #[serde(with = "crate::identity::signature_bytes")]
    signature: [u8; 64],
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("a record lists at most {MAX_ADDRS} addresses, this one {0}")]
    TooManyAddrs(usize),
    #[error("a record lists at least one address")]
    NoAddrs,
    #[error("a name is at most {MAX_NAME} bytes, this one {0}")]
    NameTooLong(usize),
    #[error("the signature does not verify against the record's id")]
    BadSignature,
}

fn signed_bytes(body: &Body) -> Vec<u8> {
    // Bounded fields only (checked before): encoding cannot fail or grow past a few hundred
    // bytes.
    let fields = encode_message(body, 4096)
        .map(|b| b.to_vec())
        .unwrap_or_default();
    [DOMAIN, &fields].concat()
}

fn check(body: &Body) -> Result<(), RecordError> {
    if body.addrs.is_empty() {
        return Err(RecordError::NoAddrs);
    }
    if body.addrs.len() > MAX_ADDRS {
        return Err(RecordError::TooManyAddrs(body.addrs.len()));
    }
    if let Some(name) = &body.name {
        if name.len() > MAX_NAME {
            return Err(RecordError::NameTooLong(name.len()));
        }
    }
    Ok(())
}

impl PeerRecord {
    /// Signs a record for `keypair`'s node.
    ///
    /// # Errors
    /// [`RecordError`] when a field is out of bounds.
    pub(crate) fn sign(
        keypair: &Keypair,
        addrs: Vec<SocketAddr>,
        seq: u64,
        name: Option<String>,
        state_hash: Option<[u8; 32]>,
    ) -> Result<Self, RecordError> {
        let body = Body {
            id: keypair.peer_id(),
            addrs,
            seq,
            name,
            state_hash,
        };
        check(&body)?;
        let signature = keypair.sign(&signed_bytes(&body));
        Ok(Self { body, signature })
    }

    /// Checks the bounds and the signature: a record that passes was made by the node its id
    /// names, exactly as it is.
    ///
    /// # Errors
    /// [`RecordError`].
    pub(crate) fn verify(&self) -> Result<(), RecordError> {
        check(&self.body)?;
        self.body
            .id
            .verify(&signed_bytes(&self.body), &self.signature)
            .map_err(|_| RecordError::BadSignature)
    }

    pub(crate) fn id(&self) -> PeerId {
        self.body.id
    }

    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.body.addrs
    }

    pub(crate) fn seq(&self) -> u64 {
        self.body.seq
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.body.name.as_deref()
    }

    pub(crate) fn state_hash(&self) -> Option<[u8; 32]> {
        self.body.state_hash
    }

    /// Whether this record replaces `other`: the same node, a higher sequence number.
    pub(crate) fn supersedes(&self, other: &Self) -> bool {
        self.body.id == other.body.id && self.body.seq > other.body.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_message;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_signed_record_verifies_and_survives_the_wire() {
        let key = Keypair::generate();
        let record = PeerRecord::sign(
            &key,
            vec![addr(7001)],
            3,
            Some("WeaviateB".into()),
            Some([5; 32]),
        )
        .unwrap();
        assert_eq!(record.verify(), Ok(()));
        let bytes = encode_message(&record, 4096).unwrap();
        let back: PeerRecord = decode_message(&bytes).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.verify(), Ok(()));
        assert_eq!(
            (back.id(), back.seq(), back.name()),
            (key.peer_id(), 3, Some("WeaviateB"))
        );
        assert_eq!(
            (back.addrs(), back.state_hash()),
            (&[addr(7001)][..], Some([5; 32]))
        );
    }

    #[test]
    fn a_relay_can_neither_alter_nor_forge_a_record() {
        let key = Keypair::generate();
        let record = PeerRecord::sign(&key, vec![addr(7001)], 3, None, None).unwrap();
        // Another address, a higher sequence number, a name: each breaks the signature.
        let mut moved = record.clone();
        moved.body.addrs = vec![addr(6666)];
        assert_eq!(moved.verify(), Err(RecordError::BadSignature));
        let mut bumped = record.clone();
        bumped.body.seq = 4;
        assert_eq!(bumped.verify(), Err(RecordError::BadSignature));
        let mut named = record.clone();
        named.body.name = Some("evil".into());
        assert_eq!(named.verify(), Err(RecordError::BadSignature));
        // A record for another node, signed with the relay's own key, does not verify either.
        let relay = Keypair::generate();
        let mut forged = PeerRecord::sign(&relay, vec![addr(6666)], 9, None, None).unwrap();
        forged.body.id = key.peer_id();
        assert_eq!(forged.verify(), Err(RecordError::BadSignature));
    }

    #[test]
    fn records_are_bounded_and_newer_ones_supersede() {
        let key = Keypair::generate();
        let many = (0..9).map(addr).collect();
        assert_eq!(
            PeerRecord::sign(&key, many, 1, None, None),
            Err(RecordError::TooManyAddrs(9))
        );
        assert_eq!(
            PeerRecord::sign(&key, vec![], 1, None, None),
            Err(RecordError::NoAddrs)
        );
        let long = "x".repeat(65);
        assert_eq!(
            PeerRecord::sign(&key, vec![addr(1)], 1, Some(long), None),
            Err(RecordError::NameTooLong(65))
        );
        let old = PeerRecord::sign(&key, vec![addr(1)], 1, None, None).unwrap();
        let new = PeerRecord::sign(&key, vec![addr(2)], 2, None, None).unwrap();
        assert!(new.supersedes(&old));
        assert!(!old.supersedes(&new));
        let other = PeerRecord::sign(&Keypair::generate(), vec![addr(2)], 5, None, None).unwrap();
        assert!(
            !other.supersedes(&old),
            "another node's record never replaces this one"
        );
        // At the bounds: 8 addresses and a 64-byte name are fine; the same number again is
        // not newer.
        let full = PeerRecord::sign(
            &key,
            (0..8).map(addr).collect(),
            3,
            Some("x".repeat(64)),
            None,
        );
        assert!(full.is_ok(), "{full:?}");
        let again = PeerRecord::sign(&key, vec![addr(3)], 2, None, None).unwrap();
        assert!(!again.supersedes(&new), "the same number is not newer");
    }
}
