//! The write task: sleeps until the send queue signals work, then drains it (control first),
//! packs many messages into each sealed frame and many frames into each write, and flushes.
//! A write that makes no progress for `write_timeout`, or a queue that stays full that long,
//! ends the connection as stalled.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::link::SocketShared;
use super::queue::Batch;
use super::stream::Reliable;
use crate::codec::cipher::Sealer;
use crate::codec::frame::FrameEncoder;
use crate::codec::{CodecError, ControlMessage, GoodbyeReason, encode_control};
use crate::session::DisconnectReason;
use crate::session::reliable::Taken;
use bytes::Bytes;

/// How the write task ended.
#[derive(Debug)]
pub(crate) enum WriteEnd {
    /// Flushed everything accepted and sent the goodbye.
    Goodbye,
    /// Stopped by a fault.
    Failed(DisconnectReason),
    /// Cancelled or hard-closed.
    Stopped,
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<SocketShared>,
    /// The peer's reliable stream, when it is a persistent peer and this is its connection.
    pub(crate) reliable: Option<Arc<Reliable>>,
    pub(crate) batch_bytes: usize,
    pub(crate) write_timeout: Duration,
}

enum Fault {
    Codec(CodecError),
    End(WriteEnd),
}

impl From<CodecError> for Fault {
    fn from(e: CodecError) -> Self {
        Self::Codec(e)
    }
}

impl Writer {
    pub(crate) async fn run<W: AsyncWrite + Unpin>(
        self,
        mut stream: W,
        sealer: Sealer,
    ) -> WriteEnd {
        let mut encoder = FrameEncoder::new(sealer);
        match self.pump(&mut stream, &mut encoder).await {
            Ok(_) => WriteEnd::Goodbye,
            Err(Fault::Codec(e)) => WriteEnd::Failed(DisconnectReason::Codec(e)),
            Err(Fault::End(end)) => end,
        }
    }

    async fn pump<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
        encoder: &mut FrameEncoder,
    ) -> Result<GoodbyeReason, Fault> {
        let queue = &self.shared.queue;
        let mut batch = Batch::default();
        let mut reliable = Taken::default();
        loop {
            queue.take_batch(self.batch_bytes, &mut batch);
            if batch.closed {
                return Err(Fault::End(WriteEnd::Stopped));
            }
            let incarnation = match &self.reliable {
                Some(stream) => stream.take_for(&self.shared, self.batch_bytes, &mut reliable),
                None => 0,
            };
            if batch.control.is_empty()
                && batch.data.is_empty()
                && batch.goodbye.is_none()
                && reliable.messages.is_empty()
            {
                tokio::select! {
                    biased;
                    () = self.shared.cancel.cancelled() => return Err(Fault::End(WriteEnd::Stopped)),
                    () = queue.wait_for_work() => continue,
                }
            }
            for control in batch.control.drain(..) {
                encoder.push_control(&encode_control(&control))?;
            }
            if let Some(first_seq) = reliable.resume.take() {
                // Taken together with the messages it numbers, so nothing can slip between.
                encoder.push_control(&encode_control(&ControlMessage::Resume {
                    incarnation,
                    first_seq,
                }))?;
            }
            let reliable_pending = !reliable.messages.is_empty();
            let mut counts = (0u64, 0u64);
            self.write_messages(stream, encoder, &mut batch.data, &mut counts)
                .await?;
            self.write_messages(stream, encoder, &mut reliable.messages, &mut counts)
                .await?;
            // The goodbye goes out once the reliable stream has nothing left to write either.
            if let Some(reason) = batch.goodbye.take().filter(|_| !reliable_pending) {
                encoder.push_control(&encode_control(&ControlMessage::Goodbye { reason }))?;
                self.flush(stream, encoder).await?;
                self.count(counts.0, counts.1);
                // Half-close: the peer reads our goodbye, then EOF; we keep reading its rest.
                let _ = stream.shutdown().await;
                return Ok(reason);
            }
            self.flush(stream, encoder).await?;
            self.count(counts.0, counts.1);
            if queue.full_for().is_some_and(|d| d >= self.write_timeout) {
                return Err(Fault::End(WriteEnd::Failed(DisconnectReason::WriteStalled)));
            }
        }
    }

    /// Encodes `messages` (draining the vector), writing as it goes when a large message fills
    /// the batch and letting queued control messages in between its fragments.
    async fn write_messages<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
        encoder: &mut FrameEncoder,
        messages: &mut Vec<Bytes>,
        counts: &mut (u64, u64),
    ) -> Result<(), Fault> {
        for message in messages.drain(..) {
            let mut offset = 0;
            loop {
                offset = encoder.push_message(&message, offset)?;
                if offset == message.len() {
                    break;
                }
                if encoder.buffered() >= self.batch_bytes {
                    self.flush(stream, encoder).await?;
                    let mut control = Batch::default();
                    self.shared.queue.take_control(&mut control);
                    for c in control.control {
                        encoder.push_control(&encode_control(&c))?;
                    }
                }
            }
            counts.0 += 1;
            counts.1 += message.len() as u64;
        }
        Ok(())
    }

    fn count(&self, messages: u64, bytes: u64) {
        self.shared.stats.messages_out.fetch_add(messages, Relaxed);
        self.shared.stats.bytes_out.fetch_add(bytes, Relaxed);
    }

    /// Seals the open frame and writes everything buffered, giving up after `write_timeout`
    /// without progress or on cancellation.
    async fn flush<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
        encoder: &mut FrameEncoder,
    ) -> Result<(), Fault> {
        encoder.seal()?;
        let frames = encoder.take_sealed_frames();
        let out = encoder.output();
        if out.is_empty() {
            return Ok(());
        }
        let write = tokio::time::timeout(self.write_timeout, stream.write_all(out));
        let result = tokio::select! {
            biased;
            () = self.shared.cancel.cancelled() => return Err(Fault::End(WriteEnd::Stopped)),
            r = write => r,
        };
        out.clear();
        match result {
            Ok(Ok(())) => {
                self.shared.stats.frames_out.fetch_add(frames, Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(Fault::End(WriteEnd::Failed(DisconnectReason::Io(e.kind())))),
            Err(_) => Err(Fault::End(WriteEnd::Failed(DisconnectReason::WriteStalled))),
        }
    }
}
