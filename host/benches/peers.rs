//! Peer computation for one node, at mesh sizes from 100 to 10,000 nodes.
//!
//!   cargo bench -p webmesh --bench peers
//!
//! The mesh: 10 public hub nodes meshed with each other (public <-> public edges); every
//! other node joined through one hub (joiner <-> handler edge); nodes in the same zone
//! of 20 also share edges through one zone relay. Optionally 100 ACLs and 100 routes.
//! Reports the full cost of a recomputation (build the graph from the decoded state,
//! then plan one node), p50 and p99 over many runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use webmesh::mesh::peers;
use webmesh::mesh::view::{Changes, MeshView, edge_key};
use webmesh_api::v1::{AclAction, MeshEdge, MeshNode, NetworkAcl, Route};

fn mesh(n: usize, acls: usize, routes: usize) -> MeshView {
    let mut v = MeshView {
        ipv4_network: Some("172.16.0.0/12".parse().expect("cidr")),
        ipv6_network: Some("fd00:1:2::/48".parse().expect("cidr")),
        ..Default::default()
    };
    let id = |i: usize| format!("node-{i:05}");
    for i in 0..n {
        v.insert_node(MeshNode {
            id: id(i),
            public_key: format!("key{i}"),
            primary_endpoint: if i < 10 {
                format!("203.0.113.{i}")
            } else {
                String::new()
            },
            wireguard_endpoints: if i < 10 {
                vec![format!("203.0.113.{i}:51820")]
            } else {
                vec![]
            },
            private_ipv4: format!("172.16.{}.{}/32", i / 250, i % 250 + 1),
            private_ipv6: format!("fd00:1:2:{:x}::/64", i + 1),
            ..Default::default()
        });
    }
    let mut edge = |a: usize, b: usize| {
        v.edges.insert(
            edge_key(&id(a), &id(b)),
            MeshEdge {
                source: id(a),
                target: id(b),
                weight: 1,
                attributes: Default::default(),
            },
        );
    };
    for a in 0..10.min(n) {
        for b in a + 1..10.min(n) {
            edge(a, b);
        }
    }
    for i in 10..n {
        edge(i, i % 10);
        // Zones of 20: the first of each zone relays for the rest.
        let zone_head = 10 + (i - 10) / 20 * 20;
        if zone_head != i {
            edge(i, zone_head);
        }
    }
    v.acls.insert(
        "default".into(),
        NetworkAcl {
            name: "default".into(),
            priority: i32::MIN,
            action: AclAction::ActionAccept as i32,
            source_nodes: vec!["*".into()],
            destination_nodes: vec!["*".into()],
            ..Default::default()
        },
    );
    for a in 0..acls {
        // ACLs that match nothing here, so every one is evaluated for every edge.
        v.acls.insert(
            format!("acl-{a}"),
            NetworkAcl {
                name: format!("acl-{a}"),
                priority: a as i32,
                action: AclAction::ActionDeny as i32,
                source_nodes: vec![format!("absent-{a}")],
                destination_nodes: vec!["*".into()],
                ..Default::default()
            },
        );
    }
    for r in 0..routes {
        v.routes.insert(
            format!("route-{r}"),
            Route {
                name: format!("route-{r}"),
                node: id((r * 37) % n),
                destination_cidrs: vec![format!("10.{}.{}.0/24", r / 256, r % 256)],
                next_hop_node: String::new(),
            },
        );
    }
    v
}

/// p50 and p99 of `times`, with the plan's peer count.
fn percentiles(mut times: Vec<Duration>, peers_n: usize) -> (Duration, Duration, usize) {
    times.sort();
    let n = times.len();
    (times[n / 2], times[(n * 99 / 100).min(n - 1)], peers_n)
}

fn measure(v: &MeshView, me: &str, runs: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut peers_n = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let plan = peers::compute(black_box(v), black_box(me));
        times.push(t.elapsed());
        peers_n = plan.peers.len();
    }
    percentiles(times, peers_n)
}

/// The incremental cost: a member joins (its record and its edges to a hub and a zone
/// head) or leaves again, and `me`'s planner, kept current, updates and plans. The view
/// change itself (decoding a record) is not counted: every node pays it anyway.
fn measure_incremental(v: &mut MeshView, me: &str, runs: usize) -> (Duration, Duration, usize) {
    let mut planner = peers::Planner::new(v, me);
    let mut times = Vec::with_capacity(runs);
    let mut peers_n = 0;
    let n = v.nodes.len();
    for r in 0..runs {
        let id = format!("joiner-{}", r / 2);
        let mut changes = Changes::default();
        let hub = format!("node-{:05}", r % 10);
        let head = format!("node-{:05}", 10 + (r * 20) % (n - 10));
        if r % 2 == 0 {
            v.insert_node(MeshNode {
                id: id.clone(),
                public_key: format!("key-{id}"),
                private_ipv4: format!("172.31.{}.{}/32", r / 250 % 250, r % 250 + 1),
                private_ipv6: format!("fd00:1:2:ffff:{:x}::/80", r + 1),
                ..Default::default()
            });
            for other in [&hub, &head] {
                v.edges.insert(
                    edge_key(&id, other),
                    MeshEdge {
                        source: id.clone(),
                        target: other.clone(),
                        weight: 1,
                        attributes: Default::default(),
                    },
                );
            }
        } else {
            v.nodes.remove(&id);
            v.node_ips.remove(&id);
            let prev_hub = format!("node-{:05}", (r - 1) % 10);
            let prev_head = format!("node-{:05}", 10 + ((r - 1) * 20) % (n - 10));
            for other in [&prev_hub, &prev_head] {
                v.edges.remove(&edge_key(&id, other));
                changes.edges.insert(edge_key(&id, other));
            }
        }
        changes.nodes.insert(id.clone());
        for other in [&hub, &head] {
            changes.edges.insert(edge_key(&id, other));
        }
        let t = Instant::now();
        planner.update(black_box(v), &changes);
        let plan = planner.plan(v, &|_| false);
        times.push(t.elapsed());
        peers_n = plan.peers.len();
    }
    percentiles(times, peers_n)
}

fn main() {
    println!("| nodes | ACLs | routes | node | peers | p50 | p99 |");
    println!("|---:|---:|---:|---|---:|---:|---:|");
    for &(n, acls, routes) in &[
        (100, 0, 0),
        (1_000, 0, 0),
        (10_000, 0, 0),
        (1_000, 100, 100),
        (10_000, 100, 100),
    ] {
        let v = mesh(n, acls, routes);
        let runs = if n >= 10_000 { 50 } else { 300 };
        for me in ["node-00000", "node-00500"] {
            if n <= 500 && me == "node-00500" {
                continue;
            }
            let (p50, p99, peers_n) = measure(&v, me, runs);
            let kind = if me == "node-00000" { "hub" } else { "leaf" };
            println!(
                "| {n} | {acls} | {routes} | {kind} | {peers_n} | {:.3} ms | {:.3} ms |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
    }
    println!();
    println!("Incremental: a member joins or leaves; the node's planner updates and plans.");
    println!();
    println!("| nodes | ACLs | routes | node | peers | p50 | p99 |");
    println!("|---:|---:|---:|---|---:|---:|---:|");
    for &(n, acls, routes) in &[(1_000, 0, 0), (10_000, 0, 0), (10_000, 100, 100)] {
        let mut v = mesh(n, acls, routes);
        for me in ["node-00000", "node-00500"] {
            let (p50, p99, peers_n) = measure_incremental(&mut v, me, 400);
            let kind = if me == "node-00000" { "hub" } else { "leaf" };
            println!(
                "| {n} | {acls} | {routes} | {kind} | {peers_n} | {:.3} ms | {:.3} ms |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
    }
}
