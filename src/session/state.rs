//! The socket state machine: every state a connection passes through, and which moves are legal.
//!
//! ```text
//!  Opening ──► Connecting ──► Authenticating ──► Authenticated ──► Open
//!     │  (outbound)  │   (inbound skips Connecting)   │            │
//!     └──────────────┴──────────► Errored ◄───────────┴────────────┤
//!                                    │                             │
//!                                    ▼                             ▼
//!                                 Closing ◄──────────(graceful: shutdown, duplicate, disconnect)
//!                                    │
//!                                    ▼
//!                                  Closed
//! ```
//!
//! `Errored` is entered on a fatal error (I/O, failed authentication of a frame, write stall,
//! handshake failure, spent misbehaviour budget) and always moves on to `Closing`, so no socket
//! lingers in an error state.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Illegal moves attempted by any connection of this process: each one is a bug in peerwire.
static ILLEGAL: AtomicU64 = AtomicU64::new(0);

/// How many times, in this process, a connection tried a move its state machine forbids. Each
/// is a bug in peerwire (logged at ERROR; the state stays as it was). Always 0 unless there is
/// one: the crate's own tests fail when it is not, because such a move happens inside a
/// connection's task, where a panic would only end that task.
pub fn illegal_state_transitions() -> u64 {
    ILLEGAL.load(Ordering::Relaxed)
}

/// The state of one connection. Readable at any time through
/// [`crate::Network::connections`] and [`crate::Network::peers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SocketState {
    /// Created; nothing done yet.
    Opening = 0,
    /// Outbound only: the TCP dial is in progress.
    Connecting = 1,
    /// The Noise handshake is running.
    Authenticating = 2,
    /// The peer is proven; the network is deciding whether to keep this connection.
    Authenticated = 3,
    /// Registered as the peer's connection; reading and writing application data.
    Open = 4,
    /// A fatal error happened; about to close.
    Errored = 5,
    /// Flushing queued data and the goodbye, and reading until the peer closes (bounded).
    Closing = 6,
    /// Finished; every task of this connection has ended.
    Closed = 7,
}

impl SocketState {
    /// Whether a move from `self` to `next` is legal.
    pub fn can_become(self, next: Self) -> bool {
        use SocketState::*;
        matches!(
            (self, next),
            (Opening, Connecting | Authenticating | Errored | Closing)
                | (Connecting, Authenticating | Errored | Closing)
                | (Authenticating, Authenticated | Errored | Closing)
                | (Authenticated, Open | Errored | Closing)
                | (Open, Errored | Closing)
                | (Errored, Closing)
                | (Closing, Closed)
        )
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Opening,
            1 => Self::Connecting,
            2 => Self::Authenticating,
            3 => Self::Authenticated,
            4 => Self::Open,
            5 => Self::Errored,
            6 => Self::Closing,
            _ => Self::Closed,
        }
    }
}

/// A state shared between the socket task (the only writer) and observers.
#[derive(Debug)]
pub(crate) struct StateCell(AtomicU8);

impl StateCell {
    pub(crate) fn new() -> Self {
        Self(AtomicU8::new(SocketState::Opening as u8))
    }

    pub(crate) fn get(&self) -> SocketState {
        SocketState::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves to `next` if legal; returns whether it moved. Illegal moves are bugs: counted in
    /// [`illegal_state_transitions`], logged, and ignored (state unchanged).
    pub(crate) fn set(&self, next: SocketState) -> bool {
        let current = self.get();
        let legal = current.can_become(next);
        if legal {
            self.0.store(next as u8, Ordering::Release);
        } else {
            ILLEGAL.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                ?current,
                ?next,
                "illegal socket state transition (a bug in peerwire)"
            );
        }
        legal
    }
}

/// The states a connection in `current` passes through when it starts closing for `reason`:
/// through `Errored` for a fault, then `Closing`; nothing if it is closing or closed already.
pub(crate) fn closing_path(
    current: SocketState,
    reason: &super::DisconnectReason,
) -> &'static [SocketState] {
    match current {
        SocketState::Closing | SocketState::Closed => &[],
        _ if reason.is_fault() => &[SocketState::Errored, SocketState::Closing],
        _ => &[SocketState::Closing],
    }
}

#[cfg(test)]
mod tests {
    use super::SocketState::*;
    use super::*;
    use crate::codec::GoodbyeReason;
    use crate::session::DisconnectReason;

    #[test]
    fn an_illegal_move_is_refused_and_counted() {
        let cell = StateCell::new();
        assert!(cell.set(Connecting));
        let before = illegal_state_transitions();
        assert!(!cell.set(Open), "Connecting cannot skip to Open");
        assert_eq!(cell.get(), Connecting);
        assert!(illegal_state_transitions() > before);
    }

    #[test]
    fn faults_close_through_errored_and_closing_happens_once() {
        let eof = DisconnectReason::Eof;
        let asked = DisconnectReason::RemoteGoodbye(GoodbyeReason::Shutdown);
        assert_eq!(closing_path(Open, &eof), &[Errored, Closing]);
        assert_eq!(closing_path(Open, &asked), &[Closing]);
        assert_eq!(
            closing_path(Authenticated, &DisconnectReason::Duplicate),
            &[Closing]
        );
        assert!(closing_path(Closing, &eof).is_empty());
        assert!(closing_path(Closed, &asked).is_empty());
        // Every path is legal from where it starts.
        for from in [Open, Authenticated, Authenticating] {
            for reason in [&eof, &asked] {
                let mut at = from;
                for &next in closing_path(from, reason) {
                    assert!(at.can_become(next), "{at:?} -> {next:?}");
                    at = next;
                }
            }
        }
    }

    const ALL: [SocketState; 8] = [
        Opening,
        Connecting,
        Authenticating,
        Authenticated,
        Open,
        Errored,
        Closing,
        Closed,
    ];

    #[test]
    fn happy_paths_are_legal() {
        for path in [
            &[
                Opening,
                Connecting,
                Authenticating,
                Authenticated,
                Open,
                Closing,
                Closed,
            ][..],
            &[
                Opening,
                Authenticating,
                Authenticated,
                Open,
                Errored,
                Closing,
                Closed,
            ][..],
            &[Opening, Connecting, Errored, Closing, Closed][..],
            &[Opening, Authenticating, Authenticated, Closing, Closed][..],
        ] {
            let cell = StateCell::new();
            for next in &path[1..] {
                assert!(cell.set(*next), "{path:?} at {next:?}");
            }
            assert_eq!(cell.get(), *path.last().unwrap());
        }
    }

    #[test]
    fn closed_is_terminal_and_no_state_skips_closing() {
        for s in ALL {
            assert!(!Closed.can_become(s));
            if s != Closing {
                assert!(!s.can_become(Closed), "{s:?} must pass through Closing");
            }
            assert!(!s.can_become(Opening));
        }
        assert!(!Open.can_become(Authenticating));
        assert!(!Errored.can_become(Open));
    }

    #[test]
    fn every_state_is_reachable_from_opening() {
        let mut seen = vec![Opening];
        let mut frontier = vec![Opening];
        while let Some(s) = frontier.pop() {
            for n in ALL {
                if s.can_become(n) && !seen.contains(&n) {
                    seen.push(n);
                    frontier.push(n);
                }
            }
        }
        assert_eq!(seen.len(), ALL.len());
    }
}
