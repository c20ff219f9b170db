//! Network ACL evaluation (pure): ACLs sorted by priority, highest first; the first
//! match decides; no match denies. Node lists take IDs, `*` and `group:<name>`; CIDR
//! lists take CIDRs and `*`; empty lists match everything.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use webmesh_api::v1::{AclAction, Group, MeshNode, NetworkAcl, SubjectType};

#[derive(Debug, Clone)]
enum NodeMatch {
    Any,
    Set(HashSet<String>),
}

impl NodeMatch {
    fn new(list: &[String], groups: &BTreeMap<String, Group>) -> NodeMatch {
        if list.is_empty() || list.iter().any(|s| s == "*") {
            return NodeMatch::Any;
        }
        let mut set = HashSet::new();
        for item in list {
            match item.strip_prefix("group:") {
                Some(g) => {
                    for s in groups
                        .get(g)
                        .map(|g| g.subjects.as_slice())
                        .unwrap_or_default()
                    {
                        if s.r#type == SubjectType::SubjectAll as i32 && s.name == "*" {
                            return NodeMatch::Any;
                        }
                        if s.r#type == SubjectType::SubjectNode as i32
                            || s.r#type == SubjectType::SubjectAll as i32
                        {
                            set.insert(s.name.clone());
                        }
                    }
                }
                None => {
                    set.insert(item.clone());
                }
            }
        }
        NodeMatch::Set(set)
    }

    fn matches(&self, node: &str) -> bool {
        match self {
            NodeMatch::Any => true,
            NodeMatch::Set(s) => s.contains(node),
        }
    }
}

/// The node IDs a node list names (groups expanded); `None` for every node.
pub fn expand_nodes(list: &[String], groups: &BTreeMap<String, Group>) -> Option<HashSet<String>> {
    match NodeMatch::new(list, groups) {
        NodeMatch::Any => None,
        NodeMatch::Set(s) => Some(s),
    }
}

#[derive(Debug, Clone)]
enum CidrMatch {
    Any,
    Nets(Vec<IpNet>),
}

impl CidrMatch {
    fn new(list: &[String]) -> CidrMatch {
        if list.is_empty() || list.iter().any(|s| s == "*") {
            return CidrMatch::Any;
        }
        CidrMatch::Nets(list.iter().filter_map(|s| s.parse().ok()).collect())
    }

    fn matches(&self, addrs: &[IpAddr]) -> bool {
        match self {
            CidrMatch::Any => true,
            CidrMatch::Nets(nets) => addrs.iter().any(|a| nets.iter().any(|n| n.contains(a))),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    accept: bool,
    /// Restricted to some protocols or ports: a packet-level rule.
    packet_level: bool,
    src: NodeMatch,
    dst: NodeMatch,
    src_cidrs: CidrMatch,
    dst_cidrs: CidrMatch,
}

/// ACLs compiled for fast evaluation (groups expanded, CIDRs parsed, sorted).
#[derive(Debug, Clone, Default)]
pub struct AclSet {
    rules: Vec<Rule>,
}

/// The addresses of a node, for CIDR matching.
pub fn node_addrs(n: &MeshNode) -> Vec<IpAddr> {
    [&n.private_ipv4, &n.private_ipv6]
        .into_iter()
        .filter_map(|s| s.parse::<IpNet>().ok().map(|n| n.addr()))
        .collect()
}

impl AclSet {
    pub fn new<'a>(
        acls: impl IntoIterator<Item = &'a NetworkAcl>,
        groups: &BTreeMap<String, Group>,
    ) -> AclSet {
        let mut sorted: Vec<&NetworkAcl> = acls.into_iter().collect();
        // Highest priority first; equal priorities in name order, so every node agrees.
        sorted.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        let rules = sorted
            .into_iter()
            .map(|a| Rule {
                accept: a.action == AclAction::ActionAccept as i32,
                packet_level: !a.protocols.is_empty() || !a.ports.is_empty(),
                src: NodeMatch::new(&a.source_nodes, groups),
                dst: NodeMatch::new(&a.destination_nodes, groups),
                src_cidrs: CidrMatch::new(&a.source_cidrs),
                dst_cidrs: CidrMatch::new(&a.destination_cidrs),
            })
            .collect();
        AclSet { rules }
    }

    /// Whether any traffic from `src` to `dst` is accepted, i.e. the two need a tunnel.
    /// Packet-level DENYs (naming protocols or ports) do not cut a tunnel; the packet
    /// filter enforces them.
    pub fn node_traffic_allowed(&self, src: (&str, &[IpAddr]), dst: (&str, &[IpAddr])) -> bool {
        for r in &self.rules {
            if !(r.src.matches(src.0)
                && r.dst.matches(dst.0)
                && r.src_cidrs.matches(src.1)
                && r.dst_cidrs.matches(dst.1))
            {
                continue;
            }
            if r.accept {
                return true;
            }
            if !r.packet_level {
                return false;
            }
        }
        false
    }

    /// Whether an (undirected) edge between `a` and `b` carries traffic in at least one
    /// direction.
    pub fn edge_allowed(&self, a: (&str, &[IpAddr]), b: (&str, &[IpAddr])) -> bool {
        self.node_traffic_allowed(a, b) || self.node_traffic_allowed(b, a)
    }

    /// Whether any rule matches on CIDRs (so node addresses matter).
    pub fn uses_cidrs(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(r.src_cidrs, CidrMatch::Nets(_)) || matches!(r.dst_cidrs, CidrMatch::Nets(_))
        })
    }

    /// The rules compiled against a list of nodes: per node, a bitset of the rules that
    /// can match it as a source and as a destination. A decision is then a few word
    /// ANDs instead of a walk over every rule.
    /// `position` maps each name of `nodes` to its index.
    pub fn index(
        &self,
        nodes: &[&str],
        position: &std::collections::HashMap<&str, usize, fnv::FnvBuildHasher>,
        addrs: impl Fn(usize) -> Vec<IpAddr>,
    ) -> AclIndex {
        let words = self.rules.len().div_ceil(64).max(1);
        let mut any_src = vec![0u64; words];
        let mut any_dst = vec![0u64; words];
        let mut src = vec![0u64; words * nodes.len()];
        let mut dst = vec![0u64; words * nodes.len()];
        let cidr_addrs: Vec<Vec<IpAddr>> = if self.uses_cidrs() {
            (0..nodes.len()).map(&addrs).collect()
        } else {
            vec![]
        };
        for (r, rule) in self.rules.iter().enumerate() {
            let (w, bit) = (r / 64, 1u64 << (r % 64));
            for (m, cidrs, any, bits) in [
                (&rule.src, &rule.src_cidrs, &mut any_src, &mut src),
                (&rule.dst, &rule.dst_cidrs, &mut any_dst, &mut dst),
            ] {
                match (m, cidrs) {
                    (NodeMatch::Any, CidrMatch::Any) => any[w] |= bit,
                    (NodeMatch::Set(set), CidrMatch::Any) => {
                        for name in set {
                            if let Some(&i) = position.get(name.as_str()) {
                                bits[i * words + w] |= bit;
                            }
                        }
                    }
                    (m, c) => {
                        for i in 0..nodes.len() {
                            if m.matches(nodes[i]) && c.matches(&cidr_addrs[i]) {
                                bits[i * words + w] |= bit;
                            }
                        }
                    }
                }
            }
        }
        for i in 0..nodes.len() {
            for w in 0..words {
                src[i * words + w] |= any_src[w];
                dst[i * words + w] |= any_dst[w];
            }
        }
        let decide = self
            .rules
            .iter()
            .map(|r| {
                if r.accept {
                    Decision::Accept
                } else if r.packet_level {
                    Decision::Skip
                } else {
                    Decision::Deny
                }
            })
            .collect();
        AclIndex {
            words,
            src,
            dst,
            decide,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Accept,
    Deny,
    /// A packet-level DENY: it does not decide whether a tunnel is needed.
    Skip,
}

/// [`AclSet`] compiled for a node list (see [`AclSet::index`]).
pub struct AclIndex {
    words: usize,
    src: Vec<u64>,
    dst: Vec<u64>,
    decide: Vec<Decision>,
}

impl AclIndex {
    /// [`AclSet::node_traffic_allowed`] for nodes `a` → `b` (by position).
    pub fn traffic_allowed(&self, a: usize, b: usize) -> bool {
        let (sa, db) = (
            &self.src[a * self.words..][..self.words],
            &self.dst[b * self.words..][..self.words],
        );
        for w in 0..self.words {
            let mut m = sa[w] & db[w];
            while m != 0 {
                let r = w * 64 + m.trailing_zeros() as usize;
                match self.decide[r] {
                    Decision::Accept => return true,
                    Decision::Deny => return false,
                    Decision::Skip => m &= m - 1,
                }
            }
        }
        false
    }

    /// [`AclSet::edge_allowed`] by position.
    pub fn edge_allowed(&self, a: usize, b: usize) -> bool {
        self.traffic_allowed(a, b) || self.traffic_allowed(b, a)
    }

    /// (Re)computes one node's rows, growing the index for a new position: a node
    /// joining costs one pass over the rules, not a new index. `set` is the set this
    /// index was built from.
    pub fn set_node(&mut self, set: &AclSet, i: usize, name: &str, addrs: &[IpAddr]) {
        let words = self.words;
        let need = (i + 1) * words;
        if self.src.len() < need {
            self.src.resize(need, 0);
            self.dst.resize(need, 0);
        }
        let (src, dst) = (
            &mut self.src[i * words..][..words],
            &mut self.dst[i * words..][..words],
        );
        src.fill(0);
        dst.fill(0);
        for (r, rule) in set.rules.iter().enumerate() {
            let (w, bit) = (r / 64, 1u64 << (r % 64));
            if rule.src.matches(name) && rule.src_cidrs.matches(addrs) {
                src[w] |= bit;
            }
            if rule.dst.matches(name) && rule.dst_cidrs.matches(addrs) {
                dst[w] |= bit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::Subject;

    fn acl(name: &str, priority: i32, accept: bool, src: &[&str], dst: &[&str]) -> NetworkAcl {
        NetworkAcl {
            name: name.into(),
            priority,
            action: if accept {
                AclAction::ActionAccept
            } else {
                AclAction::ActionDeny
            } as i32,
            source_nodes: src.iter().map(|s| s.to_string()).collect(),
            destination_nodes: dst.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    const NONE: &[IpAddr] = &[];

    #[test]
    fn no_match_denies() {
        let set = AclSet::new(&[], &BTreeMap::new());
        assert!(!set.edge_allowed(("a", NONE), ("b", NONE)));
    }

    #[test]
    fn highest_priority_first_match_decides() {
        let acls = [
            acl("all", i32::MIN, true, &["*"], &["*"]),
            acl("cut", 10, false, &["a"], &["b"]),
            acl("cut-back", 10, false, &["b"], &["a"]),
        ];
        let set = AclSet::new(&acls, &BTreeMap::new());
        assert!(!set.edge_allowed(("a", NONE), ("b", NONE)));
        assert!(set.edge_allowed(("a", NONE), ("c", NONE)));
        // One direction denied, the other accepted: the tunnel stays.
        let set = AclSet::new(&acls[..2], &BTreeMap::new());
        assert!(set.edge_allowed(("a", NONE), ("b", NONE)));
        assert!(!set.node_traffic_allowed(("a", NONE), ("b", NONE)));
    }

    #[test]
    fn groups_expand_and_cidrs_match_addresses() {
        let groups = BTreeMap::from([(
            "web".to_string(),
            Group {
                name: "web".into(),
                subjects: vec![Subject {
                    name: "w1".into(),
                    r#type: SubjectType::SubjectNode as i32,
                }],
            },
        )]);
        let mut a = acl("web-db", 1, true, &["group:web"], &["db"]);
        let set = AclSet::new(std::slice::from_ref(&a), &groups);
        assert!(set.node_traffic_allowed(("w1", NONE), ("db", NONE)));
        assert!(!set.node_traffic_allowed(("w2", NONE), ("db", NONE)));
        a.source_nodes.clear();
        a.source_cidrs = vec!["10.0.0.0/24".into()];
        let set = AclSet::new(&[a], &groups);
        let inside: &[IpAddr] = &["10.0.0.7".parse().unwrap()];
        let outside: &[IpAddr] = &["10.0.1.7".parse().unwrap()];
        assert!(set.node_traffic_allowed(("x", inside), ("db", NONE)));
        assert!(!set.node_traffic_allowed(("x", outside), ("db", NONE)));
    }

    #[test]
    fn the_index_decides_like_the_rules() {
        let groups = BTreeMap::from([(
            "g".to_string(),
            Group {
                name: "g".into(),
                subjects: vec![Subject {
                    name: "b".into(),
                    r#type: SubjectType::SubjectNode as i32,
                }],
            },
        )]);
        let mut port = acl("port", 50, false, &["a"], &["*"]);
        port.ports = vec![22];
        let mut cidr = acl("cidr", 40, false, &[], &["c"]);
        cidr.source_cidrs = vec!["10.0.0.0/31".into()];
        // Enough rules to need more than one bitset word.
        let mut acls: Vec<NetworkAcl> = (0..70)
            .map(|i| acl(&format!("x{i}"), 100 + i, false, &["nobody"], &["*"]))
            .collect();
        acls.extend([
            acl("g-d", 60, false, &["group:g"], &["d"]),
            port,
            cidr,
            acl("a-b", 30, true, &["a"], &["b"]),
            acl("rest", 0, true, &["*"], &["*"]),
        ]);
        let set = AclSet::new(&acls, &groups);
        let names = ["a", "b", "c", "d"];
        let addrs = |i: usize| vec![format!("10.0.0.{i}").parse().unwrap()];
        let position = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let idx = set.index(&names, &position, addrs);
        for a in 0..4 {
            for b in 0..4 {
                let direct = set.node_traffic_allowed((names[a], &addrs(a)), (names[b], &addrs(b)));
                assert_eq!(
                    idx.traffic_allowed(a, b),
                    direct,
                    "{} -> {}",
                    names[a],
                    names[b]
                );
            }
        }
        assert!(!idx.traffic_allowed(1, 3), "group:g denies b -> d");
        assert!(
            !idx.traffic_allowed(0, 2) && !idx.traffic_allowed(1, 2),
            "10.0.0.0/31 (a, b) -> c denied"
        );
        assert!(idx.traffic_allowed(2, 3));
    }

    #[test]
    fn packet_level_denies_do_not_cut_tunnels() {
        let mut deny_port = acl("no-ssh", 10, false, &["a"], &["b"]);
        deny_port.ports = vec![22];
        let acls = [deny_port, acl("all", 0, true, &["*"], &["*"])];
        let set = AclSet::new(&acls, &BTreeMap::new());
        assert!(set.node_traffic_allowed(("a", NONE), ("b", NONE)));
    }
}
