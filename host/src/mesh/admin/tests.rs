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
