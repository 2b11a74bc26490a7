//! Drives a [`Handshake`] over any async byte stream. No timeout here: the caller wraps the call
//! in `handshake_timeout`, so a slow peer cannot hold it open.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    Established, Handshake, HandshakeError, HandshakeParams, MAX_HANDSHAKE_MESSAGE, Outcome,
};
use crate::identity::Keypair;

/// One handshake message as it goes on the wire: a big-endian `u16` length, then the message.
pub(crate) fn framed(message: &[u8]) -> BytesMut {
    let mut framed = BytesMut::with_capacity(2 + message.len());
    // Handshake messages are built into MAX_HANDSHAKE_MESSAGE-byte buffers, so they fit a u16.
    framed.put_u16(message.len() as u16);
    framed.extend_from_slice(message);
    framed
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> Result<(), HandshakeError> {
    stream.write_all(&framed(message)).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one length-prefixed handshake message, checking the length before buffering the body.
async fn receive<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, HandshakeError> {
    loop {
        if buf.len() >= 2 {
            let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(HandshakeError::MessageTooLarge {
                    len,
                    max: MAX_HANDSHAKE_MESSAGE,
                });
            }
            if buf.len() >= 2 + len {
                buf.advance(2);
                return Ok(buf.split_to(len));
            }
        }
        buf.reserve(MAX_HANDSHAKE_MESSAGE);
        if stream.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

/// Runs a whole handshake on `stream` as initiator or responder.
///
/// Returns the established session and any bytes read past the last handshake message (the first
/// frames of the session may arrive in the same read), which the frame decoder must start from.
///
/// # Errors
/// Any [`HandshakeError`]; policy refusals are returned after the refusing side's last message
/// was sent, so both sides learn the reason.
///
/// # Cancel safety
/// Not cancel safe: dropping the future mid-way leaves the stream in an unknown state, so the
/// connection must then be closed (which is what the socket does on timeout).
pub async fn perform<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    keypair: &Keypair,
    params: HandshakeParams,
    initiator: bool,
) -> Result<(Box<Established>, BytesMut), HandshakeError> {
    perform_observed(stream, keypair, params, initiator, &AtomicBool::new(false)).await
}

/// [`perform`], setting `progressed` once the first message from the other side has been
/// read and accepted: a dialer that does so is doing a handshake, not holding a connection
/// open (the node keeps such connections over silent ones when an IP's handshake places are
/// full).
pub(crate) async fn perform_observed<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    keypair: &Keypair,
    params: HandshakeParams,
    initiator: bool,
    progressed: &AtomicBool,
) -> Result<(Box<Established>, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(MAX_HANDSHAKE_MESSAGE);
    let mut hs = if initiator {
        let (hs, msg1) = Handshake::initiator(keypair, params)?;
        send(stream, &msg1).await?;
        hs
    } else {
        Handshake::responder(keypair, params)?
    };
    loop {
        let message = receive(stream, &mut buf).await?;
        let progress = hs.read(&message)?;
        progressed.store(true, Relaxed);
        if let Some(reply) = progress.send {
            send(stream, &reply).await?;
        }
        match progress.outcome {
            Outcome::Continue => {}
            Outcome::Done(established) => return Ok((established, buf)),
            Outcome::Refused(reason) => return Err(reason),
        }
    }
}
