//! The node's policy over all its peers, as pure rules: the duplicate tie-break, held departures,
//! bans, the redial schedule and its backoff, the address book, signed peer records, and the
//! events reported to the application.
//! Nothing here holds a socket or reads a clock: callers pass `now`.

pub(crate) mod backoff;
pub(crate) mod bans;
pub(crate) mod book;
pub(crate) mod departures;
mod event;
pub(crate) mod log_summary;
pub(crate) mod record;
pub(crate) mod redial;
pub(crate) mod registry;
pub(crate) mod stalls;
pub(crate) mod tiebreak;

pub use event::{BanReason, NetworkEvent};
