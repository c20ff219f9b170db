//! The write type: what a proposal asks the state machine to do. The mesh rules make
//! these (a join's record and edges, a leave's deletions, a new mesh's objects); the
//! store applies them.

use serde::{Deserialize, Serialize};
use webmesh_api::v1::{RaftCommandType, RaftLogEntry};

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
