//! Shortest paths from one node (pure), kept current as edges come and go.
//!
//! A full Dijkstra over 10,000 nodes costs milliseconds on every change; most changes
//! (a member joining at the edge of the mesh, one leaving) touch a handful of paths.
//! An inserted edge can only shorten paths: Dijkstra runs from its ends, over the nodes
//! it improves. A removed edge lengthens only the paths that used it — the subtree of
//! the shortest-path tree below it: those are forgotten, seeded from their neighbours
//! outside the subtree, and settled by the same Dijkstra. Costs make every shortest
//! path unique (see the module above), so the result is the one a full run gives.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::graph::{EdgeEvents, Graph};

type Heap = BinaryHeap<Reverse<(u128, usize)>>;

/// Per slot: the path cost from `src`, the neighbour of `src` that starts the path
/// (`None` for `src` itself and the unreachable), and the node before it on the path.
pub struct Paths {
    pub src: usize,
    pub dist: Vec<Option<u128>>,
    pub hop: Vec<Option<usize>>,
    parent: Vec<Option<usize>>,
}

impl Paths {
    pub fn new(graph: &Graph, src: usize) -> Paths {
        let n = graph.slots();
        let mut p = Paths {
            src,
            dist: vec![None; n],
            hop: vec![None; n],
            parent: vec![None; n],
        };
        p.dist[src] = Some(0);
        let mut heap = Heap::new();
        heap.push(Reverse((0, src)));
        p.settle(graph, heap);
        p
    }

    /// Brings the paths up to date with the edges `graph.apply` changed.
    pub fn update(&mut self, graph: &Graph, ev: &EdgeEvents) {
        let n = graph.slots().max(self.dist.len());
        self.dist.resize(n, None);
        self.hop.resize(n, None);
        self.parent.resize(n, None);
        let mut heap = Heap::new();
        // Removed tree edges: everything below them is unknown again.
        let mut lost: Vec<usize> = Vec::new();
        for &(a, b) in &ev.removed {
            let child = if self.parent[b] == Some(a) {
                b
            } else if self.parent[a] == Some(b) {
                a
            } else {
                continue;
            };
            self.forget_subtree(graph, child, &mut lost);
        }
        if !lost.is_empty() {
            let mut is_lost = vec![false; n];
            for &x in &lost {
                is_lost[x] = true;
            }
            // Each forgotten node's best way in from a node whose path stands.
            for &x in &lost {
                for &(y, c) in graph.edges_of(x) {
                    if let (false, Some(d)) = (is_lost[y], self.dist[y]) {
                        self.offer(y, x, d + c, &mut heap);
                    }
                }
            }
        }
        for &(a, b, c) in &ev.inserted {
            for (u, v) in [(a, b), (b, a)] {
                if let Some(d) = self.dist[u] {
                    self.offer(u, v, d + c, &mut heap);
                }
            }
        }
        self.settle(graph, heap);
    }

    /// Forgets `root` and every node whose path runs through it, appending them to
    /// `lost`. The tree's children are found through the current edges; a child whose
    /// tree edge was removed in the same change is reached through that removal.
    fn forget_subtree(&mut self, graph: &Graph, root: usize, lost: &mut Vec<usize>) {
        let start = lost.len();
        self.parent[root] = None;
        self.dist[root] = None;
        self.hop[root] = None;
        lost.push(root);
        let mut k = start;
        while k < lost.len() {
            let u = lost[k];
            k += 1;
            for &(w, _) in graph.edges_of(u) {
                if self.parent[w] == Some(u) {
                    self.parent[w] = None;
                    self.dist[w] = None;
                    self.hop[w] = None;
                    lost.push(w);
                }
            }
        }
    }

    /// `v` can be reached through `u` at cost `d`: take it if better.
    fn offer(&mut self, u: usize, v: usize, d: u128, heap: &mut Heap) {
        if v == self.src || self.dist[v].is_some_and(|old| old <= d) {
            return;
        }
        self.dist[v] = Some(d);
        self.hop[v] = if u == self.src { Some(v) } else { self.hop[u] };
        self.parent[v] = Some(u);
        heap.push(Reverse((d, v)));
    }

    fn settle(&mut self, graph: &Graph, mut heap: Heap) {
        while let Some(Reverse((d, u))) = heap.pop() {
            if self.dist[u] != Some(d) {
                continue;
            }
            for &(v, c) in graph.edges_of(u) {
                self.offer(u, v, d + c, &mut heap);
            }
        }
    }
}
