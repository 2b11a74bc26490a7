//! Command-line interface: the clap argument types and the dispatch to each subcommand.

mod blobs;
mod cluster;
mod config_file;
mod demo;
mod kv;
mod metrics;
mod node;
mod probe;
mod pubsub;
mod report;
mod settings;
mod text;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Error type of the program: every failure ends up as one line on stderr and a non-zero exit.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// A mistake in how the program was started (a flag, a variable, the config file): the
/// program exits with 2, as for a bad flag.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Result with the program's [`Error`].
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Authenticated, encrypted peer-to-peer networking: run a local demo cluster or a chat node.
#[derive(Debug, Parser)]
#[command(name = "peerwire", version)]
pub(crate) struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log filter on stderr: a level (error, warn, info, debug, trace) or RUST_LOG-style
    /// directives such as `peerwire=debug,info`. Without it: PEERWIRE_LOG_LEVEL, then the
    /// config file's `log_level`, then RUST_LOG, then `info`.
    #[arg(long, global = true, value_name = "FILTER", env = "PEERWIRE_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Log line format on stderr: `text` or `json` (one JSON object per line)
    /// [default: the config file's `log_format`, else text].
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        env = "PEERWIRE_LOG_FORMAT"
    )]
    pub(crate) log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The log filter and format: flags and environment first, then the node's config file.
    pub(crate) fn logging(&self) -> std::result::Result<(Option<String>, LogFormat), String> {
        let file = match &self.command {
            Command::Node(args) => match &args.config {
                Some(path) => Some(config_file::ConfigFile::load(path)?),
                None => None,
            },
            _ => None,
        };
        let node = file.as_ref().map(|f| &f.node);
        let level = self
            .log_level
            .clone()
            .or_else(|| node.and_then(|n| n.log_level.clone()));
        let format = match (self.log_format, node.and_then(|n| n.log_format.as_deref())) {
            (Some(format), _) => format,
            (None, None | Some("text")) => LogFormat::Text,
            (None, Some("json")) => LogFormat::Json,
            (None, Some(other)) => {
                return Err(format!(
                    "config file: [node] log_format = {other:?}; expected \"text\" or \"json\""
                ));
            }
        };
        Ok((level, format))
    }
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
    /// Run a registry: nodes started with `--registry ID@ADDR` register with it (it dials each
    /// back before listing it), learn every listed node and their names, and are dropped
    /// after 3 silent heartbeats or at once when they stop.
    Registry(RegistryArgs),
    /// Write a config file for `peerwire node --config FILE`: every option, each with its
    /// meaning, environment variable and default. Refuses to overwrite a file.
    Init(InitArgs),
}

/// Options of `peerwire init`.
#[derive(Debug, Clone, Args)]
pub(crate) struct InitArgs {
    /// Where to write the config file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
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

/// Options of `peerwire node`. Each may also come from the environment (`PEERWIRE_*`, shown
/// below) or the config file's `[node]` table; flags win over the environment, which wins over
/// the file. Library settings without a flag are in the file's `[network]` table or their
/// `PEERWIRE_<NAME>` variables (`peerwire init --config FILE` lists them all).
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeArgs {
    /// Read options and library settings from this TOML file (`peerwire init` writes one).
    #[arg(long, value_name = "FILE", env = "PEERWIRE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the bound address is printed)
    /// [default: 127.0.0.1:0].
    #[arg(long, env = "PEERWIRE_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// A peer to dial, as HOST:PORT: dialed every second until connected, and again whenever
    /// the connection is lost, for as long as the node runs. Repeatable (comma-separated in the
    /// environment).
    #[arg(long = "peer", value_name = "HOST:PORT", value_parser = parse_host_port, env = "PEERWIRE_PEERS", value_delimiter = ',')]
    pub(crate) peers: Vec<String>,
    /// Key file holding this node's identity; created (mode 0600) if missing. Without it the
    /// node gets a fresh identity on every run.
    #[arg(long, value_name = "FILE", env = "PEERWIRE_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Network id; nodes with a different id refuse each other [default: peerwire].
    #[arg(long, env = "PEERWIRE_NETWORK_ID")]
    pub(crate) network_id: Option<String>,
    /// Largest message, sent or received, in bytes [default: the library's, 16 MiB].
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_message_size: Option<usize>,
    /// A peer to stay connected to, as PEER_ID@HOST:PORT: dialed at start, its identity checked,
    /// and redialed by the library with backoff whenever it is away. Repeatable.
    #[arg(long = "persistent", value_name = "ID@HOST:PORT", value_parser = parse_persistent, env = "PEERWIRE_PERSISTENT", value_delimiter = ',')]
    pub(crate) persistent: Vec<(peerwire::PeerId, String)>,
    /// Serve Prometheus metrics on this address at /metrics (GET or HEAD), and /healthz.
    #[arg(long, value_name = "ADDR", env = "PEERWIRE_METRICS")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Find other nodes through the connected ones (peer exchange) and dial until 8 of its connections are ones it made;
    /// `/peers` lists them. Off by default: without it the node keeps exactly the
    /// connections it is given.
    #[arg(long, env = "PEERWIRE_DISCOVER")]
    pub(crate) discover: bool,
    /// How often each connection sends a ping, in seconds (fractions allowed)
    /// [default: the library's, 5 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) ping_interval: Option<Duration>,
    /// Close a connection on which nothing arrives for this long, in seconds (fractions
    /// allowed); must exceed the ping interval [default: the library's, 20 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) idle_timeout: Option<Duration>,
    /// A registry to register with, as REGISTRY_ID@HOST:PORT (`peerwire registry` prints it):
    /// the node is listed once the registry has dialed it back, learns every other listed
    /// node, and accepts their names wherever it accepts a peer id.
    #[arg(long, value_name = "ID@HOST:PORT", value_parser = parse_persistent, env = "PEERWIRE_REGISTRY")]
    pub(crate) registry: Option<(peerwire::PeerId, String)>,
    /// The name to register under (with `--registry`; unique in the registry, at most 64
    /// bytes).
    #[arg(long, env = "PEERWIRE_NAME")]
    pub(crate) name: Option<String>,
    /// The application's compatibility value (with `--registry`); a registry running another
    /// value refuses the node, which then stops [default: 0].
    #[arg(long, value_name = "N", env = "PEERWIRE_COMPAT")]
    pub(crate) compat: Option<u64>,
    /// A persistent peer whose messages survive this node's crash, as PEER_ID@HOST:PORT: every
    /// line sent to it is written to `--data-dir` (required) first, and a restarted node
    /// delivers what it had not acknowledged, exactly once and in order. Repeatable.
    #[arg(long = "durable", value_name = "ID@HOST:PORT", value_parser = parse_persistent, env = "PEERWIRE_DURABLE", value_delimiter = ',')]
    pub(crate) durable: Vec<(peerwire::PeerId, String)>,
    /// Keep what the node learns in this directory across restarts: the address book and
    /// anchors (`--discover`), the registry's last list, replication targets; and, without
    /// `--key`, the node's key (`DIR/node.key`). One node per directory.
    #[arg(long, value_name = "DIR", env = "PEERWIRE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print the settings the node would run with (file, environment and flags merged), as a
    /// config file, and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// Fault injection for the namespace tests: flip a byte of every piece this node uploads.
    #[arg(long, hide = true)]
    pub(crate) swarm_test_corrupt: bool,
}

/// Options of `peerwire registry`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RegistryArgs {
    /// Address to listen on [default: 127.0.0.1:7000].
    #[arg(long, env = "PEERWIRE_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Key file holding the registry's identity; created (mode 0600) if missing. Keep it: nodes
    /// name the registry by the id it proves.
    #[arg(long, value_name = "FILE", env = "PEERWIRE_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Network id; nodes with a different id cannot register [default: peerwire].
    #[arg(long, env = "PEERWIRE_NETWORK_ID")]
    pub(crate) network_id: Option<String>,
    /// The application's compatibility value; nodes with another value are refused with both
    /// values named [default: 0].
    #[arg(long, value_name = "N", env = "PEERWIRE_COMPAT", default_value_t = 0)]
    pub(crate) compat: u64,
    /// How often nodes send a heartbeat, in seconds (fractions allowed); a node silent for 3
    /// of them is dropped [default: 1].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) heartbeat: Option<Duration>,
}

/// What `peerwire node` runs with, once flags, environment and config file are merged.
#[derive(Debug, Clone)]
pub(crate) struct NodeOptions {
    pub(crate) peers: Vec<String>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) persistent: Vec<(peerwire::PeerId, String)>,
    pub(crate) durable: Vec<(peerwire::PeerId, String)>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) discover: bool,
    pub(crate) registry: Option<(peerwire::PeerId, String)>,
    pub(crate) name: Option<String>,
    pub(crate) compat: u64,
    /// `--swarm-test-corrupt` (hidden).
    pub(crate) swarm_test_corrupt: bool,
    /// The library configuration, listen address and network id included.
    pub(crate) config: peerwire::Config,
}

impl NodeOptions {
    /// The merged settings as a config file (`--print-config`).
    pub(crate) fn to_toml(&self) -> String {
        let list = |items: Vec<String>| {
            let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut out = format!(
            "[node]\nlisten = \"{}\"\nnetwork_id = {:?}\n",
            self.config.listen, self.config.network_id
        );
        if let Some(key) = &self.key {
            out.push_str(&format!("key = {:?}\n", key.display().to_string()));
        }
        out.push_str(&format!("peers = {}\n", list(self.peers.clone())));
        let persistent = self
            .persistent
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect();
        out.push_str(&format!("persistent = {}\n", list(persistent)));
        let durable = self
            .durable
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect();
        out.push_str(&format!("durable = {}\n", list(durable)));
        if let Some(metrics) = self.metrics {
            out.push_str(&format!("metrics = \"{metrics}\"\n"));
        }
        out.push_str(&format!("discover = {}\n", self.discover));
        if let Some((id, addr)) = &self.registry {
            out.push_str(&format!("registry = \"{id}@{addr}\"\n"));
        }
        if let Some(name) = &self.name {
            out.push_str(&format!("name = {name:?}\n"));
        }
        out.push_str(&format!("compat = {}\n\n[network]\n", self.compat));
        out.push_str(&settings::current_network_table(&self.config));
        out
    }
}

impl NodeArgs {
    /// Merges defaults, the config file, `PEERWIRE_*` variables and flags, in that order.
    /// Every error names where the bad value came from and the form expected.
    pub(crate) fn resolve(&self) -> std::result::Result<NodeOptions, String> {
        let (file, source) = match &self.config {
            Some(path) => (
                config_file::ConfigFile::load(path)?,
                format!("--config {}", path.display()),
            ),
            None => (config_file::ConfigFile::default(), String::new()),
        };
        let node = &file.node;
        let mut config = peerwire::Config::default();
        file.apply_network(&mut config, &source)?;
        settings::apply_env(&mut config)?;
        let from_file = |what: &str, e: String| format!("{source}: [node] {what}: {e}");
        config.listen = match (self.listen, &node.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => text.parse().map_err(|_| {
                from_file(
                    "listen",
                    format!("{text:?} is not an address such as 127.0.0.1:7001"),
                )
            })?,
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        config.network_id = self
            .network_id
            .clone()
            .or_else(|| node.network_id.clone())
            .unwrap_or_else(|| "peerwire".to_owned());
        if let Some(max) = self.max_message_size {
            config.max_message_size = max;
        }
        if let Some(interval) = self.ping_interval {
            config.ping_interval = interval;
        }
        if let Some(timeout) = self.idle_timeout {
            config.idle_timeout = timeout;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = Some(dir.clone());
        }
        let peers = if self.peers.is_empty() {
            let listed = node.peers.clone().unwrap_or_default();
            for peer in &listed {
                parse_host_port(peer).map_err(|e| from_file("peers", e))?;
            }
            listed
        } else {
            self.peers.clone()
        };
        let persistent = if self.persistent.is_empty() {
            let mut parsed = Vec::new();
            for text in node.persistent.iter().flatten() {
                parsed.push(parse_persistent(text).map_err(|e| from_file("persistent", e))?);
            }
            parsed
        } else {
            self.persistent.clone()
        };
        let metrics = match (self.metrics, &node.metrics) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) if !text.is_empty() => Some(text.parse().map_err(|_| {
                from_file(
                    "metrics",
                    format!("{text:?} is not an address such as 127.0.0.1:9100"),
                )
            })?),
            (None, _) => None,
        };
        let durable = if self.durable.is_empty() {
            let mut parsed = Vec::new();
            for text in node.durable.iter().flatten() {
                parsed.push(parse_persistent(text).map_err(|e| from_file("durable", e))?);
            }
            parsed
        } else {
            self.durable.clone()
        };
        if !durable.is_empty() && config.data_dir.is_none() {
            return Err(
                "--durable keeps messages in the data directory: give --data-dir DIR too".into(),
            );
        }
        let registry = match (&self.registry, &node.registry) {
            (Some(registry), _) => Some(registry.clone()),
            (None, Some(text)) => {
                Some(parse_persistent(text).map_err(|e| from_file("registry", e))?)
            }
            (None, None) => None,
        };
        let name = self.name.clone().or_else(|| node.name.clone());
        if let Some(name) = &name {
            if name.len() > 64 || name.is_empty() {
                return Err(format!("--name {name:?}: a name is 1 to 64 bytes"));
            }
        }
        Ok(NodeOptions {
            durable,
            registry,
            name,
            compat: self.compat.or(node.compat).unwrap_or(0),
            peers,
            key: self
                .key
                .clone()
                .or_else(|| node.key.clone())
                .or_else(|| config.data_dir.as_ref().map(|dir| dir.join("node.key"))),
            persistent,
            metrics,
            discover: self.discover || node.discover.unwrap_or(false),
            swarm_test_corrupt: self.swarm_test_corrupt,
            config,
        })
    }
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
        Command::Registry(args) => node::run_registry(args).await,
        Command::Keygen(args) => keygen(&args),
        Command::Id(args) => id(&args),
        Command::Init(args) => init(&args),
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

/// `peerwire init`: a commented config file, never over an existing file.
fn init(args: &InitArgs) -> Result<()> {
    let path = &args.config;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} already exists; init never overwrites a file (remove it first, or choose \
                     another path)",
                    path.display()
                )
            } else {
                format!("cannot write {}: {e}", path.display())
            }
        })?;
    std::io::Write::write_all(&mut file, config_file::template().as_bytes())?;
    println!(
        "wrote {}; edit it, then run `peerwire node --config {}`",
        path.display(),
        path.display()
    );
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
