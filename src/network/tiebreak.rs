//! Which connection to keep when a peer has two: a pure rule both sides compute identically.
//!
//! When the two connections were dialed by different sides (a simultaneous dial), keep the one
//! dialed by the node with the larger [`PeerId`]; both nodes see the same two dialers, so both
//! keep the same connection. When both were dialed by the same side, keep the one that side
//! dialed later: that is a reconnect, and the older one is probably half-open. "Later" is the
//! order in which each side opened them (connection ids are handed out in dial order at the
//! dialer and in accept order at the acceptor), not the order their handshakes finished: two
//! handshakes can finish in opposite orders on the two sides, and then each side would close
//! the connection the other kept.

use super::Direction;
use crate::identity::PeerId;
use crate::socket::ConnectionId;

/// A connection as the tie-break sees it: who dialed it, and when it was opened here.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Which side dialed it.
    pub direction: Direction,
    /// Its id, increasing in the order connections were dialed or accepted here.
    pub id: ConnectionId,
}

/// Whether a newly authenticated connection should replace the peer's existing one.
pub fn keep_new_connection(
    local: PeerId,
    remote: PeerId,
    existing: Candidate,
    new: Candidate,
) -> bool {
    if existing.direction == new.direction {
        return new.id > existing.id;
    }
    let dialer = |direction| match direction {
        Direction::Outbound => local,
        Direction::Inbound => remote,
    };
    dialer(new.direction) > dialer(existing.direction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use Direction::*;

    fn c(direction: Direction, id: ConnectionId) -> Candidate {
        Candidate { direction, id }
    }

    #[test]
    fn both_sides_keep_the_connection_dialed_by_the_larger_id() {
        for _ in 0..32 {
            let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
            // Connection X is dialed by a (outbound at a, inbound at b); Y by b. Ids are local
            // and unrelated across the two nodes. Each side sees one arrive first; the outcome
            // must not depend on the order.
            let a_keeps_y_if_x_first = keep_new_connection(a, b, c(Outbound, 1), c(Inbound, 2));
            let a_keeps_x_if_y_first = keep_new_connection(a, b, c(Inbound, 2), c(Outbound, 1));
            let b_keeps_x_if_y_first = keep_new_connection(b, a, c(Outbound, 7), c(Inbound, 5));
            let b_keeps_y_if_x_first = keep_new_connection(b, a, c(Inbound, 5), c(Outbound, 7));
            let winner_is_y = b > a;
            assert_eq!(a_keeps_y_if_x_first, winner_is_y);
            assert_eq!(a_keeps_x_if_y_first, !winner_is_y);
            assert_eq!(b_keeps_x_if_y_first, !winner_is_y);
            assert_eq!(b_keeps_y_if_x_first, winner_is_y);
        }
    }

    #[test]
    fn same_direction_keeps_the_later_opened_whatever_order_handshakes_finish() {
        let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        // a dialed X (id 3 at a, 10 at b) and later Y (id 4 at a, 11 at b).
        // At a, Y's handshake finishes after X's: Y replaces X.
        assert!(keep_new_connection(a, b, c(Outbound, 3), c(Outbound, 4)));
        // At b, Y's handshake may finish first; X arriving later must not replace it.
        assert!(!keep_new_connection(b, a, c(Inbound, 11), c(Inbound, 10)));
        // In the usual order, b keeps Y as well.
        assert!(keep_new_connection(b, a, c(Inbound, 10), c(Inbound, 11)));
    }
}
