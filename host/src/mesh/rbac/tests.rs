use super::*;
use webmesh_api::v1::Subject;

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

#[test]
fn anonymous_callers_match_no_subject_not_even_everyone() {
    let p = policy(
        &[("r", vec![rule(&[ResourceEdges], &[], &[VerbAll])])],
        &[("all", "r", vec![subject(SubjectAll, "*")])],
        &[],
    );
    let a = Action::new(ResourceEdges, "e", VerbPut);
    let nobody = Principal {
        name: String::new(),
        node: false,
        user: false,
    };
    assert!(!p.allows(&nobody, &a));
    assert!(p.allows(&Principal::node("n"), &a));
}

#[test]
fn a_name_is_bound_only_when_a_binding_or_group_names_it() {
    let p = policy(
        &[("r", vec![rule(&[ResourceVotes], &[], &[VerbPut])])],
        &[
            ("everyone", "r", vec![subject(SubjectAll, "*")]),
            ("g", "r", vec![subject(SubjectGroup, "voters")]),
            ("admin", "r", vec![subject(SubjectUser, "admin")]),
        ],
        &[("voters", vec![subject(SubjectNode, "n2")])],
    )
    .compile();
    assert!(p.names(&Principal::node("n2")));
    assert!(!p.names(&Principal::node("n3")), "only through *");
    assert!(!p.names(&Principal::node("admin")), "a user binding");
    assert!(p.names(&Principal::user("admin")));
}

#[test]
fn a_caller_grants_only_what_it_holds() {
    let p = policy(
        &[
            (
                "binder",
                vec![
                    rule(&[ResourceRoleBindings], &["team"], &[VerbPut]),
                    rule(&[ResourceRoutes], &["office"], &[VerbPut]),
                    rule(&[ResourceEdges], &[], &[VerbAll]),
                ],
            ),
            ("admin", vec![rule(&[ResourceAll], &[], &[VerbAll])]),
        ],
        &[
            ("b", "binder", vec![subject(SubjectUser, "bob")]),
            ("a", "admin", vec![subject(SubjectUser, "root")]),
        ],
        &[],
    )
    .compile();
    let bob = Principal::user("bob");
    // What bob holds, he may grant; names within his names too.
    assert!(
        p.covers(&bob, &rule(&[ResourceRoutes], &["office"], &[VerbPut]))
            .is_ok()
    );
    assert!(
        p.covers(&bob, &rule(&[ResourceEdges], &["x"], &[VerbDelete]))
            .is_ok()
    );
    assert!(
        p.covers(&bob, &rule(&[ResourceEdges], &[], &[VerbAll]))
            .is_ok()
    );
    // Not more: another name, a wildcard name, another verb, everything.
    let missing = |r: Rule| p.covers(&bob, &r).unwrap_err().to_string();
    assert_eq!(
        missing(rule(&[ResourceRoutes], &["lab"], &[VerbPut])),
        "put routes \"lab\""
    );
    assert_eq!(
        missing(rule(&[ResourceRoutes], &[], &[VerbPut])),
        "put routes \"*\""
    );
    assert_eq!(
        missing(rule(&[ResourceRoutes], &["office"], &[VerbAll])),
        "all routes \"office\""
    );
    assert!(
        p.covers(&bob, &rule(&[ResourceAll], &[], &[VerbAll]))
            .is_err()
    );
    // mesh-admin covers anything.
    let root = Principal::user("root");
    assert!(
        p.covers(&root, &rule(&[ResourceAll], &[], &[VerbAll]))
            .is_ok()
    );
}

#[test]
fn deep_wide_groups_evaluate_quickly() {
    // 7 levels, each group listing 10 subgroups and the caller at the bottom: a
    // recursive expansion walks every path (10^6); the compiled walk visits each
    // group once (`cargo bench --bench rbac` measures it).
    let mut groups = Vec::new();
    let mut level = vec!["top".to_string()];
    for depth in 0..7 {
        let mut next = Vec::new();
        for g in &level {
            let kids: Vec<String> = (0..10).map(|i| format!("{g}.{i}")).collect();
            let mut subjects: Vec<Subject> =
                kids.iter().map(|k| subject(SubjectGroup, k)).collect();
            if depth == 6 {
                subjects = vec![subject(SubjectNode, "leaf")];
            }
            groups.push((g.clone(), subjects));
            if depth < 6 {
                next.extend(kids);
            }
        }
        level = next;
        if level.len() > 2_000 {
            // Keep the test's memory small: the width past here adds nothing.
            level.truncate(2_000);
        }
    }
    let group_refs: Vec<(&str, Vec<Subject>)> = groups
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    let p = policy(
        &[("r", vec![rule(&[ResourceAll], &[], &[VerbAll])])],
        &[("b", "r", vec![subject(SubjectGroup, "top")])],
        &group_refs,
    )
    .compile();
    let a = Action::new(ResourceEdges, "", VerbPut);
    assert!(p.allows(&Principal::node("leaf"), &a));
    assert!(!p.allows(&Principal::node("other"), &a));
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
