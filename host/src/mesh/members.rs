//! Which node owns a mesh address: the index the API consults on every call from a
//! non-loopback address (a connection from a node's mesh address came through
//! WireGuard, which authenticated it). Kept current from state changes, so a lookup is
//! a hash probe, not a scan of the node records.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use webmesh_api::v1::MeshNode;

use super::keys;

#[derive(Debug, Default, Clone)]
pub struct MemberAddrs {
    /// Exact addresses (the node's IPv4).
    exact: HashMap<IpAddr, String>,
    /// IPv6 prefixes (a node owns its whole /64), by (network, length).
    prefixes: HashMap<(Ipv6Addr, u8), String>,
    /// The prefix lengths in use: usually just 64.
    lengths: BTreeSet<u8>,
    /// What each node was indexed under, to undo it on change or delete.
    by_node: HashMap<String, (Option<IpAddr>, Option<Ipv6Net>)>,
}

impl MemberAddrs {
    /// Applies one state change (`None`: deleted). Keys outside the node records and
    /// values that do not decode are ignored (the peer manager reports those).
    pub fn apply(&mut self, key: &str, value: Option<&str>) {
        let Some(id) = key.strip_prefix(keys::NODES) else {
            return;
        };
        self.remove(id);
        let Some(node) = value.and_then(|v| serde_json::from_str::<MeshNode>(v).ok()) else {
            return;
        };
        self.insert(&node);
    }

    pub fn insert(&mut self, n: &MeshNode) {
        self.remove(&n.id);
        let v4 = n
            .private_ipv4
            .parse::<IpNet>()
            .ok()
            .map(|a| a.addr())
            .filter(|a| a.is_ipv4());
        let v6 = n.private_ipv6.parse::<Ipv6Net>().ok().map(|p| p.trunc());
        if let Some(a) = v4 {
            self.exact.insert(a, n.id.clone());
        }
        if let Some(p) = v6 {
            self.prefixes
                .insert((p.network(), p.prefix_len()), n.id.clone());
            self.lengths.insert(p.prefix_len());
        }
        self.by_node.insert(n.id.clone(), (v4, v6));
    }

    fn remove(&mut self, id: &str) {
        let Some((v4, v6)) = self.by_node.remove(id) else {
            return;
        };
        if let Some(a) = v4
            && self.exact.get(&a).is_some_and(|o| o == id)
        {
            self.exact.remove(&a);
        }
        if let Some(p) = v6 {
            let k = (p.network(), p.prefix_len());
            if self.prefixes.get(&k).is_some_and(|o| o == id) {
                self.prefixes.remove(&k);
            }
            if !self.prefixes.keys().any(|(_, l)| *l == p.prefix_len()) {
                self.lengths.remove(&p.prefix_len());
            }
        }
    }

    /// The node whose mesh address `ip` is (IPv4-mapped IPv6 counts as IPv4).
    pub fn owner(&self, ip: IpAddr) -> Option<&str> {
        match ip {
            IpAddr::V4(_) => self.exact.get(&ip).map(String::as_str),
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return self.exact.get(&IpAddr::V4(v4)).map(String::as_str);
                }
                self.lengths.iter().find_map(|&len| {
                    let net = Ipv6Net::new(v6, len).ok()?.trunc();
                    self.prefixes.get(&(net.network(), len)).map(String::as_str)
                })
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, v4: &str, v6: &str) -> String {
        serde_json::to_string(&MeshNode {
            id: id.into(),
            private_ipv4: v4.into(),
            private_ipv6: v6.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn addresses_resolve_to_their_node_and_follow_changes() {
        let mut m = MemberAddrs::default();
        m.apply(
            &keys::node("a"),
            Some(&node("a", "172.16.0.1/32", "fd00:1:2:3::/64")),
        );
        m.apply(
            &keys::node("b"),
            Some(&node("b", "172.16.0.2/32", "fd00:1:2:4::/64")),
        );
        m.apply("/registry/edges/a/b", Some("{}"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(m.owner(ip("172.16.0.1")), Some("a"));
        assert_eq!(m.owner(ip("::ffff:172.16.0.2")), Some("b"));
        assert_eq!(m.owner(ip("fd00:1:2:3::99")), Some("a"));
        assert_eq!(m.owner(ip("fd00:1:2:4:ffff::1")), Some("b"));
        assert_eq!(m.owner(ip("fd00:1:2:5::1")), None);
        assert_eq!(m.owner(ip("172.16.0.3")), None);
        // A node's address changes: the old one no longer names it.
        m.apply(&keys::node("a"), Some(&node("a", "172.16.0.9/32", "")));
        assert_eq!(m.owner(ip("172.16.0.1")), None);
        assert_eq!(m.owner(ip("fd00:1:2:3::99")), None);
        assert_eq!(m.owner(ip("172.16.0.9")), Some("a"));
        m.apply(&keys::node("b"), None);
        assert_eq!(m.owner(ip("172.16.0.2")), None);
        assert_eq!(m.len(), 1);
        // Garbage is a delete, not a panic.
        m.apply(&keys::node("a"), Some("not json"));
        assert!(m.is_empty());
    }
}
