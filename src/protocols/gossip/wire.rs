//! Gossip's messages and the identity of a publication. Pure: the id is a hash, the signature
//! is checked by the caller with the origin's key.
//!
//! Wire form: postcard of [`Wire`] (the payload inside as raw bytes). A publication's id is
//! `SHA-256("peerwire-gossip-id-v1" ‖ len(topic) ‖ topic ‖ origin ‖ seq ‖ payload)`, cut to 20
//! bytes; the origin signs `"peerwire-gossip-sig-v1" ‖ id`. So a relay can neither alter a
//! publication (the id changes) nor make one up (no signature), and the same payload published
//! twice by one origin is two publications (its `seq` differs).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::PeerId;

/// A publication's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MsgId(pub [u8; 20]);

impl std::fmt::Debug for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One publication as it travels: signed by its origin, unchanged by relays.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Publication {
    pub(crate) topic: String,
    pub(crate) origin: PeerId,
    /// The origin's counter: tells apart equal payloads published twice.
    pub(crate) seq: u64,
    pub(crate) payload: Bytes,
    #[serde(with = "crate::identity::signature_bytes")]
    pub(crate) signature: [u8; 64],
}

impl std::fmt::Debug for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publication")
            .field("topic", &self.topic)
            .field("origin", &self.origin)
            .field("seq", &self.seq)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl Publication {
    /// The id the content determines.
    pub(crate) fn id(&self) -> MsgId {
        id_of(&self.topic, &self.origin, self.seq, &self.payload)
    }
}

/// A publication's id from its parts.
pub(crate) fn id_of(topic: &str, origin: &PeerId, seq: u64, payload: &[u8]) -> MsgId {
    let mut hash = Sha256::new();
    hash.update(b"peerwire-gossip-id-v1");
    hash.update((topic.len() as u64).to_le_bytes());
    hash.update(topic.as_bytes());
    hash.update(origin.as_bytes());
    hash.update(seq.to_le_bytes());
    hash.update(payload);
    let digest = hash.finalize();
    let mut id = [0u8; 20];
    id.copy_from_slice(&digest[..20]);
    MsgId(id)
}

/// A node's rank as a candidate root of `topic`'s tree: the lowest rank among the nodes in the
/// topic is the root. A hash, so each topic has its own root, spread over the nodes.
pub(crate) fn root_rank(topic: &str, node: &PeerId) -> u64 {
    let mut hash = Sha256::new();
    hash.update(b"peerwire-gossip-root-v1");
    hash.update((topic.len() as u64).to_le_bytes());
    hash.update(topic.as_bytes());
    hash.update(node.as_bytes());
    let digest = hash.finalize();
    let mut rank = [0u8; 8];
    rank.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(rank)
}

/// What the origin signs for publication `id`.
pub(crate) fn signed_bytes(id: &MsgId) -> [u8; 42] {
    let mut out = [0u8; 42];
    out[..22].copy_from_slice(b"peerwire-gossip-sig-v1");
    out[22..].copy_from_slice(&id.0);
    out
}

/// What a root signs for sequence number `seq` of its tree of `topic` (the stamp in
/// [`Wire::Tree`]).
pub(crate) fn seq_signed_bytes(topic: &str, seq: u16) -> Vec<u8> {
    numbered(b"peerwire-gossip-seq-v1", topic, seq)
}

/// What an origin signs for sequence number `seq` of its source tree of `topic` (the stamp in
/// [`Wire::Source`]; another tag than the elected tree's, so neither stamp passes for the other).
pub(crate) fn source_signed_bytes(topic: &str, seq: u16) -> Vec<u8> {
    numbered(b"peerwire-gossip-src-v1", topic, seq)
}

/// `tag ‖ len(topic) ‖ topic ‖ seq`: a tree's number as its root signs it.
fn numbered(tag: &[u8; 22], topic: &str, seq: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 8 + topic.len() + 2);
    out.extend_from_slice(tag);
    out.extend_from_slice(&(topic.len() as u64).to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out
}

/// In an announcement: the sender would have pushed this publication whole to the receiver,
/// had it not been large (so fetch it now: no copy is coming).
pub(crate) const WOULD_PUSH: u8 = 1;

/// In an announcement: the sender chose whom to push it to by the origin's source tree, so the
/// receiver's own links in the elected tree say nothing about whether a copy is coming.
pub(crate) const BY_SOURCE: u8 = 2;

/// Gossip's messages between neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// The sender takes part in these topics (subscribed or relaying).
    Join { topics: Vec<String> },
    /// The sender left these topics.
    Leave { topics: Vec<String> },
    /// A whole publication (eager push along the tree, or an answer to `Want`), with the hops
    /// it made, and whether it goes down its origin's source tree (set by the origin once that
    /// tree has settled, passed on unchanged; otherwise the elected tree). Not signed: a relay
    /// that flips it changes which tree carries the publication, not what arrives.
    Push {
        hops: u8,
        by_source: bool,
        publication: Publication,
    },
    /// The sender has these publications of `topic` (lazy push), each with the hops its copy
    /// made and flags ([`WOULD_PUSH`], [`BY_SOURCE`]; other bits are ignored).
    IHave {
        topic: String,
        ids: Vec<(MsgId, u8, u8)>,
    },
    /// Send me these (a fetch: announced publications whose tree copy is late, and large
    /// ones, announced before they are pushed).
    Want { topic: String, ids: Vec<MsgId> },
    /// The sender's place in `topic`'s tree: the root it reaches, that root's sequence number,
    /// in `dist` hops, and whether the receiver is its parent (the next hop towards that root).
    /// Sent when it changes, and to a neighbour that joins the topic. `stamp` is the root's
    /// signature of its sequence number ([`seq_signed_bytes`]), passed on unchanged: only the
    /// root can move its tree's number, so a neighbour cannot make the ways others offer look
    /// old by claiming a number the root never gave.
    Tree {
        topic: String,
        root: PeerId,
        seq: u16,
        dist: u8,
        parent: bool,
        #[serde(with = "crate::identity::signature_bytes")]
        stamp: [u8; 64],
    },
    /// The sender lost its way to `root` and may take no other it was offered: `root`, raise
    /// your sequence number to `seq` (passed up the tree to it), so newer ways can be taken.
    Refresh {
        topic: String,
        root: PeerId,
        seq: u16,
    },
    /// The sender's way to `origin` in that origin's source tree (a tree of its own that a
    /// publisher who keeps publishing roots): `origin`'s sequence number, `dist` hops (255:
    /// no way), and whether the receiver is its next hop. `stamp` is the origin's signature of
    /// its number ([`source_signed_bytes`]), passed on unchanged.
    Source {
        topic: String,
        origin: PeerId,
        seq: u16,
        dist: u8,
        parent: bool,
        #[serde(with = "crate::identity::signature_bytes")]
        stamp: [u8; 64],
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_message, encode_message};

    #[test]
    fn an_id_shows_six_bytes_in_debug_and_all_twenty_in_display() {
        let mut bytes = [0u8; 20];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8 * 11;
        }
        let id = MsgId(bytes);
        assert_eq!(format!("{id:?}"), "000b16212c37");
        assert_eq!(format!("{id}"), "000b16212c37424d58636e79848f9aa5b0bbc6d1");
    }

    #[test]
    fn an_origin_signs_the_tag_and_the_whole_id() {
        let id = publication(b"x").id();
        let signed = signed_bytes(&id);
        assert_eq!(&signed[..22], b"peerwire-gossip-sig-v1");
        assert_eq!(&signed[22..], &id.0);
    }

    #[test]
    fn a_source_tree_s_number_is_signed_under_its_own_tag() {
        let source = source_signed_bytes("doc/1", 7);
        let elected = seq_signed_bytes("doc/1", 7);
        assert_eq!(&source[..22], b"peerwire-gossip-src-v1");
        assert_eq!(
            source[22..],
            elected[22..],
            "the same topic and number follow"
        );
        assert_ne!(source, elected);
        assert_ne!(source_signed_bytes("doc/1", 8), source);
        assert_ne!(source_signed_bytes("doc/2", 7), source);
    }

    #[test]
    fn root_ranks_differ_by_node_and_by_topic() {
        let nodes: Vec<PeerId> = (0..8).map(|n| PeerId::from_bytes([n; 32])).collect();
        let mut ranks: Vec<u64> = nodes.iter().map(|n| root_rank("a", n)).collect();
        ranks.sort_unstable();
        ranks.dedup();
        assert_eq!(ranks.len(), 8, "a rank per node");
        let moved = nodes
            .iter()
            .filter(|n| root_rank("a", n) != root_rank("b", n))
            .count();
        assert_eq!(moved, 8, "a rank per topic");
    }

    #[test]
    fn a_publication_s_debug_shows_its_length_not_its_payload() {
        let shown = format!("{:?}", publication(b"a payload"));
        for part in ["\"doc/1\"", "seq: 7", "len: 9"] {
            assert!(shown.contains(part), "{part} not in {shown}");
        }
        assert!(!shown.contains("payload\""), "{shown}");
    }

    fn publication(payload: &'static [u8]) -> Publication {
        Publication {
            topic: "doc/1".into(),
            origin: PeerId::from_bytes([3; 32]),
            seq: 7,
            payload: Bytes::from_static(payload),
            signature: [9; 64],
        }
    }

    #[test]
    fn the_id_covers_topic_origin_seq_and_payload() {
        let base = publication(b"hello");
        let id = base.id();
        let mut other = base.clone();
        other.topic = "doc/2".into();
        assert_ne!(other.id(), id);
        let mut other = base.clone();
        other.origin = PeerId::from_bytes([4; 32]);
        assert_ne!(other.id(), id);
        let mut other = base.clone();
        other.seq = 8;
        assert_ne!(other.id(), id);
        assert_ne!(publication(b"hellp").id(), id);
        // The signature is not part of the id (it is checked against it).
        let mut other = base.clone();
        other.signature = [0; 64];
        assert_eq!(other.id(), id);
        // Topic boundaries are unambiguous.
        assert_ne!(
            id_of("ab", &base.origin, 1, b"c"),
            id_of("a", &base.origin, 1, b"bc")
        );
    }

    #[test]
    fn every_message_survives_postcard() {
        let messages = vec![
            Wire::Join {
                topics: vec!["a".into(), "b".into()],
            },
            Wire::Leave {
                topics: vec!["a".into()],
            },
            Wire::Push {
                hops: 3,
                by_source: true,
                publication: publication(b"payload"),
            },
            Wire::IHave {
                topic: "a".into(),
                ids: vec![
                    (MsgId([1; 20]), 1, 0),
                    (MsgId([2; 20]), 9, WOULD_PUSH | BY_SOURCE),
                ],
            },
            Wire::Want {
                topic: "a".into(),
                ids: vec![MsgId([1; 20])],
            },
            Wire::Tree {
                topic: "a".into(),
                root: PeerId::from_bytes([5; 32]),
                seq: 9,
                dist: 2,
                parent: true,
                stamp: [3; 64],
            },
            Wire::Refresh {
                topic: "a".into(),
                root: PeerId::from_bytes([5; 32]),
                seq: 10,
            },
            Wire::Source {
                topic: "a".into(),
                origin: PeerId::from_bytes([6; 32]),
                seq: 11,
                dist: 255,
                parent: false,
                stamp: [4; 64],
            },
        ];
        for message in messages {
            let bytes = encode_message(&message, 1 << 20).unwrap();
            assert_eq!(decode_message::<Wire>(&bytes).unwrap(), message);
        }
        let mut bad = encode_message(
            &Wire::Push {
                hops: 0,
                by_source: false,
                publication: publication(b""),
            },
            1 << 20,
        )
        .unwrap()
        .to_vec();
        bad.truncate(bad.len() - 1);
        assert!(decode_message::<Wire>(&bad).is_err());
    }
}
