//! `v1.Admin`: Put / Delete / Get / List of roles, role bindings, groups, network ACLs,
//! routes and edges. Writes run on the leader (the leader proxy forwards them there),
//! validated, RBAC-checked for the caller and committed through Raft; reads come from
//! this node's replica.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use webmesh_api::v1::admin_server::Admin;
use webmesh_api::v1::{
    Group, Groups, MeshEdge, MeshEdges, NetworkAcLs, NetworkAcl, Role, RoleBinding, RoleBindings,
    Roles, Route, Routes, RuleVerb,
};

use super::authorization::{self, Granting, Read, authorize, may_grant, may_read};
use super::identity::{Caller, Identity};
use super::{internal, propose_status, read_all};
use crate::mesh::admin::{self, Invalid, Kind};
use crate::mesh::rbac::Action;
use crate::mesh::{ids, keys};
use crate::raft::RaftNode;
use crate::store::ops::Op;

/// An Admin API object: where it lives and how it is checked.
pub trait Object:
    prost::Message + Serialize + DeserializeOwned + Default + Clone + 'static
{
    const KIND: Kind;
    /// The name in the state (`source/target` for edges).
    fn name(&self) -> String;
    fn validate(&self) -> Result<(), Invalid>;
}

macro_rules! object {
    ($t:ty, $kind:expr, $validate:path) => {
        impl Object for $t {
            const KIND: Kind = $kind;
            fn name(&self) -> String {
                self.name.clone()
            }
            fn validate(&self) -> Result<(), Invalid> {
                $validate(self)
            }
        }
    };
}

object!(Role, Kind::Role, admin::validate_role);
object!(RoleBinding, Kind::RoleBinding, admin::validate_binding);
object!(Group, Kind::Group, admin::validate_group);
object!(NetworkAcl, Kind::NetworkAcl, admin::validate_acl);
object!(Route, Kind::Route, admin::validate_route);

impl Object for MeshEdge {
    const KIND: Kind = Kind::Edge;
    fn name(&self) -> String {
        format!("{}/{}", self.source, self.target)
    }
    fn validate(&self) -> Result<(), Invalid> {
        admin::validate_edge(self)
    }
}

fn invalid(e: Invalid) -> Status {
    Status::invalid_argument(e.to_string())
}

#[derive(Clone)]
pub struct AdminService {
    raft: RaftNode,
}

impl AdminService {
    pub fn new(raft: RaftNode) -> AdminService {
        AdminService { raft }
    }

    fn caller<T>(&self, req: &Request<T>) -> Caller {
        Identity::of(req).caller
    }

    /// Reads need an identity with a role on the resource (members may read all).
    fn may_read<T>(&self, req: &Request<T>, kind: Kind, name: &str) -> Result<(), Status> {
        may_read(
            authorization::policy(&self.raft)?.as_deref(),
            &self.caller(req),
            Read::Object(kind.resource(), name),
        )
    }

    fn read<O: Object>(&self, key: &str) -> Result<Option<O>, Status> {
        let Some(e) = self
            .raft
            .engine
            .get(key)
            .map_err(|e| internal("reading the state", e))?
        else {
            return Ok(None);
        };
        serde_json::from_str(&e.value)
            .map(Some)
            .map_err(|err| internal(&format!("stored {} at {key}", O::KIND.noun()), err))
    }

    /// The stored key of an object named `name`; edges are undirected, so an edge is
    /// found under either order of its ends.
    fn find<O: Object>(&self, name: &str) -> Result<Option<(String, O)>, Status> {
        let key = O::KIND.key(name);
        if let Some(o) = self.read::<O>(&key)? {
            return Ok(Some((key, o)));
        }
        if O::KIND == Kind::Edge
            && let Some((a, b)) = name.split_once('/')
        {
            let rev = keys::edge(b, a);
            if let Some(o) = self.read::<O>(&rev)? {
                return Ok(Some((rev, o)));
            }
        }
        Ok(None)
    }

    fn node_exists(&self, id: &str) -> Result<bool, Status> {
        Ok(self
            .raft
            .engine
            .get(&keys::node(id))
            .map_err(|e| internal("reading the state", e))?
            .is_some())
    }

    async fn put<O: Object>(&self, req: Request<O>) -> Result<Response<()>, Status> {
        let caller = self.caller(&req);
        let obj = req.into_inner();
        obj.validate().map_err(invalid)?;
        let name = obj.name();
        let kind = O::KIND;
        let any = &obj as &dyn std::any::Any;
        admin::protect_put(
            kind,
            &name,
            any.downcast_ref::<Role>(),
            any.downcast_ref::<RoleBinding>(),
        )
        .map_err(Status::failed_precondition)?;
        authorize(
            &self.raft,
            &caller.principal(),
            &caller,
            &[Action::new(
                kind.resource(),
                name.clone(),
                RuleVerb::VerbPut,
            )],
        )?;
        // Escalation: an RBAC object may grant only what its author holds.
        let granting = any
            .downcast_ref::<Role>()
            .map(Granting::Role)
            .or(any.downcast_ref::<RoleBinding>().map(Granting::Binding))
            .or(any.downcast_ref::<Group>().map(Granting::Group));
        if let Some(g) = granting {
            may_grant(authorization::policy(&self.raft)?.as_deref(), &caller, g)?;
        }
        if let Some(r) = any.downcast_ref::<Route>() {
            let view = crate::store::views::load_view(&self.raft.engine);
            crate::mesh::writes::check_routes("destination_cidrs", &r.destination_cidrs, &view)
                .map_err(invalid)?;
        }
        let mut ops = Vec::new();
        if let Some(e) = any.downcast_ref::<MeshEdge>() {
            for end in [&e.source, &e.target] {
                if !self.node_exists(end)? {
                    return Err(Status::not_found(format!(
                        "node {end:?} is not in the mesh; an edge joins two existing nodes"
                    )));
                }
            }
            // One record per undirected edge.
            let rev = keys::edge(&e.target, &e.source);
            if self.read::<MeshEdge>(&rev)?.is_some() {
                ops.push(Op::Delete { key: rev });
            }
        }
        ops.push(Op::Put {
            key: kind.key(&name),
            value: serde_json::to_string(&obj).map_err(|e| internal("encoding", e))?,
            ttl_ms: 0,
        });
        self.raft.propose(ops).await.map_err(propose_status)?;
        tracing::info!(%caller, kind = kind.noun(), %name, "put");
        Ok(Response::new(()))
    }

    async fn delete<O: Object>(&self, req: Request<O>) -> Result<Response<()>, Status> {
        let caller = self.caller(&req);
        let obj = req.into_inner();
        let name = validate_name::<O>(&obj)?;
        let kind = O::KIND;
        admin::protect_delete(kind, &name).map_err(Status::failed_precondition)?;
        authorize(
            &self.raft,
            &caller.principal(),
            &caller,
            &[Action::new(
                kind.resource(),
                name.clone(),
                RuleVerb::VerbDelete,
            )],
        )?;
        let Some((key, _)) = self.find::<O>(&name)? else {
            return Err(not_found::<O>(&name));
        };
        self.raft
            .propose(vec![Op::Delete { key }])
            .await
            .map_err(propose_status)?;
        tracing::info!(%caller, kind = kind.noun(), %name, "deleted");
        Ok(Response::new(()))
    }

    fn get<O: Object>(&self, req: Request<O>) -> Result<Response<O>, Status> {
        let name = validate_name::<O>(req.get_ref())?;
        self.may_read(&req, O::KIND, &name)?;
        match self.find::<O>(&name)? {
            Some((_, o)) => Ok(Response::new(o)),
            None => Err(not_found::<O>(&name)),
        }
    }

    fn list<O: Object, T>(&self, req: &Request<T>) -> Result<Vec<O>, Status> {
        self.may_read(req, O::KIND, "")?;
        Ok(read_all(&self.raft.engine, O::KIND.prefix())?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }
}

/// Get and Delete need only the name (edges: both ends).
fn validate_name<O: Object>(o: &O) -> Result<String, Status> {
    let any = o as &dyn std::any::Any;
    if let Some(e) = any.downcast_ref::<MeshEdge>() {
        for (field, v) in [("source", &e.source), ("target", &e.target)] {
            ids::validate_name(v)
                .map_err(|r| Status::invalid_argument(format!("{field}: {v:?} {r}")))?;
        }
    } else {
        let name = o.name();
        ids::validate_name(&name)
            .map_err(|r| Status::invalid_argument(format!("name: {name:?} {r}")))?;
    }
    Ok(o.name())
}

fn not_found<O: Object>(name: &str) -> Status {
    Status::not_found(format!("no {} named {name:?}", O::KIND.noun()))
}

/// The 24 RPCs: each kind's put, delete, get and list, delegated to the generic ones.
macro_rules! admin_rpcs {
    ($($t:ty, $list_t:ident: $put:ident, $delete:ident, $get:ident, $list:ident;)*) => {
        #[tonic::async_trait]
        impl Admin for AdminService {
            $(
                async fn $put(&self, r: Request<$t>) -> Result<Response<()>, Status> {
                    self.put(r).await
                }
                async fn $delete(&self, r: Request<$t>) -> Result<Response<()>, Status> {
                    self.delete(r).await
                }
                async fn $get(&self, r: Request<$t>) -> Result<Response<$t>, Status> {
                    self.get(r)
                }
                async fn $list(&self, r: Request<()>) -> Result<Response<$list_t>, Status> {
                    Ok(Response::new($list_t {
                        items: self.list(&r)?,
                    }))
                }
            )*
        }
    };
}

admin_rpcs! {
    Role, Roles: put_role, delete_role, get_role, list_roles;
    RoleBinding, RoleBindings: put_role_binding, delete_role_binding, get_role_binding, list_role_bindings;
    Group, Groups: put_group, delete_group, get_group, list_groups;
    NetworkAcl, NetworkAcLs: put_network_acl, delete_network_acl, get_network_acl, list_network_ac_ls;
    Route, Routes: put_route, delete_route, get_route, list_routes;
    MeshEdge, MeshEdges: put_edge, delete_edge, get_edge, list_edges;
}
