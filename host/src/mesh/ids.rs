//! Names of nodes and objects: what the mesh accepts as an ID.

/// Longest node ID, in bytes: one DNS label, so every node has a mesh DNS name.
pub const MAX_ID_LEN: usize = 63;

/// A node ID is 1-63 bytes of ASCII letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit. No `/` (IDs are key path segments) and no spaces.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    validate_name(id)
}

/// Names of roles, bindings, groups, ACLs and routes follow the node ID rules.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_ID_LEN {
        return Err(format!(
            "is {} bytes; at most {MAX_ID_LEN} allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit".into());
    }
    Ok(())
}

/// The Raft node ID of a mesh node: FNV-1a 64 of its name. Raft needs a fixed-size ID;
/// the name stays the identity everywhere else. Joins refuse the (astronomically rare)
/// name whose hash collides with a current member's.
pub fn raft_id(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames() {
        for ok in ["node-1", "a", "db01.example", "N_2", &"x".repeat(63)] {
            validate_node_id(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "a/b",
            "a b",
            "-lead",
            ".dot",
            "é",
            &"x".repeat(64),
            "a\nb",
        ] {
            assert!(validate_node_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn raft_ids_are_stable() {
        // Fixed values: a change here would orphan every existing member.
        assert_eq!(raft_id("node-1"), raft_id("node-1"));
        assert_ne!(raft_id("node-1"), raft_id("node-2"));
        assert_eq!(raft_id(""), 0xcbf29ce484222325);
    }
}
