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
mod tests;
