//! Peer exchange's driver: one task that answers requests, asks new neighbours, verifies what
//! they send into the address book and dials from it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::DiscoveryConfig;
use crate::codec::{decode_message, encode_message};
use crate::identity::PeerId;
use crate::network::ProtocolFace;
use crate::peers::NetworkEvent;
use crate::peers::book::{Book, BookLimits};
use crate::peers::record::PeerRecord;
use crate::protocols::rpc::{Request, RequestError, RpcClient, RpcServer};
use crate::store::{ANCHORS, BOOK};

/// A request for peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ask {
    max: u16,
}

/// The answer: the answering node's own record first, then a sample of those it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Peers {
    pub(crate) records: Vec<PeerRecord>,
}

/// Refusal code: asked again too soon.
const TOO_SOON: u32 = 429;

#[derive(Debug)]
struct State {
    book: Book,
    /// The signed record of each peer in the book (bounded by the book's capacity).
    records: HashMap<PeerId, PeerRecord>,
    /// When each connected peer last asked us.
    asked_at: HashMap<PeerId, Instant>,
    /// When we last asked each connected peer.
    we_asked: HashMap<PeerId, Instant>,
    rng: u64,
    /// The book changed since it was last written to the data directory.
    dirty: bool,
}

impl State {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    config: DiscoveryConfig,
    face: ProtocolFace,
    own: Option<PeerRecord>,
    stop: CancellationToken,
}

/// Peer exchange on one node: keep it alive while discovery should run. From
/// [`crate::Network::discovery`].
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
    _alive: Arc<StopOnDrop>,
}

#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Discovery {
    /// The peers in the address book, with the address each signed.
    pub fn known(&self) -> Vec<(PeerId, SocketAddr)> {
        let state = self.inner.state.lock();
        let mut known: Vec<_> = state
            .records
            .values()
            .filter_map(|r| r.addrs().first().map(|a| (r.id(), *a)))
            .collect();
        known.sort();
        known
    }

    /// Writes the address book to the data directory now, if it changed since the last write
    /// (it is also written every `interval` and when discovery stops). For a graceful stop.
    pub fn save(&self) {
        save(&self.inner);
    }

    /// The peers most recently reached by dialing, newest first: dial these first after a
    /// restart.
    pub fn anchors(&self) -> Vec<(PeerId, SocketAddr)> {
        self.inner.state.lock().book.anchors()
    }
}

pub(super) fn spawn(
    config: DiscoveryConfig,
    face: ProtocolFace,
    client: RpcClient<Ask, Peers>,
    server: RpcServer<Ask, Peers>,
) -> Discovery {
    let local = face.local_peer_id();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut key = [0u8; 32];
    // A secret bucket key per node; a weak one (time) only if the OS has no randomness.
    if getrandom::fill(&mut key).is_err() {
        key[..8].copy_from_slice(&seed.to_le_bytes());
    }
    let own = face.own_record();
    let stop = CancellationToken::new();
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            book: Book::new(
                local,
                key,
                BookLimits {
                    max_per_source: config.max_per_source,
                    max_per_24: config.max_per_24,
                    max_per_16: config.max_per_16,
                    ..BookLimits::default()
                },
            ),
            records: HashMap::new(),
            asked_at: HashMap::new(),
            we_asked: HashMap::new(),
            rng: seed,
            dirty: false,
        }),
        config,
        face,
        own,
        stop: stop.clone(),
    });
    load(&inner);
    let events = inner.face.events();
    let connected = inner.face.connected();
    tokio::spawn(run(inner.clone(), client, server, events, connected));
    Discovery {
        inner,
        _alive: Arc::new(StopOnDrop(stop)),
    }
}

async fn run(
    inner: Arc<Inner>,
    client: RpcClient<Ask, Peers>,
    mut server: RpcServer<Ask, Peers>,
    mut events: tokio::sync::broadcast::Receiver<NetworkEvent>,
    connected: Vec<PeerId>,
) {
    let mut tick = tokio::time::interval(inner.config.interval);
    let mut exchanges = tokio::task::JoinSet::new();
    let mut dials = tokio::task::JoinSet::new();
    for peer in connected.iter().copied() {
        exchanges.spawn(exchange(inner.clone(), client.clone(), peer));
    }
    // After a restart, the peers last reached are dialed first, all at once (up to the
    // target): they were good recently, and a poisoned book cannot choose them.
    // Then, from a book read back from the data directory, more entries at once, up to the
    // target (later ticks dial one at a time).
    let mut first: Vec<(PeerId, SocketAddr)> = inner.state.lock().book.anchors();
    first.retain(|(peer, _)| !connected.contains(peer));
    for _ in 0..inner.config.target_peers * 4 {
        if first.len() >= inner.config.target_peers {
            break;
        }
        if let Some((peer, addr)) = pick(&inner) {
            if !first.iter().any(|(p, _)| *p == peer) {
                first.push((peer, addr));
            }
        }
    }
    for (peer, addr) in first.into_iter().take(inner.config.target_peers) {
        dials.spawn(dial(inner.clone(), peer, addr));
    }
    loop {
        tokio::select! {
            () = inner.stop.cancelled() => break,
            request = server.recv() => match request {
                Some(request) => answer(&inner, request),
                None => break,
            },
            event = events.recv() => match event {
                Ok(NetworkEvent::Connected { peer, .. }) => {
                    exchanges.spawn(exchange(inner.clone(), client.clone(), peer));
                }
                Ok(NetworkEvent::Disconnected { peer, .. }) => {
                    let mut state = inner.state.lock();
                    state.asked_at.remove(&peer);
                    state.we_asked.remove(&peer);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                save(&inner);
                while exchanges.try_join_next().is_some() {}
                while dials.try_join_next().is_some() {}
                if dials.is_empty() {
                    match pick(&inner) {
                        Some((peer, addr)) => {
                            dials.spawn(dial(inner.clone(), peer, addr));
                        }
                        // Under the target with nothing new to dial: ask a neighbour again
                        // (what it knows may have grown since the connection opened).
                        None => {
                            if let Some(peer) = ask_again(&inner) {
                                exchanges.spawn(exchange(inner.clone(), client.clone(), peer));
                            }
                        }
                    }
                }
            }
        }
    }
    exchanges.abort_all();
    dials.abort_all();
    save(&inner);
}

/// Fills the book from the data directory: the records kept (checked again, as anything read
/// back), those that had been reached marked so, then the anchors, oldest first.
fn load(inner: &Inner) {
    let Some(store) = inner.face.store() else {
        return;
    };
    let (records, anchors) = match (store.load(BOOK), store.load(ANCHORS)) {
        (Ok(records), Ok(anchors)) => (records, anchors),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "discovery: cannot read the address book; starting empty");
            return;
        }
    };
    let mut state = inner.state.lock();
    let local = inner.face.local_peer_id();
    let mut tried = Vec::new();
    for (_, value) in records {
        let Ok((record, was_tried)) = decode_message::<(PeerRecord, bool)>(&value) else {
            continue;
        };
        let Some(addr) = record.addrs().first().copied() else {
            continue;
        };
        if record.id() == local || record.verify().is_err() {
            continue;
        }
        if state.book.add(record.id(), addr, None).is_ok() {
            if was_tried {
                tried.push((record.id(), addr));
            }
            state.records.insert(record.id(), record);
        }
    }
    for (id, addr) in tried {
        state.book.reached(id, addr);
    }
    let mut anchors: Vec<(PeerId, SocketAddr)> = anchors
        .iter()
        .filter_map(|(_, v)| decode_message(v).ok())
        .collect();
    // Stored newest first; replayed oldest first, so the newest ends up first again.
    anchors.reverse();
    for (id, addr) in anchors {
        if state.book.contains(&id) {
            state.book.reached(id, addr);
        }
    }
    tracing::debug!(
        entries = state.book.len(),
        "discovery: address book read back"
    );
}

/// Writes the book and the anchors to the data directory, if they changed.
fn save(inner: &Inner) {
    let Some(store) = inner.face.store() else {
        return;
    };
    let (records, anchors) = {
        let mut state = inner.state.lock();
        if !state.dirty {
            return;
        }
        state.dirty = false;
        let records: Vec<(Vec<u8>, Vec<u8>)> = state
            .records
            .values()
            .filter_map(|r| {
                let key = encode_message(&r.id(), 64).ok()?;
                let value = encode_message(&(r, state.book.is_tried(&r.id())), 4096).ok()?;
                Some((key.to_vec(), value.to_vec()))
            })
            .collect();
        let anchors: Vec<(Vec<u8>, Vec<u8>)> = state
            .book
            .anchors()
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((vec![i as u8], encode_message(a, 128).ok()?.to_vec())))
            .collect();
        (records, anchors)
    };
    // Written in one go each; a failure is said and retried at the next change.
    for (table, entries) in [(BOOK, records), (ANCHORS, anchors)] {
        if let Err(e) = store.replace(table, &entries) {
            tracing::warn!(error = %e, "discovery: cannot write the address book");
            inner.state.lock().dirty = true;
        }
    }
}

/// Answers a request: our record, then a random sample of what we hold.
fn answer(inner: &Inner, request: Request<Ask, Peers>) {
    let peer = request.peer();
    let now = Instant::now();
    let mut state = inner.state.lock();
    if let Some(at) = state.asked_at.get(&peer) {
        if now.saturating_duration_since(*at) < inner.config.min_request_interval {
            drop(state);
            let _ = request.reject(TOO_SOON);
            return;
        }
    }
    state.asked_at.insert(peer, now);
    let max = usize::from(request.body().max)
        .min(inner.config.max_answer)
        .max(1);
    let mut records: Vec<PeerRecord> = inner.own.iter().cloned().collect();
    let mut others: Vec<PeerRecord> = state
        .records
        .values()
        .filter(|r| r.id() != peer)
        .cloned()
        .collect();
    // A partial shuffle: the first `max - 1` are a uniform sample.
    for i in 0..others.len().min(max - 1) {
        let j = i + (state.next() as usize) % (others.len() - i);
        others.swap(i, j);
    }
    records.extend(others.into_iter().take(max - 1));
    drop(state);
    // The asker may have gone: nothing to do then.
    let _ = request.respond(&Peers { records });
}

/// A connected neighbour not asked for `min_request_interval` (so it will not refuse), while
/// the node is under its target; at the target, one every `refresh`.
fn ask_again(inner: &Inner) -> Option<PeerId> {
    let connected = inner.face.connected();
    if connected.is_empty() {
        return None;
    }
    let now = Instant::now();
    let mut state = inner.state.lock();
    if inner.face.outbound() >= inner.config.target_peers {
        let last = state.we_asked.values().max().copied();
        if last.is_some_and(|at| now.saturating_duration_since(at) < inner.config.refresh) {
            return None;
        }
    }
    let start = (state.next() as usize) % connected.len();
    let wait = inner.config.min_request_interval;
    (0..connected.len())
        .map(|k| connected[(start + k) % connected.len()])
        .find(|peer| {
            state
                .we_asked
                .get(peer)
                .is_none_or(|at| now.saturating_duration_since(*at) > wait)
        })
}

/// Asks `peer` for peers and takes a sample of its answer into the book.
async fn exchange(inner: Arc<Inner>, client: RpcClient<Ask, Peers>, peer: PeerId) {
    inner.state.lock().we_asked.insert(peer, Instant::now());
    let max = u16::try_from(inner.config.max_answer).unwrap_or(u16::MAX);
    let mut tries = 0;
    let answer = loop {
        match client.request(peer, &Ask { max }).await {
            Ok(answer) => break answer,
            // The connection was switched under the request (two nodes dialing each other at
            // once keep one connection, silently): ask again on the one kept, a few times.
            Err(RequestError::Disconnected | RequestError::NotConnected)
                if tries < 3 && inner.face.is_connected(peer) =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(_) => return,
        }
    };
    let source = inner.face.peer_addr(peer).map(|a| a.ip());
    let mut records = answer.records;
    records.truncate(inner.config.max_answer);
    let local = inner.face.local_peer_id();
    let mut state = inner.state.lock();
    // The answerer's own record is taken whenever it verifies; the others are sampled.
    let mut taken = 0;
    let mut seen = HashSet::new();
    let len = records.len();
    for i in 0..len {
        let j = i + (state.next() as usize) % (len - i);
        records.swap(i, j);
    }
    records.sort_by_key(|r| r.id() != peer);
    for record in records {
        if record.id() == local || !seen.insert(record.id()) || record.verify().is_err() {
            continue;
        }
        let own = record.id() == peer;
        if !own && taken >= inner.config.accept_per_answer {
            continue;
        }
        let Some(addr) = record.addrs().first().copied() else {
            continue;
        };
        let newer = state
            .records
            .get(&record.id())
            .is_none_or(|old| record.supersedes(old));
        if !newer {
            continue;
        }
        if state.book.add(record.id(), addr, source).is_ok()
            || state.records.contains_key(&record.id())
        {
            state.dirty = true;
            if !own {
                taken += 1;
            }
            state.records.insert(record.id(), record);
        }
    }
    // Records the book no longer holds are dropped, so the map stays within its bounds.
    let State { book, records, .. } = &mut *state;
    records.retain(|id, _| book.contains(id));
}

/// A book entry to dial while under the target, not connected and not ourselves.
fn pick(inner: &Inner) -> Option<(PeerId, SocketAddr)> {
    // Only connections this node dialed count: inbound ones, which anybody can open, never
    // fill its outbound slots (an eclipse by inbound flood).
    if inner.face.outbound() >= inner.config.target_peers {
        return None;
    }
    let connected = inner.face.connected();
    let mut state = inner.state.lock();
    for _ in 0..8 {
        let (coin, pick) = (state.next(), state.next());
        let (peer, addr) = state.book.select(coin, pick)?;
        if !connected.contains(&peer) {
            return Some((peer, addr));
        }
    }
    None
}

async fn dial(inner: Arc<Inner>, peer: PeerId, addr: SocketAddr) {
    let result = inner.face.dial(addr, peer).await;
    let mut state = inner.state.lock();
    state.dirty = true;
    match result {
        Ok(_) => state.book.reached(peer, addr),
        Err(_) => state.book.failed(&peer),
    }
}
