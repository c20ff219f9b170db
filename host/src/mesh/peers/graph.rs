//! The graph of allowed edges (pure), built from a view once and then kept current
//! from the view's [`Changes`]: a node joining costs its own edges and one pass over the
//! ACL rules, not a rebuild of ten thousand nodes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::mesh::acl::{AclIndex, AclSet, node_addrs};
use crate::mesh::view::{Changes, EdgeKey, MeshView};

use super::{edge_cost, is_ice_edge};

type FnvMap<K, V> = HashMap<K, V, fnv::FnvBuildHasher>;

/// What one [`Graph::apply`] did to the edges that carry paths (ICE edges carry none).
#[derive(Debug, Default)]
pub struct EdgeEvents {
    /// Removed, or about to be re-added with another cost.
    pub removed: Vec<(usize, usize)>,
    pub inserted: Vec<(usize, usize, u128)>,
}

/// The graph of allowed edges, indexed by slot (a node's position; freed slots are
/// reused), ready for path queries.
pub struct Graph {
    ids: Vec<String>,
    index: FnvMap<String, usize>,
    free: Vec<usize>,
    /// Each node's edges that carry paths, with their costs.
    adj: Vec<Vec<(usize, u128)>>,
    /// ICE edges the ACLs allow (kept out of `adj`: they carry only their two ends).
    ice: Vec<Vec<usize>>,
    rules: AclSet,
    /// Which pairs the network ACLs let talk (a relay must not carry the others).
    acls: AclIndex,
    /// The rules match on CIDRs: a node's addresses decide its edges, so an address
    /// change re-evaluates them. The addresses as last evaluated, per slot.
    cidr_acls: bool,
    addrs: Vec<Vec<IpAddr>>,
}

impl Graph {
    pub fn build(view: &MeshView) -> Graph {
        let n = view.nodes.len();
        let ids: Vec<String> = view.nodes.keys().cloned().collect();
        let mut index: FnvMap<String, usize> =
            HashMap::with_capacity_and_hasher(n, Default::default());
        for (i, id) in ids.iter().enumerate() {
            index.insert(id.clone(), i);
        }
        let rules = AclSet::new(view.acls.values(), &view.groups);
        let cidr_acls = rules.uses_cidrs();
        let addrs: Vec<Vec<IpAddr>> = if cidr_acls {
            view.nodes.values().map(node_addrs).collect()
        } else {
            vec![]
        };
        let acls = {
            let names: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
            let pos: FnvMap<&str, usize> = names.iter().enumerate().map(|(i, s)| (*s, i)).collect();
            rules.index(&names, &pos, |i| addrs[i].clone())
        };
        let mut g = Graph {
            adj: vec![Vec::new(); n],
            ice: vec![Vec::new(); n],
            ids,
            index,
            free: Vec::new(),
            rules,
            acls,
            cidr_acls,
            addrs,
        };
        for ((a, b), edge) in &view.edges {
            let (Some(&ia), Some(&ib)) = (g.index.get(a), g.index.get(b)) else {
                continue;
            };
            if ia == ib || !g.acls.edge_allowed(ia, ib) {
                continue;
            }
            if is_ice_edge(edge) {
                g.ice[ia].push(ib);
                g.ice[ib].push(ia);
            } else {
                let c = edge_cost(a, b, edge.weight);
                g.adj[ia].push((ib, c));
                g.adj[ib].push((ia, c));
            }
        }
        for l in &mut g.ice {
            l.sort_unstable();
        }
        g
    }

    /// Brings the graph to `view` after `changes` (which must not ask for a rebuild).
    pub fn apply(&mut self, view: &MeshView, changes: &Changes) -> EdgeEvents {
        debug_assert!(!changes.rebuild);
        let mut ev = EdgeEvents::default();
        let mut recheck: BTreeSet<EdgeKey> = changes.edges.clone();
        let mut gone = Vec::new();
        for id in &changes.nodes {
            match (view.nodes.get(id), self.index.get(id).copied()) {
                (Some(n), None) => {
                    let i = match self.free.pop() {
                        Some(i) => {
                            self.ids[i] = id.clone();
                            i
                        }
                        None => {
                            self.ids.push(id.clone());
                            self.adj.push(Vec::new());
                            self.ice.push(Vec::new());
                            self.ids.len() - 1
                        }
                    };
                    self.index.insert(id.clone(), i);
                    let addrs = if self.cidr_acls {
                        node_addrs(n)
                    } else {
                        vec![]
                    };
                    self.acls.set_node(&self.rules, i, id, &addrs);
                    if self.cidr_acls {
                        if self.addrs.len() <= i {
                            self.addrs.resize(i + 1, Vec::new());
                        }
                        self.addrs[i] = addrs;
                    }
                    // Edges written before the node (or kept while it was gone).
                    recheck.extend(edges_of(view, id));
                }
                (Some(n), Some(i)) if self.cidr_acls => {
                    let addrs = node_addrs(n);
                    if addrs != self.addrs[i] {
                        self.acls.set_node(&self.rules, i, id, &addrs);
                        self.addrs[i] = addrs;
                        recheck.extend(edges_of(view, id));
                    }
                }
                (None, Some(i)) => {
                    for (j, _) in std::mem::take(&mut self.adj[i]) {
                        self.adj[j].retain(|&(x, _)| x != i);
                        ev.removed.push((i, j));
                    }
                    for j in std::mem::take(&mut self.ice[i]) {
                        self.ice[j].retain(|&x| x != i);
                    }
                    // Out of the index now, so no recheck below re-adds its edges.
                    self.index.remove(id);
                    gone.push(i);
                }
                _ => {}
            }
        }
        for (a, b) in &recheck {
            self.recheck_edge(view, a, b, &mut ev);
        }
        for i in gone {
            self.ids[i].clear();
            self.free.push(i);
        }
        ev
    }

    /// Makes the edge `a`–`b` in the graph what the view says it is.
    fn recheck_edge(&mut self, view: &MeshView, a: &str, b: &str, ev: &mut EdgeEvents) {
        let (Some(&ia), Some(&ib)) = (self.index.get(a), self.index.get(b)) else {
            return;
        };
        if ia == ib {
            return;
        }
        #[derive(PartialEq)]
        enum Kind {
            Absent,
            Ice,
            Path(u128),
        }
        let want = match view.edges.get(&(a.to_string(), b.to_string())) {
            Some(e) if self.acls.edge_allowed(ia, ib) => {
                if is_ice_edge(e) {
                    Kind::Ice
                } else {
                    Kind::Path(edge_cost(a, b, e.weight))
                }
            }
            _ => Kind::Absent,
        };
        let have = if let Some(&(_, c)) = self.adj[ia].iter().find(|(x, _)| *x == ib) {
            Kind::Path(c)
        } else if self.ice[ia].contains(&ib) {
            Kind::Ice
        } else {
            Kind::Absent
        };
        if want == have {
            return;
        }
        match have {
            Kind::Path(_) => {
                self.adj[ia].retain(|&(x, _)| x != ib);
                self.adj[ib].retain(|&(x, _)| x != ia);
                ev.removed.push((ia, ib));
            }
            Kind::Ice => {
                self.ice[ia].retain(|&x| x != ib);
                self.ice[ib].retain(|&x| x != ia);
            }
            Kind::Absent => {}
        }
        match want {
            Kind::Path(c) => {
                self.adj[ia].push((ib, c));
                self.adj[ib].push((ia, c));
                ev.inserted.push((ia, ib, c));
            }
            Kind::Ice => {
                for (x, y) in [(ia, ib), (ib, ia)] {
                    let l = &mut self.ice[x];
                    let at = l.partition_point(|&v| v < y);
                    l.insert(at, y);
                }
            }
            Kind::Absent => {}
        }
    }

    /// Slots in use or free: the length of per-slot vectors.
    pub fn slots(&self) -> usize {
        self.ids.len()
    }

    /// The node in slot `i` (empty for a free slot).
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The nodes `i` has an ICE edge to (sorted).
    pub fn ice_neighbours(&self, i: usize) -> &[usize] {
        &self.ice[i]
    }

    /// Whether the ACLs let `a` and `b` talk (in either direction: the packet filter
    /// enforces direction, protocols and ports).
    pub fn may_talk(&self, a: usize, b: usize) -> bool {
        self.acls.edge_allowed(a, b)
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub(super) fn edges_of(&self, i: usize) -> &[(usize, u128)] {
        &self.adj[i]
    }

    pub fn neighbours(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.adj[i].iter().map(|&(v, _)| v)
    }

    /// For every slot, the neighbour of `src` that starts the shortest path to it
    /// (`None`: unreachable, or `src` itself), and the path costs.
    pub fn first_hops(&self, src: usize) -> (Vec<Option<usize>>, Vec<Option<u128>>) {
        let p = super::paths::Paths::new(self, src);
        (p.hop, p.dist)
    }
}

/// The edges of the view that touch `id`.
fn edges_of<'a>(view: &'a MeshView, id: &'a str) -> impl Iterator<Item = EdgeKey> + 'a {
    view.edges
        .keys()
        .filter(move |(a, b)| a == id || b == id)
        .cloned()
}
