//! Protocols on top of the network's face: request/response ([`rpc`]) has landed; topic
//! gossip, discovery and swarm distribution will follow the same contract.
//!
//! # The contract
//! - A protocol is a pure state machine plus at most one task. The state machine takes the
//!   messages of its channel, events and `now`, and returns messages to send and decisions; it
//!   is unit-tested with a hand-moved clock and can be run by the hundreds in one deterministic
//!   simulation. The task only moves messages between the state machine and the network.
//! - It talks to peers only through a `Channel` of its own, on an id from the reserved
//!   range `RESERVED_CHANNELS`, declared with a `ChannelSpec` that bounds its
//!   queues and inbox. It never reaches into the driver.
//! - Everything it keeps (pending requests, seen caches, address books) is bounded, with a
//!   stated policy and a counter when full; everything it receives is hostile.
pub mod discovery;
pub mod gossip;
pub mod registry;
pub mod rpc;

/// Sleeps until `deadline`, or forever without one: the timer branch of a protocol task's
/// `select!`, armed with its core's next deadline.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
