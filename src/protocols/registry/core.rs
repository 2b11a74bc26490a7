//! The registry's pure state, both sides, driven with a hand-moved clock:
//! - [`Directory`], the registry's list: members admitted after their dial-back, refreshed by
//!   heartbeats, dropped after `missed` silent heartbeat intervals or at once on deregistration,
//!   every change numbered so members can follow by deltas (a bounded log; further behind, a
//!   snapshot);
//! - [`View`], a member's copy: applies snapshots and deltas in order, re-verifies every record
//!   (the registry can omit a node, never forge one), resolves names, and says what changed.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::peers::record::PeerRecord;

/// One numbered change of the registry's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Change {
    /// A node was listed (or re-listed with a new record).
    Joined(PeerRecord),
    /// A listed node signed a newer record (its state hash changed).
    Updated(PeerRecord),
    /// A node was dropped: deregistered, silent, or replaced.
    Left(PeerId),
}

/// What a member needs to catch up from a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Delta {
    /// Changes numbered `base + 1 ..= base + changes.len()`.
    Changes { base: u64, changes: Vec<Change> },
    /// The whole list at `version` (the member was further behind than the log reaches).
    Snapshot {
        version: u64,
        records: Vec<PeerRecord>,
    },
}

/// Why the registry refuses a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The record does not verify, or names another node than the connection proved.
    #[error("the signed record does not verify or is not the sender's")]
    BadRecord,
    /// Another listed node has this name.
    #[error("another node is registered under this name")]
    NameTaken,
    /// The registry lists its maximum of nodes.
    #[error("the registry is full")]
    Full,
    /// The registry could not reach the node at the address it advertises, or the node there
    /// proved another identity.
    #[error("the registry could not dial back the advertised address")]
    Unreachable,
    /// Too many registrations are being checked at once; retry.
    #[error("the registry is busy checking other registrations")]
    Busy,
}

/// Bounds and timing of a [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectoryLimits {
    pub(crate) max_members: usize,
    pub(crate) heartbeat: Duration,
    /// Heartbeat intervals of silence before a member is dropped.
    pub(crate) missed: u32,
    /// Changes kept for deltas; a member further behind gets a snapshot.
    pub(crate) log: usize,
}

#[derive(Debug, Clone)]
struct Listed {
    record: PeerRecord,
    last_seen: Instant,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Refreshed; the list is at this version.
    Ok(u64),
    /// Not listed (dropped, or the registry restarted): register again.
    Unknown,
}

/// The registry's list of nodes.
#[derive(Debug)]
pub(crate) struct Directory {
    limits: DirectoryLimits,
    members: HashMap<PeerId, Listed>,
    version: u64,
    /// `(version, change)`, oldest first, at most `limits.log`.
    log: VecDeque<(u64, Change)>,
}

impl Directory {
    pub(crate) fn new(limits: DirectoryLimits) -> Self {
        Self {
            limits,
            members: HashMap::new(),
            version: 0,
            log: VecDeque::new(),
        }
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn contains(&self, id: &PeerId) -> bool {
        self.members.contains_key(id)
    }

    /// Every listed record.
    pub(crate) fn records(&self) -> Vec<PeerRecord> {
        let mut records: Vec<PeerRecord> =
            self.members.values().map(|m| m.record.clone()).collect();
        records.sort_by_key(PeerRecord::id);
        records
    }

    fn push(&mut self, change: Change) {
        self.version += 1;
        if self.log.len() >= self.limits.log {
            self.log.pop_front();
        }
        self.log.push_back((self.version, change));
    }

    /// Whether `record`, sent by `sender`, may be listed once its address is dialed back.
    pub(crate) fn check(&self, sender: PeerId, record: &PeerRecord) -> Result<(), Refusal> {
        if record.id() != sender || record.verify().is_err() {
            return Err(Refusal::BadRecord);
        }
        if let Some(name) = record.name() {
            let taken = self
                .members
                .values()
                .any(|m| m.record.id() != sender && m.record.name() == Some(name));
            if taken {
                return Err(Refusal::NameTaken);
            }
        }
        if !self.members.contains_key(&sender) && self.members.len() >= self.limits.max_members {
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// Lists `record` (dialed back): checked again, as the list may have changed meanwhile.
    pub(crate) fn admit(
        &mut self,
        sender: PeerId,
        record: PeerRecord,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.check(sender, &record)?;
        let unchanged = self
            .members
            .get(&sender)
            .is_some_and(|m| m.record == record);
        if !unchanged {
            self.push(Change::Joined(record.clone()));
        }
        self.members.insert(
            sender,
            Listed {
                record,
                last_seen: now,
            },
        );
        Ok(())
    }

    /// A heartbeat from `sender` carrying its current record. A newer record with the same
    /// addresses replaces the listed one (a state-hash change); one with other addresses must
    /// be dialed back first, so it is answered [`Beat::Unknown`] (register again).
    pub(crate) fn heartbeat(&mut self, sender: PeerId, record: &PeerRecord, now: Instant) -> Beat {
        let Some(member) = self.members.get_mut(&sender) else {
            return Beat::Unknown;
        };
        if member.record != *record {
            if record.id() != sender || record.verify().is_err() {
                // A garbled heartbeat keeps nothing alive.
                return Beat::Ok(self.version);
            }
            if !record.supersedes(&member.record) {
                member.last_seen = now;
                return Beat::Ok(self.version);
            }
            if record.addrs() != member.record.addrs() || record.name() != member.record.name() {
                self.members.remove(&sender);
                self.push(Change::Left(sender));
                return Beat::Unknown;
            }
            member.record = record.clone();
            member.last_seen = now;
            self.push(Change::Updated(record.clone()));
            return Beat::Ok(self.version);
        }
        member.last_seen = now;
        Beat::Ok(self.version)
    }

    /// Removes `id` at once (a graceful stop). Returns whether it was listed.
    pub(crate) fn leave(&mut self, id: PeerId) -> bool {
        if self.members.remove(&id).is_some() {
            self.push(Change::Left(id));
            true
        } else {
            false
        }
    }

    fn silence(&self) -> Duration {
        self.limits.heartbeat.saturating_mul(self.limits.missed)
    }

    /// Drops every member silent for `missed` heartbeat intervals; returns them.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let silence = self.silence();
        let mut gone: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > silence)
            .map(|(id, _)| *id)
            .collect();
        gone.sort();
        for id in &gone {
            self.leave(*id);
        }
        gone
    }

    /// When the next member falls silent, if nothing is heard from it.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let silence = self.silence() + Duration::from_millis(1);
        self.members.values().map(|m| m.last_seen + silence).min()
    }

    /// What a member at `version` needs to catch up.
    pub(crate) fn since(&self, version: u64) -> Delta {
        // The log holds every change after `oldest - 1`. Asked only of a version behind ours,
        // so `+ 1` cannot overflow whatever a member sends.
        let in_log = || {
            self.log
                .front()
                .is_some_and(|(oldest, _)| version + 1 >= *oldest)
        };
        match version.cmp(&self.version) {
            Ordering::Equal => Delta::Changes {
                base: version,
                changes: Vec::new(),
            },
            Ordering::Less if in_log() => Delta::Changes {
                base: version,
                changes: self
                    .log
                    .iter()
                    .filter(|(v, _)| *v > version)
                    .map(|(_, c)| c.clone())
                    .collect(),
            },
            // Further behind than the log reaches, or ahead: a member that followed an earlier
            // life of this registry.
            Ordering::Less | Ordering::Greater => Delta::Snapshot {
                version: self.version,
                records: self.records(),
            },
        }
    }
}

/// A listed node, as a member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its proven id.
    pub id: PeerId,
    /// The name it registered under.
    pub name: Option<String>,
    /// The address it advertises (dialed back by the registry before listing it).
    pub addr: SocketAddr,
    /// The hash of its state it last reported (`Membership::set_state_hash`).
    pub state_hash: Option<[u8; 32]>,
}

impl From<&PeerRecord> for Member {
    fn from(record: &PeerRecord) -> Self {
        Self {
            id: record.id(),
            name: record.name().map(str::to_owned),
            // A verified record lists at least one address.
            addr: record
                .addrs()
                .first()
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            state_hash: record.state_hash(),
        }
    }
}

/// A change of the list, as a member is told it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// This node is registered (again); the list follows as `Joined` events.
    Registered,
    /// A node was listed.
    Joined(Member),
    /// A listed node reported a new state hash (or moved to a new record otherwise).
    Updated(Member),
    /// A node left the list (stopped, went silent, or was dropped).
    Left(PeerId),
    /// The registry refused this node for good; it stopped trying.
    Refused(String),
}

/// A delta that does not follow the view's version: ask for the list since the view's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap;

/// A member's copy of the registry's list.
#[derive(Debug)]
pub(crate) struct View {
    local: PeerId,
    version: u64,
    members: HashMap<PeerId, PeerRecord>,
    max: usize,
    /// Records from the registry that did not verify (skipped).
    pub(crate) bad_records: u64,
}

impl View {
    pub(crate) fn new(local: PeerId, max: usize) -> Self {
        Self {
            local,
            version: 0,
            members: HashMap::new(),
            max,
            bad_records: 0,
        }
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn valid(&mut self, record: &PeerRecord) -> bool {
        let ok = record.verify().is_ok();
        if !ok {
            self.bad_records += 1;
        }
        ok
    }

    /// Events for others only: a node's own listing is not news to it.
    fn event(&self, events: &mut Vec<MembershipEvent>, event: MembershipEvent) {
        let about = match &event {
            MembershipEvent::Joined(m) | MembershipEvent::Updated(m) => Some(m.id),
            MembershipEvent::Left(id) => Some(*id),
            MembershipEvent::Registered | MembershipEvent::Refused(_) => None,
        };
        if about != Some(self.local) {
            events.push(event);
        }
    }

    /// Replaces the list with a snapshot; returns what changed.
    pub(crate) fn reset(&mut self, version: u64, records: Vec<PeerRecord>) -> Vec<MembershipEvent> {
        let mut fresh: HashMap<PeerId, PeerRecord> = HashMap::new();
        for record in records {
            if fresh.len() >= self.max {
                break;
            }
            if self.valid(&record) {
                fresh.insert(record.id(), record);
            }
        }
        let mut events = Vec::new();
        let mut gone: Vec<PeerId> = self
            .members
            .keys()
            .filter(|id| !fresh.contains_key(id))
            .copied()
            .collect();
        gone.sort();
        for id in gone {
            self.event(&mut events, MembershipEvent::Left(id));
        }
        let mut listed: Vec<&PeerRecord> = fresh.values().collect();
        listed.sort_by_key(|r| r.id());
        for record in listed {
            match self.members.get(&record.id()) {
                None => self.event(&mut events, MembershipEvent::Joined(record.into())),
                Some(old) if old != record => {
                    self.event(&mut events, MembershipEvent::Updated(record.into()));
                }
                Some(_) => {}
            }
        }
        self.members = fresh;
        self.version = version;
        events
    }

    /// Applies a delta; a snapshot always applies, changes only from the view's version.
    pub(crate) fn apply(&mut self, delta: Delta) -> Result<Vec<MembershipEvent>, Gap> {
        let (base, changes) = match delta {
            Delta::Snapshot { version, records } => return Ok(self.reset(version, records)),
            Delta::Changes { base, changes } => (base, changes),
        };
        let end = base.saturating_add(changes.len() as u64);
        if end <= self.version {
            return Ok(Vec::new());
        }
        if base > self.version {
            return Err(Gap);
        }
        let skip = usize::try_from(self.version - base).map_err(|_| Gap)?;
        let mut events = Vec::new();
        for change in changes.into_iter().skip(skip) {
            match change {
                Change::Joined(record) | Change::Updated(record) => {
                    if !self.valid(&record) {
                        continue;
                    }
                    let id = record.id();
                    if !self.members.contains_key(&id) && self.members.len() >= self.max {
                        continue;
                    }
                    let event = if self.members.contains_key(&id) {
                        MembershipEvent::Updated((&record).into())
                    } else {
                        MembershipEvent::Joined((&record).into())
                    };
                    if self.members.get(&id) != Some(&record) {
                        self.event(&mut events, event);
                    }
                    self.members.insert(id, record);
                }
                Change::Left(id) => {
                    if self.members.remove(&id).is_some() {
                        self.event(&mut events, MembershipEvent::Left(id));
                    }
                }
            }
        }
        self.version = end;
        Ok(events)
    }

    /// The id registered under `name`.
    pub(crate) fn resolve(&self, name: &str) -> Option<PeerId> {
        self.members
            .values()
            .find(|r| r.name() == Some(name))
            .map(PeerRecord::id)
    }

    /// Every listed node, by id.
    pub(crate) fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self.members.values().map(Member::from).collect();
        members.sort_by_key(|m| m.id);
        members
    }

    /// Every listed record (for the data directory).
    pub(crate) fn records(&self) -> Vec<PeerRecord> {
        self.members.values().cloned().collect()
    }

    /// Forgets the list (the registry is gone; a new registration brings a snapshot).
    pub(crate) fn clear_version(&mut self) {
        self.version = 0;
    }
}
