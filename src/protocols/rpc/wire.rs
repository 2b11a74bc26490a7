//! The request protocol's frames: a fixed little-endian header, then the body. Pure: bytes in,
//! frames out, every malformed input a typed error the caller charges to the sender.
//!
//! ```text
//! [kind u8][id u64 LE][kind-specific fields][body]
//! Request  0   flags u8 (bit 0 stream, bit 1 idempotent), window u32     body = request
//! Response 1                                                             body = answer
//! Fail     2   reason u8, code u32                                       no body
//! Cancel   3                                                             no body
//! Chunk    4                                                             body = one chunk
//! End      5                                                             no body
//! Credit   6   chunks u32                                                no body
//! ```
//! Request, Response, Fail of a unary request, Cancel and Credit travel on the request channel;
//! Chunk, End and a stream's Fail travel on the stream channel, so a stream's end never
//! overtakes its last chunk.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a request failed at the server, carried by a `Fail` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailReason {
    /// The server is at its limit of requests in flight.
    Busy,
    /// The server's handler dropped the request without answering.
    Omitted,
    /// The server's handler rejected it with an application code.
    Rejected,
    /// Nobody serves this channel at the peer (its server handle is gone).
    Unavailable,
    /// The request or its answer was larger than the server accepts or can send.
    TooLarge,
    /// The server could not decode the request.
    Undecodable,
}

impl FailReason {
    fn to_byte(self) -> u8 {
        match self {
            Self::Busy => 0,
            Self::Omitted => 1,
            Self::Rejected => 2,
            Self::Unavailable => 3,
            Self::TooLarge => 4,
            Self::Undecodable => 5,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Busy,
            1 => Self::Omitted,
            2 => Self::Rejected,
            3 => Self::Unavailable,
            4 => Self::TooLarge,
            5 => Self::Undecodable,
            _ => return None,
        })
    }
}

/// One decoded frame; bodies are slices of the received bytes (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Request {
        id: u64,
        stream: bool,
        idempotent: bool,
        window: u32,
        body: Bytes,
    },
    Response {
        id: u64,
        body: Bytes,
    },
    Fail {
        id: u64,
        reason: FailReason,
        code: u32,
    },
    Cancel {
        id: u64,
    },
    Chunk {
        id: u64,
        body: Bytes,
    },
    End {
        id: u64,
    },
    Credit {
        id: u64,
        chunks: u32,
    },
}

/// A frame that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown failure reason {0}")]
    UnknownReason(u8),
    #[error("{0} trailing bytes after a frame without a body")]
    Trailing(usize),
    #[error("unknown request flags {0:#x}")]
    Flags(u8),
}

const REQUEST: u8 = 0;
const RESPONSE: u8 = 1;
const FAIL: u8 = 2;
const CANCEL: u8 = 3;
const CHUNK: u8 = 4;
const END: u8 = 5;
const CREDIT: u8 = 6;

/// Header bytes before a body: the most any frame kind with a body uses.
pub(crate) const MAX_HEADER: usize = 1 + 8 + 1 + 4;

/// The header of a frame that carries a body; the body is appended by the caller (so a typed
/// body is serialized straight into the same buffer).
pub(crate) fn header(kind: HeaderKind, id: u64, capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(MAX_HEADER + capacity);
    match kind {
        HeaderKind::Request {
            stream,
            idempotent,
            window,
        } => {
            out.put_u8(REQUEST);
            out.put_u64_le(id);
            out.put_u8(u8::from(stream) | (u8::from(idempotent) << 1));
            out.put_u32_le(window);
        }
        HeaderKind::Response => {
            out.put_u8(RESPONSE);
            out.put_u64_le(id);
        }
        HeaderKind::Chunk => {
            out.put_u8(CHUNK);
            out.put_u64_le(id);
        }
    }
    out
}

/// The kinds of frame that carry a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderKind {
    Request {
        stream: bool,
        idempotent: bool,
        window: u32,
    },
    Response,
    Chunk,
}

/// Encodes a frame without a body.
pub(crate) fn control(frame: &Frame) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER);
    match *frame {
        Frame::Fail { id, reason, code } => {
            out.put_u8(FAIL);
            out.put_u64_le(id);
            out.put_u8(reason.to_byte());
            out.put_u32_le(code);
        }
        Frame::Cancel { id } => {
            out.put_u8(CANCEL);
            out.put_u64_le(id);
        }
        Frame::End { id } => {
            out.put_u8(END);
            out.put_u64_le(id);
        }
        Frame::Credit { id, chunks } => {
            out.put_u8(CREDIT);
            out.put_u64_le(id);
            out.put_u32_le(chunks);
        }
        Frame::Request { id, .. } | Frame::Response { id, .. } | Frame::Chunk { id, .. } => {
            // Frames with a body are built with `header`; encoding one here with an empty
            // body keeps this total without a panic.
            let kind = match frame {
                Frame::Request {
                    stream,
                    idempotent,
                    window,
                    ..
                } => HeaderKind::Request {
                    stream: *stream,
                    idempotent: *idempotent,
                    window: *window,
                },
                Frame::Response { .. } => HeaderKind::Response,
                _ => HeaderKind::Chunk,
            };
            let mut out = header(kind, id, 0);
            if let Frame::Request { body, .. }
            | Frame::Response { body, .. }
            | Frame::Chunk { body, .. } = frame
            {
                out.extend_from_slice(body);
            }
            return out.freeze();
        }
    }
    out.freeze()
}

/// Decodes one frame; bodies are zero-copy slices of `bytes`.
pub(crate) fn decode(bytes: Bytes) -> Result<Frame, WireError> {
    let len = bytes.len();
    let need = |n: usize| {
        if len < n {
            Err(WireError::Short(len))
        } else {
            Ok(())
        }
    };
    need(9)?;
    let kind = bytes[0];
    let id = u64::from_le_bytes(bytes[1..9].try_into().map_err(|_| WireError::Short(len))?);
    let u32_at = |at: usize| -> Result<u32, WireError> {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(WireError::Short(len))
    };
    let exact = |n: usize| {
        if len > n {
            Err(WireError::Trailing(len - n))
        } else {
            need(n)
        }
    };
    Ok(match kind {
        REQUEST => {
            need(14)?;
            let flags = bytes[9];
            if flags & !0b11 != 0 {
                return Err(WireError::Flags(flags));
            }
            Frame::Request {
                id,
                stream: flags & 1 != 0,
                idempotent: flags & 2 != 0,
                window: u32_at(10)?,
                body: bytes.slice(14..),
            }
        }
        RESPONSE => Frame::Response {
            id,
            body: bytes.slice(9..),
        },
        FAIL => {
            exact(14)?;
            Frame::Fail {
                id,
                reason: FailReason::from_byte(bytes[9])
                    .ok_or(WireError::UnknownReason(bytes[9]))?,
                code: u32_at(10)?,
            }
        }
        CANCEL => {
            exact(9)?;
            Frame::Cancel { id }
        }
        CHUNK => Frame::Chunk {
            id,
            body: bytes.slice(9..),
        },
        END => {
            exact(9)?;
            Frame::End { id }
        }
        CREDIT => {
            exact(13)?;
            Frame::Credit {
                id,
                chunks: u32_at(9)?,
            }
        }
        other => return Err(WireError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Request {
                id: 7,
                stream: true,
                idempotent: true,
                window: 16,
                body: Bytes::from_static(b"query"),
            },
            Frame::Request {
                id: u64::MAX,
                stream: false,
                idempotent: false,
                window: 0,
                body: Bytes::new(),
            },
            Frame::Response {
                id: 1,
                body: Bytes::from_static(b"answer"),
            },
            Frame::Fail {
                id: 2,
                reason: FailReason::Rejected,
                code: 404,
            },
            Frame::Cancel { id: 3 },
            Frame::Chunk {
                id: 4,
                body: Bytes::from_static(&[0; 100]),
            },
            Frame::End { id: 5 },
            Frame::Credit { id: 6, chunks: 8 },
        ]
    }

    #[test]
    fn every_frame_survives_a_round_trip() {
        for frame in every_kind() {
            assert_eq!(decode(control(&frame)), Ok(frame.clone()), "{frame:?}");
        }
    }

    #[test]
    fn truncated_and_padded_frames_are_errors_not_panics() {
        for frame in every_kind() {
            let bytes = control(&frame);
            for cut in 0..bytes.len().min(14) {
                let short = bytes.slice(..cut);
                // A frame with a body may legitimately end anywhere after its header.
                if let Ok(decoded) = decode(short.clone()) {
                    assert!(
                        cut >= 9
                            && matches!(
                                decoded,
                                Frame::Response { .. }
                                    | Frame::Chunk { .. }
                                    | Frame::Request { .. }
                            ),
                        "{frame:?} cut at {cut}"
                    );
                }
            }
        }
        let mut padded = control(&Frame::Cancel { id: 1 }).to_vec();
        padded.push(0);
        assert_eq!(
            decode(Bytes::from(padded.clone())),
            Err(WireError::Trailing(1))
        );
        padded.push(0);
        assert_eq!(decode(Bytes::from(padded)), Err(WireError::Trailing(2)));
        assert_eq!(
            decode(Bytes::from_static(&[9, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(WireError::UnknownKind(9))
        );
        let mut bad_flags = control(&every_kind()[0]).to_vec();
        bad_flags[9] = 0x80;
        assert_eq!(decode(Bytes::from(bad_flags)), Err(WireError::Flags(0x80)));
    }

    #[test]
    fn max_header_is_the_longest_header_a_body_follows() {
        // The request and answer bounds leave MAX_HEADER bytes of the channel's message size
        // for it: shorter, a body at the bound would not fit; longer, it would be refused early.
        let request = HeaderKind::Request {
            stream: true,
            idempotent: true,
            window: u32::MAX,
        };
        assert_eq!(header(request, u64::MAX, 0).len(), MAX_HEADER);
        for kind in [HeaderKind::Response, HeaderKind::Chunk] {
            assert!(header(kind, u64::MAX, 0).len() <= MAX_HEADER, "{kind:?}");
        }
    }

    #[test]
    fn every_failure_reason_survives_a_round_trip_and_an_unknown_one_is_an_error() {
        use FailReason::*;
        let reasons = [Busy, Omitted, Rejected, Unavailable, TooLarge, Undecodable];
        for (code, reason) in (0..).zip(reasons) {
            let frame = Frame::Fail {
                id: 9,
                reason,
                code,
            };
            assert_eq!(decode(control(&frame)), Ok(frame.clone()), "{frame:?}");
        }
        let mut unknown = control(&Frame::Fail {
            id: 9,
            reason: Busy,
            code: 0,
        })
        .to_vec();
        unknown[9] = 6;
        assert_eq!(
            decode(Bytes::from(unknown)),
            Err(WireError::UnknownReason(6))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(Bytes::from(bytes));
        }
    }
}
