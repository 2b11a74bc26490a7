//! A persistent peer's reliable stream as shared memory: the pure [`ReliableBuffer`] behind a
//! lock, the wake-ups of senders waiting for room, and which connection carries it now.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::link::SocketShared;
use crate::session::reliable::{ReliableBuffer, Taken};
use bytes::Bytes;

/// A persistent peer's reliable stream as shared by senders, its connections and the network.
#[derive(Debug)]
pub(crate) struct Reliable {
    pub(crate) buffer: Mutex<ReliableBuffer>,
    /// Wakes senders waiting for room (acknowledgements free it).
    pub(crate) room: Notify,
    /// The connection currently writing this stream, if the peer is connected.
    attached: Mutex<Option<Arc<SocketShared>>>,
}

impl Reliable {
    pub(crate) fn new(incarnation: u64, capacity: usize, max_bytes: usize) -> Self {
        Self {
            buffer: Mutex::new(ReliableBuffer::new(incarnation, capacity, max_bytes)),
            room: Notify::new(),
            attached: Mutex::new(None),
        }
    }

    /// Accepts a message and wakes the attached writer, if any; when full, hands it back.
    pub(crate) fn push(&self, message: Bytes) -> Result<(), Bytes> {
        self.buffer.lock().push(message)?;
        if let Some(socket) = &*self.attached.lock() {
            socket.queue.wake();
        }
        Ok(())
    }

    /// Accepts a message, waiting for acknowledgements to make room.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before it returns, the message was not accepted.
    pub(crate) async fn push_wait(&self, mut message: Bytes) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(message) {
                Ok(()) => return,
                Err(back) => {
                    message = back;
                    room.await;
                }
            }
        }
    }

    /// `socket` now carries this stream: resend everything unacknowledged on it. Done under
    /// the `attached` lock (then the buffer lock, the order `take_for` uses too), so no other
    /// connection's writer can read the stream, or its resume marker, after this point.
    pub(crate) fn attach(&self, socket: &Arc<SocketShared>) {
        let mut attached = self.attached.lock();
        self.buffer.lock().restart();
        *attached = Some(socket.clone());
        drop(attached);
        socket.queue.wake();
    }

    /// Takes the next messages for `socket`'s writer, only if `socket` carries the stream now;
    /// returns the incarnation for the resume marker.
    pub(crate) fn take_for(
        &self,
        socket: &Arc<SocketShared>,
        max_bytes: usize,
        taken: &mut Taken,
    ) -> u64 {
        let attached = self.attached.lock();
        let mut buffer = self.buffer.lock();
        if attached.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            buffer.take(max_bytes, taken);
        }
        buffer.incarnation()
    }

    /// `socket` closed: stop waking it (unless another connection took over already).
    pub(crate) fn detach(&self, socket: &Arc<SocketShared>) {
        let mut attached = self.attached.lock();
        if attached.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            *attached = None;
        }
    }

    /// The peer acknowledged everything before `next_expected`.
    pub(crate) fn ack(&self, next_expected: u64) {
        if self.buffer.lock().ack(next_expected) > 0 {
            self.room.notify_waiters();
        }
    }

    /// The peer asks for a resend from `from`.
    pub(crate) fn rewind(&self, from: u64) {
        self.buffer.lock().rewind(from);
        if let Some(socket) = &*self.attached.lock() {
            socket.queue.wake();
        }
    }
}
