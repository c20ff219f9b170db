//! Writes checked against the mesh (pure): a raw write (`Node.Apply`) passes the same
//! validation as the typed path, and routes may never capture the mesh's own traffic.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::DeserializeOwned;
use webmesh_api::v1::{Group, MeshEdge, MeshNode, NetworkAcl, Role, RoleBinding, Route};

use super::admin::{self, Invalid, Kind};
use super::view::MeshView;
use super::{ids, keys, membership};

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a raw write touches, once it has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A node record, by ID.
    Node(String),
    /// An Admin object: its kind and name (`source/target` for edges).
    Object(Kind, String),
    /// A key outside the registry: the application's own data.
    Data,
}

/// Checks a raw write of `key` (`value`: `None` deletes) against `view`, as the typed
/// path would check the same change. Mesh settings (`/registry/meshstate/`) are fixed at
/// bootstrap and cannot be written; unknown registry keys are refused.
pub fn check_raw(key: &str, value: Option<&str>, view: &MeshView) -> Result<Target, Invalid> {
    if let Some(id) = key.strip_prefix(keys::NODES) {
        ids::validate_node_id(id).map_err(|r| bad("key", format!("node ID {id:?} {r}")))?;
        if let Some(v) = value {
            check_node(id, v, view)?;
        }
        return Ok(Target::Node(id.to_string()));
    }
    for kind in [
        Kind::Role,
        Kind::RoleBinding,
        Kind::Group,
        Kind::NetworkAcl,
        Kind::Route,
        Kind::Edge,
    ] {
        let Some(name) = key.strip_prefix(kind.prefix()) else {
            continue;
        };
        if let Some(v) = value {
            let decoded = match kind {
                Kind::Role => object::<Role>(v, admin::validate_role, |o| o.name.clone()),
                Kind::RoleBinding => {
                    object::<RoleBinding>(v, admin::validate_binding, |o| o.name.clone())
                }
                Kind::Group => object::<Group>(v, admin::validate_group, |o| o.name.clone()),
                Kind::NetworkAcl => {
                    object::<NetworkAcl>(v, admin::validate_acl, |o| o.name.clone())
                }
                Kind::Route => object::<Route>(
                    v,
                    |r| {
                        admin::validate_route(r)?;
                        check_routes("value.destination_cidrs", &r.destination_cidrs, view)
                    },
                    |o| o.name.clone(),
                ),
                Kind::Edge => object::<MeshEdge>(v, admin::validate_edge, |e| {
                    format!("{}/{}", e.source, e.target)
                }),
            }?;
            if decoded != name {
                return Err(bad(
                    "key",
                    format!("the object is named {decoded:?} but its key names {name:?}"),
                ));
            }
        }
        return Ok(Target::Object(kind, name.to_string()));
    }
    if key.starts_with("/registry/meshstate/") {
        return Err(bad(
            "key",
            "mesh settings are fixed when the mesh is bootstrapped; they cannot be written",
        ));
    }
    if key.starts_with("/registry/") {
        return Err(bad(
            "key",
            format!(
                "{key:?} is no registry key the mesh knows; application data belongs outside /registry/"
            ),
        ));
    }
    Ok(Target::Data)
}

/// Decodes an Admin object from proto3 JSON, validates it and returns its name.
fn object<T: DeserializeOwned>(
    json: &str,
    validate: impl Fn(&T) -> Result<(), Invalid>,
    name: impl Fn(&T) -> String,
) -> Result<String, Invalid> {
    let o: T = serde_json::from_str(json).map_err(|e| bad("value", e.to_string()))?;
    validate(&o).map_err(|e| bad(format!("value.{}", e.field), e.reason))?;
    Ok(name(&o))
}

/// A node record written directly: what a join would have made of it. Its ID is its
/// key's; its key is its own; its addresses are one IPv4 /32 and one IPv6 /64 inside
/// the mesh networks that no other node holds.
fn check_node(id: &str, json: &str, view: &MeshView) -> Result<(), Invalid> {
    let n: MeshNode =
        serde_json::from_str(json).map_err(|e| bad("value", format!("not a v1.MeshNode: {e}")))?;
    let field = |e: membership::FieldError| bad(format!("value.{}", e.field), e.reason);
    if n.id != id {
        return Err(bad(
            "value.id",
            format!("the record names {:?} but its key names {id:?}", n.id),
        ));
    }
    membership::validate_public_key("public_key", &n.public_key).map_err(field)?;
    membership::validate_port("raft_port", n.raft_port, true).map_err(field)?;
    membership::validate_port("grpc_port", n.grpc_port, true).map_err(field)?;
    membership::validate_port("meshdns_port", n.meshdns_port, true).map_err(field)?;
    membership::validate_endpoints(&n.primary_endpoint, &n.wireguard_endpoints).map_err(field)?;
    membership::validate_zone(&n.zone_awareness_id).map_err(field)?;
    membership::validate_features(&n.features).map_err(field)?;
    let others = || view.nodes.values().filter(|o| o.id != id);
    if let Some(o) = others().find(|o| o.public_key == n.public_key) {
        return Err(bad(
            "value.public_key",
            format!(
                "the key of node {:?}; every node needs a key of its own",
                o.id
            ),
        ));
    }
    if !n.private_ipv4.is_empty() {
        let a: Ipv4Net = n
            .private_ipv4
            .parse()
            .map_err(|_| bad("value.private_ipv4", "not an IPv4 CIDR"))?;
        if a.prefix_len() != 32 || !view.ipv4_network.is_some_and(|net| net.contains(&a)) {
            return Err(bad(
                "value.private_ipv4",
                format!(
                    "{a} is not one /32 inside the mesh network {}",
                    display(view.ipv4_network)
                ),
            ));
        }
        if let Some(o) = others().find(|o| o.private_ipv4.parse::<Ipv4Net>().ok() == Some(a)) {
            return Err(bad(
                "value.private_ipv4",
                format!("{a} is node {:?}'s address", o.id),
            ));
        }
    }
    if !n.private_ipv6.is_empty() {
        let p: Ipv6Net = n
            .private_ipv6
            .parse()
            .map_err(|_| bad("value.private_ipv6", "not an IPv6 CIDR"))?;
        if p.prefix_len() != 64
            || p.trunc() != p
            || !view.ipv6_network.is_some_and(|net| net.contains(&p))
        {
            return Err(bad(
                "value.private_ipv6",
                format!(
                    "{p} is not one /64 inside the mesh network {}",
                    display(view.ipv6_network)
                ),
            ));
        }
        if let Some(o) = others().find(|o| o.private_ipv6.parse::<Ipv6Net>().ok() == Some(p)) {
            return Err(bad(
                "value.private_ipv6",
                format!("{p} is node {:?}'s prefix", o.id),
            ));
        }
    }
    Ok(())
}

fn display<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|n| n.to_string())
        .unwrap_or_else(|| "(none yet)".into())
}

/// Routes may not capture the mesh's own traffic: no CIDR may overlap a mesh network
/// (the members' addresses are in there), and none may cover a node's underlay
/// endpoint, which would send the tunnel's own packets into the tunnel. Default routes
/// (`/0`, exit nodes) are the exception: policy routing keeps WireGuard's packets on
/// the underlay and the mesh networks' own routes are more specific.
pub fn check_routes(field: &str, cidrs: &[String], view: &MeshView) -> Result<(), Invalid> {
    let mesh: Vec<IpNet> = view
        .ipv4_network
        .map(IpNet::V4)
        .into_iter()
        .chain(view.ipv6_network.map(IpNet::V6))
        .collect();
    for c in cidrs {
        let Ok(net) = c.parse::<IpNet>() else {
            return Err(bad(field, format!("{c:?} is not a CIDR")));
        };
        if net.prefix_len() == 0 {
            continue;
        }
        if let Some(m) = mesh.iter().find(|m| m.contains(&net) || net.contains(*m)) {
            return Err(bad(
                field,
                format!("{net} overlaps the mesh network {m}, where the members' addresses are"),
            ));
        }
        for n in view.nodes.values() {
            let endpoints = std::iter::once(n.primary_endpoint.parse::<IpAddr>().ok())
                .chain(
                    n.wireguard_endpoints
                        .iter()
                        .map(|e| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())),
                )
                .flatten();
            for ip in endpoints {
                if net.contains(&ip) {
                    return Err(bad(
                        field,
                        format!(
                            "{net} covers node {:?}'s endpoint {ip}: its WireGuard packets would \
                             loop into the mesh",
                            n.id
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KA: &str = "vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=";
    const KB: &str = "XJWwAGPx6RCS9sbUT83DE418349AiNbWhBk/H90Tjlk=";

    fn view() -> MeshView {
        let mut v = MeshView {
            ipv4_network: Some("172.16.0.0/12".parse().unwrap()),
            ipv6_network: Some("fd00:1:2::/48".parse().unwrap()),
            ..Default::default()
        };
        v.nodes.insert(
            "a".into(),
            MeshNode {
                id: "a".into(),
                public_key: KA.into(),
                primary_endpoint: "10.0.0.1".into(),
                wireguard_endpoints: vec!["10.0.0.1:51820".into()],
                private_ipv4: "172.16.0.1/32".into(),
                private_ipv6: "fd00:1:2:1::/64".into(),
                ..Default::default()
            },
        );
        v
    }

    fn node(id: &str, key: &str, v4: &str, v6: &str) -> String {
        serde_json::to_string(&MeshNode {
            id: id.into(),
            public_key: key.into(),
            private_ipv4: v4.into(),
            private_ipv6: v6.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_raw_node_record_is_checked_like_a_join() {
        let v = view();
        let ok = node("b", KB, "172.16.0.2/32", "fd00:1:2:2::/64");
        assert_eq!(
            check_raw("/registry/nodes/b", Some(&ok), &v),
            Ok(Target::Node("b".into()))
        );
        let cases = [
            (node("c", KB, "", ""), "value.id"),
            (node("b", KA, "", ""), "value.public_key"),
            (node("b", "junk", "", ""), "value.public_key"),
            (node("b", KB, "0.0.0.0/0", ""), "value.private_ipv4"),
            (node("b", KB, "10.0.0.9/32", ""), "value.private_ipv4"),
            (node("b", KB, "172.16.0.1/32", ""), "value.private_ipv4"),
            (node("b", KB, "", "::/0"), "value.private_ipv6"),
            (node("b", KB, "", "fd00:1:2:1::/64"), "value.private_ipv6"),
            (node("b", KB, "", "fd00:9::/64"), "value.private_ipv6"),
            ("{not json".to_string(), "value"),
        ];
        for (value, field) in cases {
            let e = check_raw("/registry/nodes/b", Some(&value), &v).unwrap_err();
            assert_eq!(e.field, field, "{value}: {e}");
        }
        // A delete needs no value; a node's own record may keep its own key.
        assert!(check_raw("/registry/nodes/a", None, &v).is_ok());
        let same = node("a", KA, "172.16.0.1/32", "fd00:1:2:1::/64");
        assert!(check_raw("/registry/nodes/a", Some(&same), &v).is_ok());
    }

    #[test]
    fn raw_objects_are_validated_and_settings_are_fixed() {
        let v = view();
        let role =
            r#"{"name":"r","rules":[{"resources":["RESOURCE_ROUTES"],"verbs":["VERB_PUT"]}]}"#;
        assert_eq!(
            check_raw("/registry/rbac/roles/r", Some(role), &v),
            Ok(Target::Object(Kind::Role, "r".into()))
        );
        let e = check_raw("/registry/rbac/roles/other", Some(role), &v).unwrap_err();
        assert_eq!(e.field, "key");
        let e = check_raw("/registry/rbac/roles/r", Some(r#"{"name":"r"}"#), &v).unwrap_err();
        assert_eq!(e.field, "value.rules");
        for k in [keys::RBAC_DISABLED, keys::MESH_IPV4, "/registry/whatever/x"] {
            assert_eq!(
                check_raw(k, Some("true"), &v).unwrap_err().field,
                "key",
                "{k}"
            );
        }
        assert_eq!(check_raw("/app/config", Some("x"), &v), Ok(Target::Data));
    }

    #[test]
    fn routes_may_not_capture_mesh_traffic() {
        let v = view();
        let check = |c: &str| check_routes("routes", &[c.to_string()], &v);
        assert!(check("192.168.1.0/24").is_ok());
        assert!(check("0.0.0.0/0").is_ok(), "exit routes are policy-routed");
        assert!(check("::/0").is_ok());
        for (c, says) in [
            ("172.16.0.5/32", "overlaps the mesh network 172.16.0.0/12"),
            ("172.0.0.0/8", "overlaps the mesh network"),
            ("fd00:1:2:1::/64", "overlaps the mesh network fd00:1:2::/48"),
            ("10.0.0.0/8", "covers node \"a\"'s endpoint 10.0.0.1"),
        ] {
            let e = check(c).unwrap_err();
            assert!(e.to_string().contains(says), "{c}: {e}");
        }
    }
}
