//! AEAD seal throughput for the candidate transport ciphers, at frame-like sizes.
//!
//! peerwire seals every frame with ring's AES-256-GCM; this bench compares it with ring's
//! ChaCha20-Poly1305 and the pure-Rust `chacha20poly1305` crate on the same buffers, in place,
//! with a fresh counter nonce per seal (as `codec::cipher::Sealer` does). Opening is measured for
//! the chosen cipher too, since every frame is opened once on the receiving side.
//!
//! Run: `cargo bench --bench cipher`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (16 * 1024, "16KiB"), (64 * 1024, "64KiB")];
const KEY: [u8; 32] = [0x42; 32];
/// The 4-byte frame header peerwire authenticates as associated data.
const AAD: [u8; 4] = [0, 1, 0, 16];

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    bytes
}

fn ring_key(alg: &'static ring::aead::Algorithm) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(alg, &KEY).unwrap())
}

fn bench_ring_seal(c: &mut Criterion, name: &str, alg: &'static ring::aead::Algorithm) {
    let mut group = c.benchmark_group("aead_seal");
    let key = ring_key(alg);
    for (size, label) in SIZES {
        group.throughput(Throughput::BytesDecimal(size as u64));
        let mut buf = vec![0xA5u8; size];
        let mut counter = 0u64;
        group.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter(|| {
                counter += 1;
                let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter));
                key.seal_in_place_separate_tag(nonce, Aad::from(&AAD), black_box(&mut buf[..]))
                    .unwrap()
            });
        });
    }
    group.finish();
}

fn aead_seal(c: &mut Criterion) {
    bench_ring_seal(c, "ring_aes256gcm", &AES_256_GCM);
    bench_ring_seal(c, "ring_chacha20poly1305", &CHACHA20_POLY1305);

    let mut group = c.benchmark_group("aead_seal");
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&KEY).into());
    for (size, label) in SIZES {
        group.throughput(Throughput::BytesDecimal(size as u64));
        let mut buf = vec![0xA5u8; size];
        let mut counter = 0u64;
        group.bench_function(
            BenchmarkId::new("rustcrypto_chacha20poly1305", label),
            |b| {
                b.iter(|| {
                    counter += 1;
                    let nonce = nonce_bytes(counter);
                    let tag = cipher
                        .encrypt_in_place_detached((&nonce).into(), &AAD, black_box(&mut buf[..]))
                        .unwrap();
                    black_box(tag);
                });
            },
        );
    }
    group.finish();
}

/// Opening with ring's AES-256-GCM: each iteration opens a freshly sealed copy (the copy and the
/// seal are setup, outside the timed part).
fn aead_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_open");
    let key = ring_key(&AES_256_GCM);
    for (size, label) in SIZES {
        group.throughput(Throughput::BytesDecimal(size as u64));
        let mut sealed = vec![0xA5u8; size];
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(7)),
                Aad::from(&AAD),
                &mut sealed,
            )
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        group.bench_function(BenchmarkId::new("ring_aes256gcm", label), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    let nonce = Nonce::assume_unique_for_key(nonce_bytes(7));
                    key.open_in_place(nonce, Aad::from(&AAD), buf)
                        .unwrap()
                        .len()
                },
                criterion::BatchSize::SmallInput,
            );
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
    targets = aead_seal, aead_open
}
criterion_main!(benches);
