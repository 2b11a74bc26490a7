//! Stalls charged per IP address: a peer that completes the handshake and then stops reading
//! (or, as a persistent peer, stops acknowledging) costs the node a connection slot and a
//! `write_timeout` of buffered data. Doing it once is forgiven; doing it `limit` times within
//! `window` from one IP gets that IP (and the identity) banned, so fresh identities cannot be
//! used to stall a node at will. Pure: `now` is passed in, the map is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most IPs tracked; when full, records older than the window go first, then new IPs are not
/// tracked until room appears (they are still cut after `write_timeout` every time).
pub(crate) const MAX_TRACKED: usize = 4096;

#[derive(Debug)]
pub(crate) struct Stalls {
    limit: u32,
    window: Duration,
    /// Per IP: stalls counted in the current window, and when that window began.
    seen: HashMap<IpAddr, (u32, Instant)>,
}

impl Stalls {
    /// `limit` 0 disables the charge.
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            seen: HashMap::new(),
        }
    }

    /// Records a stall from `ip`; returns true when `ip` reached the limit (the caller bans it)
    /// and forgets it.
    pub(crate) fn record(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        if !self.seen.contains_key(&ip) && self.seen.len() >= MAX_TRACKED {
            let window = self.window;
            self.seen
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
            if self.seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = self.seen.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
        if entry.0 >= self.limit {
            self.seen.remove(&ip);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_within_the_window_bans_and_old_stalls_are_forgiven() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let mut s = Stalls::new(3, Duration::from_secs(60));
        assert!(!s.record(ip, t0));
        assert!(!s.record(other, t0));
        assert!(!s.record(ip, t0 + Duration::from_secs(10)));
        assert!(
            s.record(ip, t0 + Duration::from_secs(20)),
            "third within a minute"
        );
        // Forgotten after the ban decision; spread-out stalls never add up.
        let mut t = t0 + Duration::from_secs(100);
        for _ in 0..5 {
            assert!(!s.record(other, t));
            t += Duration::from_secs(61);
        }
        assert!(
            !Stalls::new(0, Duration::from_secs(1)).record(ip, t0),
            "disabled"
        );
    }

    #[test]
    fn the_map_is_bounded() {
        let t0 = Instant::now();
        let mut s = Stalls::new(2, Duration::from_secs(60));
        for i in 0..MAX_TRACKED as u32 + 10 {
            s.record(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(s.seen.len() <= MAX_TRACKED);
        // Once the window has passed, stale records make room for new IPs.
        let later = t0 + Duration::from_secs(61);
        assert!(!s.record("10.9.9.9".parse().unwrap(), later));
        assert!(s.seen.len() <= MAX_TRACKED);
    }

    /// A map full of one stall from each of `MAX_TRACKED` IPs at `t0` (limit 2).
    fn full(t0: Instant) -> Stalls {
        let mut s = Stalls::new(2, Duration::from_secs(60));
        for i in 0..MAX_TRACKED as u32 {
            assert!(!s.record(IpAddr::from(i.to_be_bytes()), t0));
        }
        s
    }

    #[test]
    fn a_full_map_still_counts_known_ips_and_frees_records_as_old_as_the_window() {
        let t0 = Instant::now();
        // A tracked IP's second stall is counted, full or not.
        let mut s = full(t0);
        assert!(s.record(
            IpAddr::from(0u32.to_be_bytes()),
            t0 + Duration::from_secs(1)
        ));
        // Records exactly a window old, or older, are over (as a window that long resets a
        // count): they make room, and the new IP's stalls are counted.
        for age in [60, 61] {
            let mut s = full(t0);
            let later = t0 + Duration::from_secs(age);
            let new: IpAddr = "10.9.9.9".parse().unwrap();
            assert!(!s.record(new, later));
            assert!(s.record(new, later), "tracked after {age} s");
        }
        // Records younger than the window are kept: no room for a new IP.
        let mut s = full(t0);
        let new: IpAddr = "10.9.9.9".parse().unwrap();
        let young = t0 + Duration::from_secs(59);
        assert!(!s.record(new, young));
        assert!(!s.record(new, young), "not tracked while full");
    }
}
