//! The connection handshake, as a pure state machine ([`Handshake`]) and a thin async driver
//! ([`perform`]).
//!
//! **Internal.** Public so the fuzz targets and the wire-level tests can play a peer, not as
//! part of the supported API: [`crate::Network`] runs it for every connection. The types may
//! change between releases without notice; [`HandshakeError`] is what an application sees,
//! inside [`crate::ConnectError::Handshake`].
//!
//! Pattern: `Noise_XX_25519_AESGCM_SHA256` with the prologue [`PROLOGUE`], three messages:
//!
//! ```text
//! initiator -> responder   msg1: e
//! responder -> initiator   msg2: e, ee, s, es, payload(responder identity)
//! initiator -> responder   msg3: s, se, payload(initiator identity)
//! ```
//!
//! Each payload carries the protocol version, the network id, the sender's ed25519 public key (its
//! [`PeerId`]), its advertised listen address, the initiator's dial sequence number (which orders
//! two connections dialed by the same node identically on both sides; the responder sends 0),
//! and an ed25519 signature over
//! `DOMAIN || handshake hash before the message || sender's Noise static key`. The signature binds
//! the proven `PeerId` to this very session (the handshake hash covers both ephemeral keys), so a
//! recorded payload cannot be replayed into another handshake. Remote ephemeral keys of low order
//! are refused before any Diffie-Hellman is computed with them.
//!
//! On the wire each handshake message is `[u16 BE length][noise message]`, at most
//! [`MAX_HANDSHAKE_MESSAGE`] bytes. After msg3 both sides split the session keys and switch to the
//! frame codec ([`crate::codec`]).

mod driver;
mod error;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use driver::perform;
pub(crate) use driver::perform_observed;
pub use error::HandshakeError;

use crate::codec::cipher::{Opener, Sealer};
use crate::identity::{Keypair, PeerId};

/// Protocol version carried in the handshake; peers with another version are refused.
/// 6: gossip's source trees and announcement flags (5: gossip's `Tree` carries the root's
/// stamp; 4: raw `Bytes` bodies).
pub const PROTOCOL_VERSION: u16 = 6;
/// Noise prologue: both sides mix it in, so a non-peerwire client fails at the first message.
pub const PROLOGUE: &[u8] = b"peerwire/noise/1";
/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";
/// Largest handshake message accepted, checked before it is buffered.
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;
/// Longest network id, in bytes.
pub const MAX_NETWORK_ID_LEN: usize = 64;
/// Domain separation for the identity signature.
const SIGNATURE_DOMAIN: &[u8] = b"peerwire/handshake/identity/v1";

/// X25519 public keys of small order (with the top bit cleared), which would make a
/// Diffie-Hellman result predictable.
const LOW_ORDER_POINTS: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

fn is_low_order(key: &[u8]) -> bool {
    let Ok(mut key) = <[u8; 32]>::try_from(key) else {
        return true;
    };
    key[31] &= 0x7f;
    LOW_ORDER_POINTS.contains(&key)
}

/// What a node says about itself in the handshake.
#[derive(Debug, Clone)]
pub struct HandshakeParams {
    /// The network this node belongs to; a peer of another network is refused.
    pub network_id: String,
    /// The address other nodes can dial this node on, advertised to the peer.
    pub listen_addr: Option<SocketAddr>,
    /// For an initiator: the id the dialed node must prove, if known.
    pub expected_peer: Option<PeerId>,
    /// For an initiator: this dial's sequence number, larger for every later dial of this node
    /// (also across restarts); the responder learns it. Ignored for a responder.
    pub dial_seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    version: u16,
    network_id: String,
    identity: [u8; 32],
    #[serde(with = "crate::identity::signature_bytes")]
    signature: [u8; 64],
    listen_addr: Option<SocketAddr>,
    /// The initiator's dial sequence number; 0 from the responder.
    dial_seq: u64,
}

/// What a verified identity payload told us.
struct Identity {
    peer: PeerId,
    listen_addr: Option<SocketAddr>,
    dial_seq: u64,
}

/// The result of a finished handshake: who the peer is, proven, and the session keys.
#[derive(Debug)]
pub struct Established {
    /// The peer's proven identity.
    pub peer: PeerId,
    /// The listen address the peer advertised (unverified: it is only a dialing hint).
    pub listen_addr: Option<SocketAddr>,
    /// The initiator's dial sequence number for this connection (ours when we dialed, the
    /// peer's when it did): both sides hold the same value.
    pub dial_seq: u64,
    /// Seals frames we send.
    pub sealer: Sealer,
    /// Opens frames we receive.
    pub opener: Opener,
}

/// What the caller must do after feeding the handshake a message.
#[derive(Debug)]
pub struct Progress {
    /// A message to send to the peer, if any (send it before acting on `outcome`).
    pub send: Option<Vec<u8>>,
    /// Where the handshake stands.
    pub outcome: Outcome,
}

/// Where a handshake stands after a step.
#[derive(Debug)]
pub enum Outcome {
    /// Waiting for the peer's next message.
    Continue,
    /// Finished: the peer is authenticated.
    Done(Box<Established>),
    /// The peer is authentic but refused by policy (network, version, identity); the reason is
    /// typed. Any `send` is delivered first so the peer learns the mismatch as well.
    Refused(HandshakeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    InitiatorAwaitMsg2,
    ResponderAwaitMsg1,
    ResponderAwaitMsg3,
    Finished,
}

/// A Noise XX handshake with ed25519 identity binding, driven by bytes in and bytes out.
pub struct Handshake {
    noise: snow::HandshakeState,
    keypair: Keypair,
    local_static: Vec<u8>,
    params: HandshakeParams,
    stage: Stage,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("local", &self.keypair.peer_id())
            .field("stage", &self.stage)
            .finish()
    }
}

fn builder_keys() -> Result<(snow::Builder<'static>, snow::Keypair), HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PATTERN.parse()?;
    let builder = snow::Builder::new(params);
    let keys = builder.generate_keypair()?;
    Ok((builder, keys))
}

impl Handshake {
    /// Starts a handshake as the dialing side; returns it and the first message to send.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the Noise state cannot be built (no randomness), or
    /// [`HandshakeError::BadParams`] if the network id is too long.
    pub fn initiator(
        keypair: &Keypair,
        params: HandshakeParams,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        check_params(&params)?;
        let (builder, keys) = builder_keys()?;
        let noise = builder
            .local_private_key(&keys.private)?
            .prologue(PROLOGUE)?
            .build_initiator()?;
        let mut hs = Self {
            noise,
            keypair: keypair.clone(),
            local_static: keys.public,
            params,
            stage: Stage::InitiatorAwaitMsg2,
        };
        let mut msg1 = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = hs.noise.write_message(&[], &mut msg1)?;
        msg1.truncate(n);
        Ok((hs, msg1))
    }

    /// Starts a handshake as the accepting side; it waits for the initiator's first message.
    ///
    /// # Errors
    /// As for [`Handshake::initiator`].
    pub fn responder(keypair: &Keypair, params: HandshakeParams) -> Result<Self, HandshakeError> {
        check_params(&params)?;
        let (builder, keys) = builder_keys()?;
        let noise = builder
            .local_private_key(&keys.private)?
            .prologue(PROLOGUE)?
            .build_responder()?;
        Ok(Self {
            noise,
            keypair: keypair.clone(),
            local_static: keys.public,
            params,
            stage: Stage::ResponderAwaitMsg1,
        })
    }

    /// The local identity running this handshake.
    pub fn local_peer_id(&self) -> PeerId {
        self.keypair.peer_id()
    }

    fn signed_payload(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let mut signed = SIGNATURE_DOMAIN.to_vec();
        signed.extend_from_slice(self.noise.get_handshake_hash());
        signed.extend_from_slice(&self.local_static);
        let payload = Payload {
            version: PROTOCOL_VERSION,
            network_id: self.params.network_id.clone(),
            identity: *self.keypair.peer_id().as_bytes(),
            signature: self.keypair.sign(&signed),
            listen_addr: self.params.listen_addr,
            dial_seq: if self.noise.is_initiator() {
                self.params.dial_seq
            } else {
                0
            },
        };
        postcard::to_allocvec(&payload).map_err(|_| HandshakeError::BadPayload)
    }

    fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut out = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = self.noise.write_message(payload, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads a message carrying an identity payload and checks everything about it. Returns the
    /// verified identity, or a policy refusal (authentic peer, unacceptable terms).
    fn read_identity(
        &mut self,
        message: &[u8],
    ) -> Result<Result<Identity, HandshakeError>, HandshakeError> {
        let hash_before = self.noise.get_handshake_hash().to_vec();
        let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = self.noise.read_message(message, &mut buf)?;
        let payload: Payload =
            postcard::from_bytes(&buf[..n]).map_err(|_| HandshakeError::BadPayload)?;
        let remote_static = self
            .noise
            .get_remote_static()
            .ok_or(HandshakeError::BadPayload)?
            .to_vec();
        if is_low_order(&remote_static) {
            return Err(HandshakeError::LowOrderKey);
        }
        let peer = PeerId::from_bytes(payload.identity);
        let mut signed = SIGNATURE_DOMAIN.to_vec();
        signed.extend_from_slice(&hash_before);
        signed.extend_from_slice(&remote_static);
        peer.verify(&signed, &payload.signature)
            .map_err(|_| HandshakeError::BadSignature)?;
        // The peer is now proven; the rest are policy checks with typed reasons.
        if payload.version != PROTOCOL_VERSION {
            return Ok(Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: payload.version,
            }));
        }
        if payload.network_id != self.params.network_id {
            return Ok(Err(HandshakeError::NetworkMismatch {
                ours: self.params.network_id.clone(),
                theirs: payload.network_id,
            }));
        }
        if peer == self.keypair.peer_id() {
            return Ok(Err(HandshakeError::SelfConnection));
        }
        if let Some(expected) = self.params.expected_peer {
            if expected != peer {
                return Ok(Err(HandshakeError::PeerMismatch {
                    expected,
                    actual: peer,
                }));
            }
        }
        Ok(Ok(Identity {
            peer,
            listen_addr: payload.listen_addr,
            dial_seq: payload.dial_seq,
        }))
    }

    fn establish(&mut self, remote: Identity) -> Box<Established> {
        let (initiator_to_responder, responder_to_initiator) =
            self.noise.dangerously_get_raw_split();
        let (send, recv) = if self.noise.is_initiator() {
            (initiator_to_responder, responder_to_initiator)
        } else {
            (responder_to_initiator, initiator_to_responder)
        };
        self.stage = Stage::Finished;
        // The dial sequence is the initiator's: ours if we dialed, else what the peer sent.
        let dial_seq = if self.noise.is_initiator() {
            self.params.dial_seq
        } else {
            remote.dial_seq
        };
        Box::new(Established {
            peer: remote.peer,
            listen_addr: remote.listen_addr,
            dial_seq,
            sealer: Sealer::new(&send),
            opener: Opener::new(&recv),
        })
    }

    /// Feeds the peer's next handshake message.
    ///
    /// # Errors
    /// Fatal errors: the message is not a valid Noise message for this stage, carries a low-order
    /// key, a malformed payload or a bad signature. Policy refusals come back as
    /// [`Outcome::Refused`] instead.
    pub fn read(&mut self, message: &[u8]) -> Result<Progress, HandshakeError> {
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(HandshakeError::MessageTooLarge {
                len: message.len(),
                max: MAX_HANDSHAKE_MESSAGE,
            });
        }
        match self.stage {
            Stage::ResponderAwaitMsg1 => {
                // msg1 is the initiator's ephemeral key in clear.
                if message.len() < 32 || is_low_order(&message[..32]) {
                    return Err(HandshakeError::LowOrderKey);
                }
                let mut scratch = vec![0u8; MAX_HANDSHAKE_MESSAGE];
                let n = self.noise.read_message(message, &mut scratch)?;
                if n != 0 {
                    return Err(HandshakeError::BadPayload);
                }
                let payload = self.signed_payload()?;
                let msg2 = self.write(&payload)?;
                self.stage = Stage::ResponderAwaitMsg3;
                Ok(Progress {
                    send: Some(msg2),
                    outcome: Outcome::Continue,
                })
            }
            Stage::InitiatorAwaitMsg2 => {
                if message.len() < 32 || is_low_order(&message[..32]) {
                    return Err(HandshakeError::LowOrderKey);
                }
                let verdict = self.read_identity(message)?;
                let reveals_identity = match &verdict {
                    Ok(_) => true,
                    // Tell a peer of another network or version who we are, so that it can log
                    // the same clear reason; never complete with an impostor or ourselves.
                    Err(
                        HandshakeError::NetworkMismatch { .. }
                        | HandshakeError::VersionMismatch { .. },
                    ) => true,
                    Err(_) => false,
                };
                let send = if reveals_identity {
                    let payload = self.signed_payload()?;
                    Some(self.write(&payload)?)
                } else {
                    None
                };
                let outcome = match verdict {
                    Ok(remote) => Outcome::Done(self.establish(remote)),
                    Err(refusal) => {
                        self.stage = Stage::Finished;
                        Outcome::Refused(refusal)
                    }
                };
                Ok(Progress { send, outcome })
            }
            Stage::ResponderAwaitMsg3 => {
                let outcome = match self.read_identity(message)? {
                    Ok(remote) => Outcome::Done(self.establish(remote)),
                    Err(refusal) => {
                        self.stage = Stage::Finished;
                        Outcome::Refused(refusal)
                    }
                };
                Ok(Progress {
                    send: None,
                    outcome,
                })
            }
            Stage::Finished => Err(HandshakeError::UnexpectedMessage),
        }
    }
}

fn check_params(params: &HandshakeParams) -> Result<(), HandshakeError> {
    if params.network_id.len() > MAX_NETWORK_ID_LEN {
        return Err(HandshakeError::BadParams(format!(
            "network id longer than {MAX_NETWORK_ID_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
