//! Prometheus text exposition of a node's counters: node-wide totals and one series per peer.
//! Pure: renders snapshots, so it is tested without a server.

use std::fmt::Write;

use crate::driver::shared::NetworkStats;
use crate::session::ConnectionInfo;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders node stats and per-peer connection snapshots as Prometheus text (format 0.0.4).
pub fn prometheus_text(stats: &NetworkStats, peers: &[ConnectionInfo]) -> String {
    let mut out = String::with_capacity(4096);
    let node: [(&str, &str, &str, u64); 6] = [
        (
            "peerwire_peers",
            "gauge",
            "Peers with an open connection.",
            stats.peers as u64,
        ),
        (
            "peerwire_connections",
            "gauge",
            "Connections in any state.",
            stats.connections as u64,
        ),
        (
            "peerwire_inbound_accepted_total",
            "counter",
            "Inbound TCP connections accepted.",
            stats.inbound_accepted,
        ),
        (
            "peerwire_handshakes_ok_total",
            "counter",
            "Handshakes that proved a peer.",
            stats.handshakes_ok,
        ),
        (
            "peerwire_reconnects_total",
            "counter",
            "Redials of persistent peers and bootstrap addresses.",
            stats.reconnects,
        ),
        (
            "peerwire_bans_total",
            "counter",
            "Bans imposed.",
            stats.bans,
        ),
    ];
    for (name, kind, help, value) in node {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "peerwire_handshake_failures_total",
        "counter",
        "Failed handshakes by reason.",
    );
    for (reason, n) in &stats.handshake_failures {
        let _ = writeln!(
            out,
            "peerwire_handshake_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "peerwire_inbound_refused_total",
        "counter",
        "Inbound connections refused by a limit, by reason.",
    );
    for (reason, n) in &stats.inbound_refused {
        let _ = writeln!(
            out,
            "peerwire_inbound_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "peerwire_broadcast_skipped_full_total",
        "counter",
        "Per-peer broadcast copies skipped because the queue was full.",
    );
    let _ = writeln!(
        out,
        "peerwire_broadcast_skipped_full_total {}",
        stats.broadcast_skipped_full
    );
    for (name, help, value) in [
        (
            "peerwire_send_wait_expired_total",
            "Waiting sends that gave up on a peer after send_wait.",
            stats.send_wait_expired,
        ),
        (
            "peerwire_stalled_disconnects_total",
            "Connections closed because the peer stopped reading or acknowledging.",
            stats.stalled_disconnects,
        ),
        (
            "peerwire_offline_full_total",
            "Messages refused because a persistent peer's stream was full while it was away.",
            stats.offline_full,
        ),
        (
            "peerwire_self_inbox_full_total",
            "Messages to this node itself (deliver_to_self) dropped because its inbox was full.",
            stats.self_inbox_full,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }

    type Field = fn(&ConnectionInfo) -> u64;
    let per_peer: [(&str, &str, &str, Field); 10] = [
        (
            "peerwire_peer_messages_in_total",
            "counter",
            "Application messages received.",
            |p| p.stats.messages_in,
        ),
        (
            "peerwire_peer_bytes_in_total",
            "counter",
            "Encoded application bytes received.",
            |p| p.stats.bytes_in,
        ),
        (
            "peerwire_peer_messages_out_total",
            "counter",
            "Application messages written.",
            |p| p.stats.messages_out,
        ),
        (
            "peerwire_peer_bytes_out_total",
            "counter",
            "Encoded application bytes written.",
            |p| p.stats.bytes_out,
        ),
        (
            "peerwire_peer_queue_messages",
            "gauge",
            "Messages waiting in the send queue.",
            |p| p.stats.queued_messages as u64,
        ),
        (
            "peerwire_peer_queue_bytes",
            "gauge",
            "Bytes waiting in the send queue.",
            |p| p.stats.queued_bytes as u64,
        ),
        (
            "peerwire_peer_rejected_total",
            "counter",
            "Inbound messages rejected.",
            |p| p.stats.rejected,
        ),
        (
            "peerwire_peer_misbehaviour_points",
            "gauge",
            "Misbehaviour points charged.",
            |p| p.stats.misbehaviour,
        ),
        ("peerwire_peer_pings_total", "counter", "Pings sent.", |p| {
            p.stats.pings_sent
        }),
        (
            "peerwire_peer_rtt_microseconds",
            "gauge",
            "Last measured round-trip time (0 until known).",
            |p| {
                p.stats
                    .rtt
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            },
        ),
    ];
    for (name, kind, help, field) in per_peer {
        family(&mut out, name, kind, help);
        for p in peers {
            let Some(id) = p.peer else { continue };
            let _ = writeln!(
                out,
                "{name}{{peer=\"{id}\",addr=\"{}\"}} {}",
                p.addr,
                field(p)
            );
        }
    }
    family(
        &mut out,
        "peerwire_peer_dropped_total",
        "counter",
        "Messages dropped, by reason.",
    );
    for p in peers {
        let Some(id) = p.peer else { continue };
        for (reason, n) in [
            ("inbox_full", p.stats.dropped_inbox_full),
            ("queue_full", p.stats.dropped_queue_full),
            ("on_close", p.stats.dropped_on_close),
            ("rate_limited", p.stats.dropped_rate_limited),
        ] {
            let _ = writeln!(
                out,
                "peerwire_peer_dropped_total{{peer=\"{id}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    type ChannelField = fn(&crate::session::ChannelStats) -> u64;
    let per_channel: [(&str, &str, &str, ChannelField); 4] = [
        (
            "peerwire_channel_messages_in_total",
            "counter",
            "Application messages received, per peer and channel.",
            |c| c.messages_in,
        ),
        (
            "peerwire_channel_messages_out_total",
            "counter",
            "Application messages written, per peer and channel.",
            |c| c.messages_out,
        ),
        (
            "peerwire_channel_queue_messages",
            "gauge",
            "Messages waiting in the send queue, per peer and channel.",
            |c| c.queued_messages as u64,
        ),
        (
            "peerwire_channel_queue_bytes",
            "gauge",
            "Bytes waiting in the send queue, per peer and channel.",
            |c| c.queued_bytes as u64,
        ),
    ];
    for (name, kind, help, field) in per_channel {
        family(&mut out, name, kind, help);
        for p in peers {
            let Some(id) = p.peer else { continue };
            for c in &p.channels {
                let _ = writeln!(
                    out,
                    "{name}{{peer=\"{id}\",channel=\"{}\"}} {}",
                    c.channel,
                    field(c)
                );
            }
        }
    }
    family(
        &mut out,
        "peerwire_channel_dropped_total",
        "counter",
        "Messages dropped per peer and channel, by reason.",
    );
    for p in peers {
        let Some(id) = p.peer else { continue };
        for c in &p.channels {
            for (reason, n) in [
                ("inbox_full", c.dropped_inbox_full),
                ("queue_full", c.dropped_queue_full),
                ("rate_limited", c.dropped_rate_limited),
            ] {
                let _ = writeln!(
                    out,
                    "peerwire_channel_dropped_total{{peer=\"{id}\",channel=\"{}\",reason=\"{reason}\"}} {n}",
                    c.channel
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use crate::session::Direction;
    use crate::session::{PeerStats, SocketState};

    #[test]
    fn renders_totals_reasons_and_per_peer_series() {
        let mut stats = NetworkStats {
            peers: 1,
            bans: 2,
            ..NetworkStats::default()
        };
        stats.handshake_failures.insert("timeout", 3);
        let id = Keypair::generate().peer_id();
        let peer_stats = PeerStats {
            messages_in: 42,
            dropped_inbox_full: 5,
            rtt: Some(std::time::Duration::from_micros(250)),
            ..PeerStats::default()
        };
        let peer = ConnectionInfo {
            id: crate::session::ConnectionId(1),
            peer: Some(id),
            addr: "127.0.0.1:9".parse().unwrap(),
            listen_addr: None,
            direction: Direction::Inbound,
            state: SocketState::Open,
            stats: peer_stats,
            channels: vec![crate::session::ChannelStats {
                channel: 2,
                dropped_inbox_full: 7,
                ..Default::default()
            }],
        };
        let text = prometheus_text(&stats, &[peer]);
        assert!(text.contains("peerwire_peers 1\n"));
        assert!(text.contains(&format!(
            "peerwire_channel_dropped_total{{peer=\"{id}\",channel=\"2\",reason=\"inbox_full\"}} 7\n"
        )));
        assert!(text.contains("peerwire_bans_total 2\n"));
        assert!(text.contains("peerwire_handshake_failures_total{reason=\"timeout\"} 3\n"));
        assert!(text.contains(&format!(
            "peerwire_peer_messages_in_total{{peer=\"{id}\",addr=\"127.0.0.1:9\"}} 42\n"
        )));
        assert!(text.contains(&format!(
            "peerwire_peer_dropped_total{{peer=\"{id}\",reason=\"inbox_full\"}} 5\n"
        )));
        assert!(text.contains(&format!(
            "peerwire_peer_rtt_microseconds{{peer=\"{id}\",addr=\"127.0.0.1:9\"}} 250\n"
        )));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
