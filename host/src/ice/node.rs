//! The node's ICE: which peers get an ICE path (the peer manager says, from the ICE
//! edges), the signalling that reaches them over `Node.NegotiateDataChannel`, TURN
//! credentials from the members that run a TURN server, and what Status reports.
//!
//! Signalling: the side with the lower node ID controls. It keeps one stream per peer
//! open to a node that can reach the peer — the peer itself when it has a primary
//! endpoint, else a public member with an edge to the peer — which relays the stream
//! to the peer. It restarts ICE (a new offer) when the path is lost, when none is
//! found in time, and now and then while the path is relayed, to upgrade to a direct
//! one when the NATs allow it. Relays check that the two ends share an ICE edge;
//! the peer accepts signals only for a peer it has an ICE edge with.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info, warn};
use webmesh_api::v1::DataChannelNegotiation;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_client::proof::Signer;
use webmesh_client::signing::Signed;

use super::path::{Kind, Selected};
use super::shell::{Ice, Note, TurnServer};
use super::signal::{self, Incoming};
use crate::mesh::view::MeshView;
use crate::mesh::{keys, membership, peers};
use crate::raft::RaftNode;

/// No path this long after an offer: offer again (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_secs(3);
/// How long an offer waits for the TURN allocations (its relayed and reflexive
/// candidates) before it goes without them.
const GATHER_WITHIN: Duration = Duration::from_secs(3);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A relayed path tries for a direct one this often.
pub const UPGRADE_EVERY: Duration = Duration::from_secs(20);
/// Streams this node relays for others at once.
const MAX_RELAYED: usize = 256;
/// Messages queued per stream direction.
const QUEUE: usize = 64;
/// Data channel sessions this node runs at once.
pub const MAX_SESSIONS: usize = 64;
/// TURN credentials are fetched again this long before they expire.
const CREDS_EARLY: Duration = Duration::from_secs(600);

/// How a peer is reached, for Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathReport {
    Direct(SocketAddr),
    Relayed(SocketAddr),
    /// No ICE path (yet): through the mesh, as before the edge.
    MeshRelay,
}

impl std::fmt::Display for PathReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathReport::Direct(a) => write!(f, "direct:{a}"),
            PathReport::Relayed(a) => write!(f, "relayed:{a}"),
            PathReport::MeshRelay => f.write_str("mesh-relay"),
        }
    }
}

struct PeerState {
    controlling: bool,
    proxy: SocketAddr,
    /// Where signals for the peer go now, and which stream that is.
    outbound: Option<(u64, mpsc::Sender<DataChannelNegotiation>)>,
    kick: Arc<Notify>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    /// The node to open the stream to, and its API address.
    via: Option<(String, String)>,
    selected: Option<Selected>,
}

#[derive(Default)]
struct State {
    peers: HashMap<String, PeerState>,
    up: HashSet<String>,
    next_stream: u64,
    relayed: usize,
    sessions: usize,
}

/// The node's ICE.
pub struct IceHub {
    me: String,
    ice: Ice,
    state: Mutex<State>,
    raft: RaftNode,
    signer: Arc<Signer>,
    dialer: crate::tls::Dialer,
    /// Bumped when the set of peers with a path up changes (the peer manager re-plans).
    changed: watch::Sender<u64>,
    /// Where WireGuard listens (the proxies send to it).
    wireguard: SocketAddr,
    /// TURN servers the state names (known once the first look at them is done).
    turn_servers: watch::Sender<Option<usize>>,
}

/// What the hub runs with.
pub struct HubConfig {
    pub me: String,
    /// The ICE socket's address (a specific IP: the host candidate).
    pub listen: SocketAddr,
    /// The socket our own WireGuard device bound and shares (else the task binds it).
    pub datapath: Option<Arc<super::datapath::Datapath>>,
    /// WireGuard's port on this host.
    pub wireguard_port: u16,
    pub raft: RaftNode,
    /// Signs the calls to other members.
    pub signer: Arc<Signer>,
    pub dialer: crate::tls::Dialer,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IceHub {
    /// Starts the ICE socket at `c.listen` and the tasks around it; they end with `stop`.
    pub async fn start(
        c: HubConfig,
        stop: watch::Receiver<bool>,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<Arc<IceHub>, super::shell::IceError> {
        let HubConfig {
            me,
            listen,
            datapath,
            wireguard_port,
            raft,
            signer,
            dialer,
        } = c;
        let (notes_tx, notes) = mpsc::channel(1024);
        let (ice, task) = super::shell::spawn(listen, datapath, notes_tx, stop).await?;
        info!(addr = %ice.addr, "ICE socket");
        tasks.push(task);
        let hub = Arc::new(IceHub {
            me,
            ice,
            state: Mutex::new(State::default()),
            raft,
            signer,
            dialer,
            changed: watch::channel(0).0,
            wireguard: SocketAddr::from(([127, 0, 0, 1], wireguard_port)),
            turn_servers: watch::channel(None).0,
        });
        tasks.push(tokio::spawn(hub.clone().notes(notes).in_current_span()));
        tasks.push(tokio::spawn(
            hub.clone().turn_credentials().in_current_span(),
        ));
        Ok(hub)
    }

    /// Bumped whenever a peer's path comes up or goes down.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether `peer`'s ICE path is up (WireGuard may use it).
    pub fn is_up(&self, peer: &str) -> bool {
        lock(&self.state).up.contains(peer)
    }

    /// The proxy WireGuard must use as `peer`'s endpoint.
    pub fn proxy(&self, peer: &str) -> Option<SocketAddr> {
        lock(&self.state).peers.get(peer).map(|p| p.proxy)
    }

    /// The ICE peers the state gives this node now (from the peer manager): starts
    /// what is new, stops what is gone, and notes where each one's signals go.
    pub async fn sync(self: &Arc<Self>, view: &MeshView, wanted: Vec<String>) {
        let gone: Vec<String> = {
            let st = lock(&self.state);
            st.peers
                .keys()
                .filter(|p| !wanted.contains(p))
                .cloned()
                .collect()
        };
        for p in gone {
            let removed = lock(&self.state).peers.remove(&p);
            if let Some(s) = removed {
                if let Some(k) = s.keeper {
                    k.abort();
                }
                let _ = self.ice.remove_peer(&p).await;
                if lock(&self.state).up.remove(&p) {
                    self.changed.send_modify(|v| *v += 1);
                }
            }
        }
        for p in wanted {
            let via = signal_via(view, &self.me, &p);
            if let Some(s) = lock(&self.state).peers.get_mut(&p) {
                s.via = via;
                continue;
            }
            let controlling = self.me < p;
            let proxy = match self.ice.add_peer(&p, controlling, self.wireguard).await {
                Ok(a) => a,
                Err(e) => {
                    warn!(peer = %p, error = %e, "cannot start ICE");
                    continue;
                }
            };
            let kick = Arc::new(Notify::new());
            let keeper = controlling.then(|| {
                tokio::spawn(self.clone().keep(p.clone(), kick.clone()).in_current_span())
            });
            lock(&self.state).peers.insert(
                p,
                PeerState {
                    controlling,
                    proxy,
                    outbound: None,
                    kick,
                    keeper,
                    via,
                    selected: None,
                },
            );
        }
    }

    /// Every ICE peer's path, for Status.
    pub fn paths(&self) -> Vec<(String, PathReport)> {
        let st = lock(&self.state);
        let mut out: Vec<(String, PathReport)> = st
            .peers
            .iter()
            .map(|(id, p)| {
                let r = match (st.up.contains(id), p.selected) {
                    (true, Some(s)) if s.kind == Kind::Direct => PathReport::Direct(s.remote),
                    (true, Some(s)) => PathReport::Relayed(s.remote),
                    _ => PathReport::MeshRelay,
                };
                (id.clone(), r)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// What the ICE task says: signals out to the peer's stream, paths up and down.
    async fn notes(self: Arc<Self>, mut notes: mpsc::Receiver<Note>) {
        while let Some(n) = notes.recv().await {
            match n {
                Note::Signal { peer, signal } => {
                    let st = lock(&self.state);
                    if let Some(p) = st.peers.get(&peer)
                        && let Some((_, tx)) = &p.outbound
                    {
                        // A full queue drops: a restart sends everything again.
                        let _ = tx.try_send(signal::to_message(&signal, p.controlling));
                    }
                }
                Note::Path { peer, selected } => {
                    let mut st = lock(&self.state);
                    if let Some(p) = st.peers.get_mut(&peer) {
                        p.selected = Some(selected);
                        if st.up.insert(peer) {
                            self.changed.send_modify(|v| *v += 1);
                        }
                    }
                }
                Note::Lost { peer } => {
                    let mut st = lock(&self.state);
                    if st.up.remove(&peer) {
                        self.changed.send_modify(|v| *v += 1);
                    }
                    if let Some(p) = st.peers.get(&peer) {
                        p.kick.notify_one();
                    }
                }
            }
        }
    }

    fn register(&self, peer: &str, tx: mpsc::Sender<DataChannelNegotiation>) -> Option<u64> {
        let mut st = lock(&self.state);
        st.next_stream += 1;
        let n = st.next_stream;
        let p = st.peers.get_mut(peer)?;
        p.outbound = Some((n, tx));
        Some(n)
    }

    fn unregister(&self, peer: &str, n: u64) {
        let mut st = lock(&self.state);
        if let Some(p) = st.peers.get_mut(peer)
            && p.outbound.as_ref().is_some_and(|(m, _)| *m == n)
        {
            p.outbound = None;
        }
    }

    fn client(&self, addr: &str) -> Result<NodeClient<Signed<Channel>>, String> {
        let ch = self.dialer.channel(addr, Some(Duration::from_secs(5)))?;
        Ok(NodeClient::new(Signed::new(ch, self.signer.clone())))
    }

    /// The controlling side's stream to `peer`, kept open; ICE restarted as needed.
    async fn keep(self: Arc<Self>, peer: String, kick: Arc<Notify>) {
        // Quick retries at first: the peer may not have applied our edge yet.
        const FIRST: Duration = Duration::from_millis(250);
        let mut backoff = FIRST;
        loop {
            let via = lock(&self.state)
                .peers
                .get(&peer)
                .and_then(|p| p.via.clone());
            let started = Instant::now();
            match via {
                Some((via_id, addr)) => {
                    if let Err(e) = self.negotiate(&peer, &addr, &kick).await {
                        debug!(%peer, via = %via_id, error = %e, "ICE signalling stream ended");
                    }
                }
                None => debug!(%peer, "no node can relay ICE signals to this peer yet"),
            }
            backoff = if started.elapsed() > Duration::from_secs(30) {
                FIRST
            } else {
                (backoff * 2).min(Duration::from_secs(8))
            };
            tokio::time::sleep(backoff).await;
        }
    }

    /// Waits (a little) until the TURN allocations stand, so that an offer carries
    /// every candidate: trickled ones come late to a peer's checks.
    async fn gathered(&self) {
        let mut servers = self.turn_servers.subscribe();
        let mut relays = self.ice.relays.clone();
        let _ = tokio::time::timeout(GATHER_WITHIN, async {
            let Ok(n) = servers.wait_for(|n| n.is_some()).await.map(|n| *n) else {
                return;
            };
            if n != Some(0) {
                let _ = relays.wait_for(|r| *r > 0).await;
            }
        })
        .await;
    }

    async fn negotiate(&self, peer: &str, addr: &str, kick: &Notify) -> Result<(), String> {
        self.gathered().await;
        let mut client = self.client(addr)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.try_send(DataChannelNegotiation {
            proto: signal::WIREGUARD_PROTO.into(),
            src: self.me.clone(),
            dst: peer.into(),
            port: 0,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        let n = self
            .register(peer, tx)
            .ok_or("the peer is no ICE peer any more")?;
        let result = async {
            // Offer, then whatever the agent gathers.
            self.ice.restart(peer).await.map_err(|e| e.to_string())?;
            let mut inbound = client
                .negotiate_data_channel(ReceiverStream::new(rx))
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let mut offered = Instant::now();
            let mut retry = FIRST_RETRY;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(m)) => match signal::from_message(&m) {
                            Ok(Incoming::Answer(s) | Incoming::Candidate(s)) => {
                                self.ice.signal(peer, s).await.map_err(|e| e.to_string())?;
                            }
                            Ok(_) => {}
                            Err(e) => return Err(format!("the peer sent {e}")),
                        },
                        Ok(None) => return Ok(()),
                        Err(s) => return Err(s.message().to_string()),
                    },
                    _ = kick.notified() => {
                        info!(%peer, "ICE path lost: restarting");
                        self.ice.restart(peer).await.map_err(|e| e.to_string())?;
                        offered = Instant::now();
                    }
                    _ = tick.tick() => {
                        let (up, kind) = {
                            let st = lock(&self.state);
                            (st.up.contains(peer), st.peers.get(peer).and_then(|p| p.selected).map(|s| s.kind))
                        };
                        let since = offered.elapsed();
                        let again = match (up, kind) {
                            (false, _) if since >= retry => {
                                retry = (retry * 2).min(MAX_RETRY);
                                true
                            }
                            (true, Some(Kind::Relayed)) if since >= UPGRADE_EVERY => true,
                            (true, _) => {
                                retry = FIRST_RETRY;
                                false
                            }
                            _ => false,
                        };
                        if again {
                            debug!(%peer, up, "ICE restart");
                            self.ice.restart(peer).await.map_err(|e| e.to_string())?;
                            offered = Instant::now();
                        }
                    }
                }
            }
        }
        .await;
        self.unregister(peer, n);
        result
    }

    /// A `NegotiateDataChannel` stream for a WireGuard path, from `caller` (a member
    /// that proved its key). Answered here when it is for this node; relayed to the
    /// destination otherwise.
    pub async fn accept(
        self: &Arc<Self>,
        caller: &str,
        first: DataChannelNegotiation,
        inbound: Streaming<DataChannelNegotiation>,
    ) -> Result<NegotiationStream, Status> {
        if first.proto != signal::WIREGUARD_PROTO || first.port != 0 {
            return Err(Status::invalid_argument(format!(
                "proto/port: a WireGuard path's negotiation has proto \"wireguard\" and port \
                 0, not {:?} port {}",
                first.proto, first.port
            )));
        }
        crate::mesh::ids::validate_node_id(&first.dst)
            .map_err(|why| Status::invalid_argument(format!("dst: {why}")))?;
        if first.dst != self.me {
            return self.relay(caller, first, inbound).await;
        }
        // The caller itself, or a member relaying for `src`.
        let src = if first.src.is_empty() {
            caller.to_string()
        } else {
            first.src.clone()
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let controlling = {
            let st = lock(&self.state);
            match st.peers.get(&src) {
                Some(p) => p.controlling,
                None if self.ice_edge(&src, &self.me) => {
                    return Err(Status::unavailable(format!(
                        "{} has not applied its ICE edge with {src:?} yet; retry",
                        self.me
                    )));
                }
                None => {
                    return Err(Status::permission_denied(format!(
                        "src: {src:?} has no ICE edge with {}",
                        self.me
                    )));
                }
            }
        };
        if controlling {
            return Err(Status::failed_precondition(format!(
                "{} starts ICE with {src}: the lower node ID offers",
                self.me
            )));
        }
        let n = self.register(&src, tx).ok_or_else(|| {
            Status::permission_denied(format!("src: {src:?} has no ICE edge with {}", self.me))
        })?;
        let hub = self.clone();
        tokio::spawn(
            async move {
                let mut inbound = inbound;
                while let Ok(Some(m)) = inbound.message().await {
                    let step = match signal::from_message(&m) {
                        // A new offer restarts: our fresh credentials go back as the answer.
                        Ok(Incoming::Offer(s)) => match hub.ice.restart(&src).await {
                            Ok(()) => hub.ice.signal(&src, s).await,
                            Err(e) => Err(e),
                        },
                        Ok(Incoming::Candidate(s)) => hub.ice.signal(&src, s).await,
                        Ok(_) => Ok(()),
                        Err(e) => {
                            debug!(peer = %src, error = %e, "bad ICE signal");
                            break;
                        }
                    };
                    if step.is_err() {
                        break;
                    }
                }
                hub.unregister(&src, n);
            }
            .in_current_span(),
        );
        Ok(Box::pin(futures::StreamExt::map(
            ReceiverStream::new(rx),
            Ok,
        )))
    }

    /// Whether the state has an ICE edge between `a` and `b`.
    fn ice_edge(&self, a: &str, b: &str) -> bool {
        let (s, t) = crate::mesh::view::edge_key(a, b);
        self.raft
            .engine
            .get(&keys::edge(&s, &t))
            .ok()
            .flatten()
            .and_then(|e| serde_json::from_str::<webmesh_api::v1::MeshEdge>(&e.value).ok())
            .is_some_and(|e| peers::is_ice_edge(&e))
    }

    /// Relays a stream between two members that share an ICE edge.
    async fn relay(
        self: &Arc<Self>,
        caller: &str,
        mut first: DataChannelNegotiation,
        inbound: Streaming<DataChannelNegotiation>,
    ) -> Result<NegotiationStream, Status> {
        let dst = first.dst.clone();
        if !self.ice_edge(caller, &dst) {
            return Err(Status::permission_denied(format!(
                "dst: node {caller} has no ICE edge with {dst:?}"
            )));
        }
        let node = self
            .raft
            .engine
            .get(&keys::node(&dst))
            .map_err(|e| Status::internal(e.to_string()))?
            .and_then(|e| serde_json::from_str::<webmesh_api::v1::MeshNode>(&e.value).ok())
            .ok_or_else(|| Status::not_found(format!("dst: no node {dst:?}")))?;
        let addr = membership::mesh_api_addr(&node);
        let release = self.slot(|s| &mut s.relayed, MAX_RELAYED).map_err(|_| {
            Status::resource_exhausted(format!(
                "this node relays {MAX_RELAYED} ICE negotiations already; try another"
            ))
        })?;
        first.src = caller.to_string();
        let mut client = self
            .client(&addr)
            .map_err(|e| Status::unavailable(format!("dst: {dst} at {addr}: {e}")))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(first);
        let out = client
            .negotiate_data_channel(ReceiverStream::new(rx))
            .await
            .map_err(|s| Status::new(s.code(), format!("dst: {dst} at {addr}: {}", s.message())))?
            .into_inner();
        tokio::spawn(
            async move {
                let _release = release;
                let mut inbound = inbound;
                while let Ok(Some(m)) = inbound.message().await {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        Ok(Box::pin(out))
    }

    /// A data channel for a client (its rights checked by the node it called):
    /// `opening` says to what (`proto`, `dst`, `port`); the session runs here when
    /// `node` is this node, else on `node`, through a NegotiateDataChannel stream.
    pub fn data_channel(
        self: Arc<Self>,
        node: String,
        opening: DataChannelNegotiation,
        inbound: Inbound,
    ) -> futures::future::BoxFuture<'static, Result<NegotiationStream, Status>> {
        Box::pin(async move {
            if node != self.me {
                self.relay_data_channel(&node, opening, inbound).await
            } else {
                self.local_data_channel(opening, inbound).await
            }
        })
    }

    async fn local_data_channel(
        self: Arc<Self>,
        opening: DataChannelNegotiation,
        inbound: Inbound,
    ) -> Result<NegotiationStream, Status> {
        let target = crate::datachannel::target(
            &opening.proto,
            &opening.dst,
            opening.port,
            self.wireguard.port(),
        )
        .map_err(Status::invalid_argument)?;
        let slot = self.slot(|s| &mut s.sessions, MAX_SESSIONS).map_err(|_| {
            Status::resource_exhausted(format!(
                "this node runs {MAX_SESSIONS} data channel sessions already"
            ))
        })?;
        let session = crate::datachannel::open(self.ice.addr.ip(), target, slot)
            .await
            .map_err(Status::unavailable)?;
        info!(%target, client = %opening.src, "data channel offered");
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(Ok(DataChannelNegotiation {
            offer: session.offer,
            ..Default::default()
        }));
        let signals = session.signals;
        tokio::spawn(
            async move {
                // The response stream lasts as long as the client's side of it.
                let _tx = tx;
                let mut inbound = inbound;
                while let Some(Ok(m)) = futures::StreamExt::next(&mut inbound).await {
                    use crate::datachannel::Signal;
                    let s = if !m.answer.is_empty() {
                        Signal::Answer(m.answer)
                    } else if !m.candidate.is_empty() {
                        Signal::Candidate(m.candidate)
                    } else {
                        continue;
                    };
                    if signals.send(s).await.is_err() {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn relay_data_channel(
        &self,
        node: &str,
        opening: DataChannelNegotiation,
        inbound: Inbound,
    ) -> Result<NegotiationStream, Status> {
        let record = self
            .raft
            .engine
            .get(&keys::node(node))
            .map_err(|e| Status::internal(e.to_string()))?
            .and_then(|e| serde_json::from_str::<webmesh_api::v1::MeshNode>(&e.value).ok())
            .ok_or_else(|| Status::not_found(format!("node_id: no node {node:?} in this mesh")))?;
        if !membership::negotiates_ice(&record) {
            return Err(Status::failed_precondition(format!(
                "node_id: node {node} does not run data channels (it runs without --ice)"
            )));
        }
        let addr = membership::mesh_api_addr(&record);
        let mut client = self
            .client(&addr)
            .map_err(|e| Status::unavailable(format!("node {node} at {addr}: {e}")))?;
        // The opening, then what the client sends, fed by a task of its own.
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(opening);
        tokio::spawn(async move {
            let mut inbound = inbound;
            while let Some(Ok(m)) = inbound.next().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let outbound = ReceiverStream::new(rx);
        let out = client
            .negotiate_data_channel(outbound)
            .await
            .map_err(|s| Status::new(s.code(), format!("node {node}: {}", s.message())))?
            .into_inner();
        Ok(Box::pin(out))
    }

    /// Keeps TURN credentials from the members that run a TURN server (up to
    /// [`super::shell::MAX_TURN_SERVERS`]) and hands them to the ICE task.
    async fn turn_credentials(self: Arc<Self>) {
        let mut have: HashMap<String, (TurnServer, Instant)> = HashMap::new();
        let mut last: Vec<TurnServer> = Vec::new();
        loop {
            let view = crate::store::views::load_view(&self.raft.engine);
            let mut servers: Vec<&webmesh_api::v1::MeshNode> = view
                .nodes
                .values()
                .filter(|n| {
                    n.id != self.me
                        && n.features
                            .contains(&(webmesh_api::v1::Feature::TurnServer as i32))
                })
                .collect();
            let named = servers.len();
            servers.truncate(super::shell::MAX_TURN_SERVERS);
            have.retain(|id, (_, renew)| {
                servers.iter().any(|n| n.id == *id) && *renew > Instant::now()
            });
            for n in servers {
                if have.contains_key(&n.id) {
                    continue;
                }
                match self.fetch_turn(n).await {
                    Ok(got) => {
                        have.insert(n.id.clone(), got);
                    }
                    Err(e) => debug!(server = %n.id, error = %e, "no TURN credentials"),
                }
            }
            // None answered yet: unknown while there is hope, so offers wait a little.
            let known = if named == 0 || !have.is_empty() {
                Some(have.len())
            } else {
                None
            };
            self.turn_servers
                .send_if_modified(|k| std::mem::replace(k, known) != known);
            let mut now: Vec<TurnServer> = have.values().map(|(s, _)| s.clone()).collect();
            now.sort_by_key(|s| s.addr);
            if now != last {
                let _ = self.ice.set_turn_servers(now.clone()).await;
                last = now;
            }
            // Often while none answered (a new node's tunnel to them is coming up),
            // then now and then.
            let wait = if have.is_empty() {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(60)
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn fetch_turn(
        &self,
        n: &webmesh_api::v1::MeshNode,
    ) -> Result<(TurnServer, Instant), String> {
        use webmesh_api::internal::TurnCredentialsRequest;
        use webmesh_api::internal::turn_client::TurnClient;
        let addr = membership::mesh_api_addr(n);
        let ch = self.dialer.channel(&addr, Some(Duration::from_secs(5)))?;
        let r = TurnClient::new(Signed::new(ch, self.signer.clone()))
            .credentials(TurnCredentialsRequest {})
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let server = r
            .urls
            .iter()
            .find_map(|u| turn_url_addr(u))
            .ok_or_else(|| format!("no usable turn: URL in {:?}", r.urls))?;
        let now = crate::turn::unix_now();
        let left = Duration::from_secs(r.expires.saturating_sub(now));
        Ok((
            TurnServer {
                addr: server,
                username: r.username,
                password: r.password,
            },
            Instant::now() + left.saturating_sub(CREDS_EARLY),
        ))
    }
}

/// One of a bounded number of things (relayed streams, data channel sessions), given
/// back when dropped.
struct Slot {
    hub: Arc<IceHub>,
    count: fn(&mut State) -> &mut usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = lock(&self.hub.state);
        let c = (self.count)(&mut st);
        *c = c.saturating_sub(1);
    }
}

impl IceHub {
    /// Takes a slot of `count` if fewer than `max` are taken.
    fn slot(self: &Arc<Self>, count: fn(&mut State) -> &mut usize, max: usize) -> Result<Slot, ()> {
        let mut st = lock(&self.state);
        let c = count(&mut st);
        if *c >= max {
            return Err(());
        }
        *c += 1;
        Ok(Slot {
            hub: self.clone(),
            count,
        })
    }
}

/// What a client sends after the opening of a data channel's negotiation.
pub type Inbound =
    std::pin::Pin<Box<dyn Stream<Item = Result<DataChannelNegotiation, Status>> + Send>>;

pub type NegotiationStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<DataChannelNegotiation, Status>> + Send + 'static>>;

/// The address in `turn:HOST:PORT?transport=udp` (HOST an IP; IPv6 in brackets).
pub fn turn_url_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !query.is_empty() && query != "transport=udp" {
        return None;
    }
    hostport.parse().ok().or_else(|| {
        hostport
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 3478))
    })
}

/// Which node carries `me`'s ICE signals to `peer`: the peer itself when it has a
/// primary endpoint; else a public member that negotiates ICE and has a plain edge to
/// the peer, one that has one to `me` too first, the smallest ID among equals.
/// Returns its ID and API address.
pub fn signal_via(view: &MeshView, me: &str, peer: &str) -> Option<(String, String)> {
    let node = view.nodes.get(peer)?;
    let addr = |n: &webmesh_api::v1::MeshNode| membership::mesh_api_addr(n);
    if !node.primary_endpoint.is_empty() {
        return Some((peer.to_string(), addr(node)));
    }
    let plain = |a: &str, b: &str| {
        view.edges
            .get(&crate::mesh::view::edge_key(a, b))
            .is_some_and(|e| !peers::is_ice_edge(e))
    };
    view.public_nodes()
        .filter(|n| n.id != me && membership::negotiates_ice(n) && plain(&n.id, peer))
        .min_by_key(|n| (!plain(&n.id, me), n.id.clone()))
        .map(|n| (n.id.clone(), addr(n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::{Feature, MeshEdge, MeshNode};

    #[test]
    fn turn_urls_give_their_address() {
        assert_eq!(
            turn_url_addr("turn:203.0.113.1:3478?transport=udp"),
            Some("203.0.113.1:3478".parse().unwrap())
        );
        assert_eq!(
            turn_url_addr("turn:[2001:db8::1]:3479"),
            Some("[2001:db8::1]:3479".parse().unwrap())
        );
        assert_eq!(
            turn_url_addr("turn:203.0.113.1"),
            Some("203.0.113.1:3478".parse().unwrap())
        );
        assert_eq!(turn_url_addr("turn:203.0.113.1:3478?transport=tcp"), None);
        assert_eq!(turn_url_addr("stun:203.0.113.1:3478"), None);
        assert_eq!(turn_url_addr("turn:example.com:3478"), None);
    }

    #[test]
    fn signals_go_through_a_public_member_next_to_the_peer() {
        let mut v = MeshView::default();
        let node = |id: &str, ip: u8, public: bool| MeshNode {
            id: id.into(),
            private_ipv4: format!("10.0.0.{ip}/32"),
            grpc_port: 8443,
            primary_endpoint: if public {
                format!("203.0.113.{ip}")
            } else {
                String::new()
            },
            features: vec![Feature::IceNegotiation as i32],
            ..Default::default()
        };
        for n in [
            node("a", 1, false),
            node("b", 2, false),
            node("p1", 3, true),
            node("p2", 4, true),
            node("pub", 5, true),
        ] {
            v.insert_node(n);
        }
        let edge = |x: &str, y: &str, ice: bool| {
            let attributes = if ice {
                [(peers::ICE_ATTRIBUTE.to_string(), "true".to_string())].into()
            } else {
                Default::default()
            };
            (
                crate::mesh::view::edge_key(x, y),
                MeshEdge {
                    source: x.into(),
                    target: y.into(),
                    weight: 1,
                    attributes,
                },
            )
        };
        v.edges.extend([
            edge("a", "b", true),
            edge("b", "p2", false),
            edge("b", "p1", false),
            edge("a", "p2", false),
        ]);
        // p1 and p2 both reach b; p2 reaches a too.
        assert_eq!(
            signal_via(&v, "a", "b"),
            Some(("p2".to_string(), "10.0.0.4:8443".to_string()))
        );
        // A public peer is asked directly.
        assert_eq!(
            signal_via(&v, "a", "pub"),
            Some(("pub".to_string(), "10.0.0.5:8443".to_string()))
        );
        // Nobody reaches b over a plain edge: no way yet.
        v.edges.retain(|(x, y), _| x == "a" && y == "b");
        assert_eq!(signal_via(&v, "a", "b"), None);
    }
}
