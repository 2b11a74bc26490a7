//! The tokio shell: the tasks (node actor, listener, one task per connection with its read and
//! write tasks) and the memory they share (peer maps, send queues, reliable streams, inbox). It
//! moves bytes and applies what the pure floors below decide.

pub(crate) mod connection;
pub(crate) mod inbox;
pub(crate) mod link;
pub(crate) mod listener;
pub(crate) mod node;
pub(crate) mod queue;
mod reader;
pub(crate) mod shared;
pub(crate) mod stats;
pub(crate) mod stream;
mod writer;
