//! Which addresses to dial and when: persistent peers (redialed forever while not connected) and
//! bootstrap addresses (retried until the first success). Pure: the actor passes in the time
//! and the randomness, so the schedule is tested without a clock or sockets.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use super::backoff::Backoff;
use crate::identity::PeerId;
use crate::session::ConnectionId;

#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// The id a persistent peer must prove; `None` for a bootstrap address.
    expected: Option<PeerId>,
    /// Failed dials since the last success.
    attempt: u32,
    /// When to dial next; `None` while connected, dialing, or done.
    due: Option<Instant>,
    /// A bootstrap address that succeeded once; never dialed again.
    done: bool,
    /// Dialed at least once, so later dials count as redials.
    ever_started: bool,
}

/// A dial the actor should start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dial {
    pub(crate) target: usize,
    pub(crate) addr: SocketAddr,
    pub(crate) expected: Option<PeerId>,
}

/// The dial schedule.
#[derive(Debug)]
pub(crate) struct Redialer {
    /// By a key that never changes (persistent peers come and go at runtime; a dial in flight
    /// names its target by key).
    targets: BTreeMap<usize, Target>,
    next_key: usize,
    backoff: Backoff,
    /// Dials in flight: connection → target.
    dialing: HashMap<ConnectionId, usize>,
}

impl Redialer {
    pub(crate) fn new(
        persistent: impl IntoIterator<Item = (SocketAddr, PeerId)>,
        bootstrap: impl IntoIterator<Item = SocketAddr>,
        backoff: Backoff,
        now: Instant,
    ) -> Self {
        let target = |addr, expected| Target {
            addr,
            expected,
            attempt: 0,
            due: Some(now),
            done: false,
            ever_started: false,
        };
        let targets: BTreeMap<usize, Target> = persistent
            .into_iter()
            .map(|(addr, id)| target(addr, Some(id)))
            .chain(bootstrap.into_iter().map(|addr| target(addr, None)))
            .enumerate()
            .collect();
        Self {
            next_key: targets.len(),
            targets,
            backoff,
            dialing: HashMap::new(),
        }
    }

    /// Whether `peer` is one to stay connected to.
    pub(crate) fn is_persistent(&self, peer: PeerId) -> bool {
        self.targets.values().any(|t| t.expected == Some(peer))
    }

    /// Makes `peer` (at `addr`) one to stay connected to, dialed from `now`, or once its
    /// connection is lost when `connected`; a persistent peer already known only gets the new
    /// address. Returns whether it is new.
    pub(crate) fn add(
        &mut self,
        addr: SocketAddr,
        peer: PeerId,
        now: Instant,
        connected: bool,
    ) -> bool {
        if let Some(t) = self.targets.values_mut().find(|t| t.expected == Some(peer)) {
            t.addr = addr;
            return false;
        }
        self.targets.insert(
            self.next_key,
            Target {
                addr,
                expected: Some(peer),
                attempt: 0,
                due: (!connected).then_some(now),
                done: false,
                ever_started: false,
            },
        );
        self.next_key += 1;
        true
    }

    /// Stops dialing `peer`; a dial in flight finishes but schedules nothing. Returns whether
    /// it was persistent.
    pub(crate) fn remove(&mut self, peer: PeerId) -> bool {
        let before = self.targets.len();
        self.targets.retain(|_, t| t.expected != Some(peer));
        let targets = &self.targets;
        self.dialing.retain(|_, key| targets.contains_key(key));
        self.targets.len() < before
    }

    /// The earliest time a dial is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.targets.values().filter_map(|t| t.due).min()
    }

    /// Dials due at `now`, skipping persistent peers already connected. Each returned dial must
    /// be reported back with [`Redialer::started`].
    pub(crate) fn due(&mut self, now: Instant, connected: impl Fn(PeerId) -> bool) -> Vec<Dial> {
        let mut dials = Vec::new();
        for (&index, t) in &mut self.targets {
            if t.done || t.due.is_none_or(|d| d > now) {
                continue;
            }
            t.due = None;
            if t.expected.is_some_and(&connected) {
                continue;
            }
            dials.push(Dial {
                target: index,
                addr: t.addr,
                expected: t.expected,
            });
        }
        dials
    }

    /// The actor started `dial` as connection `conn`; returns whether it is a redial (after a
    /// failure or a lost connection).
    pub(crate) fn started(&mut self, dial: Dial, conn: ConnectionId) -> bool {
        let Some(t) = self.targets.get_mut(&dial.target) else {
            return false;
        };
        // A failed attempt implies an earlier start, so this alone tells a redial.
        let redial = t.ever_started;
        t.ever_started = true;
        self.dialing.insert(conn, dial.target);
        redial
    }

    /// Skips `dial` now and schedules it for `until` (the peer is banned until then).
    pub(crate) fn postpone(&mut self, dial: Dial, until: Instant) {
        if let Some(t) = self.targets.get_mut(&dial.target) {
            t.due = Some(until);
        }
    }

    /// Connection `conn` proved a peer (opened, or lost a duplicate tie-break to another
    /// connection to the same peer): the dial succeeded.
    pub(crate) fn dial_succeeded(&mut self, conn: ConnectionId) {
        if let Some(t) = self
            .dialing
            .remove(&conn)
            .and_then(|key| self.targets.get_mut(&key))
        {
            t.attempt = 0;
            if t.expected.is_none() {
                t.done = true;
            }
        }
    }

    /// Connection `conn` closed; if it was a dial that never proved its peer, schedule a retry.
    pub(crate) fn dial_closed(&mut self, conn: ConnectionId, now: Instant, random: u64) {
        if let Some(t) = self
            .dialing
            .remove(&conn)
            .and_then(|key| self.targets.get_mut(&key))
        {
            if !t.done {
                t.due = Some(now + self.backoff.delay(t.attempt, random));
                t.attempt = t.attempt.saturating_add(1);
            }
        }
    }

    /// A persistent peer lost its connection (by whichever side it was dialed): redial soon.
    /// A dial already in flight is left alone (its own outcome schedules the next).
    pub(crate) fn peer_lost(&mut self, peer: PeerId, now: Instant, random: u64) {
        let backoff = self.backoff;
        let in_flight: Vec<usize> = self.dialing.values().copied().collect();
        for (index, t) in &mut self.targets {
            if in_flight.contains(index) {
                continue;
            }
            if t.expected == Some(peer) && t.due.is_none() {
                t.due = Some(now + backoff.delay(t.attempt, random));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use std::time::Duration;

    fn setup() -> (Redialer, PeerId, Instant) {
        let id = Keypair::generate().peer_id();
        let now = Instant::now();
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter_permille: 0,
        };
        let r = Redialer::new(
            [("10.0.0.1:1".parse().unwrap(), id)],
            ["10.0.0.2:2".parse().unwrap()],
            backoff,
            now,
        );
        (r, id, now)
    }

    #[test]
    fn failed_dials_back_off_to_the_cap_and_never_give_up() {
        let (mut r, id, now) = setup();
        let mut t = now;
        let mut gaps = Vec::new();
        for conn in 0..8 {
            let dials = r.due(t, |_| false);
            let dial = dials.into_iter().find(|d| d.expected == Some(id)).unwrap();
            assert_eq!(
                r.started(dial, ConnectionId(conn)),
                conn > 0,
                "every dial after the first is a redial"
            );
            r.dial_closed(ConnectionId(conn), t, 0);
            let next = r
                .targets
                .values()
                .find(|x| x.expected == Some(id))
                .unwrap()
                .due
                .unwrap();
            gaps.push((next - t).as_millis());
            t = next;
        }
        assert_eq!(gaps, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    }

    #[test]
    fn connected_persistent_peer_is_not_dialed_and_is_redialed_when_lost() {
        let (mut r, id, now) = setup();
        let dials = r.due(now, |p| p == id);
        assert_eq!(dials.len(), 1, "only the bootstrap address");
        assert_eq!(dials[0].expected, None);
        assert_eq!(r.next_due(), None);
        r.peer_lost(id, now, 0);
        assert_eq!(r.next_due(), Some(now + Duration::from_millis(100)));
        let later = now + Duration::from_millis(100);
        let redial = r.due(later, |_| false);
        assert_eq!(redial.len(), 1);
        assert_eq!(redial[0].expected, Some(id));
    }

    #[test]
    fn refused_dial_is_retried_and_postponed_dial_waits() {
        let (mut r, id, now) = setup();
        let dial = r.due(now, |_| false)[0];
        assert_eq!(dial.expected, Some(id));
        // Refused after the handshake (not a success): the close schedules a retry.
        r.started(dial, ConnectionId(7));
        r.dial_closed(ConnectionId(7), now, 0);
        assert!(r.next_due().is_some());
        let later = now + Duration::from_secs(3600);
        let dial = r.due(later, |_| false)[0];
        r.postpone(dial, later + Duration::from_secs(60));
        assert!(r.due(later + Duration::from_secs(59), |_| false).is_empty());
        assert_eq!(r.due(later + Duration::from_secs(60), |_| false).len(), 1);
    }

    #[test]
    fn bootstrap_is_done_after_first_success() {
        let (mut r, id, now) = setup();
        let dials = r.due(now, |p| p == id);
        r.started(dials[0], ConnectionId(1));
        r.dial_succeeded(ConnectionId(1));
        r.dial_closed(ConnectionId(1), now, 0); // the connection ends later: no redial
        assert_eq!(r.next_due(), None);
        assert!(!r.is_persistent(Keypair::generate().peer_id()));
        assert!(r.is_persistent(id));
    }

    #[test]
    fn a_peer_added_at_runtime_is_dialed_and_a_removed_one_never_again() {
        let (mut r, id, now) = setup();
        let _ = r.due(now, |p| p == id);
        let late = Keypair::generate().peer_id();
        let addr: SocketAddr = "10.0.0.9:9".parse().unwrap();
        assert!(r.add(addr, late, now, false));
        assert!(
            !r.add("10.0.0.9:10".parse().unwrap(), late, now, false),
            "known: readdressed"
        );
        assert!(r.is_persistent(late));
        let dial = r.due(now, |_| false);
        assert_eq!(dial.len(), 1);
        assert_eq!(dial[0].expected, Some(late));
        assert_eq!(dial[0].addr.port(), 10, "the newest address");
        r.started(dial[0], ConnectionId(5));
        // Removed while its dial is in flight: the dial's end schedules nothing.
        assert!(r.remove(late));
        assert!(!r.remove(late));
        assert!(!r.is_persistent(late));
        r.dial_closed(ConnectionId(5), now, 0);
        r.peer_lost(late, now, 0);
        assert_eq!(r.next_due(), None);
        // The others keep their keys and schedule.
        r.peer_lost(id, now, 0);
        assert_eq!(
            r.due(now + Duration::from_secs(1), |_| false)[0].expected,
            Some(id)
        );
        // Peers added one after another each get a target of their own.
        let (x, y) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        assert!(r.add(addr, x, now, false));
        assert!(r.add(addr, y, now, false));
        let later = now + Duration::from_secs(2);
        let mut dialed: Vec<_> = r.due(later, |_| false).iter().map(|d| d.expected).collect();
        dialed.sort_by_key(|p| p.map(|p| *p.as_bytes()));
        let mut both = vec![Some(x), Some(y)];
        both.sort_by_key(|p| p.map(|p| *p.as_bytes()));
        assert_eq!(dialed, both);
    }
}
