//! Request/response to a named peer: a typed question, one answer (or a stream of chunks under
//! a credit window), with limits that answer at once instead of hanging.
//!
//! Pure core in [`core`](self) and [`wire`](self); the driver is one task (`task.rs`) that
//! moves frames between the core and two channels, and the handles ([`RpcClient`],
//! [`RpcServer`], [`Request`], [`ResponseSink`], [`ResponseStream`]) that lock the core for a
//! moment to open, answer or cancel a request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use peerwire::protocols::rpc::RpcConfig;
//! use peerwire::{ChannelSpec, Config, Keypair, Network};
//! const KV: u16 = 10;
//! let config = Config::default()
//!     .network_id("doc-rpc")
//!     .channel(KV, ChannelSpec::high());
//! let (a, _) = Network::<String>::start(config.clone(), Keypair::generate()).await?;
//! let (b, _) = Network::<String>::start(config, Keypair::generate()).await?;
//! let (client, _) = a.rpc::<String, u64>(KV)?;
//! let (_, mut server) = b.rpc::<String, u64>(RpcConfig::new(KV))?;
//! tokio::spawn(async move {
//!     while let Some(request) = server.recv().await {
//!         let len = request.body().len() as u64;
//!         let _ = request.respond(&len);
//!     }
//! });
//! a.connect(b.local_addr()).await?;
//! assert_eq!(client.request(b.local_peer_id(), &"four".to_string()).await?, 4);
//! # Ok(())
//! # }
//! ```

mod client;
mod core;
mod server;
mod task;
mod wire;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use client::{RequestOptions, ResponseStream, RpcClient};
pub use server::{Request, ResponseSink, RpcServer};

use crate::codec::CodecError;
use crate::error::{ChannelError, SendError};
use crate::network::Network;
use crate::session::ChannelId;

/// How one request protocol runs: its channels and its limits. Both peers should use the same
/// values (a client whose `max_outbound_requests` exceeds the server's
/// `max_inbound_requests` sees [`RequestError::Busy`] answers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcConfig {
    /// Channel for requests, unary answers, cancels and credit (declare it with a high or
    /// critical [`crate::ChannelSpec`], so small requests keep their latency).
    pub channel: ChannelId,
    /// Channel for streamed chunks (declare it bulk); `None` uses `channel`.
    pub stream_channel: Option<ChannelId>,
    /// Default total time a request may take (per request: [`RequestOptions::timeout`]).
    /// Default 10 s.
    pub timeout: Duration,
    /// Longest gap between two chunks of a streamed answer (and before the first) before the
    /// stream fails with [`RequestError::Timeout`]. A stream has no total limit. Default 10 s.
    pub stream_idle_timeout: Duration,
    /// Requests this node may have in flight to one peer; one more is refused at once with
    /// [`RequestError::Busy`]. Default 1,024.
    pub max_outbound_requests: usize,
    /// Requests from one peer this node's server handles at once; past it the protocol task
    /// answers `Busy` itself, without the application. Default 64.
    pub max_inbound_requests: usize,
    /// Requests from all peers handled at once (also the server queue's capacity).
    /// Default 1,024.
    pub max_inbound_total: usize,
    /// Chunks of a streamed answer the client lets the server send ahead of what it consumed.
    /// The memory a stream holds is at most this many chunks on each side. Default 16.
    pub stream_window: u32,
    /// `Busy` answers per second a peer may earn before each further one costs it a point:
    /// asking past a limit is normal, flooding it is not. Default 10,000 (also the burst).
    pub busy_allowance_per_sec: u64,
    /// Protocol violations (answers to requests never made, chunks past the window,
    /// undecodable frames) before the peer is banned for `Config::ban_duration`. Default 100.
    pub misbehaviour_budget: u32,
}

impl RpcConfig {
    /// Defaults, with requests and streams on `channel`.
    pub fn new(channel: ChannelId) -> Self {
        Self {
            channel,
            stream_channel: None,
            timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(10),
            max_outbound_requests: 1024,
            max_inbound_requests: 64,
            max_inbound_total: 1024,
            stream_window: 16,
            busy_allowance_per_sec: 10_000,
            misbehaviour_budget: 100,
        }
    }

    /// Puts streamed chunks on their own (bulk) channel.
    pub fn stream_channel(mut self, channel: ChannelId) -> Self {
        self.stream_channel = Some(channel);
        self
    }

    /// Sets [`RpcConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`RpcConfig::stream_idle_timeout`].
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// Sets [`RpcConfig::max_outbound_requests`].
    pub fn max_outbound_requests(mut self, n: usize) -> Self {
        self.max_outbound_requests = n;
        self
    }

    /// Sets [`RpcConfig::max_inbound_requests`].
    pub fn max_inbound_requests(mut self, n: usize) -> Self {
        self.max_inbound_requests = n;
        self
    }

    /// Sets [`RpcConfig::max_inbound_total`].
    pub fn max_inbound_total(mut self, n: usize) -> Self {
        self.max_inbound_total = n;
        self
    }

    /// Sets [`RpcConfig::stream_window`].
    pub fn stream_window(mut self, chunks: u32) -> Self {
        self.stream_window = chunks;
        self
    }

    /// Sets [`RpcConfig::busy_allowance_per_sec`].
    pub fn busy_allowance_per_sec(mut self, n: u64) -> Self {
        self.busy_allowance_per_sec = n;
        self
    }

    /// Sets [`RpcConfig::misbehaviour_budget`].
    pub fn misbehaviour_budget(mut self, points: u32) -> Self {
        self.misbehaviour_budget = points;
        self
    }
}

/// `net.rpc::<Q, A>(CHANNEL)`: defaults, on one channel.
impl From<ChannelId> for RpcConfig {
    fn from(channel: ChannelId) -> Self {
        Self::new(channel)
    }
}

/// Why a request got no answer. Every variant arrives promptly: none is a silent wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No answer (or, for a stream, no next chunk) within the timeout; the server was told to
    /// stop.
    #[error(
        "no answer within the timeout; raise it with RequestOptions::timeout if the peer is slow"
    )]
    Timeout,
    /// Too many requests in flight: this node's `max_outbound_requests` to that peer, or the
    /// peer's own limit. Retry later or lower the concurrency.
    #[error("too many requests in flight to this peer; retry later")]
    Busy,
    /// The peer is not connected.
    #[error("peer is not connected; connect first")]
    NotConnected,
    /// The connection closed while the request was in flight. It is not retried unless the
    /// request was idempotent and the peer persistent.
    #[error("connection closed while the request was in flight")]
    Disconnected,
    /// The peer's handler rejected the request with this application code.
    #[error("rejected by the peer with code {0}")]
    Rejected(u32),
    /// The peer's handler dropped the request without answering.
    #[error("the peer's handler dropped the request without answering")]
    Omitted,
    /// Nobody serves this protocol at the peer.
    #[error("the peer does not serve this protocol (its server handle is gone)")]
    Unavailable,
    /// The request, or its answer at the peer, exceeds the channel's `max_message_size`.
    #[error("request or answer larger than the channel's max_message_size")]
    TooLarge,
    /// The answer (or, at the peer, the request) could not be decoded: the two sides disagree
    /// on the message types.
    #[error("undecodable message: the two sides disagree on the request or answer type")]
    Undecodable,
    /// The peer broke the protocol (for example sent chunks past the credit window); it was
    /// charged.
    #[error("the peer broke the request protocol")]
    Protocol,
    /// The request channel's queue to that peer stayed full for `Config::send_wait`.
    #[error("the request channel's send queue to this peer is full")]
    Full,
    /// The request could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The network or this protocol's task has shut down.
    #[error("the network has shut down")]
    Closed,
    /// The peer is durable and the request could not be written to the data directory (it
    /// was sent all the same; see [`SendError::NotKept`]).
    #[error("request sent but not kept on disk: {0}")]
    NotKept(String),
}

impl From<SendError> for RequestError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::NotConnected(_) => Self::NotConnected,
            SendError::Full(_) => Self::Full,
            SendError::Codec(CodecError::MessageTooLarge { .. }) => Self::TooLarge,
            SendError::Codec(e) => Self::Codec(e),
            SendError::NotKept(_, reason) => Self::NotKept(reason),
        }
    }
}

/// Why an answer could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// The client no longer waits (cancelled, timed out, or its connection closed).
    #[error("the client no longer waits for this answer")]
    Cancelled,
    /// The answer exceeds the channel's `max_message_size`; the client was told `TooLarge`.
    #[error("answer of {len} bytes exceeds the channel's max_message_size of {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The request channel's queue to the client is full; the client will time out.
    #[error("the send queue to the client is full")]
    Full,
    /// The client is no longer connected.
    #[error("the client is no longer connected")]
    NotConnected,
    /// The answer could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// `respond_stream` on a request the client asked as unary (or `respond` on a streamed
    /// one is fine: it is sent as one chunk).
    #[error("the client asked for one answer, not a stream")]
    NotStream,
    /// The peer is durable and the answer could not be written to the data directory (it was
    /// sent all the same; see [`SendError::NotKept`]).
    #[error("answer sent but not kept on disk: {0}")]
    NotKept(String),
}

impl From<SendError> for RespondError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::NotConnected(_) => Self::NotConnected,
            SendError::Codec(CodecError::MessageTooLarge { len, max }) => {
                Self::TooLarge { len, max }
            }
            SendError::Codec(e) => Self::Codec(e),
            SendError::Full(_) => Self::Full,
            SendError::NotKept(_, reason) => Self::NotKept(reason),
        }
    }
}

/// Counters of one request protocol (both sides), see [`RpcClient::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcStats {
    /// Requests sent.
    pub requests_sent: u64,
    /// Answers (or ends of streams) received.
    pub responses_received: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests refused here at once by `max_outbound_requests`.
    pub busy_local: u64,
    /// `Busy` answers received from peers.
    pub busy_received: u64,
    /// Requests whose caller stopped waiting (future dropped).
    pub cancelled_by_caller: u64,
    /// Answers that arrived after their request ended (timeout or cancel).
    pub late_answers: u64,
    /// Requests handed to the local server.
    pub requests_served: u64,
    /// `Busy` answers sent by the protocol task without the application.
    pub busy_sent: u64,
    /// Requests the client cancelled while the local server handled them.
    pub cancelled_by_peer: u64,
    /// The same request received twice while it ran (idempotent resends).
    pub duplicate_requests: u64,
    /// Protocol violations charged to peers.
    pub violations: u64,
    /// Idempotent requests sent again after a reconnect.
    pub resent_after_reconnect: u64,
    /// Frames (cancels, credit, busy answers) dropped because the channel's queue was full.
    pub frames_dropped: u64,
    /// Requests being handled by the local server now.
    pub serving: usize,
    /// Requests this node waits on now.
    pub waiting: usize,
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Network<M> {
    /// Opens a request protocol with requests of type `Q` and answers of type `A` on the
    /// channels of `config` (declared in [`crate::Config`]; a bare channel id means
    /// [`RpcConfig::new`] on it). Returns the client (cheap to
    /// clone) and the server, on which requests from peers arrive.
    ///
    /// Both types may be [`bytes::Bytes`], sent as raw bytes like on a channel.
    ///
    /// # Errors
    /// As [`Network::channel`], for either channel.
    // The pair is the API: a named alias would only hide what the caller gets.
    #[allow(clippy::type_complexity)]
    pub fn rpc<Q, A>(
        &self,
        config: impl Into<RpcConfig>,
    ) -> Result<(RpcClient<Q, A>, RpcServer<Q, A>), ChannelError>
    where
        Q: Serialize + DeserializeOwned + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let config = config.into();
        let (request_id, stream_id) = (config.channel, config.stream_channel);
        let requests = self.raw_sender(request_id)?;
        let streams = match stream_id {
            Some(id) if id != request_id => Some(self.raw_sender(id)?),
            _ => None,
        };
        let separate = streams.is_some();
        let (inner, server_rx, handler) =
            task::spawn(config, self.protocol_face(), requests, streams);
        self.open_handler(request_id, handler.clone())?;
        if let (true, Some(id)) = (separate, stream_id) {
            self.open_handler(id, handler)?;
        }
        Ok((
            RpcClient::new(inner.clone()),
            RpcServer::new(inner, server_rx),
        ))
    }
}
