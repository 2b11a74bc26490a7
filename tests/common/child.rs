//! A child process whose stdout lines and stderr are collected by threads, so it never blocks
//! on a full pipe. Shared by the program's end-to-end tests (`cli.rs`, `chaos.rs`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// A started child with its output being collected.
pub(crate) struct Collected {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    /// Stdout, line by line; disconnected once the child's stdout closes.
    pub(crate) lines: Receiver<String>,
    /// Everything written to stderr so far.
    pub(crate) stderr: Arc<Mutex<String>>,
    /// When each stdout line starting with `[` (a gossip publication), `member ` or `blob `
    /// (a registry or swarm event) was read, for latency measurements.
    #[allow(
        dead_code,
        reason = "read by the namespace tests only; the other crates share the module"
    )]
    pub(crate) stamped: Arc<Mutex<Vec<(Instant, String)>>>,
}

/// Starts `command` with piped stdout and stderr (stdin as the command set it, default piped).
pub(crate) fn spawn_collected(mut command: Command, stdin: Stdio) -> Collected {
    let mut child = command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    let stamped = Arc::new(Mutex::new(Vec::new()));
    let stamps = stamped.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with('[') || line.starts_with("member ") || line.starts_with("blob ") {
                stamps.lock().unwrap().push((Instant::now(), line.clone()));
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("piped stderr");
    let sink = stderr.clone();
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    Collected {
        stdin: child.stdin.take(),
        child,
        lines,
        stderr,
        stamped,
    }
}
