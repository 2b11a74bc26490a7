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

/// A token bucket: `burst` tokens at most, refilled at `rate` per second. The protocols use
/// it to let a peer do something cheap often but not without end (pushes, busy answers, tree
/// messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: u64,
    refilled: std::time::Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens.
    pub(crate) fn full(burst: u64, now: std::time::Instant) -> Self {
        Self {
            tokens: burst,
            refilled: now,
        }
    }

    /// Takes a token if there is one (after refilling for the time since the last refill).
    pub(crate) fn take(&mut self, rate: u64, burst: u64, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let refill = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(rate)
            / 1_000_000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(burst);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
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
    use super::Bucket;
    use std::time::{Duration, Instant};

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate_and_never_more_than_its_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::full(3, t0);
        let taken = (0..10).filter(|_| bucket.take(10, 3, t0)).count();
        assert_eq!(taken, 3, "the burst");
        // 10 per second: one token per 100 ms.
        assert!(!bucket.take(10, 3, t0 + Duration::from_millis(99)));
        assert!(bucket.take(10, 3, t0 + Duration::from_millis(100)));
        assert!(!bucket.take(10, 3, t0 + Duration::from_millis(100)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        let taken = (0..10).filter(|_| bucket.take(10, 3, later)).count();
        assert_eq!(taken, 3);
    }
}
