//! The node program's key-value store and its commands, on the request protocol: `/put` stores
//! locally, `/get PEER KEY` asks a peer (which answers from its own store, as a local lookup:
//! the Weaviate proxy in miniature), `/replicate PEER` pushes every later `/put` to a peer and
//! reports each acknowledgement (DefraDB's active replication). Spawns the serving task and
//! one replicator task per target.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use peerwire::protocols::rpc::{RequestError, RpcClient, RpcConfig, RpcServer};
use peerwire::{ChannelSpec, Config, Network, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::text::printable;

/// The channel the store's requests travel on (high priority: a `/get` is interactive).
const KV_CHANNEL: u16 = 1;
/// Keys the store holds; a `/put` of a new key past it is refused.
const MAX_KEYS: usize = 100_000;
/// Longest key, in bytes.
const MAX_KEY: usize = 256;
/// Longest value, in bytes.
const MAX_VALUE: usize = 16 * 1024;
/// Puts waiting to be acknowledged by one replica; past it a put is not queued for that
/// replica, and the node says so.
const REPLICATION_QUEUE: usize = 10_000;
/// Pause before retrying a put the replica has not acknowledged.
const RETRY: Duration = Duration::from_secs(1);
/// Rejection code: the store is full or the entry too large.
const REJECT_FULL: u32 = 1;

/// A request of the store protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum KvRequest {
    /// Look a key up in the peer's own store.
    Get { key: String },
    /// Store a key (a replicated `/put`); answered with `Ack`.
    Put { key: String, value: String },
}

/// An answer of the store protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum KvAnswer {
    /// The value, if the key is known.
    Value(Option<String>),
    /// The put is stored.
    Ack,
}

/// Adds the store's channel to the node's configuration.
pub(crate) fn declare(config: Config) -> Config {
    config.channel(KV_CHANNEL, ChannelSpec::high())
}

/// The bounded in-memory store.
#[derive(Debug, Default)]
struct Store(Mutex<BTreeMap<String, String>>);

impl Store {
    fn put(&self, key: &str, value: &str) -> Result<(), String> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(format!(
                "key or value too long (at most {MAX_KEY} and {MAX_VALUE} bytes)"
            ));
        }
        let mut map = self.0.lock();
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            return Err(format!("store full ({MAX_KEYS} keys)"));
        }
        map.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0.lock().get(key).cloned()
    }
}

/// The store, its protocol client and its replicas.
pub(crate) struct Kv {
    store: Arc<Store>,
    client: RpcClient<KvRequest, KvAnswer>,
    replicas: HashMap<PeerId, mpsc::Sender<(String, String)>>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    /// The data directory (`--data-dir`), where replication targets are kept.
    data: Option<peerwire::DataStore>,
}

/// Key prefix of a kept replication target (then the peer id).
const REPLICA_KEY: &str = "replica/";

impl Kv {
    /// Opens the store protocol on `net` and starts serving peers' requests.
    pub(crate) fn start(net: &Network<Bytes>) -> super::Result<Self> {
        let (client, server) = net.rpc::<KvRequest, KvAnswer>(RpcConfig::new(KV_CHANNEL))?;
        let store = Arc::new(Store::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(server, store.clone(), stop.clone()));
        let mut kv = Self {
            store,
            client,
            replicas: HashMap::new(),
            tasks,
            stop,
            data: net.data(),
        };
        // Replication targets kept from the last run.
        let kept = kv
            .data
            .as_ref()
            .map(|d| d.entries(REPLICA_KEY.as_bytes()))
            .transpose()?
            .unwrap_or_default();
        for (key, _) in kept {
            let id = std::str::from_utf8(&key[REPLICA_KEY.len()..])
                .ok()
                .and_then(|text| text.parse::<PeerId>().ok());
            match id {
                Some(peer) => kv.replicate(peer),
                None => tracing::warn!(
                    "ignoring an unreadable replication target in the data directory"
                ),
            }
        }
        Ok(kv)
    }

    /// Runs one `/` command line; returns false if it is not one of the store's commands.
    /// `names` turns a registered name into a peer id (with `--registry`).
    pub(crate) fn command(&mut self, line: &str, names: &dyn Fn(&str) -> Option<PeerId>) -> bool {
        let peer_of = |text: &str| text.parse::<PeerId>().or_else(|e| names(text).ok_or(e));
        let mut words = line.splitn(3, ' ');
        let (command, first, rest) = (words.next(), words.next(), words.next());
        match (command, first, rest) {
            (Some("/put"), Some(key), Some(value)) => self.put(key, value),
            (Some("/get"), Some(peer), Some(key)) => match peer_of(peer) {
                Ok(peer) => self.get(peer, key.trim().to_owned()),
                Err(e) => println!("/get: {peer} is neither a peer id ({e}) nor a registered name"),
            },
            (Some("/replicate"), Some(peer), None) => match peer_of(peer.trim()) {
                Ok(peer) => self.replicate(peer),
                Err(e) => {
                    println!("/replicate: {peer} is neither a peer id ({e}) nor a registered name");
                }
            },
            (Some("/put" | "/get" | "/replicate" | "/help"), _, _) => println!("{}", usage()),
            _ => return false,
        }
        true
    }

    fn put(&mut self, key: &str, value: &str) {
        if let Err(e) = self.store.put(key, value) {
            println!("/put {key}: {e}");
            return;
        }
        println!("stored {key}");
        for (peer, queue) in &self.replicas {
            if queue.try_send((key.to_owned(), value.to_owned())).is_err() {
                println!(
                    "replication to {peer} is {REPLICATION_QUEUE} puts behind: {key} not queued for it"
                );
            }
        }
    }

    /// Asks `peer` in the background, so a slow peer never blocks the prompt.
    fn get(&mut self, peer: PeerId, key: String) {
        let client = self.client.clone();
        self.tasks.spawn(async move {
            let shown = printable(key.as_bytes());
            match client.request(peer, &KvRequest::Get { key }).await {
                Ok(KvAnswer::Value(Some(value))) => {
                    println!("{peer} {shown} = {}", printable(value.as_bytes()));
                }
                Ok(KvAnswer::Value(None)) => println!("{peer} {shown} not found"),
                Ok(KvAnswer::Ack) => println!("{peer} {shown}: unexpected answer"),
                Err(e) => println!("{peer} {shown}: {e}"),
            }
        });
    }

    fn replicate(&mut self, peer: PeerId) {
        if self.replicas.contains_key(&peer) {
            println!("already replicating to {peer}");
            return;
        }
        if let Some(data) = &self.data {
            if let Err(e) = data.put(format!("{REPLICA_KEY}{peer}").as_bytes(), b"") {
                println!("replication to {peer} not kept across a restart: {e}");
            }
        }
        let (tx, rx) = mpsc::channel(REPLICATION_QUEUE);
        self.replicas.insert(peer, tx);
        self.tasks
            .spawn(replicator(self.client.clone(), peer, rx, self.stop.clone()));
        println!("replicating every later /put to {peer}");
    }

    /// Stops the replicators and the server (call before the network shuts down).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        self.replicas.clear();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

pub(crate) fn usage() -> &'static str {
    "commands: /put KEY VALUE, /get PEER KEY, /replicate PEER (PEER: an id, or a name with --registry), /sub TOPIC, /unsub TOPIC, /relay TOPIC, /pub TOPIC TEXT, /stats TOPIC, /state TEXT, /peers, /persist ID@HOST:PORT, /durable ID@HOST:PORT, /unpersist PEER, /share PATH, /fetch BLOB_ID PATH, /push BLOB_ID [PEER...], /blobs; any other line is sent to every peer"
}

/// Answers peers' requests from the local store.
async fn serve(
    mut server: RpcServer<KvRequest, KvAnswer>,
    store: Arc<Store>,
    stop: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            request = server.recv() => request,
            () = stop.cancelled() => return,
        };
        let Some(request) = request else { return };
        // Answers are immediate lookups: no task per request needed.
        let result = match request.body().clone() {
            KvRequest::Get { key } => request.respond(&KvAnswer::Value(store.get(&key))),
            KvRequest::Put { key, value } => match store.put(&key, &value) {
                Ok(()) => {
                    println!(
                        "{} replicated {} here",
                        request.peer(),
                        printable(key.as_bytes())
                    );
                    request.respond(&KvAnswer::Ack)
                }
                Err(e) => {
                    tracing::warn!(peer = %request.peer(), "replicated put refused: {e}");
                    request.reject(REJECT_FULL)
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!("answer not sent: {e}");
        }
    }
}

/// Pushes each put to `peer` in order, retrying until it is acknowledged: a replica that is
/// away gets them when it is back.
async fn replicator(
    client: RpcClient<KvRequest, KvAnswer>,
    peer: PeerId,
    mut puts: mpsc::Receiver<(String, String)>,
    stop: CancellationToken,
) {
    while let Some((key, value)) = tokio::select! {
        put = puts.recv() => put,
        () = stop.cancelled() => None,
    } {
        let shown = printable(key.as_bytes());
        let request = KvRequest::Put { key, value };
        let mut attempts = 0u64;
        loop {
            match client.request_idempotent(peer, &request).await {
                Ok(_) => {
                    println!("{peer} acknowledged {shown}");
                    break;
                }
                Err(RequestError::Rejected(_)) => {
                    println!("{peer} refused {shown} (its store is full or the entry too large)");
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    if attempts == 1 {
                        println!(
                            "replication of {shown} to {peer} waits: {e}; retrying every second"
                        );
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
