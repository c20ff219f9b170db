//! The mesh on the wire: the WireGuard interface and the task that keeps its peers equal
//! to what the replicated state says, applying each change as a diff.

pub mod routing;
pub mod wireguard;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, watch};
use tracing::{Instrument, debug, info, warn};
use webmesh_api::v1::WireGuardPeer;

use crate::mesh::peers::{self, PeerPlan};
use crate::mesh::view::Section;
use crate::raft::{RaftNode, StateEvent};
use crate::store::views::load_view;
use wireguard::{Interface, PeerConfig};

/// Every peer gets a keepalive: it holds NAT mappings open and lets a node see which
/// peers are up.
pub const KEEPALIVE_SECS: u16 = 25;

/// What the interface should hold for `plan`, by public key.
pub fn desired_peers(plan: &[WireGuardPeer], my_zone: &str) -> BTreeMap<String, PeerConfig> {
    plan.iter()
        .filter(|p| !p.public_key.is_empty())
        .map(|p| {
            let mut allowed_ips = p.allowed_ips.clone();
            allowed_ips.sort();
            allowed_ips.dedup();
            (
                p.public_key.clone(),
                PeerConfig {
                    public_key: p.public_key.clone(),
                    endpoint: peers::choose_endpoint(p, my_zone),
                    allowed_ips,
                    keepalive: Some(KEEPALIVE_SECS),
                },
            )
        })
        .collect()
}

/// The changes that turn `current` into `desired`: peers to add or update, and the
/// public keys to remove.
pub fn diff(
    current: &BTreeMap<String, PeerConfig>,
    desired: &BTreeMap<String, PeerConfig>,
) -> (Vec<PeerConfig>, Vec<String>) {
    let upserts = desired
        .iter()
        .filter(|(k, d)| current.get(*k) != Some(*d))
        .map(|(_, d)| d.clone())
        .collect();
    let removals = current
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    (upserts, removals)
}

/// A handle on the running peer manager.
pub struct MeshNet {
    pub iface: Arc<Interface>,
    /// The highest Raft index whose effect is on the interface.
    pub applied: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    host_state: Arc<std::sync::Mutex<HostState>>,
}

/// What this node changed on the host beyond its interface, to undo on shutdown.
#[derive(Debug, Default, Clone, Copy)]
struct HostState {
    exit_v4: bool,
    exit_v6: bool,
    masquerade: bool,
    filter: bool,
}

impl MeshNet {
    /// Starts keeping `iface` in line with the state. `initial` peers (from a join
    /// response) hold until the local replica has caught up with this node's record.
    pub fn spawn(
        iface: Arc<Interface>,
        raft: RaftNode,
        my_zone: String,
        initial: Vec<WireGuardPeer>,
    ) -> MeshNet {
        let (tx, rx) = watch::channel(0);
        let events = raft.subscribe();
        let worker = Worker {
            iface: iface.clone(),
            me: raft.name.clone(),
            my_zone,
            applied: BTreeMap::new(),
            routes: BTreeSet::new(),
            exit: (false, false),
            masquerading: false,
            forwarding: false,
            applied_tx: tx,
            peers_up: None,
            filter: None,
            filter_broken: false,
            host_state: Default::default(),
        };
        let host_state = worker.host_state.clone();
        let task = tokio::spawn(worker.run(raft, events, initial).in_current_span());
        MeshNet {
            iface,
            applied: rx,
            task,
            host_state,
        }
    }

    /// Stops following the state, and undoes what the node set up on the host besides
    /// its interface (exit routing, masquerade, packet filter). Blocking, best-effort.
    pub fn stop(&self) {
        self.task.abort();
        let st = *self.host_state.lock().unwrap_or_else(|p| p.into_inner());
        let name = &self.iface.name;
        for (v6, on) in [(false, st.exit_v4), (true, st.exit_v6)] {
            if on && let Err(e) = routing::exit_route(name, v6, false) {
                warn!(error = %e, "cannot remove the default route through the mesh");
            }
        }
        if st.masquerade
            && let Err(e) = routing::masquerade(name, false)
        {
            warn!(error = %e, "cannot remove the exit node's masquerade");
        }
        if st.filter
            && let Err(e) = routing::nft(&format!(
                "table inet {t}\ndelete table inet {t}\n",
                t = crate::mesh::filter::table_name(name)
            ))
        {
            warn!(error = %e, "cannot remove the packet filter");
        }
    }
}

struct Worker {
    iface: Arc<Interface>,
    me: String,
    my_zone: String,
    /// What we configured, by public key.
    applied: BTreeMap<String, PeerConfig>,
    routes: BTreeSet<String>,
    /// Default routes through the mesh in force (IPv4, IPv6), and this node's masquerade
    /// as an exit node.
    exit: (bool, bool),
    masquerading: bool,
    forwarding: bool,
    applied_tx: watch::Sender<u64>,
    peers_up: Option<(usize, usize)>,
    /// The nftables ruleset in force for port-level ACLs (`None`: no table).
    filter: Option<String>,
    /// `nft` failed: port-level ACLs cannot be enforced here (said once per change).
    filter_broken: bool,
    host_state: Arc<std::sync::Mutex<HostState>>,
}

impl Worker {
    async fn run(
        mut self,
        raft: RaftNode,
        mut events: broadcast::Receiver<StateEvent>,
        initial: Vec<WireGuardPeer>,
    ) {
        // Said at start-up, not only when an ACL needs it: an operator should know
        // before writing one.
        if !tokio::task::spawn_blocking(routing::nft_available)
            .await
            .unwrap_or(false)
        {
            warn!(
                "nft (nftables) is not available: network ACLs that name protocols or ports will NOT be enforced on this node"
            );
        }
        let mut view = load_view(&raft.engine);
        let mut index = raft.metrics().last_applied.map(|l| l.index).unwrap_or(0);
        if !view.nodes.contains_key(&self.me) && !initial.is_empty() {
            let plan = PeerPlan {
                peers: initial,
                ..Default::default()
            };
            self.reconcile(&plan).await;
        }
        let mut dirty = true;
        let mut resync = tokio::time::interval(Duration::from_secs(30));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        loop {
            if dirty && view.nodes.contains_key(&self.me) {
                let started = Instant::now();
                let plan = peers::compute(&view, &self.me);
                self.reconcile(&plan).await;
                self.apply_filter(crate::mesh::filter::ruleset(
                    &view,
                    &self.me,
                    &self.iface.name,
                ))
                .await;
                debug!(index, peers = plan.peers.len(), took = ?started.elapsed(), "peers applied");
                self.applied_tx.send_replace(index);
                dirty = false;
            }
            tokio::select! {
                ev = events.recv() => {
                    // Take every event already queued before recomputing once.
                    let mut next = Some(ev);
                    while let Some(ev) = next.take() {
                        match ev {
                            Ok(StateEvent::Applied { index: i, changes, .. }) => {
                                index = i;
                                for c in changes.iter() {
                                    let value = match c {
                                        crate::store::ops::Change::Put { value, .. } => Some(value.as_str()),
                                        crate::store::ops::Change::Delete { .. } => None,
                                    };
                                    match view.apply(c.key(), value) {
                                        Ok(Section::Other) => {}
                                        Ok(_) => dirty = true,
                                        Err(e) => warn!(error = %e, "skipping an undecodable record"),
                                    }
                                }
                            }
                            Ok(StateEvent::Reset { index: i }) => {
                                index = i;
                                view = load_view(&raft.engine);
                                dirty = true;
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                debug!(missed = n, "state events lagged; reloading");
                                view = load_view(&raft.engine);
                                index = raft.metrics().last_applied.map(|l| l.index).unwrap_or(index);
                                dirty = true;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                        next = match events.try_recv() {
                            Ok(e) => Some(Ok(e)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                            Err(_) => None,
                        };
                    }
                }
                _ = resync.tick() => {
                    self.resync().await;
                    dirty = true;
                }
                _ = progress.tick() => self.report_progress().await,
            }
        }
    }

    /// Applies `plan` to the interface as a diff.
    async fn reconcile(&mut self, plan: &PeerPlan) {
        let desired = desired_peers(&plan.peers, &self.my_zone);
        let (upserts, removals) = diff(&self.applied, &desired);
        let all_routes: BTreeSet<String> = plan
            .peers
            .iter()
            .flat_map(|p| p.allowed_routes.iter().cloned())
            .collect();
        // Default routes are policy routing of their own (see `routing::exit_route`).
        let exit = (
            all_routes
                .iter()
                .any(|r| peers::is_default_route(r) && !r.contains(':')),
            all_routes
                .iter()
                .any(|r| peers::is_default_route(r) && r.contains(':')),
        );
        let routes: BTreeSet<String> = all_routes
            .into_iter()
            .filter(|r| !peers::is_default_route(r))
            .collect();
        let new_routes: Vec<String> = routes.difference(&self.routes).cloned().collect();
        let stale_routes: Vec<String> = self.routes.difference(&routes).cloned().collect();
        let enable_forwarding = plan.relays && !self.forwarding;
        let exit_change = exit != self.exit;
        let nat_change = plan.exit != self.masquerading;
        if upserts.is_empty()
            && removals.is_empty()
            && new_routes.is_empty()
            && stale_routes.is_empty()
            && !enable_forwarding
            && !exit_change
            && !nat_change
        {
            return;
        }
        let old_exit = self.exit;
        let want_nat = plan.exit;
        let iface = self.iface.clone();
        let existing: BTreeSet<String> = upserts
            .iter()
            .filter(|p| self.applied.contains_key(&p.public_key))
            .map(|p| p.public_key.clone())
            .collect();
        let result = tokio::task::spawn_blocking(move || {
            let mut done_up = Vec::new();
            let mut done_rm = Vec::new();
            // Endpoints peers roamed to, for updates that must re-add a peer.
            let live = if existing.is_empty() {
                Default::default()
            } else {
                iface.peer_stats().unwrap_or_default()
            };
            for p in &upserts {
                let res = if existing.contains(&p.public_key) {
                    iface.update_peer(p, live.get(&p.public_key).and_then(|s| s.endpoint))
                } else {
                    iface.set_peer(p)
                };
                match res {
                    Ok(()) => done_up.push(p.clone()),
                    Err(e) => warn!(error = %e, "cannot configure peer"),
                }
            }
            for k in &removals {
                match iface.remove_peer(k) {
                    Ok(()) => done_rm.push(k.clone()),
                    Err(e) => warn!(error = %e, "cannot remove peer"),
                }
            }
            let routes_ok = match iface.add_routes(&new_routes) {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "cannot add routes");
                    false
                }
            };
            for r in &stale_routes {
                if let Err(e) = routing::remove_route(&iface.name, r) {
                    warn!(route = %r, error = %e, "cannot remove a route");
                }
            }
            let fwd_ok = enable_forwarding && enable_ip_forwarding();
            let mut exit_now = exit;
            for (v6, want, had) in [(false, exit.0, old_exit.0), (true, exit.1, old_exit.1)] {
                if want != had {
                    match routing::exit_route(&iface.name, v6, want) {
                        Ok(()) => info!(ipv6 = v6, on = want, "default route through the mesh"),
                        Err(e) => {
                            warn!(ipv6 = v6, error = %e, "cannot change the default route through the mesh");
                            if v6 { exit_now.1 = had } else { exit_now.0 = had }
                        }
                    }
                }
            }
            let nat_ok = nat_change
                && match routing::masquerade(&iface.name, want_nat) {
                    Ok(()) => {
                        info!(on = want_nat, "exit node: masquerading mesh traffic that leaves through other interfaces");
                        true
                    }
                    Err(e) => {
                        warn!(error = %e, "exit node: cannot masquerade; hosts outside the mesh will not find their way back");
                        false
                    }
                };
            (
                done_up,
                done_rm,
                routes_ok.then_some((new_routes, stale_routes)),
                fwd_ok,
                exit_now,
                nat_ok,
            )
        })
        .await;
        let Ok((done_up, done_rm, routes, fwd, exit_now, nat_ok)) = result else {
            return;
        };
        self.exit = exit_now;
        if nat_ok {
            self.masquerading = want_nat;
        }
        self.record_host_state();
        // New peers, and (userspace) re-added ones, have no session yet: handshake now.
        poke(&done_up);
        for p in done_up {
            debug!(peer = %p.public_key, endpoint = ?p.endpoint, allowed_ips = ?p.allowed_ips, "peer set");
            self.applied.insert(p.public_key.clone(), p);
        }
        for k in done_rm {
            debug!(peer = %k, "peer removed");
            self.applied.remove(&k);
        }
        if let Some((added, removed)) = routes {
            self.routes.extend(added);
            for r in removed {
                self.routes.remove(&r);
            }
        }
        if fwd {
            info!("this node relays traffic between peers: IP forwarding on");
            self.forwarding = true;
        }
    }

    fn record_host_state(&self) {
        *self.host_state.lock().unwrap_or_else(|p| p.into_inner()) = HostState {
            exit_v4: self.exit.0,
            exit_v6: self.exit.1,
            masquerade: self.masquerading,
            filter: self.filter.is_some(),
        };
    }

    /// Puts the packet filter for port-level ACLs in force (or removes it), through
    /// `nft`. Where that fails the node says so: such ACLs are then not enforced.
    async fn apply_filter(&mut self, want: Option<String>) {
        if want == self.filter {
            return;
        }
        let table = crate::mesh::filter::table_name(&self.iface.name);
        let script = match &want {
            Some(r) => r.clone(),
            None => format!("table inet {table}\ndelete table inet {table}\n"),
        };
        let run = tokio::task::spawn_blocking(move || routing::nft(&script));
        match run.await.unwrap_or_else(|e| Err(format!("nft: {e}"))) {
            Ok(()) => {
                match &want {
                    Some(_) => {
                        info!(table = %table, "packet filter for port-level network ACLs in force")
                    }
                    None => {
                        info!(table = %table, "no port-level network ACLs: packet filter removed")
                    }
                }
                self.filter = want;
                self.filter_broken = false;
                self.record_host_state();
            }
            Err(e) if want.is_some() => {
                if !self.filter_broken {
                    warn!(error = %e, "network ACLs name protocols or ports, but this node cannot install its packet filter (nftables): those rules are NOT enforced here");
                }
                self.filter_broken = true;
            }
            Err(e) => {
                debug!(error = %e, "removing the packet filter");
                self.filter = None;
            }
        }
    }

    /// Re-reads the interface so a change made behind our back is repaired.
    async fn resync(&mut self) {
        let iface = self.iface.clone();
        let Ok(Ok(live)) = tokio::task::spawn_blocking(move || iface.peer_stats()).await else {
            return;
        };
        self.applied.retain(|k, cfg| {
            live.get(k).is_some_and(|s| {
                let mut ips = s.allowed_ips.clone();
                ips.sort();
                ips == cfg.allowed_ips
            })
        });
        for k in live.keys() {
            if !self.applied.contains_key(k) {
                // Unknown to us: mark it so the next diff removes or re-sets it.
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

    /// Logs "peers up N/M" whenever it changes.
    async fn report_progress(&mut self) {
        let total = self.applied.len();
        if total == 0 && self.peers_up.is_none() {
            return;
        }
        let iface = self.iface.clone();
        let Ok(Ok(live)) = tokio::task::spawn_blocking(move || iface.peer_stats()).await else {
            return;
        };
        let now = SystemTime::now();
        let up = live
            .values()
            .filter(|s| {
                s.last_handshake.is_some_and(|t| {
                    now.duration_since(t).unwrap_or_default() < Duration::from_secs(180)
                })
            })
            .count();
        if self.peers_up != Some((up, total)) {
            info!("peers up {up}/{total}");
            self.peers_up = Some((up, total));
        }
    }
}

/// Sends one datagram towards each (re)configured peer's mesh address, so WireGuard handshakes
/// now rather than when traffic first needs the tunnel: a peer that came up after our
/// first handshake attempt would otherwise wait for the 5 s rekey timeout.
fn poke(peers: &[PeerConfig]) {
    let targets: Vec<std::net::SocketAddr> = peers
        .iter()
        .filter_map(|p| {
            p.allowed_ips
                .iter()
                .find_map(|c| c.parse::<ipnet::IpNet>().ok())
        })
        .map(|net| std::net::SocketAddr::new(net.addr(), 9))
        .collect();
    if targets.is_empty() {
        return;
    }
    for t in targets {
        let bind = if t.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        if let Ok(sock) = std::net::UdpSocket::bind(bind) {
            // Port 9 (discard): the payload is dropped; only the handshake matters.
            let _ = sock.send_to(b"webmesh", t);
        }
    }
}

/// Turns on IPv4 and IPv6 forwarding (in this network namespace).
fn enable_ip_forwarding() -> bool {
    let mut ok = true;
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        if let Err(e) = std::fs::write(path, "1") {
            warn!(path, error = %e, "cannot enable IP forwarding; this node cannot relay");
            ok = false;
        }
    }
    ok
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

    #[test]
    fn diff_adds_updates_and_removes_only_what_changed() {
        let a = desired_peers(
            &[peer("A", &["10.0.0.1/32"]), peer("B", &["10.0.0.2/32"])],
            "",
        );
        let (up, rm) = diff(&BTreeMap::new(), &a);
        assert_eq!(up.len(), 2);
        assert!(rm.is_empty());
        let (up, rm) = diff(&a, &a);
        assert!(up.is_empty() && rm.is_empty(), "no change, no work");
        let b = desired_peers(
            &[
                peer("A", &["10.0.0.1/32", "10.0.0.3/32"]),
                peer("C", &["10.0.0.4/32"]),
            ],
            "",
        );
        let (up, rm) = diff(&a, &b);
        let keys: Vec<&str> = up.iter().map(|p| p.public_key.as_str()).collect();
        assert_eq!(keys, ["A", "C"]);
        assert_eq!(rm, ["B"]);
        assert_eq!(b["A"].endpoint.unwrap().to_string(), "10.1.0.2:51820");
        assert_eq!(b["A"].keepalive, Some(KEEPALIVE_SECS));
    }
}
