//! The frame and record layers under hostile input.
//!
//! The first input byte picks a mode:
//! - 0, raw stream: arbitrary bytes, cut into chunks chosen by the input, go to
//!   `FrameDecoder::decode` with a fixed key; the outcome must not depend on the chunking, and a
//!   pending frame must have had its length checked before the decoder waits for its body;
//! - 1, plaintexts: arbitrary frame plaintexts go straight to `RecordDecoder::decode_frame`;
//! - 2, sealed frames: arbitrary plaintexts are sealed with a `Sealer` of the same key, so the
//!   record layer is reached through the real decoder (optionally with one bit flipped, which must
//!   be caught);
//! - 3, encoder round trip: messages, fragments, control records and frame boundaries chosen by
//!   the input go through `FrameEncoder` and must come back exactly (oversize ones as
//!   `Violation::Oversize`).
//!
//! The second byte sets `max_message_size` (0 to 4080, in steps of 16). Invariants everywhere: no
//! panic, `RecordDecoder::buffered() <= max_message_size`, every delivered message within
//! `max_message_size`, every frame plaintext within `MAX_FRAME_PLAINTEXT`.
//!
//! Shared by the fuzz target `fuzz_targets/frame_decoder.rs` and by `tests/fuzz_regressions.rs`,
//! which replays the seeds and kept inputs under `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use crate::common::{Reader, chunks};
use bytes::{Bytes, BytesMut};
use peerwire::codec::cipher::{Opener, Sealer, TAG_LEN};
use peerwire::codec::frame::{
    FRAME_HEADER_LEN, FrameDecoder, FrameEncoder, MAX_FRAME_CIPHERTEXT, MAX_FRAME_PLAINTEXT,
};
use peerwire::codec::record::{Inbound, RecordDecoder};
use peerwire::codec::{CodecError, ControlMessage, Violation, encode_control};

const KEY: [u8; 32] = [0x42; 32];

/// Runs one input through the target's properties (panics on a violation).
pub(crate) fn run(data: &[u8]) {
    let mut input = Reader::new(data);
    let Some(mode) = input.byte() else {
        return;
    };
    // `max_message_size` from 0 to 4080: small, so that reassembly, the oversize paths and the
    // limit's edges are reached with small inputs.
    let max = usize::from(input.byte().unwrap_or(0)) * 16;
    match mode % 4 {
        0 => raw_stream(&mut input, max),
        1 => plaintexts(&mut input, max),
        2 => sealed_frames(&mut input, max),
        _ => encoder_round_trip(&mut input, max),
    }
}

/// What decoding a stream produced: the frame plaintexts in order, the fatal error that ended it
/// (if any), and the bytes left waiting for more.
#[derive(Debug, PartialEq)]
struct Decoded {
    plaintexts: Vec<BytesMut>,
    error: Option<CodecError>,
    leftover: usize,
}

/// Runs a fresh `FrameDecoder` over `chunks` as a socket read loop would, stopping at the first
/// error (the connection closes), and checks the decoder's promises after every call.
fn decode_frames(chunks: &[&[u8]]) -> Decoded {
    let mut decoder = FrameDecoder::new(Opener::new(&KEY));
    let mut buf = BytesMut::new();
    let mut plaintexts = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(plaintext)) => {
                    assert!(plaintext.len() <= MAX_FRAME_PLAINTEXT);
                    plaintexts.push(plaintext);
                }
                Ok(None) => {
                    // Waiting for more bytes is only allowed for a header that passed the checks.
                    if buf.len() >= FRAME_HEADER_LEN {
                        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        assert!((TAG_LEN..=MAX_FRAME_CIPHERTEXT).contains(&len), "len {len}");
                        assert!(buf.len() < FRAME_HEADER_LEN + len);
                    }
                    break;
                }
                Err(error) => {
                    assert!(matches!(
                        error,
                        CodecError::FrameTooLarge { .. }
                            | CodecError::FrameTooShort { .. }
                            | CodecError::Authentication
                    ));
                    return Decoded {
                        plaintexts,
                        error: Some(error),
                        leftover: buf.len(),
                    };
                }
            }
        }
    }
    Decoded {
        plaintexts,
        error: None,
        leftover: buf.len(),
    }
}

/// Feeds frame plaintexts to one `RecordDecoder` and returns every item, checking its bounds.
fn decode_records<I: IntoIterator<Item = BytesMut>>(frames: I, max: usize) -> Vec<Inbound> {
    let mut records = RecordDecoder::new(max);
    let mut items = Vec::new();
    for frame in frames {
        let frame_len = frame.len();
        let before = items.len();
        records.decode_frame(frame, &mut |item| items.push(item));
        assert!(records.buffered() <= max);
        // At most one item per record, and a record is at least a 5-byte header.
        assert!(items.len() - before <= frame_len.div_ceil(5));
        for item in &items[before..] {
            match item {
                Inbound::Message { bytes: message, .. } => assert!(message.len() <= max),
                Inbound::Control(body) => assert!(body.len() <= frame_len),
                Inbound::Violation(violation) => {
                    assert!(!matches!(
                        violation,
                        Violation::Undecodable(_) | Violation::BadControl | Violation::RateLimited
                    ));
                    assert!(violation.cost() > 0);
                }
            }
        }
    }
    items
}

/// Mode 0: arbitrary bytes, chunked, with the chunking-independence property.
fn raw_stream(input: &mut Reader<'_>, max: usize) {
    let n = input.byte().unwrap_or(0) % 16;
    let sizes = input.take(usize::from(n));
    let stream = input.rest();
    let chunked = decode_frames(&chunks(stream, sizes));
    let whole = decode_frames(&[stream]);
    assert_eq!(
        chunked.plaintexts, whole.plaintexts,
        "frames depend on chunking"
    );
    assert_eq!(chunked.error, whole.error, "outcome depends on chunking");
    if whole.error.is_none() {
        // (After an error the connection closes: what was left unread depends on the reads.)
        assert_eq!(chunked.leftover, whole.leftover);
    }
    decode_records(chunked.plaintexts, max);
}

/// Mode 1: arbitrary frame plaintexts straight into the record layer.
fn plaintexts(input: &mut Reader<'_>, max: usize) {
    let mut frames = Vec::new();
    while let Some(frame) = input.len_prefixed() {
        frames.push(BytesMut::from(frame));
    }
    decode_records(frames, max);
}

/// Seals `plaintext` as the next frame, exactly as `FrameEncoder` lays it out.
fn seal_frame(sealer: &mut Sealer, plaintext: &[u8], out: &mut Vec<u8>) {
    let header = ((plaintext.len() + TAG_LEN) as u32).to_be_bytes();
    let mut body = plaintext.to_vec();
    let tag = sealer.seal(&header, &mut body).expect("nonce space");
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
}

/// Mode 2: valid sealed frames around arbitrary plaintexts, optionally with one bit flipped.
fn sealed_frames(input: &mut Reader<'_>, max: usize) {
    let flags = input.byte().unwrap_or(0);
    let tamper_at = input.u16().unwrap_or(0);
    let n = input.byte().unwrap_or(0) % 16;
    let sizes = input.take(usize::from(n));
    let mut frames = Vec::new();
    while let Some(frame) = input.len_prefixed() {
        frames.push(frame);
    }
    let mut sealer = Sealer::new(&KEY);
    let mut stream = Vec::new();
    for frame in &frames {
        seal_frame(&mut sealer, frame, &mut stream);
    }
    let tampered = flags & 1 == 1 && !stream.is_empty();
    if tampered {
        let at = usize::from(tamper_at) % stream.len();
        stream[at] ^= 1 << ((flags >> 1) & 7);
    }

    let decoded = decode_frames(&chunks(&stream, sizes));
    for (got, sent) in decoded.plaintexts.iter().zip(&frames) {
        assert_eq!(&got[..], *sent);
    }
    if tampered {
        // A flipped bit is never accepted: decoding stops at or before the damaged frame, with
        // an error or waiting for bytes that a lying header announced.
        assert!(decoded.plaintexts.len() < frames.len());
        assert!(decoded.error.is_some() || decoded.leftover > 0);
        decode_records(decoded.plaintexts, max);
    } else {
        assert_eq!(decoded.error, None);
        assert_eq!(decoded.leftover, 0);
        assert_eq!(decoded.plaintexts.len(), frames.len());
        // Through the real decoder or straight in, the record layer sees the same thing.
        let via_frames = decode_records(decoded.plaintexts, max);
        let direct = decode_records(frames.iter().map(|f| BytesMut::from(*f)), max);
        assert_eq!(via_frames, direct);
    }
}

/// A message being pushed fragment by fragment.
struct Pending {
    message: Vec<u8>,
    offset: usize,
    max: usize,
}

/// Pushes the next piece of `pending` and records what the receiver must see for it.
fn push_piece(encoder: &mut FrameEncoder, pending: &mut Pending, expected: &mut Vec<Inbound>) {
    let len = pending.message.len();
    let first = pending.offset == 0;
    let reached = encoder
        .push_message(&pending.message, pending.offset)
        .expect("push");
    assert!(reached > pending.offset || len == 0, "no progress");
    assert!(reached <= len);
    pending.offset = reached;
    if len > pending.max {
        if first {
            expected.push(Inbound::Violation(Violation::Oversize {
                len,
                max: pending.max,
            }));
        }
    } else if reached == len {
        expected.push(Inbound::Message {
            channel: 0,
            bytes: Bytes::from(pending.message.clone()),
        });
    }
}

fn finish(encoder: &mut FrameEncoder, pending: &mut Option<Pending>, expected: &mut Vec<Inbound>) {
    if let Some(mut p) = pending.take() {
        while p.offset < p.message.len() {
            push_piece(encoder, &mut p, expected);
        }
    }
}

/// Mode 3: `FrameEncoder` output decodes back to exactly what was pushed.
fn encoder_round_trip(input: &mut Reader<'_>, max: usize) {
    let frame_size = usize::from(input.u16().unwrap_or(0));
    let n = input.byte().unwrap_or(0) % 16;
    let sizes = input.take(usize::from(n));
    let mut encoder = FrameEncoder::with_frame_size(Sealer::new(&KEY), frame_size);
    let mut expected = Vec::new();
    let mut pending: Option<Pending> = None;
    for _ in 0..64 {
        let Some(op) = input.byte() else {
            break;
        };
        match op % 4 {
            0 => {
                finish(&mut encoder, &mut pending, &mut expected);
                let len = usize::from(input.u16().unwrap_or(0) & 0xfff);
                let fill = input.byte().unwrap_or(0);
                // Cheap to build, yet every message differs from the others.
                let mut message = vec![fill; len];
                for (byte, mark) in message.iter_mut().zip(expected.len().to_be_bytes()) {
                    *byte = mark;
                }
                let mut p = Pending {
                    message,
                    offset: 0,
                    max,
                };
                push_piece(&mut encoder, &mut p, &mut expected);
                if p.offset < p.message.len() {
                    pending = Some(p);
                }
            }
            1 => {
                if let Some(p) = pending.as_mut() {
                    push_piece(&mut encoder, p, &mut expected);
                    if p.offset == p.message.len() {
                        pending = None;
                    }
                }
            }
            2 => {
                let nonce = u64::from(input.byte().unwrap_or(0));
                let body = encode_control(&ControlMessage::Ping { nonce });
                encoder.push_control(&body).expect("push control");
                expected.push(Inbound::Control(body));
            }
            _ => encoder.seal().expect("seal"),
        }
    }
    finish(&mut encoder, &mut pending, &mut expected);
    encoder.seal().expect("seal");
    let stream = encoder.output().split();

    let decoded = decode_frames(&chunks(&stream, sizes));
    assert_eq!(decoded.error, None);
    assert_eq!(decoded.leftover, 0);
    let items = decode_records(decoded.plaintexts, max);
    assert_eq!(items, expected);
}
