//! The limits of what the API accepts, one constant per field or collection. Every
//! request validator checks against these (an `InvalidArgument` naming the field and
//! the limit); `SECURITY.md` lists them.

/// Node IDs and object names: one DNS label.
pub const MAX_NAME_BYTES: usize = super::ids::MAX_ID_LEN;
/// Keys of the replicated state.
pub const MAX_KEY_BYTES: usize = super::keys::MAX_KEY_BYTES;
/// Values of the replicated state (Apply, and every object the Admin API writes).
pub const MAX_VALUE_BYTES: usize = super::keys::MAX_VALUE_BYTES;
/// CIDRs a node routes (`routes` of Join and Update) and a route's destinations.
pub const MAX_ROUTES: usize = 64;
/// WireGuard endpoints of a node.
pub const MAX_ENDPOINTS: usize = 16;
/// Longest endpoint text (`[IPv6%zone]:port` fits).
pub const MAX_ENDPOINT_BYTES: usize = 64;
/// Features a node lists.
pub const MAX_FEATURES: usize = 32;
/// Direct (ICE) peers a join asks for.
pub const MAX_DIRECT_PEERS: usize = 64;
/// Subjects of a role binding or a group.
pub const MAX_SUBJECTS: usize = 1024;
/// Rules of a role.
pub const MAX_RULES: usize = 64;
/// Resources, verbs or resource names in one rule.
pub const MAX_RULE_ITEMS: usize = 64;
/// Nodes, CIDRs, protocols or ports in one network ACL list.
pub const MAX_ACL_ITEMS: usize = 256;
/// Attributes of an edge, and the bytes of each name and value.
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_BYTES: usize = 256;

/// `Err(reason)` when a collection is longer than `max`.
pub fn count(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{len} items; at most {max} allowed"));
    }
    Ok(())
}

/// `Err(reason)` when a text is longer than `max` bytes.
pub fn bytes(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{len} bytes; at most {max} allowed"));
    }
    Ok(())
}

/// Every limit, for documentation and the tests that check the docs list them all.
pub const ALL: &[(&str, usize)] = &[
    ("node ID / object name bytes", MAX_NAME_BYTES),
    ("state key bytes", MAX_KEY_BYTES),
    ("state value bytes (Apply, Admin objects)", MAX_VALUE_BYTES),
    ("routes of a node / CIDRs of a route", MAX_ROUTES),
    ("WireGuard endpoints of a node", MAX_ENDPOINTS),
    ("endpoint text bytes", MAX_ENDPOINT_BYTES),
    ("features of a node", MAX_FEATURES),
    ("direct peers of a join", MAX_DIRECT_PEERS),
    ("subjects of a role binding or group", MAX_SUBJECTS),
    ("rules of a role", MAX_RULES),
    ("resources, verbs or names of a rule", MAX_RULE_ITEMS),
    ("items of a network ACL list", MAX_ACL_ITEMS),
    ("attributes of an edge", MAX_ATTRIBUTES),
    ("edge attribute name or value bytes", MAX_ATTRIBUTE_BYTES),
];
