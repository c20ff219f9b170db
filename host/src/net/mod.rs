//! The mesh on the wire: the WireGuard interface and the task that keeps the host equal
//! to what the replicated state says. What to change is decided in [`reconciler`]
//! (sans IO); this shell computes the wanted state, runs the actions off the async
//! threads and reports each result back.

pub mod reconciler;
pub mod routing;
pub mod userspace;
pub mod wireguard;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{Instrument, debug, info, warn};
use webmesh_api::v1::WireGuardPeer;

use crate::mesh::peers::{self, PeerPlan};
use crate::raft::RaftNode;
use crate::raft::follow::ViewFollower;
pub use reconciler::KEEPALIVE_SECS;
use reconciler::{Action, Desired, HostState, Reconciler};
use wireguard::{Interface, PeerConfig};

/// A handle on the running peer manager.
pub struct MeshNet {
    pub iface: Arc<Interface>,
    /// The highest Raft index whose effect is on the interface.
    pub applied: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    host_state: Arc<std::sync::Mutex<HostState>>,
}

impl MeshNet {
    /// Starts keeping `iface` in line with the state. `initial` peers (from a join
    /// response) hold until the local replica has caught up with this node's record.
    pub fn spawn(
        iface: Arc<Interface>,
        raft: RaftNode,
        my_zone: String,
        initial: Vec<WireGuardPeer>,
        ice: Option<Arc<crate::ice::node::IceHub>>,
    ) -> MeshNet {
        let (tx, rx) = watch::channel(0);
        let follower = ViewFollower::new(&raft);
        let worker = Worker {
            iface: iface.clone(),
            me: raft.name.clone(),
            my_zone,
            state: Reconciler::default(),
            applied_tx: tx,
            peers_up: None,
            host_state: Default::default(),
            ice,
        };
        let host_state = worker.host_state.clone();
        let task = tokio::spawn(worker.run(follower, initial).in_current_span());
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
            && let Err(e) = routing::nft(&remove_filter_script(name))
        {
            warn!(error = %e, "cannot remove the packet filter");
        }
    }
}

/// Removes this interface's nftables table (declaring it first, so that removing a
/// table that is not there is not an error).
fn remove_filter_script(iface: &str) -> String {
    let t = crate::mesh::filter::table_name(iface);
    format!("table inet {t}\ndelete table inet {t}\n")
}

/// Turning the state into this host's plan costs O(mesh) — tens of milliseconds at
/// 10,000 nodes, paid by every node on a host — so after a render that computed for
/// `t`, changes wait up to `RENDER_PACE × t` (at most `MAX_RENDER_PAUSE`) and are then
/// rendered together: rendering takes at most a quarter of a node's time however fast
/// changes come, and a small mesh (microseconds per render) never waits.
const RENDER_PACE: u32 = 3;
const MAX_RENDER_PAUSE: Duration = Duration::from_millis(500);

struct Worker {
    iface: Arc<Interface>,
    me: String,
    my_zone: String,
    state: Reconciler,
    applied_tx: watch::Sender<u64>,
    peers_up: Option<(usize, usize)>,
    host_state: Arc<std::sync::Mutex<HostState>>,
    ice: Option<Arc<crate::ice::node::IceHub>>,
}

impl Worker {
    async fn run(mut self, mut follower: ViewFollower, initial: Vec<WireGuardPeer>) {
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
        if !follower.view.nodes.contains_key(&self.me) && !initial.is_empty() {
            let plan = PeerPlan {
                peers: initial,
                ..Default::default()
            };
            self.reconcile(Desired::from_plan(plan, &self.my_zone, None))
                .await;
        }
        let mut dirty = true;
        // Kept current from the view's changes: a change costs what it touches.
        let _ = follower.take_changes();
        let mut planner = peers::Planner::new(&follower.view, &self.me);
        // Paths coming up or going down change the plan (a pending future otherwise).
        let mut ice_changed = match &self.ice {
            Some(i) => i.subscribe(),
            None => watch::channel(0).1,
        };
        let mut resync = tokio::time::interval(Duration::from_secs(30));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        // Rendering waits until then (see `RENDER_PACE`).
        let mut not_before = Instant::now();
        loop {
            let started = Instant::now();
            let changes = follower.take_changes();
            let view = &follower.view;
            planner.update(view, &changes);
            let mine = view.nodes.contains_key(&self.me);
            if dirty && mine && started >= not_before {
                if let Some(ice) = &self.ice {
                    ice.sync(view, planner.ice_peers()).await;
                }
                let computing = Instant::now();
                let ice = self.ice.clone();
                let plan = planner.plan(view, &|p| ice.as_ref().is_some_and(|i| i.is_up(p)));
                let filter = crate::mesh::filter::ruleset(view, &self.me, &self.iface.name);
                let ice_peers: Vec<(String, String)> = (plan.peers.iter())
                    .filter(|p| p.ice)
                    .map(|p| (p.id.clone(), p.public_key.clone()))
                    .collect();
                let peer_count = plan.peers.len();
                let mut want = Desired::from_plan(plan, &self.my_zone, filter);
                // An ICE peer's WireGuard endpoint is its proxy port on the ICE socket.
                if let Some(ice) = &ice {
                    for (id, key) in &ice_peers {
                        if let Some(c) = want.peers.get_mut(key) {
                            c.endpoint = ice.proxy(id);
                        }
                    }
                }
                let computed = computing.elapsed();
                self.reconcile(want).await;
                let index = follower.index;
                debug!(index, peers = peer_count, took = ?started.elapsed(), ?computed, "peers applied");
                self.applied_tx.send_replace(index);
                dirty = false;
                not_before = Instant::now() + (computed * RENDER_PACE).min(MAX_RENDER_PAUSE);
            }
            let paced = dirty && mine;
            tokio::select! {
                () = tokio::time::sleep_until(not_before.into()), if paced => {}
                Ok(()) = ice_changed.changed() => dirty = true,
                changed = follower.next() => match changed {
                    Some(c) => dirty |= c,
                    None => return,
                },
                _ = resync.tick() => {
                    self.resync().await;
                    // From scratch now and then: a bound on what any increment missed.
                    planner = peers::Planner::new(&follower.view, &self.me);
                    dirty = true;
                }
                _ = progress.tick() => self.report_progress().await,
            }
        }
    }

    /// Brings the host to `want`: the reconciler's actions run off the async threads,
    /// and each one's result goes back to it.
    async fn reconcile(&mut self, want: Desired) {
        let actions = self.state.plan(&want);
        if actions.is_empty() {
            return;
        }
        let iface = self.iface.clone();
        let ran = tokio::task::spawn_blocking(move || {
            // Endpoints peers roamed to, for updates that must re-add a peer (a device
            // that cannot change a peer in place).
            let roamed = if !iface.updates_in_place()
                && actions.iter().any(|a| matches!(a, Action::UpdatePeer(_)))
            {
                iface.peer_stats().unwrap_or_default()
            } else {
                Default::default()
            };
            actions
                .into_iter()
                .map(|a| {
                    let r = run(&iface, &a, &roamed);
                    (a, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(results) = ran else { return };
        let mut configured = Vec::new();
        for (a, r) in results {
            match r {
                Ok(()) => {
                    say_done(&a);
                    if let Action::AddPeer(p) | Action::UpdatePeer(p) = &a {
                        configured.push(p.clone());
                    }
                    self.state.done(a);
                }
                Err(e) => {
                    if self.state.failed(&a) {
                        say_failed(&a, &e);
                    } else {
                        debug!(action = ?a, error = %e, "ignored failure");
                    }
                }
            }
        }
        *self.host_state.lock().unwrap_or_else(|p| p.into_inner()) = self.state.host_state();
        // New peers, and (userspace) re-added ones, have no session yet: handshake now.
        poke(&configured);
    }

    /// Re-reads the interface so a change made behind our back is repaired.
    async fn resync(&mut self) {
        let iface = self.iface.clone();
        let Ok(Ok(live)) = tokio::task::spawn_blocking(move || iface.peer_stats()).await else {
            return;
        };
        let live: BTreeMap<String, Vec<String>> = live
            .into_iter()
            .map(|(k, s)| {
                let mut ips = s.allowed_ips;
                ips.sort();
                (k, ips)
            })
            .collect();
        self.state.resync(&live);
    }

    /// Logs "peers up N/M" whenever it changes.
    async fn report_progress(&mut self) {
        let total = self.state.applied.len();
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
fn enable_ip_forwarding() -> Result<(), String> {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        std::fs::write(path, "1").map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// Runs one action on the host. Blocking.
fn run(
    iface: &Interface,
    a: &Action,
    roamed: &BTreeMap<String, wireguard::PeerStats>,
) -> Result<(), String> {
    let name = &iface.name;
    match a {
        Action::AddPeer(p) => iface.set_peer(p).map_err(|e| e.to_string()),
        Action::UpdatePeer(p) => iface
            .update_peer(p, roamed.get(&p.public_key).and_then(|s| s.endpoint))
            .map_err(|e| e.to_string()),
        Action::RemovePeer(k) => iface.remove_peer(k).map_err(|e| e.to_string()),
        Action::AddRoutes(rs) => iface.add_routes(rs).map_err(|e| e.to_string()),
        Action::RemoveRoute(r) => routing::remove_route(name, r),
        Action::EnableForwarding => enable_ip_forwarding(),
        Action::ExitRoute { ipv6, on } => routing::exit_route(name, *ipv6, *on),
        Action::Masquerade(on) => routing::masquerade(name, *on),
        Action::Filter(Some(rules)) => routing::nft(rules),
        Action::Filter(None) => routing::nft(&remove_filter_script(name)),
    }
}

fn say_done(a: &Action) {
    match a {
        Action::AddPeer(p) | Action::UpdatePeer(p) => {
            debug!(peer = %p.public_key, endpoint = ?p.endpoint, allowed_ips = ?p.allowed_ips, "peer set")
        }
        Action::RemovePeer(k) => debug!(peer = %k, "peer removed"),
        Action::AddRoutes(rs) => debug!(routes = ?rs, "routes added"),
        Action::RemoveRoute(r) => debug!(route = %r, "route removed"),
        Action::EnableForwarding => {
            info!("this node relays traffic between peers: IP forwarding on")
        }
        Action::ExitRoute { ipv6, on } => info!(ipv6, on, "default route through the mesh"),
        Action::Masquerade(on) => info!(
            on,
            "exit node: masquerading mesh traffic that leaves through other interfaces"
        ),
        Action::Filter(Some(_)) => info!("packet filter for port-level network ACLs in force"),
        Action::Filter(None) => info!("no port-level network ACLs: packet filter removed"),
    }
}

fn say_failed(a: &Action, e: &str) {
    match a {
        Action::AddPeer(p) | Action::UpdatePeer(p) => {
            warn!(peer = %p.public_key, error = %e, "cannot configure peer")
        }
        Action::RemovePeer(k) => warn!(peer = %k, error = %e, "cannot remove peer"),
        Action::AddRoutes(_) => warn!(error = %e, "cannot add routes"),
        Action::RemoveRoute(r) => warn!(route = %r, error = %e, "cannot remove a route"),
        Action::EnableForwarding => {
            warn!(error = %e, "cannot enable IP forwarding; this node cannot relay")
        }
        Action::ExitRoute { ipv6, .. } => {
            warn!(ipv6, error = %e, "cannot change the default route through the mesh")
        }
        Action::Masquerade(_) => warn!(
            error = %e,
            "exit node: cannot masquerade; hosts outside the mesh will not find their way back"
        ),
        Action::Filter(_) => warn!(
            error = %e,
            "network ACLs name protocols or ports, but this node cannot install its packet filter (nftables): those rules are NOT enforced here"
        ),
    }
}
