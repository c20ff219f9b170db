//! The objects a new mesh starts with (pure).

use ipnet::{Ipv4Net, Ipv6Net};
use webmesh_api::v1::{
    AclAction, Group, NetworkAcl, Role, RoleBinding, Rule, RuleResource, RuleVerb, Subject,
    SubjectType,
};

use super::keys;
use super::ops::Op;
use serde::{Deserialize, Serialize};

/// What a new mesh does with traffic no network ACL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    Accept,
    Deny,
}

pub const ADMIN_ROLE: &str = "mesh-admin";
pub const ADMIN_USER: &str = "admin";
pub const VOTERS: &str = "voters";
pub const DEFAULT_ACL: &str = "default";

/// Settings of a mesh being bootstrapped.
pub struct MeshParams<'a> {
    pub node_id: &'a str,
    pub ipv4_network: Ipv4Net,
    pub ipv6_network: Ipv6Net,
    pub mesh_domain: &'a str,
    pub default_policy: DefaultPolicy,
    /// Nodes besides this one that may join as voters.
    pub voters: &'a [String],
    pub disable_rbac: bool,
}

fn subject(name: &str, ty: SubjectType) -> Subject {
    Subject {
        name: name.into(),
        r#type: ty as i32,
    }
}

fn put<M: serde::Serialize>(key: String, msg: &M) -> Op {
    Op::Put {
        key,
        value: serde_json::to_string(msg).expect("v1 messages serialize"),
        ttl_ms: 0,
    }
}

/// Mesh settings, RBAC objects and the default network ACL of a new mesh.
pub fn objects(p: &MeshParams<'_>) -> Vec<Op> {
    let admin_role = Role {
        name: ADMIN_ROLE.into(),
        rules: vec![Rule {
            resources: vec![RuleResource::ResourceAll as i32],
            resource_names: vec![],
            verbs: vec![RuleVerb::VerbAll as i32],
        }],
    };
    let admin_binding = RoleBinding {
        name: ADMIN_ROLE.into(),
        role: ADMIN_ROLE.into(),
        subjects: vec![
            subject(ADMIN_USER, SubjectType::SubjectUser),
            subject(ADMIN_USER, SubjectType::SubjectNode),
            subject(p.node_id, SubjectType::SubjectNode),
        ],
    };
    let voters_role = Role {
        name: VOTERS.into(),
        rules: vec![Rule {
            resources: vec![RuleResource::ResourceVotes as i32],
            resource_names: vec![],
            verbs: vec![RuleVerb::VerbPut as i32],
        }],
    };
    let mut voter_ids = vec![p.node_id];
    voter_ids.extend(
        p.voters
            .iter()
            .map(String::as_str)
            .filter(|v| *v != p.node_id),
    );
    let voters_group = Group {
        name: VOTERS.into(),
        subjects: voter_ids
            .into_iter()
            .map(|v| subject(v, SubjectType::SubjectNode))
            .collect(),
    };
    let voters_binding = RoleBinding {
        name: VOTERS.into(),
        role: VOTERS.into(),
        subjects: vec![subject(VOTERS, SubjectType::SubjectGroup)],
    };
    let action = match p.default_policy {
        DefaultPolicy::Accept => AclAction::ActionAccept,
        DefaultPolicy::Deny => AclAction::ActionDeny,
    };
    let default_acl = NetworkAcl {
        name: DEFAULT_ACL.into(),
        priority: i32::MIN,
        action: action as i32,
        source_nodes: vec!["*".into()],
        destination_nodes: vec!["*".into()],
        source_cidrs: vec!["*".into()],
        destination_cidrs: vec!["*".into()],
        protocols: vec![],
        ports: vec![],
    };
    let raw = |key: &str, value: String| Op::Put {
        key: key.into(),
        value,
        ttl_ms: 0,
    };
    let mut ops = vec![
        raw(keys::MESH_IPV4, p.ipv4_network.to_string()),
        raw(keys::MESH_IPV6, p.ipv6_network.to_string()),
        raw(keys::MESH_DOMAIN, p.mesh_domain.to_string()),
        put(format!("{}{ADMIN_ROLE}", keys::ROLES), &admin_role),
        put(
            format!("{}{ADMIN_ROLE}", keys::ROLE_BINDINGS),
            &admin_binding,
        ),
        put(format!("{}{VOTERS}", keys::ROLES), &voters_role),
        put(format!("{}{VOTERS}", keys::GROUPS), &voters_group),
        put(format!("{}{VOTERS}", keys::ROLE_BINDINGS), &voters_binding),
        put(format!("{}{DEFAULT_ACL}", keys::NETWORK_ACLS), &default_acl),
    ];
    if p.disable_rbac {
        ops.push(raw(keys::RBAC_DISABLED, "true".into()));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(policy: DefaultPolicy) -> MeshParams<'static> {
        MeshParams {
            node_id: "boot",
            ipv4_network: "10.10.0.0/16".parse().unwrap(),
            ipv6_network: "fd00:1:2::/48".parse().unwrap(),
            mesh_domain: "mesh.test",
            default_policy: policy,
            voters: &[],
            disable_rbac: false,
        }
    }

    fn value_of(ops: &[Op], key: &str) -> String {
        ops.iter()
            .find_map(|op| match op {
                Op::Put { key: k, value, .. } if k == key => Some(value.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn admin_binding_names_admin_user_admin_node_and_bootstrap_node() {
        let ops = objects(&params(DefaultPolicy::Accept));
        let b: RoleBinding =
            serde_json::from_str(&value_of(&ops, "/registry/rbac/rolebindings/mesh-admin"))
                .unwrap();
        let names: Vec<_> = b
            .subjects
            .iter()
            .map(|s| (s.name.as_str(), s.r#type))
            .collect();
        assert!(names.contains(&("admin", SubjectType::SubjectUser as i32)));
        assert!(names.contains(&("admin", SubjectType::SubjectNode as i32)));
        assert!(names.contains(&("boot", SubjectType::SubjectNode as i32)));
        let r: Role = serde_json::from_str(&value_of(&ops, "/registry/rbac/roles/voters")).unwrap();
        assert_eq!(
            r.rules[0].resources,
            vec![RuleResource::ResourceVotes as i32]
        );
        assert_eq!(r.rules[0].verbs, vec![RuleVerb::VerbPut as i32]);
    }

    #[test]
    fn default_policy_sets_the_default_acl_action() {
        for (policy, action) in [
            (DefaultPolicy::Accept, AclAction::ActionAccept),
            (DefaultPolicy::Deny, AclAction::ActionDeny),
        ] {
            let ops = objects(&params(policy));
            let acl: NetworkAcl =
                serde_json::from_str(&value_of(&ops, "/registry/network-acls/default")).unwrap();
            assert_eq!(acl.action, action as i32);
        }
    }
}
