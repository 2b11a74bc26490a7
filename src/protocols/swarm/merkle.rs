//! Blob ids and piece proofs: a binary SHA-256 Merkle tree over the pieces.
//!
//! Leaves and inner nodes are hashed under different prefixes (0 and 1), so a node's hash can
//! never pass for a piece's. A level of odd width carries its last hash up unchanged. The id
//! binds the root to the blob's length and piece size (prefix 2), so one id means one exact
//! byte string and its piece count, which a receiver needs before it can check anything.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub(crate) type Hash = [u8; 32];

/// Most pieces in a blob: 4 GiB in 64 KiB pieces. Bookkeeping is about 70 bytes per piece and
/// one byte per piece per member, so a blob costs at most a few MiB besides its bytes.
pub(crate) const MAX_PIECES: u32 = 65_536;

/// A blob's id: the Merkle root of its pieces, bound to its length and piece size.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub(crate) Hash);

impl BlobId {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// A blob id that did not parse: it is 64 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a blob id is 64 hexadecimal digits (as `/share` prints it)")]
pub struct BadBlobId;

impl std::str::FromStr for BlobId {
    type Err = BadBlobId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(BadBlobId);
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadBlobId)?;
        }
        Ok(Self(id))
    }
}

/// What a receiver must know to check pieces: sent with offers and first announcements, and
/// checked against the id it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Info {
    pub(crate) len: u64,
    pub(crate) piece_size: u32,
    pub(crate) root: Hash,
}

impl Info {
    /// 44 bytes: length and piece size (little-endian), root; as kept on disk.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.piece_size.to_le_bytes());
        out.extend_from_slice(&self.root);
        out
    }

    /// The inverse of [`Info::to_bytes`]; `None` for anything but 44 bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 44 {
            return None;
        }
        Some(Self {
            len: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            piece_size: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            root: bytes[12..].try_into().ok()?,
        })
    }

    /// The id this info hashes to.
    pub(crate) fn id(&self) -> BlobId {
        let mut h = Sha256::new();
        h.update([2u8]);
        h.update(self.len.to_le_bytes());
        h.update(self.piece_size.to_le_bytes());
        h.update(self.root);
        BlobId(h.finalize().into())
    }

    /// Pieces in the blob: at least one (an empty blob is one empty piece). `None` for a piece
    /// size of zero or more than [`MAX_PIECES`] pieces, which no honest node sends: a blob's
    /// bookkeeping is sized by its piece count, so a peer describing 4 GiB in 1-byte pieces
    /// must not make this node allocate for 4 billion of them.
    pub(crate) fn pieces(&self) -> Option<u32> {
        if self.piece_size == 0 {
            return None;
        }
        let n = self.len.div_ceil(u64::from(self.piece_size)).max(1);
        u32::try_from(n).ok().filter(|n| *n <= MAX_PIECES)
    }

    /// Length of piece `index` (the last one may be short).
    pub(crate) fn piece_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.piece_size);
        let len = self
            .len
            .saturating_sub(start)
            .min(u64::from(self.piece_size));
        usize::try_from(len).unwrap_or(usize::MAX)
    }
}

/// A piece's leaf hash.
pub(crate) fn leaf(piece: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(piece);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Every level of the tree, leaves first: what the holder of a whole blob keeps to give each
/// piece its proof (about 64 bytes per piece).
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree over `pieces` (at least one).
    pub(crate) fn build<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Self {
        Self::from_leaves(pieces.map(leaf).collect())
    }

    /// The tree over pieces whose [`leaf`] hashes are `level`, in order (none: an empty
    /// blob), for a file hashed a piece at a time.
    pub(crate) fn from_leaves(mut level: Vec<Hash>) -> Self {
        if level.is_empty() {
            level.push(leaf(&[]));
        }
        let mut levels = vec![level];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let pairs = last.chunks_exact(2);
            let odd = pairs.remainder().first().copied();
            let next = pairs
                .map(|pair| node(&pair[0], &pair[1]))
                .chain(odd)
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// Piece `index`'s leaf hash.
    pub(crate) fn leaf(&self, index: u32) -> Option<&Hash> {
        self.levels.first()?.get(index as usize)
    }

    pub(crate) fn root(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// The sibling hashes from piece `index` up to the root (none where a level carries the
    /// hash up unchanged).
    pub(crate) fn proof(&self, index: u32) -> Vec<Hash> {
        let mut proof = Vec::new();
        let mut i = index as usize;
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let sibling = i ^ 1;
            if let Some(h) = level.get(sibling) {
                proof.push(*h);
            }
            i /= 2;
        }
        proof
    }
}

/// Whether `piece`, at `index` of a blob of `pieces` pieces, belongs under `root` by `proof`.
pub(crate) fn verify(root: &Hash, pieces: u32, index: u32, piece: &[u8], proof: &[Hash]) -> bool {
    if index >= pieces {
        return false;
    }
    let mut hash = leaf(piece);
    let mut i = index as usize;
    let mut width = pieces as usize;
    let mut siblings = proof.iter();
    while width > 1 {
        let sibling = i ^ 1;
        if sibling < width {
            let Some(s) = siblings.next() else {
                return false;
            };
            hash = if i % 2 == 0 {
                node(&hash, s)
            } else {
                node(s, &hash)
            };
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none() && hash == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 10 + i]).collect()
    }

    #[test]
    fn every_piece_proves_against_the_root_at_every_width() {
        for n in 1..=33 {
            let data = pieces(n);
            let tree = Tree::build(data.iter().map(Vec::as_slice));
            let n32 = n as u32;
            for (i, piece) in data.iter().enumerate() {
                let proof = tree.proof(i as u32);
                assert!(
                    verify(&tree.root(), n32, i as u32, piece, &proof),
                    "n={n} i={i}"
                );
                // At another index, with another piece, or with a proof cut short: refused.
                let other = (i + 1) % n;
                if other != i {
                    assert!(
                        !verify(&tree.root(), n32, other as u32, piece, &proof),
                        "n={n} i={i}"
                    );
                }
                let mut bad = piece.clone();
                bad[0] ^= 1;
                assert!(
                    !verify(&tree.root(), n32, i as u32, &bad, &proof),
                    "n={n} i={i}"
                );
                if let Some((_, short)) = proof.split_last() {
                    assert!(
                        !verify(&tree.root(), n32, i as u32, piece, short),
                        "n={n} i={i}"
                    );
                }
                let mut long = proof.clone();
                long.push([7; 32]);
                assert!(
                    !verify(&tree.root(), n32, i as u32, piece, &long),
                    "n={n} i={i}"
                );
            }
            assert!(!verify(&tree.root(), n32, n32, &data[0], &tree.proof(0)));
        }
    }

    #[test]
    fn an_inner_node_cannot_pass_for_a_piece() {
        // With unprefixed hashing, the concatenation of two leaf hashes would prove as a
        // "piece" of a one-level-shorter tree with the same root.
        let data = pieces(4);
        let tree = Tree::build(data.iter().map(Vec::as_slice));
        let forged: Vec<u8> = [leaf(&data[0]), leaf(&data[1])].concat();
        let proof = vec![node(&leaf(&data[2]), &leaf(&data[3]))];
        assert!(!verify(&tree.root(), 2, 0, &forged, &proof));
    }

    #[test]
    fn the_id_binds_length_and_piece_size() {
        let info = Info {
            len: 1000,
            piece_size: 256,
            root: [9; 32],
        };
        assert_eq!(info.pieces(), Some(4));
        assert_eq!(info.piece_len(3), 1000 - 768);
        assert_eq!(info.piece_len(4), 0);
        assert_ne!(info.id(), Info { len: 999, ..info }.id());
        assert_ne!(
            info.id(),
            Info {
                piece_size: 128,
                ..info
            }
            .id()
        );
        assert_eq!(Info { len: 0, ..info }.pieces(), Some(1));
        assert_eq!(
            Info {
                piece_size: 0,
                ..info
            }
            .pieces(),
            None
        );
        // A description that would size bookkeeping for billions of pieces is refused.
        let tiny = Info {
            len: 4 << 30,
            piece_size: 1,
            ..info
        };
        assert_eq!(tiny.pieces(), None);
        let most = Info {
            len: u64::from(MAX_PIECES),
            ..tiny
        };
        assert_eq!(most.pieces(), Some(MAX_PIECES));
        let id = info.id();
        assert_eq!(id.to_string().parse::<BlobId>(), Ok(id));
        assert_eq!(Info::from_bytes(&info.to_bytes()), Some(info));
        assert_eq!(Info::from_bytes(&info.to_bytes()[1..]), None);
        assert_eq!("xyz".parse::<BlobId>(), Err(BadBlobId));
    }

    #[test]
    fn ids_print_and_parse_as_hex_and_anything_else_is_refused_without_a_panic() {
        let id = Info {
            len: 5,
            piece_size: 4,
            root: [3; 32],
        }
        .id();
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(format!("{id:?}"), format!("BlobId({hex})"));
        assert_eq!(id.as_bytes(), &id.0);
        // Pasted with spaces or in capitals: the same id.
        assert_eq!(
            format!("  {}\n", hex.to_uppercase()).parse::<BlobId>(),
            Ok(id)
        );
        // 64 bytes that are not 64 ASCII digits (a slice mid-character would panic).
        let wide = format!("aé{}", &hex[3..]);
        assert_eq!(wide.len(), 64);
        assert_eq!(wide.parse::<BlobId>(), Err(BadBlobId));
        assert_eq!(format!("{}zz", &hex[2..]).parse::<BlobId>(), Err(BadBlobId));
        assert_eq!(hex[1..].parse::<BlobId>(), Err(BadBlobId));
    }

    #[test]
    fn a_tree_gives_each_piece_its_leaf_and_middle_pieces_are_whole() {
        let data = pieces(5);
        let tree = Tree::build(data.iter().map(Vec::as_slice));
        for (i, piece) in data.iter().enumerate() {
            assert_eq!(tree.leaf(i as u32), Some(&leaf(piece)));
        }
        assert_eq!(tree.leaf(5), None);
        // An empty blob is one empty piece.
        let empty = Tree::from_leaves(Vec::new());
        assert_eq!(empty.root(), leaf(&[]));
        assert!(verify(&empty.root(), 1, 0, &[], &empty.proof(0)));
        let info = Info {
            len: 1000,
            piece_size: 256,
            root: tree.root(),
        };
        assert_eq!(info.piece_len(0), 256);
        assert_eq!(info.piece_len(2), 256);
    }
}
