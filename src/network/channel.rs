//! [`Channel`]: the sending handle of one declared channel, with its own message type.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;

use super::Encoded;
use super::send::{BroadcastReport, Route};
use crate::codec::CodecError;
use crate::codec::encode_body;
use crate::driver::shared::Shared;
use crate::error::SendError;
use crate::identity::PeerId;
use crate::session::ChannelId;

/// Sends messages of type `T` on one channel, opened with [`crate::Network::channel`].
///
/// Cheap to clone, `Send + Sync`. The methods mirror [`crate::Network`]'s: `send`, `try_send`,
/// `broadcast`, `try_broadcast`, and their `*_encoded` forms; each uses this channel's queues,
/// priority and size limit, so a full bulk channel never refuses or delays a critical one.
pub struct Channel<T> {
    shared: Arc<Shared>,
    lane: usize,
    id: ChannelId,
    _message: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            lane: self.lane,
            id: self.id,
            _message: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.id).finish()
    }
}

impl<T: Serialize + 'static> Channel<T> {
    pub(crate) fn new(shared: Arc<Shared>, lane: usize, id: ChannelId) -> Self {
        Self {
            shared,
            lane,
            id,
            _message: PhantomData,
        }
    }

    fn route(&self) -> Route<'_> {
        Route {
            shared: &self.shared,
            lane: self.lane,
        }
    }

    /// This channel's id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// The largest encoded message this channel carries.
    pub(crate) fn max_message_size(&self) -> usize {
        self.shared.channels.spec(self.lane).max_message_size
    }

    /// Encodes a message once, for sending to many peers with the `*_encoded` methods.
    ///
    /// # Errors
    /// [`CodecError`] when it cannot be encoded or exceeds the channel's `max_message_size`.
    pub fn encode(&self, message: &T) -> Result<Encoded<T>, CodecError> {
        Encoded::new(
            message,
            self.shared.channels.spec(self.lane).max_message_size,
        )
    }

    /// Queues `message` to `peer` on this channel, waiting at most
    /// [`crate::Config::send_wait`] while the peer's queue on this channel is full.
    ///
    /// # Errors
    /// [`SendError::NotConnected`], [`SendError::Full`] when the wait ran out (counted),
    /// [`CodecError`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before completing, the message was not queued.
    pub async fn send(&self, peer: PeerId, message: &T) -> Result<(), SendError> {
        let max = self.shared.channels.spec(self.lane).max_message_size;
        match self.route().start_send(peer, encode_body(message, max)?) {
            Ok(()) => Ok(()),
            Err(started) => self.route().finish(peer, started).await,
        }
    }

    /// [`Channel::send`] for an already encoded message.
    ///
    /// # Errors
    /// As [`Channel::send`].
    ///
    /// # Cancel safety
    /// As [`Channel::send`].
    pub async fn send_encoded(&self, peer: PeerId, message: &Encoded<T>) -> Result<(), SendError> {
        self.route().send(peer, message.bytes.clone()).await
    }

    /// Queues `message` to `peer` on this channel without ever waiting.
    ///
    /// # Errors
    /// [`SendError::Full`] (counted as `dropped_queue_full`), [`SendError::NotConnected`],
    /// [`SendError::Codec`].
    pub fn try_send(&self, peer: PeerId, message: &T) -> Result<(), SendError> {
        let encoded = self.encode(message)?;
        self.route().try_send(peer, encoded.bytes)
    }

    /// [`Channel::try_send`] for an already encoded message.
    ///
    /// # Errors
    /// As [`Channel::try_send`].
    pub fn try_send_encoded(&self, peer: PeerId, message: &Encoded<T>) -> Result<(), SendError> {
        self.route().try_send(peer, message.bytes.clone())
    }

    /// Queues `message` on this channel to every connected and persistent peer; see
    /// [`crate::Network::broadcast`] for the waiting policy.
    ///
    /// # Errors
    /// [`CodecError`].
    ///
    /// # Cancel safety
    /// Not cancel safe: if dropped while waiting, the message has been queued to some peers only.
    pub async fn broadcast(&self, message: &T) -> Result<BroadcastReport, CodecError> {
        let encoded = self.encode(message)?;
        Ok(self.route().broadcast(&encoded.bytes).await)
    }

    /// [`Channel::broadcast`] for an already encoded message.
    ///
    /// # Cancel safety
    /// As [`Channel::broadcast`].
    pub async fn broadcast_encoded(&self, message: &Encoded<T>) -> BroadcastReport {
        self.route().broadcast(&message.bytes).await
    }

    /// Queues `message` on this channel to every connected and persistent peer without waiting.
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn try_broadcast(&self, message: &T) -> Result<BroadcastReport, CodecError> {
        let encoded = self.encode(message)?;
        Ok(self.route().try_broadcast(&encoded.bytes))
    }

    /// [`Channel::try_broadcast`] for an already encoded message.
    pub fn try_broadcast_encoded(&self, message: &Encoded<T>) -> BroadcastReport {
        self.route().try_broadcast(&message.bytes)
    }
}
