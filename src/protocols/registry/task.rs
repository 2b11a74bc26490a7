//! The registry's drivers: one task on the registry (answers registrations after dialing
//! them back, expires silent members, pushes numbered changes) and one on each member
//! (registers with backoff, beats, applies pushed changes, catches up on a gap). Decisions are
//! the core's; these only move requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::core::{
    Beat, Change, Delta, Directory, DirectoryLimits, Member, MembershipEvent, Refusal, View,
};
use super::wire::{Answer, Ask, Settings};
use super::{MembershipConfig, MembershipError, RegistryConfig};
use crate::error::ConnectError;
use crate::handshake::HandshakeError;
use crate::identity::PeerId;
use crate::network::ProtocolFace;
use crate::peers::backoff::Backoff;
use crate::peers::record::PeerRecord;
use crate::protocols::rpc::{Request, RequestError, RpcClient, RpcServer};

/// Events kept for a slow subscriber (beyond: it sees `Lagged`).
const EVENTS: usize = 1024;
/// How often the registry pushes what changed (changes within one interval go together).
const PUSH_INTERVAL: Duration = Duration::from_millis(20);
/// How long a push, a heartbeat or a deregistration may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Dials to listed nodes at once (`MembershipConfig::connect_members`).
const MAX_DIALS: usize = 16;
/// Heartbeats in a row without an answer before a member registers again.
const MAX_MISSES: u32 = 3;
/// Rejection code for a request a side does not serve (an update sent to a registry, a
/// registration sent to a member, an update from a node that is not the registry).
const NOT_SERVED: u32 = 404;

#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // Jitter only: a fixed value if the OS has no randomness.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Microseconds since the Unix epoch: a record's sequence number, so the record a restarted
/// node signs supersedes the one it signed before.
fn clock_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------------
// The registry.

/// What a registry has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Registrations listed (a node re-registering counts again).
    pub listed: u64,
    /// Registrations refused because the advertised address did not prove the node's id.
    pub unreachable: u64,
    /// Registrations refused otherwise (record, name, full, busy, compatibility).
    pub refused: u64,
    /// Nodes dropped for missing their heartbeats.
    pub dropped_silent: u64,
    /// Nodes that deregistered.
    pub deregistered: u64,
}

#[derive(Debug)]
struct RegistryInner {
    dir: Mutex<Directory>,
    stats: Mutex<RegistryStats>,
    config: RegistryConfig,
    face: ProtocolFace,
    events: broadcast::Sender<MembershipEvent>,
    stop: CancellationToken,
}

/// A running registry. From [`crate::Network::registry`]; dropping every clone stops it.
#[derive(Debug, Clone)]
pub struct RegistryServer {
    inner: Arc<RegistryInner>,
    _alive: Arc<StopOnDrop>,
}

impl RegistryServer {
    /// The listed nodes, by id.
    pub fn members(&self) -> Vec<Member> {
        self.inner
            .dir
            .lock()
            .records()
            .iter()
            .map(Member::from)
            .collect()
    }

    /// Counters of registrations, refusals and departures.
    pub fn stats(&self) -> RegistryStats {
        *self.inner.stats.lock()
    }

    /// The list's version (one more per change).
    pub fn version(&self) -> u64 {
        self.inner.dir.lock().version()
    }

    /// The list's changes as the registry makes them (joins, leaves, state-hash changes).
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }
}

pub(super) fn spawn_registry(
    config: RegistryConfig,
    face: ProtocolFace,
    client: RpcClient<Ask, Answer>,
    server: RpcServer<Ask, Answer>,
) -> RegistryServer {
    let stop = CancellationToken::new();
    let limits = DirectoryLimits {
        max_members: config.max_members,
        heartbeat: config.heartbeat,
        missed: config.missed_heartbeats,
        log: config.change_log.max(1),
    };
    let inner = Arc::new(RegistryInner {
        dir: Mutex::new(Directory::new(limits)),
        stats: Mutex::new(RegistryStats::default()),
        config,
        face,
        events: broadcast::channel(EVENTS).0,
        stop: stop.clone(),
    });
    tokio::spawn(run_registry(inner.clone(), client, server));
    RegistryServer {
        inner,
        _alive: Arc::new(StopOnDrop(stop)),
    }
}

type Check = (Request<Ask, Answer>, PeerRecord, bool);

async fn run_registry(
    inner: Arc<RegistryInner>,
    client: RpcClient<Ask, Answer>,
    mut server: RpcServer<Ask, Answer>,
) {
    let mut checks: JoinSet<Check> = JoinSet::new();
    let mut pushes: JoinSet<()> = JoinSet::new();
    let mut pushed = 0u64;
    let mut push_tick = tokio::time::interval(PUSH_INTERVAL);
    push_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = inner.dir.lock().next_due();
        tokio::select! {
            () = inner.stop.cancelled() => break,
            request = server.recv() => match request {
                Some(request) => registry_request(&inner, request, &mut checks),
                None => break,
            },
            Some(done) = checks.join_next(), if !checks.is_empty() => {
                if let Ok((request, record, reachable)) = done {
                    dialed_back(&inner, request, record, reachable);
                }
            }
            () = crate::protocols::sleep_until(due) => {
                for id in inner.dir.lock().expire(Instant::now()) {
                    inner.stats.lock().dropped_silent += 1;
                    tracing::info!(peer = %id, "registry: dropped a silent node");
                }
            }
            _ = push_tick.tick() => {
                while pushes.try_join_next().is_some() {}
                push(&inner, &client, &mut pushes, &mut pushed);
            }
        }
    }
    checks.abort_all();
    pushes.abort_all();
}

fn registry_request(
    inner: &Arc<RegistryInner>,
    request: Request<Ask, Answer>,
    checks: &mut JoinSet<Check>,
) {
    let sender = request.peer();
    let now = Instant::now();
    let answer = match request.body() {
        Ask::Register { record, compat } => {
            if *compat != inner.config.compat {
                Answer::Mismatch {
                    compat: inner.config.compat,
                }
            } else if let Err(refusal) = inner.dir.lock().check(sender, record) {
                Answer::Refused(refusal)
            } else if checks.len() >= inner.config.max_pending {
                Answer::Refused(Refusal::Busy)
            } else {
                let record = record.clone();
                let face = inner.face.clone();
                let timeout = inner.config.dial_back_timeout;
                checks.spawn(async move {
                    let reachable = match record.addrs().first() {
                        Some(addr) => matches!(
                            tokio::time::timeout(timeout, face.dial(*addr, record.id())).await,
                            Ok(Ok(_))
                        ),
                        None => false,
                    };
                    (request, record, reachable)
                });
                return;
            }
        }
        Ask::Heartbeat { record, .. } => match inner.dir.lock().heartbeat(sender, record, now) {
            Beat::Ok(version) => Answer::Ack { version },
            Beat::Unknown => Answer::Unknown,
        },
        Ask::Deregister => {
            if inner.dir.lock().leave(sender) {
                inner.stats.lock().deregistered += 1;
                tracing::info!(peer = %sender, "registry: a node deregistered");
            }
            Answer::Ack {
                version: inner.dir.lock().version(),
            }
        }
        Ask::Sync { version } => {
            let dir = inner.dir.lock();
            if dir.contains(&sender) {
                Answer::List(dir.since(*version))
            } else {
                Answer::Unknown
            }
        }
        Ask::Update(_) => {
            let _ = request.reject(NOT_SERVED);
            return;
        }
    };
    if matches!(answer, Answer::Mismatch { .. } | Answer::Refused(_)) {
        inner.stats.lock().refused += 1;
    }
    // The asker may have gone: nothing to do then.
    let _ = request.respond(&answer);
}

fn dialed_back(
    inner: &RegistryInner,
    request: Request<Ask, Answer>,
    record: PeerRecord,
    reachable: bool,
) {
    let sender = request.peer();
    let addr = record.addrs().first().copied();
    let answer = if reachable {
        let mut dir = inner.dir.lock();
        match dir.admit(sender, record, Instant::now()) {
            Ok(()) => {
                inner.stats.lock().listed += 1;
                tracing::info!(peer = %sender, ?addr, "registry: listed a node");
                Answer::Registered {
                    settings: Settings {
                        compat: inner.config.compat,
                        heartbeat_ms: u64::try_from(inner.config.heartbeat.as_millis())
                            .unwrap_or(u64::MAX),
                    },
                    list: Delta::Snapshot {
                        version: dir.version(),
                        records: dir.records(),
                    },
                }
            }
            Err(refusal) => {
                inner.stats.lock().refused += 1;
                Answer::Refused(refusal)
            }
        }
    } else {
        inner.stats.lock().unreachable += 1;
        tracing::info!(
            peer = %sender,
            ?addr,
            "registry: not listed, its advertised address did not prove its id"
        );
        Answer::Refused(Refusal::Unreachable)
    };
    let _ = request.respond(&answer);
}

/// Pushes the changes since the last push to every member, and publishes them as events.
fn push(
    inner: &RegistryInner,
    client: &RpcClient<Ask, Answer>,
    pushes: &mut JoinSet<()>,
    pushed: &mut u64,
) {
    let (delta, members, version) = {
        let dir = inner.dir.lock();
        if dir.version() == *pushed {
            return;
        }
        let members: Vec<PeerId> = dir.records().iter().map(PeerRecord::id).collect();
        (dir.since(*pushed), members, dir.version())
    };
    // Pushes still in flight from earlier rounds: skip this one (members catch up from the
    // version their heartbeat answer carries).
    if pushes.len() >= inner.config.max_members.saturating_mul(2).max(16) {
        return;
    }
    if let Delta::Changes { changes, .. } = &delta {
        for change in changes {
            let _ = inner.events.send(match change {
                Change::Joined(record) => MembershipEvent::Joined(record.into()),
                Change::Updated(record) => MembershipEvent::Updated(record.into()),
                Change::Left(id) => MembershipEvent::Left(*id),
            });
        }
    }
    *pushed = version;
    for member in members {
        let client = client.clone();
        let update = Ask::Update(delta.clone());
        pushes.spawn(async move {
            let _ = client.request_with(member, &update, REQUEST_TIMEOUT).await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// A member.

/// Where a member stands with its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipStatus {
    /// Not (or no longer) listed: dialing and registering, with backoff.
    Registering,
    /// Listed, beating.
    Registered,
    /// Refused for good (or left): no longer trying.
    Stopped(Option<MembershipError>),
}

#[derive(Debug)]
struct MemberInner {
    config: MembershipConfig,
    face: ProtocolFace,
    client: RpcClient<Ask, Answer>,
    view: Mutex<View>,
    status: Mutex<MembershipStatus>,
    /// The record this node registers and beats with; re-signed when its state hash changes.
    record: Mutex<Option<PeerRecord>>,
    beat_now: Notify,
    events: broadcast::Sender<MembershipEvent>,
    stop: CancellationToken,
}

/// This node's membership of a registry. From [`crate::Network::membership`]; dropping every
/// clone stops heartbeats.
#[derive(Debug, Clone)]
pub struct Membership {
    inner: Arc<MemberInner>,
    _alive: Arc<StopOnDrop>,
}

impl Membership {
    /// The id registered under `name`, if listed.
    pub fn resolve(&self, name: &str) -> Option<PeerId> {
        self.inner.view.lock().resolve(name)
    }

    /// Every listed node (this one included), by id.
    pub fn members(&self) -> Vec<Member> {
        self.inner.view.lock().members()
    }

    /// Where this node stands with the registry.
    pub fn status(&self) -> MembershipStatus {
        self.inner.status.lock().clone()
    }

    /// The list's changes as this node learns them (about other nodes), and its own
    /// registration and refusal.
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }

    /// Reports a new hash of this node's state (for example of its schema): sent to the
    /// registry at once and from there to every member.
    pub fn set_state_hash(&self, hash: [u8; 32]) {
        {
            let mut record = self.inner.record.lock();
            let seq = record
                .as_ref()
                .map_or(0, |r| r.seq().saturating_add(1))
                .max(clock_seq());
            if let Ok(signed) =
                self.inner
                    .face
                    .signed_record(seq, self.inner.config.name.clone(), Some(hash))
            {
                *record = Some(signed);
            }
        }
        self.inner.beat_now.notify_one();
    }

    /// Deregisters (the registry drops this node at once and tells the others) and stops.
    /// Waits at most 2 s for the registry.
    pub async fn leave(self) {
        self.inner.stop.cancel();
        *self.inner.status.lock() = MembershipStatus::Stopped(None);
        let registry = self.inner.config.registry_id;
        let _ = self
            .inner
            .client
            .request_with(registry, &Ask::Deregister, REQUEST_TIMEOUT)
            .await;
    }
}

pub(super) fn spawn_member(
    config: MembershipConfig,
    face: ProtocolFace,
    client: RpcClient<Ask, Answer>,
    server: RpcServer<Ask, Answer>,
) -> Membership {
    let stop = CancellationToken::new();
    let record = face
        .signed_record(clock_seq(), config.name.clone(), None)
        .ok();
    let inner = Arc::new(MemberInner {
        view: Mutex::new(View::new(face.local_peer_id(), config.max_members)),
        status: Mutex::new(MembershipStatus::Registering),
        record: Mutex::new(record),
        beat_now: Notify::new(),
        events: broadcast::channel(EVENTS).0,
        stop: stop.clone(),
        config,
        face,
        client,
    });
    // The list kept from the last run (data directory): known at once, and dialed with
    // `connect_members`, before the registry answers, or while it is down.
    if let Some(store) = inner.face.store() {
        match store.load(crate::store::REGISTRY) {
            Ok(entries) => {
                let records = entries
                    .iter()
                    .filter_map(|(_, v)| crate::codec::decode_message::<PeerRecord>(v).ok())
                    .collect();
                let _ = inner.view.lock().reset(0, records);
            }
            Err(e) => tracing::warn!(error = %e, "registry: cannot read the kept list"),
        }
    }
    tokio::spawn(run_member(inner.clone(), server));
    Membership {
        inner,
        _alive: Arc::new(StopOnDrop(stop)),
    }
}

/// What a member's request came back with.
enum Outcome {
    Registered(Result<Answer, RequestError>),
    DialFailed(ConnectError),
    Beat(Result<Answer, RequestError>),
    Synced(Result<Answer, RequestError>),
}

/// A member's phase.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Register at `at` (a backoff after a failure).
    Idle {
        at: Instant,
        attempt: u32,
    },
    /// A registration is in flight.
    Registering {
        attempt: u32,
    },
    /// Listed: beat at `next`.
    Listed {
        every: Duration,
        next: Instant,
        misses: u32,
    },
    Stopped,
}

struct MemberTask {
    inner: Arc<MemberInner>,
    phase: Phase,
    jobs: JoinSet<Outcome>,
    dials: JoinSet<()>,
    beating: bool,
    syncing: bool,
    backoff: Backoff,
}

async fn run_member(inner: Arc<MemberInner>, mut server: RpcServer<Ask, Answer>) {
    let backoff = Backoff {
        base: Duration::from_millis(200),
        cap: inner.config.backoff_cap,
        jitter_permille: 200,
    };
    let mut m = MemberTask {
        inner: inner.clone(),
        phase: Phase::Idle {
            at: Instant::now(),
            attempt: 0,
        },
        jobs: JoinSet::new(),
        dials: JoinSet::new(),
        beating: false,
        syncing: false,
        backoff,
    };
    if inner.record.lock().is_none() {
        m.stop(MembershipError::NameTooLong);
    }
    m.connect_members();
    loop {
        let due = match m.phase {
            Phase::Idle { at, .. } => Some(at),
            Phase::Listed { next, .. } if !m.beating => Some(next),
            Phase::Stopped => break,
            _ => None,
        };
        tokio::select! {
            () = inner.stop.cancelled() => break,
            request = server.recv() => match request {
                Some(request) => m.update(request),
                None => break,
            },
            Some(done) = m.jobs.join_next(), if !m.jobs.is_empty() => {
                if let Ok(outcome) = done {
                    m.outcome(outcome);
                }
            }
            () = crate::protocols::sleep_until(due) => m.due(),
            () = inner.beat_now.notified() => {
                if let Phase::Listed { next, .. } = &mut m.phase {
                    *next = Instant::now();
                }
            }
        }
    }
    m.jobs.abort_all();
    m.dials.abort_all();
}

impl MemberTask {
    fn stop(&mut self, error: MembershipError) {
        tracing::warn!(%error, "registry: stopped registering");
        let _ = self
            .inner
            .events
            .send(MembershipEvent::Refused(error.to_string()));
        *self.inner.status.lock() = MembershipStatus::Stopped(Some(error));
        self.phase = Phase::Stopped;
    }

    fn retry(&mut self, attempt: u32) {
        *self.inner.status.lock() = MembershipStatus::Registering;
        let delay = self.backoff.delay(attempt, random());
        self.phase = Phase::Idle {
            at: Instant::now() + delay,
            attempt: attempt.saturating_add(1),
        };
    }

    fn due(&mut self) {
        match self.phase {
            Phase::Idle { attempt, .. } => {
                self.phase = Phase::Registering { attempt };
                let inner = self.inner.clone();
                self.jobs.spawn(register(inner));
            }
            Phase::Listed { every, .. } => {
                let Some(record) = self.inner.record.lock().clone() else {
                    return;
                };
                if let Phase::Listed { next, .. } = &mut self.phase {
                    *next = Instant::now() + every;
                }
                self.beating = true;
                self.connect_members();
                let version = self.inner.view.lock().version();
                let client = self.inner.client.clone();
                let registry = self.inner.config.registry_id;
                self.jobs.spawn(async move {
                    let beat = Ask::Heartbeat { record, version };
                    Outcome::Beat(
                        client
                            .request_with(registry, &beat, every.max(REQUEST_TIMEOUT))
                            .await,
                    )
                });
            }
            Phase::Registering { .. } | Phase::Stopped => {}
        }
    }

    fn sync(&mut self) {
        if self.syncing {
            return;
        }
        self.syncing = true;
        let version = self.inner.view.lock().version();
        let client = self.inner.client.clone();
        let registry = self.inner.config.registry_id;
        self.jobs.spawn(async move {
            let ask = Ask::Sync { version };
            Outcome::Synced(client.request_with(registry, &ask, REQUEST_TIMEOUT).await)
        });
    }

    /// Dials listed nodes not connected, up to [`MAX_DIALS`] at once.
    fn connect_members(&mut self) {
        if !self.inner.config.connect_members {
            return;
        }
        while self.dials.try_join_next().is_some() {}
        let local = self.inner.face.local_peer_id();
        let members = self.inner.view.lock().members();
        for member in members {
            if self.dials.len() >= MAX_DIALS {
                break;
            }
            if member.id == local || self.inner.face.is_connected(member.id) {
                continue;
            }
            let face = self.inner.face.clone();
            self.dials.spawn(async move {
                // A failure is retried at the next heartbeat.
                let _ = face.dial(member.addr, member.id).await;
            });
        }
    }

    /// Writes the list to the data directory (after every change that produced an event).
    fn save(&self) {
        let Some(store) = self.inner.face.store() else {
            return;
        };
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .inner
            .view
            .lock()
            .records()
            .iter()
            .filter_map(|r| {
                let key = crate::codec::encode_message(&r.id(), 64).ok()?;
                let value = crate::codec::encode_message(r, 4096).ok()?;
                Some((key.to_vec(), value.to_vec()))
            })
            .collect();
        if let Err(e) = store.replace(crate::store::REGISTRY, &entries) {
            tracing::warn!(error = %e, "registry: cannot keep the list");
        }
    }

    fn publish(&mut self, events: Vec<MembershipEvent>) {
        if !events.is_empty() {
            self.save();
        }
        let joined = events
            .iter()
            .any(|e| matches!(e, MembershipEvent::Joined(_)));
        if joined {
            self.connect_members();
        }
        for event in events {
            let _ = self.inner.events.send(event);
        }
    }

    fn apply(&mut self, delta: Delta) {
        let applied = self.inner.view.lock().apply(delta);
        match applied {
            Ok(events) => self.publish(events),
            Err(_gap) => self.sync(),
        }
    }

    fn outcome(&mut self, outcome: Outcome) {
        let attempt = match self.phase {
            Phase::Registering { attempt } | Phase::Idle { attempt, .. } => attempt,
            _ => 0,
        };
        match outcome {
            Outcome::DialFailed(error) => {
                if let ConnectError::Handshake {
                    source:
                        source @ (HandshakeError::NetworkMismatch { .. }
                        | HandshakeError::PeerMismatch { .. }
                        | HandshakeError::VersionMismatch { .. }),
                    ..
                } = &error
                {
                    self.stop(MembershipError::Handshake(source.to_string()));
                } else {
                    if attempt == 0 {
                        tracing::warn!(%error, "registry: cannot reach the registry; retrying");
                    }
                    self.retry(attempt);
                }
            }
            Outcome::Registered(answer) => match answer {
                Ok(Answer::Registered { settings, list }) => {
                    let every = Duration::from_millis(settings.heartbeat_ms.max(10));
                    self.phase = Phase::Listed {
                        every,
                        next: Instant::now() + every,
                        misses: 0,
                    };
                    *self.inner.status.lock() = MembershipStatus::Registered;
                    let _ = self.inner.events.send(MembershipEvent::Registered);
                    self.apply(list);
                }
                Ok(Answer::Mismatch { compat }) => self.stop(MembershipError::Mismatch {
                    ours: self.inner.config.compat,
                    theirs: compat,
                }),
                Ok(Answer::Refused(refusal @ (Refusal::NameTaken | Refusal::BadRecord))) => {
                    self.stop(MembershipError::Refused(refusal));
                }
                Ok(Answer::Refused(refusal)) => {
                    tracing::warn!(%refusal, "registry: registration refused; retrying");
                    self.retry(attempt);
                }
                Ok(_) | Err(_) => self.retry(attempt),
            },
            Outcome::Beat(answer) => {
                self.beating = false;
                let Phase::Listed { misses, .. } = &mut self.phase else {
                    return;
                };
                match answer {
                    Ok(Answer::Ack { version }) => {
                        *misses = 0;
                        if version != self.inner.view.lock().version() {
                            self.sync();
                        }
                    }
                    Ok(Answer::Unknown) => {
                        // Dropped, or the registry restarted: register again at once.
                        self.inner.view.lock().clear_version();
                        self.retry(0);
                        self.phase = Phase::Idle {
                            at: Instant::now(),
                            attempt: 0,
                        };
                    }
                    Err(RequestError::Timeout | RequestError::Busy | RequestError::Full) => {
                        *misses += 1;
                        if *misses >= MAX_MISSES {
                            self.retry(0);
                        }
                    }
                    Ok(_) | Err(_) => self.retry(0),
                }
            }
            Outcome::Synced(answer) => {
                self.syncing = false;
                match answer {
                    Ok(Answer::List(delta)) => self.apply(delta),
                    Ok(Answer::Unknown) => self.retry(0),
                    Ok(_) | Err(_) => {}
                }
            }
        }
    }

    /// A request from a peer: only the registry's updates are served.
    fn update(&mut self, request: Request<Ask, Answer>) {
        if request.peer() != self.inner.config.registry_id {
            let _ = request.reject(NOT_SERVED);
            return;
        }
        let Ask::Update(delta) = request.body().clone() else {
            let _ = request.reject(NOT_SERVED);
            return;
        };
        if matches!(self.phase, Phase::Listed { .. }) {
            self.apply(delta);
        }
        let version = self.inner.view.lock().version();
        let _ = request.respond(&Answer::Ack { version });
    }
}

/// Dials the registry if needed and registers.
async fn register(inner: Arc<MemberInner>) -> Outcome {
    let registry = inner.config.registry_id;
    if !inner.face.is_connected(registry) {
        if let Err(error) = inner.face.dial(inner.config.registry_addr, registry).await {
            return Outcome::DialFailed(error);
        }
    }
    let Some(record) = inner.record.lock().clone() else {
        return Outcome::Registered(Err(RequestError::Closed));
    };
    let ask = Ask::Register {
        record,
        compat: inner.config.compat,
    };
    Outcome::Registered(inner.client.request(registry, &ask).await)
}
