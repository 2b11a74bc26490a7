//! The address book: where peers can be dialed, learned from peer exchange or from our own
//! dials. Pure: addresses, sources and `now` in; decisions out. Built against the poisoning
//! that peer-to-peer address books suffered (one /24 inserted thousands of times, eclipse
//! through a table refilled by one source):
//! - an entry's place in the *new* table is a keyed hash of the network of whoever told us
//!   and of the address's own network, so one source fills a few buckets at most, and the key
//!   is secret, so it cannot aim at buckets;
//! - at most `max_per_source` entries learned from one source /24, `max_per_24` per address
//!   /24 and `max_per_16` per address /16, whatever the source;
//! - an occupied slot is only taken from an entry that keeps failing;
//! - addresses we reached ourselves move to the *tried* table (placed by their /24), and the
//!   last few become anchors, dialed first after a restart;
//! - selection picks tried or new with even odds, then an entry uniformly: no recency bias,
//!   so a flood of fresh addresses does not push out what worked.
//!
//! Fed by peer exchange (`protocols::discovery`); the durable node state (issue 12) will
//! persist it. Some of its queries serve only the tests so far.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use crate::identity::PeerId;

/// The book's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BookLimits {
    pub(crate) new_buckets: usize,
    pub(crate) tried_buckets: usize,
    pub(crate) bucket_size: usize,
    pub(crate) max_per_source: usize,
    pub(crate) max_per_24: usize,
    pub(crate) max_per_16: usize,
    pub(crate) anchors: usize,
    /// Failed dials after which a new (never reached) entry is forgotten.
    pub(crate) max_failures: u32,
}

impl Default for BookLimits {
    /// 64 new buckets and 16 tried buckets of 32 slots (2,560 entries at most), 10 entries per
    /// source /24, 4 per address /24, 16 per address /16, 4 anchors, 10 failures.
    fn default() -> Self {
        Self {
            new_buckets: 64,
            tried_buckets: 16,
            bucket_size: 32,
            max_per_source: 10,
            max_per_24: 4,
            max_per_16: 16,
            anchors: 4,
            max_failures: 10,
        }
    }
}

/// Why an address was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Already known (its first address stays; a signed, newer record would replace it).
    Known,
    /// This node itself.
    Local,
    /// `max_per_source` entries already came from this source's /24.
    PerSource,
    /// `max_per_24` entries already in this address's /24.
    PerSubnet24,
    /// `max_per_16` entries already in this address's /16.
    PerSubnet16,
    /// Its slot holds an entry that still works.
    SlotTaken,
}

/// A network prefix: /24 (IPv4) or /48 (IPv6), and /16 or /32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Net {
    V4([u8; 3]),
    V6([u8; 6]),
    V4Wide([u8; 2]),
    V6Wide([u8; 4]),
}

fn narrow(ip: IpAddr) -> Net {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Net::V4([o[0], o[1], o[2]])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            Net::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    }
}

fn wide(ip: IpAddr) -> Net {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Net::V4Wide([o[0], o[1]])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            Net::V6Wide([o[0], o[1], o[2], o[3]])
        }
    }
}

fn net_bytes(net: Net) -> Vec<u8> {
    match net {
        Net::V4(b) => [&[4u8][..], &b].concat(),
        Net::V6(b) => [&[6u8][..], &b].concat(),
        Net::V4Wide(b) => [&[44u8][..], &b].concat(),
        Net::V6Wide(b) => [&[66u8][..], &b].concat(),
    }
}

#[derive(Debug, Clone)]
struct Entry {
    addr: SocketAddr,
    /// The /24 of whoever told us (`None`: we learned it ourselves).
    source: Option<Net>,
    tried: bool,
    /// (bucket, slot) in its table.
    place: (usize, usize),
    failures: u32,
}

/// The address book.
#[derive(Debug)]
pub(crate) struct Book {
    limits: BookLimits,
    local: PeerId,
    key: [u8; 32],
    entries: HashMap<PeerId, Entry>,
    new: Vec<Vec<Option<PeerId>>>,
    tried: Vec<Vec<Option<PeerId>>>,
    per_source: HashMap<Net, usize>,
    per_24: HashMap<Net, usize>,
    per_16: HashMap<Net, usize>,
    anchors: VecDeque<PeerId>,
}

impl Book {
    /// An empty book; `key` (secret, random per node) places entries in buckets.
    pub(crate) fn new(local: PeerId, key: [u8; 32], limits: BookLimits) -> Self {
        Self {
            new: vec![vec![None; limits.bucket_size]; limits.new_buckets],
            tried: vec![vec![None; limits.bucket_size]; limits.tried_buckets],
            limits,
            local,
            key,
            entries: HashMap::new(),
            per_source: HashMap::new(),
            per_24: HashMap::new(),
            per_16: HashMap::new(),
            anchors: VecDeque::new(),
        }
    }

    fn hash(&self, parts: &[&[u8]]) -> usize {
        let mut h = Sha256::new();
        h.update(self.key);
        for part in parts {
            h.update((part.len() as u32).to_le_bytes());
            h.update(part);
        }
        let digest = h.finalize();
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(eight) as usize
    }

    fn new_place(&self, id: &PeerId, addr: SocketAddr, source: Option<Net>) -> (usize, usize) {
        let source = source.map_or_else(Vec::new, net_bytes);
        let bucket = self.hash(&[b"new", &source, &net_bytes(wide(addr.ip()))]) % self.new.len();
        let slot = self.hash(&[b"slot", &(bucket as u64).to_le_bytes(), id.as_bytes()])
            % self.limits.bucket_size;
        (bucket, slot)
    }

    /// The first free slot of `bucket` in `table`, from `slot` on (wrapping). Probing the whole
    /// bucket keeps a small network on one subnet (whose entries all share a bucket) from
    /// losing entries to collisions (the loopback discovery test lost a peer's address that
    /// way); a bucket still holds at most its size, and which bucket an entry lands in (by
    /// source and address network) is what bounds an attacker, not the slot.
    fn free_slot(
        &self,
        table: &[Vec<Option<PeerId>>],
        (bucket, slot): (usize, usize),
    ) -> Option<usize> {
        let size = self.limits.bucket_size;
        (0..size)
            .map(|i| (slot + i) % size)
            .find(|s| table[bucket][*s].is_none())
    }

    fn tried_place(&self, id: &PeerId, addr: SocketAddr) -> (usize, usize) {
        let bucket = self.hash(&[b"tried", &net_bytes(narrow(addr.ip()))]) % self.tried.len();
        let slot = self.hash(&[b"slot", &(bucket as u64).to_le_bytes(), id.as_bytes()])
            % self.limits.bucket_size;
        (bucket, slot)
    }

    /// Adds `id` at `addr`, learned from `source` (the address of the peer that told us, over an
    /// authenticated connection; `None` when we learned it ourselves).
    ///
    /// # Errors
    /// [`Refused`]: known, local, over a cap, or its slot holds a working entry.
    pub(crate) fn add(
        &mut self,
        id: PeerId,
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<(), Refused> {
        if id == self.local {
            return Err(Refused::Local);
        }
        if self.entries.contains_key(&id) {
            return Err(Refused::Known);
        }
        let source = source.map(narrow);
        if let Some(s) = source {
            if self.per_source.get(&s).copied().unwrap_or(0) >= self.limits.max_per_source {
                return Err(Refused::PerSource);
            }
        }
        let (n24, n16) = (narrow(addr.ip()), wide(addr.ip()));
        if self.per_24.get(&n24).copied().unwrap_or(0) >= self.limits.max_per_24 {
            return Err(Refused::PerSubnet24);
        }
        if self.per_16.get(&n16).copied().unwrap_or(0) >= self.limits.max_per_16 {
            return Err(Refused::PerSubnet16);
        }
        let (bucket, home) = self.new_place(&id, addr, source);
        let slot = match self.free_slot(&self.new, (bucket, home)) {
            Some(free) => free,
            None => {
                let occupant = self.new[bucket][home];
                let failing = occupant
                    .and_then(|o| self.entries.get(&o))
                    .is_some_and(|e| e.failures >= 3);
                if !failing {
                    return Err(Refused::SlotTaken);
                }
                if let Some(occupant) = occupant {
                    self.remove(&occupant);
                }
                home
            }
        };
        self.new[bucket][slot] = Some(id);
        self.count(addr, source, 1);
        self.entries.insert(
            id,
            Entry {
                addr,
                source,
                tried: false,
                place: (bucket, slot),
                failures: 0,
            },
        );
        Ok(())
    }

    fn count(&mut self, addr: SocketAddr, source: Option<Net>, delta: isize) {
        let bump = |map: &mut HashMap<Net, usize>, key: Net| {
            let n = map.entry(key).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                map.remove(&key);
            }
        };
        bump(&mut self.per_24, narrow(addr.ip()));
        bump(&mut self.per_16, wide(addr.ip()));
        if let Some(s) = source {
            bump(&mut self.per_source, s);
        }
    }

    /// Forgets `id`.
    pub(crate) fn remove(&mut self, id: &PeerId) {
        let Some(entry) = self.entries.remove(id) else {
            return;
        };
        let table = if entry.tried {
            &mut self.tried
        } else {
            &mut self.new
        };
        let (bucket, slot) = entry.place;
        if table[bucket][slot] == Some(*id) {
            table[bucket][slot] = None;
        }
        self.count(entry.addr, entry.source, -1);
        self.anchors.retain(|a| a != id);
    }

    /// We reached `id` (an outbound connection proved it): it moves to the tried table and
    /// becomes the newest anchor. An occupant of its tried slot goes back to new (or is
    /// forgotten if its new slot is taken).
    pub(crate) fn reached(&mut self, id: PeerId, addr: SocketAddr) {
        if !self.entries.contains_key(&id) && self.add(id, addr, None).is_err() {
            return;
        }
        let Some(entry) = self.entries.get(&id).cloned() else {
            return;
        };
        if !entry.tried {
            let (bucket, slot) = entry.place;
            self.new[bucket][slot] = None;
            let home = self.tried_place(&id, entry.addr);
            let place = match self.free_slot(&self.tried, home) {
                Some(free) => (home.0, free),
                None => {
                    if let Some(occupant) = self.tried[home.0][home.1] {
                        self.demote(occupant);
                    }
                    home
                }
            };
            self.tried[place.0][place.1] = Some(id);
            if let Some(e) = self.entries.get_mut(&id) {
                e.tried = true;
                e.place = place;
            }
        }
        if let Some(e) = self.entries.get_mut(&id) {
            e.failures = 0;
        }
        self.anchors.retain(|a| *a != id);
        self.anchors.push_front(id);
        self.anchors.truncate(self.limits.anchors);
    }

    fn demote(&mut self, id: PeerId) {
        let Some(entry) = self.entries.get(&id).cloned() else {
            return;
        };
        let home = self.new_place(&id, entry.addr, entry.source);
        let Some(free) = self.free_slot(&self.new, home) else {
            self.remove(&id);
            return;
        };
        let place = (home.0, free);
        self.new[place.0][place.1] = Some(id);
        if let Some(e) = self.entries.get_mut(&id) {
            e.tried = false;
            e.place = place;
        }
    }

    /// A dial to `id` failed; a new entry that keeps failing is forgotten.
    pub(crate) fn failed(&mut self, id: &PeerId) {
        let forget = match self.entries.get_mut(id) {
            Some(e) => {
                e.failures += 1;
                !e.tried && e.failures >= self.limits.max_failures
            }
            None => false,
        };
        if forget {
            self.remove(id);
        }
    }

    /// An address to dial: tried or new with even odds (`coin`), then uniformly within the
    /// table (`pick`): callers pass random numbers, so the book stays deterministic in tests.
    pub(crate) fn select(&self, coin: u64, pick: u64) -> Option<(PeerId, SocketAddr)> {
        let tried: Vec<&PeerId> = self.tried.iter().flatten().flatten().collect();
        let new: Vec<&PeerId> = self.new.iter().flatten().flatten().collect();
        let table = match (tried.is_empty(), new.is_empty()) {
            (true, true) => return None,
            (false, true) => tried,
            (true, false) => new,
            (false, false) if coin % 2 == 0 => tried,
            (false, false) => new,
        };
        let id = *table[(pick % table.len() as u64) as usize];
        self.entries.get(&id).map(|e| (id, e.addr))
    }

    /// The anchors, newest first: dial these first after a restart.
    pub(crate) fn anchors(&self) -> Vec<(PeerId, SocketAddr)> {
        self.anchors
            .iter()
            .filter_map(|id| self.entries.get(id).map(|e| (*id, e.addr)))
            .collect()
    }

    /// Whether `id` is in the book.
    pub(crate) fn contains(&self, id: &PeerId) -> bool {
        self.entries.contains_key(id)
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `id` was reached by dialing (it is in the tried table).
    pub(crate) fn is_tried(&self, id: &PeerId) -> bool {
        self.entries.get(id).is_some_and(|e| e.tried)
    }

    /// Entries in the tried table.
    pub(crate) fn tried_len(&self) -> usize {
        self.entries.values().filter(|e| e.tried).count()
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
