//! The record layer inside a frame's plaintext: `[u8 kind][u32 BE body length][body]`.
//!
//! | kind | name | body |
//! |------|------|------|
//! | 0x01 | Message | `u16 BE channel`, then one whole encoded application message |
//! | 0x02 | Start | `u16 BE channel`, `u32 BE total length`, then the first bytes of a large message |
//! | 0x03 | Continue | `u16 BE channel`, then the next bytes of that channel's large message |
//! | 0x10 | Control | one encoded [`super::ControlMessage`] |
//!
//! A record never crosses a frame boundary, so a bad record only costs the rest of its frame and
//! the stream stays in sync. [`RecordDecoder`] turns frame plaintexts into [`Inbound`] items,
//! reassembling fragmented messages per channel, so fragments of different channels may
//! interleave (a vote goes between two pieces of a block part). Each channel holds at most one
//! message in reassembly, up to that channel's maximum size; the buffer grows only as fragments
//! arrive, so a lying total length allocates nothing. A channel the decoder was not given is a
//! violation.

use bytes::{Buf, Bytes, BytesMut};

use super::Violation;

/// Length of a record header.
pub const HEADER_LEN: usize = 5;
/// Length of the total-length prefix of a `Start` fragment.
pub const START_PREFIX_LEN: usize = 4;
/// Length of the channel id at the start of every data record's body.
pub const CHANNEL_LEN: usize = 2;

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
    out.extend_from_slice(&header(kind, body_len));
}

/// A record header as bytes.
fn header(kind: RecordKind, body_len: usize) -> [u8; HEADER_LEN] {
    // Bodies are bounded by the frame size (128 KiB), so the cast cannot truncate.
    let [a, b, c, d] = (body_len as u32).to_be_bytes();
    [kind as u8, a, b, c, d]
}

/// Writes a data record's header and channel id in one copy of known size (a per-message
/// cost: separate small writes each go through a generic copy).
pub fn put_data_header(out: &mut BytesMut, kind: RecordKind, body_len: usize, channel: u16) {
    let [k, a, b, c, d] = header(kind, body_len);
    let [e, f] = channel.to_be_bytes();
    out.extend_from_slice(&[k, a, b, c, d, e, f]);
}

/// One item decoded from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The encoded bytes of a complete application message on `channel`.
    Message {
        /// The channel id.
        channel: u16,
        /// The encoded message.
        bytes: Bytes,
    },
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
    /// Known channel ids, sorted, each with its largest message size and its reassembly.
    channels: Vec<(u16, usize, Assembly)>,
}

impl RecordDecoder {
    /// A decoder for channel 0 only, accepting messages up to `max_message_size` encoded bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self::with_channels(&[(0, max_message_size)])
    }

    /// A decoder for the given channels, each with its largest message size.
    pub fn with_channels(channels: &[(u16, usize)]) -> Self {
        let mut channels: Vec<_> = channels
            .iter()
            .map(|&(id, max)| (id, max, Assembly::Idle))
            .collect();
        channels.sort_by_key(|c| c.0);
        channels.dedup_by_key(|c| c.0);
        Self { channels }
    }

    /// Bytes currently held for messages in reassembly (at most each channel's maximum size).
    pub fn buffered(&self) -> usize {
        self.channels
            .iter()
            .map(|(_, _, a)| match a {
                Assembly::Collecting { buf, .. } => buf.len(),
                _ => 0,
            })
            .sum()
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

    // Inlined: the decoded item is then built where the caller uses it instead of being
    // copied out (a measurable share of the per-message cost for small messages).
    #[inline]
    fn record(&mut self, kind: u8, mut body: BytesMut) -> Option<Inbound> {
        if kind == RecordKind::Control as u8 {
            return Some(Inbound::Control(body.freeze()));
        }
        if ![
            RecordKind::Message as u8,
            RecordKind::Start as u8,
            RecordKind::Continue as u8,
        ]
        .contains(&kind)
        {
            return Some(Inbound::Violation(Violation::UnknownKind(kind)));
        }
        if body.len() < CHANNEL_LEN {
            return Some(Inbound::Violation(Violation::MalformedRecord));
        }
        let channel = u16::from_be_bytes([body[0], body[1]]);
        body.advance(CHANNEL_LEN);
        let found = match self.channels.as_slice() {
            // The common case, one channel: no search.
            [(only, ..)] => (*only == channel).then_some(0),
            _ => self.channels.binary_search_by_key(&channel, |c| c.0).ok(),
        };
        let Some(index) = found else {
            return Some(Inbound::Violation(Violation::UnknownChannel(channel)));
        };
        let (_, max, assembly) = &mut self.channels[index];
        let max = *max;
        let message = |bytes: Bytes| Some(Inbound::Message { channel, bytes });
        match kind {
            k if k == RecordKind::Message as u8 => {
                if !matches!(assembly, Assembly::Idle) {
                    *assembly = Assembly::Idle;
                    return Some(Inbound::Violation(Violation::FragmentOutOfSequence));
                }
                if body.len() > max {
                    return Some(Inbound::Violation(Violation::Oversize {
                        len: body.len(),
                        max,
                    }));
                }
                message(body.freeze())
            }
            k if k == RecordKind::Start as u8 => {
                if !matches!(assembly, Assembly::Idle) {
                    *assembly = Assembly::Idle;
                    return Some(Inbound::Violation(Violation::FragmentOutOfSequence));
                }
                if body.len() < START_PREFIX_LEN {
                    return Some(Inbound::Violation(Violation::MalformedRecord));
                }
                let total = body.get_u32() as usize;
                if body.len() > total {
                    return Some(Inbound::Violation(Violation::MalformedRecord));
                }
                if total > max {
                    *assembly = Assembly::Skipping {
                        remaining: total - body.len(),
                    };
                    return Some(Inbound::Violation(Violation::Oversize { len: total, max }));
                }
                if body.len() == total {
                    return message(body.freeze());
                }
                *assembly = Assembly::Collecting { total, buf: body };
                None
            }
            _ => match assembly {
                Assembly::Idle => Some(Inbound::Violation(Violation::FragmentOutOfSequence)),
                Assembly::Skipping { remaining } => {
                    if body.len() > *remaining {
                        *assembly = Assembly::Idle;
                        return Some(Inbound::Violation(Violation::MalformedRecord));
                    }
                    *remaining -= body.len();
                    if *remaining == 0 {
                        *assembly = Assembly::Idle;
                    }
                    None
                }
                Assembly::Collecting { total, buf } => {
                    if buf.len() + body.len() > *total {
                        *assembly = Assembly::Idle;
                        return Some(Inbound::Violation(Violation::MalformedRecord));
                    }
                    buf.extend_from_slice(&body);
                    if buf.len() == *total {
                        let done = std::mem::take(buf).freeze();
                        *assembly = Assembly::Idle;
                        return message(done);
                    }
                    None
                }
            },
        }
    }
}
