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
    /// Counts of windows that ended before `due` ran and were replaced by a new one (an event
    /// of the same kind came first): said by the next `due`, not lost. At most one per kind.
    ended: Vec<(Kind, u64)>,
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
                let old = self.windows.insert(
                    kind,
                    Window {
                        ends: now + WINDOW,
                        left_out: 0,
                    },
                );
                if let Some(old) = old.filter(|w| w.left_out > 0) {
                    match self.ended.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, n)) => *n += old.left_out,
                        None => self.ended.push((kind, old.left_out)),
                    }
                }
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
        let mut said = std::mem::take(&mut self.ended);
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

    #[test]
    fn an_event_at_the_end_of_its_window_opens_the_next_and_the_old_count_is_still_said() {
        let mut log = LogSummary::default();
        let t0 = Instant::now();
        let refused = ("inbound refused", "per_ip");
        assert!(log.note(refused, t0));
        assert!(!log.note(refused, t0 + Duration::from_secs(1)));
        assert!(!log.note(refused, t0 + WINDOW - Duration::from_millis(1)));
        // `due` has not run yet (a busy node): the event that ends the window is logged in
        // full, and the two left out before it are said at the next `due`, not lost.
        assert!(log.note(refused, t0 + WINDOW));
        assert!(!log.note(refused, t0 + WINDOW + Duration::from_secs(1)));
        assert_eq!(
            log.due(t0 + WINDOW + Duration::from_secs(2)),
            vec![(refused, 2)]
        );
        assert_eq!(log.due(t0 + 2 * WINDOW), vec![(refused, 1)]);
    }
}
