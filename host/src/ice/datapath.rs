//! The shared socket: with our own (userspace) WireGuard device, the device reads and
//! writes the ICE socket itself, so an ICE peer's WireGuard costs what any peer's does
//! (no loopback hop, no task in between). Each ICE peer keeps a loopback proxy address
//! as its WireGuard endpoint, but nothing is sent there: the device's UDP layer
//! (`net::userspace`) looks the address up here and sends to the peer's selected remote
//! on the ICE socket (direct pair) or hands the datagram to the ICE task (relayed pair,
//! or none yet). What the device reads on the ICE socket from a direct peer's remote is
//! WireGuard under the proxy address; STUN, TURN and strangers go to the ICE task.
//! Relayed WireGuard the ICE task unwraps comes back to the device the same way.
//!
//! The kernel module cannot share a socket: there the ICE task keeps the proxies
//! (`shell`). `Routes` is sans IO; `Datapath` holds it and the channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::mpsc;

/// Where the device sends a datagram addressed to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Not an ICE peer's proxy: the WireGuard socket, as any peer.
    Wireguard,
    /// A direct pair: from the ICE socket to this remote.
    Direct(SocketAddr),
    /// A relayed pair (or none selected yet): the ICE task wraps it for the TURN server.
    Task(Arc<str>),
}

/// ICE peers by proxy address, and the proxy of each direct pair's remote.
#[derive(Debug, Default)]
pub struct Routes {
    by_proxy: HashMap<SocketAddr, Entry>,
    by_remote: HashMap<SocketAddr, SocketAddr>,
}

#[derive(Debug)]
struct Entry {
    peer: Arc<str>,
    direct: Option<SocketAddr>,
    /// Remotes accepted from, oldest first (at most `REMOTES`).
    remotes: Vec<SocketAddr>,
}

/// Remotes a peer's WireGuard is accepted from: the selected one, those before it, and
/// those its connectivity checks came from (as `mux`).
const REMOTES: usize = 8;

impl Routes {
    pub fn is_empty(&self) -> bool {
        self.by_proxy.is_empty()
    }

    /// `peer`'s WireGuard endpoint is `proxy`; no pair yet.
    pub fn add(&mut self, proxy: SocketAddr, peer: &str) {
        self.remove(proxy);
        let e = Entry {
            peer: peer.into(),
            direct: None,
            remotes: Vec::new(),
        };
        self.by_proxy.insert(proxy, e);
    }

    /// The pair `proxy`'s peer uses now: `Some(remote)` when it starts at the ICE
    /// socket, `None` when relayed. The last few remotes the peer used stay accepted
    /// while another peer does not claim them (the two ends switch pairs a moment apart;
    /// WireGuard authenticates every packet, so an old address buys a sender nothing).
    pub fn set_direct(&mut self, proxy: SocketAddr, remote: Option<SocketAddr>) {
        let Some(e) = self.by_proxy.get_mut(&proxy) else {
            return;
        };
        e.direct = remote;
        if let Some(r) = remote {
            self.accept(proxy, r);
        }
    }

    /// A connectivity check of `proxy`'s peer came from `remote` (the peer sends from
    /// there, on the pair it chose): its WireGuard is accepted from there too. Remotes
    /// age by their last check or selection, as in `mux`.
    pub fn learn(&mut self, proxy: SocketAddr, remote: SocketAddr) {
        self.accept(proxy, remote);
    }

    fn accept(&mut self, proxy: SocketAddr, r: SocketAddr) {
        let Some(e) = self.by_proxy.get_mut(&proxy) else {
            return;
        };
        e.remotes.retain(|x| *x != r);
        e.remotes.push(r);
        if e.remotes.len() > REMOTES {
            let gone = e.remotes.remove(0);
            if self.by_remote.get(&gone) == Some(&proxy) {
                self.by_remote.remove(&gone);
            }
        }
        self.by_remote.insert(r, proxy);
    }

    pub fn remove(&mut self, proxy: SocketAddr) {
        if self.by_proxy.remove(&proxy).is_some() {
            self.by_remote.retain(|_, p| *p != proxy);
        }
    }

    /// Where a datagram the device sends to `to` goes.
    pub fn out(&self, to: SocketAddr) -> Out {
        match self.by_proxy.get(&to) {
            None => Out::Wireguard,
            Some(Entry {
                direct: Some(r), ..
            }) => Out::Direct(*r),
            Some(e) => Out::Task(e.peer.clone()),
        }
    }

    /// The proxy address WireGuard knows the sender of a WireGuard datagram from `from`
    /// by (on the ICE socket), if `from` is an ICE peer's remote.
    pub fn inbound(&self, from: SocketAddr) -> Option<SocketAddr> {
        self.by_remote.get(&from).copied()
    }
}

/// Relayed WireGuard for the device, with the proxy address it comes under.
type ToDevice = mpsc::Sender<(Vec<u8>, SocketAddr)>;

/// What the ICE task gets from the device.
pub struct TaskEnd {
    /// What the device read on the ICE socket that is not a direct peer's WireGuard.
    pub from_socket: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// WireGuard the device sent to a peer whose pair is relayed (or not selected yet).
    pub from_wireguard: mpsc::Receiver<(Arc<str>, Vec<u8>)>,
}

/// Datagrams queued between the device and the ICE task each way (dropped past it, as
/// a full socket buffer would).
const QUEUE: usize = 1024;

/// The state the device's UDP layer and the ICE task share.
pub struct Datapath {
    /// Where the ICE socket is bound (a specific IP: the host candidate).
    pub listen: SocketAddr,
    /// The ICE socket, bound by the device on its own runtime (its reads are the
    /// device's); the ICE task sends on a duplicate of it.
    socket: OnceLock<gotatun::udp::socket::UdpSocket>,
    pub routes: RwLock<Routes>,
    to_task: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    wireguard_to_task: mpsc::Sender<(Arc<str>, Vec<u8>)>,
    /// Into the device's current receiver: relayed WireGuard, under the proxy address.
    to_device: Mutex<Option<ToDevice>>,
    /// The ICE task's end, until it starts.
    task_end: Mutex<Option<TaskEnd>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Datapath {
    pub fn new(listen: SocketAddr) -> Arc<Datapath> {
        let (to_task, from_socket) = mpsc::channel(QUEUE);
        let (wireguard_to_task, from_wireguard) = mpsc::channel(QUEUE);
        Arc::new(Datapath {
            listen,
            socket: OnceLock::new(),
            routes: RwLock::new(Routes::default()),
            to_task,
            wireguard_to_task,
            to_device: Mutex::new(None),
            task_end: Mutex::new(Some(TaskEnd {
                from_socket,
                from_wireguard,
            })),
        })
    }

    /// Binds the ICE socket (once; later calls return it). Call on the device's runtime.
    pub fn bind(&self) -> std::io::Result<gotatun::udp::socket::UdpSocket> {
        if let Some(s) = self.socket.get() {
            return Ok(s.clone());
        }
        let s = gotatun::udp::socket::UdpSocket::bind(
            self.listen,
            gotatun::udp::socket::SockOpt::default(),
        )?;
        Ok(self.socket.get_or_init(|| s).clone())
    }

    /// A duplicate of the ICE socket for the ICE task (which only sends on it), and the
    /// task's end of the channels. `None` if the device has not bound the socket or the
    /// task already took them.
    pub fn for_task(&self) -> Option<(std::net::UdpSocket, TaskEnd)> {
        use std::os::fd::AsFd;
        let s = self.socket.get()?;
        let fd = s.socket().as_fd().try_clone_to_owned().ok()?;
        let end = lock(&self.task_end).take()?;
        Some((std::net::UdpSocket::from(fd), end))
    }

    /// A new receiver in the device: relayed WireGuard goes to it from now on.
    pub fn device_receiver(&self) -> mpsc::Receiver<(Vec<u8>, SocketAddr)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        *lock(&self.to_device) = Some(tx);
        rx
    }

    /// Something the device read on the ICE socket, for the ICE task.
    pub fn to_task(&self, from: SocketAddr, data: &[u8]) {
        let _ = self.to_task.try_send((from, data.to_vec()));
    }

    /// WireGuard for `peer`, whose pair the ICE task handles.
    pub fn wireguard_to_task(&self, peer: Arc<str>, data: &[u8]) {
        let _ = self.wireguard_to_task.try_send((peer, data.to_vec()));
    }

    /// WireGuard the ICE task received for the peer WireGuard knows at `proxy`.
    pub fn to_device(&self, proxy: SocketAddr, data: Vec<u8>) {
        if let Some(tx) = lock(&self.to_device).as_ref() {
            let _ = tx.try_send((data, proxy));
        }
    }

    pub fn routes(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn routes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn datagrams_to_a_proxy_follow_the_peers_pair() {
        let mut r = Routes::default();
        let (px, py) = (a("127.0.0.1:40001"), a("127.0.0.1:40002"));
        let (r1, r2) = (a("198.51.100.1:5000"), a("198.51.100.2:6000"));
        assert!(r.is_empty());
        assert_eq!(r.out(px), Out::Wireguard);
        r.add(px, "x");
        r.add(py, "y");
        // No pair yet: the task holds it (nothing is sent to the proxy itself).
        assert_eq!(r.out(px), Out::Task("x".into()));
        assert_eq!(r.inbound(r1), None);
        r.set_direct(px, Some(r1));
        assert_eq!(r.out(px), Out::Direct(r1));
        assert_eq!(r.inbound(r1), Some(px));
        // Relayed now: out through the task; the old remote still answers as x.
        r.set_direct(px, None);
        assert_eq!(r.out(px), Out::Task("x".into()));
        assert_eq!(r.inbound(r1), Some(px));
        // Another peer taking that address over wins it.
        r.set_direct(py, Some(r1));
        assert_eq!(r.inbound(r1), Some(py));
        r.set_direct(px, Some(r2));
        r.remove(py);
        assert_eq!(r.inbound(r1), None);
        assert_eq!(r.inbound(r2), Some(px));
        assert_eq!(r.out(py), Out::Wireguard);
        // Unknown proxies are ignored.
        r.set_direct(py, Some(r1));
        assert_eq!(r.inbound(r1), None);
        // A check from another address of the peer's: accepted from there too.
        let r3 = a("198.51.100.3:8000");
        r.learn(px, r3);
        assert_eq!((r.inbound(r3), r.out(px)), (Some(px), Out::Direct(r2)));
        // A peer's old remotes age out.
        for port in 1..=REMOTES as u16 {
            r.set_direct(px, Some(SocketAddr::new(r2.ip(), 7000 + port)));
        }
        assert_eq!(r.inbound(r2), None);
        assert_eq!(r.inbound(a("198.51.100.2:7001")), Some(px));
        assert_eq!(r.by_remote.len(), REMOTES);
    }
}
