//! The public gRPC services and what they share: who is calling, and how internal
//! errors become `tonic::Status` values a person can act on.

pub mod node;

use std::net::IpAddr;

use tonic::Status;

use crate::raft::ProposeError;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A mesh node, by ID.
    Node(String),
    /// Nobody we can name.
    Anonymous,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(id) => write!(f, "node {id}"),
            Caller::Anonymous => f.write_str("an anonymous caller"),
        }
    }
}

/// Without an auth plugin, the only identity a connection proves is where it comes
/// from: a loopback caller is on this host, so it acts as this node.
pub fn caller_from_addr(remote: Option<IpAddr>, local_node: &str) -> Caller {
    match remote {
        Some(ip) if ip.is_loopback() || is_mapped_loopback(ip) => {
            Caller::Node(local_node.to_string())
        }
        _ => Caller::Anonymous,
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_callers_act_as_this_node() {
        let me = "n1";
        assert_eq!(
            caller_from_addr(Some("127.0.0.1".parse().unwrap()), me),
            Caller::Node("n1".into())
        );
        assert_eq!(
            caller_from_addr(Some("::1".parse().unwrap()), me),
            Caller::Node("n1".into())
        );
        assert_eq!(
            caller_from_addr(Some("::ffff:127.0.0.1".parse().unwrap()), me),
            Caller::Node("n1".into())
        );
        assert_eq!(
            caller_from_addr(Some("10.0.0.2".parse().unwrap()), me),
            Caller::Anonymous
        );
        assert_eq!(caller_from_addr(None, me), Caller::Anonymous);
    }
}
