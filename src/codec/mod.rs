//! The wire codec: pure types that turn messages into sealed frames and back, with no sockets,
//! tasks or clocks, so every rule is tested directly.
//!
//! **Internal.** Public so the fuzz targets (`fuzz/`) and the wire-level tests can drive it,
//! not as part of the supported API: an application uses [`crate::Network`] and never needs
//! it. Its types may change between releases without notice. The errors an application can
//! meet are [`CodecError`] (inside [`crate::SendError::Codec`]) and [`Violation`] (what a
//! peer was charged for).
//!
//! Layers, outermost first:
//! 1. [`frame`]: `[u32 BE length][AES-256-GCM ciphertext][tag]`, length checked before buffering.
//! 2. [`record`]: records inside a frame's plaintext (whole messages, fragments of large ones,
//!    control messages).
//! 3. Message bodies: application messages and [`ControlMessage`]s are serialized with postcard
//!    (a stable, documented, serde-based format). The choice of postcard lives only in this file.

pub mod cipher;
mod error;
pub mod frame;
pub mod record;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use error::{CodecError, Violation};

/// Why a peer closed a connection, sent in a [`ControlMessage::Goodbye`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GoodbyeReason {
    /// The node is shutting down.
    Shutdown,
    /// The local application asked to disconnect this peer.
    Requested,
    /// Another connection to the same peer won the duplicate tie-break.
    Duplicate,
    /// The peer spent its misbehaviour budget.
    Misbehaviour,
    /// The node is at its connection limit for peers like this one.
    Capacity,
    /// The peer is banned.
    Banned,
}

/// Peer-to-peer control messages: handled by the network itself, never delivered to the
/// application, and queued ahead of data on the send side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ControlMessage {
    /// The sender is closing the connection and says why. Everything it sent before arrives first.
    Goodbye {
        /// Why.
        reason: GoodbyeReason,
    },
    /// Liveness probe; answered with a [`ControlMessage::Pong`] carrying the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to a [`ControlMessage::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The application messages on `channel` that follow on this connection are numbered from
    /// `first_seq` in the sender's reliable stream `incarnation` for that channel.
    Resume {
        /// The channel whose stream this numbers.
        channel: u16,
        /// Identifies the sending process, so a restart starts a new stream.
        incarnation: u64,
        /// Sequence number of the next application message.
        first_seq: u64,
    },
    /// Everything before `next` of the reliable stream on `channel` was delivered to the
    /// application.
    Ack {
        /// The channel.
        channel: u16,
        /// The next sequence number the receiver expects.
        next: u64,
    },
    /// The receiver dropped messages on `channel` from `from` on (that channel's inbox was
    /// full): resend from there.
    Rewind {
        /// The channel.
        channel: u16,
        /// First sequence number to resend.
        from: u64,
    },
    /// The sender has admitted this connection: its application now sees us as connected.
    /// The first record each side sends after admission; the dialer's `connect` returns on it.
    Welcome,
}

/// Serializes an application message, refusing one larger than `max` bytes.
///
/// # Errors
/// [`CodecError::Encode`] when serialization fails, [`CodecError::MessageTooLarge`] when too big.
pub fn encode_message<M: Serialize + ?Sized>(message: &M, max: usize) -> Result<Bytes, CodecError> {
    // Measure first: an oversize message is refused before any allocation, and the buffer is
    // allocated once at its exact size instead of growing by doubling (copying) as it fills.
    let len = postcard::experimental::serialized_size(message).map_err(encode_error)?;
    encode_exact(message, len, max)
}

fn encode_error(e: postcard::Error) -> CodecError {
    CodecError::Encode(e.to_string())
}

/// [`encode_message`] once the size `len` is known.
fn encode_exact<M: Serialize + ?Sized>(
    message: &M,
    len: usize,
    max: usize,
) -> Result<Bytes, CodecError> {
    if len > max {
        return Err(CodecError::MessageTooLarge { len, max });
    }
    let bytes = postcard::to_extend(message, Vec::with_capacity(len)).map_err(encode_error)?;
    Ok(Bytes::from(bytes))
}

/// Sent messages up to this size are serialized into a buffer shared with the messages encoded
/// before them on the same thread ([`encode_body`]), so a small message costs no allocation of
/// its own: a 36-byte vote allocated once per message here (twice to a persistent peer, whose
/// stream keeps a clone), `tests/allocations.rs`. Larger ones get an exact-size buffer: one
/// allocation is nothing beside their copies, and they never hold a shared buffer alive.
pub const POOLED_MAX: usize = 512;

/// The size of each shared encoding buffer. A small message that is kept keeps its buffer
/// allocated until it is let go: at most this much per message still held (each held message
/// the last alive in its buffer). So the buffer is small, and what keeps messages for long does
/// not keep these: an offline persistent peer's stream copies them out
/// (`driver::stream::Reliable`), and `Encoded<T>` and gossip's publications are encoded with
/// [`encode_body_kept`]. A send lane or an inbox holds at most its message bound of them.
pub const POOL_CHUNK: usize = 8 * 1024;

thread_local! {
    /// This thread's encoding buffer: the unused rest of its current chunk.
    static POOL: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// [`encode_message`] into this thread's shared buffer, for a message of `len` bytes
/// (`len <= POOLED_MAX`); `None` when the caller must allocate instead: the buffer is in use (a
/// `Serialize` implementation that sends a message itself), the thread is ending (its
/// thread-locals are gone), or the message wrote more than it measured (a value that changed
/// between the two passes; the exact-size path grows as needed).
fn encode_pooled<M: Serialize + ?Sized>(
    message: &M,
    len: usize,
) -> Option<Result<Bytes, CodecError>> {
    POOL.try_with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        if pool.capacity() < len {
            // The old chunk is freed once the last message cut from it is dropped.
            *pool = bytes::BytesMut::with_capacity(POOL_CHUNK);
        }
        // Sets the length whatever a failed attempt left: the body is written from the start.
        pool.resize(len, 0);
        let written = match postcard::to_slice(message, &mut pool[..]) {
            Ok(written) => written.len(),
            Err(postcard::Error::SerializeBufferFull) => return None,
            Err(e) => return Some(Err(encode_error(e))),
        };
        pool.truncate(written);
        Some(Ok(pool.split().freeze()))
    })
    .ok()
    .flatten()
}

/// Deserializes an application message; trailing bytes are an error, so one encoding has exactly
/// one meaning.
///
/// # Errors
/// [`Violation::Undecodable`] when the bytes are not exactly one `M`.
pub fn decode_message<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, Violation> {
    match postcard::take_from_bytes::<M>(bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(Violation::Undecodable(format!(
            "{} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(Violation::Undecodable(e.to_string())),
    }
}

/// Whether `M` is [`Bytes`], whose messages go on the wire as themselves: the record body is
/// the bytes, with no serializer framing, and the receiver gets them without a copy.
pub fn is_raw<M: 'static>() -> bool {
    std::any::TypeId::of::<M>() == std::any::TypeId::of::<Bytes>()
}

/// Encodes a message body: a [`Bytes`] message is its own body (a reference-counted clone, no
/// copy); any other type is serialized with [`encode_message`], or, up to [`POOLED_MAX`] bytes,
/// into a buffer shared with other small messages (no allocation per message).
///
/// # Errors
/// As [`encode_message`]; [`CodecError::MessageTooLarge`] for raw bytes longer than `max`.
pub fn encode_body<M: Serialize + 'static>(message: &M, max: usize) -> Result<Bytes, CodecError> {
    if let Some(raw) = raw_body(message, max) {
        return raw;
    }
    let len = postcard::experimental::serialized_size(message).map_err(encode_error)?;
    if len <= POOLED_MAX.min(max) {
        if let Some(encoded) = encode_pooled(message, len) {
            return encoded;
        }
    }
    encode_exact(message, len, max)
}

/// A [`Bytes`] message is its own body: a reference-counted clone, no copy (`None` for any
/// other type; the test is resolved at compile time per type, so it costs nothing either way).
fn raw_body<M: 'static>(message: &M, max: usize) -> Option<Result<Bytes, CodecError>> {
    let raw = (message as &dyn std::any::Any).downcast_ref::<Bytes>()?;
    Some(if raw.len() > max {
        Err(CodecError::MessageTooLarge {
            len: raw.len(),
            max,
        })
    } else {
        Ok(raw.clone())
    })
}

/// [`encode_body`] for a body that may be kept for long (an [`crate::Encoded`], a gossip
/// publication): never cut from the shared buffer, so it keeps no other message's buffer alive.
///
/// # Errors
/// As [`encode_body`].
pub fn encode_body_kept<M: Serialize + 'static>(
    message: &M,
    max: usize,
) -> Result<Bytes, CodecError> {
    if let Some(raw) = raw_body(message, max) {
        return raw;
    }
    encode_message(message, max)
}

/// Decodes a message body, the inverse of [`encode_body`]: for [`Bytes`] the body itself (any
/// bytes are a valid message), for any other type [`decode_message`].
///
/// # Errors
/// As [`decode_message`].
pub fn decode_body<M: DeserializeOwned + 'static>(body: Bytes) -> Result<M, Violation> {
    let mut raw: Option<M> = None;
    if let Some(slot) = (&mut raw as &mut dyn std::any::Any).downcast_mut::<Option<Bytes>>() {
        *slot = Some(body);
        return raw.ok_or_else(|| Violation::Undecodable("raw body lost".into()));
    }
    decode_message(&body)
}

/// Serializes a control message.
pub fn encode_control(message: &ControlMessage) -> Bytes {
    // Control messages are plain enums of integers; serializing them into a Vec cannot fail.
    Bytes::from(postcard::to_allocvec(message).unwrap_or_default())
}

/// Deserializes a control message.
///
/// # Errors
/// [`Violation::BadControl`] when the bytes are not exactly one control message.
pub fn decode_control(bytes: &[u8]) -> Result<ControlMessage, Violation> {
    match postcard::take_from_bytes::<ControlMessage>(bytes) {
        Ok((message, [])) => Ok(message),
        _ => Err(Violation::BadControl),
    }
}

#[cfg(test)]
mod tests;
