//! Command-line interface: the clap argument types and the dispatch to each subcommand.

mod cluster;
mod demo;
mod kv;
mod metrics;
mod node;
mod probe;
mod pubsub;
mod report;
mod text;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Error type of the program: every failure ends up as one line on stderr and a non-zero exit.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Result with the program's [`Error`].
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Authenticated, encrypted peer-to-peer networking: run a local demo cluster or a chat node.
#[derive(Debug, Parser)]
#[command(name = "peerwire", version)]
pub(crate) struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start a local cluster on 127.0.0.1, push traffic through it, verify delivery and print
    /// throughput and latency.
    Demo(DemoArgs),
    /// Run one node: broadcast stdin lines to every peer, print what peers send; keep a small
    /// key-value store (`/put KEY VALUE`, `/get PEER_ID KEY`, `/replicate PEER_ID`); publish
    /// and subscribe to topics over many hops (`/sub`, `/unsub`, `/relay`, `/pub TOPIC TEXT`).
    Node(NodeArgs),
    /// Measure how a critical channel fares beside a saturated bulk channel over a real link:
    /// run `--listen ADDR` on one end and `--connect ADDR` on the other (same host, as the
    /// latency is read from the wall clock); the listener prints the report.
    Probe(ProbeArgs),
    /// Write a new key file (mode 0600) and print its peer id. Refuses to overwrite a file.
    Keygen(KeygenArgs),
    /// Print the peer id of a key file; with `--listen`, also `ID@ADDR`, the form
    /// `--persistent` takes.
    Id(IdArgs),
}

/// Options of `peerwire keygen`.
#[derive(Debug, Clone, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the new key.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
}

/// Options of `peerwire id`.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdArgs {
    /// The key file to read.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// The address the node listens on (or is reached at), to print `ID@ADDR`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
}

/// Options of `peerwire probe`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProbeArgs {
    /// Receive and report, listening on this address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Send to the receiver at this address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) connect: Option<SocketAddr>,
    /// Network id; both ends must agree.
    #[arg(long, default_value = "peerwire-probe")]
    pub(crate) network_id: String,
    /// How long the sender sends, in seconds (fractions allowed).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub(crate) duration: Duration,
    /// Bytes per bulk message; 0 sends no bulk traffic.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub(crate) bulk_size: usize,
    /// Bytes per critical message (at least the 24-byte header).
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    pub(crate) critical_size: usize,
    /// Interval between critical messages, in seconds (fractions allowed).
    #[arg(long, default_value = "0.01", value_name = "SECS", value_parser = parse_secs)]
    pub(crate) critical_interval: Duration,
    /// Send critical messages as fast as the channel takes them instead of at an interval.
    #[arg(long)]
    pub(crate) flood: bool,
    /// Bytes the kernel may hold unsent per connection (TCP_NOTSENT_LOWAT, Linux); 0 leaves
    /// the kernel default [default: the library's].
    #[arg(long, value_name = "BYTES")]
    pub(crate) notsent_lowat: Option<u32>,
    /// Leave out critical messages received in the first SECS seconds (TCP's start-up) from
    /// the latency figures; with `--requests`, the sender waits this long before the first.
    #[arg(long, default_value = "0", value_name = "SECS", value_parser = parse_secs_or_zero)]
    pub(crate) warmup: Duration,
    /// Instead of critical messages, send N requests of `--critical-size` bytes one after
    /// another (each answered with as many bytes) and print their round-trip percentiles on
    /// the sender: `probe rpc report: ...`.
    #[arg(long, value_name = "N")]
    pub(crate) requests: Option<u64>,
}

/// Options of `peerwire demo`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Nodes in the cluster (connected as a full mesh).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=64))]
    pub(crate) nodes: u16,
    /// Messages each node sends to the next one in the send phase.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) messages: u64,
    /// Payload bytes per message in the send and broadcast phases.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub(crate) size: usize,
    /// Messages node 0 broadcasts to all others [default: --messages / 2].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) broadcasts: Option<u64>,
    /// Round trips node 0 measures against node 1 in the latency phase.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) pings: u64,
}

/// Options of `peerwire node`.
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// A peer to dial, as HOST:PORT: dialed every second until connected, and again whenever
    /// the connection is lost, for as long as the node runs. Repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub(crate) peers: Vec<String>,
    /// Key file holding this node's identity; created (mode 0600) if missing. Without it the
    /// node gets a fresh identity on every run.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Network id; nodes with a different id refuse each other.
    #[arg(long, default_value = "peerwire")]
    pub(crate) network_id: String,
    /// Largest message, sent or received, in bytes [default: the library's, 16 MiB].
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_message_size: Option<usize>,
    /// A peer to stay connected to, as PEER_ID@HOST:PORT: dialed at start, its identity checked,
    /// and redialed by the library with backoff whenever it is away. Repeatable.
    #[arg(long = "persistent", value_name = "ID@HOST:PORT", value_parser = parse_persistent)]
    pub(crate) persistent: Vec<(peerwire::PeerId, String)>,
    /// Serve Prometheus metrics on this address at GET /metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Find other nodes through the connected ones (peer exchange) and connect to up to 8;
    /// `/peers` lists them. Off by default: without it the node keeps exactly the
    /// connections it is given.
    #[arg(long)]
    pub(crate) discover: bool,
    /// How often each connection sends a ping, in seconds (fractions allowed)
    /// [default: the library's, 5 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) ping_interval: Option<Duration>,
    /// Close a connection on which nothing arrives for this long, in seconds (fractions
    /// allowed); must exceed the ping interval [default: the library's, 20 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) idle_timeout: Option<Duration>,
}

/// Checks the form HOST:PORT (the host is resolved when dialing, so a name may come up later).
fn parse_host_port(text: &str) -> std::result::Result<String, String> {
    let expected = "expected HOST:PORT, for example 127.0.0.1:7001 or node-a.example:7001";
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} has no port; {expected}"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{text:?} has no host; {expected}"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(text.to_owned()),
        _ => Err(format!("{port:?} is not a port (1-65535); {expected}")),
    }
}

/// Parses PEER_ID@HOST:PORT, the peer id as `peerwire id` prints it; the address is resolved
/// when the node starts.
fn parse_persistent(text: &str) -> std::result::Result<(peerwire::PeerId, String), String> {
    let expected = "expected PEER_ID@HOST:PORT (`peerwire id --key FILE --listen ADDR` prints it)";
    let (id, addr) = text
        .split_once('@')
        .ok_or_else(|| format!("{text:?} has no '@'; {expected}"))?;
    let id = id
        .parse::<peerwire::PeerId>()
        .map_err(|e| format!("{id:?}: {e}; {expected}"))?;
    Ok((id, parse_host_port(addr)?))
}

/// Parses a positive, finite number of seconds such as `2` or `0.5`.
fn parse_secs(text: &str) -> std::result::Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{text:?}: expected a positive number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a non-negative, finite number of seconds.
fn parse_secs_or_zero(text: &str) -> std::result::Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_secs(text)
}

/// Runs the chosen subcommand to completion.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Node(args) => node::run(args).await,
        Command::Probe(args) => probe::run(args).await,
        Command::Keygen(args) => keygen(&args),
        Command::Id(args) => id(&args),
    }
}

/// `peerwire keygen`: a new key, never over an existing file.
fn keygen(args: &KeygenArgs) -> Result<()> {
    if args.key.exists() {
        return Err(format!(
            "{} already exists; keygen never overwrites a key (remove it first, or choose another \
             path)",
            args.key.display()
        )
        .into());
    }
    let keypair = peerwire::Keypair::load_or_create(&args.key)?;
    println!("{}", keypair.peer_id());
    Ok(())
}

/// `peerwire id`: the peer id of an existing key file.
fn id(args: &IdArgs) -> Result<()> {
    if !args.key.exists() {
        return Err(format!(
            "no key file at {}; create one with `peerwire keygen --key {}`",
            args.key.display(),
            args.key.display()
        )
        .into());
    }
    let id = peerwire::Keypair::load_or_create(&args.key)?.peer_id();
    println!("{id}");
    if let Some(addr) = args.listen {
        println!("{id}@{addr}");
    }
    Ok(())
}
