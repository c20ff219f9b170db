//! Who holds which key: node ID → its registered WireGuard public key, and back. The
//! API believes a node's identity only from a proof made with that key (see
//! `webmesh_client::proof`), never from where a connection comes from. Kept current from
//! state changes, so a lookup is a hash probe, not a scan of the node records.

use std::collections::HashMap;

use webmesh_api::v1::MeshNode;

use super::keys;

#[derive(Debug, Default, Clone)]
pub struct Members {
    /// Node ID → public key (base64, as registered).
    keys: HashMap<String, String>,
    /// Public key → node ID.
    owners: HashMap<String, String>,
}

/// An index over the node records, kept current from state changes.
pub trait NodeTable {
    fn insert(&mut self, n: &MeshNode);
    fn remove(&mut self, id: &str);
}

/// Applies one state change to `table` (`None`: deleted). Keys outside the node
/// records are ignored; a record that does not decode as one of that ID counts as gone.
pub fn apply_change(table: &mut impl NodeTable, key: &str, value: Option<&str>) {
    let Some(id) = key.strip_prefix(keys::NODES) else {
        return;
    };
    table.remove(id);
    if let Some(node) = value
        .and_then(|v| serde_json::from_str::<MeshNode>(v).ok())
        .filter(|n| n.id == id)
    {
        table.insert(&node);
    }
}

impl NodeTable for Members {
    fn insert(&mut self, n: &MeshNode) {
        Members::insert(self, n)
    }

    fn remove(&mut self, id: &str) {
        Members::remove(self, id)
    }
}

impl Members {
    /// [`apply_change`] to the keys.
    pub fn apply(&mut self, key: &str, value: Option<&str>) {
        apply_change(self, key, value)
    }

    pub fn insert(&mut self, n: &MeshNode) {
        self.remove(&n.id);
        if n.public_key.is_empty() {
            return;
        }
        self.keys.insert(n.id.clone(), n.public_key.clone());
        self.owners.insert(n.public_key.clone(), n.id.clone());
    }

    fn remove(&mut self, id: &str) {
        if let Some(k) = self.keys.remove(id)
            && self.owners.get(&k).is_some_and(|o| o == id)
        {
            self.owners.remove(&k);
        }
    }

    /// The key node `id` registered.
    pub fn key_of(&self, id: &str) -> Option<&str> {
        self.keys.get(id).map(String::as_str)
    }

    /// The node that registered `public_key`.
    pub fn owner_of(&self, public_key: &str) -> Option<&str> {
        self.owners.get(public_key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, key: &str) -> String {
        serde_json::to_string(&MeshNode {
            id: id.into(),
            public_key: key.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn keys_resolve_both_ways_and_follow_changes() {
        let mut m = Members::default();
        m.apply(&keys::node("a"), Some(&node("a", "KA")));
        m.apply(&keys::node("b"), Some(&node("b", "KB")));
        m.apply("/registry/edges/a/b", Some("{}"));
        assert_eq!(m.key_of("a"), Some("KA"));
        assert_eq!(m.owner_of("KB"), Some("b"));
        assert_eq!(m.owner_of("KC"), None);
        // A new key: the old one names nobody.
        m.apply(&keys::node("a"), Some(&node("a", "KA2")));
        assert_eq!(m.owner_of("KA"), None);
        assert_eq!(m.key_of("a"), Some("KA2"));
        m.apply(&keys::node("b"), None);
        assert_eq!(m.owner_of("KB"), None);
        assert_eq!(m.len(), 1);
        // Garbage, or a record under another node's key, is a delete, not a panic.
        m.apply(&keys::node("a"), Some("not json"));
        assert!(m.is_empty());
        m.apply(&keys::node("x"), Some(&node("y", "KY")));
        assert!(m.is_empty());
    }
}
