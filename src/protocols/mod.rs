//! Protocols on top of the network's face: request/response ([`rpc`]), topic [`gossip`],
//! [`discovery`] (peer exchange), a [`registry`], and blobs in pieces ([`swarm`]), each on the
//! same contract.
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
pub mod swarm;

/// One protocol's misbehaviour points per connected peer: a peer that reaches the budget is
/// banned for `Config::ban_duration` (once; its points are forgotten when it disconnects).
#[derive(Debug, Default)]
pub(crate) struct Scores(crate::identity::PeerMap<u32>);

impl Scores {
    /// Charges `points` to `peer` for `why`, banning it through `face` when it reaches
    /// `budget`.
    pub(crate) fn charge(
        &mut self,
        face: &crate::network::ProtocolFace,
        (budget, protocol): (u32, &'static str),
        peer: crate::identity::PeerId,
        points: u32,
        why: &'static str,
    ) {
        let budget = budget.max(1);
        let score = self.0.entry(peer).or_default();
        let before = *score;
        *score = score.saturating_add(points);
        tracing::debug!(%peer, points, why, protocol, "charge");
        if before < budget && *score >= budget {
            tracing::warn!(%peer, why, protocol, "banned: broke the protocol too often");
            face.ban(peer);
        }
    }

    /// Forgets a peer that disconnected.
    pub(crate) fn forget(&mut self, peer: &crate::identity::PeerId) {
        self.0.remove(peer);
    }
}

/// Sleeps until `deadline`, or forever without one: the timer branch of a protocol task's
/// `select!`, armed with its core's next deadline.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
