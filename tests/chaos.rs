//! Multi-host chaos: `peerwire node` processes, each in its own Linux network namespace, all
//! persistent peers of each other, on links with 100 ms delay and 5% loss each way: steady
//! traffic, a partition and heal, and a SIGKILL with restart. Every check is on what the nodes
//! print: each message exactly once, in order per sender.
//!
//! Topology per test: one namespace per node, addressed `10.213.S.N/8` on its `eth0` (`S`
//! differs per test). Where the kernel has netem (`sch_netem`), each `eth0` is a veth paired with
//! `vN` on a bridge (`br0`) in a namespace of its own, with `tc netem delay 100ms loss 5%` on
//! it; a partition sets the bridge port down. On a kernel without netem each `eth0` is a TUN
//! device of the userspace link emulator (`common/link_emulator.rs`), which delays every packet
//! by 100 ms and drops 5% of them at random, the same impairment, with a `note:` on stderr saying
//! so; a partition makes the emulator drop every packet to and from the node. The TUN devices
//! are created by the test process, down and without addresses, and moved into the node
//! namespaces before they are configured; no traffic can leave these namespaces. Names carry the
//! test process id, so parallel or repeated runs never collide; a guard kills the nodes and
//! deletes the namespaces on drop, also when a test panics, and namespaces left behind by a test
//! process that was killed are removed by a later run (once ten minutes old).
//!
//! The gossip test runs 32 nodes on 20 ms links without loss, each dialing a ring neighbour and
//! two random ones (degree about 6), all subscribed to one topic: every publication reaches
//! every node, with one publisher and with eight, the copies each node receives per
//! publication are counted from the nodes' `/stats`, large publications are fetched once, and
//! after 8 nodes are killed the survivors still get everything. It prints the machine's CPU
//! share during the measurement and says so when the two cores were saturated.
//!
//! The swarm test runs 9 nodes on 10 ms links, each node's egress capped at 200 Mbit/s (`tbf`),
//! and pushes 64 MiB blobs from one of them: to all 8 others undisturbed, with one SIGKILLed
//! half way, with one serving corrupt pieces, with one SIGKILLed half way and restarted with its
//! data directory (it carries on from the pieces it kept), then to 1 and to 4. It prints each round's time
//! beside the physical lower bound, the copies the pusher sent, duplicates and CPU, and asserts
//! what does not depend on the machine's speed (every receiver done, copies, duplicates, one bad
//! piece at most per honest receiver).
//!
//! Needs root, `ip` (iproute2, with `ip netns`), `tc` and, for the emulator, `/dev/net/tun`.
//! Without them each test prints `skipped: ...` to stderr and returns, unless
//! `PEERWIRE_REQUIRE_CHAOS` is set (CI sets it): then a skip fails the test. Run with `--nocapture` to
//! see the progress notes (measured round trips and the impairment's counters among them); set
//! `PEERWIRE_CHAOS_LOGS=DIR` to keep every node's full output in `DIR`.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_peerwire");

#[path = "common/child.rs"]
mod child;
#[path = "common/link_emulator.rs"]
mod link_emulator;
#[path = "common/skip.rs"]
mod skip;

use link_emulator::LinkEmulator;
/// Bound for any one awaited event ("soon"); generous, the tests never assert speed.
const WAIT: Duration = Duration::from_secs(60);
/// Prefix of every namespace these tests create (then the test process id).
const PREFIX: &str = "pwchaos";
const PORT: u16 = 7400;
const NETWORK_ID: &str = "chaos";
/// The impairment of every link, each way: one-way delay and random loss per packet.
const DELAY: Duration = Duration::from_millis(100);
const LOSS_PERCENT: u32 = 5;
/// Where a node serves its metrics when asked to, inside its own namespace.
const METRICS_PORT: u16 = 9100;
const METRICS_ADDR: &str = "0.0.0.0:9100";
/// If set, a directory where every node's full stdout and stderr are written at the end.
const LOGS_ENV: &str = "PEERWIRE_CHAOS_LOGS";

/// The gossip test measures copies that depend on nodes keeping up with 20 ms links: it runs
/// alone (write), the other tests together (read), so their load never skews its figures.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_machine() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes probe names unique among the tests of one process.
static PROBES: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// Environment

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces need it)".to_owned());
    }
    match Command::new("tc").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Some(format!("`tc -V` failed: {}", text(&out.stderr))),
        Err(e) => return Some(format!("`tc` not found ({e}); install iproute2")),
    }
    let probe = format!(
        "{PREFIX}-{}-probe{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("`ip netns add` does not work here: {e}"));
    }
    let _ = run("ip", &["netns", "del", &probe]);
    None
}

/// Whether the kernel has netem, tried on the loopback device of a scratch namespace.
fn netem_available() -> Result<(), String> {
    let probe = format!(
        "{PREFIX}-{}-probe{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    run("ip", &["netns", "add", &probe])?;
    let tried = run(
        "ip",
        &[
            "netns", "exec", &probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
            "1ms",
        ],
    );
    let _ = run("ip", &["netns", "del", &probe]);
    tried.map(|_| ())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// Runs a command to completion; the error names the command and carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(text(&out.stdout)),
        Ok(out) => Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        )),
        Err(e) => Err(format!("`{program}` cannot run: {e}")),
    }
}

/// Deletes namespaces of earlier runs whose test process no longer exists (it was killed before
/// its guards ran) and that are older than any run, killing the nodes still running in them.
fn remove_stale_namespaces() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.is_empty()
            || !pid.bytes().all(|b| b.is_ascii_digit())
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        // Also old: a live run in another PID namespace sharing /run/netns is never touched.
        let age = std::fs::metadata(format!("/run/netns/{name}"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_none_or(|age| age < Duration::from_secs(600)) {
            continue;
        }
        if let Ok(pids) = run("ip", &["netns", "pids", name]) {
            for node in pids.split_whitespace() {
                let _ = run("kill", &["-KILL", node]);
            }
        }
        let _ = run("ip", &["netns", "del", name]);
    }
}

// ---------------------------------------------------------------------------------------------
// One node process

/// A `peerwire node` running in a namespace; stdout lines and stderr are collected by threads
/// (so it never blocks on a full pipe). Killed on drop if still running.
struct Node {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// When each publication line was printed (read).
    stamped: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Node {
    fn spawn(name: String, namespace: &str, args: &[String]) -> Self {
        // `ip netns exec` enters the namespace and execs the program: the child is the node.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace, BIN])
            .args(args)
            .env("RUST_LOG", "info");
        let child::Collected {
            child,
            stdin,
            lines,
            stderr,
            stamped,
        } = child::spawn_collected(command, Stdio::piped());
        Self {
            name,
            stdin,
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stamped,
        }
    }

    /// Moves the lines printed so far into `seen`, without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits up to `timeout` for one more line; `Err` once the output has ended.
    fn next_line(&mut self, timeout: Duration) -> Result<(), String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line);
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => Err(format!(
                "{}: stdout closed (exited: {:?})",
                self.name,
                self.child.try_wait()
            )),
        }
    }

    fn dump(&self) -> String {
        const TAIL: usize = 16_000;
        let stdout = self.seen.join("\n");
        let stderr = self.stderr.lock().unwrap().clone();
        let tail = |s: &str| {
            if s.len() <= TAIL {
                s.to_owned()
            } else {
                let mut cut = s.len() - TAIL;
                while !s.is_char_boundary(cut) {
                    cut += 1;
                }
                format!("[... {cut} bytes ...]\n{}", &s[cut..])
            }
        };
        format!(
            "===== {} stdout ({} lines):\n{}\n===== {} stderr:\n{}\n",
            self.name,
            self.seen.len(),
            tail(&stdout),
            self.name,
            tail(&stderr)
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces, keys, nodes

/// How every link is impaired: the same in every test, whatever does it.
#[derive(Clone, Copy, PartialEq)]
enum Impairment {
    /// `tc netem delay 100ms loss 5%` on every node's `eth0`, a veth on the kernel bridge.
    Netem,
    /// This kernel has no netem: every node's `eth0` is a TUN device of the userspace link
    /// emulator, which applies the same delay and loss.
    Emulated,
}

impl Impairment {
    /// Netem if the kernel has it, else the emulator if TUN devices can be made; `Err` says why
    /// neither works. Probed once per test process.
    fn available() -> Result<Self, String> {
        static CHOICE: OnceLock<Result<Impairment, String>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match netem_available() {
                Ok(()) => Ok(Self::Netem),
                Err(why) if !std::path::Path::new("/dev/net/tun").exists() => Err(format!(
                    "neither netem ({why}) nor /dev/net/tun for the link emulator"
                )),
                Err(why) => {
                    eprintln!("note: no netem here ({why}); using the userspace link emulator");
                    Ok(Self::Emulated)
                }
            })
            .clone()
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Netem => "netem delay 100ms loss 5%",
            Self::Emulated => "userspace link emulator: 100 ms delay, 5% loss",
        }
    }
}

/// Namespaces, key files and node processes of one test; the guard that removes them.
struct Lab {
    tag: String,
    subnet: u8,
    bridge: String,
    namespaces: Vec<String>,
    dir: PathBuf,
    ids: Vec<String>,
    nodes: Vec<Option<Node>>,
    /// Processes that were killed or stopped, kept for the failure report.
    gone: Vec<Node>,
    started: Instant,
    impairment: Impairment,
    /// The userspace link emulator joining the nodes, when they are wired to it.
    emulator: Option<LinkEmulator>,
    /// Every link's one-way delay and random loss (percent).
    delay: Duration,
    loss: u32,
    /// Nodes per /24, when the lab spreads them over several (`None`: all in one).
    per_24: Option<usize>,
}

impl Lab {
    /// Builds `n` namespaces joined by impaired links (100 ms delay, 5% loss each way) and
    /// creates the node keys, or prints why the test is skipped and returns `None`.
    fn create(test: &str, subnet: u8, n: usize) -> Option<Self> {
        Self::create_with(test, subnet, n, DELAY, LOSS_PERCENT)
    }

    /// [`Lab::create`] with another impairment.
    fn create_with(test: &str, subnet: u8, n: usize, delay: Duration, loss: u32) -> Option<Self> {
        Self::create_spread(test, subnet, n, delay, loss, None)
    }

    /// [`Lab::create_with`] with `per_24` nodes in each /24 (`10.213.S.0/24`, `S + 1`, ...),
    /// as nodes on the Internet are, rather than all in one.
    fn create_spread(
        test: &str,
        subnet: u8,
        n: usize,
        delay: Duration,
        loss: u32,
        per_24: Option<usize>,
    ) -> Option<Self> {
        if let Some(reason) = unsupported() {
            skip::skip(&reason);
            return None;
        }
        let impairment = match Impairment::available() {
            Ok(how) => how,
            Err(reason) => {
                skip::skip(&reason);
                return None;
            }
        };
        remove_stale_namespaces();
        let tag = format!("{PREFIX}-{}-{test}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab = Self {
            bridge: format!("{tag}-br"),
            tag,
            subnet,
            namespaces: Vec::new(),
            dir,
            ids: Vec::new(),
            nodes: (0..n).map(|_| None).collect(),
            gone: Vec::new(),
            started: Instant::now(),
            impairment,
            emulator: None,
            delay,
            loss,
            per_24,
        };
        if impairment == Impairment::Emulated {
            lab.create_emulated(n);
            return Some(lab);
        }
        // Each namespace is recorded as soon as it exists, so the guard removes whatever was
        // made if a later step fails.
        let bridge = lab.bridge.clone();
        lab.sh("ip", &["netns", "add", &bridge]);
        lab.namespaces.push(bridge.clone());
        lab.sh("ip", &["-n", &bridge, "link", "set", "lo", "up"]);
        lab.sh(
            "ip",
            &["-n", &bridge, "link", "add", "br0", "type", "bridge"],
        );
        lab.sh("ip", &["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = lab.namespace(i);
            let port = lab.bridge_port(i);
            lab.sh("ip", &["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            lab.sh(
                "ip",
                &[
                    "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            lab.sh(
                "ip",
                &["-n", &bridge, "link", "set", &port, "master", "br0"],
            );
            lab.sh("ip", &["-n", &bridge, "link", "set", &port, "up"]);
            lab.configure_node(i);
        }
        lab.note(&format!(
            "{n} namespaces on bridge {bridge}, 10.213.{subnet}.0/24"
        ));
        lab.netem_all();
        Some(lab)
    }

    /// The nodes' namespaces, each with a TUN device from the link emulator as `eth0`.
    fn create_emulated(&mut self, n: usize) {
        // At most 15 bytes, and unique among the tests of all processes: pid, subnet, node.
        let devices: Vec<String> = (0..n)
            .map(|i| format!("pw{}s{}e{}", std::process::id(), self.subnet, i + 1))
            .collect();
        let addrs: Vec<Vec<[u8; 4]>> = (0..n).map(|i| vec![self.octets(i)]).collect();
        let emulator = LinkEmulator::start(&devices, &addrs, self.delay, self.loss)
            .unwrap_or_else(|e| self.fail(&format!("cannot start the link emulator: {e}")));
        self.emulator = Some(emulator);
        for (i, device) in devices.iter().enumerate() {
            let ns = self.namespace(i);
            self.sh("ip", &["netns", "add", &ns]);
            self.namespaces.push(ns.clone());
            self.sh("ip", &["link", "set", device, "netns", &ns]);
            self.sh("ip", &["-n", &ns, "link", "set", device, "name", "eth0"]);
            self.configure_node(i);
        }
        self.note(&format!(
            "{n} namespaces joined by the userspace link emulator ({} ms delay, {}% loss per \
             packet), {} to {}",
            self.delay.as_millis(),
            self.loss,
            self.ip(0),
            self.ip(n - 1)
        ));
    }

    /// Addresses node `i`'s `eth0` (already in its namespace), brings it and `lo` up, and
    /// creates the node's key.
    fn configure_node(&mut self, i: usize) {
        let ns = self.namespace(i);
        // A /8: every node of the lab is on the link, whichever /24 or /16 it is in.
        let cidr = format!("{}/8", self.ip(i));
        self.sh("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        self.sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        self.sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        let key = peerwire::Keypair::load_or_create(&self.key(i)).unwrap();
        self.ids.push(key.peer_id().to_string());
    }

    fn namespace(&self, i: usize) -> String {
        format!("{}-n{}", self.tag, i + 1)
    }

    fn bridge_port(&self, i: usize) -> String {
        format!("v{}", i + 1)
    }

    /// Node `i`'s address: `10.213.S.(i + 1)`, or with `per_24` set, that many nodes per /24,
    /// each /24 in a /16 of its own (`10.100.S.0/24`, `10.101.S.0/24`, ...), as nodes on the
    /// Internet are spread, rather than all in one.
    fn octets(&self, i: usize) -> [u8; 4] {
        match self.per_24 {
            Some(per) => [
                10,
                100 + u8::try_from(i / per).unwrap(),
                self.subnet,
                u8::try_from(i % per + 1).unwrap(),
            ],
            None => [10, 213, self.subnet, u8::try_from(i + 1).unwrap()],
        }
    }

    fn ip(&self, i: usize) -> String {
        let [a, b, c, d] = self.octets(i);
        format!("{a}.{b}.{c}.{d}")
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    fn key(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.key", i + 1))
    }

    fn note(&self, what: &str) {
        eprintln!(
            "[{} +{:.1}s] {what}",
            self.tag,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs a setup command; failing is fatal (the guard still cleans up).
    fn sh(&self, program: &str, args: &[&str]) {
        if let Err(e) = run(program, args) {
            self.fail(&e);
        }
    }

    /// Puts `tc netem delay 100ms loss 5%` on every node's interface.
    fn netem_all(&self) {
        let delay = format!("{}ms", self.delay.as_millis());
        let loss = format!("{}%", self.loss);
        for i in 0..self.nodes.len() {
            let ns = self.namespace(i);
            self.sh(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                    "delay", &delay, "loss", &loss,
                ],
            );
        }
        self.note(&format!(
            "netem delay {delay} loss {loss} on every node's eth0"
        ));
    }

    /// Cuts node `i` off the network (`up == false`) or reconnects it, far from the node (its
    /// own `eth0` stays up): its bridge port set down or up, or the emulator dropping every
    /// packet to and from it.
    fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        match (self.impairment, &self.emulator) {
            (Impairment::Emulated, Some(emulator)) => emulator.set_cut(i, !up),
            _ => {
                let port = self.bridge_port(i);
                self.sh("ip", &["-n", &self.bridge, "link", "set", &port, state]);
            }
        }
        self.note(&format!("n{}'s link {state}", i + 1));
    }

    /// The round trips node `i` measured to its peers (zero until known), read from its metrics
    /// endpoint (started with `--metrics` [`METRICS_ADDR`]) from inside its namespace.
    fn peer_rtts(&self, i: usize) -> Vec<(String, Duration)> {
        let fetch = format!(
            "exec 3<>/dev/tcp/{}/{METRICS_PORT} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 \
             && cat <&3",
            self.ip(i)
        );
        let text = run(
            "ip",
            &["netns", "exec", &self.namespace(i), "bash", "-c", &fetch],
        )
        .unwrap_or_else(|e| self.fail(&format!("cannot read n{}'s metrics: {e}", i + 1)));
        // peerwire_peer_rtt_seconds{peer="ID"} SECONDS
        text.lines()
            .filter_map(|l| l.strip_prefix("peerwire_peer_rtt_seconds{peer=\""))
            .filter_map(|l| {
                let (peer, rest) = l.split_once('"')?;
                let seconds = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((peer.to_owned(), Duration::try_from_secs_f64(seconds).ok()?))
            })
            .collect()
    }

    /// What the impairment did, for the notes: the emulator's counters, or netem's drop
    /// counters on every node's interface.
    fn impairment_report(&self) -> String {
        if let Some(emulator) = &self.emulator {
            return emulator.counters.summary();
        }
        let per_node: Vec<String> = (0..self.nodes.len())
            .map(|i| {
                let ns = self.namespace(i);
                run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "-s", "qdisc", "show", "dev", "eth0",
                    ],
                )
                .map(|s| {
                    s.lines()
                        .filter(|l| l.contains("dropped"))
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default()
            })
            .collect();
        per_node.join(" | ")
    }

    /// The command line of node `i`: its address and key, every other node as persistent.
    fn args(&self, i: usize, persistent: bool, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "node",
            "--listen",
            &self.addr(i),
            "--key",
            self.key(i).to_str().unwrap(),
            "--network-id",
            NETWORK_ID,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if persistent {
            for j in (0..self.nodes.len()).filter(|&j| j != i) {
                args.push("--persistent".to_owned());
                args.push(format!("{}@{}", self.ids[j], self.addr(j)));
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Starts node `i` (again, after a kill) and checks it runs with its expected identity.
    fn start(&mut self, i: usize, persistent: bool, extra: &[&str]) {
        let args = self.args(i, persistent, extra);
        self.start_with(i, args);
    }

    /// [`Lab::start`] with the whole command line given (another subcommand, or flags the
    /// test sets in the environment's place).
    fn start_with(&mut self, i: usize, args: Vec<String>) {
        assert!(self.nodes[i].is_none(), "node {} already running", i + 1);
        let prefix = format!("n{} ", i + 1);
        let earlier = self
            .gone
            .iter()
            .filter(|n| n.name.starts_with(&prefix))
            .count();
        let name = format!("n{} (process {})", i + 1, earlier + 1);
        let node = Node::spawn(name, &self.namespace(i), &args);
        self.nodes[i] = Some(node);
        let id = self.ids[i].clone();
        self.wait_line(i, 0, &format!("its peer id {id}"), |l| {
            l == format!("peer id: {id}")
        });
    }

    fn start_all(&mut self, extra: &[&str]) {
        for i in 0..self.nodes.len() {
            self.start(i, true, extra);
        }
    }

    fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("node {} is not running", i + 1))
    }

    /// Number of lines node `i` has printed so far: a position to wait from (0 while it is not
    /// running: its next process starts from nothing).
    fn mark(&mut self, i: usize) -> usize {
        self.nodes[i].as_mut().map_or(0, |node| {
            node.drain();
            node.seen.len()
        })
    }

    /// Waits until `done` holds for node `i`'s output from line `from` on.
    fn wait_until(&mut self, i: usize, what: &str, from: usize, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        let error = loop {
            let node = self.node(i);
            node.drain();
            if done(&node.seen[from.min(node.seen.len())..]) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break format!("n{}: no {what} within {} s", i + 1, WAIT.as_secs());
            }
            if let Err(e) = node.next_line(left.min(Duration::from_millis(200))) {
                break format!("{e} while waiting for {what}");
            }
        };
        self.fail(&error);
    }

    fn wait_line(&mut self, i: usize, from: usize, what: &str, pred: impl Fn(&str) -> bool) {
        self.wait_until(i, what, from, |lines| lines.iter().any(|l| pred(l)));
    }

    /// Waits until node `i` printed `peer joined: <node j>` after line `from`; returns the line.
    fn wait_joined(&mut self, i: usize, j: usize, from: usize) -> String {
        let prefix = format!("peer joined: {} ", self.ids[j]);
        self.wait_line(i, from, &format!("join of n{}", j + 1), |l| {
            l.starts_with(&prefix)
        });
        let node = self.node(i);
        node.seen[from..]
            .iter()
            .find(|l| l.starts_with(&prefix))
            .cloned()
            .unwrap()
    }

    /// Waits until node `i` holds no connection to node `j`: the last join or leave it printed
    /// about `j` is a leave. (Not "a leave after some mark": a connection replaced in a
    /// simultaneous dial just before a cut prints its leave early, and no later one comes.)
    fn wait_left(&mut self, i: usize, j: usize) {
        let joined = format!("peer joined: {} ", self.ids[j]);
        let left = format!("peer left: {} ", self.ids[j]);
        self.wait_until(i, &format!("departure of n{}", j + 1), 0, |lines| {
            last_about(lines, &joined, &left) == Some(false)
        });
    }

    /// Every running node holds a connection to every other running node: the last join or
    /// leave it printed about each is a join.
    fn wait_mesh(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        for &i in &running {
            for &j in running.iter().filter(|&&j| j != i) {
                let joined = format!("peer joined: {} ", self.ids[j]);
                let left = format!("peer left: {} ", self.ids[j]);
                self.wait_until(i, &format!("connection to n{}", j + 1), 0, |lines| {
                    last_about(lines, &joined, &left) == Some(true)
                });
            }
        }
        self.note("full mesh connected");
    }

    /// Writes one line to node `i`'s stdin (which broadcasts it).
    fn send(&mut self, i: usize, line: &str) {
        let node = self.node(i);
        let stdin = node.stdin.as_mut().unwrap();
        let result = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        if let Err(e) = result {
            self.fail(&format!("n{}: cannot write to stdin: {e}", i + 1));
        }
    }

    /// Node `i` sends `count` numbered lines `n<i> <phase><k>` and returns their texts.
    fn send_batch(&mut self, i: usize, phase: &str, range: std::ops::Range<usize>) -> Vec<String> {
        let texts: Vec<String> = range.map(|k| format!("n{} {phase}{k}", i + 1)).collect();
        for text in &texts {
            self.send(i, text);
        }
        texts
    }

    /// The messages node `i` printed, by sender id, in order.
    fn received(&mut self, i: usize) -> HashMap<String, Vec<String>> {
        let mut by_sender: HashMap<String, Vec<String>> = HashMap::new();
        let ids = self.ids.clone();
        for line in &self.node(i).seen {
            if let Some((from, message)) = line.split_once(": ") {
                if ids.iter().any(|id| id == from) {
                    by_sender
                        .entry(from.to_owned())
                        .or_default()
                        .push(message.to_owned());
                }
            }
        }
        by_sender
    }

    /// Waits until node `i` has printed the last message of every sender in `expected`
    /// (`(sender index, texts)`).
    fn wait_delivered(&mut self, i: usize, expected: &[(usize, Vec<String>)]) {
        for (sender, texts) in expected {
            let Some(last) = texts.last() else { continue };
            let line = format!("{}: {last}", self.ids[*sender]);
            self.wait_line(
                i,
                0,
                &format!("message {last:?} from n{}", sender + 1),
                |l| l == line,
            );
        }
    }

    /// Checks that node `i` printed, from each sender, exactly a suffix of `expected` that
    /// starts at or before index `must_start_by`: in order, no gap, no duplicate. With
    /// `must_start_by` 0 it must be all of them.
    fn check(&mut self, i: usize, expected: &[(usize, Vec<String>, usize)]) {
        let received = self.received(i);
        let mut problems = Vec::new();
        for (sender, texts, must_start_by) in expected {
            let got = received
                .get(&self.ids[*sender])
                .cloned()
                .unwrap_or_default();
            let ok = got.len() <= texts.len()
                && texts.len() - got.len() <= *must_start_by
                && texts[texts.len() - got.len()..] == got[..];
            if !ok {
                problems.push(format!(
                    "from n{}: expected {} (or a suffix starting by #{must_start_by}) of \
                     {:?} .. {:?}, got {} lines: {}",
                    sender + 1,
                    texts.len(),
                    texts.first(),
                    texts.last(),
                    got.len(),
                    describe_mismatch(texts, &got)
                ));
            }
        }
        if !problems.is_empty() {
            self.fail(&format!(
                "n{} received wrongly:\n{}",
                i + 1,
                problems.join("\n")
            ));
        }
    }

    /// Caps every node's egress at `mbit` Mbit/s: `tbf` on its `eth0` (with the emulator, whose
    /// devices also get a 65,000-byte MTU, so that the userspace emulator moves about 40 times
    /// fewer packets for the same bytes and never becomes the bottleneck itself), or netem's
    /// own rate where the kernel has netem.
    fn cap_egress(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        for i in 0..self.nodes.len() {
            let ns = self.namespace(i);
            match self.impairment {
                Impairment::Emulated => {
                    self.sh("ip", &["-n", &ns, "link", "set", "eth0", "mtu", "65000"]);
                    self.sh(
                        "ip",
                        &[
                            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                            "tbf", "rate", &rate, "burst", "256kb", "latency", "50ms",
                        ],
                    );
                }
                Impairment::Netem => {
                    let delay = format!("{}ms", self.delay.as_millis());
                    self.sh(
                        "ip",
                        &[
                            "netns", "exec", &ns, "tc", "qdisc", "change", "dev", "eth0", "root",
                            "netem", "delay", &delay, "rate", &rate,
                        ],
                    );
                }
            }
        }
        self.note(&format!("every node's egress capped at {rate}"));
    }

    /// SIGKILLs node `i`.
    fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().unwrap();
        let _ = node.child.kill();
        let _ = node.child.wait();
        node.drain();
        self.gone.push(node);
    }

    /// SIGTERMs every running node, waits for every exit (each must succeed) and collects the
    /// rest of the output; the nodes stay in place for `check`.
    fn stop_all(&mut self) {
        for node in self.nodes.iter().flatten() {
            let _ = run("kill", &["-TERM", &node.child.id().to_string()]);
        }
        let mut failures = Vec::new();
        for node in self.nodes.iter_mut().flatten() {
            let deadline = Instant::now() + WAIT;
            let status = loop {
                if let Some(status) = node.child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                thread::sleep(Duration::from_millis(20));
            };
            while let Ok(line) = node.lines.recv_timeout(Duration::from_secs(5)) {
                node.seen.push(line);
            }
            match status {
                Some(s) if s.success() => {}
                other => failures.push(format!("{}: SIGTERM gave {other:?}", node.name)),
            }
        }
        if !failures.is_empty() {
            self.fail(&failures.join("\n"));
        }
    }

    /// Panics with `what` and the output of every node.
    fn fail(&self, what: &str) -> ! {
        let mut report = String::new();
        for node in self.gone.iter().chain(self.nodes.iter().flatten()) {
            report.push_str(&node.dump());
        }
        if let Some(emulator) = &self.emulator {
            report.push_str(&format!("link emulator: {}\n", emulator.counters.summary()));
        }
        panic!("[{}] {what}\n{report}\n[{}] {what}", self.tag, self.tag);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os(LOGS_ENV) {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for (k, node) in self
                .gone
                .iter()
                .chain(self.nodes.iter().flatten())
                .enumerate()
            {
                let mut node_name = node.name.replace([' ', '(', ')'], "");
                node_name.push_str(&format!("-{k}.log"));
                let file = dir.join(format!("{}-{node_name}", self.tag));
                let all = format!(
                    "===== stdout:\n{}\n===== stderr:\n{}",
                    node.seen.join("\n"),
                    node.stderr.lock().unwrap()
                );
                let _ = std::fs::write(file, all);
            }
        }
        // The nodes first (killed on drop), then the namespaces they ran in.
        self.nodes.clear();
        self.gone.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the last of `lines` starting with `joined` or `left` is a join (`None`: neither).
fn last_about(lines: &[String], joined: &str, left: &str) -> Option<bool> {
    lines.iter().rev().find_map(|l| {
        if l.starts_with(joined) {
            Some(true)
        } else if l.starts_with(left) {
            Some(false)
        } else {
            None
        }
    })
}

/// Where `got` first differs from the matching suffix of `want`, with context.
fn describe_mismatch(want: &[String], got: &[String]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *counts.entry(g).or_default() += 1;
    }
    let dups: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !counts.contains_key(w.as_str()))
        .collect();
    let show = |v: &[&str]| {
        if v.len() > 10 {
            format!("{:?} and {} more", &v[..10], v.len() - 10)
        } else {
            format!("{v:?}")
        }
    };
    let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
    let first_got: Vec<&str> = got.iter().take(5).map(String::as_str).collect();
    format!(
        "duplicates {}, missing {}, first received {:?}",
        show(&dups),
        show(&missing),
        first_got
    )
}

/// `(sender, texts, 0)` for every sender in `sent` other than `receiver`: all, exactly.
fn all_from_others(sent: &[Vec<String>], receiver: usize) -> Vec<(usize, Vec<String>, usize)> {
    (0..sent.len())
        .filter(|&s| s != receiver)
        .map(|s| (s, sent[s].clone(), 0))
        .collect()
}

fn without_index(expected: &[(usize, Vec<String>, usize)]) -> Vec<(usize, Vec<String>)> {
    expected.iter().map(|(s, t, _)| (*s, t.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Four nodes on links with 100 ms delay and 5% loss on every packet (netem, or the userspace
/// link emulator where the kernel has no netem): every node broadcasts 200 numbered lines; every
/// other node prints each exactly once, in order per sender.
#[test]
fn lossy_slow_links_lose_nothing() {
    let _machine = shared_machine();
    const NODES: usize = 4;
    const LINES: usize = 200;
    let Some(mut lab) = Lab::create("lossy", 1, NODES) else {
        return;
    };
    // Pings every half second give each link a measured round trip; metrics show it.
    lab.start_all(&["--ping-interval", "0.5", "--metrics", METRICS_ADDR]);
    lab.wait_mesh();

    let mut sent = vec![Vec::new(); NODES];
    for k in 0..LINES {
        for (i, texts) in sent.iter_mut().enumerate() {
            texts.extend(lab.send_batch(i, "", k..k + 1));
        }
        // Paced, so that most lines travel in packets of their own and meet the loss.
        thread::sleep(Duration::from_millis(5));
    }
    lab.note(&format!("{NODES} x {LINES} lines written"));
    for i in 0..NODES {
        let expected = all_from_others(&sent, i);
        lab.wait_delivered(i, &without_index(&expected));
    }
    lab.note("every last line arrived everywhere");
    // The links really were slow: every node measured at least twice the one-way delay to
    // every peer (a floor the impairment sets, not a speed of peerwire's).
    for i in 0..NODES {
        let deadline = Instant::now() + WAIT;
        // Per peer, the round trips of its connections measured so far (zero until a first
        // pong is back, which loss can hold up; a replaced connection may linger a moment).
        let measured = |rows: &[(String, Duration)]| {
            let mut per_peer: HashMap<String, Vec<Duration>> = HashMap::new();
            for (peer, rtt) in rows.iter().filter(|(_, rtt)| !rtt.is_zero()) {
                per_peer.entry(peer.clone()).or_default().push(*rtt);
            }
            per_peer
        };
        let mut rows = lab.peer_rtts(i);
        while measured(&rows).len() < NODES - 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
            rows = lab.peer_rtts(i);
        }
        let floor = 2 * DELAY - Duration::from_millis(10);
        let per_peer = measured(&rows);
        if per_peer.len() != NODES - 1 || per_peer.values().flatten().any(|rtt| *rtt < floor) {
            lab.fail(&format!(
                "n{} reports round trips {rows:?}; expected one for each of its {} peers, each \
                 over {floor:?}",
                i + 1,
                NODES - 1
            ));
        }
        let rtts: Vec<Duration> = rows.iter().map(|(_, rtt)| *rtt).collect();
        lab.note(&format!("n{} round trips: {rtts:?}", i + 1));
    }
    let report = lab.impairment_report();
    lab.stop_all();
    for i in 0..NODES {
        let expected = all_from_others(&sent, i);
        lab.check(i, &expected);
    }
    lab.note(&format!(
        "all {} deliveries exactly once and in order ({}); {}",
        NODES * (NODES - 1) * LINES,
        lab.impairment.describe(),
        report
    ));
}

/// Four nodes on the impaired links; the last one is cut off (its link set down) while everyone
/// keeps sending, long enough for both sides to declare the links dead, then healed. Every
/// message sent before, during and after the partition arrives exactly once and in order, in
/// both directions.
#[test]
fn partitioned_node_heals_and_loses_nothing() {
    let _machine = shared_machine();
    const NODES: usize = 4;
    const PART: usize = NODES - 1;
    const BATCH: usize = 30;
    let Some(mut lab) = Lab::create("partition", 2, NODES) else {
        return;
    };
    // Short liveness timers so the partition is detected in seconds, not 20 s.
    lab.start_all(&["--ping-interval", "0.5", "--idle-timeout", "3"]);
    lab.wait_mesh();
    let mut sent = vec![Vec::new(); NODES];
    let mut phase = |lab: &mut Lab, name: &str, n: usize| {
        for (i, texts) in sent.iter_mut().enumerate() {
            texts.extend(lab.send_batch(i, name, n * BATCH..(n + 1) * BATCH));
        }
    };

    // Before: sent just ahead of the cut, so some are in flight when it happens.
    phase(&mut lab, "", 0);
    lab.set_link(PART, false);
    // During, before the loss is noticed.
    phase(&mut lab, "", 1);
    for j in 0..PART {
        lab.wait_left(PART, j);
        lab.wait_left(j, PART);
    }
    lab.note("both sides saw the links die");
    // During, after the loss is noticed: waits in the reliable buffers.
    phase(&mut lab, "", 2);
    // Let the redial backoff grow towards its cap.
    thread::sleep(Duration::from_secs(6));

    let marks: Vec<usize> = (0..NODES).map(|i| lab.mark(i)).collect();
    lab.set_link(PART, true);
    let healed = Instant::now();
    // Right after the heal, before the reconnect.
    phase(&mut lab, "", 3);
    for j in 0..PART {
        lab.wait_joined(PART, j, marks[PART]);
        lab.wait_joined(j, PART, marks[j]);
    }
    lab.note(&format!(
        "n{} reconnected to everyone {:.1} s after the heal",
        PART + 1,
        healed.elapsed().as_secs_f64()
    ));
    // After.
    phase(&mut lab, "", 4);

    for i in 0..NODES {
        let expected = all_from_others(&sent, i);
        lab.wait_delivered(i, &without_index(&expected));
    }
    lab.stop_all();
    for i in 0..NODES {
        let expected = all_from_others(&sent, i);
        lab.check(i, &expected);
    }
    lab.note(&format!(
        "all {} deliveries exactly once and in order",
        NODES * (NODES - 1) * 5 * BATCH
    ));
}

/// Four nodes on the impaired links; one is SIGKILLed and restarted with the same key and
/// address, twice:
///
/// 1. restarted with no peers of its own, so only the others can reconnect it (they print
///    `peer joined` for connections they dialed); what they sent while it was down and after it
///    came back arrives exactly once, in order;
/// 2. restarted with its full command line (all others persistent): the same, and what the new
///    process sends reaches everyone exactly once, in order.
///
/// A restarted process may also get again the tail of what its previous process printed but
/// had not yet acknowledged when it died; nothing sent after the kill may be missing or doubled.
#[test]
fn killed_node_restarts_and_is_reconnected() {
    let _machine = shared_machine();
    const NODES: usize = 4;
    const VICTIM: usize = 1;
    const BATCH: usize = 30;
    let Some(mut lab) = Lab::create("restart", 3, NODES) else {
        return;
    };
    let others: Vec<usize> = (0..NODES).filter(|&i| i != VICTIM).collect();
    lab.start_all(&[]);
    lab.wait_mesh();

    let mut sent = vec![Vec::new(); NODES];
    for (i, texts) in sent.iter_mut().enumerate() {
        texts.extend(lab.send_batch(i, "a", 0..BATCH));
    }
    for i in 0..NODES {
        lab.wait_delivered(i, &without_index(&all_from_others(&sent, i)));
    }
    lab.check(VICTIM, &all_from_others(&sent, VICTIM));
    lab.note("phase a delivered everywhere");

    // --- First kill; restart bare, so the others must redial it.
    lab.kill(VICTIM);
    lab.note(&format!("n{} SIGKILLed", VICTIM + 1));
    for &j in &others {
        lab.wait_left(j, VICTIM);
    }
    // What the new process may get again: the tail of phase a, at most.
    let replay_a: Vec<usize> = sent.iter().map(Vec::len).collect();
    for &i in &others {
        sent[i].extend(lab.send_batch(i, "b", 0..BATCH));
    }
    thread::sleep(Duration::from_secs(2));
    let marks: Vec<usize> = (0..NODES).map(|i| lab.mark(i)).collect();
    lab.start(VICTIM, false, &[]);
    let back = Instant::now();
    for &j in &others {
        let joined = lab.wait_joined(j, VICTIM, marks[j]);
        if !joined.ends_with("(outbound)") {
            lab.fail(&format!(
                "n{}: the bare restarted n{} cannot dial, yet: {joined}",
                j + 1,
                VICTIM + 1
            ));
        }
    }
    lab.note(&format!(
        "the others redialed the bare n{} within {:.1} s",
        VICTIM + 1,
        back.elapsed().as_secs_f64()
    ));
    for &i in &others {
        sent[i].extend(lab.send_batch(i, "c", 0..BATCH));
    }
    let second: Vec<(usize, Vec<String>, usize)> = others
        .iter()
        .map(|&s| (s, sent[s].clone(), replay_a[s]))
        .collect();
    lab.wait_delivered(VICTIM, &without_index(&second));
    for &i in &others {
        lab.wait_delivered(i, &without_index(&all_from_others(&sent, i)));
    }
    lab.check(VICTIM, &second);
    lab.note("process 2 got everything sent after the kill, exactly once, in order");

    // --- Second kill; restart with the full command line.
    lab.kill(VICTIM);
    lab.note(&format!("n{} SIGKILLed again", VICTIM + 1));
    for &j in &others {
        lab.wait_left(j, VICTIM);
    }
    let replay_c: Vec<usize> = sent.iter().map(Vec::len).collect();
    for &i in &others {
        sent[i].extend(lab.send_batch(i, "d", 0..BATCH));
    }
    thread::sleep(Duration::from_secs(2));
    let marks: Vec<usize> = (0..NODES).map(|i| lab.mark(i)).collect();
    lab.start(VICTIM, true, &[]);
    let back = Instant::now();
    for &j in &others {
        lab.wait_joined(j, VICTIM, marks[j]);
        lab.wait_joined(VICTIM, j, 0);
    }
    lab.note(&format!(
        "restarted n{} reconnected within {:.1} s",
        VICTIM + 1,
        back.elapsed().as_secs_f64()
    ));
    for (i, texts) in sent.iter_mut().enumerate() {
        texts.extend(lab.send_batch(i, "e", 0..BATCH));
    }
    for i in 0..NODES {
        lab.wait_delivered(i, &without_index(&all_from_others(&sent, i)));
    }
    lab.stop_all();
    // Process 3 of the victim: a tail of phase c at most, then d and e exactly.
    let third: Vec<(usize, Vec<String>, usize)> = others
        .iter()
        .map(|&s| (s, sent[s].clone(), replay_c[s]))
        .collect();
    lab.check(VICTIM, &third);
    // The others: everything from everyone, the victim's phases a (process 1) and e
    // (process 3) included, exactly once, in order.
    for &i in &others {
        lab.check(i, &all_from_others(&sent, i));
    }
    lab.note("all checks passed");
}

// ---------------------------------------------------------------------------------------------
// Gossip across 32 processes

/// CPU used by the whole machine between two readings of `/proc/stat`, as a share of all cores.
fn cpu_busy() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The machine's CPU use since the reading `start` (from [`cpu_busy`]), as a share of all cores.
fn cpu_since(start: (u64, u64)) -> f64 {
    let (busy, total) = cpu_busy();
    (busy - start.0) as f64 / (total - start.1).max(1) as f64
}

/// The links of a connected graph on `n` nodes: a ring plus two random chords per node (degree
/// about 6), from a fixed seed.
fn gossip_graph(n: usize) -> Vec<(usize, usize)> {
    let mut state = 0x9e37_79b9_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut edges: Vec<(usize, usize)> = (0..n)
        .map(|i| (i.min((i + 1) % n), i.max((i + 1) % n)))
        .collect();
    for i in 0..n {
        let mut added = 0;
        while added < 2 {
            let j = (next() % n as u64) as usize;
            let edge = (i.min(j), i.max(j));
            if j != i && !edges.contains(&edge) {
                edges.push(edge);
                added += 1;
            }
        }
    }
    edges
}

/// Hops from `from` to every node over `edges` between nodes in `alive` (`usize::MAX`: not
/// reached).
fn hops_over(edges: &[(usize, usize)], alive: &[bool], from: usize) -> Vec<usize> {
    let mut dist = vec![usize::MAX; alive.len()];
    dist[from] = 0;
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(a) = queue.pop_front() {
        for &(x, y) in edges {
            let b = if x == a {
                y
            } else if y == a {
                x
            } else {
                continue;
            };
            if alive[b] && dist[b] == usize::MAX {
                dist[b] = dist[a] + 1;
                queue.push_back(b);
            }
        }
    }
    dist
}

/// Whether the nodes in `alive` stay connected over `edges`.
fn connected(edges: &[(usize, usize)], alive: &[bool]) -> bool {
    let Some(start) = alive.iter().position(|a| *a) else {
        return true;
    };
    let hops = hops_over(edges, alive, start);
    (0..alive.len()).all(|i| !alive[i] || hops[i] != usize::MAX)
}

impl Lab {
    /// For each publication (when the test wrote it to its publisher, the line receivers print,
    /// the publisher), the time until 99% of the other running nodes printed it; p50 and p99.
    fn reach_times(&self, sent_at: &[(Instant, String, usize)]) -> (Duration, Duration) {
        let mut reach: Vec<Duration> = sent_at
            .iter()
            .map(|(at, line, p)| {
                let mut arrivals: Vec<Instant> = (0..self.nodes.len())
                    .filter(|i| i != p)
                    .filter_map(|i| {
                        let node = self.nodes[i].as_ref()?;
                        let stamped = node.stamped.lock().unwrap();
                        stamped.iter().find(|(_, l)| l == line).map(|(t, _)| *t)
                    })
                    .collect();
                arrivals.sort();
                let others = self.nodes.iter().flatten().count() - 1;
                let needed =
                    ((others as f64 * 0.99).ceil() as usize).clamp(1, arrivals.len().max(1));
                arrivals
                    .get(needed - 1)
                    .map_or(Duration::MAX, |t| t.saturating_duration_since(*at))
            })
            .collect();
        reach.sort();
        let p50 = reach[reach.len() / 2];
        let p99 = reach[(reach.len() * 99).div_ceil(100) - 1];
        (p50, p99)
    }

    /// For the publications in `sent_at`: the 10th percentile and the median of the times
    /// until a node at each distance from the publication's publisher (hops over `edges`: 1,
    /// 2, ...) printed them: what each hop adds.
    fn reach_by_distance(
        &self,
        sent_at: &[(Instant, String, usize)],
        edges: &[(usize, usize)],
    ) -> Vec<(Duration, Duration)> {
        let n = self.nodes.len();
        let everyone = vec![true; n];
        let mut by_distance: Vec<Vec<Duration>> = Vec::new();
        for (at, line, p) in sent_at {
            let dist = hops_over(edges, &everyone, *p);
            for (i, d) in dist.iter().enumerate() {
                if *d == 0 || *d == usize::MAX {
                    continue;
                }
                let Some(node) = self.nodes[i].as_ref() else {
                    continue;
                };
                let stamped = node.stamped.lock().unwrap();
                if let Some((t, _)) = stamped.iter().find(|(_, l)| l == line) {
                    if by_distance.len() < *d {
                        by_distance.resize(*d, Vec::new());
                    }
                    by_distance[d - 1].push(t.saturating_duration_since(*at));
                }
            }
        }
        by_distance
            .iter_mut()
            .map(|times| {
                times.sort();
                (times[times.len() / 10], times[times.len() / 2])
            })
            .collect()
    }

    /// Waits until every node in `receivers` printed `[t] <origin's id>: <text>` for every text.
    fn wait_published(&mut self, receivers: &[usize], origin: usize, texts: &[String]) {
        let id = self.ids[origin].clone();
        for &i in receivers {
            let want: Vec<String> = texts.iter().map(|t| format!("[t] {id}: {t}")).collect();
            self.wait_until(
                i,
                &format!("{} publications of n{}", texts.len(), origin + 1),
                0,
                |lines| want.iter().all(|w| lines.contains(w)),
            );
        }
    }

    /// Node `i`'s gossip counters for topic `t` (`/stats t`).
    fn gossip_stats(&mut self, i: usize) -> HashMap<String, u64> {
        let from = self.mark(i);
        self.send(i, "/stats t");
        self.wait_line(i, from, "its stats", |l| l.starts_with("stats t: "));
        let node = self.node(i);
        let line = node.seen[from..]
            .iter()
            .find(|l| l.starts_with("stats t: "))
            .cloned()
            .unwrap();
        line.trim_start_matches("stats t: ")
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// Copies received per node per publication since `before` (first copies and duplicates
    /// over first copies), summed over `nodes`.
    fn copies_since(&mut self, nodes: &[usize], before: &[HashMap<String, u64>]) -> f64 {
        let (mut first, mut dup, mut repairs, mut parent_changes) = (0u64, 0u64, 0u64, 0u64);
        for &i in nodes {
            let now = self.gossip_stats(i);
            first += now["received"] - before[i]["received"];
            dup += now["duplicates"] - before[i]["duplicates"];
            repairs += now["repairs"] - before[i]["repairs"];
            parent_changes += now["parent_changes"] - before[i]["parent_changes"];
        }
        self.note(&format!(
            "{first} first copies, {dup} duplicates, {repairs} fetches, {parent_changes} parent changes"
        ));
        if dup > 0 {
            for &i in nodes {
                let now = self.gossip_stats(i);
                if now["repairs"] > before[i]["repairs"] {
                    self.note(&format!("n{} fetched: {now:?}", i + 1));
                }
            }
        }
        (first + dup) as f64 / first.max(1) as f64
    }
}

#[test]
fn gossip_reaches_32_nodes_with_few_copies_and_survives_losing_8() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const N: usize = 32;
    let Some(mut lab) = Lab::create_with("gossip", 40, N, Duration::from_millis(20), 0) else {
        return;
    };
    let edges = gossip_graph(N);
    for i in 0..N {
        let peers: Vec<String> = edges
            .iter()
            .filter(|(a, _)| *a == i)
            .flat_map(|(_, b)| ["--peer".to_owned(), lab.addr(*b)])
            .collect();
        let extra: Vec<&str> = peers.iter().map(String::as_str).collect();
        lab.start(i, false, &extra);
    }
    for &(a, b) in &edges {
        lab.wait_joined(a, b, 0);
    }
    lab.note(&format!("{} links up", edges.len()));
    for i in 0..N {
        lab.send(i, "/sub t");
    }
    for i in 0..N {
        lab.wait_line(i, 0, "its subscription", |l| l == "subscribed to t");
    }
    // Joins cross one link (20 ms); give them a few round trips.
    thread::sleep(Duration::from_millis(500));
    let all: Vec<usize> = (0..N).collect();
    let others: Vec<usize> = (1..N).collect();
    // Warm-up: the figures are for the steady state after it, the publisher's own tree
    // rooted (see below). Each warm-up publication waits for the previous one to arrive
    // everywhere.
    for k in 0..3 {
        let text = format!("warmup-{k}");
        lab.send(0, &format!("/pub t {text}"));
        lab.wait_published(&others, 0, &[text]);
    }
    // Its second publication rooted the publisher's own tree, used once it has had 250 ms to
    // be told across the topic.
    thread::sleep(Duration::from_millis(300));
    let before: Vec<_> = (0..N).map(|i| lab.gossip_stats(i)).collect();
    // The machine's CPU from a phase's first publication until every node printed its last:
    // a figure measured on saturated cores is the CPU's, and the note says so.
    let cpu_note = |cpu: f64| {
        format!(
            "machine CPU {:.0}% of 2 cores meanwhile{}",
            cpu * 100.0,
            if cpu > 0.9 {
                " (saturated: the times are CPU-bound, not network-bound)"
            } else {
                ""
            }
        )
    };

    // One publisher.
    let cpu_start = cpu_busy();
    let texts: Vec<String> = (0..30).map(|k| format!("one-{k}")).collect();
    let mut sent_at = Vec::new();
    for text in &texts {
        sent_at.push((Instant::now(), format!("[t] {}: {text}", lab.ids[0]), 0));
        lab.send(0, &format!("/pub t {text}"));
        thread::sleep(Duration::from_millis(20));
    }
    lab.wait_published(&others, 0, &texts);
    let cpu = cpu_since(cpu_start);
    let (p50, p99) = lab.reach_times(&sent_at);
    let by_distance = |lab: &Lab, sent_at: &[(Instant, String, usize)]| -> Vec<(u128, u128)> {
        lab.reach_by_distance(sent_at, &edges)
            .iter()
            .map(|(p10, p50)| (p10.as_millis(), p50.as_millis()))
            .collect()
    };
    lab.note(&format!(
        "time to reach 99% of the nodes: p50 {} ms, p99 {} ms (one publisher, 30 publications); \
         time to a node 1, 2, ... hops away (p10, p50): {:?} ms; {}; links: {}",
        p50.as_millis(),
        p99.as_millis(),
        by_distance(&lab, &sent_at),
        cpu_note(cpu),
        lab.impairment_report()
    ));
    let one = lab.copies_since(&others, &before);

    // Eight publishers at once. Each publishes twice first, as the one publisher did: a node
    // that keeps publishing roots a tree of its own (its second publication), and the figures
    // are for that steady state.
    let publishers: Vec<usize> = (0..8).map(|k| k * 4).collect();
    for k in 0..2 {
        for &p in &publishers {
            let text = format!("warmup-{p}-{k}");
            lab.send(p, &format!("/pub t {text}"));
            let receivers: Vec<usize> = all.iter().copied().filter(|&i| i != p).collect();
            lab.wait_published(&receivers, p, &[text]);
        }
    }
    // A tree is used once it has had 250 ms to be told across the topic.
    thread::sleep(Duration::from_millis(300));
    let before: Vec<_> = (0..N).map(|i| lab.gossip_stats(i)).collect();
    let mut sent = HashMap::new();
    let mut sent_at = Vec::new();
    let cpu_start = cpu_busy();
    for round in 0..10 {
        for &p in &publishers {
            let text = format!("many-{p}-{round}");
            sent_at.push((Instant::now(), format!("[t] {}: {text}", lab.ids[p]), p));
            lab.send(p, &format!("/pub t {text}"));
            sent.entry(p).or_insert_with(Vec::new).push(text);
        }
        thread::sleep(Duration::from_millis(20));
    }
    for &p in &publishers {
        let receivers: Vec<usize> = all.iter().copied().filter(|&i| i != p).collect();
        lab.wait_published(&receivers, p, &sent[&p]);
    }
    let cpu = cpu_since(cpu_start);
    let (p50, p99) = lab.reach_times(&sent_at);
    lab.note(&format!(
        "time to reach 99% of the nodes: p50 {} ms, p99 {} ms (eight publishers, 80 \
         publications); time to a node 1, 2, ... hops away (p10, p50): {:?} ms; {}; links: {}",
        p50.as_millis(),
        p99.as_millis(),
        by_distance(&lab, &sent_at),
        cpu_note(cpu),
        lab.impairment_report()
    ));
    let many = lab.copies_since(&all, &before);
    lab.note(&format!(
        "copies per node per publication: {one:.2} with one publisher, {many:.2} with eight"
    ));
    assert!(
        one <= 1.2,
        "{one:.2} copies per node per publication with one publisher"
    );
    assert!(
        many <= 2.0,
        "{many:.2} copies per node per publication with eight publishers"
    );

    // Large publications (over `eager_max`, 64 KiB) are announced and fetched: about one copy
    // per node, not one per link of the tree.
    let before: Vec<_> = (0..N).map(|i| lab.gossip_stats(i)).collect();
    let large_start = cpu_busy();
    let big: Vec<String> = (0..3)
        .map(|k| format!("big-{k}-{}", "x".repeat(256 * 1024)))
        .collect();
    for text in &big {
        lab.send(0, &format!("/pub t {text}"));
    }
    lab.wait_published(&others, 0, &big);
    let large = lab.copies_since(&others, &before);
    let cpu = cpu_since(large_start);
    // A second copy comes from a fetch repeated after the first announcer took longer than the
    // fetch wait to send 256 KiB: with both cores saturated (by this test's 32 processes plus
    // whatever else the machine runs) that is the CPU's figure, not the protocol's. Then the
    // run says so and only a gross excess fails it (a node fetching from every neighbour that
    // announces the publication would get up to 6 copies).
    let saturated = cpu > 0.9;
    lab.note(&format!(
        "copies per node per 256 KiB publication: {large:.2}; machine CPU {:.0}% of 2 cores \
         meanwhile{}",
        cpu * 100.0,
        if saturated {
            " (saturated: the figure is CPU-bound, bound 1.5 instead of 1.1)"
        } else {
            ""
        }
    ));
    let bound = if saturated { 1.5 } else { 1.1 };
    assert!(
        large <= bound,
        "{large:.2} copies per node per large publication (bound {bound}, CPU {:.0}%)",
        cpu * 100.0
    );

    // Kill 8 nodes, chosen so that the survivors stay connected.
    let mut alive = vec![true; N];
    let mut killed = Vec::new();
    for candidate in (1..N).rev() {
        if killed.len() == 8 {
            break;
        }
        alive[candidate] = false;
        if connected(&edges, &alive) {
            killed.push(candidate);
        } else {
            alive[candidate] = true;
        }
    }
    for &k in &killed {
        lab.kill(k);
    }
    lab.note(&format!("killed {killed:?}"));
    thread::sleep(Duration::from_secs(2));
    let survivors: Vec<usize> = (0..N).filter(|&i| alive[i]).collect();
    let texts: Vec<String> = (0..10).map(|k| format!("after-{k}")).collect();
    for text in &texts {
        lab.send(0, &format!("/pub t {text}"));
        thread::sleep(Duration::from_millis(20));
    }
    let receivers: Vec<usize> = survivors.iter().copied().filter(|&i| i != 0).collect();
    lab.wait_published(&receivers, 0, &texts);
    lab.note(&format!(
        "every one of {} survivors got the publications made after the kill",
        receivers.len()
    ));
    lab.stop_all();
}

// ---------------------------------------------------------------------------------------------
// A registry with 8 named nodes

impl Lab {
    /// When node `i` last printed a line satisfying `pred`, as stamped by the reader thread
    /// (which stamps publications and registry lines only).
    fn stamp(&mut self, i: usize, pred: impl Fn(&str) -> bool) -> Instant {
        let node = self.node(i);
        let stamped = node.stamped.lock().unwrap();
        stamped
            .iter()
            .rev()
            .find(|(_, l)| pred(l))
            .map(|(t, _)| *t)
            .unwrap()
    }

    /// Waits until each node of `watchers` printed a line after its mark starting with
    /// `prefix`; returns the time from `since` to the last of them.
    fn seen_by_all(
        &mut self,
        watchers: &[usize],
        marks: &[usize],
        prefix: &str,
        since: Instant,
    ) -> Duration {
        let mut last = since;
        for &w in watchers {
            self.wait_line(w, marks[w], prefix, |l| l.starts_with(prefix));
            last = last.max(self.stamp(w, |l| l.starts_with(prefix)));
        }
        last.saturating_duration_since(since)
    }

    fn marks(&mut self) -> Vec<usize> {
        (0..self.nodes.len()).map(|i| self.mark(i)).collect()
    }
}

/// Process 0 runs `peerwire registry`, 1 to 8 `peerwire node --registry ... --name nK`, on
/// 20 ms links. Every join, state change, graceful stop and SIGKILL reaches every other node
/// (the time each took is printed beside the target it is meant to meet); a registry restart
/// gets every node back; a node advertising an address where it cannot be reached is never
/// listed; a node with another compatibility value exits with both values.
#[test]
fn a_registry_follows_8_nodes_joining_changing_and_leaving() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const N: usize = 10;
    const NODES: std::ops::Range<usize> = 1..9;
    let Some(mut lab) = Lab::create_with("registry", 41, N, Duration::from_millis(20), 0) else {
        return;
    };
    let registry_args = |lab: &Lab| -> Vec<String> {
        [
            "registry",
            "--listen",
            &lab.addr(0),
            "--key",
            lab.key(0).to_str().unwrap(),
            "--network-id",
            NETWORK_ID,
            "--heartbeat",
            "1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    lab.start_with(0, registry_args(&lab));
    let at = format!("{}@{}", lab.ids[0], lab.addr(0));
    let member_args = |k: usize| {
        vec![
            "--registry".to_owned(),
            at.clone(),
            "--name".to_owned(),
            format!("n{k}"),
        ]
    };

    // Joins, one at a time: from the node's start to the last running node printing it.
    let mut joins = Vec::new();
    for k in NODES {
        let marks = lab.marks();
        let extra = member_args(k);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let started = Instant::now();
        lab.start(k, false, &extra);
        lab.wait_line(k, 0, "its registration", |l| {
            l == "registered with the registry"
        });
        let prefix = format!("member joined: {} n{k} ", lab.ids[k]);
        let watchers: Vec<usize> = (1..k).collect();
        joins.push(lab.seen_by_all(&watchers, &marks, &prefix, started));
    }
    // Every node lists the 7 others and is connected to them and to the registry.
    for k in NODES {
        for j in NODES {
            if j != k {
                let prefix = format!("member joined: {} n{j} ", lab.ids[j]);
                lab.wait_line(k, 0, "every other member", |l| l.starts_with(&prefix));
                lab.wait_joined(k, j, 0);
            }
        }
    }
    let slowest = joins.iter().max().unwrap();
    lab.note(&format!(
        "join seen by every running node, from the process start: slowest {} ms (target 1 s); all: {:?} ms",
        slowest.as_millis(),
        joins.iter().map(Duration::as_millis).collect::<Vec<_>>()
    ));

    // A state change: /state on n1.
    let marks = lab.marks();
    let since = Instant::now();
    lab.send(1, "/state schema v2");
    let prefix = format!("member updated: {} n1 ", lab.ids[1]);
    let watchers: Vec<usize> = (2..9).collect();
    let state = lab.seen_by_all(&watchers, &marks, &prefix, since);
    lab.note(&format!(
        "state change seen everywhere in {} ms (target one heartbeat + 200 ms = 1,200 ms)",
        state.as_millis()
    ));

    // A graceful stop (SIGTERM): deregistered at once.
    let marks = lab.marks();
    let since = Instant::now();
    let pid = lab.node(8).child.id().to_string();
    run("kill", &["-TERM", &pid]).unwrap();
    let prefix = format!("member left: {}", lab.ids[8]);
    let watchers: Vec<usize> = (1..8).collect();
    let graceful = lab.seen_by_all(&watchers, &marks, &prefix, since);
    lab.note(&format!(
        "graceful stop seen everywhere in {} ms (target 200 ms)",
        graceful.as_millis()
    ));
    let mut stopped = lab.nodes[8].take().unwrap();
    assert!(stopped.child.wait().unwrap().success());
    lab.gone.push(stopped);

    // A SIGKILL: dropped after 3 missed heartbeats.
    let marks = lab.marks();
    let since = Instant::now();
    lab.kill(7);
    let prefix = format!("member left: {}", lab.ids[7]);
    let watchers: Vec<usize> = (1..7).collect();
    let killed = lab.seen_by_all(&watchers, &marks, &prefix, since);
    lab.note(&format!(
        "SIGKILLed node dropped everywhere in {} ms (target 3 heartbeats + 0.5 s = 3,500 ms)",
        killed.as_millis()
    ));

    // The registry restarts (SIGKILL, then the same key and address): every node registers
    // again, and the registry lists all 6.
    lab.kill(0);
    thread::sleep(Duration::from_secs(1));
    let since = Instant::now();
    lab.start_with(0, registry_args(&lab));
    let mut back = Duration::ZERO;
    for k in 1..7 {
        let prefix = format!("member joined: {} n{k} ", lab.ids[k]);
        back = back.max(lab.seen_by_all(&[0], &[0; N], &prefix, since));
    }
    lab.note(&format!(
        "restarted registry lists every node again after {} ms (target: the 5 s backoff cap)",
        back.as_millis()
    ));

    // A node advertising an address where it is not: refused, never listed.
    let marks = lab.marks();
    let mut args = lab.args(8, false, &[]);
    args.extend(member_args(8));
    let mut node = {
        let name = "n9 (advertising 10.213.41.250)".to_owned();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &lab.namespace(8), BIN])
            .args(&args)
            .env("RUST_LOG", "info")
            .env("PEERWIRE_ADVERTISED_ADDR", format!("10.213.41.250:{PORT}"));
        let child::Collected {
            child,
            stdin,
            lines,
            stderr,
            stamped,
        } = child::spawn_collected(command, Stdio::piped());
        Node {
            name,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
            stamped,
        }
    };
    let deadline = Instant::now() + WAIT;
    while !node.stderr.lock().unwrap().contains("registration refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            node.dump()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Refused at least once (each attempt waits for a dial-back to time out, 3 s); the
    // registry never printed it.
    node.drain();
    assert!(
        !node
            .seen
            .iter()
            .any(|l| l == "registered with the registry"),
        "{}",
        node.dump()
    );
    lab.node(0).drain();
    let listed = format!("member joined: {} ", lab.ids[8]);
    assert!(
        !lab.node(0).seen[marks[0]..]
            .iter()
            .any(|l| l.starts_with(&listed)),
        "an unreachable address was listed"
    );
    lab.note("a node advertising an address where it is not was refused and never listed");
    drop(node);

    // Another compatibility value: the node exits 1 and says why.
    let mut args = lab.args(9, false, &["--compat", "3"]);
    args.extend(member_args(9).into_iter().take(2));
    let mut odd = Node::spawn("n10 (compat 3)".to_owned(), &lab.namespace(9), &args);
    let status = odd.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", odd.dump());
    let stderr = odd.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("compatibility value 0, this node 3"),
        "{stderr}"
    );
    lab.note("a node with another compatibility value exited 1 naming both values");
    lab.nodes[8] = None;
    lab.nodes[9] = None;
    lab.stop_all();
}

// ---------------------------------------------------------------------------------------------
// Peer exchange across 21 processes

impl Lab {
    /// Node `i` answers `/peers`; the ids it lists (known or connected).
    fn known_peers(&mut self, i: usize) -> std::collections::HashSet<String> {
        let from = self.mark(i);
        self.send(i, "/peers");
        thread::sleep(Duration::from_millis(300));
        let node = self.node(i);
        node.drain();
        node.seen[from..]
            .iter()
            .filter_map(|l| l.strip_prefix("peer "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Peers node `i` holds a connection to now, from its join and leave lines.
    fn connections(&mut self, i: usize) -> usize {
        let node = self.node(i);
        node.drain();
        let mut open = std::collections::HashSet::new();
        for line in &node.seen {
            if let Some(rest) = line.strip_prefix("peer joined: ") {
                open.insert(rest.split_whitespace().next().unwrap_or("").to_owned());
            } else if let Some(rest) = line.strip_prefix("peer left: ") {
                open.remove(rest.split_whitespace().next().unwrap_or(""));
            }
        }
        open.len()
    }
}

/// A seed and 20 nodes, 3 to a /24 and each /24 in its own /16, on 20 ms links. The nodes run
/// `--discover --data-dir` and are given only the seed: every node comes to know every other.
/// Then the seed is SIGKILLed and every node restarted with no `--peer` at all: they reconnect
/// from the address books in their data directories. The times are printed beside the targets.
#[test]
fn twenty_nodes_find_each_other_through_a_seed_and_reconnect_from_their_books() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const N: usize = 21;
    let Some(mut lab) = Lab::create_spread("pex", 42, N, Duration::from_millis(20), 0, Some(3))
    else {
        return;
    };
    let seed = lab.addr(0);
    lab.start(0, false, &["--discover"]);
    let data = |lab: &Lab, i: usize| lab.dir.join(format!("n{}-data", i + 1));
    let started = Instant::now();
    for i in 1..N {
        let dir = data(&lab, i);
        lab.start(
            i,
            false,
            &[
                "--discover",
                "--data-dir",
                dir.to_str().unwrap(),
                "--peer",
                &seed,
            ],
        );
    }
    // Every node lists the other 20.
    let deadline = Instant::now() + WAIT;
    let mut missing: Vec<usize> = (1..N).collect();
    while !missing.is_empty() {
        if Instant::now() > deadline {
            let views: Vec<String> = missing
                .iter()
                .map(|&i| format!("n{} knows {}", i + 1, lab.known_peers(i).len()))
                .collect();
            lab.fail(&format!("not every node knows all others: {views:?}"));
        }
        let mut still = Vec::new();
        for &i in &missing {
            let known = lab.known_peers(i);
            let all = (0..N)
                .filter(|&j| j != i)
                .all(|j| known.contains(&lab.ids[j]));
            if !all {
                still.push(i);
            }
        }
        missing = still;
        if !missing.is_empty() {
            thread::sleep(Duration::from_secs(1));
        }
    }
    let everyone = started.elapsed();
    lab.note(&format!(
        "every node knows all 20 others {:.1} s after the first started (target 30 s)",
        everyone.as_secs_f64()
    ));
    let degrees: Vec<usize> = (1..N).map(|i| lab.connections(i)).collect();
    lab.note(&format!("connections per node: {degrees:?}"));

    // The seed dies; every node stops (saving its book) and comes back told nothing.
    lab.kill(0);
    lab.stop_all();
    for i in 1..N {
        let node = lab.nodes[i].take().unwrap();
        lab.gone.push(node);
    }
    let back = Instant::now();
    for i in 1..N {
        let dir = data(&lab, i);
        lab.start(
            i,
            false,
            &["--discover", "--data-dir", dir.to_str().unwrap()],
        );
    }
    let deadline = Instant::now() + WAIT;
    let mut first = None;
    loop {
        let counts: Vec<usize> = (1..N).map(|i| lab.connections(i)).collect();
        if first.is_none() && counts.iter().all(|&c| c >= 1) {
            first = Some(back.elapsed());
        }
        if counts.iter().all(|&c| c >= 4) {
            break;
        }
        if Instant::now() > deadline {
            lab.fail(&format!("not reconnected from the books: {counts:?}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
    lab.note(&format!(
        "restarted with no --peer: every node connected again after {:.1} s, to at least 4 after \
         {:.1} s (target 5 s)",
        first.unwrap_or_default().as_secs_f64(),
        back.elapsed().as_secs_f64()
    ));
    lab.stop_all();
}

/// One blob's row in a node's `/blobs`:
/// "ID LEN bytes, P/T pieces, M members, S bytes sent, R received, D duplicate, B bad pieces".
struct BlobsRow {
    pieces: u64,
    total: u64,
    received: u64,
    duplicate: u64,
    bad: u64,
}

impl Lab {
    /// Asks node `i` for `/blobs` and reads `blob`'s row.
    fn blobs_row(&mut self, i: usize, blob: &str) -> BlobsRow {
        let mark = self.mark(i);
        self.send(i, "/blobs");
        let row = format!("{blob} ");
        self.wait_line(i, mark, "its /blobs row", |l| l.starts_with(&row));
        let line = self.node(i).seen[mark..]
            .iter()
            .find(|l| l.starts_with(&row))
            .cloned()
            .unwrap();
        let parts: Vec<&str> = line.split(", ").collect();
        let number_before = |word: &str| -> u64 {
            parts
                .iter()
                .find_map(|part| part.strip_suffix(word))
                .and_then(|n| n.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let (pieces, total) = parts
            .iter()
            .find_map(|part| part.strip_suffix(" pieces")?.split_once('/'))
            .map(|(p, t)| (p.parse().unwrap_or(0), t.parse().unwrap_or(0)))
            .unwrap_or((0, 0));
        BlobsRow {
            pieces,
            total,
            received: number_before(" received"),
            duplicate: number_before(" duplicate"),
            bad: number_before(" bad pieces"),
        }
    }
}

/// One push of a fresh 64 MiB blob, as the nodes reported it.
struct SwarmRound {
    /// The blob's id.
    blob: String,
    /// Each receiver's completion, from the moment `/push` was written, in receiver order.
    times: Vec<Duration>,
    /// Bytes the pusher sent, in copies of the blob.
    copies: f64,
    /// Duplicate piece bytes received, as a share of the bytes the receivers needed.
    duplicates: f64,
    /// Pieces that failed their proof, summed over the receivers.
    bad_pieces: u64,
    /// The machine's CPU share (of 2 cores) during the push.
    cpu: f64,
    /// The pusher's `pushed ...` line.
    report: String,
}

const SWARM_BLOB: usize = 64 << 20;

/// Shares a fresh 64 MiB file on node 0 and pushes it to `receivers` (`/push ID PEERS`);
/// `during` runs right after the push is sent (a fault to inject). Returns what the nodes
/// printed: the `blob ... complete` stamps, the pusher's report, each survivor's `/blobs`.
fn swarm_round(
    lab: &mut Lab,
    salt: u32,
    receivers: &[usize],
    during: impl FnOnce(&mut Lab, Instant),
) -> SwarmRound {
    swarm_round_without(lab, salt, receivers, &[], during)
}

/// `swarm_round`, not waiting for the receivers in `unwaited` to complete (a liar, which
/// the others stop serving once they catch it).
fn swarm_round_without(
    lab: &mut Lab,
    salt: u32,
    receivers: &[usize],
    unwaited: &[usize],
    during: impl FnOnce(&mut Lab, Instant),
) -> SwarmRound {
    let path = lab.dir.join(format!("blob-{salt}.bin"));
    let mut state = u64::from(salt) | 1 << 40;
    let content: Vec<u8> = (0..SWARM_BLOB / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    // On disk before the push starts, so the kernel's writeback of 64 MiB does not run
    // during it, on the same two cores.
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&content).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let from = lab.mark(0);
    lab.send(0, &format!("/share {}", path.display()));
    let prefix = format!("shared {} as ", path.display());
    lab.wait_line(0, from, "the blob id", |l| l.starts_with(&prefix));
    let blob = lab.node(0).seen[from..]
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    let peers: Vec<String> = receivers.iter().map(|&r| lab.ids[r].clone()).collect();
    let marks: Vec<usize> = (0..lab.nodes.len()).map(|i| lab.mark(i)).collect();
    let cpu_start = cpu_busy();
    let started = Instant::now();
    lab.send(0, &format!("/push {blob} {}", peers.join(" ")));
    during(lab, started);
    let pushed = format!("pushed {blob}: ");
    lab.wait_line(0, marks[0], "the push report", |l| l.starts_with(&pushed));
    let cpu = cpu_since(cpu_start);
    let report = lab.node(0).seen[marks[0]..]
        .iter()
        .find(|l| l.starts_with(&pushed))
        .cloned()
        .unwrap();
    // "... ; B bytes sent (C copies)"
    let copies: f64 = report
        .rsplit('(')
        .next()
        .and_then(|c| c.split(' ').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| lab.fail(&format!("unreadable push report: {report}")));
    let complete = format!("blob {blob} complete");
    let (mut times, mut duplicates, mut bad_pieces, mut needed) = (Vec::new(), 0u64, 0u64, 0u64);
    for &r in receivers {
        if lab.nodes[r].is_none() || unwaited.contains(&r) {
            continue;
        }
        lab.wait_line(r, marks[r], "the blob", |l| l == complete);
        let stamp = lab
            .node(r)
            .stamped
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| *l == complete)
            .map(|(at, _)| *at)
            .unwrap();
        times.push(stamp.saturating_duration_since(started));
        let row = lab.blobs_row(r, &blob);
        duplicates += row.duplicate;
        bad_pieces += row.bad;
        needed += SWARM_BLOB as u64;
    }
    let _ = std::fs::remove_file(&path);
    SwarmRound {
        blob,
        times,
        copies,
        duplicates: duplicates as f64 / needed.max(1) as f64,
        bad_pieces,
        cpu,
        report,
    }
}

fn describe_round(round: &SwarmRound, bound: Duration) -> String {
    let slowest = round.times.iter().max().copied().unwrap_or_default();
    let mut sorted = round.times.clone();
    sorted.sort();
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    format!(
        "all {} done in {:.2} s ({:.2}x the bound {:.2} s; p50 {:.2} s), pusher sent {:.2} copies, \
         duplicates {:.1}%, bad pieces {}, CPU {:.0}% of 2 cores",
        round.times.len(),
        slowest.as_secs_f64(),
        slowest.as_secs_f64() / bound.as_secs_f64(),
        bound.as_secs_f64(),
        p50.as_secs_f64(),
        round.copies,
        round.duplicates * 100.0,
        round.bad_pieces,
        round.cpu * 100.0
    )
}

/// The fluid lower bound for `n` receivers with equal links of `mbit`:
/// max(F/u, n·F/((n+1)·u)).
fn swarm_bound(n: usize, mbit: u32) -> Duration {
    let f = (SWARM_BLOB * 8) as f64;
    let u = f64::from(mbit) * 1e6;
    let n = n as f64;
    Duration::from_secs_f64((f / u).max(n * f / ((n + 1.0) * u)))
}

#[test]
fn a_64_mib_blob_reaches_8_receivers_near_the_bound_and_survives_a_death_and_a_liar() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const N: usize = 9;
    const MBIT: u32 = 200;
    let Some(mut lab) = Lab::create_with("swarm", 43, N, Duration::from_millis(10), 0) else {
        return;
    };
    lab.cap_egress(MBIT);
    let dial_all_before = |lab: &Lab, i: usize| -> Vec<String> {
        (0..i)
            .flat_map(|j| ["--peer".to_owned(), lab.addr(j)])
            .collect()
    };
    for i in 0..N {
        let peers = dial_all_before(&lab, i);
        let extra: Vec<&str> = peers.iter().map(String::as_str).collect();
        lab.start(i, false, &extra);
    }
    lab.wait_mesh();
    let all: Vec<usize> = (1..N).collect();
    let bound = swarm_bound(8, MBIT);
    let direct = Duration::from_secs_f64(8.0 * (SWARM_BLOB * 8) as f64 / (f64::from(MBIT) * 1e6));

    let calm = swarm_round(&mut lab, 1, &all, |_, _| {});
    lab.note(&format!(
        "8 receivers, 200 Mbit/s each way, 10 ms: {} [targets: 1.3x the bound, 1.3 copies, 5%; \
         direct sending: {:.1} s]",
        describe_round(&calm, bound),
        direct.as_secs_f64()
    ));
    let calm_slowest = calm.times.iter().max().copied().unwrap();

    // A receiver SIGKILLed half way: the others finish anyway.
    const VICTIM: usize = 8;
    let half = calm_slowest / 2;
    let killed = swarm_round(&mut lab, 2, &all, |lab, started| {
        thread::sleep(half.saturating_sub(started.elapsed()));
        lab.kill(VICTIM);
        lab.note(&format!(
            "n{} SIGKILLed {:.2} s into the push",
            VICTIM + 1,
            half.as_secs_f64()
        ));
    });
    lab.note(&format!(
        "with n{} killed half way: {} [target: {:.2} s, 1.15x undisturbed]",
        VICTIM + 1,
        describe_round(&killed, bound),
        calm_slowest.as_secs_f64() * 1.15
    ));

    // The victim comes back serving corrupt pieces.
    let peers = dial_all_before(&lab, VICTIM);
    let mut extra: Vec<&str> = peers.iter().map(String::as_str).collect();
    extra.push("--swarm-test-corrupt");
    lab.start(VICTIM, false, &extra);
    lab.wait_mesh();
    let liar = swarm_round_without(&mut lab, 3, &all, &[VICTIM], |_, _| {});
    lab.note(&format!(
        "with n{} serving corrupt pieces (the 7 others): {} [target: {:.2} s, 1.1x undisturbed]",
        VICTIM + 1,
        describe_round(&liar, bound),
        calm_slowest.as_secs_f64() * 1.1
    ));

    // A receiver SIGKILLed half way and restarted with its data directory carries on from
    // the pieces it kept.
    lab.kill(VICTIM);
    let data_dir = lab.dir.join("n9-data");
    let mut extra: Vec<&str> = peers.iter().map(String::as_str).collect();
    extra.extend(["--data-dir", data_dir.to_str().unwrap()]);
    lab.start(VICTIM, false, &extra);
    lab.wait_mesh();
    let restarted = swarm_round(&mut lab, 4, &all, |lab, started| {
        thread::sleep(half.saturating_sub(started.elapsed()));
        lab.kill(VICTIM);
    });
    lab.start(VICTIM, false, &extra);
    lab.wait_mesh();
    let blob = restarted.blob.clone();
    let held = lab.blobs_row(VICTIM, &blob);
    let (kept, total) = (held.pieces, held.total);
    let started = Instant::now();
    let copy = lab.dir.join("n9-copy.bin");
    lab.send(VICTIM, &format!("/fetch {blob} {}", copy.display()));
    let fetched = format!(
        "fetched {blob} to {} ({SWARM_BLOB} bytes, verified)",
        copy.display()
    );
    lab.wait_line(VICTIM, 0, "the resumed fetch", |l| l == fetched);
    let took = started.elapsed();
    let received = lab.blobs_row(VICTIM, &blob).received;
    lab.note(&format!(
        "n{} SIGKILLed half way and restarted with its data directory: it had kept {kept} of {total} pieces, fetched the other {} ({received} bytes) in {:.2} s; the others: {}",
        VICTIM + 1,
        total - kept,
        took.as_secs_f64(),
        describe_round(&restarted, bound)
    ));
    assert!(kept > 0 && kept < total, "kept {kept} of {total} pieces");
    assert!(
        received <= (total - kept) * (256 << 10),
        "received {received} bytes after the restart for {} missing pieces",
        total - kept
    );
    let _ = std::fs::remove_file(&copy);

    // Fewer receivers, for BENCHMARKS.md.
    for n in [1usize, 4] {
        let some: Vec<usize> = (1..=n).collect();
        let round = swarm_round(&mut lab, 10 + n as u32, &some, |_, _| {});
        lab.note(&format!(
            "{n} receiver(s): {} [direct sending: {:.1} s]",
            describe_round(&round, swarm_bound(n, MBIT)),
            n as f64 * (SWARM_BLOB * 8) as f64 / (f64::from(MBIT) * 1e6)
        ));
    }

    // What the protocol guarantees whatever the machine's speed: every receiver holds it
    // (each piece checked against the id), about one copy from the pusher, few duplicates,
    // and each honest receiver took at most one bad piece from the liar before dropping it.
    assert_eq!(calm.times.len(), 8);
    assert!(
        calm.copies <= 1.3,
        "the pusher sent {:.2} copies",
        calm.copies
    );
    assert!(
        calm.duplicates <= 0.05,
        "{:.1}% duplicates",
        calm.duplicates * 100.0
    );
    assert_eq!(killed.times.len(), 7);
    // The liar is not waited for: the pusher refuses it once two receivers accuse it.
    assert_eq!(liar.times.len(), 7);
    assert!(
        liar.report
            .contains(" 7 peers hold it, 0 failed, 1 refused for bad pieces;"),
        "{}",
        liar.report
    );
    assert!(liar.bad_pieces >= 1, "nobody was sent a corrupt piece");
    assert!(
        liar.bad_pieces <= 7,
        "{} bad pieces taken by 7 honest receivers",
        liar.bad_pieces
    );
    lab.stop_all();
}
