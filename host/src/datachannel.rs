//! WebRTC data channels from a client to `dst:port` through this node
//! (`WebRTC.StartDataChannel`, relayed between nodes by `Node.NegotiateDataChannel`).
//! The WebRTC stack is str0m (sans IO: ICE, DTLS, SCTP); this is its shell: one UDP
//! socket per session, the offer with a data channel labelled `CHANNELS`, and for every
//! data channel the client has open — `CHANNELS` first, then any it opens itself
//! (`CONNECTIONS`) — one connection to the target: a TCP stream whose bytes the channel
//! carries, or a UDP socket whose datagrams are the channel's messages (`udp` port 0:
//! this node's WireGuard port).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelConfig;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info};

/// The label of the offer's data channel (the v1 API's `DataChannel.CHANNELS`).
pub const FIRST_CHANNEL: &str = "CHANNELS";
/// Connections (data channels) one session keeps at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A session that has not connected in this long ends.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// Bytes read from a connection per message.
const CHUNK: usize = 16 * 1024;
/// Bytes waiting for the channels' send buffers, at most, before connections are not
/// read (backpressure).
const MAX_PENDING: usize = 1 << 20;
/// Messages queued towards one connection before it counts as stuck and is closed.
const CONN_QUEUE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Where a session's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{p}://{}", self.addr)
    }
}

/// Reads a request's `proto`, `dst` and `port` (pure). `udp` with port 0 is this node's
/// WireGuard port. Addresses this node must not be made to reach for someone else —
/// loopback, unspecified, link-local, multicast, broadcast — are refused.
pub fn target(proto: &str, dst: &str, port: u32, wireguard_port: u16) -> Result<Target, String> {
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(format!("proto: {other:?} is neither \"tcp\" nor \"udp\"")),
    };
    if proto == Proto::Udp && port == 0 {
        return Ok(Target {
            proto,
            addr: SocketAddr::from(([127, 0, 0, 1], wireguard_port)),
        });
    }
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port: {port} is not a port (1-65535; udp 0 is WireGuard)"))?;
    let ip: IpAddr = dst
        .parse()
        .map_err(|_| format!("dst: {dst:?} is not an IP address"))?;
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some()
        }
    };
    if special {
        return Err(format!(
            "dst: {ip} is a loopback, link-local, multicast or unspecified address, which a \
             data channel may not reach"
        ));
    }
    Ok(Target {
        proto,
        addr: SocketAddr::new(ip, port),
    })
}

/// What the client sends after the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Answer(String),
    Candidate(String),
}

/// A session waiting for its answer.
pub struct Session {
    /// The SDP offer (with this node's candidate) for the client.
    pub offer: String,
    /// The client's answer and candidates go here; dropping it does not end the session.
    pub signals: mpsc::Sender<Signal>,
}

/// Starts a session on a new UDP socket at `bind`: the offer, and a task that runs
/// the connection until the client goes away (or does not come within 30 s). `guard`
/// is dropped when the session ends.
pub async fn open(
    bind: IpAddr,
    target: Target,
    guard: impl Send + 'static,
) -> Result<Session, String> {
    let mut s = shell_at(bind).await?;
    let local = s.local;
    let mut change = s.rtc.sdp_api();
    change.add_channel(FIRST_CHANNEL.to_string());
    let (offer, pending) = change.apply().ok_or("no offer: nothing to negotiate")?;
    let (tx, rx) = mpsc::channel(64);
    s.target = Some(target);
    s.pending = Some(pending);
    tokio::spawn(
        async move {
            s.run(rx).await;
            drop(guard);
        }
        .instrument(tracing::info_span!("datachannel", %target, %local)),
    );
    Ok(Session {
        offer: offer.to_sdp_string(),
        signals: tx,
    })
}

/// The answering side of a session: takes `offer`, returns the answer, and carries
/// every TCP connection `listener` accepts over a data channel (the offer's first,
/// then new ones) until the other side goes away.
pub async fn answer(
    offer: &str,
    bind: IpAddr,
    listener: TcpListener,
    guard: impl Send + 'static,
) -> Result<String, String> {
    let mut s = shell_at(bind).await?;
    let local = s.local;
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| format!("offer: {e}"))?;
    let answer = s
        .rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("offer: {e}"))?;
    s.listener = Some(listener);
    tokio::spawn(
        async move {
            s.run(mpsc::channel(1).1).await;
            drop(guard);
        }
        .instrument(tracing::info_span!("datachannel-client", %local)),
    );
    Ok(answer.to_sdp_string())
}

/// A session's shell on a new UDP socket at `bind`, its address the host candidate.
async fn shell_at(bind: IpAddr) -> Result<Shell, String> {
    let sock = UdpSocket::bind(SocketAddr::new(bind, 0))
        .await
        .map_err(|e| format!("cannot bind a UDP socket on {bind}: {e}"))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let now = Instant::now();
    let mut rtc = Rtc::builder().build(now);
    let c = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(c);
    Ok(Shell::new(rtc, sock, local, now))
}

enum ConnEvent {
    Data(Vec<u8>),
    Closed,
}

struct Conn {
    to: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

struct Shell {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    /// The offering side: where each channel's connection goes.
    target: Option<Target>,
    pending: Option<SdpPendingOffer>,
    /// The answering side: connections to carry, channels free to carry them, and
    /// channels this side opened that are not open yet.
    listener: Option<TcpListener>,
    waiting: VecDeque<TcpStream>,
    idle: VecDeque<ChannelId>,
    opening: HashSet<ChannelId>,
    conns: HashMap<ChannelId, Conn>,
    /// What connections sent that the channels did not take yet.
    queued: HashMap<ChannelId, VecDeque<Vec<u8>>>,
    queued_bytes: usize,
    started: Instant,
    connected: bool,
}

impl Shell {
    fn new(rtc: Rtc, sock: UdpSocket, local: SocketAddr, now: Instant) -> Shell {
        Shell {
            rtc,
            sock,
            local,
            target: None,
            pending: None,
            listener: None,
            waiting: VecDeque::new(),
            idle: VecDeque::new(),
            opening: HashSet::new(),
            conns: HashMap::new(),
            queued: HashMap::new(),
            queued_bytes: 0,
            started: now,
            connected: false,
        }
    }

    /// Carries `stream` over channel `id`.
    fn attach(
        &mut self,
        id: ChannelId,
        stream: TcpStream,
        conns_tx: &mpsc::Sender<(ChannelId, ConnEvent)>,
    ) {
        let (to, rx) = mpsc::channel(CONN_QUEUE);
        let task = tokio::spawn(pipe_tcp(id, stream, rx, conns_tx.clone()).in_current_span());
        self.conns.insert(id, Conn { to, task });
    }

    /// A connection the listener accepted: onto a free channel, or a new one.
    fn accepted(&mut self, stream: TcpStream, conns_tx: &mpsc::Sender<(ChannelId, ConnEvent)>) {
        if let Some(id) = self.idle.pop_front() {
            self.attach(id, stream, conns_tx);
        } else if self.connected && self.conns.len() < MAX_CONNECTIONS {
            let id = self.rtc.direct_api().create_data_channel(ChannelConfig {
                label: "CONNECTIONS".into(),
                ..Default::default()
            });
            self.opening.insert(id);
            self.attach(id, stream, conns_tx);
        } else if self.waiting.len() < MAX_CONNECTIONS {
            self.waiting.push_back(stream);
        }
    }

    async fn run(mut self, mut signals: mpsc::Receiver<Signal>) {
        let (from_conns_tx, mut from_conns) = mpsc::channel::<(ChannelId, ConnEvent)>(256);
        let mut buf = vec![0u8; 2048];
        loop {
            let Some(wake) = self.drain(&from_conns_tx).await else {
                break;
            };
            if !self.connected && self.started.elapsed() > CONNECT_WITHIN {
                info!("the client did not connect in time");
                break;
            }
            let wake = wake.min(Instant::now() + Duration::from_secs(1));
            let input = tokio::select! {
                r = self.sock.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(
                        Instant::now(),
                        Receive { proto: Protocol::Udp, source, destination: self.local, contents },
                    );
                    if self.rtc.accepts(&input) {
                        let _ = self.rtc.handle_input(input);
                    }
                    continue;
                }
                s = signals.recv() => match s {
                    Some(s) => {
                        if let Err(e) = self.signal(s) {
                            debug!(error = %e, "bad signal from the client");
                        }
                        continue;
                    }
                    // The signalling stream ended: the session runs on, by itself.
                    None => {
                        signals = mpsc::channel(1).1;
                        continue;
                    }
                },
                Some((id, ev)) = from_conns.recv(), if self.queued_bytes < MAX_PENDING => {
                    match ev {
                        ConnEvent::Data(d) => {
                            self.queued_bytes += d.len();
                            self.queued.entry(id).or_default().push_back(d);
                        }
                        ConnEvent::Closed => {
                            self.conns.remove(&id);
                            self.rtc.direct_api().close_data_channel(id);
                        }
                    }
                    continue;
                }
                Ok((stream, _)) = async {
                    match &self.listener {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.accepted(stream, &from_conns_tx);
                    continue;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => Input::Timeout(Instant::now()),
            };
            if self.rtc.handle_input(input).is_err() {
                break;
            }
        }
        for (_, c) in self.conns.drain() {
            c.task.abort();
        }
        debug!("data channel session ended");
    }

    fn signal(&mut self, s: Signal) -> Result<(), String> {
        match s {
            Signal::Answer(sdp) => {
                let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| e.to_string())?;
                let pending = self.pending.take().ok_or("answered twice")?;
                self.rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .map_err(|e| e.to_string())
            }
            Signal::Candidate(c) => {
                let c = c.trim();
                let c = c.strip_prefix("a=").unwrap_or(c);
                let c = Candidate::from_sdp_string(c).map_err(|e| e.to_string())?;
                self.rtc.add_remote_candidate(c);
                Ok(())
            }
        }
    }

    /// Runs str0m until it wants time to pass: sends what it sends, handles what
    /// happened, hands queued data to the channels. `None`: the session is over.
    async fn drain(&mut self, conns_tx: &mpsc::Sender<(ChannelId, ConnEvent)>) -> Option<Instant> {
        loop {
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    debug!(error = %e, "WebRTC session failed");
                    return None;
                }
            };
            match out {
                Output::Transmit(t) => {
                    let _ = self.sock.send_to(&t.contents, t.destination).await;
                }
                Output::Event(e) => self.event(e, conns_tx),
                Output::Timeout(t) => {
                    if !self.rtc.is_alive() {
                        return None;
                    }
                    // One queued message per round, then drain again (str0m's rule:
                    // every mutation is followed by a full drain).
                    if self.write_one() {
                        continue;
                    }
                    return Some(t);
                }
            }
        }
    }

    /// Writes the first queued message a channel takes; whether one was written.
    fn write_one(&mut self) -> bool {
        let ids: Vec<ChannelId> = self.queued.keys().copied().collect();
        for id in ids {
            let Some(q) = self.queued.get_mut(&id) else {
                continue;
            };
            let Some(front) = q.front() else {
                self.queued.remove(&id);
                continue;
            };
            if self.opening.contains(&id) {
                continue;
            }
            let Some(mut ch) = self.rtc.channel(id) else {
                // The channel is gone: so is what was for it.
                let n: usize = q.iter().map(Vec::len).sum();
                self.queued_bytes -= n;
                self.queued.remove(&id);
                continue;
            };
            if let Ok(true) = ch.write(true, front) {
                let n = front.len();
                q.pop_front();
                self.queued_bytes -= n;
                return true;
            }
        }
        false
    }

    fn event(&mut self, e: Event, conns_tx: &mpsc::Sender<(ChannelId, ConnEvent)>) {
        match e {
            Event::Connected => {
                self.connected = true;
                info!("client connected");
            }
            Event::ChannelOpen(id, label) => {
                if self.opening.remove(&id) || self.conns.contains_key(&id) {
                    return;
                }
                if self.conns.len() >= MAX_CONNECTIONS {
                    info!(%label, "too many connections in this session: channel closed");
                    self.rtc.direct_api().close_data_channel(id);
                    return;
                }
                match self.target {
                    Some(target) => {
                        let (to, rx) = mpsc::channel(CONN_QUEUE);
                        let task = tokio::spawn(
                            connect(id, target, rx, conns_tx.clone()).in_current_span(),
                        );
                        self.conns.insert(id, Conn { to, task });
                    }
                    None => match self.waiting.pop_front() {
                        Some(stream) => self.attach(id, stream, conns_tx),
                        None => self.idle.push_back(id),
                    },
                }
            }
            Event::ChannelData(d) => {
                let stuck = self
                    .conns
                    .get(&d.id)
                    .is_some_and(|c| c.to.try_send(d.data).is_err());
                if stuck {
                    info!("a connection does not keep up: closed");
                    if let Some(c) = self.conns.remove(&d.id) {
                        c.task.abort();
                    }
                    self.rtc.direct_api().close_data_channel(d.id);
                }
            }
            Event::ChannelClose(id) => {
                if let Some(c) = self.conns.remove(&id) {
                    c.task.abort();
                }
            }
            _ => {}
        }
    }
}

/// One connection to the target for channel `id`: what the channel says goes in,
/// what comes back goes out as `Data`, and `Closed` when it ends.
async fn connect(
    id: ChannelId,
    target: Target,
    mut from_channel: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<(ChannelId, ConnEvent)>,
) {
    match target.proto {
        Proto::Tcp => {
            let stream =
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target.addr))
                    .await
                {
                    Ok(Ok(s)) => s,
                    other => {
                        debug!(?other, "cannot connect");
                        let _ = out.send((id, ConnEvent::Closed)).await;
                        return;
                    }
                };
            return pipe_tcp(id, stream, from_channel, out).await;
        }
        Proto::Udp => {
            let bind = if target.addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = match UdpSocket::bind(bind).await {
                Ok(s) if s.connect(target.addr).await.is_ok() => s,
                _ => {
                    let _ = out.send((id, ConnEvent::Closed)).await;
                    return;
                }
            };
            let mut buf = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    m = from_channel.recv() => match m {
                        Some(b) => { let _ = sock.send(&b).await; }
                        None => break,
                    },
                    r = sock.recv(&mut buf) => match r {
                        Ok(n) => {
                            if out.send((id, ConnEvent::Data(buf[..n].to_vec()))).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    },
                }
            }
        }
    }
    let _ = out.send((id, ConnEvent::Closed)).await;
}

/// A TCP connection carried by channel `id`, until either side ends it.
async fn pipe_tcp(
    id: ChannelId,
    stream: TcpStream,
    mut from_channel: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<(ChannelId, ConnEvent)>,
) {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let writer = async move {
        while let Some(b) = from_channel.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let o = out.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0
                || o.send((id, ConnEvent::Data(buf[..n].to_vec())))
                    .await
                    .is_err()
            {
                break;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    let _ = out.send((id, ConnEvent::Closed)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert_eq!(
            target("tcp", "10.1.2.3", 7, 51820),
            Ok(Target {
                proto: Proto::Tcp,
                addr: "10.1.2.3:7".parse().unwrap()
            })
        );
        assert_eq!(
            target("udp", "", 0, 51820).unwrap().addr,
            "127.0.0.1:51820".parse().unwrap()
        );
        // Each refusal names the field at fault.
        for (proto, dst, port, field) in [
            ("sctp", "10.1.2.3", 7, "proto:"),
            ("tcp", "10.1.2.3", 0, "port:"),
            ("tcp", "10.1.2.3", 70_000, "port:"),
            ("tcp", "example.com", 7, "dst:"),
        ] {
            let err = target(proto, dst, port, 1).unwrap_err();
            assert!(err.starts_with(field), "{proto} {dst}:{port}: {err}");
        }
        for bad in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                target("tcp", bad, 7, 1).unwrap_err().starts_with("dst:"),
                "{bad}"
            );
        }
    }
}
