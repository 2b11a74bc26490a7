//! A token bucket for the per-peer inbound rate limit, in integer arithmetic with the time
//! passed in, so it is exact and tested without a clock.

use std::time::Instant;

/// Refills at `rate` tokens per second up to `burst` tokens.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens scaled by 1e9 (token-nanoseconds), so refills of less than one token accumulate.
    scaled: u128,
    last: Instant,
}

const SCALE: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket; `rate` 0 means unlimited.
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate,
            burst: burst.max(1),
            scaled: u128::from(burst.max(1)) * SCALE,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        let cap = u128::from(self.burst) * SCALE;
        self.scaled = (self.scaled + elapsed * u128::from(self.rate)).min(cap);
    }

    /// Takes `n` tokens if available.
    pub(crate) fn try_take(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        // Every message of a frame is judged at the same instant: refill once, not per message
        // (the 128-bit arithmetic was a measurable share of a small message's cost).
        if now > self.last {
            self.refill(now);
        }
        let need = u128::from(n) * SCALE;
        if self.scaled >= need {
            self.scaled -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.try_take(1, t0)).count(), 5);
        // 0.35 s later: 3.5 tokens have accrued.
        let t1 = t0 + Duration::from_millis(350);
        assert_eq!((0..8).filter(|_| b.try_take(1, t1)).count(), 3);
        // The half token carries over.
        let t2 = t1 + Duration::from_millis(50);
        assert!(b.try_take(1, t2));
        assert!(!b.try_take(1, t2));
        // Never more than the burst, however long the pause.
        let t3 = t2 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.try_take(1, t3)).count(), 5);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 1, t0);
        assert!((0..10_000).all(|_| b.try_take(1_000_000, t0)));
    }
}
