//! What a caller may do, decided against this node's replica: RBAC for writes and
//! reads, who may join, rejoin, update or remove which node, and the escalation rule
//! for RBAC objects. The decisions are pure functions of the policy and the facts;
//! the services gather the facts.

use tonic::Status;
use webmesh_api::v1::{Group, Role, RoleBinding, RuleResource, RuleVerb};

use super::identity::{Caller, Identity};
use super::internal;
use crate::mesh::rbac::{Action, Compiled, Principal};
use crate::raft::RaftNode;

/// The mesh's compiled policy (`None`: RBAC is off).
pub fn policy(raft: &RaftNode) -> Result<Option<std::sync::Arc<Compiled>>, Status> {
    raft.policy()
        .map_err(|e| internal("reading RBAC objects", e))
}

/// PermissionDenied naming the first action `who` lacks, unless RBAC is off.
pub fn authorize(
    raft: &RaftNode,
    who: &Principal,
    caller: &Caller,
    actions: &[Action],
) -> Result<(), Status> {
    check(policy(raft)?.as_deref(), who, caller, actions)
}

fn check(
    policy: Option<&Compiled>,
    who: &Principal,
    caller: &Caller,
    actions: &[Action],
) -> Result<(), Status> {
    let Some(policy) = policy else {
        return Ok(());
    };
    policy.check(who, actions).map_err(|missing| {
        Status::permission_denied(format!(
            "{caller} may not {missing}: no role bound to it allows that (see wmctl get rolebindings)"
        ))
    })
}

/// Every right on node `id`: what it takes to act for a node one is not.
fn manages(policy: Option<&Compiled>, p: &Principal, id: &str) -> bool {
    policy.is_none_or(|pol| {
        pol.allows(
            p,
            &Action::new(RuleResource::ResourceAll, id, RuleVerb::VerbAll),
        )
    })
}

/// A write that acts for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    Join,
    Update,
    Leave,
}

impl NodeOp {
    fn verb(self) -> &'static str {
        match self {
            NodeOp::Join => "join as",
            NodeOp::Update => "update",
            NodeOp::Leave => "remove",
        }
    }
}

/// What a node write asks for.
#[derive(Debug, Clone)]
pub struct NodeWrite<'a> {
    pub op: NodeOp,
    pub id: &'a str,
    /// The key the request would register (join: its key; update: a new key).
    pub key: Option<&'a str>,
    pub as_voter: bool,
    pub routes: bool,
    /// The join names `direct_peers` (ICE edges to them).
    pub direct_peers: bool,
}

/// What the state says about that node and key.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFacts<'a> {
    /// The key `id` is registered with (`None`: a new node).
    pub registered: Option<&'a str>,
    /// The node holding the requested key now.
    pub key_owner: Option<&'a str>,
}

/// Whether `caller` may do `w`, and as which principal RBAC then judges its asks (a
/// vote, routes). The rules:
///
/// - A key belongs to one node: a key another node holds is `AlreadyExists`.
/// - Who acts: a node for itself (it proved its registered key, or it is this node's
///   admin socket), a user the AUTH plugin named like the node for it; acting for
///   another node takes every right on it (`all` on `all` named `ID`): an admin.
/// - What must be proved, unless an admin asks: a join proves the key it registers; a
///   rejoin under a registered ID proves that ID's key (or, to bring a new key, the
///   AUTH plugin's user of that name proves the new one); an update or leave comes
///   from the node itself, and an update cannot change the key.
/// - An anonymous caller (no AUTH plugin, or none of its credentials) may only join:
///   under an ID no one holds, that no binding or group names, as a non-voter without
///   routes, proving the key it registers.
pub fn node_write(
    policy: Option<&Compiled>,
    identity: &Identity,
    w: &NodeWrite<'_>,
    facts: &NodeFacts<'_>,
) -> Result<Principal, Status> {
    let id = w.id;
    if let (Some(owner), Some(key)) = (facts.key_owner, w.key)
        && owner != id
    {
        return Err(Status::already_exists(format!(
            "public_key: {key} is the key of node {owner:?}; every node needs a key of its own"
        )));
    }
    let caller = &identity.caller;
    let acting = match caller {
        Caller::Node(n) if n == id => Principal::node(id),
        Caller::User(u) if u == id => Principal {
            name: id.to_string(),
            node: true,
            user: true,
        },
        Caller::Node(_) | Caller::User(_) => {
            let p = caller.principal();
            if !manages(policy, &p, id) {
                return Err(Status::permission_denied(format!(
                    "{caller} may not {} node {id:?}: a caller may only {} the node of its own \
                     name, unless a role gives it every right on that node",
                    w.op.verb(),
                    w.op.verb()
                )));
            }
            p
        }
        Caller::Anonymous if policy.is_some() => return anonymous_join(policy, identity, w, facts),
        Caller::Anonymous => Principal::node(id),
    };
    let admin = manages(policy, &acting, id);
    let proves = |key: &str| {
        identity
            .claim
            .as_ref()
            .is_some_and(|c| c.node == id && c.key == key)
    };
    let is_node =
        matches!(caller, Caller::Node(n) if n == id) || identity.proven_node() == Some(id);
    let (ok, need) = match w.op {
        NodeOp::Join => {
            let key = w.key.unwrap_or_default();
            match facts.registered {
                Some(reg) if reg == key => (
                    admin || is_node || proves(key),
                    format!("a rejoin as {id:?} takes a proof of its registered key"),
                ),
                Some(_) => (
                    admin || (matches!(caller, Caller::User(u) if u == id) && proves(key)),
                    format!(
                        "node {id:?} is registered with another key; a new key takes the AUTH \
                         plugin's user {id:?} proving it, or a caller with every right on the node"
                    ),
                ),
                None => (
                    admin || proves(key),
                    format!(
                        "joining as {id:?} takes a proof of the key {key} (x-webmesh-proof, as \
                         webmesh --join makes)"
                    ),
                ),
            }
        }
        NodeOp::Update => (
            admin || (is_node && w.key.is_none_or(|k| Some(k) == facts.registered)),
            format!(
                "an update of {id:?} comes from the node itself (a proof of its key) and keeps \
                 its key; anything else takes every right on the node"
            ),
        ),
        NodeOp::Leave => (
            admin || is_node,
            format!(
                "removing {id:?} takes the node itself (a proof of its key) or a caller with \
                 every right on it"
            ),
        ),
    };
    if !ok {
        return Err(Status::permission_denied(format!("{caller}: {need}")));
    }
    // What the request asks for beyond being a node.
    check(
        policy,
        &acting,
        caller,
        &node_actions(id, w.as_voter, w.routes, w.direct_peers),
    )?;
    Ok(acting)
}

/// Open mode: the only credential is a proof of the key being registered.
fn anonymous_join(
    policy: Option<&Compiled>,
    identity: &Identity,
    w: &NodeWrite<'_>,
    facts: &NodeFacts<'_>,
) -> Result<Principal, Status> {
    let id = w.id;
    if w.op != NodeOp::Join {
        return Err(Status::unauthenticated(format!(
            "{} node {id:?} takes a proof of its key (x-webmesh-proof), or a caller with every \
             right on it",
            w.op.verb()
        )));
    }
    if facts.registered.is_some() {
        return Err(Status::permission_denied(format!(
            "node {id:?} is already registered with another key; only its owner (a proof with \
             its key) or a caller with every right on it may join as it"
        )));
    }
    let key = w.key.unwrap_or_default();
    let proved = identity
        .claim
        .as_ref()
        .is_some_and(|c| c.node == id && c.key == key);
    if !proved {
        return Err(Status::unauthenticated(format!(
            "joining as {id:?} takes a proof of the key {key} (x-webmesh-proof, as webmesh \
             --join makes)"
        )));
    }
    if w.as_voter || w.routes || w.direct_peers {
        return Err(Status::permission_denied(format!(
            "an unauthenticated joiner joins as a non-voter without routes or direct peers; \
             {id:?} asked for {}: configure an AUTH plugin, or join without them and have an \
             admin grant them (wmctl promote {id}; wmctl put route; wmctl put edge)",
            if w.as_voter {
                "a vote"
            } else if w.routes {
                "routes"
            } else {
                "direct peers"
            }
        )));
    }
    if policy.is_some_and(|p| p.names(&Principal::node(id))) {
        return Err(Status::permission_denied(format!(
            "{id:?} is a name this mesh gives rights to (a role binding or group names it); an \
             unauthenticated joiner cannot claim it: authenticate (AUTH plugin) or join under \
             another ID"
        )));
    }
    Ok(Principal::node(id))
}

/// What a join or update asks for beyond being a node: a vote, routes, ICE edges to
/// named peers (which take putting data channels and edges, as the v1 API says).
pub fn node_actions(id: &str, as_voter: bool, routes: bool, direct_peers: bool) -> Vec<Action> {
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
    if direct_peers {
        for r in [
            RuleResource::ResourceDataChannels,
            RuleResource::ResourceEdges,
        ] {
            a.push(Action::new(r, id, RuleVerb::VerbPut));
        }
    }
    a
}

/// What a read reads.
#[derive(Debug, Clone)]
pub enum Read<'a> {
    /// The whole state, node records or the graph, another node's status.
    State,
    /// Admin objects of a resource (`name` empty: all of them).
    Object(RuleResource, &'a str),
    /// The Raft members and their API addresses (for joiners that discover).
    Peers,
}

/// Reading needs an identity. Members may read everything (they replicate the state);
/// users need a role on the resource (v1 RBAC has no read verb, so put, delete or all
/// will do); any authenticated caller may discover the members.
pub fn may_read(policy: Option<&Compiled>, caller: &Caller, what: Read<'_>) -> Result<(), Status> {
    let p = match caller {
        Caller::Anonymous => {
            return Err(Status::unauthenticated(
                "reading the mesh takes an authenticated caller: a member's proof of key, the \
                 node's admin socket, or the AUTH plugin's credentials",
            ));
        }
        Caller::Node(_) => return Ok(()),
        Caller::User(_) => caller.principal(),
    };
    let Some(policy) = policy else {
        return Ok(());
    };
    let (resource, name) = match what {
        Read::Peers => return Ok(()),
        Read::State => (RuleResource::ResourceAll, ""),
        Read::Object(r, n) => (r, n),
    };
    let any = [RuleVerb::VerbPut, RuleVerb::VerbDelete]
        .into_iter()
        .any(|v| policy.allows(&p, &Action::new(resource, name, v)));
    if any {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{caller} may not read {}: no role bound to it names that resource",
            crate::mesh::rbac::resource_name(resource)
        )))
    }
}

/// Escalation: putting a role, a role binding or a group may grant only what the
/// caller itself holds (the rules the object grants, and for a group the rules of
/// every role its members would get).
pub fn may_grant(
    policy: Option<&Compiled>,
    caller: &Caller,
    object: Granting<'_>,
) -> Result<(), Status> {
    let Some(policy) = policy else {
        return Ok(());
    };
    let p = caller.principal();
    let rules: Vec<&webmesh_api::v1::Rule> = match object {
        Granting::Role(r) => r.rules.iter().collect(),
        Granting::Binding(b) => policy
            .role(&b.role)
            .map(|r| r.rules.iter().collect())
            .unwrap_or_default(),
        Granting::Group(g) => policy
            .roles_through_group(&g.name)
            .into_iter()
            .flat_map(|r| r.rules.iter())
            .collect(),
    };
    for rule in rules {
        policy.covers(&p, rule).map_err(|missing| {
            Status::permission_denied(format!(
                "{caller} may not grant {missing}: a role, binding or group may grant only \
                 what its author holds"
            ))
        })?;
    }
    Ok(())
}

/// An RBAC object being put.
#[derive(Debug, Clone, Copy)]
pub enum Granting<'a> {
    Role(&'a Role),
    Binding(&'a RoleBinding),
    Group(&'a Group),
}

/// An owned [`Granting`] (decoded from a raw write).
#[derive(Debug, Clone)]
pub enum Grant {
    Role(Role),
    Binding(RoleBinding),
    Group(Group),
}

impl Grant {
    pub fn as_ref(&self) -> Granting<'_> {
        match self {
            Grant::Role(r) => Granting::Role(r),
            Grant::Binding(b) => Granting::Binding(b),
            Grant::Group(g) => Granting::Group(g),
        }
    }
}

#[cfg(test)]
mod tests;
