//! Transport AEAD for one direction of an established session: [`Sealer`] and [`Opener`].
//!
//! The keys come from the Noise handshake's split. Each frame uses a fresh 96-bit nonce made of
//! four zero bytes and a 64-bit big-endian counter, so frames cannot be replayed, dropped or
//! reordered without the next `open` failing. The AEAD is AES-256-GCM (chosen by measurement:
//! see BENCHMARKS.md, "cipher").

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use super::CodecError;

/// Bytes of authentication tag appended to every frame.
pub const TAG_LEN: usize = 16;

/// The AEAD algorithm used for transport frames.
pub(crate) static TRANSPORT_AEAD: &ring::aead::Algorithm = &AES_256_GCM;

fn nonce_for(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn key_from(bytes: &[u8; 32]) -> LessSafeKey {
    // AES-256 takes exactly 32 bytes, so construction cannot fail for this input length; the
    // fallback branch is unreachable but avoids a panic path.
    match UnboundKey::new(TRANSPORT_AEAD, bytes) {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable_key(),
    }
}

#[cold]
fn unreachable_key() -> LessSafeKey {
    // A zero-length key is rejected by ring, so this is never reached for 32-byte input.
    unreachable!("AES-256-GCM accepts 32-byte keys")
}

/// Encrypts outgoing frames of one direction.
pub struct Sealer {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("counter", &self.counter)
            .finish()
    }
}

impl Sealer {
    /// A sealer for the given 32-byte session key, starting at nonce 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: key_from(key),
            counter: 0,
        }
    }

    /// Encrypts `plaintext` in place, authenticating `aad` too, and returns the tag.
    ///
    /// # Errors
    /// [`CodecError::NonceExhausted`] after 2^64 - 1 frames.
    pub fn seal(&mut self, aad: &[u8], plaintext: &mut [u8]) -> Result<[u8; TAG_LEN], CodecError> {
        if self.counter == u64::MAX {
            return Err(CodecError::NonceExhausted);
        }
        let nonce = nonce_for(self.counter);
        self.counter += 1;
        let tag: Tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), plaintext)
            .map_err(|_| CodecError::Authentication)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

/// Decrypts incoming frames of one direction.
pub struct Opener {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("counter", &self.counter)
            .finish()
    }
}

impl Opener {
    /// An opener for the given 32-byte session key, expecting nonce 0 first.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: key_from(key),
            counter: 0,
        }
    }

    /// Decrypts `ciphertext_and_tag` in place and returns the length of the plaintext prefix.
    ///
    /// # Errors
    /// [`CodecError::Authentication`] when the frame is forged, corrupted or out of order.
    pub fn open(&mut self, aad: &[u8], ciphertext_and_tag: &mut [u8]) -> Result<usize, CodecError> {
        if self.counter == u64::MAX {
            return Err(CodecError::NonceExhausted);
        }
        let nonce = nonce_for(self.counter);
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(aad), ciphertext_and_tag)
            .map_err(|_| CodecError::Authentication)?;
        self.counter += 1;
        Ok(plaintext.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let key = [7u8; 32];
        let mut sealer = Sealer::new(&key);
        let mut opener = Opener::new(&key);
        for round in 0..3u8 {
            let mut buf = vec![round; 100];
            let tag = sealer.seal(b"hdr", &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            let mut tampered = buf.clone();
            tampered[5] ^= 1;
            // A tampered frame fails and does not advance the expected nonce: the same opener
            // then opens the genuine frame.
            assert_eq!(
                opener.open(b"hdr", &mut tampered),
                Err(CodecError::Authentication)
            );
            let n = opener.open(b"hdr", &mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![round; 100][..]);
        }
    }

    #[test]
    fn debug_shows_the_counter_and_never_the_key() {
        let key = [0xabu8; 32];
        let mut sealer = Sealer::new(&key);
        let mut buf = vec![1u8; 8];
        sealer.seal(b"", &mut buf).unwrap();
        let texts = [format!("{sealer:?}"), format!("{:?}", Opener::new(&key))];
        assert_eq!(texts[0], "Sealer { counter: 1 }");
        assert_eq!(texts[1], "Opener { counter: 0 }");
        for text in texts {
            assert!(!text.contains("ab, ab") && !text.contains("abab"), "{text}");
        }
    }

    #[test]
    fn replayed_frame_fails() {
        let key = [9u8; 32];
        let mut sealer = Sealer::new(&key);
        let mut opener = Opener::new(&key);
        let mut buf = b"vote".to_vec();
        let tag = sealer.seal(b"", &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        let mut replay = buf.clone();
        opener.open(b"", &mut buf).unwrap();
        assert_eq!(
            opener.open(b"", &mut replay),
            Err(CodecError::Authentication)
        );
    }
}
