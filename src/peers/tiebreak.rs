//! Which connection to keep when a peer has two: a pure rule both sides compute identically.
//!
//! When the two connections were dialed by different sides (a simultaneous dial), keep the one
//! dialed by the node with the larger [`PeerId`]; both nodes see the same two dialers, so both
//! keep the same connection. When both were dialed by the same side, keep the one that side
//! dialed later: that is a reconnect, and the older one is probably half-open. "Later" is the
//! dialer's sequence number, carried in the handshake so that both sides compare the same two
//! numbers. Neither the order the handshakes finished nor the order the connections were
//! accepted will do: both can differ between the two sides (scheduling, a retransmitted SYN),
//! and then each side closes the connection the other kept.

use crate::identity::PeerId;
use crate::session::Direction;

/// A connection as the tie-break sees it: who dialed it, and the dialer's sequence number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// Which side dialed it.
    pub(crate) direction: Direction,
    /// The dialer's sequence number for it, the same on both sides (see [`next_dial_seq`]).
    pub(crate) dial_seq: u64,
}

/// Whether a newly authenticated connection should replace the peer's existing one.
pub(crate) fn keep_new_connection(
    local: PeerId,
    remote: PeerId,
    existing: Candidate,
    new: Candidate,
) -> bool {
    if existing.direction == new.direction {
        // Equal numbers cannot come from one honest dialer; keep the one already open.
        return new.dial_seq > existing.dial_seq;
    }
    let dialer = |direction| match direction {
        Direction::Outbound => local,
        Direction::Inbound => remote,
    };
    dialer(new.direction) > dialer(existing.direction)
}

/// The sequence number of a node's next dial: larger than its last one, and at least the
/// current time in microseconds since the Unix epoch, so that a node that restarted (and lost
/// its counter) still numbers its new dials above those of its previous process, whose
/// half-open connections its peers may still hold. A clock stepped back only delays that: the
/// old connection is then replaced when its idle timeout closes it.
pub(crate) fn next_dial_seq(last: u64, unix_micros: u64) -> u64 {
    last.saturating_add(1).max(unix_micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use Direction::*;

    fn c(direction: Direction, dial_seq: u64) -> Candidate {
        Candidate {
            direction,
            dial_seq,
        }
    }

    #[test]
    fn both_sides_keep_the_connection_dialed_by_the_larger_id() {
        for _ in 0..32 {
            let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
            // Connection X is dialed by a (outbound at a, inbound at b); Y by b. Their dial
            // numbers come from different nodes and must not matter. Each side sees one arrive
            // first; the outcome must not depend on the order.
            let (x, y) = (900, 5);
            let a_keeps_y_if_x_first = keep_new_connection(a, b, c(Outbound, x), c(Inbound, y));
            let a_keeps_x_if_y_first = keep_new_connection(a, b, c(Inbound, y), c(Outbound, x));
            let b_keeps_x_if_y_first = keep_new_connection(b, a, c(Outbound, y), c(Inbound, x));
            let b_keeps_y_if_x_first = keep_new_connection(b, a, c(Inbound, x), c(Outbound, y));
            let winner_is_y = b > a;
            assert_eq!(a_keeps_y_if_x_first, winner_is_y);
            assert_eq!(a_keeps_x_if_y_first, !winner_is_y);
            assert_eq!(b_keeps_x_if_y_first, !winner_is_y);
            assert_eq!(b_keeps_y_if_x_first, winner_is_y);
        }
    }

    #[test]
    fn same_direction_keeps_the_later_dial_whatever_order_the_sides_see() {
        let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        // a dialed X (number 10) and later Y (number 11). Each side may finish the two
        // handshakes in either order; both must keep Y.
        for (existing, new) in [(10, 11), (11, 10)] {
            let keep_new_at_a = keep_new_connection(a, b, c(Outbound, existing), c(Outbound, new));
            let keep_new_at_b = keep_new_connection(b, a, c(Inbound, existing), c(Inbound, new));
            assert_eq!(keep_new_at_a, new == 11);
            assert_eq!(keep_new_at_b, new == 11);
        }
        // The same number twice (no honest dialer does that; a replay could): the open one
        // stays, so a peer cannot churn a connection by repeating its number.
        assert!(!keep_new_connection(a, b, c(Outbound, 10), c(Outbound, 10)));
        assert!(!keep_new_connection(b, a, c(Inbound, 10), c(Inbound, 10)));
        // Across directions a tie needs both dialers to be one node (a connection to itself,
        // refused by the handshake); the rule is the same: the open one stays.
        assert!(!keep_new_connection(a, a, c(Outbound, 1), c(Inbound, 2)));
    }

    #[test]
    fn dial_numbers_increase_and_survive_a_restart() {
        // Within a process: strictly increasing even if the clock stands still or steps back.
        assert_eq!(next_dial_seq(100, 50), 101);
        assert_eq!(next_dial_seq(100, 100), 101);
        // A fresh process (last = 0) starts at the clock, above its predecessor's numbers.
        let before_restart = next_dial_seq(next_dial_seq(0, 1_000), 1_000);
        assert!(next_dial_seq(0, 2_000) > before_restart);
        assert_eq!(next_dial_seq(u64::MAX, 0), u64::MAX);
    }
}
