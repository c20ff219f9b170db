//! Each Admin kind, described once: what people call it, its table, how it is named,
//! how `put` builds it from flags, and its four RPCs. `get`, `put` and `delete` are
//! written once over [`AdminKind`].

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Status};
use webmesh_api::v1::admin_client::AdminClient;
use webmesh_api::v1::{
    AclAction, Group, MeshEdge, NetworkAcl, Role, RoleBinding, Route, Rule, Subject, SubjectType,
};
use webmesh_client::names;

use crate::cli::{Output, PutArgs};
use crate::context::{Conn, Fail, local, rpc};
use crate::output::{list_or_star, print, rules_text, subjects_text};

type Admin = AdminClient<Channel>;

pub(crate) trait AdminKind: Sized + Serialize + DeserializeOwned + Send + 'static {
    /// What people call one (`role`, `networkacl`).
    const NOUN: &'static str;
    /// The table's header.
    const COLUMNS: &'static [&'static str];
    fn row(&self) -> Vec<String>;
    /// Its name in the mesh (`source/target` for edges).
    fn name(&self) -> String;
    /// An object carrying only its name, as Get and Delete take it.
    fn named(name: &str) -> Result<Self, Fail>;
    /// What `put` builds from flags.
    fn from_flags(a: &PutArgs) -> Result<Self, Fail>;
    async fn put(c: &mut Admin, r: Request<Self>) -> Result<(), Status>;
    async fn get(c: &mut Admin, r: Request<Self>) -> Result<Self, Status>;
    async fn list(c: &mut Admin, r: Request<()>) -> Result<Vec<Self>, Status>;
    async fn delete(c: &mut Admin, r: Request<Self>) -> Result<(), Status>;
}

/// The four RPCs of a kind.
macro_rules! rpcs {
    ($put:ident, $get:ident, $list:ident, $delete:ident) => {
        async fn put(c: &mut Admin, r: Request<Self>) -> Result<(), Status> {
            c.$put(r).await.map(|_| ())
        }
        async fn get(c: &mut Admin, r: Request<Self>) -> Result<Self, Status> {
            c.$get(r).await.map(|r| r.into_inner())
        }
        async fn list(c: &mut Admin, r: Request<()>) -> Result<Vec<Self>, Status> {
            c.$list(r).await.map(|r| r.into_inner().items)
        }
        async fn delete(c: &mut Admin, r: Request<Self>) -> Result<(), Status> {
            c.$delete(r).await.map(|_| ())
        }
    };
}

fn need<T: Clone>(v: &Option<T>, flag: &str, kind: &str) -> Result<T, Fail> {
    v.clone().ok_or_else(|| {
        Fail(
            2,
            format!("put {kind}: --{flag} is required (or give -f FILE)"),
        )
    })
}

fn subjects_from(a: &PutArgs) -> Vec<Subject> {
    let mut s = Vec::new();
    let mut add = |names: &[String], ty: SubjectType| {
        for n in names {
            s.push(Subject {
                name: n.clone(),
                r#type: ty as i32,
            });
        }
    };
    add(&a.nodes, SubjectType::SubjectNode);
    add(&a.users, SubjectType::SubjectUser);
    add(&a.groups, SubjectType::SubjectGroup);
    if a.everyone {
        add(&["*".to_string()], SubjectType::SubjectAll);
    }
    s
}

impl AdminKind for Role {
    const NOUN: &'static str = "role";
    const COLUMNS: &'static [&'static str] = &["NAME", "RULES"];
    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), rules_text(&self.rules)]
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn named(name: &str) -> Result<Self, Fail> {
        Ok(Role {
            name: name.into(),
            ..Default::default()
        })
    }
    fn from_flags(a: &PutArgs) -> Result<Self, Fail> {
        let resources = a
            .resources
            .iter()
            .map(|r| {
                names::resource_of(r).map(|r| r as i32).ok_or_else(|| {
                    let all: Vec<&str> = names::RESOURCES
                        .iter()
                        .map(|r| names::resource_name(*r))
                        .collect();
                    Fail(2, format!("--resource {r:?}: one of {}", all.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?;
        let verbs = a
            .verbs
            .iter()
            .map(|v| {
                names::verb_of(v)
                    .map(|v| v as i32)
                    .ok_or_else(|| Fail(2, format!("--verb {v:?}: put, delete or all")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Role {
            name: need(&a.name, "name", Self::NOUN)?,
            rules: vec![Rule {
                resources,
                resource_names: a.resource_names.clone(),
                verbs,
            }],
        })
    }
    rpcs!(put_role, get_role, list_roles, delete_role);
}

impl AdminKind for RoleBinding {
    const NOUN: &'static str = "rolebinding";
    const COLUMNS: &'static [&'static str] = &["NAME", "ROLE", "SUBJECTS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.role.clone(),
            subjects_text(&self.subjects),
        ]
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn named(name: &str) -> Result<Self, Fail> {
        Ok(RoleBinding {
            name: name.into(),
            ..Default::default()
        })
    }
    fn from_flags(a: &PutArgs) -> Result<Self, Fail> {
        Ok(RoleBinding {
            name: need(&a.name, "name", Self::NOUN)?,
            role: need(&a.role, "role", Self::NOUN)?,
            subjects: subjects_from(a),
        })
    }
    rpcs!(
        put_role_binding,
        get_role_binding,
        list_role_bindings,
        delete_role_binding
    );
}

impl AdminKind for Group {
    const NOUN: &'static str = "group";
    const COLUMNS: &'static [&'static str] = &["NAME", "SUBJECTS"];
    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), subjects_text(&self.subjects)]
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn named(name: &str) -> Result<Self, Fail> {
        Ok(Group {
            name: name.into(),
            ..Default::default()
        })
    }
    fn from_flags(a: &PutArgs) -> Result<Self, Fail> {
        Ok(Group {
            name: need(&a.name, "name", Self::NOUN)?,
            subjects: subjects_from(a),
        })
    }
    rpcs!(put_group, get_group, list_groups, delete_group);
}

impl AdminKind for NetworkAcl {
    const NOUN: &'static str = "networkacl";
    const COLUMNS: &'static [&'static str] = &[
        "NAME",
        "PRIORITY",
        "ACTION",
        "SOURCES",
        "DESTINATIONS",
        "SOURCE CIDRS",
        "DEST CIDRS",
        "PROTOCOLS",
        "PORTS",
    ];
    fn row(&self) -> Vec<String> {
        let ports: Vec<String> = self.ports.iter().map(u32::to_string).collect();
        vec![
            self.name.clone(),
            self.priority.to_string(),
            match AclAction::try_from(self.action) {
                Ok(AclAction::ActionAccept) => "accept",
                Ok(AclAction::ActionDeny) => "deny",
                _ => "?",
            }
            .into(),
            list_or_star(&self.source_nodes),
            list_or_star(&self.destination_nodes),
            list_or_star(&self.source_cidrs),
            list_or_star(&self.destination_cidrs),
            list_or_star(&self.protocols),
            list_or_star(&ports),
        ]
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn named(name: &str) -> Result<Self, Fail> {
        Ok(NetworkAcl {
            name: name.into(),
            ..Default::default()
        })
    }
    fn from_flags(a: &PutArgs) -> Result<Self, Fail> {
        Ok(NetworkAcl {
            name: need(&a.name, "name", Self::NOUN)?,
            priority: a.priority.unwrap_or(0),
            action: match need(&a.action, "action", Self::NOUN)?.as_str() {
                "accept" => AclAction::ActionAccept as i32,
                "deny" => AclAction::ActionDeny as i32,
                other => return Err(Fail(2, format!("--action {other:?}: accept or deny"))),
            },
            source_nodes: a.source_nodes.clone(),
            destination_nodes: a.destination_nodes.clone(),
            source_cidrs: a.source_cidrs.clone(),
            destination_cidrs: a.destination_cidrs.clone(),
            protocols: a.protocols.clone(),
            ports: a.ports.clone(),
        })
    }
    rpcs!(
        put_network_acl,
        get_network_acl,
        list_network_ac_ls,
        delete_network_acl
    );
}

impl AdminKind for Route {
    const NOUN: &'static str = "route";
    const COLUMNS: &'static [&'static str] = &["NAME", "NODE", "CIDRS", "NEXT HOP"];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.node.clone(),
            self.destination_cidrs.join(","),
            self.next_hop_node.clone(),
        ]
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn named(name: &str) -> Result<Self, Fail> {
        Ok(Route {
            name: name.into(),
            ..Default::default()
        })
    }
    fn from_flags(a: &PutArgs) -> Result<Self, Fail> {
        Ok(Route {
            name: need(&a.name, "name", Self::NOUN)?,
            node: a
                .nodes
                .first()
                .cloned()
                .ok_or_else(|| Fail(2, "put route: --node is required (or give -f FILE)".into()))?,
            destination_cidrs: a.cidrs.clone(),
            next_hop_node: a.next_hop.clone().unwrap_or_default(),
        })
    }
    rpcs!(put_route, get_route, list_routes, delete_route);
}

impl AdminKind for MeshEdge {
    const NOUN: &'static str = "edge";
    const COLUMNS: &'static [&'static str] = &["SOURCE", "TARGET", "WEIGHT", "ATTRIBUTES"];
    fn row(&self) -> Vec<String> {
        let mut attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        attrs.sort();
        vec![
            self.source.clone(),
            self.target.clone(),
            self.weight.to_string(),
            attrs.join(","),
        ]
    }
    fn name(&self) -> String {
        format!("{}/{}", self.source, self.target)
    }
    fn named(name: &str) -> Result<Self, Fail> {
        let (source, target) = name
            .split_once('/')
            .ok_or_else(|| Fail(2, format!("edge {name:?}: name edges as SOURCE/TARGET")))?;
        Ok(MeshEdge {
            source: source.into(),
            target: target.into(),
            ..Default::default()
        })
    }
    fn from_flags(a: &PutArgs) -> Result<Self, Fail> {
        Ok(MeshEdge {
            source: need(&a.source, "source", Self::NOUN)?,
            target: need(&a.target, "target", Self::NOUN)?,
            weight: a.weight.unwrap_or(0),
            attributes: a
                .attributes
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| Fail(2, format!("--attribute {kv:?}: KEY=VALUE")))
                })
                .collect::<Result<_, _>>()?,
        })
    }
    rpcs!(put_edge, get_edge, list_edges, delete_edge);
}

/// Runs `$body` with `$T` bound to the type of `$kind`.
#[macro_export]
macro_rules! with_kind {
    ($kind:expr, $T:ident => $body:expr) => {
        match $kind {
            Kind::Roles => {
                type $T = webmesh_api::v1::Role;
                $body
            }
            Kind::Rolebindings => {
                type $T = webmesh_api::v1::RoleBinding;
                $body
            }
            Kind::Groups => {
                type $T = webmesh_api::v1::Group;
                $body
            }
            Kind::Networkacls => {
                type $T = webmesh_api::v1::NetworkAcl;
                $body
            }
            Kind::Routes => {
                type $T = webmesh_api::v1::Route;
                $body
            }
            Kind::Edges => {
                type $T = webmesh_api::v1::MeshEdge;
                $body
            }
        }
    };
}

/// `get KIND [NAME]`: one object, or all of a kind.
pub async fn get<T: AdminKind>(conn: &Conn, out: Output, name: Option<&str>) -> Result<(), Fail> {
    let mut admin = conn.admin();
    let items = match name {
        Some(n) => vec![
            T::get(&mut admin, conn.req(T::named(n)?))
                .await
                .map_err(rpc)?,
        ],
        None => T::list(&mut admin, conn.req(())).await.map_err(rpc)?,
    };
    let table = || {
        let mut rows = vec![T::COLUMNS.iter().map(|c| c.to_string()).collect()];
        rows.extend(items.iter().map(T::row));
        rows
    };
    match name {
        Some(_) => print(out, &items[0], table),
        None => print(out, &serde_json::json!({ "items": &items }), table),
    }
}

/// `put KIND`: from a file (one object or `{items: [...]}`) or from flags.
pub async fn put<T: AdminKind>(conn: &Conn, a: &PutArgs) -> Result<(), Fail> {
    let items: Vec<T> = match &a.file {
        Some(f) => from_file(f)?,
        None => vec![T::from_flags(a)?],
    };
    let mut admin = conn.admin();
    for item in items {
        let name = item.name();
        T::put(&mut admin, conn.req(item)).await.map_err(rpc)?;
        eprintln!("{} {name} put", T::NOUN);
    }
    Ok(())
}

/// `delete KIND NAME`.
pub async fn delete<T: AdminKind>(conn: &Conn, name: &str) -> Result<(), Fail> {
    T::delete(&mut conn.admin(), conn.req(T::named(name)?))
        .await
        .map_err(rpc)?;
    eprintln!("{} {name} deleted", T::NOUN);
    Ok(())
}

/// The objects in a YAML/JSON file (`-`: stdin): one, or a list under `items`.
fn from_file<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, Fail> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| local(format!("stdin: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| local(format!("{}: {e}", path.display())))?
    };
    let value: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| local(format!("{}: {e}", path.display())))?;
    let values = match value.get("items") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        _ => vec![value],
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .map_err(|e| local(format!("{}: object {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Kind;

    #[test]
    fn every_kind_has_a_table_and_round_trips_its_name() {
        use clap::ValueEnum;
        for k in Kind::value_variants() {
            let noun: &str = with_kind!(*k, T => T::NOUN);
            assert!(!noun.is_empty());
        }
        let e = MeshEdge::named("a/b").unwrap();
        assert_eq!(e.name(), "a/b");
        assert!(MeshEdge::named("ab").is_err());
        let r = Role::named("ops").unwrap();
        assert_eq!(r.row().len(), Role::COLUMNS.len());
        assert_eq!(NetworkAcl::default().row().len(), NetworkAcl::COLUMNS.len());
        assert_eq!(MeshEdge::default().row().len(), MeshEdge::COLUMNS.len());
        assert_eq!(Route::default().row().len(), Route::COLUMNS.len());
        assert_eq!(Group::default().row().len(), Group::COLUMNS.len());
        assert_eq!(
            RoleBinding::default().row().len(),
            RoleBinding::COLUMNS.len()
        );
    }
}
