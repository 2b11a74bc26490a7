//! The responder side of the handshake under hostile initiators.
//!
//! The first input byte picks a mode:
//! - 0, raw: every message comes from the input (`[u16 BE length][bytes]`, as on the wire);
//! - 1, real msg1: a real `Handshake::initiator` opens, and the input supplies msg3 attempts (raw
//!   bytes, or the genuine msg3 with bytes flipped, cut or added), then the genuine msg3 (whose
//!   outcome is not asserted: `read` errors are fatal, and a responder that failed on a msg3
//!   whose static-key part authenticated cannot take another, as snow restores its hash and
//!   chaining key on error but not its cipher state);
//! - 2, scripted initiator: a Noise initiator run here with `snow` sends a msg3 whose identity
//!   payload the input chooses (raw, or well-formed with a chosen version, network id, identity,
//!   signature, listen address), so the payload checks behind the Noise layer are reached; the
//!   outcome must be exactly the one the rules in ARCHITECTURE.md give.
//!
//! Everywhere: no panic, every error is one of the `HandshakeError` variants a responder can
//! meet, `MessageTooLarge` exactly for messages over `MAX_HANDSHAKE_MESSAGE`, and a finished
//! handshake refuses further messages with `UnexpectedMessage`.
//!
//! Shared by the fuzz target `fuzz_targets/handshake_responder.rs` and by `tests/fuzz_regressions.rs`,
//! which replays the seeds and kept inputs under `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use crate::common::Reader;
use peerwire::codec::cipher::{Opener, Sealer};
use peerwire::handshake::{
    Established, Handshake, HandshakeError, HandshakeParams, MAX_HANDSHAKE_MESSAGE, NOISE_PATTERN,
    Outcome, PROLOGUE, PROTOCOL_VERSION, Progress,
};
use peerwire::{Keypair, PeerId};
use serde::{Serialize, Serializer};

const NETWORK: &str = "fuzznet";
/// Domain separation of the identity signature (ARCHITECTURE.md, "Wire format").
const SIGNATURE_DOMAIN: &[u8] = b"peerwire/handshake/identity/v1";
/// Fixed identities (derived once: key derivation is a scalar multiplication).
static RESPONDER: LazyLock<Keypair> = LazyLock::new(|| Keypair::from_secret_bytes(&[7; 32]));
static INITIATOR: LazyLock<Keypair> = LazyLock::new(|| Keypair::from_secret_bytes(&[9; 32]));

/// Runs one input through the target's properties (panics on a violation).
pub(crate) fn run(data: &[u8]) {
    let mut input = Reader::new(data);
    let Some(mode) = input.byte() else {
        return;
    };
    match mode % 3 {
        0 => raw(&mut input),
        1 => real_msg1(&mut input),
        _ => scripted(&mut input),
    }
}

fn params() -> HandshakeParams {
    HandshakeParams {
        network_id: NETWORK.into(),
        listen_addr: None,
        expected_peer: None,
        dial_seq: 1,
    }
}

fn responder() -> Handshake {
    Handshake::responder(&RESPONDER, params()).expect("responder")
}

/// Errors a responder may return from `read`; the rest (timeouts, I/O, parameters) belong to
/// the driver or to construction.
fn check_error(error: &HandshakeError) {
    assert!(
        matches!(
            error,
            HandshakeError::Noise(_)
                | HandshakeError::MessageTooLarge { .. }
                | HandshakeError::LowOrderKey
                | HandshakeError::BadPayload
                | HandshakeError::BadSignature
                | HandshakeError::UnexpectedMessage
        ),
        "unexpected error {error:?}"
    );
    assert!(!error.label().is_empty());
    assert!(!error.to_string().is_empty());
}

/// A responder with no expected peer refuses only on these policies.
fn check_refusal(refusal: &HandshakeError) {
    assert!(
        matches!(
            refusal,
            HandshakeError::VersionMismatch { .. }
                | HandshakeError::NetworkMismatch { .. }
                | HandshakeError::SelfConnection
        ),
        "unexpected refusal {refusal:?}"
    );
}

/// Feeds one message, checks the result's shape, and tracks whether the handshake finished.
fn feed(hs: &mut Handshake, message: &[u8], finished: &mut bool) -> Result<Progress, ()> {
    let result = hs.read(message);
    if *finished {
        // Refused either way; an oversize message is refused for its size first (found by
        // the fuzzer: the two properties disagreed on a finished handshake fed 1,054 bytes).
        assert!(
            matches!(
                result,
                Err(HandshakeError::UnexpectedMessage | HandshakeError::MessageTooLarge { .. })
            ),
            "read after the end: {result:?}"
        );
    }
    if message.len() > MAX_HANDSHAKE_MESSAGE {
        assert!(
            matches!(result, Err(HandshakeError::MessageTooLarge { .. })),
            "oversize message: {result:?}"
        );
    }
    match result {
        Ok(progress) => {
            match &progress.outcome {
                // Only msg1 makes the responder answer, and it then waits for msg3.
                Outcome::Continue => {
                    let msg2 = progress.send.as_ref().expect("msg2");
                    assert!(msg2.len() <= MAX_HANDSHAKE_MESSAGE);
                }
                Outcome::Done(_) => {
                    assert!(progress.send.is_none());
                    *finished = true;
                }
                Outcome::Refused(refusal) => {
                    assert!(progress.send.is_none());
                    check_refusal(refusal);
                    *finished = true;
                }
            }
            Ok(progress)
        }
        Err(error) => {
            check_error(&error);
            Err(())
        }
    }
}

/// Mode 0: every message from the input, fed on after errors too (the state machine must stay
/// well-behaved even though the driver would have closed the connection).
fn raw(input: &mut Reader<'_>) {
    let mut hs = responder();
    let mut finished = false;
    for _ in 0..6 {
        let Some(message) = input.len_prefixed() else {
            break;
        };
        let _ = feed(&mut hs, message, &mut finished);
    }
}

/// Mode 1: a real initiator's msg1, then msg3 attempts from the input.
fn real_msg1(input: &mut Reader<'_>) {
    let (mut initiator, msg1) = Handshake::initiator(&INITIATOR, params()).expect("initiator");
    let mut hs = responder();
    let mut finished = false;
    let msg2 = feed(&mut hs, &msg1, &mut finished)
        .expect("genuine msg1")
        .send
        .expect("msg2");
    let done = initiator.read(&msg2).expect("genuine msg2");
    assert!(matches!(done.outcome, Outcome::Done(_)));
    let genuine = done.send.expect("msg3");

    for _ in 0..4 {
        let Some(how) = input.byte() else {
            break;
        };
        let attempt = if how & 1 == 1 {
            let Some(bytes) = input.len_prefixed() else {
                break;
            };
            bytes.to_vec()
        } else {
            let mut edited = genuine.clone();
            let at = usize::from(input.u16().unwrap_or(0)) % edited.len();
            for (i, b) in input.take(usize::from(how >> 4)).iter().enumerate() {
                let len = edited.len();
                edited[(at + i) % len] ^= b;
            }
            match (how >> 1) & 3 {
                1 => edited.truncate(at),
                2 => edited.extend_from_slice(input.take(usize::from(how >> 3))),
                _ => {}
            }
            edited
        };
        let result = feed(&mut hs, &attempt, &mut finished);
        if attempt != genuine {
            // Only the initiator can produce a msg3 that passes.
            assert!(result.is_err(), "forged msg3 accepted: {result:?}");
        }
    }
    let _ = feed(&mut hs, &genuine, &mut finished);
}

/// The identity payload, as ARCHITECTURE.md specifies it (postcard).
#[derive(Serialize)]
struct Payload<'a> {
    version: u16,
    network_id: &'a str,
    identity: [u8; 32],
    #[serde(serialize_with = "as_bytes")]
    signature: [u8; 64],
    listen_addr: Option<SocketAddr>,
    dial_seq: u64,
}

fn as_bytes<S: Serializer>(value: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(value)
}

fn socket_addr(input: &mut Reader<'_>) -> SocketAddr {
    let kind = input.byte().unwrap_or(0);
    let port = input.u16().unwrap_or(0);
    if kind & 1 == 0 {
        let mut ip = [0u8; 4];
        ip.copy_from_slice(&pad::<4>(input.take(4)));
        SocketAddr::from((Ipv4Addr::from(ip), port))
    } else {
        SocketAddr::from((Ipv6Addr::from(pad::<16>(input.take(16))), port))
    }
}

fn pad<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// What the responder must conclude from a well-formed payload.
#[derive(Debug)]
enum Expected {
    BadSignature,
    Refused(HandshakeError),
    Done {
        peer: PeerId,
        listen_addr: Option<SocketAddr>,
        dial_seq: u64,
    },
}

/// Mode 2: a scripted Noise initiator with a payload chosen by the input.
fn scripted(input: &mut Reader<'_>) {
    let builder = snow::Builder::new(NOISE_PATTERN.parse().expect("pattern"));
    let noise_keys = builder.generate_keypair().expect("keypair");
    let mut initiator = builder
        .local_private_key(&noise_keys.private)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.build_initiator())
        .expect("initiator");
    let mut buf = vec![0u8; 65535];
    let n = initiator.write_message(&[], &mut buf).expect("msg1");
    let mut hs = responder();
    let mut finished = false;
    let msg2 = feed(&mut hs, &buf[..n], &mut finished)
        .expect("genuine msg1")
        .send
        .expect("msg2");
    initiator.read_message(&msg2, &mut buf).expect("msg2 reads");
    let hash_before = initiator.get_handshake_hash().to_vec();

    let how = input.byte().unwrap_or(0);
    let (payload, expected) = if how & 1 == 1 {
        (input.rest().to_vec(), None)
    } else {
        well_formed(input, how, &hash_before, &noise_keys.public)
    };
    let Ok(n) = initiator.write_message(&payload, &mut buf) else {
        return; // does not fit in a Noise message
    };
    let msg3 = &buf[..n];
    let result = feed(&mut hs, msg3, &mut finished);
    if let Some(expected) = expected {
        match (&expected, result) {
            (Expected::BadSignature, Err(())) => {}
            (Expected::Refused(want), Ok(Progress { outcome, .. })) => {
                let Outcome::Refused(got) = outcome else {
                    panic!("expected refusal {want:?}, got {outcome:?}");
                };
                assert_eq!(got.to_string(), want.to_string());
            }
            (
                Expected::Done {
                    peer,
                    listen_addr,
                    dial_seq,
                },
                Ok(Progress { outcome, .. }),
            ) => {
                let Outcome::Done(established) = outcome else {
                    panic!("expected success, got {outcome:?}");
                };
                assert_eq!(established.peer, *peer);
                assert_eq!(established.listen_addr, *listen_addr);
                assert_eq!(established.dial_seq, *dial_seq);
                check_keys(&mut initiator, *established);
            }
            (expected, result) => panic!("expected {expected:?}, got {result:?}"),
        }
    }
    if finished {
        let _ = feed(&mut hs, msg3, &mut finished);
    }
}

/// Builds a well-formed payload from the input and the outcome the rules give for it.
fn well_formed(
    input: &mut Reader<'_>,
    how: u8,
    hash_before: &[u8],
    noise_static: &[u8],
) -> (Vec<u8>, Option<Expected>) {
    let responder_id = RESPONDER.peer_id();
    let version = if how & 0x02 != 0 {
        input.u16().unwrap_or(0)
    } else {
        PROTOCOL_VERSION
    };
    let network = if how & 0x04 != 0 {
        let len = usize::from(input.byte().unwrap_or(0) % 80);
        String::from_utf8_lossy(input.take(len)).into_owned()
    } else {
        NETWORK.to_owned()
    };
    // The signer: our initiator, or the responder's own key (a connection to itself).
    let signer: &Keypair = if how & 0x08 != 0 {
        &RESPONDER
    } else {
        &INITIATOR
    };
    let mut signed = SIGNATURE_DOMAIN.to_vec();
    signed.extend_from_slice(hash_before);
    if how & 0x10 != 0 {
        // Bound to another Noise key than the one the DH proves.
        let mut other = noise_static.to_vec();
        other[0] ^= 1;
        signed.extend_from_slice(&other);
    } else {
        signed.extend_from_slice(noise_static);
    }
    let mut signature = signer.sign(&signed);
    if how & 0x20 != 0 {
        let at = usize::from(input.byte().unwrap_or(0)) % 64;
        signature[at] ^= input.byte().unwrap_or(0) | 1;
    }
    let mut identity = *signer.peer_id().as_bytes();
    if how & 0x40 != 0 {
        identity = pad::<32>(input.take(32));
    }
    let listen_addr = (how & 0x80 != 0).then(|| socket_addr(input));
    let dial_seq = u64::from_le_bytes(pad::<8>(input.take(8)));
    let payload = Payload {
        version,
        network_id: &network,
        identity,
        signature,
        listen_addr,
        dial_seq,
    };
    let bytes = postcard::to_allocvec(&payload).expect("payload");

    // The rules, in the order ARCHITECTURE.md gives them: signature, version, network, self.
    let mut really_signed = SIGNATURE_DOMAIN.to_vec();
    really_signed.extend_from_slice(hash_before);
    really_signed.extend_from_slice(noise_static);
    let peer = PeerId::from_bytes(identity);
    let expected = if peer.verify(&really_signed, &signature).is_err() {
        Expected::BadSignature
    } else if version != PROTOCOL_VERSION {
        Expected::Refused(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        })
    } else if network != NETWORK {
        Expected::Refused(HandshakeError::NetworkMismatch {
            ours: NETWORK.into(),
            theirs: network,
        })
    } else if peer == responder_id {
        Expected::Refused(HandshakeError::SelfConnection)
    } else {
        Expected::Done {
            peer,
            listen_addr,
            dial_seq,
        }
    };
    (bytes, Some(expected))
}

/// The responder's session keys are the initiator's, crossed.
fn check_keys(initiator: &mut snow::HandshakeState, established: Established) {
    let (i2r, r2i) = initiator.dangerously_get_raw_split();
    let Established {
        mut sealer,
        mut opener,
        ..
    } = established;
    let mut frame = b"to the responder".to_vec();
    let tag = Sealer::new(&i2r).seal(b"aad", &mut frame).expect("seal");
    frame.extend_from_slice(&tag);
    assert!(opener.open(b"aad", &mut frame).is_ok());
    let mut frame = b"to the initiator".to_vec();
    let tag = sealer.seal(b"aad", &mut frame).expect("seal");
    frame.extend_from_slice(&tag);
    assert!(Opener::new(&r2i).open(b"aad", &mut frame).is_ok());
}
