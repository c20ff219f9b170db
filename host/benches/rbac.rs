//! RBAC evaluation on a 7-level group fan-out: compile once per change, then check.
//!
//!   cargo bench -p webmesh --bench rbac
//!
//! Groups nest 7 levels deep, each listing FANOUT subgroups; the caller sits in one
//! leaf group; a role binding names the top group. The compiled policy walks only the
//! groups containing the caller; a recursive walk of the binding's group tree (what
//! evaluation did before it was compiled) visits every path. Both are timed, p50 and
//! p99, with the compile time of the policy.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use webmesh::mesh::rbac::{Action, Policy, Principal};
use webmesh_api::v1::{
    Group, Role, RoleBinding, Rule, RuleResource, RuleVerb, Subject, SubjectType,
};

const DEPTH: usize = 7;

fn subject(t: SubjectType, name: &str) -> Subject {
    Subject {
        name: name.into(),
        r#type: t as i32,
    }
}

/// The fan-out policy; returns it with the name of the leaf group holding the caller.
fn policy(fanout: usize) -> Policy {
    let mut p = Policy::default();
    p.roles.insert(
        "r".into(),
        Role {
            name: "r".into(),
            rules: vec![Rule {
                resources: vec![RuleResource::ResourceEdges as i32],
                verbs: vec![RuleVerb::VerbPut as i32],
                resource_names: vec![],
            }],
        },
    );
    p.bindings.insert(
        "b".into(),
        RoleBinding {
            name: "b".into(),
            role: "r".into(),
            subjects: vec![subject(SubjectType::SubjectGroup, "g")],
        },
    );
    let mut level = vec!["g".to_string()];
    for depth in 0..DEPTH {
        let mut next = Vec::new();
        for g in &level {
            let kids: Vec<String> = (0..fanout).map(|i| format!("{g}.{i}")).collect();
            let subjects = if depth + 1 == DEPTH {
                // The last level lists nodes; the caller is in the last group only.
                vec![subject(SubjectType::SubjectNode, &format!("n-{g}"))]
            } else {
                kids.iter()
                    .map(|k| subject(SubjectType::SubjectGroup, k))
                    .collect()
            };
            p.groups.insert(
                g.clone(),
                Group {
                    name: g.clone(),
                    subjects,
                },
            );
            next.extend(kids);
        }
        level = next;
    }
    p
}

/// What evaluation did before the policy was compiled: follow every binding's groups
/// recursively, path by path.
fn recursive(p: &Policy, who: &str) -> bool {
    fn in_group(p: &Policy, g: &str, who: &str, seen: &mut BTreeSet<String>) -> bool {
        if seen.len() >= 16 || !seen.insert(g.to_string()) {
            return false;
        }
        let hit = p.groups.get(g).is_some_and(|g| {
            g.subjects
                .iter()
                .any(|s| match SubjectType::try_from(s.r#type) {
                    Ok(SubjectType::SubjectNode) => s.name == who,
                    Ok(SubjectType::SubjectGroup) => in_group(p, &s.name, who, seen),
                    _ => false,
                })
        });
        seen.remove(g);
        hit
    }
    p.bindings.values().any(|b| {
        b.subjects
            .iter()
            .any(|s| in_group(p, &s.name, who, &mut BTreeSet::new()))
    })
}

fn pct(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    println!(
        "| fan-out | groups | compile | check p50 | check p99 | recursive p50 | recursive p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for fanout in [2, 3, 4] {
        let p = policy(fanout);
        let groups = p.groups.len();
        // The caller: in the last leaf group (the recursive walk's worst case).
        let last = p
            .groups
            .values()
            .filter_map(|g| g.subjects.first())
            .filter(|s| s.r#type == SubjectType::SubjectNode as i32)
            .map(|s| s.name.clone())
            .max()
            .expect("a leaf");
        let who = Principal::node(&last);
        let a = Action::new(RuleResource::ResourceEdges, "e", RuleVerb::VerbPut);
        let mut compiles = Vec::new();
        let mut c = None;
        for _ in 0..20 {
            let t = Instant::now();
            c = Some(black_box(p.compile()));
            compiles.push(t.elapsed());
        }
        let c = c.expect("compiled");
        let checks: Vec<Duration> = (0..1000)
            .map(|_| {
                let t = Instant::now();
                assert!(black_box(c.allows(black_box(&who), &a)));
                t.elapsed()
            })
            .collect();
        let slow: Vec<Duration> = (0..if fanout >= 4 { 20 } else { 200 })
            .map(|_| {
                let t = Instant::now();
                assert!(black_box(recursive(&p, &last)));
                t.elapsed()
            })
            .collect();
        let (c50, _) = pct(compiles);
        let (k50, k99) = pct(checks);
        let (r50, r99) = pct(slow);
        println!(
            "| {fanout} | {groups} | {} | {} | {} | {} | {} |",
            ms(c50),
            ms(k50),
            ms(k99),
            ms(r50),
            ms(r99)
        );
    }
}
