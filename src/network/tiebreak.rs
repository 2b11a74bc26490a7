//! Which connection to keep when a peer has two: a pure rule both sides compute identically.
//!
//! When the two connections were dialed by different sides (a simultaneous dial), keep the one
//! dialed by the node with the larger [`PeerId`]; both nodes see the same two dialers, so both
//! keep the same connection. When both were dialed by the same side, the newer one replaces the
//! older: that is a reconnect, and the older one is probably half-open.

use super::Direction;
use crate::identity::PeerId;

/// Whether a newly authenticated connection should replace the peer's existing one.
pub fn keep_new_connection(
    local: PeerId,
    remote: PeerId,
    existing: Direction,
    new: Direction,
) -> bool {
    if existing == new {
        return true;
    }
    let dialer = |direction| match direction {
        Direction::Outbound => local,
        Direction::Inbound => remote,
    };
    dialer(new) > dialer(existing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use Direction::*;

    #[test]
    fn both_sides_keep_the_connection_dialed_by_the_larger_id() {
        for _ in 0..32 {
            let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
            // Connection X is dialed by a (outbound at a, inbound at b); Y by b.
            // Each side sees one arrive first; the outcome must not depend on the order.
            let a_keeps_y_if_x_first = keep_new_connection(a, b, Outbound, Inbound);
            let a_keeps_x_if_y_first = keep_new_connection(a, b, Inbound, Outbound);
            let b_keeps_x_if_y_first = keep_new_connection(b, a, Outbound, Inbound);
            let b_keeps_y_if_x_first = keep_new_connection(b, a, Inbound, Outbound);
            let winner_is_y = b > a;
            assert_eq!(a_keeps_y_if_x_first, winner_is_y);
            assert_eq!(a_keeps_x_if_y_first, !winner_is_y);
            assert_eq!(b_keeps_x_if_y_first, !winner_is_y);
            assert_eq!(b_keeps_y_if_x_first, winner_is_y);
        }
    }

    #[test]
    fn same_direction_newer_replaces_older() {
        let (a, b) = (Keypair::generate().peer_id(), Keypair::generate().peer_id());
        assert!(keep_new_connection(a, b, Inbound, Inbound));
        assert!(keep_new_connection(a, b, Outbound, Outbound));
    }
}
