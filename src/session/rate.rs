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

    /// Takes up to `want` whole tokens; returns how many it took (0 when spent).
    pub(crate) fn take_up_to(&mut self, want: u64, now: Instant) -> u64 {
        if self.rate == 0 {
            return want;
        }
        if now > self.last {
            self.refill(now);
        }
        let taken = (self.scaled / SCALE).min(u128::from(want));
        self.scaled -= taken * SCALE;
        u64::try_from(taken).unwrap_or(0)
    }
}

/// Messages a connection takes from its address's [`IpBudget`] at once: one lock per this
/// many messages, not per message. A connection may hold that many tokens unused.
pub(crate) const IP_CHUNK: u64 = 256;

/// One address's inbound message budget, shared by every connection from it, so many
/// connections, each under its own limit, cannot flood together. Connections take tokens in
/// chunks of [`IP_CHUNK`].
#[derive(Debug)]
pub(crate) struct IpBudget {
    bucket: parking_lot::Mutex<TokenBucket>,
}

impl IpBudget {
    /// `rate` messages per second from one address, burst one second's worth; 0 is unlimited.
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        Self {
            bucket: parking_lot::Mutex::new(TokenBucket::new(rate, rate, now)),
        }
    }

    /// Takes up to `want` tokens; returns how many were granted (0 when spent).
    pub(crate) fn take_up_to(&self, want: u64, now: Instant) -> u64 {
        self.bucket.lock().take_up_to(want, now)
    }
}

/// A connection's draw on its address's [`IpBudget`].
#[derive(Debug)]
pub(crate) struct IpAllowance {
    budget: std::sync::Arc<IpBudget>,
    left: u64,
}

impl IpAllowance {
    pub(crate) fn new(budget: std::sync::Arc<IpBudget>) -> Self {
        Self { budget, left: 0 }
    }

    /// Takes one message's token, drawing a new chunk when the last is spent.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if self.left == 0 {
            self.left = self.budget.take_up_to(IP_CHUNK, now);
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_of_one_address_share_its_budget_in_chunks() {
        let t0 = Instant::now();
        let budget = std::sync::Arc::new(IpBudget::new(1000, t0));
        let mut conns: Vec<IpAllowance> =
            (0..8).map(|_| IpAllowance::new(budget.clone())).collect();
        // Eight connections take turns: together they get the address's 1000, not 8 × 1000.
        let mut taken = 0;
        for _ in 0..1000 {
            for c in &mut conns {
                taken += usize::from(c.try_take(t0));
            }
        }
        assert_eq!(taken, 1000);
        // A second later the address has 1000 more, shared the same way (each connection
        // tries long enough to spend the chunks it drew).
        let t1 = t0 + Duration::from_secs(1);
        let more: usize = (0..8 * 300)
            .map(|i| usize::from(conns[i % 8].try_take(t1)))
            .sum();
        assert_eq!(more, 1000);
        // Unlimited: always granted.
        let mut free = IpAllowance::new(std::sync::Arc::new(IpBudget::new(0, t0)));
        assert!((0..10_000).all(|_| free.try_take(t0)));
    }

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
