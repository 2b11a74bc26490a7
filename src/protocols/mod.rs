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
        tracing::debug!(%peer, points, why, protocol, "charge");
        if self.add(peer, points, budget) {
            tracing::warn!(%peer, why, protocol, "banned: broke the protocol too often");
            face.ban(peer);
        }
    }

    /// Adds `points` to `peer`'s score; true once, when the score reaches `budget` (at least 1).
    fn add(&mut self, peer: crate::identity::PeerId, points: u32, budget: u32) -> bool {
        let budget = budget.max(1);
        let score = self.0.entry(peer).or_default();
        let before = *score;
        *score = score.saturating_add(points);
        before < budget && *score >= budget
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerId;

    #[test]
    fn a_peer_is_banned_once_when_its_points_reach_the_budget_and_starts_again_after_leaving() {
        let mut scores = Scores::default();
        let (p, q) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
        assert!(!scores.add(p, 9, 10));
        assert!(!scores.add(q, 9, 10), "each peer has its own score");
        assert!(scores.add(p, 1, 10), "exactly the budget bans");
        assert!(!scores.add(p, 5, 10), "banned once");
        assert!(
            !scores.add(p, u32::MAX, 10),
            "the score saturates, never wraps"
        );
        scores.forget(&p);
        assert!(!scores.add(p, 9, 10), "a peer that left starts from zero");
        assert!(scores.add(p, 1, 10));
        let r = PeerId::from_bytes([3; 32]);
        assert!(!scores.add(r, 0, 0), "no points, no ban");
        assert!(scores.add(r, 1, 0), "a budget of 0 is 1");
    }
}
