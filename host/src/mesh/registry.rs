//! The node records' addresses and IDs, indexed: what registering a node must check (a
//! taken IPv4 address or IPv6 prefix, an ID that differs only in case) and where the
//! next free address is, as hash probes rather than a decode of every record — a
//! registration in a mesh of 10,000 nodes would otherwise decode 10,000 records on
//! every replica. Kept current from state changes, like `members::Members`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use webmesh_api::v1::MeshNode;

#[derive(Debug, Default, Clone)]
pub struct NodeIndex {
    v4: HashMap<Ipv4Addr, String>,
    v6: HashMap<Ipv6Net, String>,
    /// Lowercased ID → ID.
    folded: HashMap<String, String>,
    /// ID → what it holds in the maps above.
    held: HashMap<String, (Option<Ipv4Addr>, Option<Ipv6Net>)>,
}

/// A record's IPv4 address (`a.b.c.d/32`) and IPv6 prefix (`p::/64`), as stored.
pub fn addresses(n: &MeshNode) -> (Option<Ipv4Addr>, Option<Ipv6Net>) {
    (
        n.private_ipv4.parse::<Ipv4Net>().ok().map(|a| a.addr()),
        n.private_ipv6.parse::<Ipv6Net>().ok(),
    )
}

impl super::members::NodeTable for NodeIndex {
    fn insert(&mut self, n: &MeshNode) {
        NodeIndex::insert(self, n)
    }

    fn remove(&mut self, id: &str) {
        NodeIndex::remove(self, id)
    }
}

impl NodeIndex {
    /// [`super::members::apply_change`] to the addresses and IDs.
    pub fn apply(&mut self, key: &str, value: Option<&str>) {
        super::members::apply_change(self, key, value)
    }

    pub fn insert(&mut self, n: &MeshNode) {
        self.remove(&n.id);
        let (v4, v6) = addresses(n);
        if let Some(a) = v4 {
            self.v4.insert(a, n.id.clone());
        }
        if let Some(p) = v6 {
            self.v6.insert(p, n.id.clone());
        }
        self.folded.insert(n.id.to_lowercase(), n.id.clone());
        self.held.insert(n.id.clone(), (v4, v6));
    }

    fn remove(&mut self, id: &str) {
        let Some((v4, v6)) = self.held.remove(id) else {
            return;
        };
        if let Some(a) = v4
            && self.v4.get(&a).is_some_and(|o| o == id)
        {
            self.v4.remove(&a);
        }
        if let Some(p) = v6
            && self.v6.get(&p).is_some_and(|o| o == id)
        {
            self.v6.remove(&p);
        }
        let f = id.to_lowercase();
        if self.folded.get(&f).is_some_and(|o| o == id) {
            self.folded.remove(&f);
        }
    }

    pub fn ipv4_owner(&self, a: Ipv4Addr) -> Option<&str> {
        self.v4.get(&a).map(String::as_str)
    }

    pub fn ipv6_owner(&self, p: Ipv6Net) -> Option<&str> {
        self.v6.get(&p).map(String::as_str)
    }

    /// A recorded ID equal to `id` ignoring case.
    pub fn folded_owner(&self, id: &str) -> Option<&str> {
        self.folded.get(&id.to_lowercase()).map(String::as_str)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.held.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::keys;

    fn record(id: &str, v4: &str, v6: &str) -> String {
        serde_json::to_string(&MeshNode {
            id: id.into(),
            private_ipv4: v4.into(),
            private_ipv6: v6.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn follows_puts_moves_and_deletes() {
        let mut ix = NodeIndex::default();
        ix.apply(
            &keys::node("Alpha"),
            Some(&record("Alpha", "10.0.0.1/32", "fd00:1:2:1::/64")),
        );
        ix.apply(&keys::node("b"), Some(&record("b", "10.0.0.2/32", "")));
        let a1 = "10.0.0.1".parse().unwrap();
        assert_eq!(ix.ipv4_owner(a1), Some("Alpha"));
        assert_eq!(
            ix.ipv6_owner("fd00:1:2:1::/64".parse().unwrap()),
            Some("Alpha")
        );
        assert_eq!(ix.folded_owner("alpha"), Some("Alpha"));
        // A re-registration with another address frees the old one.
        ix.apply(
            &keys::node("Alpha"),
            Some(&record("Alpha", "10.0.0.9/32", "")),
        );
        assert_eq!(ix.ipv4_owner(a1), None);
        assert_eq!(ix.ipv6_owner("fd00:1:2:1::/64".parse().unwrap()), None);
        assert_eq!(ix.ipv4_owner("10.0.0.9".parse().unwrap()), Some("Alpha"));
        ix.apply(&keys::node("Alpha"), None);
        assert_eq!(ix.folded_owner("ALPHA"), None);
        assert_eq!(ix.len(), 1);
        // Other keys and records under a different ID are ignored.
        ix.apply("/registry/edges/a/b", Some("{}"));
        ix.apply(&keys::node("c"), Some(&record("d", "10.0.0.3/32", "")));
        assert!(!ix.contains("c") && !ix.contains("d"));
        assert_eq!(ix.len(), 1);
    }
}
