//! What the Raft log carries: proposals of key/value operations, and what applying
//! one changed.

use serde::{Deserialize, Serialize};

/// The write type lives with the mesh rules that make writes (`mesh::ops`).
pub use crate::mesh::ops::{Op, duration_ms};
use webmesh_api::v1::{RaftCommandType, RaftLogEntry};

/// One Raft log payload: proposals gathered while the previous entry was being written
/// (group commit), applied in order, each one atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub proposals: Vec<Proposal>,
}

/// A set of operations applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposer's wall clock (Unix ms). TTLs count from here, so every replica
    /// computes the same expiry.
    pub issued_at_ms: u64,
    pub ops: Vec<Op>,
}

/// One effective change to the state, as watchers and storage mirrors see it: a write
/// the rules decided, applied.
pub use crate::mesh::rules::Write as Change;

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }

    /// The new value; `None` for a delete.
    pub fn value(&self) -> Option<&str> {
        match self {
            Change::Put { value, .. } => Some(value),
            Change::Delete { .. } => None,
        }
    }

    /// The change as a v1 log entry (for storage plugins and mirrors).
    pub fn to_entry(&self, now_ms: u64) -> RaftLogEntry {
        match self {
            Change::Put {
                key,
                value,
                expires_at_ms,
            } => RaftLogEntry {
                r#type: RaftCommandType::Put as i32,
                key: key.clone(),
                value: value.clone(),
                ttl: (*expires_at_ms > 0).then(|| {
                    let ms = expires_at_ms.saturating_sub(now_ms);
                    webmesh_api::wkt::Duration {
                        seconds: (ms / 1000) as i64,
                        nanos: ((ms % 1000) * 1_000_000) as i32,
                    }
                }),
            },
            Change::Delete { key } => RaftLogEntry {
                r#type: RaftCommandType::Delete as i32,
                key: key.clone(),
                ..Default::default()
            },
        }
    }
}

/// What applying one proposal did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// Set when the proposal was refused at apply time (nothing was changed).
    pub error: Option<String>,
    /// For `RegisterNode`: the stored record, with its addresses.
    pub value: Option<String>,
    pub changes: Vec<Change>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
