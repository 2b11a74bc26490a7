//! The swarm's messages on its channel. A piece's bytes follow its header raw, outside the
//! postcard encoding, so neither side copies them through the serializer: the receiver's piece
//! is a slice of the frame it arrived in.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::merkle::{BlobId, Hash, Info};
use crate::identity::PeerId;

/// Longest list of swarm members an offer may carry.
pub(crate) const MAX_OFFER_MEMBERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// "Fetch this blob; these peers take part": the pushing node to each receiver.
    Offer {
        blob: BlobId,
        info: Info,
        members: Vec<PeerId>,
    },
    /// "I will not take this blob" (offers refused, or no room): the push counts it failed.
    Decline { blob: BlobId },
    /// "I take part in this blob; these are the pieces I hold": sent once to each member
    /// (answered once in kind). `info` is there whenever the sender knows it.
    Have {
        blob: BlobId,
        info: Option<Info>,
        bits: Vec<u8>,
    },
    /// Pieces the sender newly holds.
    Got { blob: BlobId, pieces: Vec<u32> },
    /// Asks for one piece.
    Request { blob: BlobId, piece: u32 },
    /// The piece asked for is not available from this sender (now).
    Reject { blob: BlobId, piece: u32 },
    /// Every upload slot of this blob is taken: ask again later, or elsewhere.
    Busy { blob: BlobId, piece: u32 },
    /// To the pusher: `peer` sent the sender a piece that failed its proof. From two
    /// receivers, the pusher stops serving `peer`'s share to it.
    Accuse { blob: BlobId, peer: PeerId },
    /// A piece with its proof; its bytes follow the header.
    Piece {
        blob: BlobId,
        piece: u32,
        proof: Vec<Hash>,
    },
}

/// Encodes `wire`, then `data` after it (only a `Piece` carries data).
pub(crate) fn encode(wire: &Wire, data: Option<&Bytes>, max: usize) -> Option<Bytes> {
    let header = postcard::to_allocvec(wire).ok()?;
    let len = header.len() + data.map_or(0, Bytes::len);
    if len > max {
        return None;
    }
    let mut out = BytesMut::with_capacity(len);
    out.put_slice(&header);
    if let Some(data) = data {
        out.put_slice(data);
    }
    Some(out.freeze())
}

/// Decodes a frame: the message, and for a `Piece` its bytes (a slice of `frame`, not a
/// copy). Anything after any other message is a violation.
pub(crate) fn decode(frame: &Bytes) -> Option<(Wire, Bytes)> {
    let (wire, rest) = postcard::take_from_bytes::<Wire>(frame).ok()?;
    let data = frame.slice(frame.len() - rest.len()..);
    match wire {
        Wire::Piece { .. } => Some((wire, data)),
        _ if data.is_empty() => Some((wire, data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_round_trips_with_its_bytes_and_nothing_else_carries_any() {
        let blob = BlobId([3; 32]);
        let wire = Wire::Piece {
            blob,
            piece: 7,
            proof: vec![[1; 32], [2; 32]],
        };
        let data = Bytes::from(vec![5u8; 1000]);
        let frame = encode(&wire, Some(&data), 4096).unwrap();
        assert_eq!(decode(&frame), Some((wire.clone(), data.clone())));
        assert_eq!(
            encode(&wire, Some(&data), frame.len() - 1),
            None,
            "over the channel's size"
        );
        assert_eq!(
            encode(&wire, Some(&data), frame.len()).as_ref(),
            Some(&frame),
            "exactly the channel's size"
        );
        let request = Wire::Request { blob, piece: 1 };
        let frame = encode(&request, None, 4096).unwrap();
        assert_eq!(decode(&frame), Some((request.clone(), Bytes::new())));
        let trailing = encode(&request, Some(&data), 4096).unwrap();
        assert_eq!(decode(&trailing), None);
        assert_eq!(decode(&Bytes::from_static(&[200, 1, 2])), None);
    }
}
