//! The listening task: takes an inbound connection slot, then accepts, and hands the stream to
//! the network actor. Holding the slot before `accept` keeps at most `max_inbound` inbound
//! connections alive; beyond that, new connections wait in the kernel's backlog.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// An accepted stream with the inbound slot it holds.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    pub(crate) slot: OwnedSemaphorePermit,
}

pub(crate) async fn run(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    accepted: mpsc::Sender<Accepted>,
    cancel: CancellationToken,
) {
    loop {
        let slot = tokio::select! {
            () = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, addr) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            sent = accepted.send(Accepted { stream, addr, slot }) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}
