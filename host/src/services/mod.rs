//! The public gRPC services and what they share.
//!
//! - `identity`: who is calling (the auth layer, caller headers)
//! - `authorization`: what the caller may do (RBAC against the replica)
//! - `forwarding`: where a call runs (the leader proxy, channels to members)
//! - `node`, `membership`, `admin`, `mesh`: the services
//!
//! Here: reading records and turning internal errors into `tonic::Status` values a
//! person can act on.

pub mod admin;
pub mod authorization;
pub mod forwarding;
pub mod identity;
pub mod membership;
pub mod mesh;
pub mod node;

use tonic::Status;

pub use authorization::{authorize, load_policy, node_actions, node_principal};
pub use forwarding::Channels;
pub use identity::{CALLER_HEADER, Caller, FORWARDED_HEADER, PREFER_LEADER_HEADER, request_caller};

use crate::raft::ProposeError;

/// Every record under `prefix`, decoded from proto3 JSON, with its key. A record that
/// does not decode is skipped (and logged): one bad record must not hide the others.
pub fn read_all<M: serde::de::DeserializeOwned>(
    engine: &crate::store::engine::Engine,
    prefix: &str,
) -> Result<Vec<(String, M)>, Status> {
    let entries = engine
        .list(prefix)
        .map_err(|e| internal("reading the state", e))?;
    Ok(entries
        .into_iter()
        .filter_map(|e| match serde_json::from_str(&e.value) {
            Ok(m) => Some((e.key, m)),
            Err(err) => {
                tracing::warn!(key = %e.key, error = %err, "skipping an undecodable record");
                None
            }
        })
        .collect())
}

pub fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => Status::failed_precondition(e.to_string()),
        ProposeError::Refused(reason) => Status::failed_precondition(reason),
        ProposeError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

pub fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what}");
    Status::internal(format!("{what}: {e}"))
}
