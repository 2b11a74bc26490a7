//! Liveness of one connection, pure: when to ping, when silence means the peer is gone, and
//! which pong measures a round trip. Times are microseconds since the connection opened, passed
//! in by the driver (whose read task records arrivals and whose connection task ticks).

use std::time::Duration;

/// What a liveness tick calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Nothing arrived for the idle timeout: close the connection.
    Idle,
    /// Send a ping carrying this nonce (ahead of queued data).
    Ping { nonce: u64 },
    /// Not open yet (or closing): nothing to do.
    Wait,
}

/// Decides a tick at `now`, when bytes last arrived at `last_rx` (0: never since opening).
/// Silence is judged even before the connection is open, so a peer that stops mid-handshake
/// admission is not kept forever; pings only go on open connections.
pub(crate) fn on_tick(now: u64, last_rx: u64, idle_timeout: Duration, open: bool) -> Tick {
    let idle = Duration::from_micros(now.saturating_sub(last_rx));
    if idle >= idle_timeout {
        Tick::Idle
    } else if open {
        // The nonce is the send time, so the pong alone yields the round trip; never 0, which
        // means "no ping outstanding".
        Tick::Ping { nonce: now.max(1) }
    } else {
        Tick::Wait
    }
}

/// The round trip a pong with `nonce` measures at `now`, if it answers the last ping sent
/// (`outstanding`); older or forged pongs measure nothing.
pub(crate) fn round_trip(outstanding: u64, nonce: u64, now: u64) -> Option<u64> {
    (nonce != 0 && nonce == outstanding).then(|| now.saturating_sub(nonce).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(20);

    #[test]
    fn silence_for_the_idle_timeout_closes_and_pings_go_only_on_open_connections() {
        let s = 1_000_000;
        assert_eq!(on_tick(5 * s, 0, IDLE, true), Tick::Ping { nonce: 5 * s });
        assert_eq!(on_tick(5 * s, 0, IDLE, false), Tick::Wait);
        assert_eq!(on_tick(20 * s, 0, IDLE, true), Tick::Idle);
        // Anything arriving resets the clock.
        assert_eq!(
            on_tick(30 * s, 15 * s, IDLE, true),
            Tick::Ping { nonce: 30 * s }
        );
        assert_eq!(
            on_tick(0, 0, IDLE, true),
            Tick::Ping { nonce: 1 },
            "never 0"
        );
    }

    #[test]
    fn only_the_pong_of_the_last_ping_measures_a_round_trip() {
        assert_eq!(round_trip(1_000, 1_000, 1_250), Some(250));
        assert_eq!(
            round_trip(2_000, 1_000, 2_100),
            None,
            "an older ping's pong"
        );
        assert_eq!(round_trip(0, 0, 10), None, "no ping outstanding");
        assert_eq!(round_trip(5, 5, 5), Some(1), "at least a microsecond");
    }
}
