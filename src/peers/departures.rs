//! Departures held back while a replacement connection finishes its handshake.
//!
//! In a simultaneous dial (or a reconnect) the remote may finish the handshake of the
//! connection it keeps before we do, and close the other one with a `Duplicate` goodbye. If that
//! goodbye arrives first, the peer has no open connection here for a moment, though it is not
//! leaving: the kept connection is one handshake message away. Reporting `Disconnected` then
//! `Connected` would make the application react to a departure that never happened, so such a
//! departure is held for up to the handshake timeout: if a connection to the peer opens within
//! it, neither event is reported; if not, `Disconnected` is reported when the hold expires (or
//! at shutdown, with everyone else).
//! Pure and clock-free (the caller passes the time), so it is tested without sockets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::codec::GoodbyeReason;
use crate::identity::PeerId;
use crate::session::DisconnectReason;

/// Departures not yet reported, bounded: when full, a departure is reported at once.
#[derive(Debug)]
pub(crate) struct HeldDepartures {
    held: HashMap<PeerId, (Instant, DisconnectReason)>,
    grace: Duration,
    capacity: usize,
}

impl HeldDepartures {
    pub(crate) fn new(grace: Duration, capacity: usize) -> Self {
        Self {
            held: HashMap::new(),
            grace,
            capacity,
        }
    }

    /// Whether the departure of `peer` for `reason` waits instead of being reported now: only
    /// when the remote closed the connection because it keeps another one to us.
    pub(crate) fn hold(&mut self, peer: PeerId, reason: &DisconnectReason, now: Instant) -> bool {
        let replaced = matches!(
            reason,
            DisconnectReason::RemoteGoodbye(GoodbyeReason::Duplicate)
        );
        if !replaced || self.held.len() >= self.capacity {
            return false;
        }
        self.held.insert(peer, (now + self.grace, reason.clone()));
        true
    }

    /// Stops holding `peer`'s departure; `true` if it was held. When a connection to the peer
    /// opened, the application never heard it leave, so it needs no `Connected` either; when the
    /// peer is banned or disconnected meanwhile, its departure is reported with that reason.
    pub(crate) fn release(&mut self, peer: PeerId) -> bool {
        self.held.remove(&peer).is_some()
    }

    /// When the earliest hold expires.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.held.values().map(|(due, _)| *due).min()
    }

    /// The departures whose hold has expired by `now`, to report.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(PeerId, DisconnectReason)> {
        let due: Vec<PeerId> = self
            .held
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        due.into_iter()
            .filter_map(|peer| self.held.remove(&peer).map(|(_, reason)| (peer, reason)))
            .collect()
    }

    /// Every held departure (to report as part of the shutdown).
    pub(crate) fn drain(&mut self) -> Vec<(PeerId, DisconnectReason)> {
        self.held
            .drain()
            .map(|(peer, (_, reason))| (peer, reason))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    const GRACE: Duration = Duration::from_secs(10);

    fn duplicate() -> DisconnectReason {
        DisconnectReason::RemoteGoodbye(GoodbyeReason::Duplicate)
    }

    #[test]
    fn a_peer_replaced_within_the_grace_never_departs() {
        let mut held = HeldDepartures::new(GRACE, 8);
        let peer = Keypair::generate().peer_id();
        let t0 = Instant::now();
        assert!(held.hold(peer, &duplicate(), t0));
        assert_eq!(held.next_due(), Some(t0 + GRACE));
        assert!(held.take_due(t0 + GRACE / 2).is_empty());
        assert!(held.release(peer));
        assert!(held.take_due(t0 + GRACE * 2).is_empty());
        assert_eq!(held.next_due(), None);
        // A later connection is an ordinary one.
        assert!(!held.release(peer));
    }

    #[test]
    fn an_unreplaced_peer_departs_when_the_grace_expires() {
        let mut held = HeldDepartures::new(GRACE, 8);
        let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        let t0 = Instant::now();
        assert!(held.hold(a, &duplicate(), t0));
        assert!(held.hold(b, &duplicate(), t0 + Duration::from_secs(1)));
        assert_eq!(held.take_due(t0 + GRACE), vec![(a, duplicate())]);
        assert_eq!(held.next_due(), Some(t0 + Duration::from_secs(1) + GRACE));
        assert_eq!(held.drain(), vec![(b, duplicate())]);
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn other_reasons_are_reported_at_once() {
        let mut held = HeldDepartures::new(GRACE, 8);
        let peer = Keypair::generate().peer_id();
        let now = Instant::now();
        for reason in [
            DisconnectReason::Eof,
            DisconnectReason::IdleTimeout,
            DisconnectReason::Duplicate,
            DisconnectReason::RemoteGoodbye(GoodbyeReason::Shutdown),
        ] {
            assert!(!held.hold(peer, &reason, now), "{reason:?}");
        }
        assert!(!held.release(peer));
    }

    #[test]
    fn when_full_a_departure_is_reported_at_once() {
        let mut held = HeldDepartures::new(GRACE, 1);
        let now = Instant::now();
        assert!(held.hold(Keypair::generate().peer_id(), &duplicate(), now));
        assert!(!held.hold(Keypair::generate().peer_id(), &duplicate(), now));
    }
}
