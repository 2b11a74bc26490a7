//! Node identity: the ed25519 [`Keypair`], the [`PeerId`] derived from it, and key files.
//!
//! A `PeerId` *is* the 32-byte ed25519 public key, so whoever proves possession of the matching
//! secret key in the handshake proves the id; nothing else (address, port, a claimed name) is ever
//! trusted as identity.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Length in bytes of a [`PeerId`] (an ed25519 public key).
pub const PEER_ID_LEN: usize = 32;

/// The proven identity of a node: its 32-byte ed25519 public key.
///
/// Its text form is base58 (about 44 characters) and parses back with [`str::parse`]:
///
/// ```
/// use peerwire::{Keypair, PeerId};
/// let id = Keypair::generate().peer_id();
/// let text = id.to_string();
/// assert_eq!(text.parse::<PeerId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId([u8; PEER_ID_LEN]);

impl PeerId {
    /// Wraps raw public-key bytes. The bytes are checked to be a valid ed25519 point only when a
    /// signature is verified against them (see [`PeerId::verify`]).
    pub const fn from_bytes(bytes: [u8; PEER_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes of the public key.
    pub const fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }

    /// Verifies `signature` over `message` with this id's key, using strict verification (rejects
    /// small-order keys and non-canonical signatures, so a signature cannot be malleated).
    ///
    /// # Errors
    /// [`IdentityError::InvalidKey`] when the bytes are not a valid public key,
    /// [`IdentityError::BadSignature`] when the signature does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &signature)
            .map_err(|_| IdentityError::BadSignature)
    }
}

/// Verifying keys decompressed once per peer instead of on every signature (decompressing a
/// key is about a fifth of a verification's work). Holds at most [`VerifierCache::CAPACITY`]
/// keys; when full it starts over (empty), which costs the decompressions again, nothing else.
#[derive(Default)]
pub(crate) struct VerifierCache {
    keys: PeerMap<VerifyingKey>,
}

impl fmt::Debug for VerifierCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierCache")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl VerifierCache {
    /// Keys kept.
    pub(crate) const CAPACITY: usize = 4096;

    /// [`PeerId::verify`], with `id`'s key decompressed at most once while it stays cached.
    pub(crate) fn verify(&mut self, id: &PeerId, message: &[u8], signature: &[u8; 64]) -> bool {
        let key = match self.keys.get(id) {
            Some(key) => *key,
            None => {
                let Ok(key) = VerifyingKey::from_bytes(&id.0) else {
                    return false;
                };
                if self.keys.len() >= Self::CAPACITY {
                    self.keys.clear();
                }
                self.keys.insert(*id, key);
                key
            }
        };
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &signature).is_ok()
    }
}

/// serde for a 64-byte signature (serde's array impls stop at 32), as a byte string: one
/// encoding for every signed thing on the wire (handshake, gossip, peer records).
pub(crate) mod signature_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(d)?;
        <[u8; 64]>::try_from(bytes)
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form keeps logs readable; the full id is the Display form.
        let text = self.to_string();
        write!(f, "PeerId({})", &text[..text.len().min(10)])
    }
}

impl FromStr for PeerId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; PEER_ID_LEN];
        let len = bs58::decode(s.trim())
            .onto(&mut bytes)
            .map_err(|_| IdentityError::BadPeerIdText)?;
        if len != PEER_ID_LEN {
            return Err(IdentityError::BadPeerIdText);
        }
        Ok(Self(bytes))
    }
}

/// Errors about keys, ids and key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The text is not the base58 form of a 32-byte id.
    #[error("not a valid peer id (expected base58 of 32 bytes)")]
    BadPeerIdText,
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidKey,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The key file exists but does not hold a 64-hex-digit secret key.
    #[error("key file {path} is malformed: expected 64 hex digits")]
    MalformedKeyFile {
        /// The file that was read.
        path: String,
    },
    /// The operating system could not supply randomness.
    #[error("no randomness available: {0}")]
    Random(String),
    /// Reading or writing the key file failed.
    #[error("key file I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A node's ed25519 signing keypair.
///
/// ```
/// use peerwire::Keypair;
/// let key = Keypair::generate();
/// let again = Keypair::from_secret_bytes(&key.secret_bytes());
/// assert_eq!(key.peer_id(), again.peer_id());
/// ```
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Keypair")
            .field("peer_id", &self.peer_id())
            .finish()
    }
}

impl Keypair {
    /// Generates a fresh keypair from the operating system's random source.
    ///
    /// # Panics
    /// Panics if the OS random source is unavailable, which a node cannot run without; use
    /// [`Keypair::try_generate`] to handle that case.
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        Self::try_generate().expect("operating system random source unavailable")
    }

    /// Generates a fresh keypair, reporting a missing random source as an error.
    ///
    /// # Errors
    /// [`IdentityError::Random`] when the OS cannot provide randomness.
    pub fn try_generate() -> Result<Self, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_secret_bytes(&secret))
    }

    /// Rebuilds a keypair from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The 32 secret bytes. Keep them secret: they are the node's identity.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public identity of this keypair.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` with the secret key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Parses the contents of a key file as [`Keypair::load_or_create`] writes it: 64 hex
    /// digits, optionally surrounded by ASCII whitespace. Anything else is `None`, never a
    /// panic (the key-file fuzz target holds it to that).
    ///
    /// ```
    /// use peerwire::Keypair;
    /// let hex = "01".repeat(32) + "\n";
    /// let key = Keypair::from_key_file(hex.as_bytes());
    /// assert_eq!(key.map(|k| k.secret_bytes()), Some([1u8; 32]));
    /// assert!(Keypair::from_key_file("a\u{e9}a".as_bytes()).is_none());
    /// ```
    pub fn from_key_file(contents: &[u8]) -> Option<Self> {
        // Parsed as bytes, never sliced as text: a file of multi-byte characters is malformed,
        // not a panic on a character boundary.
        parse_hex_secret(contents.trim_ascii()).map(|secret| Self::from_secret_bytes(&secret))
    }

    /// Loads the keypair stored at `path`, or creates one and writes it there with owner-only
    /// permissions (0600) when the file does not exist.
    ///
    /// The file holds the secret key as 64 hex digits and a newline.
    ///
    /// # Errors
    /// I/O errors, a malformed existing file, or no randomness for a new key.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match std::fs::read(path) {
            Ok(contents) => {
                let malformed = || IdentityError::MalformedKeyFile {
                    path: path.display().to_string(),
                };
                Self::from_key_file(&contents).ok_or_else(malformed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::try_generate()?;
                let hex: String = key
                    .secret_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(path)?;
                writeln!(file, "{hex}")?;
                file.sync_all()?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The 32 bytes written as exactly 64 hex digits, or `None`.
fn parse_hex_secret(digits: &[u8]) -> Option<[u8; 32]> {
    if digits.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut secret = [0u8; 32];
    for (byte, pair) in secret.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(secret)
}

/// A map keyed by [`PeerId`] for the send path, where SipHash over 32 bytes was about 5 % of the
/// cost of a small message.
pub(crate) type PeerMap<V> = std::collections::HashMap<PeerId, V, PeerHashing>;

/// Builds [`PeerHasher`]s with one random key per map. A `PeerId` is a public key, already
/// uniformly distributed, so a few multiply-rotate rounds spread it well; the random key keeps
/// an attacker who grinds keys from aiming at one bucket (and the maps are bounded by the
/// connection limits anyway).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerHashing {
    key: u64,
}

impl Default for PeerHashing {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Self {
            key: std::hash::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl std::hash::BuildHasher for PeerHashing {
    type Hasher = PeerHasher;
    fn build_hasher(&self) -> PeerHasher {
        PeerHasher { state: self.key }
    }
}

/// See [`PeerHashing`].
#[derive(Debug)]
pub(crate) struct PeerHasher {
    state: u64,
}

impl std::hash::Hasher for PeerHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = (self.state ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29);
        }
    }

    // The only length hashed is a PeerId's, always 32: nothing to mix in.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.state ^ (self.state >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_of_any_bytes_is_read_or_refused_never_a_panic() {
        let dir = std::env::temp_dir().join(format!("peerwire-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("odd.key");
        // 64 bytes whose 2-byte slices fall inside multi-byte characters.
        let tricky = format!("a{}a", "é".repeat(31));
        assert_eq!(tricky.len(), 64);
        let cases: Vec<Vec<u8>> = vec![
            tricky.into_bytes(),
            vec![0xff; 64],
            b"zz".repeat(32),
            b"+1".repeat(32),
            b"00".repeat(31),
            Vec::new(),
        ];
        for contents in cases {
            std::fs::write(&path, &contents).unwrap();
            assert!(
                matches!(
                    Keypair::load_or_create(&path),
                    Err(IdentityError::MalformedKeyFile { .. })
                ),
                "{contents:?}"
            );
        }
        let key = Keypair::generate();
        let hex: String = key
            .secret_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        std::fs::write(&path, format!("  {hex}\n")).unwrap();
        assert_eq!(
            Keypair::load_or_create(&path).unwrap().peer_id(),
            key.peer_id(),
            "upper-case hex and surrounding whitespace are accepted"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn verification_is_strict_a_small_order_key_cannot_sign_everything() {
        use ed25519_dalek::Verifier;
        // The identity point as a public key, and the signature (R = identity, s = 0): it
        // satisfies the plain verification equation for every message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut signature = [0u8; 64];
        signature[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).unwrap();
        let dalek_signature = ed25519_dalek::Signature::from_bytes(&signature);
        assert!(
            key.verify(b"any message", &dalek_signature).is_ok(),
            "the plain check accepts it, so this input tells strict from plain"
        );
        let peer = PeerId::from_bytes(identity);
        assert!(matches!(
            peer.verify(b"any message", &signature),
            Err(IdentityError::BadSignature)
        ));
    }

    #[test]
    fn peer_hashing_is_stable_per_map_keyed_per_map_and_spreads_ids() {
        use std::hash::BuildHasher;
        let ids: Vec<PeerId> = (0..1024).map(|_| Keypair::generate().peer_id()).collect();
        let (one, two) = (PeerHashing::default(), PeerHashing::default());
        assert_eq!(one.hash_one(ids[0]), one.hash_one(ids[0]));
        assert_ne!(
            one.hash_one(ids[0]),
            two.hash_one(ids[0]),
            "a random key per map"
        );
        // The low bits pick the bucket: 1024 ids over 16 buckets, 64 expected in each (a bucket
        // outside 16..=192 has a probability far below 1e-9 for a uniform hash).
        let mut buckets = [0u32; 16];
        for id in &ids {
            buckets[(one.hash_one(id) & 15) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (16..=192).contains(&n)),
            "{buckets:?}"
        );
        let mut map: PeerMap<usize> = PeerMap::default();
        for (i, id) in ids.iter().enumerate() {
            map.insert(*id, i);
        }
        assert!(ids.iter().enumerate().all(|(i, id)| map[id] == i));
    }

    #[test]
    fn peer_id_text_round_trips_and_rejects_garbage() {
        let id = Keypair::generate().peer_id();
        assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
        assert!("not-base58-0OIl".parse::<PeerId>().is_err());
        // Valid base58 but the wrong length.
        assert!("3mJr7AoUXx2Wqd".parse::<PeerId>().is_err());
    }

    #[test]
    fn signature_verifies_only_for_its_key_and_message() {
        let a = Keypair::generate();
        let b = Keypair::generate();
        let sig = a.sign(b"hello");
        assert!(a.peer_id().verify(b"hello", &sig).is_ok());
        assert!(a.peer_id().verify(b"hellO", &sig).is_err());
        assert!(b.peer_id().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("peerwire-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let first = Keypair::load_or_create(&path).unwrap();
        let second = Keypair::load_or_create(&path).unwrap();
        assert_eq!(first.peer_id(), second.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            Keypair::load_or_create(&path),
            Err(IdentityError::MalformedKeyFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
