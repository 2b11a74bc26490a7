//! `peerwire node`: one long-running chat node with a small key-value store (`kv.rs`). Spawns
//! a dialer task per `--peer`, a task printing connection events and a task printing received
//! messages, and reads stdin on a plain thread: `/` lines are store commands, other lines go to
//! every peer. SIGINT, SIGTERM or SIGHUP shuts it down gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use peerwire::{Direction, Inbox, Keypair, Network, NetworkEvent, PeerId};
use tokio::net::lookup_host;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use peerwire::protocols::registry::{
    Member, Membership, MembershipConfig, MembershipEvent, RegistryConfig,
};

use super::text::printable;
use super::{NodeArgs, RegistryArgs, Result};

/// Pause between dial attempts to a peer that is not reachable yet.
const REDIAL_INTERVAL: Duration = Duration::from_secs(1);

/// Lines read from stdin but not yet broadcast; the reader thread waits when it is full.
const STDIN_CAPACITY: usize = 64;

/// The channel peer exchange runs on.
const DISCOVERY_CHANNEL: u16 = 3;

/// The channel registration runs on (`--registry`, `peerwire registry`).
const REGISTRY_CHANNEL: u16 = 4;

/// Time the printing tasks get to finish after the network has shut down.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the node until SIGINT, SIGTERM or SIGHUP.
pub(crate) async fn run(args: NodeArgs) -> Result<()> {
    let print_config = args.print_config;
    let args = args.resolve().map_err(super::Usage)?;
    if print_config {
        print!("{}", args.to_toml());
        return Ok(());
    }
    if let Some(dir) = &args.config.data_dir {
        // Made here, not only by the network: the key may live in it.
        std::fs::create_dir_all(dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
    }
    let keypair = load_key(args.key.as_deref())?;
    let mut config = args.config.clone();
    for (id, addr) in &args.persistent {
        let resolved = resolve(addr)
            .await
            .map_err(|e| format!("--persistent {id}@{addr}: {e}"))?;
        config = config.persistent_peer(resolved, *id);
    }
    for (id, addr) in &args.durable {
        let resolved = resolve(addr)
            .await
            .map_err(|e| format!("--durable {id}@{addr}: {e}"))?;
        config = config.durable_peer(resolved, *id);
    }
    // Register before announcing the address, so a signal sent as soon as the node is visibly
    // up still shuts it down gracefully instead of killing it.
    let mut shutdown = ShutdownSignal::new()?;
    let (net, inbox) = Network::<Bytes>::start(declare(config), keypair).await?;
    // Subscribed before anything can dial (discovery and registration dial at start, from the
    // data directory), so that no join is missed.
    let events = net.events();
    let mut kv = super::kv::Kv::start(&net)?;
    let mut pubsub = super::pubsub::PubSub::start(&net)?;
    let mut blobs = super::blobs::Blobs::start(&net, args.swarm_test_corrupt)?;
    // Peer exchange (--discover): a node given one --peer finds the others through it.
    let discovery = if args.discover {
        Some(net.discovery(DISCOVERY_CHANNEL)?)
    } else {
        None
    };
    // Registration (--registry): the node is listed once the registry has dialed it back.
    let membership = match &args.registry {
        Some((id, addr)) => {
            let resolved = resolve(addr)
                .await
                .map_err(|e| format!("--registry {id}@{addr}: {e}"))?;
            let mut member = MembershipConfig::new(REGISTRY_CHANNEL, resolved, *id)
                .compat(args.compat)
                .connect_members(true);
            if let Some(name) = &args.name {
                member = member.name(name.clone());
            }
            Some(net.membership(member)?)
        }
        None => {
            if args.name.is_some() {
                tracing::warn!("--name is only used with --registry; ignored");
            }
            None
        }
    };
    // Subscribed at once: a refusal takes at least a round trip to the registry.
    let mut member_events = membership.as_ref().map(Membership::events);
    println!("peer id: {}", net.local_peer_id());
    println!("listening on: {}", net.local_addr());
    println!("{}", super::kv::usage());

    let stop_printing = CancellationToken::new();
    let metrics = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--metrics {addr}: {e}"))?;
            println!("metrics on: http://{}/metrics", listener.local_addr()?);
            Some(tokio::spawn(super::metrics::serve(
                listener,
                net.clone(),
                stop_printing.clone(),
            )))
        }
        None => None,
    };
    let event_printer = tokio::spawn(print_events(events, stop_printing.clone()));
    let message_printer = tokio::spawn(print_messages(inbox));
    let mut dialers = JoinSet::new();
    for peer in args.peers {
        dialers.spawn(keep_connected(net.clone(), peer));
    }
    let mut lines = read_stdin_lines();
    let mut stdin_open = true;
    let mut refused = None;
    let names = |text: &str| membership.as_ref().and_then(|m| m.resolve(text));

    loop {
        tokio::select! {
            signal = shutdown.recv() => {
                tracing::info!(signal, "shutting down");
                break;
            }
            event = next_member_event(member_events.as_mut()) => {
                if let MembershipEvent::Refused(reason) = event {
                    refused = Some(reason);
                    break;
                }
                print_member_event(&event);
            }
            line = lines.recv(), if stdin_open => match line {
                Some(line) => {
                    let text = line.trim_end_matches(['\r', '\n']);
                    if text.starts_with('/') {
                        if text.trim() == "/peers" {
                            let persistent = net.persistent_peers().await;
                            print_peers(&net, &persistent, discovery.as_ref(), membership.as_ref());
                        } else if let Some(peer) = text.strip_prefix("/persist ") {
                            persist(&net, peer.trim(), false).await;
                        } else if let Some(peer) = text.strip_prefix("/durable ") {
                            persist(&net, peer.trim(), true).await;
                        } else if let Some(peer) = text.strip_prefix("/unpersist ") {
                            unpersist(&net, peer.trim(), &names).await;
                        } else if let Some(state) = text.strip_prefix("/state ") {
                            set_state(membership.as_ref(), state);
                        } else if !kv.command(text, &names)
                            && !pubsub.command(text)
                            && !blobs.command(text)
                        {
                            println!("unknown command; {}", super::kv::usage());
                        }
                    } else {
                        broadcast_line(&net, line).await;
                    }
                }
                None => {
                    // Keep running without stdin, e.g. when started in the background.
                    tracing::debug!("stdin closed");
                    stdin_open = false;
                }
            },
        }
    }

    dialers.abort_all();
    if let Some(discovery) = &discovery {
        // Now, not when its task notices the shutdown: the process may be gone by then.
        discovery.save();
    }
    if let Some(membership) = membership {
        // Deregistered at once: the others learn now, not after three missed heartbeats.
        membership.leave().await;
    }
    kv.stop().await;
    pubsub.stop().await;
    blobs.stop().await;
    net.shutdown().await;
    stop_printing.cancel();
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    // The inbox yields None once shut down and drained, which ends the message printer.
    let printers = async {
        let _ = event_printer.await;
        let _ = message_printer.await;
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, printers).await.is_err() {
        tracing::warn!("printing tasks did not finish after shutdown");
    }
    tracing::info!("shut down");
    match refused {
        Some(reason) => Err(format!("the registry refused this node: {reason}").into()),
        None => Ok(()),
    }
}

/// Loads (or creates) the key file, refusing one others can read; a fresh identity without one.
fn load_key(path: Option<&std::path::Path>) -> Result<Keypair> {
    match path {
        Some(path) => {
            let keypair = Keypair::load_or_create(path)
                .map_err(|e| format!("key file {}: {e}", path.display()))?;
            private_to_owner(path)?;
            Ok(keypair)
        }
        None => Ok(Keypair::try_generate()?),
    }
}

/// Every channel a node uses. The registry declares them too, so nothing a node sends it is
/// charged as traffic on an undeclared channel.
fn declare(config: peerwire::Config) -> peerwire::Config {
    super::blobs::declare(super::pubsub::declare(super::kv::declare(config)))
        .channel(DISCOVERY_CHANNEL, peerwire::ChannelSpec::high())
        .channel(REGISTRY_CHANNEL, peerwire::ChannelSpec::high())
}

/// The next registry event, or never without `--registry`.
async fn next_member_event(
    events: Option<&mut broadcast::Receiver<MembershipEvent>>,
) -> MembershipEvent {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(event) => return event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "missed registry events; /peers shows the current list"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

fn short_hash(hash: Option<[u8; 32]>) -> String {
    hash.map_or_else(
        || "-".to_owned(),
        |h| h[..4].iter().map(|b| format!("{b:02x}")).collect(),
    )
}

fn describe(member: &Member) -> String {
    format!(
        "{} {} {} state {}",
        member.id,
        member.name.as_deref().unwrap_or("-"),
        member.addr,
        short_hash(member.state_hash)
    )
}

fn print_member_event(event: &MembershipEvent) {
    match event {
        MembershipEvent::Registered => println!("registered with the registry"),
        MembershipEvent::Joined(member) => println!("member joined: {}", describe(member)),
        MembershipEvent::Updated(member) => println!("member updated: {}", describe(member)),
        MembershipEvent::Left(id) => println!("member left: {id}"),
        // Refusals end the node (handled by the caller); newer kinds are not user-facing here.
        other => tracing::debug!(event = ?other, "registry event"),
    }
}

/// `/state TEXT`: reports the SHA-256 of TEXT as this node's state hash.
fn set_state(membership: Option<&Membership>, text: &str) {
    use sha2::Digest;
    let Some(membership) = membership else {
        println!("/state: no --registry to report a state to");
        return;
    };
    let hash: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
    membership.set_state_hash(hash);
    println!("state hash {}", short_hash(Some(hash)));
}

/// `peerwire registry`: lists the nodes that register, until SIGINT, SIGTERM or SIGHUP.
pub(crate) async fn run_registry(args: RegistryArgs) -> Result<()> {
    let keypair = load_key(args.key.as_deref())?;
    let mut shutdown = ShutdownSignal::new()?;
    let mut config = peerwire::Config::default().listen(
        args.listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7000))),
    );
    config.network_id = args
        .network_id
        .clone()
        .unwrap_or_else(|| "peerwire".to_owned());
    let (net, inbox) = Network::<Bytes>::start(declare(config), keypair).await?;
    let mut registry_config = RegistryConfig::new(REGISTRY_CHANNEL).compat(args.compat);
    if let Some(every) = args.heartbeat {
        registry_config = registry_config.heartbeat(every);
    }
    let registry = net.registry(registry_config)?;
    let mut events = registry.events();
    let (id, addr) = (net.local_peer_id(), net.local_addr());
    println!("peer id: {id}");
    println!("listening on: {addr}");
    println!("registry: {id}@{addr} (start nodes with --registry {id}@{addr})");
    // Chat lines nodes broadcast reach the registry too: taken and dropped.
    let drain = tokio::spawn(async move { while inbox.recv().await.is_some() {} });
    loop {
        tokio::select! {
            signal = shutdown.recv() => {
                tracing::info!(signal, "shutting down");
                break;
            }
            event = next_member_event(Some(&mut events)) => print_member_event(&event),
        }
    }
    drop(registry);
    net.shutdown().await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    Ok(())
}

/// `/peers`: every peer known (from peer exchange, with `--discover`) or connected, with its address and whether
/// it is connected now.
/// `/persist ID@HOST:PORT` and `/durable ID@HOST:PORT`: a persistent (or durable) peer from now
/// on, and after a restart too with `--data-dir`.
async fn persist(net: &Network<Bytes>, text: &str, durable: bool) {
    let command = if durable { "/durable" } else { "/persist" };
    let (id, addr) = match super::parse_persistent(text) {
        Ok(parsed) => parsed,
        Err(e) => return println!("{command}: {e}"),
    };
    let addr = match resolve(&addr).await {
        Ok(addr) => addr,
        Err(e) => return println!("{command} {addr}: {e}"),
    };
    let added = if durable {
        net.add_durable_peer(addr, id).await
    } else {
        net.add_persistent_peer(addr, id).await
    };
    let kept = if net.data().is_some() {
        "kept in the data directory"
    } else {
        "until this node stops (no --data-dir)"
    };
    match added {
        Ok(true) => println!("{command}: {id} at {addr} from now on, {kept}"),
        Ok(false) => println!("{command}: {id} was persistent already; its address is now {addr}"),
        Err(e) => println!("{command} {id}: {e}"),
    }
}

/// `/unpersist PEER`: no longer persistent; what it had not acknowledged is let go.
async fn unpersist(net: &Network<Bytes>, text: &str, names: &dyn Fn(&str) -> Option<PeerId>) {
    let id = match text.parse::<PeerId>() {
        Ok(id) => id,
        Err(e) => match names(text) {
            Some(id) => id,
            None => {
                return println!(
                    "/unpersist: {text} is neither a peer id ({e}) nor a registered name"
                );
            }
        },
    };
    let before = net.stats().persistent_removed;
    match net.remove_persistent_peer(id).await {
        Ok(true) => println!(
            "/unpersist: {id} is no longer persistent ({} unacknowledged messages let go)",
            net.stats().persistent_removed.saturating_sub(before)
        ),
        Ok(false) => println!("/unpersist: {id} was not a persistent peer"),
        Err(e) => println!("/unpersist {id}: {e}"),
    }
}

fn print_peers(
    net: &Network<Bytes>,
    persistent: &[peerwire::PersistentPeer],
    discovery: Option<&peerwire::protocols::discovery::Discovery>,
    membership: Option<&Membership>,
) {
    if let Some(membership) = membership {
        let local = net.local_peer_id();
        for member in membership.members() {
            if member.id != local {
                let state = if net.is_connected(member.id) {
                    "connected"
                } else {
                    "listed"
                };
                println!("member {} {state}", describe(&member));
            }
        }
    }
    let mut rows: std::collections::BTreeMap<PeerId, (String, bool)> = discovery
        .map(peerwire::protocols::discovery::Discovery::known)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, addr)| (id, (addr.to_string(), false)))
        .collect();
    for p in persistent {
        rows.insert(p.id, (p.addr.to_string(), false));
    }
    for info in net.peers() {
        let Some(peer) = info.peer else { continue };
        // The address it listens on, if it said; else the connection's.
        let addr = info.listen_addr.unwrap_or(info.addr);
        let row = rows.entry(peer).or_insert_with(|| (addr.to_string(), true));
        row.1 = true;
    }
    if rows.is_empty() {
        println!("no peers known");
    }
    for (id, (addr, connected)) in rows {
        let state = if connected { "connected" } else { "known" };
        let kind = match persistent.iter().find(|p| p.id == id) {
            Some(p) if p.durable => " durable",
            Some(_) => " persistent",
            None => "",
        };
        println!("peer {id} {addr} {state}{kind}");
    }
}

/// Refuses a key file that others on the machine can read (as ssh refuses a private key):
/// whoever reads it can be this node. Says how to fix it.
fn private_to_owner(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("key file {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "key file {} can be read by other users (mode {:o}); make it private with \
                 `chmod 600 {}` and start again",
                path.display(),
                mode & 0o777,
                path.display()
            )
            .into());
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Sends one stdin line to every connected peer.
async fn broadcast_line(net: &Network<Bytes>, line: String) {
    let text = line.trim_end_matches(['\r', '\n']);
    if text.trim().is_empty() {
        return;
    }
    match net
        .broadcast(&Bytes::copy_from_slice(text.as_bytes()))
        .await
    {
        Ok(report) if report.queued == 0 => tracing::warn!("no peer connected; line not sent"),
        Ok(report) => tracing::debug!(peers = report.queued, "line sent"),
        Err(e) => tracing::error!(error = %e, "cannot send line"),
    }
}

/// Failed attempts between two warnings about the same `--peer` (one a second: a summary every
/// half minute, so an unreachable peer cannot flood the log).
const WARN_EVERY: u64 = 30;

/// Failed attempts to reach one `--peer` since it was last connected, and which of them are
/// worth a warning: the first, then one per [`WARN_EVERY`].
#[derive(Debug, Default)]
struct Failures(u64);

impl Failures {
    /// Counts a failure; returns whether to log it at WARN (else at DEBUG).
    fn failed(&mut self) -> bool {
        self.0 += 1;
        self.0 == 1 || self.0 % WARN_EVERY == 0
    }

    /// Connected: the next failure is a first one again.
    fn connected(&mut self) {
        self.0 = 0;
    }
}

/// Keeps a connection to `peer` (a `--peer` flag) for as long as the node runs: dials every
/// [`REDIAL_INTERVAL`] until connected, and again whenever that connection is lost. Failures are
/// logged at WARN with the flag, the address and the reason, the first time and then once per
/// [`WARN_EVERY`] attempts.
async fn keep_connected(net: Network<Bytes>, peer: String) {
    let mut failures = Failures::default();
    loop {
        // Subscribed before dialing, so a loss right after connecting is not missed.
        let mut events = net.events();
        let failure = match resolve(&peer).await {
            Ok(addr) => match net.connect(addr).await {
                Ok(id) => {
                    tracing::info!(%addr, peer = %id, "connected (--peer {peer})");
                    failures.connected();
                    if !wait_for_loss(&net, &mut events, id).await {
                        return;
                    }
                    tracing::info!(peer = %id, "lost --peer {peer}; redialing");
                    continue;
                }
                Err(peerwire::ConnectError::Closed) => return,
                Err(peerwire::ConnectError::Handshake {
                    source: peerwire::handshake::HandshakeError::SelfConnection,
                    ..
                }) => {
                    // Dialing again would find the same node: say so once and stop.
                    tracing::warn!(
                        %addr,
                        "--peer {peer} is this node's own address; not dialing it (remove the \
                         flag, or give the address of another node)"
                    );
                    return;
                }
                Err(e) => e.to_string(),
            },
            Err(e) => format!("cannot resolve: {e}"),
        };
        if failures.failed() {
            tracing::warn!(
                attempts = failures.0,
                "cannot connect to --peer {peer}: {failure}; retrying every {} s",
                REDIAL_INTERVAL.as_secs()
            );
        } else {
            tracing::debug!(attempts = failures.0, "--peer {peer}: {failure}");
        }
        tokio::time::sleep(REDIAL_INTERVAL).await;
    }
}

/// Waits until `peer` disconnects; `false` when the node is shutting down instead.
async fn wait_for_loss(
    net: &Network<Bytes>,
    events: &mut broadcast::Receiver<NetworkEvent>,
    peer: PeerId,
) -> bool {
    loop {
        match events.recv().await {
            Ok(NetworkEvent::Disconnected {
                peer: gone,
                reason: peerwire::DisconnectReason::Shutdown,
            }) if gone == peer => return false,
            Ok(NetworkEvent::Disconnected { peer: gone, .. }) if gone == peer => return true,
            Ok(_) => {}
            // Missed events: look at the peer map instead.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !net.is_connected(peer) {
                    return true;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

/// Resolves HOST:PORT to its first address, again on every attempt so DNS changes are seen.
async fn resolve(peer: &str) -> Result<SocketAddr> {
    lookup_host(peer)
        .await?
        .next()
        .ok_or_else(|| format!("{peer} resolves to no address").into())
}

/// Prints joins and leaves until cancelled, then whatever is still buffered (the goodbyes of
/// the shutdown).
async fn print_events(mut events: broadcast::Receiver<NetworkEvent>, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = stop.cancelled() => break,
        };
        match event {
            Ok(event) => print_event(&event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed connection events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    while let Ok(event) = events.try_recv() {
        print_event(&event);
    }
}

fn print_event(event: &NetworkEvent) {
    match event {
        NetworkEvent::Connected {
            peer,
            addr,
            direction,
        } => {
            let direction = match direction {
                Direction::Inbound => "inbound",
                Direction::Outbound => "outbound",
            };
            println!("peer joined: {peer} {addr} ({direction})");
        }
        NetworkEvent::Disconnected { peer, reason } => println!("peer left: {peer} ({reason})"),
        // NetworkEvent is non-exhaustive; newer kinds are not user-facing here.
        other => tracing::debug!(event = ?other, "network event"),
    }
}

/// Prints every received message as `<sender>: <text>` until the inbox closes.
async fn print_messages(inbox: Inbox<Bytes>) {
    while let Some((from, message)) = inbox.recv().await {
        println!("{from}: {}", printable(&message));
    }
}

/// Reads stdin lines on a dedicated thread.
///
/// Not `tokio::io::stdin`: its blocking read cannot be cancelled, so the runtime could not shut
/// down while stdin stays open. The thread is never joined; it ends at EOF, when the receiver is
/// dropped, or with the process.
fn read_stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(STDIN_CAPACITY);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// SIGINT, SIGTERM and SIGHUP (Ctrl-C only on non-Unix), registered when created: each shuts
/// the node down gracefully (a closed terminal sends SIGHUP, which must not skip the goodbye).
#[derive(Debug)]
struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.hangup.recv() => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            // If Ctrl-C cannot be watched, only killing the process stops the node.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_peer_warns_first_then_every_thirty_attempts() {
        let mut failures = Failures::default();
        let warned: Vec<u64> = (1..=95).filter(|_| failures.failed()).collect();
        assert_eq!(warned, [1, 30, 60, 90]);
        // Once connected, the next failure is news again.
        failures.connected();
        assert!(failures.failed());
        assert!(!failures.failed());
    }
}
