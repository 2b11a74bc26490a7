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
use crate::codec::{CodecError, ControlMessage, GoodbyeReason};
use crate::session::DisconnectReason;
use crate::session::outbound::Piece;
use crate::session::reliable::Taken;

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
    /// Channel ids by lane index.
    pub(crate) channel_ids: Vec<u16>,
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
        let mut counts = vec![(0u64, 0u64); self.channel_ids.len()];
        // Whether the last batch written carried application messages.
        let mut data = false;
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
                && reliable.is_empty()
            {
                if !data {
                    // Nothing to write after control traffic only (pings, pongs): an idle
                    // connection keeps no output buffer. One carrying messages keeps it, so it
                    // is not reallocated and regrown for every burst.
                    encoder.release_idle();
                }
                tokio::select! {
                    biased;
                    () = self.shared.cancel.cancelled() => return Err(Fault::End(WriteEnd::Stopped)),
                    () = queue.wait_for_work() => continue,
                }
            }
            data = !batch.data.is_empty() || !reliable.is_empty();
            for control in batch.control.drain(..) {
                encoder.push_control_message(&control)?;
            }
            for (lane, first_seq) in reliable.resumes.drain(..) {
                // Taken together with the pieces it numbers, so nothing can slip between.
                encoder.push_control_message(&ControlMessage::Resume {
                    channel: self.channel_ids.get(lane).copied().unwrap_or(0),
                    incarnation,
                    first_seq,
                })?;
            }
            let reliable_pending = !reliable.pieces.is_empty();
            self.write_pieces(stream, encoder, &mut batch.data, &mut counts)
                .await?;
            self.write_pieces(stream, encoder, &mut reliable.pieces, &mut counts)
                .await?;
            // The goodbye goes out once the reliable streams have nothing left to write either.
            if let Some(reason) = batch.goodbye.take().filter(|_| !reliable_pending) {
                encoder.push_control_message(&ControlMessage::Goodbye { reason })?;
                self.flush(stream, encoder).await?;
                self.publish(&mut counts);
                // Half-close: the peer reads our goodbye, then EOF; we keep reading its rest.
                let _ = stream.shutdown().await;
                return Ok(reason);
            }
            self.flush(stream, encoder).await?;
            self.publish(&mut counts);
            if queue.full_for().is_some_and(|d| d >= self.write_timeout) {
                return Err(Fault::End(WriteEnd::Failed(DisconnectReason::WriteStalled)));
            }
        }
    }

    /// Encodes `pieces` (draining the vector), writing as it goes when the output fills the
    /// batch and letting queued control messages in between the fragments of a large message.
    async fn write_pieces<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
        encoder: &mut FrameEncoder,
        pieces: &mut Vec<Piece>,
        counts: &mut [(u64, u64)],
    ) -> Result<(), Fault> {
        for piece in pieces.drain(..) {
            let channel = self.channel_ids.get(piece.lane).copied().unwrap_or(0);
            let mut offset = piece.start;
            while offset < piece.end {
                offset = encoder.push_message_on(channel, &piece.message, offset, piece.end)?;
                if encoder.buffered() >= self.batch_bytes {
                    self.flush(stream, encoder).await?;
                    let mut control = Batch::default();
                    self.shared.queue.take_control(&mut control);
                    for c in control.control {
                        encoder.push_control_message(&c)?;
                    }
                }
            }
            if piece.start == piece.end && piece.message.is_empty() {
                // An empty message is one empty record.
                encoder.push_message_on(channel, &piece.message, 0, 0)?;
            }
            if piece.completes() {
                // Counted per batch, not per message: atomics on the hot path cost.
                if let Some(c) = counts.get_mut(piece.lane) {
                    c.0 += 1;
                    c.1 += piece.message.len() as u64;
                }
            }
        }
        Ok(())
    }

    /// Publishes the messages and bytes written per channel since the last call.
    fn publish(&self, counts: &mut [(u64, u64)]) {
        let stats = &self.shared.stats;
        for (lane, c) in counts.iter_mut().enumerate() {
            if c.0 == 0 {
                continue;
            }
            if let Some(channel) = stats.channels.get(lane) {
                channel.messages_out.fetch_add(c.0, Relaxed);
                channel.bytes_out.fetch_add(c.1, Relaxed);
            }
            *c = (0, 0);
        }
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;

    use super::*;

    /// A peer that reads, but slowly: 16 KiB per write call, then nothing for 20 ms. Every
    /// flush (a frame of at most 128 KiB) completes well within the writer's timeout; only the
    /// queue behind it stays full.
    struct Trickle {
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            self.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            Poll::Ready(Ok(buf.len().min(16 * 1024)))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_queue_that_stays_full_ends_the_connection_though_every_write_progresses() {
        let shared = SocketShared::for_test(1, 1);
        let writer = Writer {
            shared: shared.clone(),
            reliable: None,
            batch_bytes: 16 * 1024,
            write_timeout: Duration::from_millis(300),
            channel_ids: vec![0],
        };
        let trickle = Trickle { sleep: None };
        let task = tokio::spawn(writer.run(trickle, Sealer::new(&[1; 32])));
        // 1 MiB takes the trickle about 1.3 s; keep the queue full behind it.
        let message = Bytes::from(vec![3u8; 1 << 20]);
        let mut refused = 0;
        tokio::time::timeout(Duration::from_secs(20), async {
            while refused < 3 {
                if shared.queue.try_push(0, message.clone()).is_err() {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the writer gives up on a queue full for write_timeout")
            .unwrap();
        assert!(
            matches!(end, WriteEnd::Failed(DisconnectReason::WriteStalled)),
            "{end:?}"
        );
    }

    /// Keeps what the writer writes; its first write queues a ping, as the liveness timer would
    /// while a large message is going out.
    struct Recorder {
        written: Arc<parking_lot::Mutex<bytes::BytesMut>>,
        shared: Arc<SocketShared>,
        pinged: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if !self.pinged {
                self.pinged = true;
                assert!(
                    self.shared
                        .queue
                        .push_control(ControlMessage::Ping { nonce: 7 })
                );
            }
            self.written.lock().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_ping_queued_while_a_large_message_goes_out_is_written_between_its_pieces() {
        use crate::codec::cipher::Opener;
        use crate::codec::frame::FrameDecoder;
        use crate::codec::record::{Inbound, RecordDecoder};

        let shared = SocketShared::for_test(1, 4);
        let writer = Writer {
            shared: shared.clone(),
            reliable: None,
            batch_bytes: 16 * 1024,
            write_timeout: Duration::from_secs(10),
            channel_ids: vec![0],
        };
        assert!(
            shared
                .queue
                .try_push(0, Bytes::from(vec![3u8; 1 << 20]))
                .is_ok()
        );
        let written = Arc::new(parking_lot::Mutex::new(bytes::BytesMut::new()));
        let recorder = Recorder {
            written: written.clone(),
            shared: shared.clone(),
            pinged: false,
        };
        let task = tokio::spawn(writer.run(recorder, Sealer::new(&[1; 32])));
        let mut frames = FrameDecoder::new(Opener::new(&[1; 32]));
        let mut records = RecordDecoder::new(2 << 20);
        let mut pending = bytes::BytesMut::new();
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while !seen.contains(&"message") {
                pending.extend_from_slice(&written.lock().split());
                while let Some(plaintext) = frames.decode(&mut pending).unwrap() {
                    records.decode_frame(plaintext, &mut |record| {
                        seen.push(match record {
                            Inbound::Control(body) => match crate::codec::decode_control(&body) {
                                Ok(ControlMessage::Ping { nonce: 7 }) => "ping",
                                other => panic!("{other:?}"),
                            },
                            Inbound::Message { bytes, .. } => {
                                assert_eq!(bytes.len(), 1 << 20);
                                "message"
                            }
                            Inbound::Violation(v) => panic!("{v:?}"),
                        })
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the message is written");
        task.abort();
        // Not after the 1 MiB: the ping waits for one batch of it at most.
        assert_eq!(seen, vec!["ping", "message"]);
    }
}
