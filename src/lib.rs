//! peerwire: placeholder
#![forbid(unsafe_code)]
pub mod codec;
pub mod handshake;
pub mod identity;
pub use identity::{Keypair, PeerId};
