//! Joining and leaving (pure): input validation, the joiner's node record, and the
//! default edges a join creates.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use ipnet::IpNet;
use webmesh_api::v1::{Feature, JoinRequest, MeshEdge, MeshNode, UpdateRequest};

use super::ops::Op;
use super::view::{MeshView, edge_key};
use super::{ids, keys, limits};

/// A bad field of a request: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

pub fn validate_id(id: &str) -> Result<(), FieldError> {
    ids::validate_node_id(id).map_err(|r| bad("id", r))
}

/// A WireGuard public key: base64 of 32 bytes.
pub fn validate_public_key(field: &'static str, key: &str) -> Result<(), FieldError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| bad(field, "must be a base64 WireGuard key"))?;
    if raw.len() != 32 {
        return Err(bad(field, format!("must be 32 bytes, got {}", raw.len())));
    }
    Ok(())
}

pub(crate) fn validate_port(field: &'static str, p: i32, zero_ok: bool) -> Result<(), FieldError> {
    let min = if zero_ok { 0 } else { 1 };
    if !(min..=65535).contains(&p) {
        return Err(bad(field, format!("must be {min}-65535, got {p}")));
    }
    Ok(())
}

pub(crate) fn validate_endpoints(primary: &str, wg: &[String]) -> Result<(), FieldError> {
    limits::bytes(primary.len(), limits::MAX_ENDPOINT_BYTES)
        .map_err(|r| bad("primary_endpoint", r))?;
    limits::count(wg.len(), limits::MAX_ENDPOINTS).map_err(|r| bad("wireguard_endpoints", r))?;
    if !primary.is_empty() && primary.parse::<IpAddr>().is_err() {
        return Err(bad(
            "primary_endpoint",
            format!("{primary:?} is not an IP address"),
        ));
    }
    for e in wg {
        limits::bytes(e.len(), limits::MAX_ENDPOINT_BYTES)
            .map_err(|r| bad("wireguard_endpoints", r))?;
        match e.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => {}
            _ => return Err(bad("wireguard_endpoints", format!("{e:?} is not IP:PORT"))),
        }
    }
    Ok(())
}

pub(crate) fn validate_zone(zone: &str) -> Result<(), FieldError> {
    if zone.is_empty() {
        return Ok(());
    }
    ids::validate_name(zone).map_err(|r| bad("zone_awareness_id", r))
}

/// CIDRs a node advertises.
pub fn validate_routes(routes: &[String]) -> Result<(), FieldError> {
    limits::count(routes.len(), limits::MAX_ROUTES).map_err(|r| bad("routes", r))?;
    for r in routes {
        let net: IpNet = r
            .parse()
            .map_err(|_| bad("routes", format!("{r:?} is not a CIDR")))?;
        if net != net.trunc() {
            return Err(bad(
                "routes",
                format!("{r:?} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_features(features: &[i32]) -> Result<(), FieldError> {
    limits::count(features.len(), limits::MAX_FEATURES).map_err(|r| bad("features", r))?;
    for f in features {
        if Feature::try_from(*f).is_err() {
            return Err(bad("features", format!("unknown feature {f}")));
        }
    }
    Ok(())
}

pub fn validate_join(r: &JoinRequest) -> Result<(), FieldError> {
    validate_id(&r.id)?;
    validate_public_key("public_key", &r.public_key)?;
    validate_port("raft_port", r.raft_port, false)?;
    validate_port("grpc_port", r.grpc_port, false)?;
    validate_port("meshdns_port", r.meshdns_port, true)?;
    validate_endpoints(&r.primary_endpoint, &r.wireguard_endpoints)?;
    validate_zone(&r.zone_awareness_id)?;
    validate_routes(&r.routes)?;
    limits::count(r.direct_peers.len(), limits::MAX_DIRECT_PEERS)
        .map_err(|why| bad("direct_peers", why))?;
    for p in &r.direct_peers {
        ids::validate_node_id(p).map_err(|why| bad("direct_peers", format!("{p:?}: {why}")))?;
    }
    validate_features(&r.features)
}

/// Update: like join, but only the set fields count.
pub fn validate_update(r: &UpdateRequest) -> Result<(), FieldError> {
    validate_id(&r.id)?;
    if !r.public_key.is_empty() {
        validate_public_key("public_key", &r.public_key)?;
    }
    validate_port("raft_port", r.raft_port, true)?;
    validate_port("grpc_port", r.grpc_port, true)?;
    validate_port("meshdns_port", r.meshdns_port, true)?;
    validate_endpoints(&r.primary_endpoint, &r.wireguard_endpoints)?;
    validate_zone(&r.zone_awareness_id)?;
    validate_routes(&r.routes)?;
    validate_features(&r.features)
}

/// The record a join asks for (addresses are allocated when it is applied).
pub fn node_record(r: &JoinRequest) -> MeshNode {
    MeshNode {
        id: r.id.clone(),
        primary_endpoint: r.primary_endpoint.clone(),
        wireguard_endpoints: r.wireguard_endpoints.clone(),
        zone_awareness_id: r.zone_awareness_id.clone(),
        raft_port: r.raft_port,
        grpc_port: r.grpc_port,
        meshdns_port: r.meshdns_port,
        public_key: r.public_key.clone(),
        features: r.features.clone(),
        ..Default::default()
    }
}

/// `existing` with the set fields of an update applied.
pub fn updated_record(existing: &MeshNode, r: &UpdateRequest) -> MeshNode {
    let mut n = existing.clone();
    let set = |dst: &mut String, src: &String| {
        if !src.is_empty() {
            *dst = src.clone();
        }
    };
    set(&mut n.public_key, &r.public_key);
    set(&mut n.primary_endpoint, &r.primary_endpoint);
    set(&mut n.zone_awareness_id, &r.zone_awareness_id);
    if !r.wireguard_endpoints.is_empty() {
        n.wireguard_endpoints = r.wireguard_endpoints.clone();
    }
    if r.raft_port != 0 {
        n.raft_port = r.raft_port;
    }
    if r.grpc_port != 0 {
        n.grpc_port = r.grpc_port;
    }
    if r.meshdns_port != 0 {
        n.meshdns_port = r.meshdns_port;
    }
    if !r.features.is_empty() {
        n.features = r.features.clone();
    }
    n
}

fn edge_op(a: &str, b: &str) -> Op {
    edge_with(a, b, Default::default())
}

fn edge_with(a: &str, b: &str, attributes: std::collections::HashMap<String, String>) -> Op {
    let (s, t) = edge_key(a, b);
    let edge = MeshEdge {
        source: s.clone(),
        target: t.clone(),
        weight: 1,
        attributes,
    };
    Op::Put {
        key: keys::edge(&s, &t),
        value: serde_json::to_string(&edge).expect("edges serialize"),
        ttl_ms: 0,
    }
}

/// Default edges of a join: joiner ↔ the node that handled it; a joiner with a primary
/// endpoint ↔ every other node with one; a joiner with a zone ↔ every same-zone node
/// with a primary endpoint. Existing edges are left alone.
pub fn default_edges(view: &MeshView, joiner: &MeshNode, handler: &str) -> Vec<Op> {
    let mut peers: Vec<&str> = Vec::new();
    if handler != joiner.id && view.nodes.contains_key(handler) {
        peers.push(handler);
    }
    for n in view.public_nodes() {
        if n.id == joiner.id {
            continue;
        }
        let public_pair = !joiner.primary_endpoint.is_empty();
        let same_zone =
            !joiner.zone_awareness_id.is_empty() && joiner.zone_awareness_id == n.zone_awareness_id;
        if public_pair || same_zone {
            peers.push(&n.id);
        }
    }
    peers.sort_unstable();
    peers.dedup();
    peers
        .into_iter()
        .filter(|p| !view.edges.contains_key(&edge_key(p, &joiner.id)))
        .map(|p| edge_op(p, &joiner.id))
        .collect()
}

/// A node's address inside the mesh: IPv4 unless `prefer_ipv6` or it has none.
pub fn mesh_ip(node: &MeshNode, prefer_ipv6: bool) -> Option<IpAddr> {
    let v4 = node.private_ipv4.parse::<IpNet>().ok().map(|n| n.addr());
    let v6 = node
        .private_ipv6
        .parse::<IpNet>()
        .ok()
        .and_then(|n| match n {
            IpNet::V6(p) => Some(IpAddr::V6(super::ipam::ipv6_host(p))),
            IpNet::V4(_) => None,
        });
    if prefer_ipv6 { v6.or(v4) } else { v4.or(v6) }
}

/// A node's API address inside the mesh (empty if it has no mesh address).
pub fn mesh_api_addr(node: &MeshNode) -> String {
    mesh_ip(node, false)
        .map(|ip| SocketAddr::new(ip, node.grpc_port as u16).to_string())
        .unwrap_or_default()
}

/// Whether `n` negotiates ICE (it serves `NegotiateDataChannel`).
pub fn negotiates_ice(n: &MeshNode) -> bool {
    n.features.contains(&(Feature::IceNegotiation as i32))
}

/// ICE edges of a join: to each of `direct_peers`, and — when the joiner has no primary
/// endpoint and negotiates ICE — to every other such node (two nodes behind NATs find
/// their own path rather than relaying through a public member). A pair that has an
/// edge already keeps it.
pub fn ice_edges(
    view: &MeshView,
    joiner: &MeshNode,
    direct_peers: &[String],
) -> Result<Vec<Op>, FieldError> {
    let mut peers: Vec<&str> = Vec::new();
    for p in direct_peers {
        if *p == joiner.id {
            continue;
        }
        if !view.nodes.contains_key(p) {
            return Err(bad("direct_peers", format!("no node {p:?} in this mesh")));
        }
        peers.push(p);
    }
    if joiner.primary_endpoint.is_empty() && negotiates_ice(joiner) {
        peers.extend(
            view.nodes
                .values()
                .filter(|n| n.id != joiner.id && n.primary_endpoint.is_empty() && negotiates_ice(n))
                .map(|n| n.id.as_str()),
        );
    }
    peers.sort_unstable();
    peers.dedup();
    let ice: std::collections::HashMap<String, String> =
        [(super::peers::ICE_ATTRIBUTE.to_string(), "true".to_string())].into();
    Ok(peers
        .into_iter()
        .filter(|p| !view.edges.contains_key(&edge_key(p, &joiner.id)))
        .map(|p| edge_with(p, &joiner.id, ice.clone()))
        .collect())
}

/// Operations that remove a node: its record and every edge touching it.
pub fn leave_ops(view: &MeshView, id: &str) -> Vec<Op> {
    let mut ops = vec![Op::Delete {
        key: keys::node(id),
    }];
    for (a, b) in view.edges.keys() {
        if a == id || b == id {
            ops.push(Op::Delete {
                key: keys::edge(a, b),
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(id: &str) -> JoinRequest {
        JoinRequest {
            id: id.into(),
            public_key: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            raft_port: 9443,
            grpc_port: 8443,
            assign_ipv4: true,
            ..Default::default()
        }
    }

    type Mutate = Box<dyn Fn(&mut JoinRequest)>;

    #[test]
    fn bad_joins_name_the_field() {
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|r| r.id = "a/b".into()), "id"),
            (Box::new(|r| r.id = "a b".into()), "id"),
            (Box::new(|r| r.id = "x".repeat(64)), "id"),
            (
                Box::new(|r| r.public_key = "not-a-key".into()),
                "public_key",
            ),
            (Box::new(|r| r.public_key = "AAAA".into()), "public_key"),
            (Box::new(|r| r.raft_port = 0), "raft_port"),
            (Box::new(|r| r.grpc_port = 70000), "grpc_port"),
            (
                Box::new(|r| r.primary_endpoint = "host.example".into()),
                "primary_endpoint",
            ),
            (
                Box::new(|r| r.wireguard_endpoints = vec!["10.0.0.1".into()]),
                "wireguard_endpoints",
            ),
            (
                Box::new(|r| r.routes = vec!["10.0.0.0/33".into()]),
                "routes",
            ),
            // Limits: every list is bounded, and the error names the limit.
            (
                Box::new(|r| r.routes = (0..65).map(|i| format!("10.{i}.0.0/16")).collect()),
                "routes: 65 items; at most 64 allowed",
            ),
            (
                Box::new(|r| r.wireguard_endpoints = vec!["10.0.0.1:1".into(); 17]),
                "wireguard_endpoints: 17 items",
            ),
            (
                Box::new(|r| r.wireguard_endpoints = vec![format!("{}:1", "1".repeat(70))]),
                "wireguard_endpoints:",
            ),
            (Box::new(|r| r.features = vec![1; 33]), "features: 33 items"),
            (
                Box::new(|r| r.direct_peers = vec!["p".into(); 65]),
                "direct_peers: 65 items",
            ),
            (
                Box::new(|r| r.routes = vec!["10.0.0.1/24".into()]),
                "routes",
            ),
            (
                Box::new(|r| r.zone_awareness_id = "a zone".into()),
                "zone_awareness_id",
            ),
            (Box::new(|r| r.features = vec![99]), "features"),
        ];
        validate_join(&join("ok")).unwrap();
        for (mutate, want) in cases {
            let mut r = join("n1");
            mutate(&mut r);
            let e = validate_join(&r).unwrap_err();
            // `want` is the field, or the start of the whole message.
            let text = e.to_string();
            assert!(e.field == want || text.starts_with(want), "{want}: {text}");
        }
    }

    #[test]
    fn default_edges_follow_the_join_rules() {
        let mut view = MeshView::default();
        for (id, ep, zone) in [
            ("boot", "1.1.1.1", ""),
            ("pub2", "2.2.2.2", "z1"),
            ("nat", "", "z1"),
        ] {
            view.nodes.insert(
                id.into(),
                MeshNode {
                    id: id.into(),
                    primary_endpoint: ep.into(),
                    zone_awareness_id: zone.into(),
                    ..Default::default()
                },
            );
        }
        let keys_of = |ops: Vec<Op>| -> Vec<String> {
            ops.into_iter()
                .map(|o| match o {
                    Op::Put { key, .. } => key,
                    _ => unreachable!(),
                })
                .collect()
        };
        // A NAT-ed joiner: only the handler.
        let j = MeshNode {
            id: "j".into(),
            ..Default::default()
        };
        assert_eq!(
            keys_of(default_edges(&view, &j, "nat")),
            ["/registry/edges/j/nat"]
        );
        // A public joiner: the handler and every public node.
        let j = MeshNode {
            id: "j".into(),
            primary_endpoint: "3.3.3.3".into(),
            ..Default::default()
        };
        assert_eq!(
            keys_of(default_edges(&view, &j, "nat")),
            [
                "/registry/edges/boot/j",
                "/registry/edges/j/nat",
                "/registry/edges/j/pub2"
            ]
        );
        // A same-zone joiner: same-zone public nodes.
        let j = MeshNode {
            id: "j".into(),
            zone_awareness_id: "z1".into(),
            ..Default::default()
        };
        assert_eq!(
            keys_of(default_edges(&view, &j, "boot")),
            ["/registry/edges/boot/j", "/registry/edges/j/pub2"]
        );
    }

    #[test]
    fn ice_edges_join_nodes_behind_nats_and_the_named_peers() {
        let ice = vec![Feature::IceNegotiation as i32];
        let mut view = MeshView::default();
        for (id, ep, f) in [
            ("boot", "1.1.1.1", ice.clone()),
            ("nat1", "", ice.clone()),
            ("nat2", "", ice.clone()),
            ("old", "", vec![]),
        ] {
            view.insert_node(MeshNode {
                id: id.into(),
                primary_endpoint: ep.into(),
                features: f,
                ..Default::default()
            });
        }
        // nat2 and the joiner already share a plain edge: it stays.
        view.edges.insert(
            edge_key("j", "nat2"),
            MeshEdge {
                source: "j".into(),
                target: "nat2".into(),
                weight: 1,
                attributes: Default::default(),
            },
        );
        let ice_keys = |ops: Vec<Op>| -> Vec<String> {
            ops.into_iter()
                .map(|o| match o {
                    Op::Put { key, value, .. } => {
                        let e: MeshEdge = serde_json::from_str(&value).unwrap();
                        assert!(super::super::peers::is_ice_edge(&e), "{key}");
                        key
                    }
                    _ => unreachable!(),
                })
                .collect()
        };
        // Behind a NAT, negotiating ICE: every other such node (not one without ICE).
        let j = MeshNode {
            id: "j".into(),
            features: ice.clone(),
            ..Default::default()
        };
        assert_eq!(
            ice_keys(ice_edges(&view, &j, &[]).unwrap()),
            ["/registry/edges/j/nat1"]
        );
        // Named peers, whatever they are; a name not in the mesh is refused.
        assert_eq!(
            ice_keys(ice_edges(&view, &j, &["boot".into(), "j".into()]).unwrap()),
            ["/registry/edges/boot/j", "/registry/edges/j/nat1"]
        );
        let e = ice_edges(&view, &j, &["ghost".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "direct_peers: no node \"ghost\" in this mesh"
        );
        // A public joiner, or one without ICE, gets none unless it names them.
        let j = MeshNode {
            id: "j".into(),
            primary_endpoint: "3.3.3.3".into(),
            features: ice,
            ..Default::default()
        };
        assert!(ice_edges(&view, &j, &[]).unwrap().is_empty());
        let j = MeshNode {
            id: "j".into(),
            ..Default::default()
        };
        assert!(ice_edges(&view, &j, &[]).unwrap().is_empty());
    }

    #[test]
    fn updates_change_only_set_fields() {
        let old = MeshNode {
            id: "n".into(),
            primary_endpoint: "1.1.1.1".into(),
            raft_port: 9443,
            private_ipv4: "10.0.0.1/32".into(),
            ..Default::default()
        };
        let n = updated_record(
            &old,
            &UpdateRequest {
                id: "n".into(),
                zone_awareness_id: "z".into(),
                ..Default::default()
            },
        );
        assert_eq!(n.primary_endpoint, "1.1.1.1");
        assert_eq!(n.zone_awareness_id, "z");
        assert_eq!(n.raft_port, 9443);
        assert_eq!(n.private_ipv4, "10.0.0.1/32");
    }
}
