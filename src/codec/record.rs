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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};

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

/// One item decoded from a frame, its body lent from the frame (see
/// [`RecordDecoder::decode_borrowed`]).
#[derive(Debug)]
pub enum Record<'f> {
    /// A complete application message on `channel`.
    Message {
        /// The channel id.
        channel: u16,
        /// The encoded message.
        body: Body<'f>,
    },
    /// The encoded bytes of a control message.
    Control(&'f [u8]),
    /// The peer broke a record rule; counted against it, the stream continues.
    Violation(Violation),
}

/// A message body: a range of the frame's plaintext, or a message reassembled from fragments.
#[derive(Debug)]
pub enum Body<'f> {
    /// Bytes `start..end` of `frame`.
    Frame {
        /// The frame's plaintext.
        frame: &'f Bytes,
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// A reassembled message.
    Owned(Bytes),
}

impl Body<'_> {
    /// The body's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Frame { frame, start, end } => &frame[*start..*end],
            Self::Owned(bytes) => bytes,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Frame { start, end, .. } => end - start,
            Self::Owned(bytes) => bytes.len(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body as owned bytes: a slice of the frame (no copy; it keeps the frame's buffer
    /// alive), or the reassembled message.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Frame { frame, start, end } => frame.slice(start..end),
            Self::Owned(bytes) => bytes,
        }
    }
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

/// A node-wide bound on the bytes of partly received messages, shared by every connection's
/// [`RecordDecoder`]: without it each connection may hold one message per channel of up to
/// `max_message_size`, and many fresh identities could make the node hold gigabytes.
#[derive(Debug)]
pub struct ReassemblyBudget {
    limit: usize,
    held: AtomicUsize,
    refused: AtomicU64,
}

impl ReassemblyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Bytes held now, across all decoders sharing the budget.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// Fragments refused so far (each skipped the rest of its message).
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        let taken = self
            .held
            .fetch_update(Relaxed, Relaxed, |held| {
                held.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Relaxed);
        }
        taken
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Relaxed);
    }
}

/// Reassembles records from successive frame plaintexts.
#[derive(Debug)]
pub struct RecordDecoder {
    /// Known channel ids, sorted, each with its largest message size and its reassembly.
    channels: Vec<(u16, usize, Assembly)>,
    /// Where the bytes of partly received messages are charged, if anywhere.
    budget: Option<Arc<ReassemblyBudget>>,
}

impl Drop for RecordDecoder {
    fn drop(&mut self) {
        for (_, _, assembly) in &mut self.channels {
            reset(assembly, self.budget.as_deref());
        }
    }
}

/// Ends a reassembly, giving its bytes back to the budget.
fn reset(assembly: &mut Assembly, budget: Option<&ReassemblyBudget>) {
    if let (Assembly::Collecting { buf, .. }, Some(budget)) = (&*assembly, budget) {
        budget.give_back(buf.len());
    }
    *assembly = Assembly::Idle;
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
        Self {
            channels,
            budget: None,
        }
    }

    /// Charges the bytes of partly received messages to `budget`: a fragment that would go past
    /// it yields [`Violation::ReassemblyBudget`] and the rest of its message is skipped.
    pub fn set_budget(&mut self, budget: Arc<ReassemblyBudget>) {
        self.budget = Some(budget);
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

    /// Decodes every record of one frame plaintext, in order, into `out`, each message as
    /// owned [`Bytes`] (slices of the frame, no copy). See [`RecordDecoder::decode_borrowed`].
    pub fn decode_frame(&mut self, frame: BytesMut, out: &mut impl FnMut(Inbound)) {
        let frame = frame.freeze();
        self.decode_borrowed(&frame, &mut |record| {
            out(match record {
                Record::Message { channel, body } => Inbound::Message {
                    channel,
                    bytes: body.into_bytes(),
                },
                Record::Control(body) => Inbound::Control(frame.slice_ref(body)),
                Record::Violation(violation) => Inbound::Violation(violation),
            });
        });
    }

    /// Decodes every record of one frame plaintext, in order, into `out`, lending each body
    /// from the frame: a consumer that decodes or copies a small message never touches the
    /// frame's reference count, and one that keeps a large message takes a slice of it.
    pub fn decode_borrowed<'f>(&mut self, frame: &'f Bytes, out: &mut impl FnMut(Record<'f>)) {
        let mut at = 0;
        while at < frame.len() {
            let rest = &frame[at..];
            if rest.len() < HEADER_LEN {
                out(Record::Violation(Violation::MalformedRecord));
                return;
            }
            let kind = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len > rest.len() - HEADER_LEN {
                // The rest of this frame cannot be parsed; the next frame starts clean.
                out(Record::Violation(Violation::MalformedRecord));
                return;
            }
            let start = at + HEADER_LEN;
            at = start + len;
            if let Some(item) = self.record(frame, kind, start, at) {
                out(item);
            }
        }
    }

    // Inlined: the decoded item is then built where the caller uses it instead of being
    // copied out (a measurable share of the per-message cost for small messages).
    #[inline]
    fn record<'f>(
        &mut self,
        frame: &'f Bytes,
        kind: u8,
        mut start: usize,
        end: usize,
    ) -> Option<Record<'f>> {
        if kind == RecordKind::Control as u8 {
            return Some(Record::Control(&frame[start..end]));
        }
        if ![
            RecordKind::Message as u8,
            RecordKind::Start as u8,
            RecordKind::Continue as u8,
        ]
        .contains(&kind)
        {
            return Some(Record::Violation(Violation::UnknownKind(kind)));
        }
        if end - start < CHANNEL_LEN {
            return Some(Record::Violation(Violation::MalformedRecord));
        }
        let channel = u16::from_be_bytes([frame[start], frame[start + 1]]);
        start += CHANNEL_LEN;
        let found = match self.channels.as_slice() {
            // The common case, one channel: no search.
            [(only, ..)] => (*only == channel).then_some(0),
            _ => self.channels.binary_search_by_key(&channel, |c| c.0).ok(),
        };
        let Some(index) = found else {
            return Some(Record::Violation(Violation::UnknownChannel(channel)));
        };
        let budget = self.budget.as_deref();
        let (_, max, assembly) = &mut self.channels[index];
        let max = *max;
        let len = end - start;
        let message = |body: Body<'f>| Some(Record::Message { channel, body });
        match kind {
            k if k == RecordKind::Message as u8 => {
                if !matches!(assembly, Assembly::Idle) {
                    reset(assembly, budget);
                    return Some(Record::Violation(Violation::FragmentOutOfSequence));
                }
                if len > max {
                    return Some(Record::Violation(Violation::Oversize { len, max }));
                }
                message(Body::Frame { frame, start, end })
            }
            k if k == RecordKind::Start as u8 => {
                if !matches!(assembly, Assembly::Idle) {
                    reset(assembly, budget);
                    return Some(Record::Violation(Violation::FragmentOutOfSequence));
                }
                if len < START_PREFIX_LEN {
                    return Some(Record::Violation(Violation::MalformedRecord));
                }
                let total = u32::from_be_bytes([
                    frame[start],
                    frame[start + 1],
                    frame[start + 2],
                    frame[start + 3],
                ]) as usize;
                start += START_PREFIX_LEN;
                let len = end - start;
                if len > total {
                    return Some(Record::Violation(Violation::MalformedRecord));
                }
                if total > max {
                    *assembly = Assembly::Skipping {
                        remaining: total - len,
                    };
                    return Some(Record::Violation(Violation::Oversize { len: total, max }));
                }
                if len == total {
                    return message(Body::Frame { frame, start, end });
                }
                if budget.is_some_and(|b| !b.try_take(len)) {
                    *assembly = Assembly::Skipping {
                        remaining: total - len,
                    };
                    return Some(Record::Violation(Violation::ReassemblyBudget));
                }
                // Grown only as fragments arrive: a lying total allocates nothing more.
                *assembly = Assembly::Collecting {
                    total,
                    buf: BytesMut::from(&frame[start..end]),
                };
                None
            }
            _ => match assembly {
                Assembly::Idle => Some(Record::Violation(Violation::FragmentOutOfSequence)),
                Assembly::Skipping { remaining } => {
                    if len > *remaining {
                        *assembly = Assembly::Idle;
                        return Some(Record::Violation(Violation::MalformedRecord));
                    }
                    *remaining -= len;
                    if *remaining == 0 {
                        *assembly = Assembly::Idle;
                    }
                    None
                }
                Assembly::Collecting { total, buf } => {
                    if buf.len() + len > *total {
                        reset(assembly, budget);
                        return Some(Record::Violation(Violation::MalformedRecord));
                    }
                    if budget.is_some_and(|b| !b.try_take(len)) {
                        let remaining = *total - buf.len() - len;
                        reset(assembly, budget);
                        if remaining > 0 {
                            *assembly = Assembly::Skipping { remaining };
                        }
                        return Some(Record::Violation(Violation::ReassemblyBudget));
                    }
                    buf.extend_from_slice(&frame[start..end]);
                    if buf.len() == *total {
                        let done = std::mem::take(buf).freeze();
                        if let Some(budget) = budget {
                            // The message leaves reassembly for the inbox, bounded there.
                            budget.give_back(done.len());
                        }
                        *assembly = Assembly::Idle;
                        return message(Body::Owned(done));
                    }
                    None
                }
            },
        }
    }
}
