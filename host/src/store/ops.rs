//! What the Raft log carries: proposals of key/value operations, and what applying
//! one changed.

use serde::{Deserialize, Serialize};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`; with `ttl_ms > 0` the key disappears that long after
    /// `issued_at_ms`.
    Put {
        key: String,
        value: String,
        ttl_ms: u64,
    },
    Delete {
        key: String,
    },
    /// Delete `key` if it still carries this expiry: proposed by the leader's TTL sweeper,
    /// so a key re-written meanwhile survives.
    Expire {
        key: String,
        expires_at_ms: u64,
    },
    /// Register or update a node record (`v1.MeshNode` JSON), allocating its addresses
    /// at apply time so that concurrent joins never share one. A node that already has
    /// addresses keeps them.
    RegisterNode {
        node_json: String,
        assign_ipv4: bool,
    },
}

impl Op {
    /// The operation a `v1.RaftLogEntry` asks for; callers validate the entry first.
    pub fn from_entry(entry: &RaftLogEntry) -> Option<Op> {
        match RaftCommandType::try_from(entry.r#type).ok()? {
            RaftCommandType::Put => Some(Op::Put {
                key: entry.key.clone(),
                value: entry.value.clone(),
                ttl_ms: entry.ttl.as_ref().map(duration_ms).unwrap_or(0),
            }),
            RaftCommandType::Delete => Some(Op::Delete {
                key: entry.key.clone(),
            }),
            RaftCommandType::Unknown => None,
        }
    }
}

/// Milliseconds of a non-negative protobuf duration (rounded up, so a 1 ns TTL still
/// expires).
pub fn duration_ms(d: &webmesh_api::wkt::Duration) -> u64 {
    let secs = d.seconds.max(0) as u64;
    let nanos = d.nanos.max(0) as u64;
    secs.saturating_mul(1000)
        .saturating_add(nanos.div_ceil(1_000_000))
}

/// One effective change to the state, as watchers and storage mirrors see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Put {
        key: String,
        value: String,
        expires_at_ms: u64,
    },
    Delete {
        key: String,
    },
}

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
