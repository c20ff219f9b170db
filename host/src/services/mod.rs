//! The public gRPC services and what they share: who is calling, and how internal
//! errors become `tonic::Status` values a person can act on.

pub mod admin;
pub mod auth;
pub mod membership;
pub mod mesh;
pub mod node;
pub mod proxy;

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

/// The caller a member forwarded a request for (leader proxy, forwarded joins):
/// `node:<id>`, `user:<id>` or `anonymous`. Trusted only from mesh members.
pub const CALLER_HEADER: &str = "x-webmesh-caller";
/// Set on a request a member forwarded to the leader: a node that is not the leader
/// any more answers it rather than forwarding it again.
pub const FORWARDED_HEADER: &str = "x-webmesh-forwarded-by";
/// Asks a follower to forward a read to the leader.
pub const PREFER_LEADER_HEADER: &str = "x-webmesh-prefer-leader";

impl Caller {
    pub fn to_header(&self) -> String {
        match self {
            Caller::Node(id) => format!("node:{id}"),
            Caller::User(id) => format!("user:{id}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    pub fn from_header(v: &str) -> Option<Caller> {
        match v.split_once(':') {
            Some(("node", id)) if !id.is_empty() => Some(Caller::Node(id.into())),
            Some(("user", id)) if !id.is_empty() => Some(Caller::User(id.into())),
            None if v == "anonymous" => Some(Caller::Anonymous),
            _ => None,
        }
    }

    /// The RBAC principal; `None` for anonymous callers (only SUBJECT_ALL "*" names them).
    pub fn principal(&self) -> crate::mesh::rbac::Principal {
        use crate::mesh::rbac::Principal;
        match self {
            Caller::Node(id) => Principal::node(id),
            Caller::User(id) => Principal::user(id),
            Caller::Anonymous => Principal {
                name: String::new(),
                node: false,
                user: false,
            },
        }
    }
}

/// Who made `req`: the AUTH plugin's answer, else the address (loopback, a member's
/// mesh address); for a request a member forwarded, the caller it names.
pub fn request_caller<T>(
    req: &tonic::Request<T>,
    local_node: &str,
    members: &std::sync::RwLock<crate::mesh::members::MemberAddrs>,
) -> Caller {
    let direct = match req.extensions().get::<auth::Authenticated>() {
        Some(a) => Caller::User(a.0.clone()),
        None => identify(req.remote_addr().map(|a| a.ip()), local_node, members),
    };
    if let Caller::Node(_) = direct
        && let Some(fwd) = req
            .metadata()
            .get(CALLER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Caller::from_header)
    {
        return fwd;
    }
    direct
}

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

/// The mesh's RBAC objects, or `None` when the mesh runs with RBAC off.
pub fn load_policy(
    engine: &crate::store::engine::Engine,
) -> Result<Option<crate::mesh::rbac::Policy>, Status> {
    use crate::mesh::keys;
    let read = |e: crate::store::engine::StoreError| internal("reading RBAC objects", e);
    if engine
        .get(keys::RBAC_DISABLED)
        .map_err(read)?
        .is_some_and(|e| e.value == "true")
    {
        return Ok(None);
    }
    // Keyed by the object's name: the last segment of its key.
    fn by_name<M: serde::de::DeserializeOwned>(
        engine: &crate::store::engine::Engine,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, M>, Status> {
        Ok(read_all(engine, prefix)?
            .into_iter()
            .map(|(k, m)| (k[prefix.len()..].to_string(), m))
            .collect())
    }
    Ok(Some(crate::mesh::rbac::Policy {
        roles: by_name(engine, keys::ROLES)?,
        bindings: by_name(engine, keys::ROLE_BINDINGS)?,
        groups: by_name(engine, keys::GROUPS)?,
    }))
}

/// PermissionDenied naming the first action `who` lacks, unless RBAC is off.
pub fn authorize(
    engine: &crate::store::engine::Engine,
    who: &crate::mesh::rbac::Principal,
    caller: &Caller,
    actions: &[crate::mesh::rbac::Action],
) -> Result<(), Status> {
    let Some(policy) = load_policy(engine)? else {
        return Ok(());
    };
    policy.check(who, actions).map_err(|missing| {
        Status::permission_denied(format!(
            "{caller} may not {missing}: no role bound to it allows that (see wmctl get rolebindings)"
        ))
    })
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

/// Who a Join / Update / Leave for node `id` runs as, and whether the caller may act
/// for that node at all. An authenticated caller acts for the node of its own name (as
/// that node and that user) or, if RBAC gives it every right, for any node. Without an
/// AUTH plugin a caller is identified by the node ID it claims.
pub fn node_principal(
    engine: &crate::store::engine::Engine,
    caller: &Caller,
    id: &str,
    action: &str,
) -> Result<crate::mesh::rbac::Principal, Status> {
    use crate::mesh::rbac::{Action, Principal};
    use webmesh_api::v1::{RuleResource, RuleVerb};
    match caller {
        Caller::User(who) if who == id => Ok(Principal {
            name: who.clone(),
            node: true,
            user: true,
        }),
        Caller::User(who) => {
            let p = Principal::user(who);
            let all = [Action::new(
                RuleResource::ResourceAll,
                id,
                RuleVerb::VerbAll,
            )];
            authorize(engine, &p, caller, &all).map_err(|_| {
                Status::permission_denied(format!(
                    "{caller} may not {action} node {id:?}: an authenticated caller may only \
                     {action} the node of its own name, unless a role gives it every right"
                ))
            })?;
            Ok(p)
        }
        Caller::Node(n) => Ok(Principal::node(n)),
        Caller::Anonymous => Ok(Principal::node(id)),
    }
}

/// What a join or update asks for beyond being a node: a vote, routes.
pub fn node_actions(id: &str, as_voter: bool, routes: bool) -> Vec<crate::mesh::rbac::Action> {
    use crate::mesh::rbac::Action;
    use webmesh_api::v1::{RuleResource, RuleVerb};
    let mut a = Vec::new();
    if as_voter {
        a.push(Action::new(
            RuleResource::ResourceVotes,
            id,
            RuleVerb::VerbPut,
        ));
    }
    if routes {
        a.push(Action::new(
            RuleResource::ResourceRoutes,
            format!("{id}-auto"),
            RuleVerb::VerbPut,
        ));
    }
    a
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
