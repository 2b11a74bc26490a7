//! Redial delays for persistent peers: capped exponential backoff with jitter, as a pure
//! function of the attempt number and a random sample, so it is tested without a clock.
//!
//! Attempt `n` (counting from 0 for the first retry) waits `min(cap, base * 2^n)` plus a jitter
//! drawn uniformly from `[0, jitter_fraction × that delay)`. Jitter keeps a validator set that
//! lost a link at the same moment from redialing in lockstep. The cap is seconds, so a validator
//! that comes back is reconnected within about `cap`, however long it was away; there is no
//! give-up.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Largest delay before jitter.
    pub cap: Duration,
    /// Jitter as a fraction of the delay, in per mille (0..=1000).
    pub jitter_permille: u32,
}

impl Default for Backoff {
    /// 200 ms, doubling, capped at 5 s, plus up to 20% jitter.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            jitter_permille: 200,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt`, with `random` a uniform sample from the full
    /// `u64` range supplying the jitter.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let doubled = self
            .base
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap);
        let delay = doubled.min(self.cap);
        let jitter_span = delay.as_nanos() * u128::from(self.jitter_permille.min(1000)) / 1000;
        let jitter = if jitter_span == 0 {
            0
        } else {
            u128::from(random) % jitter_span
        };
        delay + Duration::from_nanos(u64::try_from(jitter).unwrap_or(u64::MAX))
    }
}

/// A random `u64` for jitter; falls back to a clock-derived value if the OS has no randomness.
pub(crate) fn jitter_sample() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return u64::from(nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            jitter_permille: 0,
        };
        let delays: Vec<u128> = (0..8).map(|n| b.delay(n, 12345).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        // Huge attempt counts never overflow and stay at the cap.
        assert_eq!(b.delay(u32::MAX, 0), Duration::from_secs(2));
        assert_eq!(b.delay(64, u64::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let b = Backoff::default();
        let mut seen = std::collections::HashSet::new();
        for r in [0u64, 1, 7, 1 << 40, u64::MAX, 987_654_321] {
            let d = b.delay(3, r);
            assert!(d >= Duration::from_millis(1600), "{d:?}");
            assert!(d < Duration::from_millis(1600 + 320), "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 1, "jitter must depend on the sample");
        let capped = b.delay(20, u64::MAX);
        assert!(capped <= Duration::from_secs(6));
    }

    #[test]
    fn jitter_samples_are_random_not_constant() {
        // Nodes that lost a link together must not redial in lockstep: eight samples from the
        // OS are all equal with probability 2^-448.
        let samples: std::collections::HashSet<u64> = (0..8).map(|_| jitter_sample()).collect();
        assert!(samples.len() > 1, "{samples:?}");
    }
}
