//! What a caller may do: RBAC checks against this node's replica, and which node a
//! Join, Update or Leave acts for.

use tonic::Status;

use super::{Caller, internal, read_all};

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
