//! The public gRPC services and what they share: who is calling, and how internal
//! errors become `tonic::Status` values a person can act on.

pub mod auth;
pub mod membership;
pub mod node;

use std::net::IpAddr;

use tonic::Status;

use crate::raft::ProposeError;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A mesh node, by ID.
    Node(String),
    /// An identity the AUTH plugin vouched for.
    User(String),
    /// Nobody we can name.
    Anonymous,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(id) => write!(f, "node {id}"),
            Caller::User(id) => write!(f, "{id:?} (authenticated)"),
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

/// [`caller_from_addr`], plus mesh addresses: a TCP connection from a node's mesh
/// address came through WireGuard, which authenticated the peer's key.
pub fn identify(
    remote: Option<IpAddr>,
    local_node: &str,
    members: &std::sync::RwLock<crate::mesh::members::MemberAddrs>,
) -> Caller {
    let caller = caller_from_addr(remote, local_node);
    match remote.filter(|_| caller == Caller::Anonymous) {
        Some(ip) => {
            let m = members.read().unwrap_or_else(|p| p.into_inner());
            m.owner(ip)
                .map_or(Caller::Anonymous, |id| Caller::Node(id.to_string()))
        }
        None => caller,
    }
}

/// gRPC channels to other members, made once and kept (they reconnect by themselves).
#[derive(Default)]
pub struct Channels {
    cache: std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>,
    dialer: crate::tls::Dialer,
}

impl Channels {
    pub fn new(dialer: crate::tls::Dialer) -> Channels {
        Channels {
            cache: Default::default(),
            dialer,
        }
    }

    pub fn get(&self, addr: &str) -> Result<tonic::transport::Channel, Status> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .dialer
            .channel(addr, None)
            .map_err(|e| Status::unavailable(format!("bad member address {addr}: {e}")))?;
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

pub fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => Status::failed_precondition(e.to_string()),
        ProposeError::Refused(reason) => Status::failed_precondition(reason),
        ProposeError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

/// Until RBAC decides more (issue 5), an authenticated caller acts only for the node
/// of its own name.
pub fn require_self(caller: &Caller, id: &str, action: &str) -> Result<(), Status> {
    match caller {
        Caller::User(who) if who != id => Err(Status::permission_denied(format!(
            "{caller} may not {action} node {id:?}: an authenticated caller may only {action} \
             the node of its own name"
        ))),
        _ => Ok(()),
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
