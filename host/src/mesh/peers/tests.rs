use super::*;
use crate::mesh::view::edge_key;
use ipnet::IpNet;
use webmesh_api::v1::{AclAction, MeshEdge, MeshNode, NetworkAcl, Route};

fn view(nodes: &[&str], edges: &[(&str, &str, i32)]) -> MeshView {
    let mut v = MeshView::default();
    for (i, id) in nodes.iter().enumerate() {
        v.insert_node(MeshNode {
            id: id.to_string(),
            public_key: format!("key-{id}"),
            private_ipv4: format!("10.0.0.{}/32", i + 1),
            private_ipv6: format!("fd00:0:0:{:x}::/64", i + 1),
            ..Default::default()
        });
    }
    for (a, b, w) in edges {
        v.edges.insert(
            edge_key(a, b),
            MeshEdge {
                source: a.to_string(),
                target: b.to_string(),
                weight: *w,
                attributes: Default::default(),
            },
        );
    }
    v.ipv4_network = Some("10.0.0.0/24".parse().unwrap());
    v.ipv6_network = Some("fd00::/48".parse().unwrap());
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
    v
}

fn ids(p: &PeerPlan) -> Vec<&str> {
    p.peers.iter().map(|p| p.id.as_str()).collect()
}

fn allowed<'a>(p: &'a PeerPlan, id: &str) -> &'a [String] {
    &p.peers.iter().find(|p| p.id == id).unwrap().allowed_ips
}

#[test]
fn neighbours_are_peers_with_their_own_addresses() {
    let v = view(
        &["a", "b", "c"],
        &[("a", "b", 1), ("b", "c", 1), ("a", "c", 1)],
    );
    let p = compute(&v, "a");
    assert_eq!(ids(&p), ["b", "c"]);
    assert_eq!(allowed(&p, "b"), ["10.0.0.2/32", "fd00:0:0:2::/64"]);
    assert!(!p.relays, "b and c have their own edge");
    assert_eq!(compute(&v, "nobody"), PeerPlan::default());
}

#[test]
fn a_denied_pair_is_not_reached_through_a_relay_either() {
    // A star around hub with four leaves: the hub would carry the mesh networks
    // for a leaf, but a and c may not talk.
    let mut v = view(
        &["a", "b", "c", "d", "hub"],
        &[
            ("a", "hub", 1),
            ("b", "hub", 1),
            ("c", "hub", 1),
            ("d", "hub", 1),
        ],
    );
    let before = compute(&v, "a");
    assert!(
        allowed(&before, "hub").contains(&"10.0.0.0/24".to_string()),
        "{before:?}"
    );
    v.acls.insert(
        "cut".into(),
        NetworkAcl {
            name: "cut".into(),
            priority: 100,
            action: AclAction::ActionDeny as i32,
            source_nodes: vec!["a".into(), "c".into()],
            destination_nodes: vec!["a".into(), "c".into()],
            ..Default::default()
        },
    );
    let pa = compute(&v, "a");
    let hub = allowed(&pa, "hub");
    assert!(
        !hub.contains(&"10.0.0.0/24".to_string()),
        "no summary: {hub:?}"
    );
    assert!(
        !hub.contains(&"10.0.0.3/32".to_string()),
        "c is cut: {hub:?}"
    );
    assert!(hub.contains(&"10.0.0.2/32".to_string()), "b still: {hub:?}");
    assert!(hub.contains(&"10.0.0.4/32".to_string()), "d still: {hub:?}");
    let pc = compute(&v, "c");
    assert!(!allowed(&pc, "hub").contains(&"10.0.0.1/32".to_string()));
    // The hub itself still talks to both.
    assert_eq!(ids(&compute(&v, "hub")), ["a", "b", "c", "d"]);
}

#[test]
fn nodes_without_an_edge_are_reached_through_a_relay() {
    // a - hub - c: a reaches c through hub, and c reaches a through hub.
    let v = view(&["a", "c", "hub"], &[("a", "hub", 1), ("c", "hub", 1)]);
    let pa = compute(&v, "a");
    assert_eq!(ids(&pa), ["hub"]);
    assert_eq!(
        allowed(&pa, "hub"),
        [
            "10.0.0.2/32",
            "10.0.0.3/32",
            "fd00:0:0:2::/64",
            "fd00:0:0:3::/64"
        ]
    );
    assert!(compute(&v, "hub").relays);
    assert!(!pa.relays);
}

#[test]
fn relays_are_symmetric_among_equal_paths() {
    // a and z are linked through either r1 or r2; both ends must pick the same one.
    let v = view(
        &["a", "r1", "r2", "z"],
        &[
            ("a", "r1", 1),
            ("a", "r2", 1),
            ("z", "r1", 1),
            ("z", "r2", 1),
        ],
    );
    let pa = compute(&v, "a");
    let pz = compute(&v, "z");
    let via_a = pa
        .peers
        .iter()
        .find(|p| p.allowed_ips.contains(&"10.0.0.4/32".to_string()))
        .unwrap();
    let via_z = pz
        .peers
        .iter()
        .find(|p| p.allowed_ips.contains(&"10.0.0.1/32".to_string()))
        .unwrap();
    assert_eq!(via_a.id, via_z.id);
}

#[test]
fn weights_choose_among_equally_short_paths_but_direct_edges_win() {
    let v = view(
        &["a", "r1", "r2", "z"],
        &[
            ("a", "r1", 1),
            ("a", "r2", 1),
            ("z", "r1", 50),
            ("z", "r2", 1),
        ],
    );
    let pa = compute(&v, "a");
    assert!(
        allowed(&pa, "r2").contains(&"10.0.0.4/32".to_string()),
        "cheaper relay r2"
    );
    let mut v = v;
    v.edges.insert(
        edge_key("a", "z"),
        MeshEdge {
            source: "a".into(),
            target: "z".into(),
            weight: 1000,
            attributes: Default::default(),
        },
    );
    assert_eq!(
        allowed(&compute(&v, "a"), "z"),
        ["10.0.0.4/32", "fd00:0:0:4::/64"]
    );
}

#[test]
fn a_deny_acl_between_two_nodes_removes_the_edge() {
    let mut v = view(
        &["a", "b", "c"],
        &[("a", "b", 1), ("b", "c", 1), ("a", "c", 1)],
    );
    v.acls.insert(
        "cut".into(),
        NetworkAcl {
            name: "cut".into(),
            priority: 100,
            action: AclAction::ActionDeny as i32,
            source_nodes: vec!["a".into(), "b".into()],
            destination_nodes: vec!["a".into(), "b".into()],
            ..Default::default()
        },
    );
    let p = compute(&v, "a");
    assert_eq!(ids(&p), ["c"]);
    // ... and c does not relay between them either.
    assert!(!allowed(&p, "c").contains(&"10.0.0.2/32".to_string()));
}

#[test]
fn routes_go_to_the_first_hop_towards_their_node() {
    let mut v = view(&["a", "gw", "hub"], &[("a", "hub", 1), ("gw", "hub", 1)]);
    v.routes.insert(
        "lan".into(),
        Route {
            name: "lan".into(),
            node: "gw".into(),
            destination_cidrs: vec!["192.168.50.0/24".into()],
            next_hop_node: String::new(),
        },
    );
    let p = compute(&v, "a");
    assert_eq!(p.peers[0].allowed_routes, ["192.168.50.0/24"]);
    assert!(allowed(&p, "hub").contains(&"192.168.50.0/24".to_string()));
    let gw = compute(&v, "gw");
    assert!(
        gw.peers[0].allowed_routes.is_empty(),
        "not to the router itself"
    );
    assert!(gw.relays, "the router forwards into its network");
}

/// The peer WireGuard sends `addr` to: the longest allowed-IP prefix holding it,
/// which must be unique.
fn route<'a>(plan: &'a PeerPlan, addr: &str) -> Option<&'a str> {
    let ip: IpAddr = addr.split('/').next().unwrap().parse().unwrap();
    let mut best: Option<(u8, &str)> = None;
    let mut tie = false;
    for p in &plan.peers {
        for c in &p.allowed_ips {
            let net: IpNet = c.parse().unwrap();
            if net.contains(&ip) {
                match best {
                    Some((len, _)) if len > net.prefix_len() => {}
                    Some((len, id)) if len == net.prefix_len() && id != p.id => tie = true,
                    _ => {
                        tie = false;
                        best = Some((net.prefix_len(), p.id.as_str()));
                    }
                }
            }
        }
    }
    assert!(!tie, "{addr} matches two peers equally");
    best.map(|(_, id)| id)
}

#[test]
fn a_leaf_of_a_large_mesh_gets_the_mesh_networks_not_every_node() {
    let names: Vec<String> = (0..50).map(|i| format!("n{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    // n00 is the hub; everyone else hangs off it.
    let edges: Vec<(&str, &str, i32)> = refs[1..].iter().map(|n| ("n00", *n, 1)).collect();
    let v = view(&refs, &edges);
    let leaf = compute(&v, "n07");
    assert_eq!(
        allowed(&leaf, "n00"),
        ["10.0.0.0/24", "10.0.0.1/32", "fd00:0:0:1::/64", "fd00::/48"]
    );
    assert_eq!(route(&leaf, "10.0.0.30"), Some("n00"));
}

/// A small deterministic generator for the property tests.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[test]
fn peering_is_symmetric_on_random_graphs() {
    // Property: b is a's peer iff a is b's peer; every reachable address routes to
    // exactly one peer; and a's packets to z arrive at z from the peer z routes a
    // through (WireGuard drops them otherwise).
    let mut rnd = xorshift(0x2545f4914f6cdd1du64);
    for _ in 0..200 {
        let names: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut edges = Vec::new();
        for i in 0..12 {
            for j in i + 1..12 {
                if rnd().is_multiple_of(4) {
                    edges.push((refs[i], refs[j], (rnd() % 3 + 1) as i32));
                }
            }
        }
        let v = view(&refs, &edges);
        let graph = Graph::build(&v);
        let plans: HashMap<&str, PeerPlan> = refs.iter().map(|&n| (n, compute(&v, n))).collect();
        for (&a, pa) in &plans {
            for peer in &pa.peers {
                assert!(
                    plans[peer.id.as_str()].peers.iter().any(|p| p.id == a),
                    "{a} -> {} not mutual",
                    peer.id
                );
            }
        }
        for &a in &refs {
            let (hops, _) = graph.first_hops(graph.index_of(a).unwrap());
            for &z in &refs {
                if a == z || hops[graph.index_of(z).unwrap()].is_none() {
                    continue;
                }
                let (za, aa) = (&v.nodes[z].private_ipv4, &v.nodes[a].private_ipv4);
                let mut at = route(&plans[a], za).expect("a routes to z");
                let mut prev = a;
                for _ in 0..12 {
                    if at == z {
                        break;
                    }
                    prev = at;
                    at = route(&plans[at], za).expect("a relay knows the way");
                }
                assert_eq!(at, z, "{a} reaches {z}");
                assert_eq!(
                    route(&plans[z], aa),
                    Some(prev),
                    "{z} expects {a}'s packets from {prev}"
                );
            }
        }
    }
}

#[test]
fn denied_pairs_and_routes_on_random_graphs() {
    // Properties, with random DENY ACLs between pairs and random routes:
    // - no plan lets a node send to a node it may not talk to (its addresses are in no
    //   peer's allowed IPs, and no peer carries the summarised mesh networks);
    // - every route a node can reach is on exactly one of its peers: the first hop
    //   towards the nearest node serving it; a server never routes its own CIDRs.
    let mut rnd = xorshift(0x9e3779b97f4a7c15u64);
    for round in 0..150 {
        let names: Vec<String> = (0..10).map(|i| format!("n{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut edges = Vec::new();
        for i in 0..10 {
            for j in i + 1..10 {
                if rnd().is_multiple_of(3) {
                    edges.push((refs[i], refs[j], (rnd() % 3 + 1) as i32));
                }
            }
        }
        let mut v = view(&refs, &edges);
        let mut denied = Vec::new();
        for k in 0..(rnd() % 3) {
            let (a, b) = (refs[(rnd() % 10) as usize], refs[(rnd() % 10) as usize]);
            if a == b {
                continue;
            }
            denied.push((a, b));
            v.acls.insert(
                format!("deny-{k}"),
                NetworkAcl {
                    name: format!("deny-{k}"),
                    priority: 100,
                    action: AclAction::ActionDeny as i32,
                    source_nodes: vec![a.into(), b.into()],
                    destination_nodes: vec![a.into(), b.into()],
                    ..Default::default()
                },
            );
        }
        for r in 0..(rnd() % 3) {
            v.routes.insert(
                format!("r{r}"),
                Route {
                    name: format!("r{r}"),
                    node: refs[(rnd() % 10) as usize].into(),
                    destination_cidrs: vec![format!("192.168.{r}.0/24")],
                    next_hop_node: String::new(),
                },
            );
        }
        let graph = Graph::build(&v);
        for &a in &refs {
            let plan = compute(&v, a);
            let all: Vec<&String> = plan.peers.iter().flat_map(|p| &p.allowed_ips).collect();
            let me = graph.index_of(a).unwrap();
            let (hops, dist) = graph.first_hops(me);
            for &(x, y) in &denied {
                let other = if a == x {
                    y
                } else if a == y {
                    x
                } else {
                    continue;
                };
                let addr = &v.nodes[other].private_ipv4;
                assert!(
                    !all.contains(&addr),
                    "round {round}: {a} reaches denied {other}"
                );
                // A summary would carry packets to it, if any path leads there.
                if hops[graph.index_of(other).unwrap()].is_some() {
                    assert!(
                        !all.contains(&&"10.0.0.0/24".to_string()),
                        "round {round}: {a} has a summary covering denied {other}"
                    );
                }
            }
            for route in v.routes.values() {
                let cidr = &route.destination_cidrs[0];
                let holders: Vec<&str> = plan
                    .peers
                    .iter()
                    .filter(|p| p.allowed_routes.contains(cidr))
                    .map(|p| p.id.as_str())
                    .collect();
                let server = graph.index_of(&route.node).unwrap();
                if server == me {
                    assert!(
                        holders.is_empty(),
                        "round {round}: {a} routes its own {cidr}"
                    );
                    continue;
                }
                // Reachable and allowed: through the first hop; else nowhere.
                match (dist[server], hops[server]) {
                    (Some(_), Some(h)) if graph.may_talk(me, server) => {
                        assert_eq!(holders, [graph.id(h)], "round {round}: {a} {cidr}")
                    }
                    _ => assert!(holders.is_empty(), "round {round}: {a} {cidr} {holders:?}"),
                }
            }
        }
    }
}

#[test]
fn endpoints() {
    let mut p = WireGuardPeer {
        primary_endpoint: "203.0.113.5".into(),
        wireguard_endpoints: vec!["192.168.1.5:51820".into(), "203.0.113.5:51821".into()],
        zone_awareness_id: "dc1".into(),
        ..Default::default()
    };
    assert_eq!(
        choose_endpoint(&p, "dc1").unwrap().to_string(),
        "192.168.1.5:51820"
    );
    assert_eq!(
        choose_endpoint(&p, "dc2").unwrap().to_string(),
        "203.0.113.5:51821"
    );
    p.wireguard_endpoints.clear();
    assert_eq!(
        choose_endpoint(&p, "").unwrap().to_string(),
        "203.0.113.5:51820"
    );
    p.primary_endpoint.clear();
    assert_eq!(choose_endpoint(&p, ""), None);
}

#[test]
fn an_ice_edge_makes_peers_only_while_its_path_is_up_and_carries_no_one_else() {
    // a and b sit behind NATs, both linked to the public hub; a–b is an ICE edge, and
    // so is b–c (c behind a NAT too).
    let mut v = view(
        &["a", "b", "c", "hub"],
        &[("a", "hub", 1), ("b", "hub", 1), ("c", "hub", 1)],
    );
    for (x, y) in [("a", "b"), ("b", "c")] {
        v.edges.insert(
            edge_key(x, y),
            MeshEdge {
                source: x.into(),
                target: y.into(),
                weight: 1,
                attributes: [(ICE_ATTRIBUTE.to_string(), "true".to_string())].into(),
            },
        );
    }
    assert_eq!(ice_peers(&v, "a"), ["b"]);
    assert_eq!(ice_peers(&v, "b"), ["a", "c"]);
    // Not up: through the hub, as without the edge.
    let down = compute_with_ice(&v, "a", &|_| false);
    assert_eq!(ids(&down), ["hub"]);
    assert_eq!(down, compute(&v, "a"));
    // Up: b is a peer of its own, marked ICE; c still goes through the hub even though
    // b has an ICE edge to c (ICE edges carry only their ends).
    let up = compute_with_ice(&v, "a", &|p| p == "b");
    assert_eq!(ids(&up), ["b", "hub"]);
    let b = up.peers.iter().find(|p| p.id == "b").unwrap();
    assert!(b.ice);
    assert_eq!(b.allowed_ips, ["10.0.0.2/32", "fd00:0:0:2::/64"]);
    let hub = allowed(&up, "hub");
    assert!(hub.contains(&"10.0.0.3/32".to_string()), "{hub:?}");
    assert!(!hub.contains(&"10.0.0.2/32".to_string()), "{hub:?}");
    // The hub's plan does not change with ICE paths: it still relays a–b traffic that
    // takes it while the path is down.
    assert_eq!(ids(&compute(&v, "hub")), ["a", "b", "c"]);
    // An ICE edge the ACLs forbid is no ICE peer.
    v.acls.clear();
    assert!(ice_peers(&v, "a").is_empty());
}

/// Writes `key` through the view as the state machine would, noting the change.
fn write(v: &mut MeshView, changes: &mut Changes, key: &str, value: Option<String>) {
    v.apply(key, value.as_deref()).unwrap();
    changes.record(key);
}

/// `write` of a record as the state stores it (JSON).
fn put<T: serde::Serialize>(v: &mut MeshView, changes: &mut Changes, key: &str, record: &T) {
    write(
        v,
        changes,
        key,
        Some(serde_json::to_string(record).unwrap()),
    );
}

#[test]
fn incremental_plans_equal_full_plans_on_random_changes() {
    // Property: after any sequence of node, edge, weight, ICE, address and ACL changes,
    // a planner kept current from the changes plans exactly what one built from
    // scratch plans, for every node.
    use crate::mesh::keys;
    let mut rnd = xorshift(0xd1b54a32d192ed03u64);
    let names: Vec<String> = (0..16).map(|i| format!("n{i:02}")).collect();
    for round in 0..60 {
        let mut v = view(&[], &[]);
        let cidr_acl = round % 3 == 0;
        if cidr_acl {
            // Nodes whose IPv4 falls in .128/25 may not talk to n00: addresses decide.
            v.acls.insert(
                "cidr".into(),
                NetworkAcl {
                    name: "cidr".into(),
                    priority: 10,
                    action: AclAction::ActionDeny as i32,
                    source_nodes: vec!["n00".into()],
                    destination_nodes: vec!["*".into()],
                    destination_cidrs: vec!["10.0.0.128/25".into()],
                    ..Default::default()
                },
            );
        }
        let mut planners: Vec<(String, Planner)> = names[..4]
            .iter()
            .map(|n| (n.clone(), Planner::new(&v, n)))
            .collect();
        for step in 0..80 {
            let mut changes = Changes::default();
            for _ in 0..1 + rnd() % 3 {
                let a = &names[(rnd() % 16) as usize];
                let b = &names[(rnd() % 16) as usize];
                match rnd() % 10 {
                    0..=2 => {
                        let n = MeshNode {
                            id: a.clone(),
                            public_key: format!("key-{a}-{}", rnd() % 4),
                            private_ipv4: format!("10.0.0.{}/32", rnd() % 250 + 1),
                            private_ipv6: format!("fd00:0:0:{:x}::/64", rnd() % 250 + 1),
                            ..Default::default()
                        };
                        let key = format!("{}{a}", keys::NODES);
                        put(&mut v, &mut changes, &key, &n);
                    }
                    3 => write(&mut v, &mut changes, &format!("{}{a}", keys::NODES), None),
                    4..=6 => {
                        let mut e = MeshEdge {
                            source: a.clone(),
                            target: b.clone(),
                            weight: (rnd() % 3 + 1) as i32,
                            attributes: Default::default(),
                        };
                        if rnd().is_multiple_of(5) {
                            e.attributes.insert(ICE_ATTRIBUTE.into(), "true".into());
                        }
                        let key = format!("{}{a}/{b}", keys::EDGES);
                        put(&mut v, &mut changes, &key, &e);
                    }
                    7 | 8 => write(
                        &mut v,
                        &mut changes,
                        &format!("{}{a}/{b}", keys::EDGES),
                        None,
                    ),
                    _ => {
                        let acl = NetworkAcl {
                            name: "pair".into(),
                            priority: 5,
                            action: AclAction::ActionDeny as i32,
                            source_nodes: vec![a.clone(), b.clone()],
                            destination_nodes: vec![a.clone(), b.clone()],
                            ..Default::default()
                        };
                        let key = format!("{}pair", keys::NETWORK_ACLS);
                        put(&mut v, &mut changes, &key, &acl);
                    }
                }
            }
            let ice_up = |p: &str| p.ends_with(['1', '3', '5']);
            for (me, planner) in &mut planners {
                planner.update(&v, &changes);
                assert_eq!(
                    planner.plan(&v, &ice_up),
                    compute_with_ice(&v, me, &ice_up),
                    "round {round} step {step}: {me} after {changes:?}"
                );
                assert_eq!(planner.ice_peers(), ice_peers(&v, me));
            }
        }
    }
}
