//! Peer computation (pure): from the mesh view and "me", my WireGuard peers.
//!
//! - Peers are my neighbours in the graph of edges that the network ACLs allow.
//! - A node I have no edge to is reached through the neighbour that starts my shortest
//!   path to it: its addresses join that neighbour's allowed IPs (multi-hop).
//! - A route's CIDRs go to the neighbour on my shortest path to the node serving it.
//!
//! - An ICE edge (`EDGE_ATTRIBUTE_ICE`) joins two nodes that find their path by ICE:
//!   it makes them peers only while that path is up (the caller says which are), and
//!   it never carries anyone else's traffic, so every node computes the same multi-hop
//!   paths whatever ICE paths are up; until it is up, they reach each other through the
//!   mesh as before (via a mesh relay).
//!
//! WireGuard accepts a packet only from the peer whose allowed IPs hold its source, so
//! the relay I send through towards `v` must be the relay `v` expects my packets from:
//! paths must be the same in both directions. Costs are lexicographic — hop count, then
//! edge weights, then a hash of each edge's unordered pair — packed into a `u128` so
//! they add without carrying across fields. With the hash, every shortest path is
//! unique, hence symmetric; with hops first, a direct edge is always the path between
//! its two ends, and weights choose among equally short paths.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use webmesh_api::v1::WireGuardPeer;

use super::view::{Changes, MeshView};

mod graph;
mod paths;

pub use graph::Graph;
use paths::Paths;

/// The default WireGuard port, for a primary endpoint given without one.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;

/// The edge attribute that asks for an ICE path (the enum value's name, as the v1 API
/// writes attributes), with the value `true`.
pub const ICE_ATTRIBUTE: &str = "EDGE_ATTRIBUTE_ICE";

/// Whether `e` asks for an ICE path.
pub fn is_ice_edge(e: &webmesh_api::v1::MeshEdge) -> bool {
    e.attributes
        .get(ICE_ATTRIBUTE)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// What a node should configure: its peers, and whether it forwards for others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerPlan {
    /// Sorted by peer ID.
    pub peers: Vec<WireGuardPeer>,
    /// Some pair of my neighbours has no edge of its own, or I serve a route: traffic
    /// may cross me, so IP forwarding must be on.
    pub relays: bool,
    /// I serve a default route (`0.0.0.0/0` or `::/0`): an exit node, which masquerades
    /// mesh traffic leaving through its other interfaces.
    pub exit: bool,
}

/// Whether `cidr` is a default route.
pub fn is_default_route(cidr: &str) -> bool {
    cidr.parse::<IpNet>().is_ok_and(|n| n.prefix_len() == 0)
}

fn edge_cost(a: &str, b: &str, weight: i32) -> u128 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // A well-mixed hash: with a weak one (FNV), similar names give sums that tie.
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    let h = xxh3_64_with_seed(hi.as_bytes(), xxh3_64(lo.as_bytes()));
    let w = weight.clamp(1, i32::MAX) as u128;
    (1u128 << 112) | (w << 64) | u128::from(h & 0xffff_ffff_ffff)
}

/// One node's peers, kept current as the view changes: the graph and the node's
/// shortest paths are updated from the view's [`Changes`] instead of being rebuilt, so
/// a change costs what it touches (see `paths`).
pub struct Planner {
    me: String,
    graph: Graph,
    paths: Option<Paths>,
}

impl Planner {
    pub fn new(view: &MeshView, me: &str) -> Planner {
        let graph = Graph::build(view);
        let paths = graph.index_of(me).map(|i| Paths::new(&graph, i));
        Planner {
            me: me.to_string(),
            graph,
            paths,
        }
    }

    /// Brings the plan up to date with `view`, which changed by `changes` since the
    /// last call (or since [`Planner::new`]).
    pub fn update(&mut self, view: &MeshView, changes: &Changes) {
        if changes.rebuild {
            *self = Planner::new(view, &self.me);
            return;
        }
        if changes.is_empty() {
            return;
        }
        let ev = self.graph.apply(view, changes);
        match (self.graph.index_of(&self.me), &mut self.paths) {
            (Some(i), Some(p)) if p.src == i => p.update(&self.graph, &ev),
            (Some(i), _) => self.paths = Some(Paths::new(&self.graph, i)),
            (None, _) => self.paths = None,
        }
    }

    /// My peers, with the ICE peers whose path `ice_up` says is up.
    pub fn plan(&self, view: &MeshView, ice_up: &dyn Fn(&str) -> bool) -> PeerPlan {
        match &self.paths {
            Some(p) => render(&self.graph, p, view, ice_up),
            None => PeerPlan::default(),
        }
    }

    /// The nodes I have an ICE edge to (whether or not their path is up).
    pub fn ice_peers(&self) -> Vec<String> {
        match self.graph.index_of(&self.me) {
            Some(i) => {
                let mut out: Vec<String> = (self.graph.ice_neighbours(i).iter())
                    .map(|&v| self.graph.id(v).to_string())
                    .collect();
                out.sort_unstable();
                out
            }
            None => Vec::new(),
        }
    }
}

/// My WireGuard peers in `view` (no ICE path up). An unknown `me` has none.
pub fn compute(view: &MeshView, me: &str) -> PeerPlan {
    compute_with_ice(view, me, &|_| false)
}

/// [`compute`], with the ICE peers whose path `ice_up` says is up.
pub fn compute_with_ice(view: &MeshView, me: &str, ice_up: &dyn Fn(&str) -> bool) -> PeerPlan {
    Planner::new(view, me).plan(view, ice_up)
}

/// The nodes I have an ICE edge to (whether or not their path is up).
pub fn ice_peers(view: &MeshView, me: &str) -> Vec<String> {
    Planner::new(view, me).ice_peers()
}

/// The plan for `paths.src` from its shortest paths.
///
/// WireGuard picks a peer by longest-prefix match on allowed IPs, so the neighbour that
/// relays the most nodes carries the whole mesh networks instead of one entry per
/// relayed node; every other peer's more specific entries still win. A leaf of a large
/// mesh then configures a handful of allowed IPs, not one per node.
fn render(
    graph: &Graph,
    paths: &Paths,
    view: &MeshView,
    ice_up: &dyn Fn(&str) -> bool,
) -> PeerPlan {
    let src = paths.src;
    let (mut hop, dist) = (paths.hop.clone(), &paths.dist);
    // ICE peers whose path is up are reached straight, not through the relay.
    let ice: Vec<usize> = graph
        .ice_neighbours(src)
        .iter()
        .copied()
        .filter(|&v| ice_up(graph.id(v)))
        .collect();
    for &v in &ice {
        hop[v] = None;
    }
    // A node the ACLs keep from me is not reached through a relay either; and then no
    // neighbour may carry the whole mesh networks, which would cover its addresses.
    let mut denied = false;
    for (v, h) in hop.iter_mut().enumerate() {
        if h.is_some_and(|h| h != v) && !graph.may_talk(src, v) {
            *h = None;
            denied = true;
        }
    }
    // In ID order, so that ties break the same way however slots were assigned.
    let mut neighbours: Vec<usize> = graph.neighbours(src).collect();
    neighbours.sort_unstable_by(|&a, &b| graph.id(a).cmp(graph.id(b)));
    neighbours.dedup();
    let slot: HashMap<usize, usize> = neighbours
        .iter()
        .enumerate()
        .map(|(s, &v)| (v, s))
        .collect();
    // How many nodes each neighbour relays for me.
    let mut relayed = vec![0usize; neighbours.len()];
    for (v, h) in hop.iter().enumerate() {
        if let Some(h) = h
            && *h != v
            && let Some(&s) = slot.get(h)
        {
            relayed[s] += 1;
        }
    }
    let summary: Option<usize> = match (view.ipv4_network, view.ipv6_network) {
        (Some(_), Some(_)) if !denied => relayed
            .iter()
            .enumerate()
            .filter(|(_, c)| **c >= 2)
            .max_by_key(|(s, c)| (**c, std::cmp::Reverse(*s)))
            .map(|(s, _)| s),
        _ => None,
    };
    let node = |v: usize| view.nodes.get(graph.id(v));
    let peer = |v: usize, ice: bool| {
        let Some(n) = node(v) else {
            return WireGuardPeer {
                id: graph.id(v).to_string(),
                ..Default::default()
            };
        };
        WireGuardPeer {
            id: n.id.clone(),
            public_key: n.public_key.clone(),
            primary_endpoint: n.primary_endpoint.clone(),
            wireguard_endpoints: n.wireguard_endpoints.clone(),
            zone_awareness_id: n.zone_awareness_id.clone(),
            address_ipv4: n.private_ipv4.clone(),
            address_ipv6: n.private_ipv6.clone(),
            allowed_ips: view.allowed_ips_of(n),
            allowed_routes: vec![],
            ice,
        }
    };
    let mut peers: Vec<WireGuardPeer> = neighbours.iter().map(|&v| peer(v, false)).collect();
    let mut ice_slot: HashMap<usize, usize> = HashMap::new();
    for &v in &ice {
        ice_slot.insert(v, peers.len());
        peers.push(peer(v, true));
    }
    if let (Some(s), Some(v4), Some(v6)) = (summary, view.ipv4_network, view.ipv6_network) {
        peers[s].allowed_ips.push(v4.to_string());
        peers[s].allowed_ips.push(v6.to_string());
    }
    // Nodes without an edge to me, through the neighbour that starts the path.
    for (v, h) in hop.iter().enumerate() {
        if let Some(h) = h
            && *h != v
            && let Some(&s) = slot.get(h)
            && Some(s) != summary
            && let Some(ips) = view.node_ips.get(graph.id(v))
        {
            peers[s].allowed_ips.extend(ips.iter().cloned());
        }
    }
    // Routes: towards the nearest node serving them (their next hop, if they name one).
    let mut serves_route = false;
    let mut exit = false;
    for route in view.routes.values() {
        let target = if route.next_hop_node.is_empty() {
            &route.node
        } else {
            &route.next_hop_node
        };
        let servers: Vec<usize> = match target.strip_prefix("group:") {
            Some(g) => view
                .groups
                .get(g)
                .map(|g| {
                    g.subjects
                        .iter()
                        .filter_map(|s| graph.index_of(&s.name))
                        .collect()
                })
                .unwrap_or_default(),
            None => graph.index_of(target).into_iter().collect(),
        };
        if servers.contains(&src) {
            // I carry this route's traffic into its network: I forward.
            serves_route = true;
            exit |= route.destination_cidrs.iter().any(|c| is_default_route(c));
            continue;
        }
        // An ICE peer that serves the route is one hop away.
        let best = servers
            .into_iter()
            .filter(|&s| ice_slot.contains_key(&s) || (dist[s].is_some() && hop[s].is_some()))
            .min_by_key(|&s| (!ice_slot.contains_key(&s), dist[s], graph.id(s)));
        let first = best.and_then(|s| {
            ice_slot
                .get(&s)
                .copied()
                .or_else(|| hop[s].and_then(|h| slot.get(&h).copied()))
        });
        if let Some(first) = first {
            for cidr in &route.destination_cidrs {
                if let Ok(net) = cidr.parse::<IpNet>() {
                    let c = net.trunc().to_string();
                    if !peers[first].allowed_routes.contains(&c) {
                        peers[first].allowed_routes.push(c.clone());
                        peers[first].allowed_ips.push(c);
                    }
                }
            }
        }
    }
    // I relay if my neighbourhood is not a clique: some neighbour misses an edge to
    // another (one pass over the neighbours' adjacency lists).
    let mut is_neighbour = vec![false; graph.slots()];
    for &v in &neighbours {
        is_neighbour[v] = true;
    }
    let relays = neighbours.iter().any(|&a| {
        let mut linked: Vec<usize> = graph
            .neighbours(a)
            .filter(|&x| is_neighbour[x] && x != a)
            .collect();
        linked.sort_unstable();
        linked.dedup();
        linked.len() < neighbours.len() - 1
    });
    peers.sort_by(|a, b| a.id.cmp(&b.id));
    // Relayed nodes come in slot order, which depends on history: sorted, a plan is
    // the same however the view came to be.
    for p in &mut peers {
        p.allowed_ips.sort_unstable();
    }
    PeerPlan {
        peers,
        relays: relays || serves_route,
        exit,
    }
}

fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Where to send a peer's WireGuard packets: a LAN endpoint when we share a zone, else
/// its endpoint on the primary address, else its first endpoint, else the primary
/// address on the default port. `None`: the peer is behind NAT and will call us.
pub fn choose_endpoint(peer: &WireGuardPeer, my_zone: &str) -> Option<SocketAddr> {
    let eps: Vec<SocketAddr> = peer
        .wireguard_endpoints
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    if !my_zone.is_empty()
        && my_zone == peer.zone_awareness_id
        && let Some(lan) = eps.iter().find(|e| is_lan(e.ip()))
    {
        return Some(*lan);
    }
    let primary: Option<IpAddr> = peer.primary_endpoint.parse().ok();
    if let Some(p) = primary
        && let Some(e) = eps.iter().find(|e| e.ip() == p)
    {
        return Some(*e);
    }
    eps.first()
        .copied()
        .or_else(|| primary.map(|p| SocketAddr::new(p, DEFAULT_WIREGUARD_PORT)))
}

#[cfg(test)]
mod tests;
