//! Prometheus text exposition of a node's counters: node-wide totals and one series per peer.
//! Pure: renders snapshots, so it is tested without a server.

use std::fmt::Write;

use std::collections::BTreeMap;

use crate::driver::shared::NetworkStats;
use crate::handshake::HandshakeError;
use crate::peers::registry::INBOUND_REFUSALS;
use crate::session::{ConnectionInfo, DisconnectReason};

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter family with one series per `reason`.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, u64)>,
) {
    family(out, name, "counter", help);
    for (reason, n) in series {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

/// Renders node stats and per-peer connection snapshots as Prometheus text (format 0.0.4).
///
/// Node-wide series never go down while the node runs (totals include connections that have
/// ended), every labelled reason is present from the start at 0, and per-peer series are
/// labelled by peer id only, so a reconnect from a new port continues the same series.
pub fn prometheus_text(stats: &NetworkStats, peers: &[ConnectionInfo]) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "peerwire_build_info",
        "gauge",
        "Always 1; the labels name the build.",
    );
    let _ = writeln!(
        out,
        "peerwire_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let t = &stats.totals;
    let node: [(&str, &str, &str, u64); 16] = [
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
        (
            "peerwire_messages_received_total",
            "counter",
            "Application messages received from all peers, past and present.",
            t.messages_in,
        ),
        (
            "peerwire_messages_sent_total",
            "counter",
            "Application messages written to all peers, past and present.",
            t.messages_out,
        ),
        (
            "peerwire_bytes_received_total",
            "counter",
            "Encoded application bytes received from all peers, past and present.",
            t.bytes_in,
        ),
        (
            "peerwire_bytes_sent_total",
            "counter",
            "Encoded application bytes written to all peers, past and present.",
            t.bytes_out,
        ),
        (
            "peerwire_misbehaviour_points_total",
            "counter",
            "Misbehaviour points charged to all peers, past and present.",
            t.misbehaviour_points,
        ),
        (
            "peerwire_write_stalls_total",
            "counter",
            "Connections closed because the peer stopped reading or acknowledging.",
            stats.stalled_disconnects,
        ),
        (
            "peerwire_identity_conflicts_total",
            "counter",
            "Signs of two nodes using one identity (see NetworkStats::identity_conflicts).",
            stats.identity_conflicts,
        ),
        (
            "peerwire_reassembly_bytes",
            "gauge",
            "Bytes of partly received large messages held, across connections.",
            stats.reassembly_bytes as u64,
        ),
        (
            "peerwire_reassembly_refused_total",
            "counter",
            "Fragments refused past max_reassembly_bytes (the rest of each message skipped).",
            stats.reassembly_refused,
        ),
        (
            "peerwire_broadcast_skipped_full_total",
            "counter",
            "Per-peer broadcast copies skipped because the queue was full.",
            stats.broadcast_skipped_full,
        ),
    ];
    for (name, kind, help, value) in node {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let dropped = [
        ("inbox_full", t.dropped_inbox_full),
        ("queue_full", t.dropped_queue_full),
        ("on_close", t.dropped_on_close),
        ("rate_limited", t.dropped_rate_limited),
        ("offline_full", stats.offline_full),
        ("self_inbox_full", stats.self_inbox_full),
        ("persistent_removed", stats.persistent_removed),
    ];
    labelled(
        &mut out,
        "peerwire_dropped_total",
        "Messages dropped, by reason (all peers, past and present).",
        dropped.into_iter(),
    );
    let reasons = |known: &[&'static str], seen: &BTreeMap<&'static str, u64>| {
        let mut all: BTreeMap<&'static str, u64> = known.iter().map(|r| (*r, 0)).collect();
        all.extend(seen.iter().map(|(r, n)| (*r, *n)));
        all
    };
    labelled(
        &mut out,
        "peerwire_disconnects_total",
        "Connections ended, by reason.",
        reasons(&DisconnectReason::LABELS, &stats.disconnects).into_iter(),
    );
    labelled(
        &mut out,
        "peerwire_handshake_failures_total",
        "Failed handshakes by reason.",
        reasons(&HandshakeError::LABELS, &stats.handshake_failures).into_iter(),
    );
    labelled(
        &mut out,
        "peerwire_inbound_refused_total",
        "Inbound connections refused by a limit, by reason.",
        reasons(&INBOUND_REFUSALS, &stats.inbound_refused).into_iter(),
    );
    family(
        &mut out,
        "peerwire_send_wait_expired_total",
        "counter",
        "Waiting sends that gave up on a peer after send_wait.",
    );
    let _ = writeln!(
        out,
        "peerwire_send_wait_expired_total {}",
        stats.send_wait_expired
    );

    type Field = fn(&ConnectionInfo) -> u64;
    let per_peer: [(&str, &str, &str, Field); 9] = [
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
    ];
    for (name, kind, help, field) in per_peer {
        family(&mut out, name, kind, help);
        for p in peers {
            let Some(id) = p.peer else { continue };
            let _ = writeln!(out, "{name}{{peer=\"{id}\"}} {}", field(p));
        }
    }
    family(
        &mut out,
        "peerwire_peer_rtt_seconds",
        "gauge",
        "Last measured round-trip time; absent until the first pong.",
    );
    for p in peers {
        if let (Some(id), Some(rtt)) = (p.peer, p.stats.rtt) {
            let _ = writeln!(
                out,
                "peerwire_peer_rtt_seconds{{peer=\"{id}\"}} {}",
                rtt.as_secs_f64()
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

    /// The labels of `values` are exactly `list`, each once: a reason missing from a list
    /// would have no series until first seen, and one listed twice would render twice.
    fn same_labels(list: &[&str], values: impl IntoIterator<Item = &'static str>) {
        let mut labels: Vec<&str> = values.into_iter().collect();
        let mut listed = list.to_vec();
        labels.sort_unstable();
        listed.sort_unstable();
        let mut distinct = listed.clone();
        distinct.dedup();
        assert_eq!(distinct, listed, "a label is listed twice");
        assert_eq!(labels, listed, "the list and the variants disagree");
    }

    #[test]
    fn every_disconnect_reason_is_listed_once() {
        use crate::codec::{CodecError, GoodbyeReason};
        let all = [
            DisconnectReason::Requested,
            DisconnectReason::Shutdown,
            DisconnectReason::RemoteGoodbye(GoodbyeReason::Banned),
            DisconnectReason::Eof,
            DisconnectReason::Io(std::io::ErrorKind::BrokenPipe),
            DisconnectReason::Codec(CodecError::NonceExhausted),
            DisconnectReason::Misbehaviour { score: 7 },
            DisconnectReason::WriteStalled,
            DisconnectReason::IdleTimeout,
            DisconnectReason::Duplicate,
            DisconnectReason::Banned,
            DisconnectReason::InboundLimit,
            DisconnectReason::Handshake("timeout"),
            DisconnectReason::InboxClosed,
        ];
        // A new variant stops this from compiling until it is added above.
        for reason in &all {
            match reason {
                DisconnectReason::Requested
                | DisconnectReason::Shutdown
                | DisconnectReason::RemoteGoodbye(_)
                | DisconnectReason::Eof
                | DisconnectReason::Io(_)
                | DisconnectReason::Codec(_)
                | DisconnectReason::Misbehaviour { .. }
                | DisconnectReason::WriteStalled
                | DisconnectReason::IdleTimeout
                | DisconnectReason::Duplicate
                | DisconnectReason::Banned
                | DisconnectReason::InboundLimit
                | DisconnectReason::Handshake(_)
                | DisconnectReason::InboxClosed => {}
            }
        }
        same_labels(&DisconnectReason::LABELS, all.iter().map(|r| r.label()));
    }

    #[test]
    fn every_handshake_error_is_listed_once() {
        let id = Keypair::from_secret_bytes(&[3; 32]).peer_id();
        let all = [
            HandshakeError::Noise(snow::Error::Decrypt),
            HandshakeError::MessageTooLarge { len: 2, max: 1 },
            HandshakeError::LowOrderKey,
            HandshakeError::BadPayload,
            HandshakeError::BadSignature,
            HandshakeError::VersionMismatch { ours: 1, theirs: 2 },
            HandshakeError::NetworkMismatch {
                ours: "a".into(),
                theirs: "b".into(),
            },
            HandshakeError::PeerMismatch {
                expected: id,
                actual: id,
            },
            HandshakeError::SelfConnection,
            HandshakeError::UnexpectedMessage,
            HandshakeError::BadParams(String::new()),
            HandshakeError::Timeout,
            HandshakeError::Closed,
            HandshakeError::Io(std::io::ErrorKind::ConnectionReset.into()),
        ];
        // A new variant stops this from compiling until it is added above.
        for error in &all {
            match error {
                HandshakeError::Noise(_)
                | HandshakeError::MessageTooLarge { .. }
                | HandshakeError::LowOrderKey
                | HandshakeError::BadPayload
                | HandshakeError::BadSignature
                | HandshakeError::VersionMismatch { .. }
                | HandshakeError::NetworkMismatch { .. }
                | HandshakeError::PeerMismatch { .. }
                | HandshakeError::SelfConnection
                | HandshakeError::UnexpectedMessage
                | HandshakeError::BadParams(_)
                | HandshakeError::Timeout
                | HandshakeError::Closed
                | HandshakeError::Io(_) => {}
            }
        }
        same_labels(&HandshakeError::LABELS, all.iter().map(|e| e.label()));
    }

    #[test]
    fn every_inbound_refusal_is_listed_once() {
        use crate::peers::registry::{MAX_INBOUND, Refusal, Taken};
        let refusals = [Refusal::BannedIp, Refusal::PerIp, Refusal::HandshakeRate];
        // A new variant stops this from compiling until it is added above.
        for refusal in refusals {
            match refusal {
                Refusal::BannedIp | Refusal::PerIp | Refusal::HandshakeRate => {}
            }
        }
        let labels = refusals.iter().map(|r| r.label());
        same_labels(
            &INBOUND_REFUSALS,
            labels.chain([Taken::EVICTED, MAX_INBOUND]),
        );
    }

    #[test]
    fn renders_totals_reasons_and_per_peer_series() {
        let mut stats = NetworkStats {
            peers: 1,
            bans: 2,
            ..NetworkStats::default()
        };
        stats.handshake_failures.insert("timeout", 3);
        stats.disconnects.insert("eof", 4);
        stats.totals.messages_in = 1000;
        stats.totals.dropped_inbox_full = 6;
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
            "peerwire_peer_messages_in_total{{peer=\"{id}\"}} 42\n"
        )));
        assert!(text.contains(&format!(
            "peerwire_peer_dropped_total{{peer=\"{id}\",reason=\"inbox_full\"}} 5\n"
        )));
        assert!(text.contains(&format!(
            "peerwire_peer_rtt_seconds{{peer=\"{id}\"}} 0.00025\n"
        )));
        // Per-peer series carry no address: a reconnect from a new port is the same series.
        assert!(!text.contains("addr="));
        assert!(text.contains("peerwire_build_info{version=\""));
        // Reasons never seen are there at 0; seen ones carry their count.
        assert!(text.contains("peerwire_handshake_failures_total{reason=\"bad_signature\"} 0\n"));
        assert!(text.contains("peerwire_disconnects_total{reason=\"write_stalled\"} 0\n"));
        assert!(text.contains("peerwire_disconnects_total{reason=\"eof\"} 4\n"));
        assert!(text.contains("peerwire_inbound_refused_total{reason=\"per_ip\"} 0\n"));
        assert!(text.contains("peerwire_dropped_total{reason=\"inbox_full\"} 6\n"));
        assert!(text.contains("peerwire_messages_received_total 1000\n"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
