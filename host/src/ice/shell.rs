//! The ICE socket's task: one UDP socket for the node's ICE traffic, a path per peer
//! (`path`), the sorter (`mux`), TURN allocations (`turn::client`) that give the
//! server-reflexive and relayed candidates, and per peer a local proxy port that
//! WireGuard uses as the peer's endpoint: what WireGuard sends there goes out on the
//! peer's selected pair (straight, or through our relay); what the peer sends on that
//! pair comes back to WireGuard from the proxy port. Signals (credentials and
//! candidates) go out and come in through the caller, who carries them over the mesh.
//!
//! With our own WireGuard device the proxies only lend their addresses: the device
//! reads and writes the ICE socket itself (`datapath`), hands this task what is not a
//! direct peer's WireGuard, and takes relayed WireGuard from it.
//!
//! A restart gives a peer a fresh agent (new credentials, every local candidate again)
//! while WireGuard keeps using the pair selected before, until the new agent selects
//! one: a relayed path keeps working while a direct one is tried.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::datapath::{Datapath, TaskEnd};
use super::mux::{Mux, Route};
use super::path::{Event, Local, Path, Selected};
use crate::turn::client::{Client, Event as TurnEvent};

/// What a peer's path needs from the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Credentials { ufrag: String, pass: String },
    Candidate(String),
}

/// What the task tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Carry this to `peer`'s ICE task.
    Signal { peer: String, signal: Signal },
    /// `peer`'s path now runs on this pair.
    Path { peer: String, selected: Selected },
    /// `peer`'s agent lost its pair (WireGuard keeps the last one meanwhile).
    Lost { peer: String },
}

/// A TURN server and the credentials it issued us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
}

/// One peer as the task sees it, for Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPath {
    /// The pair WireGuard's packets take, once one was selected.
    pub selected: Option<Selected>,
    /// The agent has a pair now (false while a restart or a lost pair is checked).
    pub connected: bool,
}

enum Cmd {
    AddPeer {
        peer: String,
        controlling: bool,
        wireguard: SocketAddr,
        reply: oneshot::Sender<std::io::Result<SocketAddr>>,
    },
    Restart {
        peer: String,
    },
    RemovePeer {
        peer: String,
    },
    Signal {
        peer: String,
        signal: Signal,
    },
    SetTurn(Vec<TurnServer>),
    Paths(oneshot::Sender<HashMap<String, PeerPath>>),
}

/// Drives the task.
#[derive(Clone)]
pub struct Ice {
    cmds: mpsc::Sender<Cmd>,
    pub addr: SocketAddr,
    /// Relayed candidates the TURN allocations give now (0 while none is up).
    pub relays: watch::Receiver<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum IceError {
    #[error("the ICE task stopped")]
    Stopped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Ice {
    async fn send(&self, c: Cmd) -> Result<(), IceError> {
        self.cmds.send(c).await.map_err(|_| IceError::Stopped)
    }

    /// Starts ICE with `peer` (or returns its proxy if started); WireGuard listens at
    /// `wireguard`. Returns the proxy address to set as the peer's endpoint.
    pub async fn add_peer(
        &self,
        peer: &str,
        controlling: bool,
        wireguard: SocketAddr,
    ) -> Result<SocketAddr, IceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::AddPeer {
            peer: peer.into(),
            controlling,
            wireguard,
            reply,
        })
        .await?;
        Ok(rx.await.map_err(|_| IceError::Stopped)??)
    }

    /// A fresh agent for `peer`: new credentials and every local candidate go out as
    /// signals; the pair in use stays until the new agent selects one.
    pub async fn restart(&self, peer: &str) -> Result<(), IceError> {
        self.send(Cmd::Restart { peer: peer.into() }).await
    }

    pub async fn remove_peer(&self, peer: &str) -> Result<(), IceError> {
        self.send(Cmd::RemovePeer { peer: peer.into() }).await
    }

    /// A signal `peer` sent us.
    pub async fn signal(&self, peer: &str, signal: Signal) -> Result<(), IceError> {
        self.send(Cmd::Signal {
            peer: peer.into(),
            signal,
        })
        .await
    }

    /// The TURN servers to allocate on (replacing the list; credentials of a server
    /// already allocated on are used when it next allocates).
    pub async fn set_turn_servers(&self, servers: Vec<TurnServer>) -> Result<(), IceError> {
        self.send(Cmd::SetTurn(servers)).await
    }

    /// Every peer's path.
    pub async fn paths(&self) -> Result<HashMap<String, PeerPath>, IceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Paths(reply)).await?;
        rx.await.map_err(|_| IceError::Stopped)
    }
}

struct Peer {
    path: Path,
    controlling: bool,
    /// The pair WireGuard's packets take.
    route: Option<Selected>,
    connected: bool,
    /// Addresses of the peer's candidates (our relays must permit them).
    remotes: Vec<SocketAddr>,
    proxy: Arc<UdpSocket>,
    proxy_addr: SocketAddr,
    /// The pair's remote when it starts at our socket: the proxy's reader sends there
    /// itself, off this task (the fast path); `None` while relayed or unknown.
    direct: Arc<std::sync::RwLock<Option<SocketAddr>>>,
    /// Forwards what WireGuard sends to the proxy (not with a shared socket).
    reader: Option<tokio::task::JoinHandle<()>>,
    wireguard: SocketAddr,
}

struct Relay {
    server: TurnServer,
    client: Client,
    /// The relayed and reflexive candidates this allocation gave.
    gave: Vec<Local>,
    /// When to allocate again after a failure, and how many in a row.
    retry: Option<Instant>,
    failures: u32,
}

/// Peers whose signals may wait for the peer to be added, and signals each.
const MAX_EARLY_PEERS: usize = 64;
const MAX_EARLY_SIGNALS: usize = 1 + super::path::MAX_REMOTE_CANDIDATES;
/// TURN servers allocated on at once.
pub const MAX_TURN_SERVERS: usize = 4;

/// Datagrams to send: on the ICE socket, or from a proxy port to WireGuard.
#[derive(Default)]
struct Out {
    wire: Vec<(SocketAddr, Vec<u8>)>,
    to_wireguard: Vec<(Arc<UdpSocket>, SocketAddr, Vec<u8>)>,
    notes: Vec<Note>,
}

struct Task {
    addr: SocketAddr,
    /// The socket shared with our own WireGuard device, if it is.
    dp: Option<Arc<Datapath>>,
    peers: HashMap<String, Peer>,
    // Signals from peers not added yet (signalling races the peer's setup), bounded.
    early: HashMap<String, Vec<Signal>>,
    mux: Mux<String>,
    relays: Vec<Relay>,
    /// Every local candidate: the host one, then what the allocations gave.
    locals: Vec<Local>,
    out: Out,
}

impl Task {
    fn datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match self.mux.route(from, data) {
            Route::Agents => {
                let addr = self.addr;
                let agent = self
                    .peers
                    .iter_mut()
                    .find_map(|(id, p)| p.path.handle(now, from, addr, data).then_some((id, &*p)));
                if let Some((id, p)) = agent {
                    learn(&mut self.mux, self.dp.as_deref(), id, p, from);
                }
            }
            Route::Peer(id) => self.deliver(&id, data),
            Route::Turn(server) => {
                for r in self.relays.iter_mut().filter(|r| r.client.server == server) {
                    r.client.handle(now, from, data);
                }
                self.relay_events(now);
            }
            Route::Drop => {}
        }
    }

    fn deliver(&mut self, id: &str, data: &[u8]) {
        if let Some(p) = self.peers.get(id) {
            if let Some(dp) = &self.dp {
                dp.to_device(p.proxy_addr, data.to_vec());
                return;
            }
            self.out
                .to_wireguard
                .push((p.proxy.clone(), p.wireguard, data.to_vec()));
        }
    }

    /// What WireGuard sent to `id`'s proxy: out on the pair in use.
    fn send_wireguard(&mut self, now: Instant, id: &str, data: Vec<u8>) {
        let Some(route) = self.peers.get(id).and_then(|p| p.route) else {
            return;
        };
        self.send_from(now, route.local, route.remote, data);
    }

    fn send_from(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: Vec<u8>) {
        if local == self.addr {
            self.out.wire.push((remote, data));
        } else if let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.client.relay() == Some(local))
        {
            r.client.send_to(now, remote, &data);
        }
    }

    fn relay_events(&mut self, now: Instant) {
        let mut gained = Vec::new();
        let mut data = Vec::new();
        for r in &mut self.relays {
            while let Some(ev) = r.client.poll_event() {
                match ev {
                    TurnEvent::Allocated { relay, mapped } => {
                        info!(server = %r.server.addr, %relay, %mapped, "TURN allocation");
                        r.failures = 0;
                        r.gave = vec![Local::Relayed {
                            addr: relay,
                            base: self.addr,
                        }];
                        if mapped != self.addr {
                            r.gave.push(Local::Reflexive {
                                addr: mapped,
                                base: self.addr,
                            });
                        }
                        gained.extend(r.gave.iter().copied());
                        // Checks from the peers' candidates must get through.
                        for p in self.peers.values() {
                            for a in &p.remotes {
                                r.client.permit(now, *a);
                            }
                        }
                    }
                    TurnEvent::Failed { why } => {
                        r.failures += 1;
                        let wait = Duration::from_secs(2u64.pow(r.failures.min(5)));
                        warn!(server = %r.server.addr, %why, retry_in = ?wait, "TURN allocation lost");
                        let gone = std::mem::take(&mut r.gave);
                        self.locals.retain(|l| !gone.contains(l));
                        r.retry = Some(now + wait);
                    }
                    TurnEvent::Data { from, data: d } => {
                        if let Some(relay) = r.client.relay() {
                            data.push((relay, from, d));
                        }
                    }
                }
            }
        }
        for l in gained {
            if self.locals.contains(&l) {
                continue;
            }
            self.locals.push(l);
            for (id, p) in &mut self.peers {
                if let Ok(Some(c)) = p.path.add_local(l) {
                    self.out.notes.push(Note::Signal {
                        peer: id.clone(),
                        signal: Signal::Candidate(c),
                    });
                }
            }
        }
        for (relay, from, d) in data {
            match self.mux.route_relayed(from, &d) {
                Route::Agents => {
                    let agent = self.peers.iter_mut().find_map(|(id, p)| {
                        p.path.handle(now, from, relay, &d).then_some((id, &*p))
                    });
                    if let Some((id, p)) = agent {
                        learn(&mut self.mux, self.dp.as_deref(), id, p, from);
                    }
                }
                Route::Peer(id) => self.deliver(&id, &d),
                _ => {}
            }
        }
    }

    fn timeout(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            p.path.handle_timeout(now);
        }
        for r in &mut self.relays {
            r.client.handle_timeout(now);
            if r.retry.is_some_and(|t| t <= now) {
                r.retry = None;
                r.client = Client::new(
                    r.server.addr,
                    r.server.username.clone(),
                    r.server.password.clone(),
                );
                r.client.allocate(now);
            }
        }
        self.relay_events(now);
    }

    fn wake(&mut self) -> Instant {
        let paths = self
            .peers
            .values_mut()
            .filter_map(|p| p.path.poll_timeout());
        let relays = self
            .relays
            .iter()
            .flat_map(|r| r.client.poll_timeout().into_iter().chain(r.retry));
        // At least once a second: an agent that has no timer yet (fresh, or just given
        // the peer's credentials) starts its checks from a timeout.
        let idle = Instant::now() + Duration::from_secs(1);
        paths.chain(relays).fold(idle, Instant::min)
    }

    /// A fresh agent for `id` with every local candidate; its signals go out.
    fn fresh_agent(&mut self, id: &str) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        p.path = Path::new(p.controlling);
        p.remotes.clear();
        p.connected = false;
        let (ufrag, pass) = p.path.credentials();
        self.out.notes.push(Note::Signal {
            peer: id.into(),
            signal: Signal::Credentials { ufrag, pass },
        });
        for l in &self.locals {
            if let Ok(Some(c)) = p.path.add_local(*l) {
                self.out.notes.push(Note::Signal {
                    peer: id.into(),
                    signal: Signal::Candidate(c),
                });
            }
        }
    }

    /// Lets `peer`'s agent act on what just changed (its checks start on a timeout).
    fn kick(&mut self, now: Instant, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.path.handle_timeout(now);
        }
    }

    fn apply(&mut self, now: Instant, peer: &str, signal: Signal) {
        let Some(p) = self.peers.get_mut(peer) else {
            if self.early.len() < MAX_EARLY_PEERS || self.early.contains_key(peer) {
                let q = self.early.entry(peer.into()).or_default();
                if q.len() < MAX_EARLY_SIGNALS {
                    q.push(signal);
                }
            }
            return;
        };
        match signal {
            Signal::Credentials { ufrag, pass } => p.path.set_remote_credentials(ufrag, pass),
            Signal::Candidate(c) => match p.path.add_remote(&c) {
                Ok(a) => {
                    p.remotes.push(a);
                    for r in &mut self.relays {
                        r.client.permit(now, a);
                    }
                }
                Err(e) => debug!(%peer, error = %e, "ICE candidate refused"),
            },
        }
    }

    fn set_turn(&mut self, now: Instant, servers: Vec<TurnServer>) {
        let servers: Vec<TurnServer> = servers.into_iter().take(MAX_TURN_SERVERS).collect();
        let (kept, gone): (Vec<Relay>, Vec<Relay>) = std::mem::take(&mut self.relays)
            .into_iter()
            .partition(|r| servers.iter().any(|s| s.addr == r.server.addr));
        for r in gone {
            self.locals.retain(|l| !r.gave.contains(l));
        }
        self.relays = kept;
        for s in servers {
            self.mux.add_turn_server(s.addr);
            match self.relays.iter_mut().find(|r| r.server.addr == s.addr) {
                // New credentials serve the next allocation; this one stands.
                Some(r) => r.server = s,
                None => {
                    let mut client = Client::new(s.addr, s.username.clone(), s.password.clone());
                    client.allocate(now);
                    self.relays.push(Relay {
                        server: s,
                        client,
                        gave: Vec::new(),
                        retry: None,
                        failures: 0,
                    });
                }
            }
        }
    }

    /// What the paths and relays want sent, and what the paths decided.
    fn drain(&mut self, now: Instant) {
        let mut sends = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            while let Some(t) = p.path.poll_transmit() {
                sends.push(t);
            }
            while let Some(ev) = p.path.poll_event() {
                match ev {
                    Event::Selected(selected) => {
                        if p.route != Some(selected) {
                            info!(peer = %id, kind = selected.kind.as_str(), local = %selected.local, remote = %selected.remote, "ICE path selected");
                        }
                        p.route = Some(selected);
                        p.connected = true;
                        let direct = (selected.local == self.addr).then_some(selected.remote);
                        *p.direct.write().unwrap_or_else(|e| e.into_inner()) = direct;
                        if let Some(dp) = &self.dp {
                            dp.routes_mut().set_direct(p.proxy_addr, direct);
                        }
                        self.mux.set_peer(id.clone(), selected.remote);
                        self.out.notes.push(Note::Path {
                            peer: id.clone(),
                            selected,
                        });
                    }
                    Event::Disconnected => {
                        p.connected = false;
                        self.out.notes.push(Note::Lost { peer: id.clone() });
                    }
                }
            }
        }
        for (source, destination, data) in sends {
            self.send_from(now, source, destination, data);
        }
        for r in &mut self.relays {
            while let Some(b) = r.client.poll_transmit() {
                self.out.wire.push((r.client.server, b));
            }
        }
    }
}

/// `from` passed a connectivity check of `id`'s agent (the agent knew the credentials),
/// so the peer sends from there: its WireGuard is accepted from there too. The two ends
/// may nominate different pairs (each sends on its own), so the selected pair's remote
/// alone would not do: WireGuard from the pair the peer chose arrives from another
/// address. WireGuard authenticates every packet, so an address buys a sender nothing.
fn learn(mux: &mut Mux<String>, dp: Option<&Datapath>, id: &str, p: &Peer, from: SocketAddr) {
    mux.learn(id.to_string(), from);
    if let Some(dp) = dp {
        dp.routes_mut().learn(p.proxy_addr, from);
    }
}

/// The next item of a channel that may not be there (then never).
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Binds `listen` (a specific address: it is the host candidate) and runs until `stop`;
/// with `dp`, uses the socket our own WireGuard device bound there instead (and leaves
/// reading it to the device).
pub async fn spawn(
    listen: SocketAddr,
    dp: Option<Arc<Datapath>>,
    notes: mpsc::Sender<Note>,
    mut stop: watch::Receiver<bool>,
) -> Result<(Ice, tokio::task::JoinHandle<()>), IceError> {
    let (sock, end) = match &dp {
        Some(dp) => {
            let (s, end) = dp.for_task().ok_or_else(|| {
                std::io::Error::other("the WireGuard device has not bound the ICE socket")
            })?;
            s.set_nonblocking(true)?;
            (Wire::Shared(s), Some(end))
        }
        None => (Wire::Own(UdpSocket::bind(listen).await?), None),
    };
    let sock = Arc::new(sock);
    let addr = sock.local_addr()?;
    let (cmds, mut cmd_rx) = mpsc::channel(64);
    let (relays_tx, relays) = watch::channel(0usize);
    // WireGuard for peers whose pair the task handles: from the proxies' readers, or
    // (shared socket) from the device.
    let (from_wg_tx, from_wg) = mpsc::channel::<(Arc<str>, Vec<u8>)>(1024);
    let (mut from_socket, mut from_wg) = match end {
        Some(TaskEnd {
            from_socket,
            from_wireguard,
        }) => (Some(from_socket), from_wireguard),
        None => (None, from_wg),
    };
    let task = tokio::spawn(async move {
        let mut t = Task {
            addr,
            dp,
            peers: HashMap::new(),
            early: HashMap::new(),
            mux: Mux::default(),
            relays: Vec::new(),
            locals: vec![Local::Host(addr)],
            out: Out::default(),
        };
        let mut buf = vec![0u8; 2048];
        loop {
            let wake = t.wake();
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    // WireGuard from a peer's pair: straight to its proxy, no copy;
                    // under load, what else is queued too, before waiting again.
                    if let Route::Peer(id) = t.mux.route(from, &buf[..n])
                        && let Some(p) = t.peers.get(&id)
                    {
                        let _ = p.proxy.send_to(&buf[..n], p.wireguard).await;
                        let mut other = None;
                        for _ in 0..64 {
                            let Ok((n, from)) = sock.try_recv_from(&mut buf) else { break };
                            match t.mux.route(from, &buf[..n]) {
                                Route::Peer(id) if t.peers.contains_key(&id) => {
                                    let p = &t.peers[&id];
                                    let _ = p.proxy.send_to(&buf[..n], p.wireguard).await;
                                }
                                _ => {
                                    other = Some((n, from));
                                    break;
                                }
                            }
                        }
                        let Some((n, from)) = other else { continue };
                        t.datagram(Instant::now(), from, &buf[..n]);
                        t.drain(Instant::now());
                        let out = std::mem::take(&mut t.out);
                        flush(&sock, &notes, out).await;
                        continue;
                    }
                    t.datagram(Instant::now(), from, &buf[..n]);
                }
                Some((id, data)) = from_wg.recv() => t.send_wireguard(Instant::now(), &id, data),
                Some((from, data)) = next(&mut from_socket) => t.datagram(Instant::now(), from, &data),
                Some(cmd) = cmd_rx.recv() => match cmd {
                    Cmd::AddPeer { peer, controlling, wireguard, reply } => {
                        if let Some(p) = t.peers.get(&peer) {
                            let _ = reply.send(p.proxy.local_addr());
                        } else {
                            match add_peer(&peer, controlling, wireguard, &from_wg_tx, &sock).await {
                                Ok(p) => {
                                    let proxy = Ok(p.proxy_addr);
                                    if let Some(dp) = &t.dp {
                                        dp.routes_mut().add(p.proxy_addr, &peer);
                                    }
                                    t.peers.insert(peer.clone(), p);
                                    t.fresh_agent(&peer);
                                    for signal in t.early.remove(&peer).unwrap_or_default() {
                                        t.apply(Instant::now(), &peer, signal);
                                    }
                                    let _ = reply.send(proxy);
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                }
                            }
                        }
                    }
                    Cmd::Restart { peer } => {
                        t.fresh_agent(&peer);
                        t.kick(Instant::now(), &peer);
                    }
                    Cmd::RemovePeer { peer } => {
                        if let Some(p) = t.peers.remove(&peer) {
                            if let Some(r) = p.reader {
                                r.abort();
                            }
                            if let Some(dp) = &t.dp {
                                dp.routes_mut().remove(p.proxy_addr);
                            }
                        }
                        t.mux.remove_peer(&peer);
                    }
                    Cmd::Signal { peer, signal } => {
                        t.apply(Instant::now(), &peer, signal);
                        t.kick(Instant::now(), &peer);
                    }
                    Cmd::SetTurn(servers) => t.set_turn(Instant::now(), servers),
                    Cmd::Paths(reply) => {
                        let paths = t.peers.iter().map(|(id, p)| {
                            (id.clone(), PeerPath { selected: p.route, connected: p.connected })
                        }).collect();
                        let _ = reply.send(paths);
                    }
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    t.timeout(Instant::now());
                }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            }
            t.drain(Instant::now());
            let out = std::mem::take(&mut t.out);
            flush(&sock, &notes, out).await;
            let n = t
                .locals
                .iter()
                .filter(|l| matches!(l, Local::Relayed { .. }))
                .count();
            relays_tx.send_if_modified(|r| std::mem::replace(r, n) != n);
        }
        for p in t.peers.into_values() {
            if let Some(r) = p.reader {
                r.abort();
            }
        }
    });
    Ok((Ice { cmds, addr, relays }, task))
}

/// The ICE socket as the task uses it: its own, or (shared with our WireGuard device,
/// which reads it) a duplicate it only sends on. The duplicate is not registered with
/// the runtime: registered, every datagram the device reads would wake this runtime
/// too. Its sends do not wait: one the socket cannot take now is dropped, as a full
/// queue would (ICE and TURN retransmit, WireGuard's protocols above recover).
enum Wire {
    Own(UdpSocket),
    Shared(std::net::UdpSocket),
}

impl Wire {
    async fn send_to(&self, data: &[u8], to: SocketAddr) {
        match self {
            Wire::Own(s) => {
                let _ = s.send_to(data, to).await;
            }
            Wire::Shared(s) => {
                if let Err(e) = s.send_to(data, to) {
                    debug!(%to, error = %e, "ICE socket send dropped");
                }
            }
        }
    }

    /// The next datagram, when the socket is the task's own (else never).
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Wire::Own(s) => s.recv_from(buf).await,
            Wire::Shared(_) => std::future::pending().await,
        }
    }

    fn try_recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Wire::Own(s) => s.try_recv_from(buf),
            Wire::Shared(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Wire::Own(s) => s.local_addr(),
            Wire::Shared(s) => s.local_addr(),
        }
    }
}

/// Sends what the task decided to send.
async fn flush(sock: &Wire, notes: &mpsc::Sender<Note>, out: Out) {
    for (to, data) in out.wire {
        sock.send_to(&data, to).await;
    }
    for (proxy, wg, data) in out.to_wireguard {
        let _ = proxy.send_to(&data, wg).await;
    }
    for n in out.notes {
        let _ = notes.send(n).await;
    }
}

/// A peer and its proxy port (on loopback, where WireGuard reaches it). With a shared
/// socket the port is only bound (its address is the peer's endpoint, which the device
/// maps; nothing arrives there).
async fn add_peer(
    peer: &str,
    controlling: bool,
    wireguard: SocketAddr,
    from_wg: &mpsc::Sender<(Arc<str>, Vec<u8>)>,
    ice: &Arc<Wire>,
) -> std::io::Result<Peer> {
    let shared = matches!(**ice, Wire::Shared(_));
    let loopback = if wireguard.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let proxy = Arc::new(UdpSocket::bind(loopback).await?);
    let proxy_addr = proxy.local_addr()?;
    let direct = Arc::new(std::sync::RwLock::new(None));
    let (p, tx, id, d, ice) = (
        proxy.clone(),
        from_wg.clone(),
        Arc::<str>::from(peer),
        direct.clone(),
        ice.clone(),
    );
    let reader = (!shared).then(|| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = p.recv_from(&mut buf).await {
                // Only WireGuard's own port speaks to the proxy.
                if from != wireguard {
                    continue;
                }
                let to = *d.read().unwrap_or_else(|e| e.into_inner());
                match to {
                    Some(to) => {
                        ice.send_to(&buf[..n], to).await;
                        // Under load, take what else is queued without waiting again.
                        for _ in 0..64 {
                            match p.try_recv_from(&mut buf) {
                                Ok((n, from)) if from == wireguard => {
                                    ice.send_to(&buf[..n], to).await;
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    }
                    // Relayed (or no pair yet): the task wraps it for the TURN server.
                    None => {
                        if tx.send((id.clone(), buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    });
    Ok(Peer {
        path: Path::new(controlling),
        controlling,
        route: None,
        connected: false,
        remotes: Vec::new(),
        proxy,
        proxy_addr,
        direct,
        reader,
        wireguard,
    })
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;
