//! The encrypted frame layer: `[u32 BE length][ciphertext][16-byte tag]`.
//!
//! [`FrameEncoder`] packs records (see [`super::record`]) straight into an output buffer and seals
//! each frame in place, so many small messages share one frame and many frames share one
//! `write` call. [`FrameDecoder`] splits a byte stream into frames, checks the announced length
//! against the limit *before* buffering the body, and opens each frame in place.

use bytes::{Buf, BufMut, BytesMut};

use super::cipher::{Opener, Sealer, TAG_LEN};
use super::record::{self, RecordKind};
use super::{CodecError, ControlMessage};

/// Length of the frame header (big-endian ciphertext length).
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest plaintext a frame carries. Large enough that a 64 KiB message fits in one frame, small
/// enough that control records never wait behind more than one frame of a large message.
pub const MAX_FRAME_PLAINTEXT: usize = 128 * 1024;

/// Largest ciphertext (plaintext plus tag) a frame header may announce.
pub const MAX_FRAME_CIPHERTEXT: usize = MAX_FRAME_PLAINTEXT + TAG_LEN;

/// Builds sealed frames into an output buffer.
///
/// Usage: push records with [`FrameEncoder::push_control`] and [`FrameEncoder::push_message`], then
/// [`FrameEncoder::seal`] and hand [`FrameEncoder::output`] to the socket.
#[derive(Debug)]
pub struct FrameEncoder {
    sealer: Sealer,
    out: BytesMut,
    /// Offset in `out` of the header of the frame being filled, if one is open.
    open_frame: Option<usize>,
    /// Frames sealed into `out` since the last [`FrameEncoder::take_sealed_frames`].
    sealed_frames: u64,
    max_plaintext: usize,
}

impl FrameEncoder {
    /// An encoder sealing with `sealer`, with frames of at most [`MAX_FRAME_PLAINTEXT`] bytes.
    pub fn new(sealer: Sealer) -> Self {
        Self::with_frame_size(sealer, MAX_FRAME_PLAINTEXT)
    }

    /// An encoder with a smaller frame size (at least 64 bytes, at most [`MAX_FRAME_PLAINTEXT`]),
    /// used by tests to exercise fragmentation with small messages.
    pub fn with_frame_size(sealer: Sealer, max_plaintext: usize) -> Self {
        Self {
            sealer,
            // Grown as batches need it: an idle connection keeps 4 KiB, not a full batch.
            out: BytesMut::with_capacity(4 * 1024),
            open_frame: None,
            sealed_frames: 0,
            max_plaintext: max_plaintext.clamp(64, MAX_FRAME_PLAINTEXT),
        }
    }

    /// Frees the output buffer if nothing is buffered, so an idle connection holds none; the
    /// next record allocates a small one again.
    pub fn release_idle(&mut self) {
        if self.out.is_empty() && self.open_frame.is_none() {
            self.out = BytesMut::new();
        }
    }

    /// Bytes buffered so far (sealed frames plus the open one).
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    fn room_in_frame(&mut self) -> usize {
        let start = match self.open_frame {
            Some(start) => start,
            None => {
                if self.out.capacity() == 0 {
                    // After `release_idle`: one small allocation, grown as batches need it.
                    self.out.reserve(4 * 1024);
                }
                let start = self.out.len();
                self.out.put_u32(0); // patched by `close_frame`
                self.open_frame = Some(start);
                start
            }
        };
        let used = self.out.len() - start - FRAME_HEADER_LEN;
        self.max_plaintext - used
    }

    /// Room for at least one record header plus one byte, opening a new frame if needed.
    fn ensure_room(&mut self, wanted: usize) -> Result<usize, CodecError> {
        let room = self.room_in_frame();
        if room >= wanted {
            return Ok(room);
        }
        self.close_frame()?;
        Ok(self.room_in_frame())
    }

    /// Appends one control record. Control bodies are tiny, so they always fit in one frame.
    ///
    /// # Errors
    /// Only sealing errors of a frame it had to close ([`CodecError::NonceExhausted`]).
    pub fn push_control(&mut self, body: &[u8]) -> Result<(), CodecError> {
        self.ensure_room(record::HEADER_LEN + body.len())?;
        record::put_header(&mut self.out, RecordKind::Control, body.len());
        self.out.extend_from_slice(body);
        Ok(())
    }

    /// Serializes `message` and appends it as one control record, through a stack buffer: the
    /// writer sends acknowledgements and pings all the time, and an allocation each was most of
    /// what a persistent peer's stream still allocated (`tests/allocations.rs`).
    ///
    /// # Errors
    /// As [`FrameEncoder::push_control`].
    pub fn push_control_message(&mut self, message: &ControlMessage) -> Result<(), CodecError> {
        let mut buf = [0u8; 64];
        match postcard::to_slice(message, &mut buf) {
            Ok(body) => self.push_control(body),
            // Larger than any control message is today; never lost for it.
            Err(_) => self.push_control(&super::encode_control(message)),
        }
    }

    /// Appends the next piece of `message` on channel 0; see [`FrameEncoder::push_message_on`].
    ///
    /// # Errors
    /// As [`FrameEncoder::push_message_on`].
    pub fn push_message(&mut self, message: &[u8], offset: usize) -> Result<usize, CodecError> {
        self.push_message_on(0, message, offset, message.len())
    }

    /// Appends the next piece of `message` on `channel`, from `offset` up to at most `end`, and
    /// returns the offset reached.
    ///
    /// A message that fits in the open frame (or a fresh one) becomes a single `Message` record;
    /// a larger one is split into a `Start` fragment (carrying the total length) and `Continue`
    /// fragments. At most one fragment is written per call, so the caller can slip other records
    /// (control, other channels' messages) in between the fragments of a large message.
    ///
    /// # Errors
    /// Only sealing errors of a frame it had to close ([`CodecError::NonceExhausted`]).
    pub fn push_message_on(
        &mut self,
        channel: u16,
        message: &[u8],
        offset: usize,
        end: usize,
    ) -> Result<usize, CodecError> {
        let end = end.min(message.len());
        let whole = record::HEADER_LEN + record::CHANNEL_LEN + message.len();
        if offset == 0 && end == message.len() && whole <= self.max_plaintext {
            self.ensure_room(whole)?;
            record::put_data_header(
                &mut self.out,
                RecordKind::Message,
                record::CHANNEL_LEN + message.len(),
                channel,
            );
            self.out.extend_from_slice(message);
            return Ok(message.len());
        }
        let (kind, prefix) = if offset == 0 {
            (
                RecordKind::Start,
                record::CHANNEL_LEN + record::START_PREFIX_LEN,
            )
        } else {
            (RecordKind::Continue, record::CHANNEL_LEN)
        };
        let room = self.ensure_room(record::HEADER_LEN + prefix + 1)?;
        let take = (room - record::HEADER_LEN - prefix).min(end.saturating_sub(offset));
        record::put_data_header(&mut self.out, kind, prefix + take, channel);
        if offset == 0 {
            // Message sizes are bounded by `max_message_size` (well under 4 GiB) before they reach
            // the encoder, so the cast cannot truncate.
            self.out.put_u32(message.len() as u32);
        }
        self.out.extend_from_slice(&message[offset..offset + take]);
        Ok(offset + take)
    }

    fn close_frame(&mut self) -> Result<(), CodecError> {
        let Some(start) = self.open_frame.take() else {
            return Ok(());
        };
        let body_start = start + FRAME_HEADER_LEN;
        let plaintext_len = self.out.len() - body_start;
        if plaintext_len == 0 {
            self.out.truncate(start);
            return Ok(());
        }
        let header = ((plaintext_len + TAG_LEN) as u32).to_be_bytes();
        self.out[start..body_start].copy_from_slice(&header);
        let tag = self.sealer.seal(&header, &mut self.out[body_start..])?;
        self.out.extend_from_slice(&tag);
        self.sealed_frames += 1;
        Ok(())
    }

    /// How many frames were sealed since the last call (for the caller's counters).
    pub fn take_sealed_frames(&mut self) -> u64 {
        std::mem::take(&mut self.sealed_frames)
    }

    /// Seals the open frame, if any, so that [`FrameEncoder::output`] holds only complete frames.
    ///
    /// # Errors
    /// [`CodecError::NonceExhausted`] when the session has sealed 2^64 - 1 frames.
    pub fn seal(&mut self) -> Result<(), CodecError> {
        self.close_frame()
    }

    /// The sealed bytes ready to write. Call [`FrameEncoder::seal`] first.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }
}

/// Splits a byte stream into frames and decrypts them.
#[derive(Debug)]
pub struct FrameDecoder {
    opener: Opener,
    max_ciphertext: usize,
}

impl FrameDecoder {
    /// A decoder opening with `opener` and accepting frames up to [`MAX_FRAME_CIPHERTEXT`].
    pub fn new(opener: Opener) -> Self {
        Self {
            opener,
            max_ciphertext: MAX_FRAME_CIPHERTEXT,
        }
    }

    /// Takes one complete frame off the front of `src` and returns its plaintext, or `Ok(None)`
    /// when more bytes are needed. Reserves room for the rest of the frame only after its length
    /// has been checked.
    ///
    /// # Errors
    /// Fatal frame errors: too large, too short, failed authentication.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&src[..FRAME_HEADER_LEN]);
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_ciphertext {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_ciphertext,
            });
        }
        if len < TAG_LEN {
            return Err(CodecError::FrameTooShort { len, min: TAG_LEN });
        }
        if src.len() < FRAME_HEADER_LEN + len {
            src.reserve(FRAME_HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let mut frame = src.split_to(len);
        let plaintext_len = self.opener.open(&header, &mut frame)?;
        frame.truncate(plaintext_len);
        Ok(Some(frame))
    }
}
