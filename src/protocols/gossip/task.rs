//! Gossip's driver: the core behind a lock shared by the handles, and one task that feeds it
//! the gossip channel's messages (checking signatures), connection events and time, and
//! carries out what it asks: sends, deliveries to subscriptions, charges.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::GossipConfig;
use super::core::{Checks, Core, JoinError, Output, PublishError, TopicStats, Verdict};
use super::wire::{self, MsgId, Publication, Wire};
use crate::codec::{decode_body, decode_message, encode_body_kept, encode_message};
use crate::driver::inbox::Inbox;
use crate::identity::{PeerId, VerifierCache};
use crate::network::{Channel, ProtocolFace};
use crate::peers::NetworkEvent;
use crate::protocols::Scores;

/// A publication on its way to a subscription.
#[derive(Debug)]
struct Delivered {
    id: MsgId,
    origin: PeerId,
    hops: u8,
    payload: Bytes,
}

#[derive(Debug)]
struct State {
    core: Core,
    subscriptions: HashMap<String, mpsc::Sender<Delivered>>,
    /// Topics joined with [`Gossip::relay`]: they stay joined when their subscription ends.
    relayed: HashSet<String>,
    scores: Scores,
    verifier: VerifierCache,
    armed: Option<Instant>,
    /// The latest `Tree` and `Refresh` per (neighbour, topic, kind) that found its queue full:
    /// sent again every `RESEND_EVERY` until it goes (a newer one replaces it). Places are
    /// told once, so one lost would leave a link eager at one end only.
    resend: HashMap<(PeerId, String, u8), Bytes>,
}

/// How often messages waiting in `State::resend` are tried again.
const RESEND_EVERY: Duration = Duration::from_millis(20);

/// Messages waiting to be sent again, at most (past it one is dropped, counted).
const MAX_RESEND: usize = 65_536;

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    config: GossipConfig,
    channel: Channel<Bytes>,
    face: ProtocolFace,
    wake: Notify,
    stop: CancellationToken,
    /// This node's publication counter: starts at the clock so a restart does not reuse one.
    seq: AtomicU64,
    frames_dropped: AtomicU64,
}

impl Inner {
    fn with<R>(&self, f: impl FnOnce(&mut State, &mut Vec<Output>) -> R) -> R {
        let mut out = Vec::new();
        let mut state = self.state.lock();
        let result = f(&mut state, &mut out);
        self.apply(&mut state, out);
        if let Some(next) = state.core.next_deadline() {
            if state.armed.is_none_or(|armed| next < armed) {
                state.armed = Some(next);
                self.wake.notify_one();
            }
        }
        result
    }

    fn apply(&self, state: &mut State, mut outputs: Vec<Output>) {
        while !outputs.is_empty() {
            let mut more = Vec::new();
            for output in outputs {
                match output {
                    Output::Send { peer, wire } => {
                        let again = match &wire {
                            Wire::Tree { topic, .. } => Some((peer, topic.clone(), 0)),
                            Wire::Refresh { topic, .. } => Some((peer, topic.clone(), 1)),
                            _ => None,
                        };
                        let bytes = encode_message(&wire, self.channel.max_message_size()).ok();
                        let sent = bytes
                            .as_ref()
                            .is_some_and(|bytes| self.channel.try_send(peer, bytes).is_ok());
                        if let (Some(key), Some(bytes)) = (again, bytes) {
                            if sent {
                                state.resend.remove(&key);
                            } else if state.resend.len() < MAX_RESEND
                                || state.resend.contains_key(&key)
                            {
                                state.resend.insert(key, bytes);
                                continue;
                            }
                        }
                        if !sent {
                            // A full queue to a slow neighbour: gossip recovers (announcements
                            // and repairs go around it), so the message is dropped, counted.
                            self.frames_dropped.fetch_add(1, Relaxed);
                        }
                    }
                    Output::Deliver {
                        id,
                        topic,
                        origin,
                        hops,
                        payload,
                    } => {
                        let queued = state.subscriptions.get(&topic).is_some_and(|tx| {
                            tx.try_send(Delivered {
                                id,
                                origin,
                                hops,
                                payload,
                            })
                            .is_ok()
                        });
                        if !queued {
                            // The subscription is full or gone: not delivered, not forwarded.
                            state
                                .core
                                .verdict(id, Verdict::Ignore, Instant::now(), &mut more);
                        }
                    }
                    Output::Charge { peer, points, why } => {
                        let budget = (self.config.misbehaviour_budget, "gossip");
                        state.scores.charge(&self.face, budget, peer, points, why);
                    }
                }
            }
            outputs = more;
        }
    }
}

/// Held by the handles: the last one dropped stops the task.
#[derive(Debug)]
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.stop.cancel();
    }
}

/// Gossip on one node: join topics as a subscriber or a relay, and read its counters. From
/// [`crate::Network::gossip`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gossip {
    alive: Arc<Alive>,
}

pub(super) fn spawn(
    config: GossipConfig,
    face: ProtocolFace,
    channel: Channel<Bytes>,
    inbox: Inbox<Bytes>,
) -> Gossip {
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            core: {
                let mut core = Core::new(config.limits(), face.local_peer_id());
                // Quarter seconds of the wall clock (see `Core::seq_base`); wrapping is meant.
                let quarters = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() / 250);
                core.set_seq_base(quarters as u16);
                let signer = face.clone();
                core.set_signer(Box::new(move |bytes| signer.sign(bytes)));
                core
            },
            subscriptions: HashMap::new(),
            relayed: HashSet::new(),
            scores: Scores::default(),
            verifier: VerifierCache::default(),
            armed: None,
            resend: HashMap::new(),
        }),
        config,
        channel,
        face,
        wake: Notify::new(),
        stop: CancellationToken::new(),
        seq: AtomicU64::new(seq),
        frames_dropped: AtomicU64::new(0),
    });
    // Subscribed before the connected peers are listed, so no connection is missed.
    let events = inner.face.events();
    let now = Instant::now();
    let connected = inner.face.connected();
    inner.with(|state, out| {
        for peer in connected {
            state.core.on_connected(peer, now, out);
        }
    });
    // Ends by itself when every handle is dropped or the node ends (its inbox closes).
    tokio::spawn(run(inner.clone(), inbox, events));
    Gossip {
        alive: Arc::new(Alive(inner)),
    }
}

async fn run(
    inner: Arc<Inner>,
    inbox: Inbox<Bytes>,
    mut events: tokio::sync::broadcast::Receiver<NetworkEvent>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        let deadline = {
            let mut state = inner.state.lock();
            state.armed = state.core.next_deadline();
            if !state.resend.is_empty() {
                let soon = Instant::now() + RESEND_EVERY;
                state.armed = Some(state.armed.map_or(soon, |at| at.min(soon)));
            }
            state.armed
        };
        let sleep = crate::protocols::sleep_until(deadline);
        tokio::select! {
            biased;
            () = inner.stop.cancelled() => break,
            n = inbox.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                frames(&inner, &mut batch);
            }
            event = events.recv() => match event {
                Ok(NetworkEvent::Connected { peer, .. }) => {
                    inner.with(|state, out| state.core.on_connected(peer, Instant::now(), out));
                }
                Ok(NetworkEvent::Disconnected { peer, .. }) => {
                    inner.with(|state, out| {
                        state.scores.forget(&peer);
                        state.resend.retain(|(to, _, _), _| *to != peer);
                        state.core.on_disconnected(peer, Instant::now(), out);
                    });
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => reconcile(&inner),
                Err(RecvError::Closed) => break,
            },
            () = sleep => {
                inner.with(|state, out| {
                    let channel = &inner.channel;
                    state
                        .resend
                        .retain(|(peer, _, _), bytes| channel.try_send(*peer, bytes).is_err());
                    state.core.poll(Instant::now(), out);
                });
            }
            () = inner.wake.notified() => {}
        }
    }
    inner.stop.cancel();
    // Subscriptions see their end.
    inner.state.lock().subscriptions.clear();
}

/// The core's signature checks, against the signers' keys.
struct Keys<'a>(&'a mut VerifierCache);

impl Checks for Keys<'_> {
    fn publication(&mut self, publication: &Publication, id: &MsgId) -> bool {
        self.0.verify(
            &publication.origin,
            &wire::signed_bytes(id),
            &publication.signature,
        )
    }

    fn stamp(&mut self, root: &PeerId, signed: &[u8], stamp: &[u8; 64]) -> bool {
        self.0.verify(root, signed, stamp)
    }
}

fn frames(inner: &Inner, batch: &mut Vec<(PeerId, Bytes)>) {
    let now = Instant::now();
    inner.with(|state, out| {
        let State { core, verifier, .. } = state;
        let mut verify = Keys(verifier);
        for (peer, bytes) in batch.drain(..) {
            match decode_message::<Wire>(&bytes) {
                Ok(wire) => core.on_wire(peer, wire, now, &mut verify, out),
                Err(_) => out.push(Output::Charge {
                    peer,
                    points: 1,
                    why: "undecodable gossip message",
                }),
            }
        }
    });
}

/// Events were lost: the core's neighbours are set right against the connected peers.
fn reconcile(inner: &Inner) {
    let connected: HashSet<PeerId> = inner.face.connected().into_iter().collect();
    let now = Instant::now();
    inner.with(|state, out| {
        for peer in state.core.neighbours() {
            if !connected.contains(&peer) {
                state.core.on_disconnected(peer, now, out);
            }
        }
        for peer in &connected {
            state.core.on_connected(*peer, now, out);
        }
    });
}

impl Gossip {
    fn inner(&self) -> &Inner {
        &self.alive.0
    }

    /// Subscribes to `topic`: its publications arrive on the returned [`Topic`], which also
    /// publishes. Opens no connection: the topic's neighbours are the connected peers that take
    /// part in it too. One subscription per topic; dropping it leaves the topic.
    ///
    /// # Errors
    /// [`JoinError`]: too many topics, a bad name, or already subscribed.
    pub fn subscribe<T>(&self, topic: &str) -> Result<Topic<T>, JoinError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let inner = self.inner();
        let (tx, rx) = mpsc::channel(inner.config.topic_queue.max(1));
        inner.with(|state, out| {
            state.core.join(topic, true, out)?;
            state.subscriptions.insert(topic.to_owned(), tx);
            Ok(())
        })?;
        Ok(Topic {
            alive: self.alive.clone(),
            name: topic.to_owned(),
            rx,
            _type: PhantomData,
        })
    }

    /// Takes part in `topic` without receiving it: publications are checked (signature, hops,
    /// rate) and forwarded, so a node between publishers and subscribers carries the topic.
    ///
    /// # Errors
    /// [`JoinError::TooManyTopics`] or [`JoinError::BadName`].
    pub fn relay(&self, topic: &str) -> Result<(), JoinError> {
        self.inner().with(|state, out| {
            state.core.join(topic, false, out).or_else(|e| match e {
                JoinError::AlreadySubscribed(_) => Ok(()),
                e => Err(e),
            })?;
            state.relayed.insert(topic.to_owned());
            Ok(())
        })
    }

    /// Publishes `message` on `topic`, which this node must have joined (subscribed or
    /// relayed); see [`Topic::publish`].
    ///
    /// # Errors
    /// As [`Topic::publish`].
    pub fn publish<T: Serialize + 'static>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<MsgId, PublishError> {
        let inner = self.inner();
        let max = inner.config.max_payload;
        let payload = encode_body_kept(message, max).map_err(|e| PublishError::TooLarge {
            len: match e {
                crate::codec::CodecError::MessageTooLarge { len, .. } => len,
                _ => usize::MAX,
            },
            max,
        })?;
        let origin = inner.face.local_peer_id();
        let seq = inner.seq.fetch_add(1, Relaxed);
        let id = wire::id_of(topic, &origin, seq, &payload);
        let publication = Publication {
            topic: topic.to_owned(),
            origin,
            seq,
            payload,
            signature: inner.face.sign(&wire::signed_bytes(&id)),
        };
        inner.with(|state, out| state.core.publish(publication, Instant::now(), out))
    }

    /// Leaves `topic` (its subscription, if any, ends).
    pub fn unsubscribe(&self, topic: &str) {
        self.inner().with(|state, out| {
            state.relayed.remove(topic);
            state.subscriptions.remove(topic);
            state.core.leave(topic, false, out);
        });
    }

    /// The topics joined, each with whether it is subscribed (`true`) or only relayed.
    pub fn topics(&self) -> Vec<(String, bool)> {
        self.inner().state.lock().core.topics()
    }

    /// Neighbours taking part in `topic` (the eager and lazy links of its tree).
    pub fn neighbours(&self, topic: &str) -> usize {
        let (eager, lazy) = self.links(topic);
        eager + lazy
    }

    /// `topic`'s neighbours by role: (eager: sent publications whole, lazy: sent their ids).
    pub fn links(&self, topic: &str) -> (usize, usize) {
        self.inner().state.lock().core.links(topic)
    }

    /// Counters of `topic`, if joined.
    pub fn stats(&self, topic: &str) -> Option<TopicStats> {
        self.inner().state.lock().core.stats(topic)
    }

    /// Counters summed over every topic joined now.
    pub fn total_stats(&self) -> TopicStats {
        self.inner().state.lock().core.total_stats()
    }

    /// Gossip messages that could not be queued to a neighbour (its queue on the gossip
    /// channel was full).
    pub fn frames_dropped(&self) -> u64 {
        self.inner().frames_dropped.load(Relaxed)
    }
}

/// A subscription to one topic: receives its publications, and publishes on it. From
/// [`Gossip::subscribe`]; dropping it leaves the topic (unless it is also relayed).
pub struct Topic<T> {
    alive: Arc<Alive>,
    name: String,
    rx: mpsc::Receiver<Delivered>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.name).finish()
    }
}

impl<T> Drop for Topic<T> {
    fn drop(&mut self) {
        let name = self.name.clone();
        self.alive.0.with(|state, out| {
            state.subscriptions.remove(&name);
            let relay = state.relayed.contains(&name);
            state.core.leave(&name, relay, out);
        });
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Topic<T> {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `message`, signed by this node, to every subscriber of the topic reachable
    /// through nodes that take part in it. Returns its id. Never waits: what cannot be queued
    /// to a neighbour is dropped and counted, and repaired through the others.
    ///
    /// # Errors
    /// [`PublishError::TooLarge`] past `max_payload` (also when it cannot be encoded), or
    /// [`PublishError::NotJoined`] after the topic was left with [`Gossip::unsubscribe`].
    ///
    /// # Cancel safety
    /// Cancel safe: it completes without waiting.
    pub async fn publish(&self, message: &T) -> Result<MsgId, PublishError> {
        Gossip {
            alive: self.alive.clone(),
        }
        .publish(&self.name, message)
    }

    /// The next publication of this topic (never one this node published); `None` once gossip
    /// has stopped. Judge it with [`GossipMessage::accept`], `ignore` or `reject`: it is
    /// forwarded only when accepted.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<GossipMessage<T>> {
        loop {
            let delivered = self.rx.recv().await?;
            match decode_body::<T>(delivered.payload) {
                Ok(payload) => {
                    return Some(GossipMessage {
                        id: delivered.id,
                        origin: delivered.origin,
                        hops: delivered.hops,
                        payload,
                        alive: self.alive.clone(),
                        judged: false,
                    });
                }
                Err(_) => {
                    // Signed by its origin but not a `T`: the two sides disagree on the type.
                    // Not forwarded; the relay is not at fault.
                    let id = delivered.id;
                    self.alive.0.with(|state, out| {
                        state.core.verdict(id, Verdict::Ignore, Instant::now(), out)
                    });
                }
            }
        }
    }
}

/// A received publication. Forwarded to the rest of the topic only once accepted; dropping it
/// without a verdict counts as [`GossipMessage::ignore`].
pub struct GossipMessage<T> {
    /// Its id (a hash over topic, origin, sequence number and payload).
    pub id: MsgId,
    /// The node that published it (proven by its signature), not the neighbour that relayed it.
    pub origin: PeerId,
    /// Hops it made to reach this node (1: straight from its origin).
    pub hops: u8,
    /// The message.
    pub payload: T,
    alive: Arc<Alive>,
    judged: bool,
}

impl<T: std::fmt::Debug> std::fmt::Debug for GossipMessage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipMessage")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("hops", &self.hops)
            .field("payload", &self.payload)
            .finish()
    }
}

impl<T> GossipMessage<T> {
    fn judge(&mut self, verdict: Verdict) {
        self.judged = true;
        let id = self.id;
        self.alive
            .0
            .with(|state, out| state.core.verdict(id, verdict, Instant::now(), out));
    }

    /// Valid: forward it to the rest of the topic.
    pub fn accept(mut self) {
        self.judge(Verdict::Accept);
    }

    /// Not forwarded; nobody is charged.
    pub fn ignore(mut self) {
        self.judge(Verdict::Ignore);
    }

    /// Invalid: not forwarded, and the neighbour that relayed it is charged.
    pub fn reject(mut self) {
        self.judge(Verdict::Reject);
    }
}

impl<T> Drop for GossipMessage<T> {
    fn drop(&mut self) {
        if !self.judged {
            self.judge(Verdict::Ignore);
        }
    }
}
