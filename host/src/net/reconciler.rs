//! The peer manager's decisions, sans IO: what the host should hold (WireGuard peers,
//! routes, forwarding, exit routing, masquerade, the packet filter) comes in as a
//! [`Desired`]; the [`Action`]s that get it there go out; each action's result comes
//! back ([`Reconciler::done`], [`Reconciler::failed`]) and only what succeeded counts
//! as applied, so a failure is retried on the next pass. The shell in `net/mod.rs` runs
//! the actions; everything here is tested without root.

use std::collections::{BTreeMap, BTreeSet};

use webmesh_api::v1::WireGuardPeer;

use super::wireguard::PeerConfig;
use crate::mesh::peers::{self, PeerPlan};

/// Every peer gets a keepalive: it holds NAT mappings open and lets a node see which
/// peers are up.
pub const KEEPALIVE_SECS: u16 = 25;

/// What the host should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// WireGuard peers, by public key.
    pub peers: BTreeMap<String, PeerConfig>,
    /// Kernel routes through the interface (default routes excluded).
    pub routes: BTreeSet<String>,
    /// Default routes through the mesh (IPv4, IPv6): policy routing of their own.
    pub exit: (bool, bool),
    /// This node is an exit node: masquerade mesh traffic leaving by other interfaces.
    pub masquerade: bool,
    /// This node relays for others: IP forwarding on (never turned off again).
    pub forwarding: bool,
    /// The nftables ruleset for port-level ACLs (`None`: no table).
    pub filter: Option<String>,
}

impl Desired {
    /// What a peer plan (and the packet filter the ACLs ask for) means on this host.
    pub fn from_plan(plan: PeerPlan, my_zone: &str, filter: Option<String>) -> Desired {
        let all_routes: BTreeSet<String> = plan
            .peers
            .iter()
            .flat_map(|p| p.allowed_routes.iter().cloned())
            .collect();
        let exit = (
            all_routes
                .iter()
                .any(|r| peers::is_default_route(r) && !r.contains(':')),
            all_routes
                .iter()
                .any(|r| peers::is_default_route(r) && r.contains(':')),
        );
        Desired {
            peers: desired_peers(plan.peers, my_zone),
            routes: all_routes
                .into_iter()
                .filter(|r| !peers::is_default_route(r))
                .collect(),
            exit,
            masquerade: plan.exit,
            forwarding: plan.relays,
            filter,
        }
    }
}

/// What the interface should hold for `plan`, by public key.
pub fn desired_peers(plan: Vec<WireGuardPeer>, my_zone: &str) -> BTreeMap<String, PeerConfig> {
    plan.into_iter()
        .filter(|p| !p.public_key.is_empty())
        .map(|mut p| {
            let endpoint = peers::choose_endpoint(&p, my_zone);
            let mut allowed_ips = std::mem::take(&mut p.allowed_ips);
            // Plans come sorted; a join response's peers may not.
            if !allowed_ips.is_sorted() {
                allowed_ips.sort();
            }
            allowed_ips.dedup();
            (
                p.public_key.clone(),
                PeerConfig {
                    public_key: p.public_key,
                    endpoint,
                    allowed_ips,
                    keepalive: Some(KEEPALIVE_SECS),
                },
            )
        })
        .collect()
}

/// One change to the host, in the order a pass runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A peer the interface does not have.
    AddPeer(PeerConfig),
    /// A peer whose configuration changed (userspace WireGuard re-adds it, keeping the
    /// endpoint it roamed to).
    UpdatePeer(PeerConfig),
    RemovePeer(String),
    AddRoutes(Vec<String>),
    RemoveRoute(String),
    EnableForwarding,
    ExitRoute {
        ipv6: bool,
        on: bool,
    },
    Masquerade(bool),
    /// Install this nftables ruleset, or (`None`) remove the table.
    Filter(Option<String>),
}

/// What this node changed on the host beyond its interface, to undo on shutdown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostState {
    pub exit_v4: bool,
    pub exit_v6: bool,
    pub masquerade: bool,
    pub filter: bool,
}

/// What is applied on the host, as far as the reconciler knows.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Peers configured, by public key.
    pub applied: BTreeMap<String, PeerConfig>,
    routes: BTreeSet<String>,
    exit: (bool, bool),
    masquerade: bool,
    forwarding: bool,
    filter: Option<String>,
    /// Installing the filter failed: said once until it works or changes.
    filter_broken: Option<String>,
}

impl Reconciler {
    /// The actions that take the host from what is applied to `want`; none when it is
    /// there already.
    pub fn plan(&self, want: &Desired) -> Vec<Action> {
        let mut out = Vec::new();
        for (k, d) in &want.peers {
            match self.applied.get(k) {
                None => out.push(Action::AddPeer(d.clone())),
                Some(cur) if cur != d => out.push(Action::UpdatePeer(d.clone())),
                Some(_) => {}
            }
        }
        for k in self.applied.keys().filter(|k| !want.peers.contains_key(*k)) {
            out.push(Action::RemovePeer(k.clone()));
        }
        let new_routes: Vec<String> = want.routes.difference(&self.routes).cloned().collect();
        if !new_routes.is_empty() {
            out.push(Action::AddRoutes(new_routes));
        }
        for r in self.routes.difference(&want.routes) {
            out.push(Action::RemoveRoute(r.clone()));
        }
        if want.forwarding && !self.forwarding {
            out.push(Action::EnableForwarding);
        }
        for (ipv6, on, had) in [
            (false, want.exit.0, self.exit.0),
            (true, want.exit.1, self.exit.1),
        ] {
            if on != had {
                out.push(Action::ExitRoute { ipv6, on });
            }
        }
        if want.masquerade != self.masquerade {
            out.push(Action::Masquerade(want.masquerade));
        }
        // A broken filter is tried again only when what is wanted changes.
        let broken = want.filter.is_some() && want.filter == self.filter_broken;
        if want.filter != self.filter && !broken {
            out.push(Action::Filter(want.filter.clone()));
        }
        out
    }

    /// An action succeeded: it is now what the host holds.
    pub fn done(&mut self, a: Action) {
        match a {
            Action::AddPeer(p) | Action::UpdatePeer(p) => {
                self.applied.insert(p.public_key.clone(), p);
            }
            Action::RemovePeer(k) => {
                self.applied.remove(&k);
            }
            Action::AddRoutes(rs) => self.routes.extend(rs),
            Action::RemoveRoute(r) => {
                self.routes.remove(&r);
            }
            Action::EnableForwarding => self.forwarding = true,
            Action::ExitRoute { ipv6: false, on } => self.exit.0 = on,
            Action::ExitRoute { ipv6: true, on } => self.exit.1 = on,
            Action::Masquerade(on) => self.masquerade = on,
            Action::Filter(f) => {
                self.filter = f;
                self.filter_broken = None;
            }
        }
    }

    /// An action failed: what is applied stays as it was (so the next pass tries
    /// again), except that a filter that cannot be installed is not retried until the
    /// wanted ruleset changes, and one that cannot be removed counts as gone. Returns
    /// whether this failure is news (worth saying).
    pub fn failed(&mut self, a: &Action) -> bool {
        match a {
            Action::Filter(Some(f)) => {
                let news = self.filter_broken.as_ref() != Some(f);
                self.filter_broken = Some(f.clone());
                news
            }
            Action::Filter(None) => {
                self.filter = None;
                false
            }
            // A route that would not go away is forgotten: it is the kernel's now.
            Action::RemoveRoute(r) => {
                self.routes.remove(r);
                true
            }
            _ => true,
        }
    }

    /// Repairs from the live interface (public key → allowed IPs, sorted): a peer that
    /// differs from what we set is forgotten, an unknown one is marked stale, so the
    /// next pass sets or removes them.
    pub fn resync(&mut self, live: &BTreeMap<String, Vec<String>>) {
        self.applied
            .retain(|k, cfg| live.get(k).is_some_and(|ips| *ips == cfg.allowed_ips));
        for k in live.keys() {
            if !self.applied.contains_key(k) {
                self.applied.insert(
                    k.clone(),
                    PeerConfig {
                        public_key: k.clone(),
                        endpoint: None,
                        allowed_ips: vec!["stale".into()],
                        keepalive: None,
                    },
                );
            }
        }
    }

    /// What to undo on shutdown.
    pub fn host_state(&self) -> HostState {
        HostState {
            exit_v4: self.exit.0,
            exit_v6: self.exit.1,
            masquerade: self.masquerade,
            filter: self.filter.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: &str, ips: &[&str]) -> WireGuardPeer {
        WireGuardPeer {
            public_key: key.into(),
            allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
            wireguard_endpoints: vec!["10.1.0.2:51820".into()],
            ..Default::default()
        }
    }

    fn desired(peers: &[WireGuardPeer]) -> Desired {
        Desired {
            peers: desired_peers(peers.to_vec(), ""),
            ..Default::default()
        }
    }

    /// Runs a pass where every action succeeds.
    fn converge(r: &mut Reconciler, want: &Desired) -> Vec<Action> {
        let actions = r.plan(want);
        for a in actions.clone() {
            r.done(a);
        }
        actions
    }

    #[test]
    fn a_pass_adds_updates_and_removes_only_what_changed() {
        let mut r = Reconciler::default();
        let a = desired(&[peer("A", &["10.0.0.1/32"]), peer("B", &["10.0.0.2/32"])]);
        assert_eq!(converge(&mut r, &a).len(), 2);
        assert!(r.plan(&a).is_empty(), "no change, no work");
        let b = desired(&[
            peer("A", &["10.0.0.1/32", "10.0.0.3/32"]),
            peer("C", &["10.0.0.4/32"]),
        ]);
        let acts = r.plan(&b);
        assert!(matches!(&acts[0], Action::UpdatePeer(p) if p.public_key == "A"));
        assert!(matches!(&acts[1], Action::AddPeer(p) if p.public_key == "C"));
        assert_eq!(acts[2], Action::RemovePeer("B".into()));
        assert_eq!(b.peers["A"].endpoint.unwrap().to_string(), "10.1.0.2:51820");
        assert_eq!(b.peers["A"].keepalive, Some(KEEPALIVE_SECS));
    }

    #[test]
    fn a_failed_action_is_retried_and_the_rest_stands() {
        let mut r = Reconciler::default();
        let want = Desired {
            routes: ["192.168.1.0/24".to_string()].into(),
            exit: (true, false),
            masquerade: true,
            forwarding: true,
            ..desired(&[peer("A", &["10.0.0.1/32"]), peer("B", &["10.0.0.2/32"])])
        };
        let acts = r.plan(&want);
        // Peer B, the exit route and forwarding fail; the rest succeeds.
        for a in acts {
            let fails = matches!(&a, Action::AddPeer(p) if p.public_key == "B")
                || matches!(a, Action::ExitRoute { .. } | Action::EnableForwarding);
            if fails {
                assert!(r.failed(&a));
            } else {
                r.done(a);
            }
        }
        let retry = r.plan(&want);
        assert_eq!(retry.len(), 3, "{retry:?}");
        assert!(matches!(&retry[0], Action::AddPeer(p) if p.public_key == "B"));
        assert_eq!(retry[1], Action::EnableForwarding);
        assert_eq!(
            retry[2],
            Action::ExitRoute {
                ipv6: false,
                on: true
            }
        );
        assert_eq!(
            r.host_state(),
            HostState {
                masquerade: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_broken_filter_is_said_once_and_retried_when_the_rules_change() {
        let mut r = Reconciler::default();
        let want = |f: &str| Desired {
            filter: Some(f.into()),
            ..Default::default()
        };
        let acts = r.plan(&want("v1"));
        assert_eq!(acts, [Action::Filter(Some("v1".into()))]);
        assert!(r.failed(&acts[0]), "the first failure is news");
        assert!(
            r.plan(&want("v1")).is_empty(),
            "not retried for the same rules"
        );
        let acts = r.plan(&want("v2"));
        assert_eq!(acts, [Action::Filter(Some("v2".into()))]);
        r.done(acts[0].clone());
        assert!(r.host_state().filter);
        // A removal that fails counts as gone.
        let acts = r.plan(&Desired::default());
        assert_eq!(acts, [Action::Filter(None)]);
        assert!(!r.failed(&acts[0]));
        assert!(r.plan(&Desired::default()).is_empty());
    }

    #[test]
    fn resync_repairs_drift_from_the_live_interface() {
        let mut r = Reconciler::default();
        let want = desired(&[peer("A", &["10.0.0.1/32"]), peer("B", &["10.0.0.2/32"])]);
        converge(&mut r, &want);
        // Behind our back: A's allowed IPs changed, B vanished, X appeared.
        let live: BTreeMap<String, Vec<String>> = [
            ("A".to_string(), vec!["10.9.9.9/32".to_string()]),
            ("X".to_string(), vec!["10.0.0.7/32".to_string()]),
        ]
        .into();
        r.resync(&live);
        let acts = r.plan(&want);
        let kinds: Vec<String> = acts
            .iter()
            .map(|a| match a {
                Action::AddPeer(p) => format!("add {}", p.public_key),
                Action::UpdatePeer(p) => format!("update {}", p.public_key),
                Action::RemovePeer(k) => format!("remove {k}"),
                other => format!("{other:?}"),
            })
            .collect();
        // A is on the interface (with the wrong IPs): updated in place, keeping its
        // endpoint; B is set again; X, unknown to the state, goes.
        assert_eq!(kinds, ["update A", "add B", "remove X"]);
    }

    #[test]
    fn default_routes_become_exit_routing_not_kernel_routes() {
        let mut p = peer("A", &["10.0.0.1/32"]);
        p.allowed_routes = vec!["0.0.0.0/0".into(), "192.168.5.0/24".into()];
        let plan = PeerPlan {
            peers: vec![p],
            ..Default::default()
        };
        let d = Desired::from_plan(plan, "", None);
        assert_eq!(d.exit, (true, false));
        assert_eq!(d.routes, ["192.168.5.0/24".to_string()].into());
    }
}
