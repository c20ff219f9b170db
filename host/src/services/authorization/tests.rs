//! The decisions, as tables: who may join, rejoin, update and remove which node, read
//! what, and grant what.

use webmesh_api::v1::{Group, Role, RoleBinding, Rule, Subject, SubjectType};

use super::*;
use crate::mesh::rbac::Policy;
use crate::trust::Claim;

const KA: &str = "A";
const KB: &str = "B";

fn rule(res: RuleResource, names: &[&str], verb: RuleVerb) -> Rule {
    Rule {
        resources: vec![res as i32],
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        verbs: vec![verb as i32],
    }
}

fn subject(t: SubjectType, name: &str) -> Subject {
    Subject {
        name: name.into(),
        r#type: t as i32,
    }
}

/// A new mesh's policy: mesh-admin for user admin and node boot; voters may vote; a
/// binder who may put one binding and routes named "office".
fn policy() -> Compiled {
    let mut p = Policy::default();
    let role = |name: &str, rules: Vec<Rule>| {
        (
            name.to_string(),
            Role {
                name: name.into(),
                rules,
            },
        )
    };
    p.roles.extend([
        role(
            "mesh-admin",
            vec![rule(RuleResource::ResourceAll, &[], RuleVerb::VerbAll)],
        ),
        role(
            "voters",
            vec![rule(RuleResource::ResourceVotes, &[], RuleVerb::VerbPut)],
        ),
        role(
            "binder",
            vec![
                rule(
                    RuleResource::ResourceRoleBindings,
                    &["team"],
                    RuleVerb::VerbPut,
                ),
                rule(RuleResource::ResourceRoutes, &["office"], RuleVerb::VerbPut),
            ],
        ),
    ]);
    let binding = |name: &str, role: &str, subjects: Vec<Subject>| {
        (
            name.to_string(),
            RoleBinding {
                name: name.into(),
                role: role.into(),
                subjects,
            },
        )
    };
    p.bindings.extend([
        binding(
            "mesh-admin",
            "mesh-admin",
            vec![
                subject(SubjectType::SubjectUser, "admin"),
                subject(SubjectType::SubjectNode, "boot"),
            ],
        ),
        binding(
            "voters",
            "voters",
            vec![subject(SubjectType::SubjectGroup, "voters")],
        ),
        binding(
            "binder",
            "binder",
            vec![subject(SubjectType::SubjectUser, "bob")],
        ),
    ]);
    p.groups.insert(
        "voters".into(),
        Group {
            name: "voters".into(),
            subjects: vec![subject(SubjectType::SubjectNode, "v2")],
        },
    );
    p.compile()
}

fn who(caller: Caller, claim: Option<(&str, &str, bool)>) -> Identity {
    Identity {
        caller,
        claim: claim.map(|(node, key, registered)| Claim {
            node: node.into(),
            key: key.into(),
            registered,
        }),
        ..Default::default()
    }
}

fn anon(claim: Option<(&str, &str)>) -> Identity {
    who(Caller::Anonymous, claim.map(|(n, k)| (n, k, false)))
}

fn node(id: &str, key: &str) -> Identity {
    who(Caller::Node(id.into()), Some((id, key, true)))
}

fn user(u: &str, claim: Option<(&str, &str)>) -> Identity {
    who(Caller::User(u.into()), claim.map(|(n, k)| (n, k, false)))
}

fn join(id: &str, key: &str) -> NodeWrite<'static> {
    NodeWrite {
        op: NodeOp::Join,
        id: Box::leak(id.to_string().into_boxed_str()),
        key: Some(Box::leak(key.to_string().into_boxed_str())),
        as_voter: false,
        routes: false,
        direct_peers: false,
    }
}

fn op(op: NodeOp, id: &str) -> NodeWrite<'static> {
    NodeWrite {
        op,
        id: Box::leak(id.to_string().into_boxed_str()),
        key: None,
        as_voter: false,
        routes: false,
        direct_peers: false,
    }
}

fn new() -> NodeFacts<'static> {
    NodeFacts::default()
}

fn registered(key: &'static str, id: &'static str) -> NodeFacts<'static> {
    NodeFacts {
        registered: Some(key),
        key_owner: Some(id),
    }
}

fn code(r: Result<Principal, Status>) -> tonic::Code {
    r.map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code())
}

#[test]
fn open_mode_lets_a_stranger_join_under_a_new_name_and_nothing_more() {
    use tonic::Code::*;
    let p = policy();
    let p = Some(&p);
    // A new name, proving its key: in.
    assert_eq!(
        code(node_write(
            p,
            &anon(Some(("n5", KA))),
            &join("n5", KA),
            &new()
        )),
        Ok
    );
    // No proof, or a proof for another name or key: out.
    assert_eq!(
        code(node_write(p, &anon(None), &join("n5", KA), &new())),
        Unauthenticated
    );
    assert_eq!(
        code(node_write(
            p,
            &anon(Some(("n6", KA))),
            &join("n5", KA),
            &new()
        )),
        Unauthenticated
    );
    assert_eq!(
        code(node_write(
            p,
            &anon(Some(("n5", KB))),
            &join("n5", KA),
            &new()
        )),
        Unauthenticated
    );
    // A vote or routes: out.
    let mut w = join("n5", KA);
    w.as_voter = true;
    assert_eq!(
        code(node_write(p, &anon(Some(("n5", KA))), &w, &new())),
        PermissionDenied
    );
    let mut w = join("n5", KA);
    w.routes = true;
    assert_eq!(
        code(node_write(p, &anon(Some(("n5", KA))), &w, &new())),
        PermissionDenied
    );
    // Direct (ICE) peers: out.
    let mut w = join("n5", KA);
    w.direct_peers = true;
    assert_eq!(
        code(node_write(p, &anon(Some(("n5", KA))), &w, &new())),
        PermissionDenied
    );
    // A name the mesh gives rights to: out (the bootstrap node, a voter-to-be).
    for name in ["boot", "v2"] {
        assert_eq!(
            code(node_write(
                p,
                &anon(Some((name, KA))),
                &join(name, KA),
                &new()
            )),
            PermissionDenied,
            "{name}"
        );
    }
    // A registered name with another key: out. Update and leave: out.
    assert_eq!(
        code(node_write(
            p,
            &anon(Some(("n1", KB))),
            &join("n1", KB),
            &registered(KA, "n1")
        )),
        PermissionDenied
    );
    for o in [NodeOp::Update, NodeOp::Leave] {
        assert_eq!(
            code(node_write(
                p,
                &anon(Some(("n1", KA))),
                &op(o, "n1"),
                &registered(KA, "n1")
            )),
            Unauthenticated
        );
    }
}

#[test]
fn a_key_belongs_to_one_node() {
    let p = policy();
    let facts = NodeFacts {
        registered: None,
        key_owner: Some("n1"),
    };
    let r = node_write(Some(&p), &anon(Some(("n9", KA))), &join("n9", KA), &facts);
    assert_eq!(code(r), tonic::Code::AlreadyExists);
    // Even for an admin.
    let r = node_write(Some(&p), &user("admin", None), &join("n9", KA), &facts);
    assert_eq!(code(r), tonic::Code::AlreadyExists);
}

#[test]
fn a_node_acts_for_itself_by_its_key_and_for_others_only_as_an_admin() {
    use tonic::Code::*;
    let p = policy();
    let p = Some(&p);
    let facts = registered(KA, "n1");
    // Its own rejoin, update, leave.
    assert_eq!(
        code(node_write(p, &node("n1", KA), &join("n1", KA), &facts)),
        Ok
    );
    assert_eq!(
        code(node_write(
            p,
            &node("n1", KA),
            &op(NodeOp::Update, "n1"),
            &facts
        )),
        Ok
    );
    assert_eq!(
        code(node_write(
            p,
            &node("n1", KA),
            &op(NodeOp::Leave, "n1"),
            &facts
        )),
        Ok
    );
    // Not another's.
    let facts2 = registered(KB, "n2");
    for w in [
        join("n2", KB),
        op(NodeOp::Update, "n2"),
        op(NodeOp::Leave, "n2"),
    ] {
        assert_eq!(
            code(node_write(p, &node("n1", KA), &w, &facts2)),
            PermissionDenied
        );
    }
    // A key change by update: not by the node alone.
    let mut w = op(NodeOp::Update, "n1");
    w.key = Some(KB);
    let facts_b = NodeFacts {
        registered: Some(KA),
        key_owner: None,
    };
    assert_eq!(
        code(node_write(p, &node("n1", KA), &w, &facts_b)),
        PermissionDenied
    );
    // The admin user, and the bootstrap node (mesh-admin), may do all of it.
    for admin in [user("admin", None), node("boot", KB)] {
        assert_eq!(
            code(node_write(p, &admin, &op(NodeOp::Leave, "n1"), &facts)),
            Ok
        );
        assert_eq!(code(node_write(p, &admin, &w, &facts_b)), Ok);
    }
}

#[test]
fn an_authenticated_user_acts_for_the_node_of_its_name_with_proof_of_key() {
    use tonic::Code::*;
    let p = policy();
    let p = Some(&p);
    // The AUTH plugin's v2 joins as v2, proving the key, and may vote (voters group).
    let mut w = join("v2", KA);
    w.as_voter = true;
    assert_eq!(
        code(node_write(p, &user("v2", Some(("v2", KA))), &w, &new())),
        Ok
    );
    // Without the proof: no.
    assert_eq!(
        code(node_write(p, &user("v2", None), &w, &new())),
        PermissionDenied
    );
    // n7 may not vote.
    let mut w = join("n7", KA);
    w.as_voter = true;
    assert_eq!(
        code(node_write(p, &user("n7", Some(("n7", KA))), &w, &new())),
        PermissionDenied
    );
    // A new key for a registered name: its user, proving the new key.
    let facts = NodeFacts {
        registered: Some(KA),
        key_owner: None,
    };
    assert_eq!(
        code(node_write(
            p,
            &user("n1", Some(("n1", KB))),
            &join("n1", KB),
            &facts
        )),
        Ok
    );
    assert_eq!(
        code(node_write(p, &user("n1", None), &join("n1", KB), &facts)),
        PermissionDenied
    );
    // Another user's node: no.
    assert_eq!(
        code(node_write(
            p,
            &user("bob", Some(("n1", KB))),
            &join("n1", KB),
            &facts
        )),
        PermissionDenied
    );
}

#[test]
fn rbac_off_lets_everyone_do_everything() {
    let w = NodeWrite {
        as_voter: true,
        ..op(NodeOp::Leave, "n1")
    };
    assert!(node_write(None, &anon(None), &w, &registered(KA, "n1")).is_ok());
}

#[test]
fn reads_take_an_identity_and_users_a_role_on_the_resource() {
    use tonic::Code::*;
    let p = policy();
    let p = Some(&p);
    let read = |c: Caller, r: Read<'_>| may_read(p, &c, r).map(|_| Ok).unwrap_or_else(|s| s.code());
    assert_eq!(read(Caller::Anonymous, Read::Peers), Unauthenticated);
    assert_eq!(read(Caller::Anonymous, Read::State), Unauthenticated);
    assert_eq!(read(Caller::Node("n1".into()), Read::State), Ok);
    assert_eq!(read(Caller::User("nobody".into()), Read::Peers), Ok);
    assert_eq!(
        read(Caller::User("nobody".into()), Read::State),
        PermissionDenied
    );
    assert_eq!(read(Caller::User("admin".into()), Read::State), Ok);
    assert_eq!(
        read(
            Caller::User("bob".into()),
            Read::Object(RuleResource::ResourceRoutes, "office")
        ),
        Ok
    );
    assert_eq!(
        read(
            Caller::User("bob".into()),
            Read::Object(RuleResource::ResourceRoutes, "lab")
        ),
        PermissionDenied
    );
}

#[test]
fn a_binding_cannot_grant_more_than_its_author_holds() {
    let p = policy();
    let bob = Caller::User("bob".into());
    let binding = |role: &str| RoleBinding {
        name: "team".into(),
        role: role.into(),
        subjects: vec![subject(SubjectType::SubjectUser, "mallory")],
    };
    // bob may put the binding "team"; binding mesh-admin through it is escalation.
    let e = may_grant(Some(&p), &bob, Granting::Binding(&binding("mesh-admin"))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains("may not grant all all"),
        "{}",
        e.message()
    );
    // Binding what bob holds is fine; a role bob holds entirely, too.
    may_grant(Some(&p), &bob, Granting::Binding(&binding("binder"))).unwrap();
    // Adding someone to a group bound to voters: only who may vote may do that.
    let g = Group {
        name: "voters".into(),
        subjects: vec![subject(SubjectType::SubjectNode, "m")],
    };
    assert!(may_grant(Some(&p), &bob, Granting::Group(&g)).is_err());
    may_grant(Some(&p), &Caller::User("admin".into()), Granting::Group(&g)).unwrap();
    // A role granting more than its author holds.
    let r = Role {
        name: "big".into(),
        rules: vec![rule(RuleResource::ResourceRoutes, &[], RuleVerb::VerbPut)],
    };
    assert!(may_grant(Some(&p), &bob, Granting::Role(&r)).is_err());
}

#[test]
fn direct_peers_take_putting_data_channels_and_edges() {
    use tonic::Code::*;
    let p = policy();
    let p = Some(&p);
    let mut w = join("bob", KA);
    w.direct_peers = true;
    // bob, authenticated, joins as himself: without rights on data channels and
    // edges, no direct peers (and the refusal names what is missing).
    let e = node_write(p, &user("bob", Some(("bob", KA))), &w, &new()).unwrap_err();
    assert_eq!(e.code(), PermissionDenied);
    assert!(e.message().contains("data"), "{}", e.message());
    // The same join without them is in; the admin may give them.
    w.direct_peers = false;
    assert_eq!(
        code(node_write(p, &user("bob", Some(("bob", KA))), &w, &new())),
        Ok
    );
    let mut w = join("n7", KA);
    w.direct_peers = true;
    assert_eq!(code(node_write(p, &user("admin", None), &w, &new())), Ok);
}
