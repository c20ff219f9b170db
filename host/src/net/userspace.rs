//! The userspace WireGuard device, where the kernel module is not loaded: GotaTun
//! (Mullvad's boringtun fork: batched UDP with recvmmsg/sendmmsg, one task per
//! direction) on a thread and a single-threaded runtime of its own. It serves the
//! standard configuration protocol on `/var/run/wireguard/<name>.sock`, as wireguard-go
//! does, so defguard_wireguard_rs configures it exactly as before.
//!
//! Why a runtime of its own: the device's tasks then never wait behind the node's API,
//! Raft or reconciler work, and on two cores one thread per tunnel end moves more than
//! two (0.70 against 0.57 Gbit/s, BENCHMARKS.md): the tasks hand packets to each other,
//! and across threads every hand-off is a wake-up.
//!
//! With ICE on, the device also reads and writes the ICE socket itself
//! (`ice::datapath`): an ICE peer's WireGuard then takes no detour through a proxy.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gotatun::device::DeviceBuilder;
use gotatun::device::uapi::UapiServer;
use gotatun::packet::{Packet, PacketBufPool};
use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use tokio::sync::{mpsc, oneshot};

use crate::ice::datapath::{Datapath, Out};
use crate::ice::mux::{Kind, classify};

/// A running device; dropping it stops the device and removes its TUN interface.
pub struct Device {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    changes: tokio::sync::mpsc::UnboundedSender<Change>,
}

/// A change to a peer in place: what the configuration socket cannot do (a `set` of a
/// known peer replaces it, and its session with it: every change of a peer's allowed
/// IPs — each member that joins behind it — cost a new handshake and the packets
/// waiting for it).
pub struct PeerChange {
    pub public_key: [u8; 32],
    pub allowed_ips: Vec<ipnetwork::IpNetwork>,
    /// `None` keeps the endpoint the peer roamed to.
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
}

struct Change {
    peer: PeerChange,
    done: std::sync::mpsc::Sender<bool>,
}

/// The configuration socket of interface `name` (the path `wg` and defguard use).
pub fn socket_path(name: &str) -> String {
    format!("/var/run/wireguard/{name}.sock")
}

impl Device {
    /// Creates TUN interface `name` and its device, and returns once both exist. No key,
    /// port or peers yet: those come through the configuration socket. A socket left by
    /// a killed run is replaced; one another live device answers on is not (the socket
    /// directory is shared by every network namespace). With `ice`, the device binds
    /// the ICE socket too and serves its ICE peers' WireGuard on it.
    pub fn start(name: &str, ice: Option<Arc<Datapath>>) -> Result<Device, String> {
        let sock = socket_path(name);
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Err(format!(
                "another WireGuard device already serves {sock}; choose another interface name"
            ));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (changes, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let owned = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("wg-{name}"))
            .spawn(move || run(owned, ice, ready_tx, stop_rx, changes_rx))
            .map_err(|e| format!("cannot start the device thread: {e}"))?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("the device thread ended before the device started".into()));
        let mut device = Device {
            stop: Some(stop_tx),
            thread: Some(thread),
            changes,
        };
        match started {
            Ok(()) => Ok(device),
            Err(e) => {
                device.shutdown();
                Err(e)
            }
        }
    }

    /// Changes a known peer in place, keeping its session (blocking; from a blocking
    /// thread). `false`: the device has no such peer.
    pub fn change_peer(&self, peer: PeerChange) -> Result<bool, String> {
        let (done, rx) = std::sync::mpsc::channel();
        self.changes
            .send(Change { peer, done })
            .map_err(|_| "the userspace device stopped".to_string())?;
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .map_err(|_| "the userspace device did not answer".to_string())
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    name: String,
    ice: Option<Arc<Datapath>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot build the device runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let built = async {
            if let Some(dp) = &ice {
                dp.bind()
                    .map_err(|e| format!("ICE socket (ice-listen {}): {e}", dp.listen))?;
            }
            let uapi = UapiServer::default_unix_socket(&name, None, None)
                .map_err(|e| format!("configuration socket {}: {e}", socket_path(&name)))?;
            // Whoever can connect can reconfigure the tunnel: root only.
            std::fs::set_permissions(socket_path(&name), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("configuration socket {}: {e}", socket_path(&name)))?;
            DeviceBuilder::new()
                .with_udp(Udp { ice })
                .create_tun(&name)
                .map_err(|e| format!("cannot create TUN device {name}: {e}"))?
                .with_uapi(uapi)
                .build()
                .await
                .map_err(|e| format!("cannot start the device: {e}"))
        }
        .await;
        let mut device = match built {
            Ok(d) => d,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let stopped = loop {
            tokio::select! {
                _ = device.wait() => break false,
                _ = &mut stop => break true,
                Some(Change { peer, done }) = changes.recv() => {
                    let key = x25519_dalek::PublicKey::from(peer.public_key);
                    let known = device
                        .modify_peer(&key, |p| {
                            p.clear_allowed_ips();
                            p.add_allowed_ips(peer.allowed_ips);
                            if peer.endpoint.is_some() {
                                p.set_endpoint(peer.endpoint);
                            }
                            p.set_keepalive(peer.keepalive);
                        })
                        .await
                        .unwrap_or(false);
                    let _ = done.send(known);
                }
            }
        };
        if stopped {
            device.stop().await;
        } else {
            tracing::error!(interface = %name, "the userspace WireGuard device failed");
        }
        let _ = std::fs::remove_file(socket_path(&name));
    });
}

/// GotaTun's UDP socket with two changes. UDP GRO is off (see `bind`). And a batch
/// (`sendmmsg`) that fails part-way is finished one datagram at a time rather than
/// dropped whole: a batch holds datagrams for many peers — the Raft leader's heartbeats
/// to every member — and one refused datagram would take all of them along. Sends are
/// refused in practice: while a node joins a mesh of 25 on two cores, members count
/// `Udp:SndbufErrors` (ENOBUFS from the busy veth). With ICE, the ICE socket joins it
/// (`ice::datapath`).
struct Udp {
    ice: Option<Arc<Datapath>>,
}

impl UdpTransportFactory for Udp {
    type Send = Send;
    type Recv = Recv;

    /// Binds as GotaTun's own factory does (dual-stack unless an address is given), but
    /// leaves UDP GRO off: GotaTun 0.10.2 splits a coalesced receive by walking its whole
    /// 256 KiB receive buffer rather than the bytes received, so every coalesced read also
    /// fed the device some 170 stale "datagrams" from earlier reads (old data and handshake
    /// messages replayed into the noise state machine). With it on, the leader of a
    /// 25-node mesh lost every member for 13-18 s in 6 runs of 26; off, in none of 10.
    async fn bind(&mut self, params: &UdpTransportFactoryParams) -> io::Result<(Send, Recv)> {
        let addr = params
            .addr
            .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into());
        let opts = SockOpt {
            fwmark: params.fwmark,
            only_v6: addr.is_ipv6().then_some(params.addr.is_some()),
            ..SockOpt::default()
        };
        let udp = UdpSocket::bind((addr, params.port).into(), opts)?;
        let ice = match &self.ice {
            Some(dp) => Some((dp.clone(), dp.bind()?)),
            None => None,
        };
        let recv = Recv {
            wg: udp.clone(),
            ice: ice.as_ref().map(|(dp, sock)| IceRecv {
                dp: dp.clone(),
                sock: sock.clone(),
                relayed: dp.device_receiver(),
                got: Vec::new(),
            }),
        };
        Ok((Send { wg: udp, ice }, recv))
    }
}

#[derive(Clone)]
struct Send {
    wg: UdpSocket,
    ice: Option<(Arc<Datapath>, UdpSocket)>,
}

type Batch = <UdpSocket as UdpSend>::SendManyBuf;

#[derive(Default)]
struct SendBufs {
    wg: Batch,
    ice: Batch,
    via_ice: Vec<(Packet, SocketAddr)>,
}

/// Sends a batch; one that fails part-way is finished one datagram at a time. What
/// went before the failure goes again: the receiver's replay window drops the copies.
/// A datagram the kernel has no room for (ENOBUFS: the interface's queue is full, as
/// when the Raft leader of 25 members on two cores sends a change to all of them at
/// once) is tried again shortly: dropped, it is a lost TCP segment inside the tunnel,
/// and the retransmission timer's back-off turned such a loss into seconds of silence
/// between the leader and every member. A datagram refused otherwise is lost alone.
async fn send_batch(sock: &UdpSocket, buf: &mut Batch, packets: &mut Vec<(Packet, SocketAddr)>) {
    if let Err(e) = sock.send_many_to(buf, packets).await {
        tracing::debug!(error = %e, datagrams = packets.len(), "batch send failed; sending one by one");
        for (packet, to) in packets.drain(..) {
            let mut wait = Duration::from_micros(250);
            loop {
                match sock.socket().send_to(&packet, to).await {
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && wait <= NOBUFS_WAIT => {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    _ => break,
                }
            }
        }
    }
}

/// The longest single wait for room in the interface's queue (about 16 ms in all).
const NOBUFS_WAIT: Duration = Duration::from_millis(8);

impl Send {
    /// Where a datagram to `to` goes (an ICE peer's proxy address is never sent to).
    fn out(&self, to: SocketAddr) -> Out {
        match &self.ice {
            Some((dp, _)) => dp.routes().out(to),
            None => Out::Wireguard,
        }
    }
}

impl UdpSend for Send {
    type SendManyBuf = SendBufs;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        match (self.out(destination), &self.ice) {
            (Out::Direct(remote), Some((_, ice))) => ice.send_to(packet, remote).await,
            (Out::Task(peer), Some((dp, _))) => {
                dp.wireguard_to_task(peer, &packet);
                Ok(())
            }
            _ => self.wg.send_to(packet, destination).await,
        }
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.wg.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        if let Some((dp, ice)) = &self.ice {
            {
                let routes = dp.routes();
                if !routes.is_empty() {
                    let mut i = 0;
                    while i < packets.len() {
                        match routes.out(packets[i].1) {
                            Out::Wireguard => i += 1,
                            Out::Direct(remote) => {
                                let (p, _) = packets.swap_remove(i);
                                buf.via_ice.push((p, remote));
                            }
                            Out::Task(peer) => {
                                let (p, _) = packets.swap_remove(i);
                                dp.wireguard_to_task(peer, &p);
                            }
                        }
                    }
                }
            }
            if !buf.via_ice.is_empty() {
                send_batch(ice, &mut buf.ice, &mut buf.via_ice).await;
            }
        }
        if !packets.is_empty() {
            send_batch(&self.wg, &mut buf.wg, packets).await;
        }
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.wg)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.wg.set_fwmark(mark)
    }
}

/// Reads the WireGuard socket, and with ICE the ICE socket and what the ICE task
/// unwrapped from TURN relays.
struct Recv {
    wg: UdpSocket,
    ice: Option<IceRecv>,
}

struct IceRecv {
    dp: Arc<Datapath>,
    sock: UdpSocket,
    /// Relayed WireGuard, under the peer's proxy address.
    relayed: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    got: Vec<(Packet, SocketAddr)>,
}

impl IceRecv {
    /// Keeps what came from a direct peer's remote (as from its proxy address); STUN
    /// and TURN are the ICE task's; anything else from anyone else is dropped here.
    fn sort(&mut self, packets: &mut Vec<(Packet, SocketAddr)>) {
        let routes = self.dp.routes();
        for (p, from) in self.got.drain(..) {
            match (classify(&p), routes.inbound(from)) {
                (Kind::Other, Some(proxy)) => packets.push((p, proxy)),
                (Kind::Other, None) => {}
                _ => self.dp.to_task(from, &p),
            }
        }
    }
}

fn packet(data: &[u8]) -> Packet {
    Packet::from_bytes(bytes::BytesMut::from(data))
}

#[derive(Default)]
struct RecvBufs {
    wg: <UdpSocket as UdpRecv>::RecvManyBuf,
    ice: <UdpSocket as UdpRecv>::RecvManyBuf,
}

impl UdpRecv for Recv {
    type RecvManyBuf = RecvBufs;

    async fn recv_from(&mut self, pool: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        let Some(ice) = &mut self.ice else {
            return self.wg.recv_from(pool).await;
        };
        loop {
            let mut ice_pool = pool.clone();
            tokio::select! {
                r = self.wg.recv_from(pool) => return r,
                r = ice.sock.recv_from(&mut ice_pool) => {
                    match r {
                        Ok(got) => ice.got.push(got),
                        Err(e) => tracing::debug!(error = %e, "ICE socket read failed"),
                    }
                    let mut kept = Vec::with_capacity(1);
                    ice.sort(&mut kept);
                    if let Some(p) = kept.pop() {
                        return Ok(p);
                    }
                }
                Some((data, proxy)) = ice.relayed.recv() => return Ok((packet(&data), proxy)),
            }
        }
    }

    async fn recv_many_from(
        &mut self,
        bufs: &mut RecvBufs,
        pool: &mut PacketBufPool,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        let Some(ice) = &mut self.ice else {
            return self.wg.recv_many_from(&mut bufs.wg, pool, packets).await;
        };
        loop {
            // Each read is cancel-safe: a datagram is taken only by the read that wins.
            let mut ice_pool = pool.clone();
            tokio::select! {
                r = self.wg.recv_many_from(&mut bufs.wg, pool, packets) => return r,
                r = ice.sock.recv_many_from(&mut bufs.ice, &mut ice_pool, &mut ice.got) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "ICE socket read failed");
                    }
                    ice.sort(packets);
                }
                Some((data, proxy)) = ice.relayed.recv() => {
                    packets.push((packet(&data), proxy));
                    while let Ok((data, proxy)) = ice.relayed.try_recv() {
                        packets.push((packet(&data), proxy));
                    }
                }
            }
            if !packets.is_empty() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn params(port: u16) -> UdpTransportFactoryParams {
        UdpTransportFactoryParams {
            addr: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            port,
            fwmark: None,
        }
    }

    /// The socket directory is shared by every network namespace: a name whose socket
    /// a live device answers on is refused, and that device's socket stays.
    #[test]
    fn a_socket_another_live_device_serves_is_not_taken_over() {
        let name = format!("wmt{}", std::process::id() % 100_000);
        let path = socket_path(&name);
        std::fs::create_dir_all("/var/run/wireguard").unwrap();
        let _ = std::fs::remove_file(&path);
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = Device::start(&name, None).err().expect("refused");
        assert!(
            err.contains("already serves") && err.contains(&path),
            "{err}"
        );
        assert!(
            std::os::unix::net::UnixStream::connect(&path).is_ok(),
            "socket kept"
        );
        drop(live);
        std::fs::remove_file(&path).unwrap();
    }

    /// GotaTun 0.10.2's GRO receive path replays stale buffer contents: it must stay off.
    #[tokio::test]
    async fn the_device_socket_has_udp_gro_off() {
        let (_send, recv) = Udp { ice: None }.bind(&params(0)).await.unwrap();
        let mut on: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a local c_int of the size given.
        let rc = unsafe {
            libc::getsockopt(
                recv.wg.socket().as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(UDP_GRO)");
        assert_eq!(on, 0, "UDP GRO is on");
    }

    /// With ICE, the device sends an ICE peer's WireGuard (addressed to the peer's proxy)
    /// on the ICE socket to the selected remote, or to the ICE task while relayed; reads
    /// a direct peer's WireGuard as from its proxy, and leaves STUN and strangers to the
    /// task; relayed WireGuard from the task comes in as from the proxy.
    #[tokio::test]
    async fn ice_peers_use_the_ice_socket_under_their_proxy_address() {
        let dp = Datapath::new("127.0.0.1:0".parse().unwrap());
        let (send, mut recv) = Udp {
            ice: Some(dp.clone()),
        }
        .bind(&params(0))
        .await
        .unwrap();
        let (ice_sock, mut task) = dp.for_task().expect("the device bound the ICE socket");
        let ice_addr = ice_sock.local_addr().unwrap();
        let remote = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let plain = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy: SocketAddr = "127.0.0.1:9".parse().unwrap();
        dp.routes_mut().add(proxy, "x");
        dp.routes_mut()
            .set_direct(proxy, Some(remote.local_addr().unwrap()));
        let packet = |b: &[u8]| Packet::from_bytes(bytes::BytesMut::from(b));
        let within = std::time::Duration::from_secs(5);
        let mut b = [0u8; 64];

        // Out: the ICE peer's on the ICE socket, the other peer's on WireGuard's.
        let mut bufs = SendBufs::default();
        let mut batch = vec![
            (packet(b"to-x"), proxy),
            (packet(b"to-plain"), plain.local_addr().unwrap()),
        ];
        send.send_many_to(&mut bufs, &mut batch).await.unwrap();
        let (n, from) = tokio::time::timeout(within, remote.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&b[..n], from), (&b"to-x"[..], ice_addr));
        let (n, from) = tokio::time::timeout(within, plain.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], b"to-plain");
        assert_ne!(from, ice_addr);

        // In: WireGuard from the remote is the proxy's; STUN goes to the task; a
        // stranger's datagram goes nowhere.
        plain.send_to(b"stranger", ice_addr).await.unwrap();
        let stun = [
            0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        remote.send_to(&stun, ice_addr).await.unwrap();
        remote.send_to(&[4, 0, 0, 0, 7, 7], ice_addr).await.unwrap();
        let mut rbufs = RecvBufs::default();
        let mut pool = PacketBufPool::new(16);
        let mut got = Vec::new();
        while got.is_empty() {
            tokio::time::timeout(within, recv.recv_many_from(&mut rbufs, &mut pool, &mut got))
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            (&got[0].0[..], got[0].1),
            (&[4u8, 0, 0, 0, 7, 7][..], proxy)
        );
        let (from, data) = tokio::time::timeout(within, task.from_socket.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((from, &data[..]), (remote.local_addr().unwrap(), &stun[..]));

        // Relayed: out to the task, in from it.
        dp.routes_mut().set_direct(proxy, None);
        send.send_to(packet(b"relay-me"), proxy).await.unwrap();
        let (peer, data) = tokio::time::timeout(within, task.from_wireguard.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&*peer, &data[..]), ("x", &b"relay-me"[..]));
        dp.to_device(proxy, b"relayed-in".to_vec());
        got.clear();
        tokio::time::timeout(within, recv.recv_many_from(&mut rbufs, &mut pool, &mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&got[0].0[..], got[0].1), (&b"relayed-in"[..], proxy));
    }

    /// One datagram the kernel refuses (here: an IPv6 destination on an IPv4 socket)
    /// must not take the rest of its batch along.
    #[tokio::test]
    async fn a_refused_datagram_does_not_drop_its_batch() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let (send, _recv) = Udp { ice: None }.bind(&params(0)).await.unwrap();
        let packet = |b: &[u8]| Packet::from_bytes(bytes::BytesMut::from(b));
        let mut batch = vec![
            (packet(b"first"), to),
            (packet(b"refused"), "[::1]:9".parse().unwrap()),
            (packet(b"last"), to),
        ];
        let mut buf = Default::default();
        send.send_many_to(&mut buf, &mut batch).await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        while !got.contains(&b"last".to_vec()) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut b))
                .await
                .expect("the batch's last datagram arrives")
                .unwrap();
            got.push(b[..n].to_vec());
        }
        assert!(got.contains(&b"first".to_vec()));
    }
}
