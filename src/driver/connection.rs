//! The socket task: one per connection, owned by the network's task tracker.
//!
//! It walks the state machine: dial (outbound), handshake under `handshake_timeout` and a
//! handshake slot, ask the network to admit the proven peer, then spawn the read and write tasks
//! and supervise them. Whichever ends first decides the reason; the other is given
//! `shutdown_timeout` to finish gracefully and is then cancelled. The task ends only after both
//! have been joined, and reports `Closed` to the network exactly once.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use super::inbox::Slot;
use super::link::{SocketContext, SocketShared};
use super::reader::Reader;
use super::stream::Reliable;
use super::writer::{WriteEnd, Writer};
use crate::codec::ControlMessage;
use crate::error::ConnectError;
use crate::handshake::{self, Established, HandshakeError, HandshakeParams};
use crate::identity::PeerId;
use crate::peers::registry::Admission;
use crate::session::channel::QUANTUM;
use crate::session::inbound::{InboundSession, LaneLimits};
use crate::session::liveness::Tick;
use crate::session::reliable::RecvSeq;
use crate::session::state::closing_path;
use crate::session::{Direction, DisconnectReason, SocketState};
use parking_lot::Mutex;

/// The per-peer delivery state a connection works with, handed over at admission.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    /// Our reliable stream to the peer, if it is a persistent peer.
    pub(crate) reliable: Option<Arc<Reliable>>,
    /// Our position in the peer's reliable streams, by channel index (if it sends them).
    pub(crate) recv: Arc<Mutex<Vec<RecvSeq>>>,
}

/// What a socket tells the network.
#[derive(Debug)]
pub(crate) enum SocketEvent {
    /// The handshake proved `peer`; the network must answer on `reply`.
    Authenticated {
        shared: Arc<SocketShared>,
        peer: PeerId,
        reply: oneshot::Sender<(Admission, Streams)>,
    },
    /// The peer admitted the connection (its welcome arrived).
    Welcomed { shared: Arc<SocketShared> },
    /// The connection is closed and all its tasks have ended. `error` is set when it never
    /// opened, for the caller of `connect`.
    Closed {
        shared: Arc<SocketShared>,
        reason: DisconnectReason,
        error: Option<ConnectError>,
    },
}

pub(crate) struct SocketTask {
    pub(crate) shared: Arc<SocketShared>,
    pub(crate) ctx: Arc<SocketContext>,
    pub(crate) to_network: mpsc::Sender<SocketEvent>,
    /// The node's channel slots, by channel index.
    pub(crate) slots: Arc<[Slot]>,
    /// For outbound dials: the id the remote must prove.
    pub(crate) expected_peer: Option<PeerId>,
    /// The inbound or outbound connection slot, released when this task ends.
    pub(crate) _slot: Option<OwnedSemaphorePermit>,
}

/// Which supervised activity ended first.
enum Ended {
    Reader(Result<Option<DisconnectReason>, tokio::task::JoinError>),
    Writer(Result<WriteEnd, tokio::task::JoinError>),
    Idle,
    /// The peer's reliable streams stayed full for `write_timeout` without an acknowledgement.
    Stalled,
}

/// A failure before the connection opened.
struct Failure {
    reason: DisconnectReason,
    error: ConnectError,
}

impl SocketTask {
    /// Runs the connection to its end. `stream` is the accepted stream for inbound sockets.
    pub(crate) async fn run(self, stream: Option<TcpStream>) {
        let (reason, error) = match self.establish(stream).await {
            Ok((stream, established, leftover)) => {
                (self.serve(stream, established, leftover).await, None)
            }
            Err(failure) => {
                self.shared.state.set(SocketState::Errored);
                self.shared.state.set(SocketState::Closing);
                (failure.reason, Some(failure.error))
            }
        };
        let dropped = self.shared.queue.close();
        self.shared
            .stats
            .dropped_on_close
            .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.state.set(SocketState::Closed);
        let reason = self.shared.close_intent.lock().clone().unwrap_or(reason);
        // The network drains socket events until every socket task has ended, so this send
        // completes; if the network is gone there is no one left to tell.
        let _ = self
            .to_network
            .send(SocketEvent::Closed {
                shared: self.shared.clone(),
                reason,
                error,
            })
            .await;
    }

    async fn establish(
        &self,
        stream: Option<TcpStream>,
    ) -> Result<(TcpStream, Box<Established>, BytesMut), Failure> {
        let addr = self.shared.addr;
        let config = &self.ctx.config;
        let cancelled = || Failure {
            reason: DisconnectReason::Shutdown,
            error: ConnectError::Closed,
        };
        let mut stream = match stream {
            Some(stream) => stream,
            None => {
                self.shared.state.set(SocketState::Connecting);
                let dial = timeout(config.connect_timeout, dial_from(addr, config.dial_from));
                let dialed = tokio::select! {
                    () = self.shared.cancel.cancelled() => return Err(cancelled()),
                    r = dial => r,
                };
                match dialed {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(source)) => {
                        return Err(Failure {
                            reason: DisconnectReason::Io(source.kind()),
                            error: ConnectError::Dial { addr, source },
                        });
                    }
                    Err(_) => {
                        return Err(Failure {
                            reason: DisconnectReason::Io(std::io::ErrorKind::TimedOut),
                            error: ConnectError::DialTimeout { addr },
                        });
                    }
                }
            }
        };
        // Small control and consensus messages must not wait for Nagle's timer.
        let _ = stream.set_nodelay(true);
        limit_unsent(&stream, config.tcp_notsent_lowat);
        self.shared.state.set(SocketState::Authenticating);
        let handshake_failed = |source: HandshakeError| Failure {
            reason: DisconnectReason::from_handshake(&source),
            error: ConnectError::Handshake { addr, source },
        };
        let timeout = match self.shared.direction {
            Direction::Inbound => config.inbound_handshake_timeout,
            Direction::Outbound => config.handshake_timeout,
        };
        let deadline = Instant::now() + timeout;
        let params = HandshakeParams {
            network_id: config.network_id.clone(),
            listen_addr: Some(self.ctx.advertised_addr),
            expected_peer: self.expected_peer,
            dial_seq: self.shared.dial_seq.get().copied().unwrap_or(0),
        };
        let initiator = self.shared.direction == Direction::Outbound;
        // Boxed: the handshake's state (several KiB with snow's) is freed when it ends instead
        // of staying in this task's future for the connection's whole life.
        let run = Box::pin(async {
            let _slot = self
                .ctx
                .handshakes
                .acquire()
                .await
                .map_err(|_| HandshakeError::Closed)?;
            handshake::perform_observed(
                &mut stream,
                &self.ctx.keypair,
                params,
                initiator,
                &self.shared.handshake_progressed,
            )
            .await
        });
        let outcome = tokio::select! {
            () = self.shared.cancel.cancelled() => return Err(cancelled()),
            r = timeout_at(deadline, run) => r,
        };
        match outcome {
            Ok(Ok((established, leftover))) => {
                let _ = self.shared.peer.set(established.peer);
                let _ = self.shared.listen_addr.set(established.listen_addr);
                let _ = self.shared.dial_seq.set(established.dial_seq);
                self.shared.state.set(SocketState::Authenticated);
                Ok((stream, established, leftover))
            }
            Ok(Err(e)) => Err(handshake_failed(e)),
            Err(_) => Err(handshake_failed(HandshakeError::Timeout)),
        }
    }

    async fn serve(
        &self,
        stream: TcpStream,
        established: Box<Established>,
        leftover: BytesMut,
    ) -> DisconnectReason {
        // The keys stay boxed across the admission wait and are moved straight into the read
        // and write tasks: unpacked earlier, they would take ~1.4 KiB of this task's future
        // (which lives as long as the connection) on top of the copies in those tasks.
        let peer = established.peer;
        let (reply, admission) = oneshot::channel();
        let asked = self
            .to_network
            .send(SocketEvent::Authenticated {
                shared: self.shared.clone(),
                peer,
                reply,
            })
            .await;
        let refused = || {
            (
                Admission::Close(DisconnectReason::Shutdown),
                Streams::default(),
            )
        };
        let (admission, streams) = if asked.is_err() {
            refused()
        } else {
            tokio::select! {
                () = self.shared.cancel.cancelled() => refused(),
                a = admission => a.unwrap_or_else(|_| refused()),
            }
        };
        let mut writes_reliable = None;
        match admission {
            Admission::Open => {
                self.shared.state.set(SocketState::Open);
                // First out: tells the peer we publish it now (its `connect` returns on it).
                self.shared.queue.push_control(ControlMessage::Welcome);
                if let Some(reliable) = &streams.reliable {
                    // This connection now carries the stream: it resends what is
                    // unacknowledged (unless it was replaced before getting here).
                    if reliable.attach(&self.shared) {
                        writes_reliable = Some(reliable.clone());
                    }
                }
            }
            Admission::Close(reason) => {
                // Still run both tasks: the writer sends the goodbye, the reader delivers what
                // the peer sent before it learned the outcome.
                self.shared.state.set(SocketState::Closing);
                self.shared.close_gracefully(reason);
            }
        }
        let config = &self.ctx.config;
        let (read_half, write_half) = stream.into_split();
        let Established { sealer, opener, .. } = *established;
        let lanes: Vec<LaneLimits> = self
            .ctx
            .channels
            .iter()
            .map(|(id, spec)| LaneLimits {
                id,
                max_message_size: spec.max_message_size,
                messages_per_sec: spec.max_inbound_messages_per_sec,
                bytes_per_sec: spec.max_inbound_bytes_per_sec,
            })
            .collect();
        let mut reader: JoinHandle<Option<DisconnectReason>> = tokio::spawn(
            Reader {
                shared: self.shared.clone(),
                peer,
                slots: self.slots.clone(),
                read_chunk_size: config.read_chunk_size,
                session: {
                    let mut session = InboundSession::new(
                        &lanes,
                        config.misbehaviour_budget,
                        std::time::Instant::now(),
                    );
                    // Persistent peers are the operator's own and their streams are reliable:
                    // a message skipped for the budget would have to be resent, so their
                    // reassembly is bounded per connection only.
                    if streams.reliable.is_none() {
                        session.set_reassembly_budget(self.ctx.reassembly.clone());
                        if let Some(budget) = self.ctx.ip_budget(self.shared.addr.ip()) {
                            session.set_ip_budget(budget);
                        }
                    }
                    session
                },
                recv: streams.recv.clone(),
                reliable: streams.reliable.clone(),
                source: super::inbox::source_of(self.shared.addr.ip()),
            }
            .run(read_half, leftover, opener),
        );
        let mut writer: JoinHandle<WriteEnd> = tokio::spawn(
            Writer {
                shared: self.shared.clone(),
                reliable: writes_reliable,
                batch_bytes: if self.ctx.channels.len() > 1 {
                    config.write_batch_bytes.min(QUANTUM)
                } else {
                    config.write_batch_bytes
                },
                write_timeout: config.write_timeout,
                channel_ids: self.ctx.channels.iter().map(|(id, _)| id).collect(),
            }
            .run(write_half, sealer),
        );
        let grace = config.shutdown_timeout;
        let idle_timeout = config.idle_timeout;
        let mut ticker =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The node hears of the welcome on every connection: a dialer's caller waits for it,
        // and so does one whose dial lost a duplicate tie-break to this connection.
        let mut await_welcome = true;
        let first = loop {
            tokio::select! {
                () = self.shared.welcomed.notified(), if await_welcome => {
                    await_welcome = false;
                    let _ = self
                        .to_network
                        .send(SocketEvent::Welcomed { shared: self.shared.clone() })
                        .await;
                }
                read_end = &mut reader => break Ended::Reader(read_end),
                write_end = &mut writer => break Ended::Writer(write_end),
                _ = ticker.tick() => {
                    // The reader never waits on the application, so silence here is the peer's
                    // (or the link's), not a local stall.
                    let open = self.shared.state.get() == SocketState::Open;
                    match self.shared.liveness_tick(idle_timeout, open) {
                        Tick::Idle => break Ended::Idle,
                        Tick::Ping { nonce } => self.shared.ping(nonce),
                        Tick::Wait => {}
                    }
                    // A persistent peer that reads but never acknowledges fills its streams;
                    // past `write_timeout` without an acknowledgement it counts as stalled.
                    if streams
                        .reliable
                        .as_ref()
                        .and_then(|r| r.full_for())
                        .is_some_and(|d| d >= config.write_timeout)
                    {
                        break Ended::Stalled;
                    }
                }
            }
        };
        let reason = match first {
            Ended::Idle | Ended::Stalled => {
                let reason = if matches!(first, Ended::Idle) {
                    DisconnectReason::IdleTimeout
                } else {
                    DisconnectReason::WriteStalled
                };
                self.enter_closing(&reason);
                self.shared.cancel.cancel();
                let _ = reader.await;
                let _ = writer.await;
                reason
            }
            Ended::Reader(read_end) => {
                let reason = read_end
                    .ok()
                    .flatten()
                    .unwrap_or(DisconnectReason::Shutdown);
                self.enter_closing(&reason);
                let mut writer_joined = false;
                match &reason {
                    // Tell the peer why before cutting it off.
                    DisconnectReason::Misbehaviour { .. } => {
                        self.shared.close_gracefully(reason.clone());
                        writer_joined = timeout(grace, &mut writer).await.is_ok();
                    }
                    // The peer said goodbye and reads on until we close too (see the writer's
                    // end below): flush what was accepted for it, then our goodbye, so a
                    // message queued just before a replacement or a shutdown is not lost.
                    DisconnectReason::RemoteGoodbye(_) => {
                        self.shared.close_gracefully(reason.clone());
                        writer_joined = timeout(grace, &mut writer).await.is_ok();
                    }
                    _ => {}
                }
                self.shared.cancel.cancel();
                if !writer_joined {
                    let _ = writer.await;
                }
                reason
            }
            Ended::Writer(write_end) => {
                let mut reader_joined = false;
                let reason = match write_end {
                    Ok(WriteEnd::Goodbye) => {
                        // Our goodbye is out; read until the peer closes too, within the grace
                        // period, so that nothing it sent before our goodbye is lost.
                        let reason = self
                            .shared
                            .close_intent
                            .lock()
                            .clone()
                            .unwrap_or(DisconnectReason::Requested);
                        self.enter_closing(&reason);
                        reader_joined = timeout(grace, &mut reader).await.is_ok();
                        reason
                    }
                    Ok(WriteEnd::Failed(reason)) => {
                        self.enter_closing(&reason);
                        reason
                    }
                    Ok(WriteEnd::Stopped) | Err(_) => {
                        self.enter_closing(&DisconnectReason::Shutdown);
                        DisconnectReason::Shutdown
                    }
                };
                self.shared.cancel.cancel();
                if !reader_joined {
                    let _ = reader.await;
                }
                reason
            }
        };
        if let Some(reliable) = &streams.reliable {
            reliable.detach(&self.shared);
        }
        reason
    }

    /// Moves to `Closing`, through `Errored` when the reason is a fault.
    fn enter_closing(&self, reason: &DisconnectReason) {
        for &next in closing_path(self.shared.state.get(), reason) {
            self.shared.state.set(next);
        }
    }
}

/// Caps the bytes the kernel holds unsent for `stream` (see `Config::tcp_notsent_lowat`).
#[cfg(target_os = "linux")]
fn limit_unsent(stream: &TcpStream, lowat: u32) {
    if lowat > 0 {
        // Best effort: without it, priorities still hold inside peerwire, only the kernel's
        // queue in front of the wire is longer.
        if let Err(error) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(lowat) {
            tracing::debug!(%error, "TCP_NOTSENT_LOWAT not set");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_unsent(_stream: &TcpStream, _lowat: u32) {}

/// Dials `addr`, from `from` when given (a host with several addresses dials from the one its
/// peers know it by), else from the address the OS chooses.
async fn dial_from(
    addr: std::net::SocketAddr,
    from: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(ip) = from else {
        return TcpStream::connect(addr).await;
    };
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}
