//! Mesh DNS: a UDP and TCP server answering the mesh's names from the local replica
//! (decided in [`zone`], sans IO) and forwarding other names to upstream resolvers,
//! with their answers kept in [`cache`]. The zone is rebuilt on each state change and
//! leader change, so answers follow the mesh within one Raft apply.
//!
//! Only members ask: sources that are loopback or inside the mesh networks get
//! answers, everyone else REFUSED (a reply to a spoofed mesh source goes into the
//! tunnel, not back to the spoofer).

pub mod cache;
mod fast;
pub mod resolver;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::raft::RaftNode;
use crate::raft::follow::ViewFollower;
use cache::Cache;
use zone::{Outcome, Transport, Zone};

/// Forwarded queries in flight at once; more get SERVFAIL at once.
const MAX_FORWARDS: usize = 1024;
/// TCP clients at once; more are closed on accept.
const MAX_TCP_CLIENTS: usize = 256;
/// How often a UDP thread looks up from its socket to see whether it should stop.
const UDP_POLL: Duration = Duration::from_millis(500);
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("meshdns-listen {addr}: cannot bind {proto}: {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("mesh DNS zone: {0}")]
    Zone(String),
    #[error("use-meshdns: {0}")]
    Resolver(String),
}

/// What the server needs from the settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Empty: names outside the mesh are refused.
    pub forwarders: Vec<SocketAddr>,
    pub forward_timeout: Duration,
    pub cache: usize,
}

impl Settings {
    /// The forwarders to use: the configured ones, else the nameservers of
    /// `resolv_conf` (scoped link-local ones left out), never this server itself
    /// (that would loop).
    pub fn forwarders_from(
        configured: &[SocketAddr],
        resolv_conf: &str,
        listen: SocketAddr,
    ) -> Vec<SocketAddr> {
        let list: Vec<SocketAddr> = if configured.is_empty() {
            resolv_conf
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
                .collect()
        } else {
            configured.to_vec()
        };
        list.into_iter()
            .filter(|f| {
                !(f.port() == listen.port()
                    && (f.ip() == listen.ip()
                        || (listen.ip().is_unspecified() && is_local(f.ip()))))
            })
            .collect()
    }
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// A running mesh DNS server.
pub struct MeshDns {
    pub addr: SocketAddr,
    pub forwarding: bool,
}

/// Binds `settings.listen` (UDP and TCP) and serves until the tasks are aborted.
pub async fn serve(
    settings: Settings,
    raft: &RaftNode,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<MeshDns, DnsError> {
    let bind_err = |proto| {
        move |source| DnsError::Bind {
            addr: settings.listen,
            proto,
            source,
        }
    };
    let udp = std::net::UdpSocket::bind(settings.listen).map_err(bind_err("UDP"))?;
    udp.set_read_timeout(Some(UDP_POLL))
        .map_err(bind_err("UDP"))?;
    let addr = udp.local_addr().map_err(bind_err("UDP"))?;
    let tcp = TcpListener::bind(addr).await.map_err(bind_err("TCP"))?;

    let mut follower = ViewFollower::new(raft);
    let (leader, voters) = roles(raft);
    let first = Zone::build(&follower.view, follower.index, leader.as_deref(), &voters)
        .map_err(DnsError::Zone)?;
    let (zone_tx, zone_rx) = watch::channel(Arc::new(first));
    let keeper_raft = raft.clone();
    tasks.push(tokio::spawn(
        async move {
            let raft = keeper_raft;
            let mut metrics = raft.watch_metrics();
            let mut known = (leader, voters);
            loop {
                let rebuild = tokio::select! {
                    changed = follower.next() => match changed {
                        Some(c) => c,
                        None => return,
                    },
                    r = metrics.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let now = roles(&raft);
                        let moved = now != known;
                        known = now;
                        moved
                    }
                };
                if rebuild {
                    match Zone::build(&follower.view, follower.index, known.0.as_deref(), &known.1)
                    {
                        Ok(z) => {
                            zone_tx.send_replace(Arc::new(z));
                        }
                        Err(e) => warn!(error = %e, "mesh DNS keeps its previous zone"),
                    }
                }
            }
        }
        .in_current_span(),
    ));

    let forwarder = Arc::new(Forwarder {
        upstreams: settings.forwarders.clone(),
        timeout: settings.forward_timeout,
        cache: Mutex::new(Cache::new(settings.cache)),
        inflight: Arc::new(Semaphore::new(MAX_FORWARDS)),
    });
    let udp = Arc::new(udp);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    for i in 0..threads {
        let (udp, zone, fwd) = (udp.clone(), zone_rx.clone(), forwarder.clone());
        let (span, rt, stop) = (
            tracing::Span::current(),
            tokio::runtime::Handle::current(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name(format!("meshdns-udp-{i}"))
            .spawn(move || span.in_scope(|| serve_udp(&udp, zone, fwd, rt, &stop)))
            .map_err(bind_err("UDP"))?;
    }
    // The node stops its tasks by aborting them: this one's end stops the UDP threads at
    // once (and frees the port for a node started again in this process).
    let guard = StopThreads {
        sock: udp.clone(),
        stop,
    };
    tasks.push(tokio::spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    }));
    tasks.push(tokio::spawn(
        serve_tcp(tcp, zone_rx, forwarder.clone()).in_current_span(),
    ));
    info!(
        %addr,
        forwarders = ?settings.forwarders,
        "mesh DNS serving (UDP and TCP)"
    );
    Ok(MeshDns {
        addr,
        forwarding: forwarder.enabled(),
    })
}

/// The leader's name and the voters' names, as Raft knows them now.
fn roles(raft: &RaftNode) -> (Option<String>, Vec<String>) {
    let m = raft.watch_metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let leader = m
        .current_leader
        .and_then(|id| membership.get_node(&id))
        .map(|n| n.name.clone());
    let mut voters: Vec<String> = membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| n.name.clone()))
        .collect();
    voters.sort();
    (leader, voters)
}

/// One of the UDP threads: plain blocking receive, answer, send, as a classic DNS
/// server does (measured faster than the async runtime for this tight loop); only
/// forwarding goes to the runtime. Ends when the zone keeper is gone.
fn serve_udp(
    sock: &Arc<std::net::UdpSocket>,
    zone: watch::Receiver<Arc<Zone>>,
    fwd: Arc<Forwarder>,
    rt: tokio::runtime::Handle,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if zone.has_changed().is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                // ICMP errors of earlier replies surface here; the socket still works.
                debug!(error = %e, "mesh DNS: UDP receive");
                continue;
            }
        };
        let z = zone.borrow().clone();
        let member = z.is_member_source(src.ip());
        match zone::answer(&z, &buf[..n], member, fwd.enabled(), Transport::Udp) {
            Outcome::Reply(b) => {
                crate::metrics::get().dns_answer(&b);
                let _ = sock.send_to(&b, src);
            }
            Outcome::Forward(req) => {
                let Ok(permit) = fwd.inflight.clone().try_acquire_owned() else {
                    let b = zone::servfail_to(&req);
                    crate::metrics::get().dns_answer(&b);
                    let _ = sock.send_to(&b, src);
                    continue;
                };
                let raw = buf[..n].to_vec();
                let (sock, fwd) = (sock.clone(), fwd.clone());
                rt.spawn(async move {
                    let out = zone::fit_udp(&req, fwd.resolve(&req, &raw, false).await);
                    drop(permit);
                    crate::metrics::get().dns_answer(&out);
                    let _ = sock.send_to(&out, src);
                });
            }
            Outcome::Drop => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: watch::Receiver<Arc<Zone>>, fwd: Arc<Forwarder>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "mesh DNS: TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Strangers get no slot (a TCP peer's address is real: the handshake proved it).
        if !zone.borrow().is_member_source(peer.ip()) {
            continue;
        }
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            continue;
        };
        let (zone, fwd) = (zone.clone(), fwd.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_tcp_client(stream, peer, zone, fwd).await {
                debug!(%peer, error = %e, "mesh DNS: TCP client closed");
            }
        });
    }
}

async fn serve_tcp_client(
    mut s: TcpStream,
    peer: SocketAddr,
    zone: watch::Receiver<Arc<Zone>>,
    fwd: Arc<Forwarder>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "message body"))??;
        let z = zone.borrow().clone();
        let member = z.is_member_source(peer.ip());
        let out = match zone::answer(&z, &buf[..len], member, fwd.enabled(), Transport::Tcp) {
            Outcome::Reply(b) => b,
            Outcome::Forward(req) => fwd.resolve(&req, &buf[..len], true).await,
            Outcome::Drop => return Ok(()),
        };
        crate::metrics::get().dns_answer(&out);
        let Ok(n) = u16::try_from(out.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&out);
        s.write_all(&framed).await?;
    }
}

/// Stops the UDP threads when dropped: flags them, and wakes the blocked receives.
struct StopThreads {
    sock: Arc<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
}

impl Drop for StopThreads {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown on a descriptor this process owns (kept open by the Arc);
        // Linux wakes receivers blocked on a UDP socket, connected or not.
        unsafe {
            libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<Cache>,
    inflight: Arc<Semaphore>,
}

impl Forwarder {
    fn enabled(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// The answer to `req` (raw bytes `raw`) from the cache or the first forwarder that
    /// gives one in time; SERVFAIL when none does.
    async fn resolve(&self, req: &Message, raw: &[u8], tcp: bool) -> Vec<u8> {
        if let Some(hit) = self.cache().get(req, Instant::now()) {
            crate::metrics::get().dns_cache_hits.inc();
            return hit;
        }
        crate::metrics::get().dns_forwarded.inc();
        for up in &self.upstreams {
            let asked = tokio::time::timeout(self.timeout, ask(*up, raw, tcp)).await;
            let mut bytes = match asked {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    debug!(upstream = %up, error = %e, "mesh DNS forwarder failed");
                    continue;
                }
                Err(_) => {
                    debug!(upstream = %up, "mesh DNS forwarder timed out");
                    continue;
                }
            };
            let Ok(resp) = Message::from_vec(&bytes) else {
                continue;
            };
            if resp.queries != req.queries {
                continue;
            }
            self.cache().put(req, &resp, Instant::now());
            bytes[..2].copy_from_slice(&req.metadata.id.to_be_bytes());
            return bytes;
        }
        zone::servfail_to(req)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One question to one upstream, under a fresh random ID; the answer whose ID matches.
async fn ask(up: SocketAddr, raw: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    let id: u16 = rand::random();
    let mut q = raw.to_vec();
    q[..2].copy_from_slice(&id.to_be_bytes());
    if tcp {
        let mut s = TcpStream::connect(up).await?;
        let n = u16::try_from(q.len()).map_err(std::io::Error::other)?;
        let mut framed = n.to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await?;
        let len = usize::from(s.read_u16().await?);
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        if buf.len() < 12 || buf[..2] != id.to_be_bytes() {
            return Err(std::io::Error::other("answer with another ID"));
        }
        return Ok(buf);
    }
    let local: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(&q).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Anything else on this connected socket is stale or forged: ignore it.
        if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            return Ok(buf[..n].to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarders_come_from_resolv_conf_unless_configured_and_never_point_at_us() {
        let rc = "# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch x\nnameserver 127.0.0.1\n";
        let any: SocketAddr = "[::]:53".parse().unwrap();
        assert_eq!(
            Settings::forwarders_from(&[], rc, any),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                // A scoped link-local address cannot be used without its interface.
            ]
        );
        let other: SocketAddr = "[::]:5353".parse().unwrap();
        assert_eq!(Settings::forwarders_from(&[], rc, other).len(), 2);
        let mine = ["198.51.100.1:53".parse().unwrap()];
        assert_eq!(Settings::forwarders_from(&mine, rc, any), mine.to_vec());
    }
}
