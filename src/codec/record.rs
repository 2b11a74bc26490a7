//! The record layer inside a frame's plaintext: `[u8 kind][u32 BE body length][body]`.
//!
//! | kind | name | body |
//! |------|------|------|
//! | 0x01 | Message | one whole encoded application message |
//! | 0x02 | Start | `u32 BE total length` then the first bytes of a large message |
//! | 0x03 | Continue | the next bytes of the large message in progress |
//! | 0x10 | Control | one encoded [`super::ControlMessage`] |
//!
//! A record never crosses a frame boundary, so a bad record only costs the rest of its frame and
//! the stream stays in sync. [`RecordDecoder`] turns frame plaintexts into [`Inbound`] items,
//! reassembling fragmented messages up to `max_message_size`; the buffer for a message grows only
//! as its fragments arrive, so a lying total length allocates nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Violation;

/// Length of a record header.
pub const HEADER_LEN: usize = 5;
/// Length of the total-length prefix of a `Start` fragment.
pub const START_PREFIX_LEN: usize = 4;

/// The kind byte of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A whole application message.
    Message = 0x01,
    /// The first fragment of a large application message.
    Start = 0x02,
    /// A following fragment of a large application message.
    Continue = 0x03,
    /// A p2p control message.
    Control = 0x10,
}

/// Writes a record header.
pub fn put_header(out: &mut BytesMut, kind: RecordKind, body_len: usize) {
    out.put_u8(kind as u8);
    // Bodies are bounded by the frame size (128 KiB), so the cast cannot truncate.
    out.put_u32(body_len as u32);
}

/// One item decoded from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The encoded bytes of a complete application message.
    Message(Bytes),
    /// The encoded bytes of a control message.
    Control(Bytes),
    /// The peer broke a record rule; counted against it, the stream continues.
    Violation(Violation),
}

#[derive(Debug)]
enum Assembly {
    Idle,
    /// Collecting a large message: its announced total and the bytes so far.
    Collecting {
        total: usize,
        buf: BytesMut,
    },
    /// Discarding the rest of an oversize message without storing it.
    Skipping {
        remaining: usize,
    },
}

/// Reassembles records from successive frame plaintexts.
#[derive(Debug)]
pub struct RecordDecoder {
    max_message_size: usize,
    assembly: Assembly,
}

impl RecordDecoder {
    /// A decoder accepting messages up to `max_message_size` encoded bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            assembly: Assembly::Idle,
        }
    }

    /// Bytes currently held for a message in reassembly (bounded by `max_message_size`).
    pub fn buffered(&self) -> usize {
        match &self.assembly {
            Assembly::Collecting { buf, .. } => buf.len(),
            _ => 0,
        }
    }

    /// Decodes every record of one frame plaintext, in order, into `out`.
    pub fn decode_frame(&mut self, mut frame: BytesMut, out: &mut impl FnMut(Inbound)) {
        while !frame.is_empty() {
            if frame.len() < HEADER_LEN {
                out(Inbound::Violation(Violation::MalformedRecord));
                return;
            }
            let kind = frame[0];
            let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
            if len > frame.len() - HEADER_LEN {
                // The rest of this frame cannot be parsed; the next frame starts clean.
                out(Inbound::Violation(Violation::MalformedRecord));
                return;
            }
            frame.advance(HEADER_LEN);
            let body = frame.split_to(len);
            if let Some(item) = self.record(kind, body) {
                out(item);
            }
        }
    }

    fn record(&mut self, kind: u8, mut body: BytesMut) -> Option<Inbound> {
        match kind {
            k if k == RecordKind::Message as u8 => {
                if !matches!(self.assembly, Assembly::Idle) {
                    self.assembly = Assembly::Idle;
                    return Some(Inbound::Violation(Violation::FragmentOutOfSequence));
                }
                if body.len() > self.max_message_size {
                    return Some(Inbound::Violation(Violation::Oversize {
                        len: body.len(),
                        max: self.max_message_size,
                    }));
                }
                Some(Inbound::Message(body.freeze()))
            }
            k if k == RecordKind::Start as u8 => {
                if !matches!(self.assembly, Assembly::Idle) {
                    self.assembly = Assembly::Idle;
                    return Some(Inbound::Violation(Violation::FragmentOutOfSequence));
                }
                if body.len() < START_PREFIX_LEN {
                    return Some(Inbound::Violation(Violation::MalformedRecord));
                }
                let total = body.get_u32() as usize;
                if body.len() > total {
                    return Some(Inbound::Violation(Violation::MalformedRecord));
                }
                if total > self.max_message_size {
                    self.assembly = Assembly::Skipping {
                        remaining: total - body.len(),
                    };
                    return Some(Inbound::Violation(Violation::Oversize {
                        len: total,
                        max: self.max_message_size,
                    }));
                }
                if body.len() == total {
                    return Some(Inbound::Message(body.freeze()));
                }
                self.assembly = Assembly::Collecting { total, buf: body };
                None
            }
            k if k == RecordKind::Continue as u8 => match &mut self.assembly {
                Assembly::Idle => Some(Inbound::Violation(Violation::FragmentOutOfSequence)),
                Assembly::Skipping { remaining } => {
                    if body.len() > *remaining {
                        self.assembly = Assembly::Idle;
                        return Some(Inbound::Violation(Violation::MalformedRecord));
                    }
                    *remaining -= body.len();
                    if *remaining == 0 {
                        self.assembly = Assembly::Idle;
                    }
                    None
                }
                Assembly::Collecting { total, buf } => {
                    if buf.len() + body.len() > *total {
                        self.assembly = Assembly::Idle;
                        return Some(Inbound::Violation(Violation::MalformedRecord));
                    }
                    buf.extend_from_slice(&body);
                    if buf.len() == *total {
                        let done = std::mem::take(buf).freeze();
                        self.assembly = Assembly::Idle;
                        return Some(Inbound::Message(done));
                    }
                    None
                }
            },
            k if k == RecordKind::Control as u8 => Some(Inbound::Control(body.freeze())),
            other => Some(Inbound::Violation(Violation::UnknownKind(other))),
        }
    }
}
