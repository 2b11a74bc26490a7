//! The request state machine driven by hand: two cores (client and server), frames passed
//! between them by the test, time moved by the test.

use super::*;

fn limits() -> Limits {
    Limits {
        max_outbound_per_peer: 4,
        max_inbound_per_peer: 2,
        max_inbound_total: 3,
        stream_idle_timeout: Duration::from_secs(1),
        window: 4,
        busy_allowance_per_sec: 2,
        budget: 3,
    }
}

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

const SECOND: Duration = Duration::from_secs(1);

/// The frames `outputs` sends, in order.
fn sent(outputs: &[Output]) -> Vec<(PeerId, Frame)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { peer, frame, .. } => Some((*peer, frame.clone())),
            _ => None,
        })
        .collect()
}

fn request(id: u64, stream: bool) -> Frame {
    Frame::Request {
        id,
        stream,
        idempotent: false,
        window: 4,
        body: Bytes::from_static(b"q"),
    }
}

#[test]
fn ids_are_unique_and_the_outbound_limit_refuses_at_once() {
    let mut core = Core::new(limits());
    let now = Instant::now();
    let ids: Vec<u64> = (0..4)
        .map(|_| core.start(peer(1), now, SECOND, false).unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(core.start(peer(1), now, SECOND, false), Err(Failure::Busy));
    // Another peer has its own limit.
    assert!(core.start(peer(2), now, SECOND, false).is_ok());
    // An answer frees a slot.
    let mut out = Vec::new();
    core.on_frame(
        peer(1),
        Frame::Response {
            id: 2,
            body: Bytes::from_static(b"a"),
        },
        now,
        &mut out,
    );
    assert_eq!(
        out,
        vec![Output::Complete {
            id: 2,
            result: Ok(Bytes::from_static(b"a"))
        }]
    );
    assert_eq!(core.start(peer(1), now, SECOND, false), Ok(6));
    assert_eq!(core.counts.busy_local, 1);
    assert_eq!(core.counts.responses_received, 1);
}

#[test]
fn a_request_times_out_at_its_deadline_and_the_server_is_told() {
    let mut core = Core::new(limits());
    let t0 = Instant::now();
    let id = core.start(peer(1), t0, SECOND, false).unwrap();
    assert_eq!(core.next_deadline(), Some(t0 + SECOND));
    let mut out = Vec::new();
    core.poll(t0 + SECOND - Duration::from_millis(1), &mut out);
    assert!(out.is_empty());
    core.poll(t0 + SECOND, &mut out);
    assert_eq!(
        out,
        vec![
            Output::Complete {
                id,
                result: Err(Failure::Timeout)
            },
            Output::Send {
                peer: peer(1),
                frame: Frame::Cancel { id },
                stream: false
            }
        ]
    );
    assert_eq!(core.next_deadline(), None);
    assert_eq!(core.waiting(), 0);
    assert_eq!(core.counts.timeouts, 1);
    // The answer arriving afterwards is late, not a violation.
    out.clear();
    core.on_frame(
        peer(1),
        Frame::Response {
            id,
            body: Bytes::new(),
        },
        t0,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!((core.counts.late_answers, core.counts.violations), (1, 0));
}

#[test]
fn cancelling_stops_the_server_handler_and_charges_nobody() {
    let (mut client, mut server) = (Core::new(limits()), Core::new(limits()));
    let now = Instant::now();
    let id = client.start(peer(2), now, SECOND, false).unwrap();
    let mut out = Vec::new();
    server.on_frame(peer(1), request(id, false), now, &mut out);
    assert!(matches!(out[..], [Output::Deliver { id: 1, .. }]));
    assert_eq!(server.serving(), 1);

    out.clear();
    client.cancel(id, &mut out);
    let frames = sent(&out);
    assert_eq!(frames, vec![(peer(2), Frame::Cancel { id })]);
    out.clear();
    server.on_frame(peer(1), frames[0].1.clone(), now, &mut out);
    assert_eq!(out, vec![Output::Cancelled { peer: peer(1), id }]);
    assert_eq!(server.serving(), 0);
    assert_eq!(server.counts.cancelled_by_peer, 1);
    // The handler's late answer is not sent.
    assert!(!server.finish_incoming(peer(1), id));
    assert_eq!(client.counts.violations + server.counts.violations, 0);
    assert_eq!(client.waiting(), 0);
}

#[test]
fn the_server_answers_busy_itself_past_its_limits_and_charges_only_floods() {
    let mut server = Core::new(limits());
    let now = Instant::now();
    let mut out = Vec::new();
    for id in 1..=2 {
        server.on_frame(peer(1), request(id, false), now, &mut out);
    }
    assert_eq!(server.serving(), 2);
    // Third from the same peer: Busy without reaching the application.
    out.clear();
    server.on_frame(peer(1), request(3, false), now, &mut out);
    assert_eq!(
        sent(&out),
        vec![(
            peer(1),
            Frame::Fail {
                id: 3,
                reason: FailReason::Busy,
                code: 0
            }
        )]
    );
    // Another peer fits under the total limit of 3, then the total is full too.
    out.clear();
    server.on_frame(peer(2), request(1, false), now, &mut out);
    assert!(matches!(out[..], [Output::Deliver { .. }]));
    out.clear();
    server.on_frame(peer(2), request(2, false), now, &mut out);
    assert!(matches!(
        sent(&out)[..],
        [(
            _,
            Frame::Fail {
                reason: FailReason::Busy,
                ..
            }
        )]
    ));
    // Peer 1's allowance is 2 busy answers per second: the second is free, the third charged.
    out.clear();
    server.on_frame(peer(1), request(4, false), now, &mut out);
    assert_eq!(server.counts.violations, 0);
    server.on_frame(peer(1), request(5, false), now, &mut out);
    assert_eq!(server.counts.violations, 1);
    // A second later the allowance is back.
    server.on_frame(peer(1), request(6, false), now + SECOND, &mut out);
    assert_eq!(server.counts.violations, 1);
    assert_eq!(server.counts.busy_sent, 5);
    // A handler done frees its place, for its peer and in the total.
    assert!(server.finish_incoming(peer(1), 1));
    out.clear();
    server.on_frame(peer(1), request(7, false), now + SECOND, &mut out);
    assert!(
        matches!(out[..], [Output::Deliver { id: 7, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_stream_is_held_to_its_credit_window_on_both_sides() {
    let (mut client, mut server) = (Core::new(limits()), Core::new(limits()));
    let t0 = Instant::now();
    let id = client.start(peer(2), t0, SECOND, true).unwrap();
    let mut out = Vec::new();
    server.on_frame(peer(1), request(id, true), t0, &mut out);
    // The server may send a window's worth, then waits.
    for _ in 0..4 {
        assert_eq!(server.spend(peer(1), id), Spend::Sent);
    }
    assert_eq!(server.spend(peer(1), id), Spend::Wait);
    // The client takes four chunks; each restarts the idle timer.
    out.clear();
    for n in 0..4u32 {
        let at = t0 + Duration::from_millis(u64::from(n) * 500);
        client.on_frame(
            peer(2),
            Frame::Chunk {
                id,
                body: Bytes::from(vec![n as u8]),
            },
            at,
            &mut out,
        );
    }
    assert_eq!(out.len(), 4);
    assert_eq!(
        client.next_deadline(),
        Some(t0 + Duration::from_millis(1500) + SECOND)
    );
    // Consuming half a window grants that much back.
    out.clear();
    client.consumed(id, 1, &mut out);
    assert!(out.is_empty());
    client.consumed(id, 1, &mut out);
    let frames = sent(&out);
    assert_eq!(frames, vec![(peer(2), Frame::Credit { id, chunks: 2 })]);
    out.clear();
    server.on_frame(peer(1), frames[0].1.clone(), t0, &mut out);
    assert_eq!(out, vec![Output::Credit { peer: peer(1), id }]);
    assert_eq!(server.spend(peer(1), id), Spend::Sent);
    assert_eq!(server.spend(peer(1), id), Spend::Sent);
    assert_eq!(server.spend(peer(1), id), Spend::Wait);
    // Two more chunks fit the new grant; a seventh breaks the window: the stream fails and
    // the server is charged.
    out.clear();
    for _ in 0..3 {
        client.on_frame(
            peer(2),
            Frame::Chunk {
                id,
                body: Bytes::new(),
            },
            t0,
            &mut out,
        );
    }
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Chunk { .. }))
            .count(),
        2
    );
    assert!(out.contains(&Output::StreamDone {
        id,
        result: Err(Failure::Protocol)
    }));
    assert_eq!(client.counts.violations, 1);
}

#[test]
fn a_stream_ends_on_its_end_frame_and_times_out_only_when_idle() {
    let mut client = Core::new(limits());
    let t0 = Instant::now();
    let done = client.start(peer(2), t0, SECOND, true).unwrap();
    let idle = client.start(peer(2), t0, SECOND, true).unwrap();
    let mut out = Vec::new();
    // Chunks keep `idle` alive past its first deadline...
    client.on_frame(
        peer(2),
        Frame::Chunk {
            id: idle,
            body: Bytes::new(),
        },
        t0 + SECOND / 2,
        &mut out,
    );
    client.on_frame(peer(2), Frame::End { id: done }, t0, &mut out);
    out.clear();
    client.poll(t0 + SECOND, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // ...until it goes quiet for the idle timeout.
    client.poll(t0 + SECOND / 2 + SECOND, &mut out);
    assert_eq!(
        out[0],
        Output::StreamDone {
            id: idle,
            result: Err(Failure::Timeout)
        }
    );
}

#[test]
fn a_closed_connection_fails_requests_at_once_but_parks_idempotent_ones_to_persistent_peers() {
    let mut client = Core::new(limits());
    let t0 = Instant::now();
    let plain = client.start(peer(2), t0, SECOND, false).unwrap();
    let idem = client.start(peer(2), t0, SECOND, false).unwrap();
    client.keep_for_resend(idem, Bytes::from_static(b"frame"));
    let other = client.start(peer(3), t0, SECOND, false).unwrap();
    let mut out = Vec::new();
    client.on_disconnected(peer(2), true, &mut out);
    assert_eq!(
        out,
        vec![Output::Complete {
            id: plain,
            result: Err(Failure::Disconnected)
        }]
    );
    // An answer on the dead connection is not taken for the parked request.
    out.clear();
    client.on_frame(
        peer(2),
        Frame::Response {
            id: idem,
            body: Bytes::new(),
        },
        t0,
        &mut out,
    );
    assert!(out.is_empty());
    client.on_connected(peer(2), &mut out);
    assert_eq!(
        out,
        vec![Output::Resend {
            peer: peer(2),
            id: idem,
            frame: Bytes::from_static(b"frame")
        }]
    );
    out.clear();
    client.on_frame(
        peer(2),
        Frame::Response {
            id: idem,
            body: Bytes::new(),
        },
        t0,
        &mut out,
    );
    assert!(matches!(out[..], [Output::Complete { result: Ok(_), .. }]));
    // To a peer that is not persistent, even an idempotent request fails.
    client.keep_for_resend(other, Bytes::from_static(b"frame"));
    out.clear();
    client.on_disconnected(peer(3), false, &mut out);
    assert!(matches!(
        out[..],
        [Output::Complete {
            result: Err(Failure::Disconnected),
            ..
        }]
    ));
}

#[test]
fn a_closed_connection_stops_every_handler_of_that_peer() {
    let mut server = Core::new(limits());
    let now = Instant::now();
    let mut out = Vec::new();
    server.on_frame(peer(1), request(1, false), now, &mut out);
    // Another peer's request, by an id peer 1 does not use.
    server.on_frame(peer(2), request(2, false), now, &mut out);
    out.clear();
    server.on_disconnected(peer(1), false, &mut out);
    assert_eq!(
        out,
        vec![Output::Cancelled {
            peer: peer(1),
            id: 1
        }]
    );
    assert_eq!(server.serving(), 1);
}

#[test]
fn answers_from_strangers_are_charged_until_the_budget_bans_once() {
    let mut client = Core::new(limits());
    let now = Instant::now();
    let id = client.start(peer(2), now, SECOND, false).unwrap();
    let mut out = Vec::new();
    // Peer 3 answers a request made to peer 2; then answers ids never issued.
    client.on_frame(
        peer(3),
        Frame::Response {
            id,
            body: Bytes::new(),
        },
        now,
        &mut out,
    );
    client.on_frame(peer(3), Frame::End { id: 99 }, now, &mut out);
    assert!(out.is_empty());
    client.on_frame(
        peer(3),
        Frame::Response {
            id: 100,
            body: Bytes::new(),
        },
        now,
        &mut out,
    );
    client.on_frame(
        peer(3),
        Frame::Response {
            id: 101,
            body: Bytes::new(),
        },
        now,
        &mut out,
    );
    assert_eq!(
        out,
        vec![Output::Ban {
            peer: peer(3),
            score: 3
        }]
    );
    // The real peer's answer still completes the request.
    out.clear();
    client.on_frame(
        peer(2),
        Frame::Response {
            id,
            body: Bytes::new(),
        },
        now,
        &mut out,
    );
    assert!(matches!(out[..], [Output::Complete { result: Ok(_), .. }]));
}

#[test]
fn a_duplicate_request_runs_one_handler() {
    let mut server = Core::new(limits());
    let now = Instant::now();
    let mut out = Vec::new();
    server.on_frame(peer(1), request(1, false), now, &mut out);
    server.on_frame(peer(1), request(1, false), now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (server.counts.duplicate_requests, server.counts.violations),
        (1, 0)
    );
}

fn answer(core: &mut Core, from: PeerId, frame: Frame) -> Vec<Output> {
    let mut out = Vec::new();
    core.on_frame(from, frame, Instant::now(), &mut out);
    out
}

#[test]
fn every_failure_the_server_sends_reaches_the_caller_as_that_failure() {
    let mut client = Core::new(Limits {
        max_outbound_per_peer: 8,
        ..limits()
    });
    let now = Instant::now();
    let cases = [
        (FailReason::Busy, 0, Failure::Busy),
        (FailReason::Omitted, 0, Failure::Omitted),
        (FailReason::Rejected, 7, Failure::Rejected(7)),
        (FailReason::Unavailable, 0, Failure::Unavailable),
        (FailReason::TooLarge, 0, Failure::TooLarge),
        (FailReason::Undecodable, 0, Failure::Undecodable),
    ];
    for (reason, code, failure) in cases {
        let id = client.start(peer(2), now, SECOND, false).unwrap();
        let out = answer(&mut client, peer(2), Frame::Fail { id, reason, code });
        assert_eq!(
            out,
            vec![Output::Complete {
                id,
                result: Err(failure)
            }]
        );
    }
    // A failed stream ends with the failure too.
    let id = client.start(peer(2), now, SECOND, true).unwrap();
    let reason = FailReason::Unavailable;
    let out = answer(
        &mut client,
        peer(2),
        Frame::Fail {
            id,
            reason,
            code: 0,
        },
    );
    assert_eq!(
        out,
        vec![Output::StreamDone {
            id,
            result: Err(Failure::Unavailable)
        }]
    );
    assert_eq!(client.counts.busy_received, 1);
    assert_eq!(client.counts.responses_received, 0);
    assert_eq!(client.counts.requests_sent, 7);
    assert_eq!(client.counts.violations, 0);
}

#[test]
fn an_answer_of_the_wrong_shape_fails_the_request_and_charges_the_server() {
    let mut client = Core::new(limits());
    let now = Instant::now();
    // A whole answer to a stream request.
    let stream = client.start(peer(2), now, SECOND, true).unwrap();
    let body = Bytes::from_static(b"a");
    let id = stream;
    let out = answer(&mut client, peer(2), Frame::Response { id, body });
    assert_eq!(
        out,
        vec![Output::StreamDone {
            id,
            result: Err(Failure::Protocol)
        }]
    );
    // A chunk, or an end, to a unary one.
    let unary = client.start(peer(2), now, SECOND, false).unwrap();
    let body = Bytes::new();
    let out = answer(&mut client, peer(2), Frame::Chunk { id: unary, body });
    assert_eq!(
        out,
        vec![Output::Complete {
            id: unary,
            result: Err(Failure::Protocol)
        }]
    );
    let unary = client.start(peer(2), now, SECOND, false).unwrap();
    let out = answer(&mut client, peer(2), Frame::End { id: unary });
    assert_eq!(
        out,
        vec![
            Output::Complete {
                id: unary,
                result: Err(Failure::Protocol)
            },
            Output::Ban {
                peer: peer(2),
                score: 3
            }
        ]
    );
    assert_eq!(client.counts.violations, 3);
    assert_eq!(client.counts.responses_received, 0);
    assert_eq!(client.waiting(), 0);
    // A stream that ends properly is a response, and ends with nothing more.
    let id = client.start(peer(3), now, SECOND, true).unwrap();
    let out = answer(&mut client, peer(3), Frame::End { id });
    assert_eq!(out, vec![Output::StreamDone { id, result: Ok(()) }]);
    assert_eq!(client.counts.responses_received, 1);
}

#[test]
fn a_server_grants_at_most_two_windows_and_credit_only_to_streams() {
    let mut server = Core::new(limits());
    // The client asks for a window of 100: the server holds it to two of its own (8).
    let asked = Frame::Request {
        id: 1,
        stream: true,
        idempotent: false,
        window: 100,
        body: Bytes::new(),
    };
    answer(&mut server, peer(1), asked);
    for _ in 0..8 {
        assert_eq!(server.spend(peer(1), 1), Spend::Sent);
    }
    assert_eq!(server.spend(peer(1), 1), Spend::Wait);
    // Credit past two windows is clamped and charged, but still wakes the sender.
    let out = answer(&mut server, peer(1), Frame::Credit { id: 1, chunks: 9 });
    assert_eq!(
        out,
        vec![Output::Credit {
            peer: peer(1),
            id: 1
        }]
    );
    assert_eq!(server.counts.violations, 1);
    for _ in 0..8 {
        assert_eq!(server.spend(peer(1), 1), Spend::Sent);
    }
    assert_eq!(server.spend(peer(1), 1), Spend::Wait);
    // Exactly two windows is allowed.
    let out = answer(&mut server, peer(1), Frame::Credit { id: 1, chunks: 8 });
    assert_eq!(
        out,
        vec![Output::Credit {
            peer: peer(1),
            id: 1
        }]
    );
    assert_eq!(server.counts.violations, 1);
    // Credit for a unary request is a violation; for one that has ended, nothing.
    answer(&mut server, peer(1), request(2, false));
    let out = answer(&mut server, peer(1), Frame::Credit { id: 2, chunks: 1 });
    assert!(out.is_empty());
    assert_eq!(server.counts.violations, 2);
    let out = answer(&mut server, peer(1), Frame::Credit { id: 9, chunks: 1 });
    assert!(out.is_empty());
    assert_eq!(server.counts.violations, 2);
    assert_eq!(server.spend(peer(1), 9), Spend::Gone);
    assert_eq!(server.counts.requests_served, 2);
}

#[test]
fn a_parked_request_sends_no_cancel_and_only_its_peer_may_answer_it() {
    let mut client = Core::new(limits());
    let t0 = Instant::now();
    let kept = client.start(peer(2), t0, SECOND, false).unwrap();
    client.keep_for_resend(kept, Bytes::from_static(b"frame"));
    let dropped = client.start(peer(2), t0, 2 * SECOND, false).unwrap();
    client.keep_for_resend(dropped, Bytes::from_static(b"frame"));
    let mut out = Vec::new();
    client.on_disconnected(peer(2), true, &mut out);
    assert!(out.is_empty(), "both wait for the reconnect");
    // The peer is gone: cancelling or timing out tells it nothing.
    client.cancel(dropped, &mut out);
    assert!(out.is_empty());
    assert_eq!(client.counts.cancelled_by_caller, 1);
    // An answer from another peer is a violation; from the parked peer, ignored.
    let body = Bytes::new();
    answer(&mut client, peer(3), Frame::Response { id: kept, body });
    assert_eq!(client.counts.violations, 1);
    let body = Bytes::new();
    answer(&mut client, peer(2), Frame::Response { id: kept, body });
    assert_eq!(client.counts.violations, 1);
    assert_eq!(client.waiting(), 1);
    client.poll(t0 + SECOND, &mut out);
    assert_eq!(
        out,
        vec![Output::Complete {
            id: kept,
            result: Err(Failure::Timeout)
        }]
    );
    // Nothing is left to resend.
    out.clear();
    client.on_connected(peer(2), &mut out);
    assert!(out.is_empty());
    assert_eq!(client.counts.resent_after_reconnect, 0);
}

#[test]
fn a_request_resent_after_a_reconnect_is_counted_and_goes_out_once() {
    let mut client = Core::new(limits());
    let t0 = Instant::now();
    let id = client.start(peer(2), t0, SECOND, false).unwrap();
    client.keep_for_resend(id, Bytes::from_static(b"frame"));
    let mut out = Vec::new();
    client.on_disconnected(peer(2), true, &mut out);
    client.on_connected(peer(2), &mut out);
    assert_eq!(out.len(), 1);
    client.on_connected(peer(2), &mut out);
    assert_eq!(out.len(), 1, "not parked any more: not resent again");
    assert_eq!(client.counts.resent_after_reconnect, 1);
    // Back on a live connection, a timeout tells the server again.
    out.clear();
    client.poll(t0 + SECOND, &mut out);
    assert_eq!(sent(&out), vec![(peer(2), Frame::Cancel { id })]);
}

#[test]
fn abandoned_requests_free_their_slot_silently_and_peers_lists_both_sides() {
    let mut core = Core::new(limits());
    let now = Instant::now();
    let ids: Vec<u64> = (0..4)
        .map(|_| core.start(peer(5), now, SECOND, false).unwrap())
        .collect();
    assert_eq!(core.start(peer(5), now, SECOND, false), Err(Failure::Busy));
    core.abandon(ids[0]);
    assert_eq!(core.waiting(), 3);
    assert!(core.start(peer(5), now, SECOND, false).is_ok());
    assert_eq!(core.next_deadline(), Some(now + SECOND));
    // Requests both ways: each peer once, in order.
    answer(&mut core, peer(7), request(1, false));
    answer(&mut core, peer(5), request(1, false));
    answer(&mut core, peer(3), request(1, false));
    assert_eq!(core.peers(), vec![peer(3), peer(5), peer(7)]);
    assert_eq!(core.serving(), 3);
    // Once every request of a peer is done, it is no longer listed.
    let mut out = Vec::new();
    core.on_disconnected(peer(5), false, &mut out);
    assert!(core.finish_incoming(peer(3), 1));
    assert_eq!(core.peers(), vec![peer(3), peer(7)]);
}

#[test]
fn with_no_busy_allowance_every_busy_answer_is_charged() {
    let mut server = Core::new(Limits {
        busy_allowance_per_sec: 0,
        max_inbound_per_peer: 1,
        ..limits()
    });
    answer(&mut server, peer(1), request(1, false));
    answer(&mut server, peer(1), request(2, false));
    assert_eq!(server.counts.violations, 1);
    let out = answer(&mut server, peer(1), request(3, false));
    assert_eq!(server.counts.violations, 2);
    assert_eq!(out.len(), 1, "a busy answer, no ban yet");
    // A frame that is not ours is charged like any violation: the third bans.
    let mut out = Vec::new();
    server.malformed(peer(1), &mut out);
    assert_eq!(
        out,
        vec![Output::Ban {
            peer: peer(1),
            score: 3
        }]
    );
}
