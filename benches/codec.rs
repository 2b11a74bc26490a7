//! The pure wire codec, no sockets: encoding messages into sealed frames and decoding them back.
//!
//! - `encode/per_message/SIZE`: `encode_message` of one `Bytes` payload (postcard), pushed into a
//!   `FrameEncoder` (fragmented into 128 KiB frames when larger) and sealed on its own, so each
//!   64 B or 1 KiB message pays for one AES-GCM seal.
//! - `encode/packed/SIZE`: what the writer task does with a full queue: about 256 KiB of messages
//!   pushed one after another and sealed together (many messages per frame).
//! - `decode/...`: the reverse of each: `FrameDecoder::decode` (open in place),
//!   `RecordDecoder::decode_frame`, `decode_message::<Bytes>`. A fresh decoder (nonce 0) and a
//!   copy of the sealed bytes are made in setup, outside the timed part.
//!
//! - `typed_body/exact` and `typed_body/pooled`: 256 small typed messages (a vote of 34-36 bytes encoded)
//!   encoded and held, as a send lane holds them, then dropped: with an exact-size buffer each
//!   (`encode_message`, what sends did before) and cut from the thread's shared buffer
//!   (`encode_body`, what sends do now).
//!
//! Throughput is payload bytes (messages for `typed_body`). Run: `cargo bench --bench codec`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use peerwire::codec::cipher::{Opener, Sealer};
use peerwire::codec::frame::{FrameDecoder, FrameEncoder};
use peerwire::codec::record::{Inbound, RecordDecoder};
use peerwire::codec::{decode_message, encode_body, encode_message};

const KEY: [u8; 32] = [0x24; 32];
const MAX_MESSAGE: usize = 16 << 20;
/// Bytes of payload per iteration in the `packed` cases (the writer's default batch size).
const PACKED_BYTES: usize = 256 * 1024;

const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (1024, "1KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// Encodes `count` copies of `message` into `encoder` and seals.
fn encode_into(encoder: &mut FrameEncoder, message: &Bytes, count: usize) {
    for _ in 0..count {
        let encoded = encode_message(message, MAX_MESSAGE).unwrap();
        let mut offset = 0;
        while offset < encoded.len() {
            offset = encoder.push_message(&encoded, offset).unwrap();
        }
    }
    encoder.seal().unwrap();
}

/// The sealed stream for `count` copies of `message`, from a fresh session (nonce 0), exactly as
/// the encode case of the same mode produces it.
fn sealed_stream(message: &Bytes, count: usize) -> Bytes {
    let mut encoder = FrameEncoder::new(Sealer::new(&KEY));
    encode_into(&mut encoder, message, count);
    encoder.output().split().freeze()
}

/// Decodes every frame in `stream`; returns the number of messages (payload checked by length).
fn decode_all(
    frames: &mut FrameDecoder,
    records: &mut RecordDecoder,
    mut stream: BytesMut,
) -> usize {
    let mut messages = 0;
    while let Some(plaintext) = frames.decode(&mut stream).unwrap() {
        records.decode_frame(plaintext, &mut |item| match item {
            Inbound::Message { bytes: encoded, .. } => {
                let message: Bytes = decode_message(&encoded).unwrap();
                black_box(&message);
                messages += 1;
            }
            other => panic!("unexpected record {other:?}"),
        });
    }
    messages
}

fn cases() -> impl Iterator<Item = (&'static str, usize, &'static str, usize)> {
    // (mode, size, label, messages per iteration)
    SIZES
        .into_iter()
        .map(|(size, label)| ("per_message", size, label, 1))
        .chain(
            SIZES
                .into_iter()
                .filter(|(size, _)| *size < PACKED_BYTES)
                .map(|(size, label)| ("packed", size, label, PACKED_BYTES / size)),
        )
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (mode, size, label, count) in cases() {
        let message = payload(size);
        group.throughput(Throughput::BytesDecimal((size * count) as u64));
        let mut encoder = FrameEncoder::new(Sealer::new(&KEY));
        group.bench_function(BenchmarkId::new(mode, label), |b| {
            b.iter(|| {
                encode_into(&mut encoder, black_box(&message), count);
                black_box(encoder.output().len());
                encoder.output().clear();
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (mode, size, label, count) in cases() {
        let message = payload(size);
        let stream = sealed_stream(&message, count);
        group.throughput(Throughput::BytesDecimal((size * count) as u64));
        group.bench_function(BenchmarkId::new(mode, label), |b| {
            b.iter_batched(
                || {
                    (
                        FrameDecoder::new(Opener::new(&KEY)),
                        RecordDecoder::new(MAX_MESSAGE),
                        BytesMut::from(&stream[..]),
                    )
                },
                |(mut frames, mut records, stream)| {
                    let n = decode_all(&mut frames, &mut records, stream);
                    assert_eq!(n, count);
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// A consensus vote: small, fixed-size, no heap of its own.
#[derive(serde::Serialize)]
struct Vote {
    height: u64,
    round: u32,
    block: [u8; 32],
}

fn typed_body(c: &mut Criterion) {
    const HELD: usize = 256;
    let mut group = c.benchmark_group("typed_body");
    group.throughput(Throughput::Elements(HELD as u64));
    let votes: Vec<Vote> = (0..HELD as u64)
        .map(|i| Vote {
            height: i,
            round: (i % 7) as u32,
            block: [(i % 251) as u8; 32],
        })
        .collect();
    let mut held: Vec<Bytes> = Vec::with_capacity(HELD);
    type Encode = fn(&Vote, usize) -> Result<Bytes, peerwire::codec::CodecError>;
    let encodings: [(&str, Encode); 2] = [("exact", encode_message), ("pooled", encode_body)];
    for (name, encode) in encodings {
        group.bench_function(name, |b| {
            b.iter(|| {
                held.extend(
                    votes
                        .iter()
                        .map(|v| encode(black_box(v), MAX_MESSAGE).unwrap()),
                );
                held.clear();
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = encode, decode, typed_body
}
criterion_main!(benches);
