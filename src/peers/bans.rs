//! Banned peers and IP addresses with expiry. Pure: callers pass the time. Bounded: at most
//! [`MAX_BANS`] of each kind; when full, the ban that would expire first makes room.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

use crate::identity::PeerId;

/// Most bans kept per kind (peers, IP addresses).
pub(crate) const MAX_BANS: usize = 4096;

#[derive(Debug)]
struct Expiring<K> {
    until: HashMap<K, Instant>,
}

impl<K: Hash + Eq + Copy> Expiring<K> {
    fn new() -> Self {
        Self {
            until: HashMap::new(),
        }
    }

    fn insert(&mut self, key: K, until: Instant, now: Instant) {
        if !self.until.contains_key(&key) && self.until.len() >= MAX_BANS {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= MAX_BANS {
                let soonest = self.until.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
                if let Some(k) = soonest {
                    self.until.remove(&k);
                }
            }
        }
        let entry = self.until.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn active(&self, key: &K, now: Instant) -> bool {
        self.until.get(key).is_some_and(|t| *t > now)
    }

    fn remove(&mut self, key: &K) -> bool {
        self.until.remove(key).is_some()
    }
}

/// The ban list.
#[derive(Debug)]
pub(crate) struct Bans {
    peers: Expiring<PeerId>,
    ips: Expiring<IpAddr>,
}

impl Bans {
    pub(crate) fn new() -> Self {
        Self {
            peers: Expiring::new(),
            ips: Expiring::new(),
        }
    }

    pub(crate) fn ban_peer(&mut self, peer: PeerId, until: Instant, now: Instant) {
        self.peers.insert(peer, until, now);
    }

    pub(crate) fn ban_ip(&mut self, ip: IpAddr, until: Instant, now: Instant) {
        self.ips.insert(ip, until, now);
    }

    pub(crate) fn peer_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers.active(peer, now)
    }

    /// When the peer's ban ends, if it is banned now.
    pub(crate) fn peer_banned_until(&self, peer: &PeerId, now: Instant) -> Option<Instant> {
        self.peers.until.get(peer).copied().filter(|t| *t > now)
    }

    pub(crate) fn ip_banned(&self, ip: &IpAddr, now: Instant) -> bool {
        self.ips.active(ip, now)
    }

    /// Lifts a peer's ban (not its IP's); returns whether there was one.
    pub(crate) fn unban_peer(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(peer)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.peers.until.len(), self.ips.until.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use std::time::Duration;

    #[test]
    fn bans_expire_and_extend() {
        let now = Instant::now();
        let mut bans = Bans::new();
        let p = Keypair::generate().peer_id();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        bans.ban_peer(p, now + Duration::from_secs(10), now);
        bans.ban_ip(ip, now + Duration::from_secs(5), now);
        assert!(bans.peer_banned(&p, now + Duration::from_secs(9)));
        assert!(!bans.peer_banned(&p, now + Duration::from_secs(10)));
        assert!(bans.ip_banned(&ip, now));
        assert!(!bans.ip_banned(&"10.1.2.4".parse().unwrap(), now));
        // A shorter ban never shortens a longer one.
        bans.ban_peer(p, now + Duration::from_secs(1), now);
        assert!(bans.peer_banned(&p, now + Duration::from_secs(9)));
        assert!(bans.unban_peer(&p));
        assert!(!bans.peer_banned(&p, now));
    }

    #[test]
    fn bounded_evicting_the_soonest_expiry() {
        let now = Instant::now();
        let mut bans = Bans::new();
        let first = Keypair::generate().peer_id();
        bans.ban_peer(first, now + Duration::from_secs(1), now);
        for i in 0..MAX_BANS {
            let id = PeerId::from_bytes([
                (i % 256) as u8,
                (i / 256) as u8,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                12,
                13,
                14,
                15,
                16,
                17,
                18,
                19,
                20,
                21,
                22,
                23,
                24,
                25,
                26,
                27,
                28,
                29,
                30,
            ]);
            bans.ban_peer(id, now + Duration::from_secs(100), now);
        }
        assert_eq!(bans.len().0, MAX_BANS);
        assert!(
            !bans.peer_banned(&first, now),
            "the soonest-expiring ban made room"
        );
    }

    #[test]
    fn a_full_list_drops_only_what_it_must() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut bans = Bans::new();
        let ip = |i: usize| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        // Two bans end exactly now (over: a ban holds while its end is after now), the others
        // last.
        for i in 0..MAX_BANS {
            let until = if i < 2 {
                now
            } else {
                now + Duration::from_secs(100)
            };
            bans.ban_ip(ip(i), until, now);
        }
        assert_eq!(bans.len().1, MAX_BANS);
        // Extending a ban already listed needs no room: nobody is dropped.
        bans.ban_ip(ip(5), now + Duration::from_secs(200), later);
        assert_eq!(bans.len().1, MAX_BANS);
        // A new one when full: every ban already over goes, and no live one.
        bans.ban_ip(ip(MAX_BANS), now + Duration::from_secs(100), now);
        assert_eq!(bans.len().1, MAX_BANS - 1);
        assert!((2..=MAX_BANS).all(|i| bans.ip_banned(&ip(i), now)));
    }
}
