//! An in-memory, decoded view of the mesh objects in the state: kept current from
//! change events, so a state change costs one record's decoding, not a full reload.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use webmesh_api::v1::{Group, MeshEdge, MeshNode, NetworkAcl, Route};

use super::keys;

/// An undirected edge's key: its two ends, smaller ID first.
pub type EdgeKey = (String, String);

pub fn edge_key(a: &str, b: &str) -> EdgeKey {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub nodes: BTreeMap<String, MeshNode>,
    /// Each node's own allowed IPs (its IPv4 /32 and IPv6 /64), formatted once when
    /// its record changes rather than on every peer computation.
    pub node_ips: BTreeMap<String, Vec<String>>,
    pub edges: BTreeMap<EdgeKey, MeshEdge>,
    pub acls: BTreeMap<String, NetworkAcl>,
    pub routes: BTreeMap<String, Route>,
    pub groups: BTreeMap<String, Group>,
    pub ipv4_network: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub mesh_domain: String,
}

/// What changed in a view since some point: what an incremental peer computation
/// must look at again. Routes and settings are not listed: planning reads them whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Node records written or deleted.
    pub nodes: BTreeSet<String>,
    /// Edges written or deleted.
    pub edges: BTreeSet<EdgeKey>,
    /// ACLs or groups changed, or the view was reloaded: start again from the view.
    pub rebuild: bool,
}

impl Changes {
    /// Past this many changed records, one rebuild is cheaper than the increments,
    /// and the list stops growing.
    pub const MAX: usize = 4096;

    /// Notes that `key` was written or deleted.
    pub fn record(&mut self, key: &str) {
        if self.rebuild {
            return;
        }
        if self.nodes.len() + self.edges.len() >= Self::MAX {
            *self = Changes {
                rebuild: true,
                ..Default::default()
            };
            return;
        }
        match section(key) {
            Section::Nodes => {
                self.nodes.insert(key[keys::NODES.len()..].to_string());
            }
            Section::Edges => match key[keys::EDGES.len()..].split_once('/') {
                Some((a, b)) => {
                    self.edges.insert(edge_key(a, b));
                }
                None => self.rebuild = true,
            },
            Section::Acls | Section::Groups => self.rebuild = true,
            Section::Routes | Section::Settings | Section::Other => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.edges.is_empty() && !self.rebuild
    }
}

/// Which part of the view a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Nodes,
    Edges,
    Acls,
    Routes,
    Groups,
    Settings,
    Other,
}

pub fn section(key: &str) -> Section {
    if key.starts_with(keys::NODES) {
        Section::Nodes
    } else if key.starts_with(keys::EDGES) {
        Section::Edges
    } else if key.starts_with(keys::NETWORK_ACLS) {
        Section::Acls
    } else if key.starts_with(keys::ROUTES) {
        Section::Routes
    } else if key.starts_with(keys::GROUPS) {
        Section::Groups
    } else if key.starts_with("/registry/meshstate/") {
        Section::Settings
    } else {
        Section::Other
    }
}

impl MeshView {
    /// Applies one key's new value (`None`: deleted). Returns the section it touched.
    /// A value that does not decode is skipped (and reported): one bad record must not
    /// stop a node from computing its peers.
    pub fn apply(&mut self, key: &str, value: Option<&str>) -> Result<Section, String> {
        let sec = section(key);
        let name = |prefix: &str| key[prefix.len()..].to_string();
        let decode_err = |e: serde_json::Error| format!("{key}: {e}");
        match (sec, value) {
            (Section::Nodes, Some(v)) => {
                let n: MeshNode = serde_json::from_str(v).map_err(decode_err)?;
                self.insert_node(n);
            }
            (Section::Nodes, None) => {
                let id = name(keys::NODES);
                self.nodes.remove(&id);
                self.node_ips.remove(&id);
            }
            (Section::Edges, v) => {
                let rest = name(keys::EDGES);
                let (a, b) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{key}: not an edge key"))?;
                let k = edge_key(a, b);
                match v {
                    Some(v) => {
                        let e: MeshEdge = serde_json::from_str(v).map_err(decode_err)?;
                        self.edges.insert(k, e);
                    }
                    None => {
                        self.edges.remove(&k);
                    }
                }
            }
            (Section::Acls, Some(v)) => {
                let a: NetworkAcl = serde_json::from_str(v).map_err(decode_err)?;
                self.acls.insert(name(keys::NETWORK_ACLS), a);
            }
            (Section::Acls, None) => {
                self.acls.remove(&name(keys::NETWORK_ACLS));
            }
            (Section::Routes, Some(v)) => {
                let r: Route = serde_json::from_str(v).map_err(decode_err)?;
                self.routes.insert(name(keys::ROUTES), r);
            }
            (Section::Routes, None) => {
                self.routes.remove(&name(keys::ROUTES));
            }
            (Section::Groups, Some(v)) => {
                let g: Group = serde_json::from_str(v).map_err(decode_err)?;
                self.groups.insert(name(keys::GROUPS), g);
            }
            (Section::Groups, None) => {
                self.groups.remove(&name(keys::GROUPS));
            }
            (Section::Settings, v) => match key {
                keys::MESH_IPV4 => self.ipv4_network = v.and_then(|s| s.parse().ok()),
                keys::MESH_IPV6 => self.ipv6_network = v.and_then(|s| s.parse().ok()),
                keys::MESH_DOMAIN => self.mesh_domain = v.unwrap_or_default().to_string(),
                _ => {}
            },
            (Section::Other, _) => {}
        }
        Ok(sec)
    }

    /// Adds or replaces a node record.
    pub fn insert_node(&mut self, n: MeshNode) {
        self.node_ips.insert(n.id.clone(), node_allowed_ips(&n));
        self.nodes.insert(n.id.clone(), n);
    }

    /// A node's own allowed IPs (see [`MeshView::node_ips`]).
    pub fn allowed_ips_of(&self, n: &MeshNode) -> Vec<String> {
        self.node_ips
            .get(&n.id)
            .cloned()
            .unwrap_or_else(|| node_allowed_ips(n))
    }

    /// Builds a view from (key, value) pairs, skipping undecodable records.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (MeshView, Vec<String>) {
        let mut view = MeshView::default();
        let mut errors = Vec::new();
        for (k, v) in entries {
            if let Err(e) = view.apply(k, Some(v)) {
                errors.push(e);
            }
        }
        (view, errors)
    }

    /// Nodes with a primary endpoint (publicly reachable).
    /// `ip:port` of the mesh DNS servers among the `trusted` nodes (IPv4 then IPv6 of
    /// each), leaving out `except` (the asker itself). A host may send all its lookups
    /// to these, so they come from nodes the mesh trusts (the voters), not from any
    /// member that says it serves DNS.
    pub fn dns_servers(&self, except: &str, trusted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.values().filter(|n| {
            n.id != except
                && trusted(&n.id)
                && n.meshdns_port > 0
                && n.features
                    .contains(&(webmesh_api::v1::Feature::MeshDns as i32))
        }) {
            if let Ok(v4) = n.private_ipv4.parse::<Ipv4Net>() {
                out.push(format!("{}:{}", v4.addr(), n.meshdns_port));
            }
            if let Ok(v6) = n.private_ipv6.parse::<Ipv6Net>() {
                out.push(format!(
                    "[{}]:{}",
                    super::ipam::ipv6_host(v6),
                    n.meshdns_port
                ));
            }
        }
        out
    }

    /// The API addresses of public nodes that negotiate ICE (they relay signalling
    /// for the nodes behind NATs): `JoinResponse.ice_servers`.
    pub fn ice_servers(&self, except: &str) -> Vec<String> {
        self.public_nodes()
            .filter(|n| n.id != except && super::membership::negotiates_ice(n))
            .filter_map(|n| {
                let ip: std::net::IpAddr = n.primary_endpoint.parse().ok()?;
                Some(std::net::SocketAddr::new(ip, n.grpc_port as u16).to_string())
            })
            .collect()
    }

    pub fn public_nodes(&self) -> impl Iterator<Item = &MeshNode> {
        self.nodes
            .values()
            .filter(|n| !n.primary_endpoint.is_empty())
    }
}

/// The host addresses of a node as allowed-IP CIDRs: its IPv4 /32 and IPv6 /64.
pub fn node_allowed_ips(n: &MeshNode) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(net) = n.private_ipv4.parse::<IpNet>() {
        out.push(
            IpNet::new(net.addr(), 32)
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
    }
    if let Ok(net) = n.private_ipv6.parse::<IpNet>() {
        out.push(net.trunc().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_update_the_view() {
        let mut v = MeshView::default();
        assert_eq!(
            v.apply("/registry/nodes/a", Some(r#"{"id":"a"}"#)).unwrap(),
            Section::Nodes
        );
        v.apply(
            "/registry/edges/b/a",
            Some(r#"{"source":"b","target":"a","weight":1}"#),
        )
        .unwrap();
        assert!(
            v.edges.contains_key(&("a".to_string(), "b".to_string())),
            "edges are undirected"
        );
        v.apply(keys::MESH_IPV4, Some("10.0.0.0/8")).unwrap();
        assert_eq!(v.ipv4_network.unwrap().to_string(), "10.0.0.0/8");
        v.apply("/registry/edges/a/b", None).unwrap();
        assert!(v.edges.is_empty());
        v.apply("/registry/nodes/a", None).unwrap();
        assert!(v.nodes.is_empty());
        assert!(v.apply("/registry/nodes/x", Some("not json")).is_err());
        assert_eq!(v.apply("/test/other", Some("x")).unwrap(), Section::Other);
    }

    #[test]
    fn changes_name_what_planning_must_look_at_and_stay_bounded() {
        let mut c = Changes::default();
        c.record("/registry/nodes/a");
        c.record("/registry/edges/b/a");
        c.record("/registry/routes/r");
        c.record(keys::MESH_IPV4);
        assert_eq!(c.nodes.iter().collect::<Vec<_>>(), ["a"]);
        assert!(c.edges.contains(&edge_key("a", "b")));
        assert!(!c.rebuild);
        c.record("/registry/network-acls/x");
        assert!(c.rebuild, "an ACL change rebuilds");
        let mut c = Changes::default();
        for i in 0..Changes::MAX + 10 {
            c.record(&format!("/registry/nodes/n{i}"));
        }
        assert!(c.rebuild, "too many changes become one rebuild");
        assert!(c.nodes.len() <= Changes::MAX);
    }
}
