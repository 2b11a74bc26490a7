//! [`Config`]: every limit, capacity and timeout of a node, with documented defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::handshake::MAX_NETWORK_ID_LEN;
use crate::identity::PeerId;

use crate::error::StartError;
use crate::peers::backoff::Backoff;
use crate::session::channel::ChannelTable;
use crate::session::{ChannelId, ChannelSpec, MAX_CHANNELS, Overflow, Priority, RESERVED_CHANNELS};

/// Persistent peers at most, configured and added at runtime together
/// (`Network::add_persistent_peer`). Each holds up to `offline_queue_bytes` per channel while it
/// is away.
pub const MAX_PERSISTENT_PEERS: usize = 1024;

/// A peer to stay connected to: where to dial it and which identity it must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PersistentPeer {
    /// Where to dial.
    pub addr: SocketAddr,
    /// The identity the remote must prove.
    pub id: PeerId,
    /// Messages to it are written to the data directory before `send` returns, and delivered
    /// after this node restarts ([`Config::durable_peer`]).
    pub durable: bool,
}

/// Configuration of a [`crate::Network`]. Build it from [`Config::default`] with the builder
/// methods; every field is also public for direct assignment.
///
/// Worst-case memory, per connected peer: each channel's `send_queue_bytes` (outbound; for a
/// persistent peer, `offline_queue_bytes` per channel instead, kept while it is away) plus one
/// message in reassembly per channel (that channel's `max_message_size`) plus one frame and one
/// read chunk; for the node: each channel's `inbox_bytes` of messages waiting for the
/// application. The default channel's bounds are the top-level fields below.
///
/// # Every field
#[doc = include_str!("../docs/configuration.md")]
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// let config = peerwire::Config::default()
///     .listen("127.0.0.1:0".parse().unwrap())
///     .network_id("testnet")
///     .max_message_size(4 << 20)
///     .write_timeout(Duration::from_secs(5));
/// assert_eq!(config.network_id, "testnet");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; read it back with
    /// [`crate::Network::local_addr`]. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Address advertised to peers in the handshake; defaults to the bound listen address.
    pub advertised_addr: Option<SocketAddr>,
    /// Local address outbound connections are made from, for a host with several addresses
    /// (peers see, and limit per address, the one a connection comes from). Default none: the
    /// OS chooses.
    pub dial_from: Option<std::net::IpAddr>,
    /// Directory where the node keeps what it knows across its own restart: peer exchange's
    /// address book and anchors, a member's last registry list, and the application's entries
    /// ([`crate::Network::data`]). One node per directory (a second one is refused at start).
    /// Default none: nothing is kept.
    pub data_dir: Option<std::path::PathBuf>,
    /// Network (chain) id; peers with another id are refused. At most 64 bytes.
    /// Default `"peerwire"`.
    pub network_id: String,
    /// Bytes asked of the kernel per read. Default 64 KiB.
    pub read_chunk_size: usize,
    /// Largest encoded application message, sent or received. Larger inbound messages are
    /// rejected and skipped without being buffered. Default 16 MiB.
    pub max_message_size: usize,
    /// Default channel (0): messages waiting per peer before `try_send` reports `Full` and
    /// `send` waits (at most `send_wait`). Default 4096.
    pub send_queue_capacity: usize,
    /// Bytes waiting per peer before the queue counts as full (one message always fits).
    /// Default 32 MiB.
    pub send_queue_bytes: usize,
    /// Messages waiting in the application inbox; beyond it new messages are dropped and counted
    /// (`dropped_inbox_full`), so a slow application never stalls a socket. Default 16384.
    pub inbox_capacity: usize,
    /// Encoded bytes waiting in the application inbox; same policy. Default 256 MiB.
    pub inbox_bytes: usize,
    /// Events buffered per [`crate::Network::events`] subscriber; a subscriber that falls
    /// further behind skips the oldest and is told how many it missed. The buffer is allocated
    /// when the node starts (about 94 bytes an event: 1024 was most of an idle node's memory),
    /// so raise it for a node that expects bursts of hundreds of connection changes between two
    /// reads of a subscriber. Default 128.
    pub event_capacity: usize,
    /// Open inbound connections from peers that are not persistent peers; beyond it a newly
    /// authenticated inbound peer is refused (`InboundLimit`). Persistent peers are never refused
    /// for capacity: the accept loop holds `max_inbound` plus one slot per persistent peer, and
    /// further accepts wait in the kernel backlog. Default 128.
    pub max_inbound: usize,
    /// Inbound connections from one IP address that have finished their handshake, at once; a
    /// further one is closed right after `accept`, before any handshake work (or at admission,
    /// when several finish together). Connections still in their handshake do not count here:
    /// they have `max_handshakes_per_ip`. Persistent peers are not refused by it at admission.
    /// Default 16.
    pub max_inbound_per_ip: usize,
    /// Inbound connections from one IP address still in their handshake. When that many are,
    /// a new one from the IP takes the place of the oldest (which is cut, counted as
    /// `inbound_refused{reason="handshakes_per_ip"}`), so strangers holding connections open
    /// without authenticating cannot lock a peer on the same IP out: its handshake takes a
    /// round trip, theirs never finishes. Default 16.
    pub max_handshakes_per_ip: usize,
    /// Time an inbound connection gets to complete its handshake; shorter than
    /// `handshake_timeout` (which bounds our dials), since an honest dialer answers in a round
    /// trip and an idle stranger should not keep a place for long. Default 3 s.
    pub inbound_handshake_timeout: Duration,
    /// Bytes of partly received large messages held at once, across all connections: each
    /// connection may hold one partial message per channel of up to `max_message_size`, so
    /// without a node-wide bound many fresh identities could make the node hold gigabytes. A
    /// fragment that would go past it is refused: its message is skipped (counted as
    /// `rejected`) and the sender is charged as for an oversize message. Default 256 MiB.
    pub max_reassembly_bytes: usize,
    /// New inbound connections (handshakes) accepted per second from one IP address, with a
    /// burst of the same size; beyond it a connection is closed right after `accept`. 0 means
    /// unlimited. Default 20.
    pub max_handshakes_per_ip_per_sec: u64,
    /// Outbound connections at once; further `connect` calls fail with `OutboundLimit`. Dials of
    /// persistent peers and bootstrap addresses are not counted. Default 128.
    pub max_outbound: usize,
    /// Handshakes running at once; others wait for a slot within their timeout. Default 64.
    pub max_concurrent_handshakes: usize,
    /// Time allowed for the whole handshake (including waiting for a slot). Default 10 s.
    pub handshake_timeout: Duration,
    /// Time allowed for a TCP dial. Default 5 s.
    pub connect_timeout: Duration,
    /// A peer whose socket accepts no bytes, or whose send queue stays full, for this long is
    /// disconnected. Default 10 s.
    pub write_timeout: Duration,
    /// Time `shutdown` gives connections to flush and say goodbye before they are cut. Also
    /// bounds how long a closing connection keeps reading. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Misbehaviour points a peer may accumulate on a connection before it is closed
    /// (over a rate limit 1, message on an undeclared channel 1, undecodable message or control
    /// 10, oversize 20, malformed record or fragment out of sequence 25). Default 100.
    pub misbehaviour_budget: u32,
    /// Bytes the writer gathers before one write call. Default 256 KiB. With more than one
    /// channel declared, writes are capped at 64 KiB, so a critical message never waits behind
    /// more than one such write of bulk data in peerwire itself.
    pub write_batch_bytes: usize,
    /// How often each connection sends a ping (ahead of any queued data) to measure round-trip
    /// time and keep the link observed. Default 5 s.
    pub ping_interval: Duration,
    /// A connection on which nothing at all (not even a pong) arrives for this long is closed
    /// with `IdleTimeout`. Must exceed `ping_interval`. Default 20 s.
    pub idle_timeout: Duration,
    /// Peers (the validators) dialed at start and redialed forever with [`Config::backoff`]
    /// whenever they are not connected. Default none.
    pub persistent_peers: Vec<PersistentPeer>,
    /// Addresses dialed at start, retried with backoff until the first success, not redialed
    /// after. Default none.
    pub bootstrap: Vec<SocketAddr>,
    /// Redial schedule for persistent peers and bootstrap addresses. Default 200 ms doubling
    /// to a 5 s cap, plus up to 20% jitter.
    pub backoff: Backoff,
    /// Per persistent peer: messages accepted and not yet acknowledged (sent or waiting while
    /// the peer is away). When full, `try_send` reports `Full` (counted) and `send` waits for
    /// acknowledgements. Default 65536.
    pub offline_queue_capacity: usize,
    /// Per persistent peer: bytes of those messages, same policy. Default 64 MiB.
    pub offline_queue_bytes: usize,
    /// How long a peer that spent its misbehaviour budget stays banned, by id and by IP address
    /// (the IP ban is skipped for persistent peers). Default 10 minutes.
    pub ban_duration: Duration,
    /// Per-connection inbound rate limit, in application messages per second (burst: one
    /// second's worth); each message over it is dropped, counted and charged 1 point. 0 means
    /// unlimited. Default 1,000,000.
    pub max_inbound_messages_per_sec: u64,
    /// Per-connection inbound rate limit in encoded bytes per second, same policy.
    /// Default 1 GiB/s.
    pub max_inbound_bytes_per_sec: u64,
    /// Node-wide inbound rate limit per remote IP address, in application messages per second
    /// on all channels and connections from it together (burst one second's worth), so many
    /// connections from one address, each under its own limit, cannot flood together. Same
    /// policy: dropped, counted as rate-limited and charged 1 point. Persistent peers are not
    /// counted. 0 means unlimited. Default 2,000,000.
    pub max_inbound_messages_per_sec_per_ip: u64,
    /// The channels besides the default one, declared with [`Config::channel`]. The default
    /// channel (0) takes its bounds from the top-level fields (`send_queue_*`, `inbox_*`,
    /// `max_message_size`, `max_inbound_*`) with [`Priority::Normal`], unless declared here.
    pub channels: Vec<(ChannelId, ChannelSpec)>,
    /// Longest a `send().await` or `broadcast().await` waits for room in one peer's queue
    /// (or persistent-peer stream) before it gives up on that peer for that message: `send`
    /// returns `Full`, `broadcast` skips the peer (both counted as `dropped_queue_full`). After
    /// such a timeout the peer's channel counts as stalled and later sends to it give up at
    /// once, until its writer makes progress again; a peer that makes no progress for
    /// `write_timeout` is disconnected. So one peer that stops reading delays a broadcast by at
    /// most this, once. Default 100 ms.
    pub send_wait: Duration,
    /// Connections from one IP address that may stall (be closed `WriteStalled`) within
    /// `stall_window` before the IP and the identity are banned for `ban_duration` (the IP ban
    /// is skipped for persistent peers). 0 disables the charge. Default 3.
    pub max_stalls_per_ip: u32,
    /// See `max_stalls_per_ip`. Default 10 minutes.
    pub stall_window: Duration,
    /// Bytes the kernel may hold unsent per connection (`TCP_NOTSENT_LOWAT`, Linux; ignored
    /// elsewhere). The kernel's own send buffer can grow to megabytes, and a critical message
    /// written after bulk data would wait behind all of it; this keeps the queueing in
    /// peerwire's per-channel lanes, where priorities apply. 0 leaves the kernel default.
    /// Default 32 KiB (on a 100 Mbit/s link with 25 ms delay, a critical message's p99
    /// one-way latency beside a saturating bulk channel measured 44 ms with 32 KiB and 54 ms
    /// with 128 KiB; see BENCHMARKS.md).
    pub tcp_notsent_lowat: u32,
    /// Whether the default channel delivers to this node itself: `send` to the local
    /// [`PeerId`] and every `broadcast` also put the message in the local inbox, tagged with the
    /// local id, in order with this node's other sends to itself (most consensus engines expect
    /// their own votes back). Off by default; per channel with [`ChannelSpec::deliver_to_self`].
    pub deliver_to_self: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertised_addr: None,
            data_dir: None,
            dial_from: None,
            network_id: "peerwire".to_owned(),
            read_chunk_size: 64 * 1024,
            max_message_size: 16 * 1024 * 1024,
            send_queue_capacity: 4096,
            send_queue_bytes: 32 * 1024 * 1024,
            inbox_capacity: 16 * 1024,
            inbox_bytes: 256 * 1024 * 1024,
            event_capacity: 128,
            max_inbound: 128,
            max_inbound_per_ip: 16,
            max_handshakes_per_ip: 16,
            inbound_handshake_timeout: Duration::from_secs(3),
            max_reassembly_bytes: 256 * 1024 * 1024,
            max_handshakes_per_ip_per_sec: 20,
            max_outbound: 128,
            max_concurrent_handshakes: 64,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            misbehaviour_budget: 100,
            write_batch_bytes: 256 * 1024,
            ping_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            persistent_peers: Vec::new(),
            bootstrap: Vec::new(),
            backoff: Backoff::default(),
            offline_queue_capacity: 65536,
            offline_queue_bytes: 64 * 1024 * 1024,
            ban_duration: Duration::from_secs(600),
            max_inbound_messages_per_sec: 1_000_000,
            max_inbound_bytes_per_sec: 1 << 30,
            max_inbound_messages_per_sec_per_ip: 2_000_000,
            channels: Vec::new(),
            send_wait: Duration::from_millis(100),
            max_stalls_per_ip: 3,
            stall_window: Duration::from_secs(600),
            tcp_notsent_lowat: 32 * 1024,
            deliver_to_self: false,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::listen`].
    listen: SocketAddr,
    /// Sets [`Config::read_chunk_size`].
    read_chunk_size: usize,
    /// Sets [`Config::max_message_size`].
    max_message_size: usize,
    /// Sets [`Config::send_queue_capacity`].
    send_queue_capacity: usize,
    /// Sets [`Config::send_queue_bytes`].
    send_queue_bytes: usize,
    /// Sets [`Config::inbox_capacity`].
    inbox_capacity: usize,
    /// Sets [`Config::inbox_bytes`].
    inbox_bytes: usize,
    /// Sets [`Config::deliver_to_self`].
    deliver_to_self: bool,
    /// Sets [`Config::event_capacity`].
    event_capacity: usize,
    /// Sets [`Config::max_inbound`].
    max_inbound: usize,
    /// Sets [`Config::max_inbound_per_ip`].
    max_inbound_per_ip: usize,
    /// Sets [`Config::max_handshakes_per_ip_per_sec`].
    max_handshakes_per_ip_per_sec: u64,
    /// Sets [`Config::max_handshakes_per_ip`].
    max_handshakes_per_ip: usize,
    /// Sets [`Config::inbound_handshake_timeout`].
    inbound_handshake_timeout: Duration,
    /// Sets [`Config::max_reassembly_bytes`].
    max_reassembly_bytes: usize,
    /// Sets [`Config::max_outbound`].
    max_outbound: usize,
    /// Sets [`Config::max_concurrent_handshakes`].
    max_concurrent_handshakes: usize,
    /// Sets [`Config::handshake_timeout`].
    handshake_timeout: Duration,
    /// Sets [`Config::connect_timeout`].
    connect_timeout: Duration,
    /// Sets [`Config::write_timeout`].
    write_timeout: Duration,
    /// Sets [`Config::shutdown_timeout`].
    shutdown_timeout: Duration,
    /// Sets [`Config::misbehaviour_budget`].
    misbehaviour_budget: u32,
    /// Sets [`Config::write_batch_bytes`].
    write_batch_bytes: usize,
    /// Sets [`Config::ping_interval`].
    ping_interval: Duration,
    /// Sets [`Config::idle_timeout`].
    idle_timeout: Duration,
    /// Sets [`Config::backoff`].
    backoff: Backoff,
    /// Sets [`Config::offline_queue_capacity`].
    offline_queue_capacity: usize,
    /// Sets [`Config::offline_queue_bytes`].
    offline_queue_bytes: usize,
    /// Sets [`Config::ban_duration`].
    ban_duration: Duration,
    /// Sets [`Config::max_inbound_messages_per_sec`].
    max_inbound_messages_per_sec: u64,
    /// Sets [`Config::max_inbound_bytes_per_sec`].
    max_inbound_bytes_per_sec: u64,
    /// Sets [`Config::max_inbound_messages_per_sec_per_ip`].
    max_inbound_messages_per_sec_per_ip: u64,
    /// Sets [`Config::send_wait`].
    send_wait: Duration,
    /// Sets [`Config::max_stalls_per_ip`].
    max_stalls_per_ip: u32,
    /// Sets [`Config::stall_window`].
    stall_window: Duration,
    /// Sets [`Config::tcp_notsent_lowat`].
    tcp_notsent_lowat: u32,
}

impl Config {
    /// Sets [`Config::network_id`].
    #[must_use]
    pub fn network_id(mut self, id: impl Into<String>) -> Self {
        self.network_id = id.into();
        self
    }

    /// Adds a persistent peer: dialed at start and redialed forever, expecting `id`.
    #[must_use]
    pub fn persistent_peer(mut self, addr: SocketAddr, id: PeerId) -> Self {
        self.persistent_peers.push(PersistentPeer {
            addr,
            id,
            durable: false,
        });
        self
    }

    /// Adds a persistent peer whose messages survive this node's own crash: every message
    /// accepted for it is written to [`Config::data_dir`] (which it requires) before `send`
    /// returns (`try_send` and `try_broadcast` write it without waiting), and a node that is
    /// killed and restarted with the same key and directory delivers everything the peer had
    /// not acknowledged, exactly once and in order.
    #[must_use]
    pub fn durable_peer(mut self, addr: SocketAddr, id: PeerId) -> Self {
        self.persistent_peers.push(PersistentPeer {
            addr,
            id,
            durable: true,
        });
        self
    }

    /// Adds a bootstrap address.
    #[must_use]
    pub fn bootstrap(mut self, addr: SocketAddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Declares channel `id` (see [`ChannelSpec`]); declaring 0 replaces the default channel's
    /// bounds and priority. Ids in [`RESERVED_CHANNELS`] are refused by [`Config::validate`].
    /// Both peers must declare the same channels: a message on a channel the receiver lacks is
    /// dropped and charged (5 points).
    #[must_use]
    pub fn channel(mut self, id: ChannelId, spec: ChannelSpec) -> Self {
        self.channels.retain(|(existing, _)| *existing != id);
        self.channels.push((id, spec));
        self
    }

    /// The default channel's spec: declared with [`Config::channel`], or from the top-level
    /// fields.
    fn default_channel(&self) -> ChannelSpec {
        if let Some((_, spec)) = self.channels.iter().find(|(id, _)| *id == 0) {
            return spec.clone();
        }
        ChannelSpec::normal()
            .priority(Priority::Normal)
            .send_queue_capacity(self.send_queue_capacity)
            .send_queue_bytes(self.send_queue_bytes)
            .inbox_capacity(self.inbox_capacity)
            .inbox_bytes(self.inbox_bytes)
            .overflow(Overflow::DropNewest)
            .max_message_size(self.max_message_size)
            .max_inbound_messages_per_sec(self.max_inbound_messages_per_sec)
            .max_inbound_bytes_per_sec(self.max_inbound_bytes_per_sec)
            .deliver_to_self(self.deliver_to_self)
    }

    /// Every channel, by dense index (0 is the default channel).
    pub(crate) fn channel_table(&self) -> ChannelTable {
        ChannelTable::new(self.default_channel(), &self.channels)
    }

    /// Sets [`Config::dial_from`].
    #[must_use]
    pub fn dial_from(mut self, ip: std::net::IpAddr) -> Self {
        self.dial_from = Some(ip);
        self
    }

    /// Sets [`Config::data_dir`].
    #[must_use]
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets [`Config::advertised_addr`].
    #[must_use]
    pub fn advertised_addr(mut self, addr: SocketAddr) -> Self {
        self.advertised_addr = Some(addr);
        self
    }

    /// Checks the values that would make the node unusable.
    ///
    /// # Errors
    /// [`StartError::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), StartError> {
        let bad = |what: &str| Err(StartError::InvalidConfig(what.to_owned()));
        if self.network_id.len() > MAX_NETWORK_ID_LEN {
            return bad("network_id is longer than 64 bytes");
        }
        if self.persistent_peers.len() > MAX_PERSISTENT_PEERS {
            return bad("more persistent peers than MAX_PERSISTENT_PEERS (1024)");
        }
        if self.data_dir.is_none() && self.persistent_peers.iter().any(|p| p.durable) {
            return bad("a durable peer needs a data_dir to keep its messages in; set one");
        }
        if self.max_message_size == 0 || self.max_message_size > u32::MAX as usize / 2 {
            return bad("max_message_size must be between 1 byte and 2 GiB");
        }
        for (name, value) in [
            ("read_chunk_size", self.read_chunk_size),
            ("send_queue_capacity", self.send_queue_capacity),
            ("send_queue_bytes", self.send_queue_bytes),
            ("inbox_capacity", self.inbox_capacity),
            ("inbox_bytes", self.inbox_bytes),
            ("event_capacity", self.event_capacity),
            ("max_inbound", self.max_inbound),
            ("max_outbound", self.max_outbound),
            ("max_inbound_per_ip", self.max_inbound_per_ip),
            ("max_handshakes_per_ip", self.max_handshakes_per_ip),
            ("max_reassembly_bytes", self.max_reassembly_bytes),
            ("offline_queue_capacity", self.offline_queue_capacity),
            ("offline_queue_bytes", self.offline_queue_bytes),
            ("max_concurrent_handshakes", self.max_concurrent_handshakes),
            ("write_batch_bytes", self.write_batch_bytes),
        ] {
            if value == 0 {
                return Err(StartError::InvalidConfig(format!("{name} must be > 0")));
            }
        }
        for (name, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("inbound_handshake_timeout", self.inbound_handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("write_timeout", self.write_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_zero() {
                return Err(StartError::InvalidConfig(format!("{name} must be > 0")));
            }
        }
        if self.idle_timeout <= self.ping_interval {
            return bad("idle_timeout must exceed ping_interval");
        }
        if self.backoff.base.is_zero() || self.backoff.cap < self.backoff.base {
            return bad("backoff needs base > 0 and cap >= base");
        }
        if self.channels.iter().filter(|(id, _)| *id != 0).count() + 1 > MAX_CHANNELS {
            return Err(StartError::InvalidConfig(format!(
                "more than {MAX_CHANNELS} channels declared"
            )));
        }
        for (id, spec) in &self.channels {
            if RESERVED_CHANNELS.contains(id) {
                return Err(StartError::InvalidConfig(format!(
                    "channel {id} is in the range reserved for peerwire's own protocols \
                     ({}..={}); pick a lower id",
                    RESERVED_CHANNELS.start(),
                    RESERVED_CHANNELS.end()
                )));
            }
            for (name, value) in [
                ("send_queue_capacity", spec.send_queue_capacity),
                ("send_queue_bytes", spec.send_queue_bytes),
                ("inbox_capacity", spec.inbox_capacity),
                ("inbox_bytes", spec.inbox_bytes),
            ] {
                if value == 0 {
                    return Err(StartError::InvalidConfig(format!(
                        "channel {id}: {name} must be > 0"
                    )));
                }
            }
            if spec.max_message_size == 0 || spec.max_message_size > u32::MAX as usize / 2 {
                return Err(StartError::InvalidConfig(format!(
                    "channel {id}: max_message_size must be between 1 byte and 2 GiB"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(Config::default().validate().is_ok());
        let err = Config::default()
            .send_queue_capacity(0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("send_queue_capacity"));
        assert!(
            Config::default()
                .network_id("x".repeat(65))
                .validate()
                .is_err()
        );
        assert!(Config::default().max_message_size(0).validate().is_err());
        let err = Config::default()
            .channel(0xFF01, ChannelSpec::bulk())
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let err = Config::default()
            .channel(3, ChannelSpec::bulk().inbox_capacity(0))
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("channel 3: inbox_capacity"),
            "{err}"
        );
        let many = (1..=MAX_CHANNELS as u16).fold(Config::default(), |c, id| {
            c.channel(id, ChannelSpec::normal())
        });
        assert!(many.validate().is_err());
        assert!(
            Config::default()
                .write_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
    }
}
