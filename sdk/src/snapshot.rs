//! The mesh state a storage plugin receives in `RestoreSnapshot`.

use prost::Message;
use webmesh_api::internal::StateSnapshot;

use crate::Error;

/// One key of the mesh state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub key: String,
    pub value: String,
    /// Unix milliseconds after which the key is gone; 0 = never.
    pub expires_at_ms: u64,
}

/// The entries of `DataSnapshot.data` (the node's snapshot format).
pub fn decode_snapshot(data: &[u8]) -> Result<Vec<SnapshotEntry>, Error> {
    let snap = StateSnapshot::decode(data)
        .map_err(|e| Error::invalid_argument(format!("snapshot: not a state snapshot: {e}")))?;
    if snap.format != 1 {
        return Err(Error::invalid_argument(format!(
            "snapshot: format {} is not supported (this SDK reads format 1)",
            snap.format
        )));
    }
    Ok(snap
        .entries
        .into_iter()
        .map(|e| SnapshotEntry {
            key: e.key,
            value: e.value,
            expires_at_ms: e.expires_at_ms,
        })
        .collect())
}
