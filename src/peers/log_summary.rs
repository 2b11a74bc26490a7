//! Keeps floods out of the log, pure: the first occurrence of each kind of event in a window is
//! logged in full, the rest only counted, and one line per kind says how many were left out
//! when the window ends. An attacker can make the node refuse thousands of connections a
//! second; the operator still sees what happened, in a few lines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one window lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(30);

/// A kind of event: what happened and why (both static, so the map is bounded by the code).
pub(crate) type Kind = (&'static str, &'static str);

#[derive(Debug)]
struct Window {
    ends: Instant,
    left_out: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct LogSummary {
    windows: HashMap<Kind, Window>,
}

impl LogSummary {
    /// An event of `kind` at `now`: whether to log it in full (the first of its window).
    pub(crate) fn note(&mut self, kind: Kind, now: Instant) -> bool {
        match self.windows.get_mut(&kind) {
            Some(window) if now < window.ends => {
                window.left_out += 1;
                false
            }
            _ => {
                self.windows.insert(
                    kind,
                    Window {
                        ends: now + WINDOW,
                        left_out: 0,
                    },
                );
                true
            }
        }
    }

    /// When [`LogSummary::due`] must next run, if any window is open.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.windows.values().map(|w| w.ends).min()
    }

    /// Closes the windows that ended by `now`; returns each kind with how many events were
    /// left out of the log, where any were.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(Kind, u64)> {
        let mut said = Vec::new();
        self.windows.retain(|kind, window| {
            if now < window.ends {
                return true;
            }
            if window.left_out > 0 {
                said.push((*kind, window.left_out));
            }
            false
        });
        said.sort();
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_window_is_logged_the_rest_counted_and_summarised_once() {
        let mut log = LogSummary::default();
        let t0 = Instant::now();
        let refused = ("inbound refused", "per_ip");
        let failed = ("handshake failed", "timeout");
        assert!(log.note(refused, t0));
        for i in 1..=1000 {
            assert!(!log.note(refused, t0 + Duration::from_millis(i)));
        }
        // Another kind has its own window.
        assert!(log.note(failed, t0 + Duration::from_secs(1)));
        assert_eq!(log.next_due(), Some(t0 + WINDOW));
        assert!(log.due(t0 + WINDOW - Duration::from_millis(1)).is_empty());
        assert_eq!(log.due(t0 + WINDOW), vec![(refused, 1000)]);
        // The quiet kind ends without a line.
        assert_eq!(log.due(t0 + WINDOW + Duration::from_secs(1)), vec![]);
        assert_eq!(log.next_due(), None);
        // After its window, a kind is logged in full again.
        assert!(log.note(refused, t0 + WINDOW + Duration::from_secs(2)));
    }
}
