//! Errors of the wire codec. Frame errors are fatal to a connection (the byte stream can no longer
//! be trusted); record-level problems are [`Violation`]s that cost the peer budget but keep it open.

/// A fatal error of the encrypted frame layer: the connection must close.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame header announced more bytes than the frame limit. Checked before any allocation.
    #[error("frame of {len} bytes exceeds limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A frame too short to even hold an authentication tag.
    #[error("frame of {len} bytes is shorter than the {min}-byte tag")]
    FrameTooShort {
        /// Announced length.
        len: usize,
        /// Minimum length (the tag).
        min: usize,
    },
    /// The frame failed AEAD authentication: corrupted, forged, replayed or reordered.
    #[error("frame failed authentication")]
    Authentication,
    /// The 64-bit nonce counter is exhausted; the session must be re-established.
    #[error("nonce counter exhausted")]
    NonceExhausted,
    /// A message handed to the encoder is larger than the configured maximum.
    #[error("message of {len} bytes exceeds limit of {max}")]
    MessageTooLarge {
        /// Encoded length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Serializing a value failed (a `Serialize` impl returned an error).
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// A peer broke the record rules inside an authenticated frame. The frame boundary is intact, so
/// the stream stays usable; the offence is counted against the peer's misbehaviour budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A message announced a total size above `max_message_size`; its bytes are skipped unread.
    #[error("message of {len} bytes exceeds limit of {max}")]
    Oversize {
        /// Announced size.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A message arrived whole but its bytes do not decode as the application type.
    #[error("message does not decode: {0}")]
    Undecodable(String),
    /// A control record does not decode.
    #[error("control message does not decode")]
    BadControl,
    /// A record header runs past the end of its frame, or a fragment overruns its message.
    #[error("malformed record")]
    MalformedRecord,
    /// An unknown record kind.
    #[error("unknown record kind {0:#04x}")]
    UnknownKind(u8),
    /// A continuation fragment with no message in progress, or a new message while one is open.
    #[error("fragment out of sequence")]
    FragmentOutOfSequence,
    /// A message beyond the peer's inbound rate limit (dropped, not decoded).
    #[error("inbound rate limit exceeded")]
    RateLimited,
    /// A data record on a channel this node did not declare.
    #[error("message on undeclared channel {0}")]
    UnknownChannel(u16),
    /// Control messages beyond the connection's control rate (all control records, or pings
    /// alone); ignored, not answered.
    #[error("control rate limit exceeded")]
    ControlRateLimited,
    /// A resend request while an earlier one on the same channel is still deferred (an honest
    /// peer waits for the resume marker before asking again).
    #[error("resend requested again before the last one was answered")]
    ExcessRewind,
    /// A sequence number so large that counting on would wrap (no honest stream gets there).
    #[error("sequence number would wrap")]
    SequenceOverflow,
    /// A fragment of a large message that would take the node's reassembly memory past
    /// `max_reassembly_bytes`; the rest of that message is skipped unread.
    #[error("node-wide reassembly budget spent")]
    ReassemblyBudget,
    /// Messages dropped because the sender's address held its share of a full inbox (charged
    /// once per many drops, see `session::inbound`).
    #[error("over its share of the inbox")]
    InboxShare,
}

impl Violation {
    /// How many points of the misbehaviour budget this offence costs.
    pub fn cost(&self) -> u32 {
        match self {
            Self::RateLimited => 1,
            Self::Undecodable(_) | Self::BadControl => 10,
            Self::Oversize { .. } => 20,
            Self::MalformedRecord | Self::UnknownKind(_) | Self::FragmentOutOfSequence => 25,
            // A peer configured with a channel we lack is more likely a rollout than an attack:
            // charged lightly (every record, fragments included), so it cannot flood us with
            // undeliverable bytes for ever, yet a few stray messages do not cost it the link.
            Self::UnknownChannel(_) => 1,
            Self::ControlRateLimited | Self::ExcessRewind => 1,
            Self::SequenceOverflow => 25,
            // Honest peers meet it too when many send large messages at once: charged lightly,
            // so only a peer that keeps starting messages it cannot finish is cut.
            Self::ReassemblyBudget => 2,
            Self::InboxShare => 1,
        }
    }

    /// A short stable label, used as a metrics key.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oversize { .. } => "oversize",
            Self::Undecodable(_) => "undecodable",
            Self::BadControl => "bad_control",
            Self::MalformedRecord => "malformed_record",
            Self::UnknownKind(_) => "unknown_kind",
            Self::FragmentOutOfSequence => "fragment_out_of_sequence",
            Self::UnknownChannel(_) => "unknown_channel",
            Self::RateLimited => "rate_limited",
            Self::ControlRateLimited => "control_rate_limited",
            Self::ExcessRewind => "excess_rewind",
            Self::SequenceOverflow => "sequence_overflow",
            Self::ReassemblyBudget => "reassembly_budget",
            Self::InboxShare => "inbox_share",
        }
    }
}
