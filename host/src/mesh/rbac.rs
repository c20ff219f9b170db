//! Role-based access control (pure). Allow-only: a caller may perform an action when a
//! role bound to one of its subjects has a rule matching the action's resource, name
//! and verb. Subjects: NODE and USER by name, GROUP (expanded, nested groups too — the
//! reference implementation never expands groups; we do), ALL; the name `*` matches any
//! name. Wildcards: RESOURCE_ALL, VERB_ALL, and `*` (or no names) in a rule's
//! resource names.

use std::collections::{BTreeMap, BTreeSet};

use webmesh_api::v1::{Group, Role, RoleBinding, RuleResource, RuleVerb, SubjectType};

/// One thing a caller wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub resource: RuleResource,
    /// The object's name (empty: no particular object).
    pub name: String,
    pub verb: RuleVerb,
}

impl Action {
    pub fn new(resource: RuleResource, name: impl Into<String>, verb: RuleVerb) -> Action {
        Action {
            resource,
            name: name.into(),
            verb,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.verb {
            RuleVerb::VerbPut => "put",
            RuleVerb::VerbDelete => "delete",
            RuleVerb::VerbAll => "all",
            RuleVerb::VerbUnknown => "unknown",
        };
        write!(f, "{verb} {}", resource_name(self.resource))?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        Ok(())
    }
}

/// The resource as people write it (`wmctl`, error messages).
pub fn resource_name(r: RuleResource) -> &'static str {
    match r {
        RuleResource::ResourceVotes => "votes",
        RuleResource::ResourceRoles => "roles",
        RuleResource::ResourceRoleBindings => "rolebindings",
        RuleResource::ResourceGroups => "groups",
        RuleResource::ResourceNetworkAcls => "networkacls",
        RuleResource::ResourceRoutes => "routes",
        RuleResource::ResourceDataChannels => "datachannels",
        RuleResource::ResourceEdges => "edges",
        RuleResource::ResourceAll => "all",
        RuleResource::ResourceUnknown => "unknown",
    }
}

/// Who is asking, as RBAC subjects see it. A node that authenticated as a user of its
/// own name is both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub node: bool,
    pub user: bool,
}

impl Principal {
    pub fn node(name: &str) -> Principal {
        Principal {
            name: name.into(),
            node: true,
            user: false,
        }
    }
    pub fn user(name: &str) -> Principal {
        Principal {
            name: name.into(),
            node: false,
            user: true,
        }
    }
}

/// The RBAC objects of a mesh.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub roles: BTreeMap<String, Role>,
    pub bindings: BTreeMap<String, RoleBinding>,
    pub groups: BTreeMap<String, Group>,
}

/// Nested groups deeper than this are not followed (a cycle or a mistake).
const MAX_GROUP_DEPTH: usize = 16;

impl Policy {
    /// Whether `p` is named by a subject of `ty` and `name` (groups expanded).
    fn subject_matches(
        &self,
        p: &Principal,
        ty: i32,
        name: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let named = name == "*" || name == p.name;
        match SubjectType::try_from(ty) {
            Ok(SubjectType::SubjectNode) => p.node && named,
            Ok(SubjectType::SubjectUser) => p.user && named,
            Ok(SubjectType::SubjectAll) => named,
            Ok(SubjectType::SubjectGroup) => {
                if seen.len() >= MAX_GROUP_DEPTH || !seen.insert(name.to_string()) {
                    return false;
                }
                let hit = self.groups.get(name).is_some_and(|g| {
                    g.subjects
                        .iter()
                        .any(|s| self.subject_matches(p, s.r#type, &s.name, seen))
                });
                seen.remove(name);
                hit
            }
            _ => false,
        }
    }

    /// The roles bound to `p`, in name order.
    pub fn roles_of(&self, p: &Principal) -> Vec<&Role> {
        let mut names = BTreeSet::new();
        for b in self.bindings.values() {
            if b.subjects
                .iter()
                .any(|s| self.subject_matches(p, s.r#type, &s.name, &mut BTreeSet::new()))
            {
                names.insert(b.role.as_str());
            }
        }
        names
            .into_iter()
            .filter_map(|n| self.roles.get(n))
            .collect()
    }

    /// Whether `p` may perform `a`.
    pub fn allows(&self, p: &Principal, a: &Action) -> bool {
        self.roles_of(p)
            .iter()
            .any(|role| role.rules.iter().any(|r| rule_matches(r, a)))
    }

    /// `Ok` when every action is allowed; else the first one missing.
    pub fn check<'a>(&self, p: &Principal, actions: &'a [Action]) -> Result<(), &'a Action> {
        let roles = self.roles_of(p);
        for a in actions {
            if !roles
                .iter()
                .any(|role| role.rules.iter().any(|r| rule_matches(r, a)))
            {
                return Err(a);
            }
        }
        Ok(())
    }
}

fn rule_matches(r: &webmesh_api::v1::Rule, a: &Action) -> bool {
    let resource = r
        .resources
        .iter()
        .any(|&x| x == a.resource as i32 || x == RuleResource::ResourceAll as i32);
    let verb = r
        .verbs
        .iter()
        .any(|&x| x == a.verb as i32 || x == RuleVerb::VerbAll as i32);
    let name = r.resource_names.is_empty()
        || r.resource_names
            .iter()
            .any(|n| n == "*" || (!a.name.is_empty() && *n == a.name));
    resource && verb && name
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::{Rule, Subject};

    use RuleResource::*;
    use RuleVerb::*;
    use SubjectType::*;

    fn subject(ty: SubjectType, name: &str) -> Subject {
        Subject {
            name: name.into(),
            r#type: ty as i32,
        }
    }

    fn rule(res: &[RuleResource], names: &[&str], verbs: &[RuleVerb]) -> Rule {
        Rule {
            resources: res.iter().map(|r| *r as i32).collect(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            verbs: verbs.iter().map(|v| *v as i32).collect(),
        }
    }

    fn policy(
        roles: &[(&str, Vec<Rule>)],
        bindings: &[(&str, &str, Vec<Subject>)],
        groups: &[(&str, Vec<Subject>)],
    ) -> Policy {
        Policy {
            roles: roles
                .iter()
                .map(|(n, rules)| {
                    (
                        n.to_string(),
                        Role {
                            name: n.to_string(),
                            rules: rules.clone(),
                        },
                    )
                })
                .collect(),
            bindings: bindings
                .iter()
                .map(|(n, role, subjects)| {
                    (
                        n.to_string(),
                        RoleBinding {
                            name: n.to_string(),
                            role: role.to_string(),
                            subjects: subjects.clone(),
                        },
                    )
                })
                .collect(),
            groups: groups
                .iter()
                .map(|(n, subjects)| {
                    (
                        n.to_string(),
                        Group {
                            name: n.to_string(),
                            subjects: subjects.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The matrix: subjects × rules × actions.
    #[test]
    fn table() {
        let p = policy(
            &[
                ("admin", vec![rule(&[ResourceAll], &[], &[VerbAll])]),
                ("voters", vec![rule(&[ResourceVotes], &[], &[VerbPut])]),
                (
                    "acl-editor",
                    vec![rule(&[ResourceNetworkAcls], &["office", "lab"], &[VerbPut])],
                ),
                (
                    "route-owner",
                    vec![rule(&[ResourceRoutes], &["*"], &[VerbPut, VerbDelete])],
                ),
                (
                    "edge-deleter",
                    vec![rule(&[ResourceEdges], &[], &[VerbDelete])],
                ),
            ],
            &[
                ("admin", "admin", vec![subject(SubjectUser, "root")]),
                ("voters", "voters", vec![subject(SubjectGroup, "voters")]),
                ("acl", "acl-editor", vec![subject(SubjectNode, "n1")]),
                (
                    "routes",
                    "route-owner",
                    vec![subject(SubjectGroup, "gateways")],
                ),
                ("edges", "edge-deleter", vec![subject(SubjectAll, "*")]),
                ("dangling", "no-such-role", vec![subject(SubjectAll, "*")]),
            ],
            &[
                (
                    "voters",
                    vec![subject(SubjectNode, "v1"), subject(SubjectNode, "v2")],
                ),
                ("gateways", vec![subject(SubjectGroup, "edge-gateways")]),
                ("edge-gateways", vec![subject(SubjectUser, "gw-user")]),
            ],
        );
        let votes = Action::new(ResourceVotes, "", VerbPut);
        let acl = |name: &str, verb| Action::new(ResourceNetworkAcls, name, verb);
        let route = Action::new(ResourceRoutes, "r1", VerbPut);
        let edge_del = Action::new(ResourceEdges, "a-b", VerbDelete);
        let edge_put = Action::new(ResourceEdges, "a-b", VerbPut);
        let cases: &[(Principal, &Action, bool)] = &[
            // The admin user may do anything; a node named like it may not.
            (Principal::user("root"), &votes, true),
            (Principal::user("root"), &edge_put, true),
            (Principal::node("root"), &edge_put, false),
            // Votes through group membership; not for others.
            (Principal::node("v1"), &votes, true),
            (Principal::node("v2"), &votes, true),
            (Principal::user("v1"), &votes, false),
            (Principal::node("v3"), &votes, false),
            // Resource names limit the rule; verbs too.
            (Principal::node("n1"), &acl("office", VerbPut), true),
            (Principal::node("n1"), &acl("lab", VerbPut), true),
            (Principal::node("n1"), &acl("prod", VerbPut), false),
            (Principal::node("n1"), &acl("office", VerbDelete), false),
            (Principal::node("n1"), &acl("", VerbPut), false),
            // Nested groups expand.
            (Principal::user("gw-user"), &route, true),
            (Principal::node("gw-user"), &route, false),
            // SUBJECT_ALL "*" matches everyone, anonymous-named too.
            (Principal::node("anyone"), &edge_del, true),
            (Principal::user(""), &edge_del, true),
            (Principal::node("anyone"), &edge_put, false),
        ];
        for (who, action, want) in cases {
            assert_eq!(p.allows(who, action), *want, "{who:?} {action}");
        }
        // A node authenticated as the user of its own name is both.
        let both = Principal {
            name: "root".into(),
            node: true,
            user: true,
        };
        assert!(p.allows(&both, &edge_put));
        // check names the first missing action.
        let n1 = Principal::node("n1");
        let want = [acl("office", VerbPut), votes.clone(), route.clone()];
        assert_eq!(p.check(&n1, &want), Err(&votes));
        assert_eq!(p.check(&n1, &want[..1]), Ok(()));
        assert_eq!(votes.to_string(), "put votes");
        assert_eq!(acl("x", VerbDelete).to_string(), "delete networkacls \"x\"");
    }

    #[test]
    fn named_subjects_of_type_all_and_wildcard_names() {
        let p = policy(
            &[("r", vec![rule(&[ResourceGroups], &[], &[VerbPut])])],
            &[
                ("by-name", "r", vec![subject(SubjectAll, "alice")]),
                ("all-nodes", "r", vec![subject(SubjectNode, "*")]),
            ],
            &[],
        );
        let a = Action::new(ResourceGroups, "g", VerbPut);
        assert!(p.allows(&Principal::user("alice"), &a));
        assert!(p.allows(&Principal::node("alice"), &a));
        assert!(p.allows(&Principal::node("bob"), &a));
        assert!(!p.allows(&Principal::user("bob"), &a));
    }

    #[test]
    fn group_cycles_end() {
        let p = policy(
            &[("r", vec![rule(&[ResourceAll], &[], &[VerbAll])])],
            &[("b", "r", vec![subject(SubjectGroup, "a")])],
            &[
                ("a", vec![subject(SubjectGroup, "b")]),
                (
                    "b",
                    vec![subject(SubjectGroup, "a"), subject(SubjectNode, "x")],
                ),
            ],
        );
        let a = Action::new(ResourceEdges, "", VerbPut);
        assert!(p.allows(&Principal::node("x"), &a));
        assert!(!p.allows(&Principal::node("y"), &a));
    }

    /// Property: allow-only — adding a binding never takes a permission away, and
    /// removing every binding denies everything.
    #[test]
    fn adding_bindings_only_adds_permissions() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let resources = [
            ResourceVotes,
            ResourceRoles,
            ResourceNetworkAcls,
            ResourceRoutes,
            ResourceEdges,
            ResourceAll,
        ];
        let verbs = [VerbPut, VerbDelete, VerbAll];
        let names = ["a", "b", "*"];
        let types = [SubjectNode, SubjectUser, SubjectGroup, SubjectAll];
        let people = ["a", "b", "c"];
        for _ in 0..200 {
            let mut p = Policy::default();
            for i in 0..4 {
                let r = Role {
                    name: format!("r{i}"),
                    rules: vec![rule(
                        &[resources[next(6) as usize]],
                        if next(2) == 0 {
                            &[]
                        } else {
                            &names[next(3) as usize..][..1]
                        },
                        &[verbs[next(3) as usize]],
                    )],
                };
                p.roles.insert(r.name.clone(), r);
                let g = Group {
                    name: format!("g{i}"),
                    subjects: vec![subject(types[next(4) as usize], people[next(3) as usize])],
                };
                p.groups.insert(g.name.clone(), g);
            }
            let actions: Vec<Action> = (0..6)
                .map(|_| {
                    Action::new(
                        resources[next(5) as usize],
                        names[next(2) as usize],
                        verbs[next(2) as usize],
                    )
                })
                .collect();
            let who: Vec<Principal> = people
                .iter()
                .flat_map(|n| [Principal::node(n), Principal::user(n)])
                .collect();
            let mut before: Vec<bool> = who
                .iter()
                .flat_map(|w| actions.iter().map(|a| p.allows(w, a)))
                .collect();
            assert!(before.iter().all(|b| !b), "no bindings, no permissions");
            for i in 0..4 {
                let ty = types[next(4) as usize];
                let name = if ty == SubjectGroup {
                    format!("g{}", next(4))
                } else {
                    people[next(3) as usize].to_string()
                };
                p.bindings.insert(
                    format!("b{i}"),
                    RoleBinding {
                        name: format!("b{i}"),
                        role: format!("r{}", next(4)),
                        subjects: vec![subject(ty, &name)],
                    },
                );
                let after: Vec<bool> = who
                    .iter()
                    .flat_map(|w| actions.iter().map(|a| p.allows(w, a)))
                    .collect();
                for (b, a) in before.iter().zip(&after) {
                    assert!(!b || *a, "a binding took a permission away");
                }
                before = after;
            }
        }
    }
}
