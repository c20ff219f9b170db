//! The packet filter for network ACLs that name protocols or ports (pure): an nftables
//! ruleset for one node's mesh interface. Tunnels already follow the node-level
//! decisions (a pair that may not talk is not peered); this adds the per-port ones for
//! traffic arriving at this node. Rules keep the ACL order (highest priority first,
//! first match decides); traffic no rule matches passes (the peer set already refused
//! what no ACL allows).

use std::collections::BTreeSet;

use ipnet::IpNet;
use webmesh_api::v1::{AclAction, NetworkAcl};

use super::acl::expand_nodes;
use super::view::MeshView;

/// The nftables table this node owns for `iface`.
pub fn table_name(iface: &str) -> String {
    let clean: String = iface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("webmesh_{clean}")
}

/// Whether an ACL needs the packet filter.
pub fn packet_level(a: &NetworkAcl) -> bool {
    !a.protocols.is_empty() || !a.ports.is_empty()
}

fn set(items: &BTreeSet<String>) -> String {
    format!(
        "{{ {} }}",
        items.iter().cloned().collect::<Vec<_>>().join(", ")
    )
}

/// The ruleset for traffic into `me` over `iface`; `None` when no ACL is packet-level
/// (the table should then not exist).
pub fn ruleset(view: &MeshView, me: &str, iface: &str) -> Option<String> {
    if !view.acls.values().any(packet_level) {
        return None;
    }
    let mine: Vec<IpNet> = view
        .nodes
        .get(me)
        .map(|n| {
            [&n.private_ipv4, &n.private_ipv6]
                .into_iter()
                .filter_map(|s| s.parse::<IpNet>().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut acls: Vec<&NetworkAcl> = view.acls.values().collect();
    acls.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut rules = Vec::new();
    for a in acls {
        // Does it concern traffic to me?
        if let Some(dst) = expand_nodes(&a.destination_nodes, &view.groups)
            && !dst.contains(me)
        {
            continue;
        }
        let dst_cidrs: Vec<IpNet> = a
            .destination_cidrs
            .iter()
            .filter(|c| *c != "*")
            .filter_map(|c| c.parse().ok())
            .collect();
        if !dst_cidrs.is_empty()
            && !mine
                .iter()
                .any(|m| dst_cidrs.iter().any(|d| d.contains(&m.addr())))
        {
            continue;
        }
        // Sources: the named nodes' addresses, and/or CIDRs (both must hold).
        let node_srcs: Option<Vec<IpNet>> =
            expand_nodes(&a.source_nodes, &view.groups).map(|ids| {
                ids.iter()
                    .filter_map(|id| view.nodes.get(id))
                    .flat_map(|n| view.allowed_ips_of(n))
                    .filter_map(|s| s.parse().ok())
                    .collect()
            });
        let cidr_srcs: Option<Vec<IpNet>> = {
            let c: Vec<IpNet> = a
                .source_cidrs
                .iter()
                .filter(|c| *c != "*")
                .filter_map(|c| c.parse().ok())
                .collect();
            (!a.source_cidrs.iter().any(|c| c == "*") && !c.is_empty()).then_some(c)
        };
        let verdict = if a.action == AclAction::ActionAccept as i32 {
            "accept"
        } else {
            "drop"
        };
        // What it matches beyond addresses.
        let mut l4: Vec<String> = Vec::new();
        let protos: Vec<&str> = if a.protocols.is_empty() {
            if a.ports.is_empty() {
                vec![]
            } else {
                vec!["tcp", "udp"]
            }
        } else {
            a.protocols.iter().map(String::as_str).collect()
        };
        let ports: BTreeSet<String> = a.ports.iter().map(u32::to_string).collect();
        for p in &protos {
            let proto = match *p {
                "icmpv6" => "ipv6-icmp",
                other => other,
            };
            if ports.is_empty() {
                l4.push(format!("meta l4proto {proto}"));
            } else {
                l4.push(format!("meta l4proto {proto} th dport {}", set(&ports)));
            }
        }
        if l4.is_empty() {
            l4.push(String::new());
        }
        for family in ["ip", "ip6"] {
            let fam =
                |n: &IpNet| matches!((family, n), ("ip", IpNet::V4(_)) | ("ip6", IpNet::V6(_)));
            // Each source list that applies must hold; one with nothing of this
            // family means the rule cannot match in it.
            let mut addr = Vec::new();
            let mut matchable = true;
            for srcs in [&node_srcs, &cidr_srcs].into_iter().flatten() {
                let s: BTreeSet<String> = srcs
                    .iter()
                    .filter(|n| fam(n))
                    .map(|n| n.to_string())
                    .collect();
                matchable &= !s.is_empty();
                addr.push(format!("{family} saddr {}", set(&s)));
            }
            if !matchable {
                continue;
            }
            if addr.is_empty() {
                addr.push(format!(
                    "meta nfproto {}",
                    if family == "ip" { "ipv4" } else { "ipv6" }
                ));
            }
            for m in &l4 {
                let mut parts = addr.clone();
                if !m.is_empty() {
                    parts.push(m.clone());
                }
                parts.push(format!("{verdict} comment \"acl {}\"", a.name));
                rules.push(parts.join(" "));
            }
        }
    }
    let table = table_name(iface);
    let mut out = format!("table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    out.push_str("  chain acl {\n");
    for r in rules {
        out.push_str(&format!("    {r}\n"));
    }
    out.push_str("  }\n");
    for hook in ["input", "forward"] {
        out.push_str(&format!(
            "  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n    iifname \"{iface}\" ct state established,related accept\n    iifname \"{iface}\" jump acl\n  }}\n"
        ));
    }
    out.push_str("}\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::MeshNode;

    fn view() -> MeshView {
        let mut v = MeshView::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            v.insert_node(MeshNode {
                id: id.to_string(),
                private_ipv4: format!("10.0.0.{}/32", i + 1),
                private_ipv6: format!("fd00:0:0:{}::/64", i + 1),
                ..Default::default()
            });
        }
        v.acls.insert(
            "default".into(),
            NetworkAcl {
                name: "default".into(),
                priority: i32::MIN,
                action: AclAction::ActionAccept as i32,
                ..Default::default()
            },
        );
        v
    }

    #[test]
    fn no_packet_level_acl_no_table() {
        assert_eq!(ruleset(&view(), "b", "wm0"), None);
    }

    #[test]
    fn port_rules_for_traffic_to_me_in_acl_order() {
        let mut v = view();
        v.acls.insert(
            "no-web".into(),
            NetworkAcl {
                name: "no-web".into(),
                priority: 100,
                action: AclAction::ActionDeny as i32,
                source_nodes: vec!["a".into()],
                destination_nodes: vec!["b".into()],
                protocols: vec!["tcp".into()],
                ports: vec![8002, 443],
                ..Default::default()
            },
        );
        v.acls.insert(
            "ping-ok".into(),
            NetworkAcl {
                name: "ping-ok".into(),
                priority: 200,
                action: AclAction::ActionAccept as i32,
                protocols: vec!["icmp".into()],
                source_cidrs: vec!["10.0.0.0/24".into()],
                ..Default::default()
            },
        );
        let r = ruleset(&v, "b", "wm0").expect("a ruleset");
        let ping = r.find("acl ping-ok").expect("ping rule");
        let web = r
            .find("ip saddr { 10.0.0.1/32 } meta l4proto tcp th dport { 443, 8002 } drop comment \"acl no-web\"")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(ping < web, "higher priority first:\n{r}");
        assert!(
            r.contains(
                "ip6 saddr { fd00:0:0:1::/64 } meta l4proto tcp th dport { 443, 8002 } drop"
            ),
            "{r}"
        );
        // The CIDR-sourced rule has no IPv6 source: no IPv6 rule.
        assert!(!r.contains("ip6 saddr { 10.0.0.0/24 }"), "{r}");
        assert!(r.contains("iifname \"wm0\" jump acl"), "{r}");
        // c is not the destination of no-web.
        let rc = ruleset(&v, "c", "wm0").expect("a ruleset");
        assert!(!rc.contains("no-web"), "{rc}");
    }
}
