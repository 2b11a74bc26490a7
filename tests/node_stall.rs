//! A `peerwire node` with a peer that completes the handshake and then never reads (as an
//! attacker with a fresh identity would): the node keeps broadcasting its input to its other
//! peer without pausing for the stalled one, and cuts the stalled one after `write_timeout`.
#![cfg(feature = "cli")]

mod common;

#[path = "common/child.rs"]
mod child;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_peerwire");
/// Lines the node broadcasts; each is about 60 KiB, so together they are far more than the
/// stalled peer's send queue (32 MiB) and socket buffers hold.
const LINES: usize = 1500;
const LINE_BYTES: usize = 60 * 1024;

/// The next stdout line of the node containing `needle`, within `SOON`.
fn line_with(
    lines: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    needle: &str,
) -> String {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!("no line with {needle:?}; node said: {seen:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_broadcasting_past_a_peer_that_never_reads() {
    let mut command = Command::new(BIN);
    command.args(["node", "--listen", "127.0.0.1:0"]);
    let mut program = child::spawn_collected(command, Stdio::piped());
    let mut seen = Vec::new();
    let addr: std::net::SocketAddr = line_with(&program.lines, &mut seen, "listening on:")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let (honest, mut honest_in) = node(config().network_id("peerwire")).await;
    soon("connect", honest.connect(addr)).await.unwrap();
    let stalled = RawPeer::connect(addr, "peerwire").await;
    line_with(&program.lines, &mut seen, &stalled.id().to_string());

    // Feed the node's stdin from a thread: each line is broadcast to both peers.
    let mut stdin = program.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..LINES {
            let mut line = format!("{i:06} ");
            line.push_str(&"x".repeat(LINE_BYTES));
            line.push('\n');
            if stdin.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
        // Keep stdin open: closing it would end the node.
        std::thread::sleep(Duration::from_secs(60));
    });

    let got = recv_n(&mut honest_in, LINES).await;
    for (i, (_, message)) in got.iter().enumerate() {
        assert!(
            message.starts_with(format!("{i:06} ").as_bytes()),
            "line {i} out of order"
        );
    }
    // Every line reached the honest peer while the stalled one was still connected: the
    // broadcasts did not wait for the stalled peer to be cut (10 s of write_timeout).
    let left: Vec<_> = std::iter::from_fn(|| program.lines.try_recv().ok()).collect();
    seen.extend(left);
    assert!(
        !seen.iter().any(|l| l.starts_with("peer left")),
        "a peer left before all lines arrived: {seen:#?}\nstderr: {}",
        program.stderr.lock().unwrap()
    );
    // And the stalled peer is cut after write_timeout.
    let gone = line_with(&program.lines, &mut seen, "peer left");
    assert!(gone.contains(&stalled.id().to_string()), "{gone}");
    assert!(gone.contains("write stalled"), "{gone}");
    let _ = program.child.kill();
    let _ = program.child.wait();
    drop(writer);
    soon("shutdown", honest.shutdown()).await;
}
