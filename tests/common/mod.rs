//! Helpers shared by the integration tests: start nodes on loopback, wait with timeouts.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use peerwire::{Config, Inbox, Keypair, Network, NetworkEvent, PeerId};

/// Generous bound for anything that should happen "soon" on loopback; tests never assert speed.
pub const SOON: Duration = Duration::from_secs(20);

/// How long a test may run before it counts as hung: far beyond any test's run on a loaded
/// machine, so it bounds a hang, not a speed.
pub const HUNG: Duration = Duration::from_secs(300);

/// The tests being watched (by their thread's name, which libtest sets to the test's path) and
/// when each started.
static RUNNING: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

/// A test thread's entry in [`RUNNING`], removed when the thread ends (pass or panic).
struct Watched(Option<String>);

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(name) = &self.0 {
            illegal_moves_fail(name);
            let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            running.retain(|(n, _)| n != name);
        }
    }
}

thread_local! {
    static WATCHED: Watched = {
        let name = std::thread::current().name().map(str::to_owned);
        // Only a test's own thread: not tokio's workers, and not `main` (where libtest may run
        // every test in turn with one test thread).
        let name = name.filter(|n| n != "main" && !n.starts_with("tokio-"));
        if let Some(name) = &name {
            static WATCHDOG: std::sync::Once = std::sync::Once::new();
            WATCHDOG.call_once(|| {
                std::thread::spawn(watchdog);
            });
            let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            running.push((name.clone(), std::time::Instant::now()));
        }
        Watched(name)
    };
}

/// Puts the calling test under the watchdog: an await that never completes (a missing timeout
/// somewhere) fails the test binary after [`HUNG`] with the test's name, instead of holding CI
/// until its own limit. `config()` and `node()` call it, so nearly every test is watched.
pub fn watch() {
    WATCHED.with(|_| {});
}

/// A connection's illegal state move happens inside its task, where a panic would only end that
/// task: the library counts it instead, and any count fails the test binary, naming `name` (the
/// test that ended or ran when it was seen; with tests in parallel, maybe not the culprit).
fn illegal_moves_fail(name: &str) {
    let illegal = peerwire::illegal_state_transitions();
    if illegal > 0 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{illegal} illegal socket state transition(s) in this test binary, seen at {name}: a \
             bug in peerwire (the ERROR log line names the move); failing the test binary"
        );
        std::process::exit(101);
    }
}

fn watchdog() {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        illegal_moves_fail("the watchdog");
        let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((name, _)) = running.iter().find(|(_, t)| t.elapsed() > HUNG) {
            // Straight to stderr: this thread inherits the output capture of the test that
            // started it, and what `eprintln!` writes there is lost when the process exits.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{name} has run for more than {} s: it hangs (an await that never completes); \
                 failing the test binary",
                HUNG.as_secs()
            );
            std::process::exit(101);
        }
    }
}

pub fn config() -> Config {
    watch();
    Config::default()
        .listen("127.0.0.1:0".parse().unwrap())
        .network_id("peerwire-test")
        // Hand-driven peers never answer a goodbye; don't wait the full default for them.
        .shutdown_timeout(Duration::from_secs(2))
}

pub async fn node(config: Config) -> (Network<Bytes>, Inbox<Bytes>) {
    watch();
    Network::start(config, Keypair::generate()).await.unwrap()
}

/// A node whose messages are typed (postcard-encoded `Vec<u8>`), for tests of decoding.
pub async fn typed_node(config: Config) -> (Network<Vec<u8>>, Inbox<Vec<u8>>) {
    Network::start(config, Keypair::generate()).await.unwrap()
}

pub async fn soon<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Receives exactly `n` messages.
pub async fn recv_n<M>(inbox: &mut Inbox<M>, n: usize) -> Vec<(PeerId, M)> {
    let mut out = Vec::with_capacity(n);
    soon("messages", async {
        while out.len() < n {
            match inbox.recv().await {
                Some(m) => out.push(m),
                None => panic!("inbox closed after {} of {n} messages", out.len()),
            }
        }
    })
    .await;
    out
}

/// Receives `n` messages, asserting each is from `from`; returns their numbers
/// ([`numbered`]) in arrival order.
pub async fn numbers_from(inbox: &mut Inbox<Bytes>, from: PeerId, n: usize) -> Vec<u32> {
    recv_n(inbox, n)
        .await
        .into_iter()
        .map(|(peer, message)| {
            assert_eq!(peer, from);
            number_of(&message)
        })
        .collect()
}

/// Polls `cond` until it holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    soon(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits for the next event matching `pred`.
pub async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<NetworkEvent>,
    pred: impl Fn(&NetworkEvent) -> bool,
) -> NetworkEvent {
    soon("event", async {
        loop {
            let e = events.recv().await.unwrap();
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

/// The next `Disconnected` event, skipping others.
pub async fn next_disconnect(
    events: &mut tokio::sync::broadcast::Receiver<NetworkEvent>,
) -> NetworkEvent {
    next_event(events, |e| matches!(e, NetworkEvent::Disconnected { .. })).await
}

pub fn numbered(i: u32, len: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

pub fn number_of(b: &Bytes) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A hand-driven peer: real handshake, then arbitrary records or raw bytes. Used to play a
/// buggy or hostile node against a real one.
pub struct RawPeer {
    pub stream: tokio::net::TcpStream,
    pub encoder: peerwire::codec::frame::FrameEncoder,
    pub keypair: Keypair,
    pub remote: PeerId,
}

impl RawPeer {
    pub async fn connect(addr: std::net::SocketAddr, network_id: &str) -> Self {
        Self::connect_as(addr, network_id, Keypair::generate()).await
    }

    /// Like `connect`, with a given identity (for example one the node knows as persistent).
    pub async fn connect_as(
        addr: std::net::SocketAddr,
        network_id: &str,
        keypair: Keypair,
    ) -> Self {
        let stream = soon(
            "a TCP connection to the node",
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .unwrap();
        Self::handshake(stream, network_id, keypair).await
    }

    /// Like `connect`, from another loopback address (`127.0.0.2`...), so the node sees
    /// another IP.
    pub async fn connect_from(
        local: std::net::Ipv4Addr,
        addr: std::net::SocketAddr,
        network_id: &str,
    ) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((local, 0).into()).unwrap();
        let stream = soon("a TCP connection to the node", socket.connect(addr))
            .await
            .unwrap();
        Self::handshake(stream, network_id, Keypair::generate()).await
    }

    async fn handshake(
        mut stream: tokio::net::TcpStream,
        network_id: &str,
        keypair: Keypair,
    ) -> Self {
        use peerwire::handshake::{HandshakeParams, perform};
        let params = HandshakeParams {
            network_id: network_id.into(),
            listen_addr: None,
            expected_peer: None,
            dial_seq: 1,
        };
        let (established, _rest) = soon(
            "the node's side of the handshake",
            perform(&mut stream, &keypair, params, true),
        )
        .await
        .unwrap();
        Self {
            stream,
            encoder: peerwire::codec::frame::FrameEncoder::new(established.sealer),
            keypair,
            remote: established.peer,
        }
    }

    pub fn id(&self) -> PeerId {
        self.keypair.peer_id()
    }

    /// Sends `encoded` as one application message (whatever bytes it holds).
    pub async fn send_encoded(&mut self, encoded: &[u8]) -> std::io::Result<()> {
        let mut offset = 0;
        loop {
            offset = self.encoder.push_message(encoded, offset).unwrap();
            if offset == encoded.len() {
                break;
            }
        }
        self.flush().await
    }

    /// Sends a properly encoded `Bytes` message.
    pub async fn send(&mut self, message: &Bytes) -> std::io::Result<()> {
        // Raw bytes: the record body is the message itself, as a node sends it.
        self.send_encoded(message).await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.encoder.seal().unwrap();
        let out = self.encoder.output().split();
        // A node that neither reads nor closes would hold the test for ever: past `SOON`,
        // the write fails instead (a test that expects a cut sees an error either way).
        tokio::time::timeout(SOON, self.stream.write_all(&out))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the node accepted no bytes for SOON",
                ))
            })
    }

    /// Reads until the node closes the connection; returns whether it did within `SOON`.
    pub async fn closed_by_remote(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        tokio::time::timeout(SOON, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

/// The single connection info of `peer` on `net`, if open.
pub fn peer_info<M: serde::Serialize + 'static>(
    net: &Network<M>,
    peer: PeerId,
) -> Option<peerwire::ConnectionInfo> {
    net.peers().into_iter().find(|p| p.peer == Some(peer))
}

/// Builds a full mesh: node i dials every node j > i. Returns handles and inboxes.
pub async fn mesh(n: usize, cfg: Config) -> Vec<(Network<Bytes>, Inbox<Bytes>)> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(node(cfg.clone()).await);
    }
    for i in 0..n {
        for j in i + 1..n {
            let addr = nodes[j].0.local_addr();
            soon("mesh connect", nodes[i].0.connect(addr))
                .await
                .unwrap();
        }
    }
    for (net, _) in &nodes {
        eventually("full mesh", || net.peers().len() == n - 1).await;
    }
    nodes
}

/// A TCP forwarder between a dialer and `target` that a test can cut (dropping every live
/// connection abruptly, losing whatever was in flight) or partition (refusing new ones).
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    blocked: std::sync::atomic::AtomicBool,
    cut: tokio::sync::Notify,
    generation: std::sync::atomic::AtomicU64,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), target).await
    }

    pub async fn start_at(listen: std::net::SocketAddr, target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(ProxyState {
            blocked: false.into(),
            cut: tokio::sync::Notify::new(),
            generation: 0.into(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if st.blocked.load(SeqCst) {
                    continue; // dropped: the partition refuses it
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let st2 = st.clone();
                let generation = st.generation.load(SeqCst);
                tokio::spawn(async move {
                    let (mut ir, mut iw) = inbound.into_split();
                    let (mut or, mut ow) = outbound.into_split();
                    let cut = async {
                        loop {
                            st2.cut.notified().await;
                            if st2.generation.load(SeqCst) != generation {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut ir, &mut ow) => {}
                        _ = tokio::io::copy(&mut or, &mut iw) => {}
                        () = cut => {}
                    }
                    // Dropping all four halves closes both connections mid-stream.
                });
            }
        });
        Self { addr, state, task }
    }

    /// Drops every live connection through the proxy.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.state.generation.fetch_add(1, SeqCst);
        self.state.cut.notify_waiters();
    }

    /// Cuts and refuses new connections until `heal`.
    pub fn partition(&self) {
        self.state
            .blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }

    pub fn heal(&self) {
        self.state
            .blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// A free loopback port (bound and released; fine for tests on loopback).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A fresh directory under the system's temporary one, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "peerwire-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a node, retrying while its data directory is still held by a node being dropped
/// (its tasks let go of it a moment after the last handle).
pub async fn node_reopening(
    config: Config,
    keypair: peerwire::Keypair,
) -> (Network<Bytes>, Inbox<Bytes>) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match Network::<Bytes>::start(config.clone(), keypair.clone()).await {
            Ok(started) => return started,
            Err(peerwire::StartError::DataDir(peerwire::StoreError::InUse { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    }
}
