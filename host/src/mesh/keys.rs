//! Layout of the replicated key/value state, and what a key or value may be.
//!
//! Values of registry objects are proto3 JSON of the v1 messages, as in the reference
//! implementation, so a mirror in another database stays readable.

/// Node records (`v1.MeshNode`), by node ID.
pub const NODES: &str = "/registry/nodes/";
/// Edges (`v1.MeshEdge`), by `<source>/<target>`.
pub const EDGES: &str = "/registry/edges/";
pub const ROLES: &str = "/registry/rbac/roles/";
pub const ROLE_BINDINGS: &str = "/registry/rbac/rolebindings/";
pub const GROUPS: &str = "/registry/rbac/groups/";
pub const NETWORK_ACLS: &str = "/registry/network-acls/";
pub const ROUTES: &str = "/registry/routes/";
/// Mesh-wide settings fixed at bootstrap.
pub const MESH_IPV4: &str = "/registry/meshstate/ipv4-prefix";
pub const MESH_IPV6: &str = "/registry/meshstate/ipv6-prefix";
pub const MESH_DOMAIN: &str = "/registry/meshstate/mesh-domain";
/// Nodes that joined but were not reached yet: value = the deadline (unix ms) after
/// which the leader removes them (`join-timeout`).
pub const PENDING: &str = "/registry/pending/";
/// `true` when the mesh was bootstrapped with RBAC off.
pub const RBAC_DISABLED: &str = "/registry/meshstate/rbac-disabled";

/// Longest key accepted from the network.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted from the network (the whole Raft entry stays well under the
/// transport's message limit).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}

pub fn edge(source: &str, target: &str) -> String {
    format!("{EDGES}{source}/{target}")
}

/// A key is an absolute, `/`-separated path of printable ASCII: no empty segments, no
/// `.` or `..` segments, no whitespace or control characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "is {} bytes; at most {MAX_KEY_BYTES} allowed",
            key.len()
        ));
    }
    if !key.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "contains {c:?}; only printable ASCII without spaces is allowed"
        ));
    }
    for seg in key[1..].split('/') {
        if seg.is_empty() {
            return Err("has an empty path segment ('//' or a trailing '/')".into());
        }
        if seg == "." || seg == ".." {
            return Err(format!("has a {seg:?} segment"));
        }
    }
    Ok(())
}

/// A key prefix for listing: like a key, but may end with `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    match prefix.strip_suffix('/') {
        Some("") => Ok(()),
        Some(p) => validate_key(p),
        None => validate_key(prefix),
    }
}

pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty for PUT".into());
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "is {} bytes; at most {MAX_VALUE_BYTES} allowed",
            value.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["/a", "/registry/nodes/n1", "/x/y-z_1.2/@:="] {
            validate_key(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "", "a", "/", "/a//b", "/a/", "/a/../b", "/a b", "/a\tb", "/é",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_key(&format!("/{}", "k".repeat(MAX_KEY_BYTES))).is_err());
        validate_prefix("/").unwrap();
        validate_prefix("/registry/nodes/").unwrap();
        assert!(validate_prefix("registry").is_err());
    }

    #[test]
    fn values() {
        validate_value("{}").unwrap();
        assert!(validate_value("").is_err());
        assert!(validate_value(&"v".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }
}
