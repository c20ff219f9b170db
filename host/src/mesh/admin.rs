//! The objects of the Admin API (pure): where each lives in the state, what a valid one
//! looks like, and which bootstrap objects must survive.

use ipnet::IpNet;
use webmesh_api::v1::{
    AclAction, Group, MeshEdge, NetworkAcl, Role, RoleBinding, Route, RuleResource, RuleVerb,
    SubjectType,
};

use super::bootstrap::{ADMIN_ROLE, VOTERS};
use super::{ids, keys, limits};

/// A bad field of an object: which one (with its index, `rules[1].verbs`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn name(field: &str, v: &str) -> Result<(), Invalid> {
    ids::validate_name(v).map_err(|r| bad(field, format!("{v:?} {r}")))
}

/// The kinds of object the Admin API manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Role,
    RoleBinding,
    Group,
    NetworkAcl,
    Route,
    Edge,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Role => keys::ROLES,
            Kind::RoleBinding => keys::ROLE_BINDINGS,
            Kind::Group => keys::GROUPS,
            Kind::NetworkAcl => keys::NETWORK_ACLS,
            Kind::Route => keys::ROUTES,
            Kind::Edge => keys::EDGES,
        }
    }

    pub fn resource(self) -> RuleResource {
        match self {
            Kind::Role => RuleResource::ResourceRoles,
            Kind::RoleBinding => RuleResource::ResourceRoleBindings,
            Kind::Group => RuleResource::ResourceGroups,
            Kind::NetworkAcl => RuleResource::ResourceNetworkAcls,
            Kind::Route => RuleResource::ResourceRoutes,
            Kind::Edge => RuleResource::ResourceEdges,
        }
    }

    /// Singular, as in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::RoleBinding => "role binding",
            Kind::Group => "group",
            Kind::NetworkAcl => "network ACL",
            Kind::Route => "route",
            Kind::Edge => "edge",
        }
    }

    pub fn key(self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// `Err` naming `field` when a list is longer than `max`.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), Invalid> {
    limits::count(len, max).map_err(|r| bad(field, r))
}

fn subjects(subjects: &[webmesh_api::v1::Subject]) -> Result<(), Invalid> {
    if subjects.is_empty() {
        return Err(bad("subjects", "at least one subject is required"));
    }
    at_most("subjects", subjects.len(), limits::MAX_SUBJECTS)?;
    for (i, s) in subjects.iter().enumerate() {
        let ty = SubjectType::try_from(s.r#type).unwrap_or(SubjectType::SubjectUnknown);
        if ty == SubjectType::SubjectUnknown {
            return Err(bad(
                format!("subjects[{i}].type"),
                format!(
                    "{} is not a subject type (SUBJECT_NODE, SUBJECT_USER, SUBJECT_GROUP, SUBJECT_ALL)",
                    s.r#type
                ),
            ));
        }
        if s.name == "*" {
            if ty == SubjectType::SubjectGroup {
                return Err(bad(
                    format!("subjects[{i}].name"),
                    "\"*\" names no group; use SUBJECT_ALL \"*\" for everyone",
                ));
            }
        } else {
            name(&format!("subjects[{i}].name"), &s.name)?;
        }
    }
    Ok(())
}

pub fn validate_role(r: &Role) -> Result<(), Invalid> {
    name("name", &r.name)?;
    if r.rules.is_empty() {
        return Err(bad("rules", "at least one rule is required"));
    }
    at_most("rules", r.rules.len(), limits::MAX_RULES)?;
    for (i, rule) in r.rules.iter().enumerate() {
        for (list, len) in [
            ("resources", rule.resources.len()),
            ("verbs", rule.verbs.len()),
            ("resource_names", rule.resource_names.len()),
        ] {
            at_most(&format!("rules[{i}].{list}"), len, limits::MAX_RULE_ITEMS)?;
        }
        if rule.resources.is_empty() {
            return Err(bad(format!("rules[{i}].resources"), "must not be empty"));
        }
        for &res in &rule.resources {
            if matches!(
                RuleResource::try_from(res),
                Err(_) | Ok(RuleResource::ResourceUnknown)
            ) {
                return Err(bad(
                    format!("rules[{i}].resources"),
                    format!("{res} is not a resource (1-8, or 999 for all)"),
                ));
            }
        }
        if rule.verbs.is_empty() {
            return Err(bad(format!("rules[{i}].verbs"), "must not be empty"));
        }
        for &v in &rule.verbs {
            if matches!(RuleVerb::try_from(v), Err(_) | Ok(RuleVerb::VerbUnknown)) {
                return Err(bad(
                    format!("rules[{i}].verbs"),
                    format!("{v} is not a verb (VERB_PUT, VERB_DELETE, VERB_ALL)"),
                ));
            }
        }
        for n in &rule.resource_names {
            if n != "*" {
                name(&format!("rules[{i}].resource_names"), n)?;
            }
        }
    }
    Ok(())
}

pub fn validate_binding(b: &RoleBinding) -> Result<(), Invalid> {
    name("name", &b.name)?;
    name("role", &b.role)?;
    subjects(&b.subjects)
}

pub fn validate_group(g: &Group) -> Result<(), Invalid> {
    name("name", &g.name)?;
    subjects(&g.subjects)
}

/// Node lists of ACLs and routes: node IDs, `*`, or `group:<name>`.
fn node_ref(field: &str, v: &str) -> Result<(), Invalid> {
    match v.strip_prefix("group:") {
        Some(g) => name(field, g),
        None if v == "*" => Ok(()),
        None => name(field, v),
    }
}

fn cidr(field: &str, v: &str, star_ok: bool) -> Result<(), Invalid> {
    if star_ok && v == "*" {
        return Ok(());
    }
    let net: IpNet = v
        .parse()
        .map_err(|_| bad(field, format!("{v:?} is not a CIDR (like 10.1.0.0/16)")))?;
    if net.trunc() != net {
        return Err(bad(
            field,
            format!("{v:?} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(())
}

pub const PROTOCOLS: &[&str] = &["tcp", "udp", "icmp", "icmpv6"];

pub fn validate_acl(a: &NetworkAcl) -> Result<(), Invalid> {
    name("name", &a.name)?;
    if !matches!(
        AclAction::try_from(a.action),
        Ok(AclAction::ActionAccept | AclAction::ActionDeny)
    ) {
        return Err(bad(
            "action",
            format!("{} is not ACTION_ACCEPT (1) or ACTION_DENY (2)", a.action),
        ));
    }
    for (list, len) in [
        ("source_nodes", a.source_nodes.len()),
        ("destination_nodes", a.destination_nodes.len()),
        ("source_cidrs", a.source_cidrs.len()),
        ("destination_cidrs", a.destination_cidrs.len()),
        ("protocols", a.protocols.len()),
        ("ports", a.ports.len()),
    ] {
        at_most(list, len, limits::MAX_ACL_ITEMS)?;
    }
    for n in &a.source_nodes {
        node_ref("source_nodes", n)?;
    }
    for n in &a.destination_nodes {
        node_ref("destination_nodes", n)?;
    }
    for c in &a.source_cidrs {
        cidr("source_cidrs", c, true)?;
    }
    for c in &a.destination_cidrs {
        cidr("destination_cidrs", c, true)?;
    }
    for p in &a.protocols {
        if !PROTOCOLS.contains(&p.as_str()) {
            return Err(bad(
                "protocols",
                format!("{p:?} is not one of {}", PROTOCOLS.join(", ")),
            ));
        }
    }
    for &p in &a.ports {
        if !(1..=65535).contains(&p) {
            return Err(bad("ports", format!("{p} is not a port (1-65535)")));
        }
    }
    if !a.ports.is_empty() && a.protocols.iter().any(|p| p != "tcp" && p != "udp") {
        return Err(bad(
            "ports",
            "ports apply to tcp and udp only; put ICMP in an ACL of its own",
        ));
    }
    Ok(())
}

pub fn validate_route(r: &Route) -> Result<(), Invalid> {
    name("name", &r.name)?;
    node_ref("node", &r.node)?;
    if r.node == "*" {
        return Err(bad("node", "a route names one node or a group:, not \"*\""));
    }
    if r.destination_cidrs.is_empty() {
        return Err(bad("destination_cidrs", "at least one CIDR is required"));
    }
    at_most(
        "destination_cidrs",
        r.destination_cidrs.len(),
        limits::MAX_ROUTES,
    )?;
    for c in &r.destination_cidrs {
        cidr("destination_cidrs", c, false)?;
    }
    if !r.next_hop_node.is_empty() {
        name("next_hop_node", &r.next_hop_node)?;
    }
    Ok(())
}

pub fn validate_edge(e: &MeshEdge) -> Result<(), Invalid> {
    name("source", &e.source)?;
    name("target", &e.target)?;
    if e.source == e.target {
        return Err(bad("target", "an edge joins two different nodes"));
    }
    if e.weight < 0 {
        return Err(bad("weight", format!("{} is negative", e.weight)));
    }
    at_most("attributes", e.attributes.len(), limits::MAX_ATTRIBUTES)?;
    for (k, v) in &e.attributes {
        if k.is_empty() {
            return Err(bad("attributes", "an attribute name must not be empty"));
        }
        for t in [k, v] {
            limits::bytes(t.len(), limits::MAX_ATTRIBUTE_BYTES)
                .map_err(|r| bad(format!("attributes[{k:?}]"), r))?;
        }
    }
    Ok(())
}

/// Why a bootstrap object may not be deleted, if it is one.
pub fn protect_delete(kind: Kind, name: &str) -> Result<(), String> {
    let protected = match kind {
        Kind::Role | Kind::RoleBinding => name == ADMIN_ROLE || name == VOTERS,
        Kind::Group => name == VOTERS,
        _ => false,
    };
    if protected {
        return Err(format!(
            "the {} {name:?} was made when the mesh was bootstrapped and cannot be deleted",
            kind.noun()
        ));
    }
    Ok(())
}

fn has_rule(r: &Role, res: RuleResource, verb: RuleVerb) -> bool {
    r.rules.iter().any(|rule| {
        rule.resources.contains(&(res as i32))
            && rule.verbs.contains(&(verb as i32))
            && rule.resource_names.is_empty()
    })
}

/// Whether a put keeps the bootstrap objects' powers: `mesh-admin` keeps an all/all rule
/// and its binding to itself, `voters` keeps votes/put and its binding to the group.
pub fn protect_put(
    kind: Kind,
    name: &str,
    role: Option<&Role>,
    binding: Option<&RoleBinding>,
) -> Result<(), String> {
    match (kind, name, role, binding) {
        (Kind::Role, ADMIN_ROLE, Some(r), _)
            if !has_rule(r, RuleResource::ResourceAll, RuleVerb::VerbAll) =>
        {
            Err(format!(
                "role {ADMIN_ROLE:?} must keep a rule over RESOURCE_ALL with VERB_ALL and no resource names"
            ))
        }
        (Kind::Role, VOTERS, Some(r), _)
            if !has_rule(r, RuleResource::ResourceVotes, RuleVerb::VerbPut) =>
        {
            Err(format!(
                "role {VOTERS:?} must keep a rule over RESOURCE_VOTES with VERB_PUT and no resource names"
            ))
        }
        (Kind::RoleBinding, ADMIN_ROLE | VOTERS, _, Some(b)) if b.role != name => Err(format!(
            "role binding {name:?} must keep binding role {name:?}"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::{Rule, Subject};

    fn role(name: &str, res: RuleResource, verb: RuleVerb) -> Role {
        Role {
            name: name.into(),
            rules: vec![Rule {
                resources: vec![res as i32],
                resource_names: vec![],
                verbs: vec![verb as i32],
            }],
        }
    }

    #[test]
    fn roles() {
        validate_role(&role(
            "ops",
            RuleResource::ResourceRoutes,
            RuleVerb::VerbPut,
        ))
        .unwrap();
        let mut r = role("ops", RuleResource::ResourceRoutes, RuleVerb::VerbPut);
        r.rules[0].verbs = vec![2];
        assert_eq!(validate_role(&r).unwrap_err().field, "rules[0].verbs");
        r.rules[0].verbs = vec![1];
        r.rules[0].resources = vec![0];
        assert_eq!(validate_role(&r).unwrap_err().field, "rules[0].resources");
        r.rules[0].resources = vec![6];
        r.rules[0].resource_names = vec!["a/b".into()];
        assert_eq!(
            validate_role(&r).unwrap_err().field,
            "rules[0].resource_names"
        );
        r.rules.clear();
        assert_eq!(validate_role(&r).unwrap_err().field, "rules");
        r.name = "bad name".into();
        assert_eq!(validate_role(&r).unwrap_err().field, "name");
    }

    #[test]
    fn bindings_and_groups() {
        let s = |ty: SubjectType, n: &str| Subject {
            name: n.into(),
            r#type: ty as i32,
        };
        let mut b = RoleBinding {
            name: "b".into(),
            role: "r".into(),
            subjects: vec![
                s(SubjectType::SubjectAll, "*"),
                s(SubjectType::SubjectNode, "n1"),
            ],
        };
        validate_binding(&b).unwrap();
        b.subjects.push(s(SubjectType::SubjectGroup, "*"));
        assert_eq!(validate_binding(&b).unwrap_err().field, "subjects[2].name");
        b.subjects[2] = s(SubjectType::SubjectUnknown, "x");
        assert_eq!(validate_binding(&b).unwrap_err().field, "subjects[2].type");
        b.subjects.clear();
        assert_eq!(validate_binding(&b).unwrap_err().field, "subjects");
        let g = Group {
            name: "g".into(),
            subjects: vec![s(SubjectType::SubjectGroup, "other")],
        };
        validate_group(&g).unwrap();
    }

    #[test]
    fn every_list_is_bounded_and_the_error_names_the_limit() {
        let subject = webmesh_api::v1::Subject {
            name: "n".into(),
            r#type: SubjectType::SubjectNode as i32,
        };
        let g = Group {
            name: "g".into(),
            subjects: vec![subject; limits::MAX_SUBJECTS + 1],
        };
        let e = validate_group(&g).unwrap_err();
        assert_eq!(e.to_string(), "subjects: 1025 items; at most 1024 allowed");
        let rule = webmesh_api::v1::Rule {
            resources: vec![RuleResource::ResourceRoutes as i32; 65],
            verbs: vec![RuleVerb::VerbPut as i32],
            resource_names: vec![],
        };
        let r = Role {
            name: "r".into(),
            rules: vec![rule.clone()],
        };
        assert!(
            validate_role(&r)
                .unwrap_err()
                .to_string()
                .starts_with("rules[0].resources: 65 items")
        );
        let r = Role {
            name: "r".into(),
            rules: vec![rule; 65],
        };
        assert!(
            validate_role(&r)
                .unwrap_err()
                .to_string()
                .starts_with("rules: 65 items")
        );
        let a = NetworkAcl {
            name: "a".into(),
            action: AclAction::ActionDeny as i32,
            source_cidrs: vec!["10.0.0.0/8".into(); 257],
            ..Default::default()
        };
        assert!(
            validate_acl(&a)
                .unwrap_err()
                .to_string()
                .starts_with("source_cidrs: 257 items")
        );
        let route = Route {
            name: "r".into(),
            node: "n".into(),
            destination_cidrs: vec!["10.0.0.0/8".into(); 65],
            next_hop_node: String::new(),
        };
        assert!(
            validate_route(&route)
                .unwrap_err()
                .to_string()
                .starts_with("destination_cidrs: 65")
        );
        let mut edge = MeshEdge {
            source: "a".into(),
            target: "b".into(),
            ..Default::default()
        };
        edge.attributes.insert("k".into(), "v".repeat(257));
        assert!(
            validate_edge(&edge)
                .unwrap_err()
                .to_string()
                .contains("257 bytes")
        );
        edge.attributes = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(
            validate_edge(&edge)
                .unwrap_err()
                .to_string()
                .starts_with("attributes: 33 items")
        );
    }

    #[test]
    fn acls_routes_edges() {
        let mut a = NetworkAcl {
            name: "web".into(),
            priority: 10,
            action: AclAction::ActionDeny as i32,
            source_nodes: vec!["group:ops".into(), "n1".into(), "*".into()],
            destination_nodes: vec!["n2".into()],
            source_cidrs: vec!["10.0.0.0/8".into(), "*".into()],
            destination_cidrs: vec![],
            protocols: vec!["tcp".into()],
            ports: vec![80, 443],
        };
        validate_acl(&a).unwrap();
        for (f, change) in [
            (
                "action",
                Box::new(|a: &mut NetworkAcl| a.action = 0) as Box<dyn Fn(&mut NetworkAcl)>,
            ),
            (
                "source_nodes",
                Box::new(|a| a.source_nodes = vec!["group:".into()]),
            ),
            (
                "destination_cidrs",
                Box::new(|a| a.destination_cidrs = vec!["10.0.0.1/8".into()]),
            ),
            (
                "source_cidrs",
                Box::new(|a| a.source_cidrs = vec!["ten".into()]),
            ),
            ("protocols", Box::new(|a| a.protocols = vec!["sctp".into()])),
            ("ports", Box::new(|a| a.ports = vec![0])),
            ("ports", Box::new(|a| a.protocols = vec!["icmp".into()])),
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert_eq!(validate_acl(&b).unwrap_err().field, f);
        }
        a.ports.clear();
        a.protocols = vec!["icmp".into()];
        validate_acl(&a).unwrap();
        let e = validate_acl(&NetworkAcl {
            destination_cidrs: vec!["10.0.0.1/8".into()],
            ..a.clone()
        })
        .unwrap_err();
        assert!(e.reason.contains("did you mean 10.0.0.0/8"), "{e}");

        let mut r = Route {
            name: "lan".into(),
            node: "gw".into(),
            destination_cidrs: vec!["192.168.1.0/24".into(), "0.0.0.0/0".into(), "::/0".into()],
            next_hop_node: String::new(),
        };
        validate_route(&r).unwrap();
        r.node = "group:gws".into();
        validate_route(&r).unwrap();
        r.node = "*".into();
        assert_eq!(validate_route(&r).unwrap_err().field, "node");
        r.node = "gw".into();
        r.destination_cidrs.clear();
        assert_eq!(validate_route(&r).unwrap_err().field, "destination_cidrs");

        let mut e = MeshEdge {
            source: "a".into(),
            target: "b".into(),
            weight: 5,
            attributes: [("ice".to_string(), "true".to_string())].into(),
        };
        validate_edge(&e).unwrap();
        e.target = "a".into();
        assert_eq!(validate_edge(&e).unwrap_err().field, "target");
        e.target = "b".into();
        e.weight = -1;
        assert_eq!(validate_edge(&e).unwrap_err().field, "weight");
    }

    #[test]
    fn bootstrap_objects_survive() {
        assert!(protect_delete(Kind::Role, ADMIN_ROLE).is_err());
        assert!(protect_delete(Kind::RoleBinding, VOTERS).is_err());
        assert!(protect_delete(Kind::Group, VOTERS).is_err());
        assert!(protect_delete(Kind::Role, "ops").is_ok());
        assert!(protect_delete(Kind::NetworkAcl, "default").is_ok());
        let weak = role(ADMIN_ROLE, RuleResource::ResourceRoutes, RuleVerb::VerbAll);
        assert!(protect_put(Kind::Role, ADMIN_ROLE, Some(&weak), None).is_err());
        let full = role(ADMIN_ROLE, RuleResource::ResourceAll, RuleVerb::VerbAll);
        assert!(protect_put(Kind::Role, ADMIN_ROLE, Some(&full), None).is_ok());
        let v = role(VOTERS, RuleResource::ResourceVotes, RuleVerb::VerbPut);
        assert!(protect_put(Kind::Role, VOTERS, Some(&v), None).is_ok());
        let moved = RoleBinding {
            name: VOTERS.into(),
            role: "other".into(),
            subjects: vec![],
        };
        assert!(protect_put(Kind::RoleBinding, VOTERS, None, Some(&moved)).is_err());
    }
}
