//! Handshake errors: each refusal has its own variant so logs and metrics can say why.

use crate::identity::PeerId;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The Noise layer rejected a message (wrong prologue, bad ciphertext, wrong stage).
    #[error("noise protocol error: {0}")]
    Noise(#[from] snow::Error),
    /// A handshake message longer than [`super::MAX_HANDSHAKE_MESSAGE`].
    #[error("handshake message of {len} bytes exceeds limit of {max}")]
    MessageTooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The peer offered a low-order Diffie-Hellman key.
    #[error("peer offered a low-order key")]
    LowOrderKey,
    /// The identity payload does not decode.
    #[error("malformed identity payload")]
    BadPayload,
    /// The identity signature does not verify against the claimed key.
    #[error("identity signature does not verify")]
    BadSignature,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The peer belongs to another network.
    #[error("network id mismatch: ours {ours:?}, theirs {theirs:?}")]
    NetworkMismatch {
        /// Our network id.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The dialed node proved a different identity than expected.
    #[error(
        "expected peer {expected}, but the remote proved {actual} (a wrong id in the \
         configuration, or another node now at that address)"
    )]
    PeerMismatch {
        /// The id we dialed for.
        expected: PeerId,
        /// The id the remote proved.
        actual: PeerId,
    },
    /// The remote is this node itself.
    #[error("connection to self refused")]
    SelfConnection,
    /// A message arrived after the handshake finished.
    #[error("unexpected handshake message")]
    UnexpectedMessage,
    /// Invalid local parameters.
    #[error("invalid handshake parameters: {0}")]
    BadParams(String),
    /// The handshake did not finish within `handshake_timeout`.
    #[error("handshake timed out")]
    Timeout,
    /// The peer closed the connection during the handshake.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// An I/O error during the handshake.
    #[error("handshake I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// Every [`HandshakeError::label`], so a metric can show each reason from the start.
    pub const LABELS: [&'static str; 14] = [
        "noise",
        "message_too_large",
        "low_order_key",
        "bad_payload",
        "bad_signature",
        "version_mismatch",
        "network_mismatch",
        "peer_mismatch",
        "self_connection",
        "unexpected_message",
        "bad_params",
        "timeout",
        "closed",
        "io",
    ];

    /// A short stable name for metrics and logs (one of [`HandshakeError::LABELS`]).
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Noise(_) => "noise",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::LowOrderKey => "low_order_key",
            Self::BadPayload => "bad_payload",
            Self::BadSignature => "bad_signature",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::NetworkMismatch { .. } => "network_mismatch",
            Self::PeerMismatch { .. } => "peer_mismatch",
            Self::SelfConnection => "self_connection",
            Self::UnexpectedMessage => "unexpected_message",
            Self::BadParams(_) => "bad_params",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Io(_) => "io",
        }
    }
}
