//! The public gRPC services and what they share.
//!
//! - `identity`: who is calling (the auth layer, caller headers)
//! - `authorization`: what the caller may do (RBAC against the replica)
//! - `forwarding`: where a call runs (the leader proxy, channels to members)
//! - `node`, `membership`, `admin`, `mesh`, `turn`, `webrtc`, `campfire`: the services
//!
//! Here: reading records and turning internal errors into `tonic::Status` values a
//! person can act on.

pub mod admin;
pub mod authorization;
pub mod campfire;
pub mod forwarding;
pub mod identity;
pub mod membership;
pub mod mesh;
pub mod node;
pub mod turn;
pub mod webrtc;

use tonic::Status;

pub use forwarding::Channels;
pub use identity::{Caller, Identity};

use crate::raft::ProposeError;

/// Every record under `prefix`, decoded (see [`crate::store::views::read_all`]).
pub fn read_all<M: serde::de::DeserializeOwned>(
    engine: &crate::store::engine::Engine,
    prefix: &str,
) -> Result<Vec<(String, M)>, Status> {
    crate::store::views::read_all(engine, prefix).map_err(|e| internal("reading the state", e))
}

/// A stream's first message, within 10 s (a stream that says nothing holds no slot).
pub async fn first_message<T>(s: &mut tonic::Streaming<T>) -> Result<T, Status> {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .map_err(|_| Status::invalid_argument("no first message within 10 s"))??
        .ok_or_else(|| Status::invalid_argument("the stream ended before its first message"))
}

pub fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => Status::failed_precondition(e.to_string()),
        ProposeError::Refused(reason) => Status::failed_precondition(reason),
        ProposeError::Unavailable(_) => Status::unavailable(e.to_string()),
        ProposeError::Disk(crate::store::disk::DiskFault::Full { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        ProposeError::Disk(crate::store::disk::DiskFault::ReadOnly { .. }) => {
            Status::failed_precondition(e.to_string())
        }
    }
}

pub fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what}");
    Status::internal(format!("{what}: {e}"))
}
