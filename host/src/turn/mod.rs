//! The TURN/STUN server of `--turn-server`: `creds` (REST-style credentials),
//! `bucket` (rate limits), `server` (the protocol) and `client` (an allocation as a
//! node's ICE agent keeps it) are sans IO; this module is the
//! shell: the server's UDP socket, one socket per relay port, and the task that feeds
//! them to [`server::Server`] and sends what it answers.

pub mod bucket;
mod channel;
pub mod client;
pub mod creds;
pub mod server;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use creds::Secret;
use server::{Out, Ports, Server};

/// Allocations one user (one member's credentials) may hold at once.
pub const MAX_ALLOCATIONS_PER_USER: usize = 16;
/// The largest datagram read (a TURN message around a WireGuard packet fits easily).
const MAX_DATAGRAM: usize = 4096;
/// Peer packets waiting for the server task; more are dropped (UDP).
const QUEUE: usize = 4096;

/// What the TURN server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The address clients and peers reach it at (relayed addresses carry it).
    pub public_ip: IpAddr,
    pub relay_ports: (u16, u16),
    pub max_allocations: usize,
    pub allocation_rate: u64,
    pub total_rate: u64,
    /// Peers no allocation may reach: the mesh's own networks.
    pub denied: Vec<ipnet::IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("turn-listen {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// Issues credentials for the running server (the `Turn.Credentials` RPC).
#[derive(Clone)]
pub struct Issuer {
    secret: Secret,
    pub realm: String,
    pub urls: Vec<String>,
}

impl Issuer {
    pub fn issue(&self, node: &str) -> webmesh_api::internal::TurnCredentialsResponse {
        let c = self.secret.issue(node, unix_now());
        webmesh_api::internal::TurnCredentialsResponse {
            username: c.username,
            password: c.password,
            expires: c.expires,
            urls: self.urls.clone(),
            realm: self.realm.clone(),
        }
    }
}

/// A running TURN server.
/// A campfire room the server hosts for its node (`--campfire-psk`): what members
/// send the host goes to `to_host`; what the host sends them comes from `from_host`.
pub struct CampfireRoom {
    pub room: String,
    pub host_id: String,
    pub to_host: mpsc::Sender<webmesh_api::v1::CampfireMessage>,
    pub from_host: mpsc::Receiver<webmesh_api::v1::CampfireMessage>,
    /// What the gRPC `Campfire` service hands the rooms.
    pub grpc: mpsc::Receiver<GrpcCampfire>,
}

/// From the gRPC `Campfire` service to the rooms.
pub enum GrpcCampfire {
    /// A member's message.
    Send(webmesh_api::v1::CampfireMessage),
    /// Member `id` of `room` receives on `tx` from now on.
    Subscribe {
        room: String,
        id: String,
        tx: mpsc::Sender<webmesh_api::v1::CampfireMessage>,
    },
}

/// gRPC members' streams one server keeps at once.
const MAX_GRPC_MEMBERS: usize = 256;

pub struct Turn {
    /// Where the gRPC `Campfire` service hands the rooms messages (with a campfire).
    pub campfire: Option<mpsc::Sender<GrpcCampfire>>,
    pub addr: SocketAddr,
    pub issuer: Issuer,
    pub stats: Arc<Mutex<server::Stats>>,
}

pub const REALM: &str = "webmesh";

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A v4 address as the dual-stack socket sees it, and back: clients and peers are
/// told (and checked by) their plain IPv4 address.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn for_socket(sock: &UdpSocket, a: SocketAddr) -> SocketAddr {
    match (sock.local_addr(), a) {
        (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => a,
    }
}

/// Relay sockets: bound on the listen IP within the port range, each with a reader
/// that queues what peers send to it.
struct RelaySockets {
    ip: IpAddr,
    range: (u16, u16),
    open: HashMap<u16, (Arc<UdpSocket>, tokio::task::JoinHandle<()>)>,
    tx: mpsc::Sender<(u16, SocketAddr, Vec<u8>)>,
}

impl Ports for RelaySockets {
    fn open(&mut self, _v4: bool) -> Option<u16> {
        let (lo, hi) = self.range;
        for _ in 0..32 {
            let port = lo + (rand::random::<u16>() % (hi - lo + 1));
            if self.open.contains_key(&port) {
                continue;
            }
            let Ok(std) = std::net::UdpSocket::bind(SocketAddr::new(self.ip, port)) else {
                continue;
            };
            if std.set_nonblocking(true).is_err() {
                continue;
            }
            let Ok(sock) = UdpSocket::from_std(std) else {
                continue;
            };
            let sock = Arc::new(sock);
            let (s, tx) = (sock.clone(), self.tx.clone());
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while let Ok((n, from)) = s.recv_from(&mut buf).await {
                    // Full queue: drop, as a congested link would.
                    let _ = tx.try_send((port, canonical(from), buf[..n].to_vec()));
                }
            });
            self.open.insert(port, (sock, reader));
            return Some(port);
        }
        None
    }

    fn close(&mut self, port: u16) {
        if let Some((_, reader)) = self.open.remove(&port) {
            reader.abort();
        }
    }
}

/// Binds the server's socket and runs it until `stop`.
pub async fn serve(
    settings: Settings,
    secret: Secret,
    is_member: Box<server::IsMember>,
    campfire: Option<CampfireRoom>,
    mut stop: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Turn, TurnError> {
    let sock = UdpSocket::bind(settings.listen)
        .await
        .map_err(|e| TurnError::Listen(settings.listen, e))?;
    let addr = sock
        .local_addr()
        .map_err(|e| TurnError::Listen(settings.listen, e))?;
    let public = SocketAddr::new(settings.public_ip, addr.port());
    let issuer = Issuer {
        secret: secret.clone(),
        realm: REALM.into(),
        urls: vec![
            format!("turn:{public}?transport=udp"),
            format!("stun:{public}"),
        ],
    };
    let now = Instant::now();
    let mut server = Server::new(
        server::Config {
            realm: REALM.into(),
            relay_ip: settings.public_ip,
            max_allocations: settings.max_allocations,
            max_allocations_per_user: MAX_ALLOCATIONS_PER_USER,
            allocation_rate: settings.allocation_rate,
            total_rate: settings.total_rate,
            denied: settings.denied.clone(),
            listen_port: addr.port(),
        },
        secret,
        is_member,
        rand::random(),
        now,
    );
    let (tx, mut peers) = mpsc::channel(QUEUE);
    let mut relays = RelaySockets {
        ip: settings.listen.ip(),
        range: settings.relay_ports,
        open: HashMap::new(),
        tx,
    };
    let stats = Arc::new(Mutex::new(server.stats()));
    let shared = stats.clone();
    info!(listen = %addr, public = %public, ports = ?settings.relay_ports, "TURN server");
    let mut rooms = crate::campfire::rooms::Rooms::default();
    let (to_host, mut from_host, mut grpc) = match campfire {
        Some(c) => {
            rooms.open(&c.room, &c.host_id);
            (Some(c.to_host), Some(c.from_host), Some(c.grpc))
        }
        None => (None, None, None),
    };
    let mut streams: HashMap<String, mpsc::Sender<webmesh_api::v1::CampfireMessage>> =
        HashMap::new();
    tasks.push(tokio::spawn(async move {
        let sock = Arc::new(sock);
        // Removed members' allocations end within this.
        let mut revoke = tokio::time::interval(Duration::from_secs(10));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let wake = server
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60));
            // Campfire messages to members (sent after the select: nothing awaits in it).
            let mut camp_out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            let outs: Vec<Out> = tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    // A campfire message, for a room this server hosts.
                    Ok((n, from)) if to_host.is_some() && crate::campfire::is_campfire(&buf[..n]) => {
                        use prost::Message as _;
                        let from = canonical(from);
                        let routed = webmesh_api::v1::CampfireMessage::decode(&buf[..n])
                            .ok()
                            .and_then(|m| rooms.from_member(Instant::now(), crate::campfire::rooms::At::Udp(from), m));
                        camp_deliver(routed, &to_host, &streams, &mut camp_out);
                        vec![]
                    }
                    Ok((n, from)) => server.handle_client(
                        Instant::now(), unix_now(), canonical(from), &buf[..n], &mut relays),
                    Err(e) => {
                        debug!(error = %e, "TURN socket");
                        continue;
                    }
                },
                Some((port, from, data)) = peers.recv() => {
                    server.handle_peer(Instant::now(), port, from, &data).into_iter().collect()
                }
                _ = tokio::time::sleep_until(wake) => {
                    server.handle_timeout(Instant::now(), &mut relays);
                    vec![]
                }
                Some(m) = recv_if(&mut from_host) => {
                    camp_deliver(rooms.from_host(m), &to_host, &streams, &mut camp_out);
                    vec![]
                }
                Some(g) = recv_if(&mut grpc) => {
                    match g {
                        GrpcCampfire::Send(m) => {
                            let routed = rooms.from_member(Instant::now(), crate::campfire::rooms::At::Grpc, m);
                            camp_deliver(routed, &to_host, &streams, &mut camp_out);
                        }
                        GrpcCampfire::Subscribe { room, id, tx } => {
                            streams.retain(|_, t| !t.is_closed());
                            if streams.len() < MAX_GRPC_MEMBERS || streams.contains_key(&id) {
                                let _ = room;
                                streams.insert(id, tx);
                            }
                        }
                    }
                    vec![]
                }
                _ = revoke.tick() => {
                    server.revoke_non_members(&mut relays);
                    rooms.expire(Instant::now());
                    vec![]
                }
                _ = stop.wait_for(|s| *s) => break,
            };
            for (to, data) in camp_out {
                let _ = sock.send_to(&data, for_socket(&sock, to)).await;
            }
            for o in outs {
                match o {
                    Out::Client { to, data } => {
                        let _ = sock.send_to(&data, for_socket(&sock, to)).await;
                    }
                    Out::Peer { port, to, data } => {
                        if let Some((s, _)) = relays.open.get(&port) {
                            let _ = s.send_to(&data, for_socket(s, to)).await;
                        }
                    }
                }
            }
            *shared.lock().unwrap_or_else(|p| p.into_inner()) = server.stats();
        }
        for port in relays.open.keys().copied().collect::<Vec<_>>() {
            relays.close(port);
        }
    }));
    Ok(Turn {
        campfire: None,
        addr,
        issuer,
        stats,
    })
}

/// The next message of a channel the server may not have (never, without one).
async fn recv_if<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Delivers a campfire message where the rooms sent it: to the host, a UDP member
/// (queued in `out`) or a gRPC member's stream.
fn camp_deliver(
    routed: Option<(crate::campfire::rooms::To, webmesh_api::v1::CampfireMessage)>,
    to_host: &Option<mpsc::Sender<webmesh_api::v1::CampfireMessage>>,
    streams: &HashMap<String, mpsc::Sender<webmesh_api::v1::CampfireMessage>>,
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    use crate::campfire::rooms::To;
    use prost::Message as _;
    match routed {
        Some((To::Host, m)) => {
            if let Some(t) = to_host {
                let _ = t.try_send(m);
            }
        }
        Some((To::Udp(to), m)) => out.push((to, m.encode_to_vec())),
        Some((To::Grpc(id), m)) => {
            if let Some(t) = streams.get(&id) {
                let _ = t.try_send(m);
            }
        }
        None => {}
    }
}

/// The server's secret, kept in the data dir so credentials survive a restart; made
/// on first use (0600).
pub fn load_secret(path: &std::path::Path) -> std::io::Result<Secret> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(b) if b.len() == 32 => {
            let mut s = [0u8; 32];
            s.copy_from_slice(&b);
            return Ok(Secret(s));
        }
        Ok(_) => warn!(path = %path.display(), "the TURN secret is malformed; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let s: [u8; 32] = rand::random();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&s)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(Secret(s))
}
