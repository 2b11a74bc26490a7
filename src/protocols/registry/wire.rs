//! The registry protocol's messages, all requests on the registry channel: members ask the
//! registry (register, heartbeat, deregister, sync) and the registry pushes list changes to
//! members (update).

use serde::{Deserialize, Serialize};

use super::core::{Delta, Refusal};
use crate::peers::record::PeerRecord;

/// A request on the registry channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// List me: my signed record and the application's compatibility value.
    Register { record: PeerRecord, compat: u64 },
    /// I am alive; my current record (a new state hash is a newer record). `version` is the
    /// list version I hold.
    Heartbeat { record: PeerRecord, version: u64 },
    /// Drop me now (a graceful stop).
    Deregister,
    /// Send me what changed since `version`.
    Sync { version: u64 },
    /// Registry to member: the list changed.
    Update(Delta),
}

/// The network's settings, as the registry states them in its answer to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Settings {
    /// The application's compatibility value (for example a schema or protocol version).
    pub(crate) compat: u64,
    /// How often members send a heartbeat, in milliseconds.
    pub(crate) heartbeat_ms: u64,
}

/// An answer on the registry channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// Listed; the network's settings and the whole list.
    Registered { settings: Settings, list: Delta },
    /// Not listed: the compatibility values differ (the registry's is given).
    Mismatch { compat: u64 },
    /// Not listed, for this reason.
    Refused(Refusal),
    /// Heartbeat or update taken; the sender's list is at `version`.
    Ack { version: u64 },
    /// The sender is not listed (dropped, or the registry restarted): register again.
    Unknown,
    /// The changes asked for.
    List(Delta),
}
