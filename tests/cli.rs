//! The `peerwire` program end to end: the demo, and two chat nodes in separate processes.
#![cfg(feature = "cli")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic with the child's output is the failure report"
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generous bound for anything that should happen "soon"; the tests never assert speed.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The demo does real work in a debug build on a possibly busy machine.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);
/// For steps that move thousands of messages through durable storage (see `line_within`).
const BULK_TIMEOUT: Duration = Duration::from_secs(120);
const BIN: &str = env!("CARGO_BIN_EXE_peerwire");

#[path = "common/child.rs"]
mod child;

/// A running `peerwire` process whose stdout lines and stderr are collected by threads (so it
/// never blocks on a full pipe). Killed on drop if still running, so a failed assertion never
/// leaves a node behind.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts the program; with `keep_stdin` false its stdin is closed from the start.
    fn spawn(name: &'static str, args: &[&str], keep_stdin: bool) -> Self {
        let mut command = Command::new(BIN);
        command.args(args).env(
            "RUST_LOG",
            std::env::var("PW_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let stdin = if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let child::Collected {
            child,
            stdin,
            lines,
            stderr,
            ..
        } = child::spawn_collected(command, stdin);
        Self {
            name,
            stdin,
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        );
    }

    /// Waits for a stdout line (already seen or new) that satisfies `pred`.
    fn line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.line_within(what, TIMEOUT, pred)
    }

    /// [`Proc::line`] with a longer wait, for a step whose work grows with its input (ten
    /// thousand durable writes, say) and so with the machine's load: a bound on a hang, not a
    /// speed.
    fn line_within(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| pred(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no {what} within {} s", limit.as_secs()))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("stdout closed before {what}"))
                }
            }
        }
    }

    /// Waits for a stderr line (already written or new) that satisfies `pred`; stderr is
    /// collected by a thread, so log lines arrive a little after the event.
    fn stderr_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(line) = self.stderr.lock().unwrap().lines().find(|l| pred(l)) {
                return line.to_owned();
            }
            if Instant::now() > deadline {
                self.fail(&format!("no {what} on stderr within 20 s"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` stdout lines in all satisfy `pred` (for events that repeat, such as a
    /// peer joining again after a restart).
    fn lines_counted(&mut self, what: &str, n: usize, pred: impl Fn(&str) -> bool) {
        self.lines_counted_within(what, n, TIMEOUT, pred);
    }

    /// [`Proc::lines_counted`] with a longer wait (see [`Proc::line_within`]).
    fn lines_counted_within(
        &mut self,
        what: &str,
        n: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while self.seen.iter().filter(|l| pred(l)).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => self.fail(&format!(
                    "fewer than {n} lines of {what} within {} s",
                    limit.as_secs()
                )),
            }
        }
    }

    /// Waits until `peer` has joined `n` times in all.
    fn joined(&mut self, peer: &str, n: usize) {
        let prefix = format!("peer joined: {peer}");
        self.lines_counted(&prefix.clone(), n, |l| l.starts_with(&prefix));
    }

    /// The text after `prefix` on the first line starting with it.
    fn value(&mut self, prefix: &str) -> String {
        let line = self.line(prefix, |l| l.starts_with(prefix));
        line[prefix.len()..].trim().to_owned()
    }

    fn write_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to exit, then collects the rest of its stdout.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.fail(&format!("still running after {} s", timeout.as_secs()));
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which comes with the exit.
        while let Ok(line) = self.lines.recv_timeout(TIMEOUT) {
            self.seen.push(line);
        }
        status
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM")
    }

    /// Sends a signal (`-TERM`, `-HUP`, ...) and waits for the exit.
    fn signal(&mut self, which: &str) -> ExitStatus {
        let sent = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {which} failed");
        self.wait(TIMEOUT)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("peerwire-cli-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn demo_verifies_delivery_and_reports_throughput_and_latency() {
    let mut demo = Proc::spawn(
        "demo",
        &["demo", "--nodes", "3", "--messages", "5000"],
        false,
    );
    let status = demo.wait(DEMO_TIMEOUT);
    if !status.success() {
        demo.fail(&format!("exited with {status}"));
    }
    let send = demo.line("send throughput", |l| l.starts_with("send:"));
    assert!(send.contains("15000 messages") && send.contains("msgs/s") && send.contains("MiB/s"));
    let broadcast = demo.line("broadcast throughput", |l| l.starts_with("broadcast:"));
    assert!(broadcast.contains("msgs/s") && broadcast.contains("MiB/s"));
    let latency = demo.line("latency", |l| l.starts_with("latency:"));
    assert!(latency.contains("p50") && latency.contains("p99") && latency.contains(" us"));
    demo.line("verdict", |l| l.starts_with("ok: all"));
}

#[test]
fn demo_rejects_a_cluster_of_one() {
    let mut demo = Proc::spawn("demo", &["demo", "--nodes", "1"], false);
    assert!(!demo.wait(TIMEOUT).success());
}

#[test]
fn two_nodes_chat_and_shut_down_on_sigterm() {
    let dir = TempDir::new("chat");
    let a_key = dir.file("a.key");
    let b_key = dir.file("b.key");
    let node = |key: &str, peer: Option<&str>| {
        let mut args = vec!["node", "--listen", "127.0.0.1:0", "--key", key];
        args.extend(["--network-id", "t"]);
        if let Some(peer) = peer {
            args.extend(["--peer", peer]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let spawn = |name, args: &[String], keep_stdin| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(name, &args, keep_stdin)
    };

    // A never gets stdin: it must keep running after EOF.
    let mut a = spawn("node a", &node(&a_key, None), false);
    let a_id = a.value("peer id:");
    let a_addr = a.value("listening on:");
    assert!(a_addr.parse::<std::net::SocketAddr>().is_ok(), "{a_addr}");
    let mut b = spawn("node b", &node(&b_key, Some(&a_addr)), true);
    let b_id = b.value("peer id:");
    assert_ne!(a_id, b_id);
    a.line("B joining", |l| {
        l.starts_with(&format!("peer joined: {b_id}"))
    });
    b.line("A joining", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });

    b.write_line("hello from b");
    a.line("B's message", |l| l == format!("{b_id}: hello from b"));

    let status = a.terminate();
    if !status.success() {
        a.fail(&format!("exited with {status} on SIGTERM"));
    }
    b.line("A leaving", |l| {
        l.starts_with(&format!("peer left: {a_id}"))
    });
    let status = b.terminate();
    if !status.success() {
        b.fail(&format!("exited with {status} on SIGTERM"));
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    }
    let mut again = spawn("node a again", &node(&a_key, None), false);
    assert_eq!(
        again.value("peer id:"),
        a_id,
        "same key file, same identity"
    );
    assert!(again.terminate().success());
}

#[test]
fn persistent_peer_and_metrics_endpoint() {
    use std::io::{Read, Write};
    let dir = TempDir::new("metrics");
    let a_key = dir.file("a.key");
    let mut a = Proc::spawn(
        "node a",
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &a_key,
            "--network-id",
            "m",
        ],
        true,
    );
    let a_id = a.value("peer id:");
    let a_addr = a.value("listening on:");
    let persistent = format!("{a_id}@{a_addr}");
    let mut b = Proc::spawn(
        "node b",
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--network-id",
            "m",
            "--persistent",
            &persistent,
            "--metrics",
            "127.0.0.1:0",
        ],
        false,
    );
    let metrics_url = b.value("metrics on:");
    b.line("A joining", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });
    let addr = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let request = |method: &str, path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    let scrape = |path: &str| request("GET", path);
    // Idle clients that never send a request do not hold up a scrape.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let text = scrape("/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("peerwire_peers 1"), "{text}");
    assert!(text.contains(&format!("peerwire_peer_messages_in_total{{peer=\"{a_id}\"")));
    assert!(text.contains("peerwire_disconnects_total{reason=\"write_stalled\"} 0"));
    drop(idle);
    let head = request("HEAD", "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(!head.contains("peerwire_peers"), "HEAD has no body: {head}");
    assert!(scrape("/healthz").ends_with("ok\n"));
    assert!(scrape("/other").starts_with("HTTP/1.1 404"));
    assert!(request("POST", "/metrics").starts_with("HTTP/1.1 405"));
    // A's messages are counted node-wide, and the total keeps its value once A has left.
    for i in 0..3 {
        a.write_line(&format!("hello {i}"));
        b.line("a line from A", |l| l.contains(&format!("hello {i}")));
    }
    let received = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("peerwire_messages_received_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no received total in {text}"))
    };
    let before = received(&scrape("/metrics"));
    assert!(before >= 3, "{before}");
    assert!(a.terminate().success());
    b.line("A leaving", |l| {
        l.starts_with(&format!("peer left: {a_id}"))
    });
    let after = scrape("/metrics");
    assert!(after.contains("peerwire_peers 0"), "{after}");
    assert!(received(&after) >= before, "{after}");
    assert!(
        !after.contains(&format!("{{peer=\"{a_id}\"}}")),
        "A's own series are gone"
    );
    // A comes back with the same key on the same address: B redials it by itself.
    let mut a2 = Proc::spawn(
        "node a again",
        &[
            "node",
            "--listen",
            &a_addr,
            "--key",
            &a_key,
            "--network-id",
            "m",
        ],
        false,
    );
    assert_eq!(a2.value("peer id:"), a_id);
    b.line("A rejoining", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });
    assert!(a2.terminate().success());
    assert!(b.terminate().success());
}

/// `peerwire probe` on loopback: the receiver reports latency and per-channel throughput, both
/// ends exit 0, and a bad combination of options says what to do.
#[test]
fn probe_reports_latency_and_throughput_per_channel() {
    let mut receiver = Proc::spawn("receiver", &["probe", "--listen", "127.0.0.1:0"], false);
    let addr = receiver.value("probe listening on");
    let mut sender = Proc::spawn(
        "sender",
        &[
            "probe",
            "--connect",
            &addr,
            "--duration",
            "1",
            "--bulk-size",
            "65536",
        ],
        false,
    );
    let report = receiver.line("report", |l| l.starts_with("probe report:"));
    let field = |name: &str| -> f64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {report}"))
    };
    // One critical message every 10 ms for a second, plus the last one.
    assert!(field("critical_messages") >= 20.0, "{report}");
    assert!(
        field("critical_p99_ms") >= field("critical_p50_ms"),
        "{report}"
    );
    assert!(field("bulk_mbit_s") > 0.0, "{report}");
    assert!(sender.wait(TIMEOUT).success());
    assert!(receiver.wait(TIMEOUT).success());
    let mut both = Proc::spawn(
        "both",
        &["probe", "--listen", "127.0.0.1:0", "--connect", &addr],
        false,
    );
    assert!(!both.wait(TIMEOUT).success());
    assert!(
        both.stderr
            .lock()
            .unwrap()
            .contains("give exactly one of --listen ADDR (receiver) or --connect ADDR (sender)"),
        "{}",
        both.stderr.lock().unwrap()
    );
}

#[test]
fn keygen_writes_a_private_key_and_id_reads_it_back() {
    let dir = TempDir::new("keygen");
    let key = dir.file("node.key");
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let made = run(&["keygen", "--key", &key]);
    assert!(made.status.success(), "{made:?}");
    let id = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(id.parse::<peerwire::PeerId>().is_ok(), "{id}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
    }
    let shown = run(&["id", "--key", &key, "--listen", "127.0.0.1:7001"]);
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8(shown.stdout).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![id.clone(), format!("{id}@127.0.0.1:7001")]
    );
    // Never over an existing key, and no key is invented for `id`: each says what to do.
    let again = run(&["keygen", "--key", &key]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // A node refuses a key that others can read, and says how to fix it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = run(&["node", "--key", &key, "--listen", "127.0.0.1:0"]);
        assert!(!open.status.success(), "{open:?}");
        let said = String::from_utf8_lossy(&open.stderr);
        assert!(
            said.contains("can be read by other users") && said.contains("chmod 600"),
            "{said}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let missing = dir.file("missing.key");
    let none = run(&["id", "--key", &missing]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("peerwire keygen --key"));
    assert!(!std::path::Path::new(&missing).exists());
}

/// SIGINT, SIGTERM and SIGHUP each shut a node down gracefully: exit 0, the log names the
/// signal, and a connected peer hears a goodbye (not a cut connection).
#[test]
fn every_stop_signal_shuts_a_node_down_gracefully() {
    let mut b = Proc::spawn(
        "witness",
        &["node", "--listen", "127.0.0.1:0", "--network-id", "sig"],
        false,
    );
    let b_addr = b.value("listening on:");
    for (signal, name) in [("-INT", "SIGINT"), ("-TERM", "SIGTERM"), ("-HUP", "SIGHUP")] {
        let mut a = Proc::spawn(
            "node",
            &["node", "--network-id", "sig", "--peer", &b_addr],
            false,
        );
        let a_id = a.value("peer id:");
        b.line("a joining", |l| {
            l.starts_with(&format!("peer joined: {a_id}"))
        });
        let status = a.signal(signal);
        if !status.success() {
            a.fail(&format!("exited with {status} on {name}"));
        }
        // The log line names the signal.
        a.stderr_line(&format!("shutdown line naming {name}"), |l| {
            l.contains(name)
        });
        // The peer was told: a goodbye for shutdown, not an end of stream.
        let left = b.line("a leaving", |l| {
            l.starts_with(&format!("peer left: {a_id}"))
        });
        assert!(
            left.contains("goodbye") && left.contains("Shutdown"),
            "{name}: {left}"
        );
    }
    assert!(b.terminate().success());
}

#[test]
fn malformed_peer_flags_are_refused_at_start_with_the_expected_form() {
    for (flag, value, hint) in [
        ("--peer", "127.0.0.1", "has no port"),
        ("--peer", "foo:bar", "is not a port"),
        ("--persistent", "foo@127.0.0.1:7001", "not a valid peer id"),
        ("--persistent", "127.0.0.1:7001", "has no '@'"),
    ] {
        let out = Command::new(BIN)
            .args(["node", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains(hint) && stderr.contains("HOST:PORT"),
            "{flag} {value}: {stderr}"
        );
    }
}

#[test]
fn a_peer_flag_redials_after_the_peer_restarts() {
    let dir = TempDir::new("redial");
    let a_key = dir.file("a.key");
    let mut a = Proc::spawn(
        "node a",
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &a_key,
            "--network-id",
            "t",
        ],
        false,
    );
    let a_id = a.value("peer id:");
    let a_addr = a.value("listening on:");
    let mut b = Proc::spawn(
        "node b",
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--network-id",
            "t",
            "--peer",
            &a_addr,
        ],
        false,
    );
    b.joined(&a_id, 1);
    assert!(a.terminate().success());
    // A again, same key and address: B, which only has `--peer`, connects again by itself.
    let mut a2 = Proc::spawn(
        "node a again",
        &[
            "node",
            "--listen",
            &a_addr,
            "--key",
            &a_key,
            "--network-id",
            "t",
        ],
        false,
    );
    assert_eq!(a2.value("peer id:"), a_id);
    // A second "peer joined" line from B, after the first.
    b.joined(&a_id, 2);
    assert!(a2.terminate().success());
    assert!(b.terminate().success());
}

/// The README's three-node chat: A alone, B with `--peer A`, C with `--peer A --peer B`. Each
/// line typed reaches the two others, before and after B restarts and after A restarts (same
/// key, same address); nobody is told the peers again.
#[test]
fn a_three_node_chat_survives_a_restart_of_any_node() {
    let dir = TempDir::new("three");
    let key = |name: &str| dir.file(&format!("{name}.key"));
    let start = |name: &'static str, listen: &str, peers: &[&str]| {
        let key = key(name);
        let mut args = vec![
            "node",
            "--listen",
            listen,
            "--key",
            &key,
            "--network-id",
            "t",
        ];
        for peer in peers {
            args.extend(["--peer", peer]);
        }
        Proc::spawn(name, &args, true)
    };
    let mut a = start("a", "127.0.0.1:0", &[]);
    let a_id = a.value("peer id:");
    let a_addr = a.value("listening on:");
    let mut b = start("b", "127.0.0.1:0", &[&a_addr]);
    let b_id = b.value("peer id:");
    let b_addr = b.value("listening on:");
    let mut c = start("c", "127.0.0.1:0", &[&a_addr, &b_addr]);
    let c_id = c.value("peer id:");

    // Every node types a line; both others print it with the sender's id.
    let round = |nodes: &mut [(&mut Proc, &str)], n: usize| {
        for i in 0..nodes.len() {
            let text = format!("round {n} from {}", nodes[i].0.name);
            let from = nodes[i].1.to_owned();
            nodes[i].0.write_line(&text);
            for (j, (other, _)) in nodes.iter_mut().enumerate() {
                if j != i {
                    let expected = format!("{from}: {text}");
                    other.line(&expected.clone(), |l| l == expected);
                }
            }
        }
    };

    for (node, peers) in [
        (&mut a, [&b_id, &c_id]),
        (&mut b, [&a_id, &c_id]),
        (&mut c, [&a_id, &b_id]),
    ] {
        for peer in peers {
            node.joined(peer, 1);
        }
    }
    round(&mut [(&mut a, &a_id), (&mut b, &b_id), (&mut c, &c_id)], 1);

    // B restarts: it dials A itself, and C redials it.
    assert!(b.terminate().success());
    let mut b = start("b", &b_addr, &[&a_addr]);
    assert_eq!(b.value("peer id:"), b_id);
    a.joined(&b_id, 2);
    c.joined(&b_id, 2);
    b.joined(&a_id, 1);
    b.joined(&c_id, 1);
    round(&mut [(&mut a, &a_id), (&mut b, &b_id), (&mut c, &c_id)], 2);

    // A restarts with no `--peer` at all: B and C redial it.
    assert!(a.terminate().success());
    let mut a = start("a", &a_addr, &[]);
    assert_eq!(a.value("peer id:"), a_id);
    a.joined(&b_id, 1);
    a.joined(&c_id, 1);
    b.joined(&a_id, 2);
    c.joined(&a_id, 2);
    round(&mut [(&mut a, &a_id), (&mut b, &b_id), (&mut c, &c_id)], 3);

    for node in [&mut a, &mut b, &mut c] {
        let status = node.terminate();
        if !status.success() {
            node.fail(&format!("exited with {status} on SIGTERM"));
        }
    }
}

/// Starts a node with stdin open for commands; returns it with its id and address.
fn kv_node(name: &'static str, listen: &str, extra: &[&str]) -> (Proc, String, String) {
    let mut args = vec!["node", "--listen", listen, "--network-id", "kv"];
    args.extend_from_slice(extra);
    let mut node = Proc::spawn(name, &args, true);
    let id = node.value("peer id:");
    let addr = node.value("listening on:");
    (node, id, addr)
}

#[test]
fn get_asks_a_peer_which_answers_from_its_own_store() {
    let (mut a, a_id, a_addr) = kv_node("node a", "127.0.0.1:0", &[]);
    let (mut b, b_id, _) = kv_node("node b", "127.0.0.1:0", &["--peer", &a_addr]);
    a.line("b joining", |l| {
        l.starts_with(&format!("peer joined: {b_id}"))
    });
    // Both sides: A admits B a moment before B hears A's welcome.
    b.line("a joining", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });
    a.write_line("/put color deep blue");
    a.line("the put", |l| l == "stored color");
    b.write_line(&format!("/get {a_id} color"));
    b.line("the answer", |l| l == format!("{a_id} color = deep blue"));
    b.write_line(&format!("/get {a_id} shape"));
    b.line("not found", |l| l == format!("{a_id} shape not found"));
    // B's own store is separate: A asking B finds nothing.
    a.write_line(&format!("/get {b_id} color"));
    a.line("not found at b", |l| l == format!("{b_id} color not found"));
    // A peer that is not connected (here: itself) is an error, not a hang.
    b.write_line(&format!("/get {b_id} color"));
    b.line("the error", |l| {
        l == format!("{b_id} color: peer is not connected; connect first")
    });
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn replicate_delivers_puts_made_while_the_replica_was_down_once_it_is_back() {
    let dir = TempDir::new("replicate");
    let b_key = dir.file("b.key");
    let (mut b, b_id, b_addr) = kv_node("replica b", "127.0.0.1:0", &["--key", &b_key]);
    let (mut a, _a_id, _) = kv_node("node a", "127.0.0.1:0", &["--peer", &b_addr]);
    a.line("b joining", |l| {
        l.starts_with(&format!("peer joined: {b_id}"))
    });
    a.write_line(&format!("/replicate {b_id}"));
    a.line("replicating", |l| {
        l.starts_with("replicating every later /put")
    });
    a.write_line("/put k1 first");
    a.line("k1 acknowledged", |l| {
        l == format!("{b_id} acknowledged k1")
    });
    b.line("k1 arrived", |l| l.ends_with("replicated k1 here"));

    // B goes away; puts made meanwhile wait for it.
    assert!(b.terminate().success());
    a.line("b leaving", |l| {
        l.starts_with(&format!("peer left: {b_id}"))
    });
    a.write_line("/put k2 second");
    a.write_line("/put k3 third");
    a.line("k2 waiting", |l| l.starts_with("replication of k2 to"));

    // B again, same key and address: A redials it (--peer) and the waiting puts arrive, in
    // order, each acknowledged.
    let (mut b2, b2_id, _) = kv_node("replica b again", &b_addr, &["--key", &b_key]);
    assert_eq!(b2_id, b_id);
    a.line("k2 acknowledged", |l| {
        l == format!("{b_id} acknowledged k2")
    });
    a.line("k3 acknowledged", |l| {
        l == format!("{b_id} acknowledged k3")
    });
    let k2 = b2.line("k2 arrived", |l| l.ends_with("replicated k2 here"));
    let k3 = b2.line("k3 arrived", |l| l.ends_with("replicated k3 here"));
    let position = |line: &str| b2.seen.iter().position(|l| l == line).unwrap();
    assert!(position(&k2) < position(&k3), "k3 arrived before k2");
    // The replica answers from what it was sent.
    a.write_line(&format!("/get {b_id} k3"));
    a.line("k3 at b", |l| l == format!("{b_id} k3 = third"));
    assert!(a.terminate().success());
    assert!(b2.terminate().success());
}

#[test]
fn a_topic_crosses_a_relaying_node_and_shows_its_publisher() {
    let (mut a, a_id, a_addr) = kv_node("node a", "127.0.0.1:0", &[]);
    let (mut b, b_id, b_addr) = kv_node("relay b", "127.0.0.1:0", &["--peer", &a_addr]);
    let (mut c, c_id, _) = kv_node("node c", "127.0.0.1:0", &["--peer", &b_addr]);
    a.line("b joining", |l| {
        l.starts_with(&format!("peer joined: {b_id}"))
    });
    c.line("b joining", |l| {
        l.starts_with(&format!("peer joined: {b_id}"))
    });
    a.write_line("/sub doc");
    b.write_line("/relay doc");
    c.write_line("/sub doc");
    a.line("subscribed", |l| l == "subscribed to doc");
    b.line("relaying", |l| l == "relaying doc");
    c.line("subscribed", |l| l == "subscribed to doc");
    // A and C are not connected: C hears A through B. Publish until the topic's neighbours
    // know each other (joining opens nothing and buffers nothing).
    let mut heard = None;
    for i in 0..40 {
        a.write_line(&format!("/pub doc hello {i}"));
        let deadline = Instant::now() + Duration::from_millis(250);
        while Instant::now() < deadline && heard.is_none() {
            if let Ok(line) = c.lines.recv_timeout(Duration::from_millis(50)) {
                c.seen.push(line.clone());
                if line.starts_with("[doc] ") {
                    heard = Some(line);
                }
            }
        }
        if heard.is_some() {
            break;
        }
    }
    let heard = heard.unwrap_or_else(|| c.fail("no publication from a"));
    assert!(
        heard.starts_with(&format!("[doc] {a_id}: hello ")),
        "shows the publisher, not the relay: {heard}"
    );
    // And back.
    c.write_line("/pub doc and back");
    a.line("c's publication", |l| {
        l == format!("[doc] {c_id}: and back")
    });
    assert!(a.terminate().success());
    assert!(c.terminate().success());
    assert!(b.terminate().success());
    assert!(
        !b.seen.iter().any(|l| l.starts_with("[doc]")),
        "the relay printed the topic"
    );
}

#[test]
fn nodes_given_one_peer_find_each_other_and_list_them() {
    let (mut a, a_id, a_addr) = kv_node("seed a", "127.0.0.1:0", &["--discover"]);
    let (mut b, b_id, b_addr) =
        kv_node("node b", "127.0.0.1:0", &["--discover", "--peer", &a_addr]);
    let (mut c, c_id, c_addr) =
        kv_node("node c", "127.0.0.1:0", &["--discover", "--peer", &a_addr]);
    // B and C only know A; peer exchange tells each of the other, and one dials.
    let joined_c = format!("peer joined: {c_id}");
    b.line("c joining", |l| l.starts_with(&joined_c));
    let joined_b = format!("peer joined: {b_id}");
    c.line("b joining", |l| l.starts_with(&joined_b));
    c.write_line("/peers");
    c.line("a listed", |l| {
        l == format!("peer {a_id} {a_addr} connected")
    });
    c.line("b listed", |l| {
        l == format!("peer {b_id} {b_addr} connected")
    });
    b.write_line("/peers");
    b.line("c listed", |l| {
        l == format!("peer {c_id} {c_addr} connected")
    });
    for node in [&mut a, &mut b, &mut c] {
        assert!(node.terminate().success());
    }
}

/// Runs the program to completion with extra environment variables; returns exit code, stdout
/// and stderr.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(BIN);
    command.args(args);
    // The test's own environment must not leak settings into the child.
    for (key, _) in std::env::vars() {
        if key.starts_with("PEERWIRE_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `peerwire init` writes a file `node --config` reads back; then the file, `PEERWIRE_*`
/// variables and flags are merged in that order of precedence, for the program's options and
/// for library settings alike.
#[test]
fn config_file_environment_and_flags_take_precedence_in_that_order() {
    let dir = TempDir::new("config");
    let path = dir.file("node.toml");
    let (code, out, _) = run_with_env(&["init", "--config", &path], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("wrote"), "{out}");
    let (code, _, err) = run_with_env(&["init", "--config", &path], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    // The template reads back as the defaults.
    let (code, out, err) = run_with_env(&["node", "--config", &path, "--print-config"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("idle_timeout = \"20s\""), "{out}");
    assert!(out.contains("network_id = \"peerwire\""), "{out}");

    std::fs::write(
        &path,
        "[node]\nlisten = \"127.0.0.1:7301\"\nnetwork_id = \"from-file\"\n\
         peers = [\"127.0.0.1:7302\"]\n\
         [network]\nidle_timeout = \"30s\"\nping_interval = \"2s\"\nmax_message_size = 1000\n",
    )
    .unwrap();
    let print = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["node", "--config", &path, "--print-config"];
        args.extend_from_slice(extra);
        let (code, out, err) = run_with_env(&args, env);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let file_only = print(&[], &[]);
    for line in [
        "listen = \"127.0.0.1:7301\"",
        "network_id = \"from-file\"",
        "peers = [\"127.0.0.1:7302\"]",
        "idle_timeout = \"30s\"",
        "ping_interval = \"2s\"",
        "max_message_size = 1000",
    ] {
        assert!(
            file_only.lines().any(|l| l == line),
            "{line} in\n{file_only}"
        );
    }
    let env = [
        ("PEERWIRE_NETWORK_ID", "from-env"),
        ("PEERWIRE_IDLE_TIMEOUT", "40s"),
        ("PEERWIRE_LISTEN", "127.0.0.1:7303"),
    ];
    let with_env = print(&[], &env);
    assert!(with_env.contains("network_id = \"from-env\""), "{with_env}");
    assert!(with_env.contains("idle_timeout = \"40s\""), "{with_env}");
    assert!(
        with_env.contains("listen = \"127.0.0.1:7303\""),
        "{with_env}"
    );
    assert!(with_env.contains("ping_interval = \"2s\""), "{with_env}");
    let with_flags = print(
        &["--idle-timeout", "50", "--listen", "127.0.0.1:7304"],
        &env,
    );
    assert!(
        with_flags.contains("idle_timeout = \"50s\""),
        "{with_flags}"
    );
    assert!(
        with_flags.contains("listen = \"127.0.0.1:7304\""),
        "{with_flags}"
    );
    assert!(
        with_flags.contains("network_id = \"from-env\""),
        "{with_flags}"
    );

    // Mistakes name the file (or variable), the setting and what to do, and exit 2.
    std::fs::write(&path, "[network]\nidle_timeot = \"30s\"\n").unwrap();
    let (code, _, err) = run_with_env(&["node", "--config", &path], &[]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(
        err.contains("node.toml") && err.contains("idle_timeot"),
        "{err}"
    );
    assert!(err.contains("peerwire init"), "{err}");
    std::fs::write(&path, "[node]\nlisten = \"nowhere\"\n").unwrap();
    let (code, _, err) = run_with_env(&["node", "--config", &path], &[]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(
        err.contains("[node] listen") && err.contains("nowhere"),
        "{err}"
    );
    let (code, _, err) = run_with_env(
        &["node", "--print-config"],
        &[("PEERWIRE_WRITE_TIMEOUT", "forever")],
    );
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(
        err.contains("PEERWIRE_WRITE_TIMEOUT") && err.contains("forever"),
        "{err}"
    );
    let missing = dir.file("missing.toml");
    let (code, _, err) = run_with_env(&["node", "--config", &missing], &[]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(
        err.contains("missing.toml") && err.contains("peerwire init"),
        "{err}"
    );
}

/// `--log-format json` writes one JSON object per log line; `--log-level` filters, and a bad
/// filter is refused with the form expected.
#[test]
fn log_flags_choose_the_format_and_the_level() {
    // An unreachable --peer is logged at WARN as soon as the first dial fails.
    let mut json = Proc::spawn(
        "json logs",
        &["--log-format", "json", "node", "--peer", "127.0.0.1:1"],
        false,
    );
    json.value("listening on:");
    let line = json.stderr_line("JSON warning about the unreachable peer", |l| {
        l.contains("127.0.0.1:1")
    });
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(json.terminate().success());
    let (code, _, err) = run_with_env(&["--log-level", "peerwire=loud", "node"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--log-level") && err.contains("peerwire=debug"),
        "{err}"
    );
}

/// The refusing side speaks too: a node of another network dialing in is logged at WARN on the
/// node it dials (once per kind per half minute, however often it retries), with its address
/// and the reason.
#[test]
fn a_refused_handshake_is_logged_on_the_refusing_side() {
    let mut a = Proc::spawn(
        "node a",
        &["node", "--listen", "127.0.0.1:0", "--network-id", "left"],
        false,
    );
    let a_addr = a.value("listening on:");
    let mut b = Proc::spawn(
        "node b",
        &["node", "--network-id", "right", "--peer", &a_addr],
        false,
    );
    b.value("listening on:");
    let refused = |l: &str| l.contains("WARN") && l.contains("handshake failed");
    a.stderr_line("WARN line about the refused handshake", refused);
    let warned = |p: &Proc| {
        p.stderr
            .lock()
            .unwrap()
            .lines()
            .filter(|l| refused(l))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // B keeps retrying every second; A's log does not grow with it.
    thread::sleep(Duration::from_millis(2500));
    let lines = warned(&a);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("network_mismatch"), "{lines:?}");
    assert!(b.terminate().success());
    assert!(a.terminate().success());
}

/// A `--peer` that is the node's own address is refused once, with what to do, and not dialed
/// again (it would be the same node every second).
#[test]
fn a_peer_flag_naming_the_node_itself_is_refused_once() {
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut a = Proc::spawn(
        "node",
        &["node", "--listen", &listen, "--peer", &listen],
        false,
    );
    a.value("listening on:");
    a.stderr_line("message about dialing itself", |l| {
        l.contains("own address")
    });
    // Long enough for two more attempts at the old pace of one a second: none comes.
    thread::sleep(Duration::from_millis(2500));
    let err = a.stderr.lock().unwrap().clone();
    assert_eq!(err.matches("own address").count(), 1, "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(a.terminate().success());
}

/// A `--persistent` peer whose address answers with another key is no longer silent: the
/// dialing node logs the expected and the proven id at WARN.
#[test]
fn a_persistent_peer_with_the_wrong_key_is_logged() {
    let mut a = Proc::spawn(
        "node a",
        &["node", "--listen", "127.0.0.1:0", "--network-id", "k"],
        false,
    );
    let a_id = a.value("peer id:");
    let a_addr = a.value("listening on:");
    // Another node's id, at a's address.
    let mut other = Proc::spawn(
        "node c",
        &["node", "--listen", "127.0.0.1:0", "--network-id", "k"],
        false,
    );
    let other_id = other.value("peer id:");
    let mut b = Proc::spawn(
        "node b",
        &[
            "node",
            "--network-id",
            "k",
            "--persistent",
            &format!("{other_id}@{a_addr}"),
        ],
        false,
    );
    b.value("listening on:");
    let line = b.stderr_line("warning about the wrong key", |l| {
        l.contains("handshake failed")
    });
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&other_id) && line.contains(&a_id), "{line}");
    assert!(line.contains("peer_mismatch"), "{line}");
    for p in [&mut b, &mut other, &mut a] {
        assert!(p.terminate().success());
    }
}

/// The README's registry walk-through: a registry and three named nodes that were given no
/// peers. Each learns the others, connects to them, asks one by name, sees a state change and
/// a departure; a node with another compatibility value is refused and exits with both values.
#[test]
fn named_nodes_find_each_other_through_a_registry() {
    let mut registry = Proc::spawn(
        "registry",
        &[
            "registry",
            "--listen",
            "127.0.0.1:0",
            "--network-id",
            "t",
            "--heartbeat",
            "0.2",
        ],
        false,
    );
    let at = registry.value("registry:");
    let at = at.split_whitespace().next().unwrap().to_owned();
    let start = |name: &'static str| {
        let mut node = Proc::spawn(
            name,
            &[
                "node",
                "--listen",
                "127.0.0.1:0",
                "--network-id",
                "t",
                "--registry",
                &at,
                "--name",
                name,
            ],
            true,
        );
        let id = node.value("peer id:");
        (node, id)
    };
    let (mut a, a_id) = start("a");
    let (mut b, b_id) = start("b");
    let (mut c, c_id) = start("c");
    for (node, others) in [
        (&mut a, [(&b_id, "b"), (&c_id, "c")]),
        (&mut b, [(&a_id, "a"), (&c_id, "c")]),
        (&mut c, [(&a_id, "a"), (&b_id, "b")]),
    ] {
        for (id, name) in others {
            let listed = format!("member joined: {id} {name} ");
            node.line(&listed.clone(), |l| l.starts_with(&listed));
            // Connected to it too, though no --peer named it.
            node.joined(id, 1);
        }
    }

    // A query by name: c asks "a", which answers from its own store.
    a.write_line("/put color blue");
    a.line("the put", |l| l == "stored color");
    c.write_line("/get a color");
    let answer = format!("{a_id} color = blue");
    c.line("a's answer", |l| l == answer);

    // b's state changes: the others are told.
    b.write_line("/state schema v2");
    let updated = format!("member updated: {b_id} b ");
    a.line("b's new state", |l| {
        l.starts_with(&updated) && !l.ends_with("state -")
    });
    c.line("b's new state", |l| {
        l.starts_with(&updated) && !l.ends_with("state -")
    });

    // c stops: deregistered, so the others hear it from the registry.
    assert!(c.terminate().success());
    let left = format!("member left: {c_id}");
    a.line("c leaving the list", |l| l == left);
    b.line("c leaving the list", |l| l == left);
    registry.line("c leaving the list", |l| l == left);

    // Another compatibility value: refused, with both values, and the node exits.
    let mut odd = Proc::spawn(
        "odd",
        &[
            "node",
            "--network-id",
            "t",
            "--registry",
            &at,
            "--compat",
            "5",
        ],
        false,
    );
    let status = odd.wait(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{status}");
    let reason = odd.stderr_line("the refusal", |l| l.contains("refused this node"));
    assert!(
        reason.contains("compatibility value 0, this node 5"),
        "{reason}"
    );

    for node in [&mut a, &mut b, &mut registry] {
        let status = node.terminate();
        if !status.success() {
            node.fail(&format!("exited with {status} on SIGTERM"));
        }
    }
}

/// `--data-dir`: a node restarted with nothing but its data directory keeps its identity (the
/// key lives there), reconnects to the peers it knew (address book) and keeps replicating to
/// the replica it was given.
#[test]
fn a_node_restarted_with_its_data_directory_needs_no_peer_and_keeps_its_replica() {
    let dir = TempDir::new("data-dir");
    let data = dir.file("b");
    let (mut a, a_id, a_addr) = kv_node("node a", "127.0.0.1:0", &["--discover"]);
    let (mut b, b_id, _) = kv_node(
        "node b",
        "127.0.0.1:0",
        &["--discover", "--data-dir", &data, "--peer", &a_addr],
    );
    b.joined(&a_id, 1);
    b.write_line(&format!("/replicate {a_id}"));
    b.line("the replication", |l| {
        l.starts_with("replicating every later /put")
    });
    // Let one save of the address book pass (each second); SIGTERM saves it too.
    thread::sleep(Duration::from_millis(1200));
    assert!(b.terminate().success());
    a.lines_counted("b leaving", 1, |l| {
        l.starts_with(&format!("peer left: {b_id}"))
    });

    let (mut b, again, _) = kv_node(
        "node b again",
        "127.0.0.1:0",
        &["--discover", "--data-dir", &data],
    );
    assert_eq!(again, b_id, "the key kept in the data directory");
    b.joined(&a_id, 1);
    a.joined(&b_id, 2);
    let kept = format!("replicating every later /put to {a_id}");
    b.line("the kept replication", |l| l == kept);
    b.write_line("/put k v");
    let acked = format!("{a_id} acknowledged k");
    b.line("a's acknowledgement", |l| l == acked);
    assert!(b.terminate().success());
    assert!(a.terminate().success());
}

/// `--durable`: 10,000 lines typed into a node whose durable peer is down, the node SIGKILLed,
/// restarted from its data directory, then the peer started: the peer prints all 10,000, once
/// each, in order.
#[test]
fn a_durable_peer_gets_every_line_after_the_sender_is_sigkilled_and_restarted() {
    const LINES: usize = 10_000;
    let dir = TempDir::new("durable");
    let (a_key, b_key, data) = (dir.file("a.key"), dir.file("b.key"), dir.file("a-data"));
    let (code, b_id, _) = run_with_env(&["keygen", "--key", &b_key], &[]);
    assert_eq!(code, Some(0));
    let b_id = b_id.trim().to_owned();
    let b_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let durable = format!("{b_id}@{b_addr}");
    let a_args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--key",
        &a_key,
        "--network-id",
        "t",
        "--data-dir",
        &data,
        "--durable",
        &durable,
    ];
    let mut a = Proc::spawn("node a", &a_args, true);
    let a_id = a.value("peer id:");
    for i in 0..LINES {
        a.write_line(&format!("line {i}"));
    }
    // Lines are taken in order: once /peers answers, every line before it was accepted (and
    // so is on disk).
    a.write_line("/peers");
    let listed = format!("peer {b_id} {b_addr} known durable");
    a.line_within("the answer to /peers", BULK_TIMEOUT, |l| l == listed);
    let killed = a.signal("-KILL");
    assert!(!killed.success());

    let mut a = Proc::spawn("node a again", &a_args, false);
    assert_eq!(a.value("peer id:"), a_id);
    let mut b = Proc::spawn(
        "node b",
        &[
            "node",
            "--listen",
            &b_addr,
            "--key",
            &b_key,
            "--network-id",
            "t",
        ],
        false,
    );
    let prefix = format!("{a_id}: line ");
    b.lines_counted_within("a's lines", LINES, BULK_TIMEOUT, |l| l.starts_with(&prefix));
    let got: Vec<String> = b
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    if let Some(at) = (0..LINES).find(|&i| got.get(i) != Some(&i.to_string())) {
        b.fail(&format!("line {at} is {:?}", got.get(at)));
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    assert_eq!(
        b.seen.iter().filter(|l| l.starts_with(&prefix)).count(),
        LINES,
        "no line twice"
    );
}

#[test]
fn a_shared_file_is_pushed_to_every_peer_and_fetched_byte_for_byte() {
    let dir = TempDir::new("blobs");
    let source = dir.file("source.bin");
    // 3 MiB: twelve pieces, so receivers fetch pieces from each other.
    let content: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&source, &content).unwrap();
    let (mut a, a_id, a_addr) = kv_node("node a", "127.0.0.1:0", &[]);
    let (mut b, b_id, _) = kv_node("node b", "127.0.0.1:0", &["--peer", &a_addr]);
    let (mut c, c_id, _) = kv_node("node c", "127.0.0.1:0", &["--peer", &a_addr]);
    for id in [&b_id, &c_id] {
        a.line("a peer joining", |l| {
            l.starts_with(&format!("peer joined: {id}"))
        });
    }
    b.line("a joining b", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });
    c.line("a joining c", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });
    a.write_line(&format!("/share {source}"));
    let shared = a.line("the blob id", |l| l.starts_with("shared "));
    let blob = shared
        .split(" as ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    assert_eq!(shared, format!("shared {source} as {blob} (3145728 bytes)"));
    a.write_line(&format!("/push {blob}"));
    a.line("the push report", |l| {
        l.starts_with(&format!(
            "pushed {blob}: 2 peers hold it, 0 failed, 0 refused for bad pieces; "
        ))
    });
    for node in [&mut b, &mut c] {
        node.line("the offer", |l| {
            l == format!("receiving {blob} (3145728 bytes) pushed by {a_id}")
        });
        node.line("the blob", |l| l == format!("blob {blob} complete"));
    }
    // Held already: /fetch writes it out at once.
    let copy = dir.file("copy.bin");
    c.write_line(&format!("/fetch {blob} {copy}"));
    c.line("the fetch", |l| {
        l == format!("fetched {blob} to {copy} (3145728 bytes, verified)")
    });
    assert!(std::fs::read(&copy).unwrap() == content, "the copy differs");
    // A fourth node that was not there for the push fetches it from the others.
    let (mut d, _, _) = kv_node("node d", "127.0.0.1:0", &["--peer", &a_addr]);
    d.line("a joining d", |l| {
        l.starts_with(&format!("peer joined: {a_id}"))
    });
    let late = dir.file("late.bin");
    d.write_line(&format!("/fetch {blob} {late}"));
    d.line("the late fetch", |l| {
        l == format!("fetched {blob} to {late} (3145728 bytes, verified)")
    });
    assert!(
        std::fs::read(&late).unwrap() == content,
        "the late copy differs"
    );
    // Mistakes say what is expected.
    d.write_line("/fetch nonsense here");
    d.line("a bad id", |l| {
        l.starts_with("/fetch nonsense: a blob id is 64 hexadecimal digits")
    });
    d.write_line(&format!("/share {}", dir.file("missing.bin")));
    d.line("a missing file", |l| {
        l.starts_with("/share ") && l.contains("cannot read")
    });
    for mut node in [a, b, c, d] {
        assert!(node.terminate().success());
    }
}

/// `/durable ID@ADDR` typed into a running node with `--data-dir`: the peer is kept. Restarted
/// with nothing but its data directory, the node lists it, holds the lines typed while the
/// peer is down, and delivers them once the peer is back. `/unpersist` lets it go.
#[test]
fn a_peer_made_durable_at_runtime_is_kept_across_a_restart() {
    let dir = TempDir::new("runtime-durable");
    let (a_data, b_key) = (dir.file("a-data"), dir.file("b.key"));
    let b_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let b_args = ["--key", b_key.as_str()];
    let (mut b, b_id, _) = kv_node("node b", &b_addr, &b_args);
    let (mut a, a_id, _) = kv_node("node a", "127.0.0.1:0", &["--data-dir", &a_data]);
    a.write_line(&format!("/durable {b_id}@{b_addr}"));
    a.line("the answer to /durable", |l| {
        l.starts_with(&format!("/durable: {b_id} at")) && l.ends_with("kept in the data directory")
    });
    a.joined(&b_id, 1);
    a.write_line("/peers");
    let listed = format!("peer {b_id} {b_addr} connected durable");
    a.line("b listed as durable", |l| l == listed);
    assert!(a.terminate().success());
    assert!(b.terminate().success());

    let (mut a, again, _) = kv_node("node a again", "127.0.0.1:0", &["--data-dir", &a_data]);
    assert_eq!(again, a_id);
    for i in 0..3 {
        a.write_line(&format!("while away {i}"));
    }
    a.write_line("/peers");
    let listed = format!("peer {b_id} {b_addr} known durable");
    a.line("b listed from the data directory", |l| l == listed);
    let (mut b, _, _) = kv_node("node b again", &b_addr, &b_args);
    for i in 0..3 {
        let line = format!("{a_id}: while away {i}");
        b.line("a line typed while b was down", |l| l == line);
    }
    a.write_line(&format!("/unpersist {b_id}"));
    let gone = format!("/unpersist: {b_id} is no longer persistent");
    a.line("the answer to /unpersist", |l| l.starts_with(&gone));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
