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

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::thread::JoinHandle;

use gotatun::device::DeviceBuilder;
use gotatun::device::uapi::UapiServer;
use gotatun::packet::Packet;
use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use tokio::sync::oneshot;

/// A running device; dropping it stops the device and removes its TUN interface.
pub struct Device {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The configuration socket of interface `name` (the path `wg` and defguard use).
pub fn socket_path(name: &str) -> String {
    format!("/var/run/wireguard/{name}.sock")
}

impl Device {
    /// Creates TUN interface `name` and its device, and returns once both exist. No key,
    /// port or peers yet: those come through the configuration socket. A socket left by
    /// a killed run is replaced; one another live device answers on is not (the socket
    /// directory is shared by every network namespace).
    pub fn start(name: &str) -> Result<Device, String> {
        let sock = socket_path(name);
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Err(format!(
                "another WireGuard device already serves {sock}; choose another interface name"
            ));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let owned = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("wg-{name}"))
            .spawn(move || run(owned, ready_tx, stop_rx))
            .map_err(|e| format!("cannot start the device thread: {e}"))?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("the device thread ended before the device started".into()));
        let mut device = Device {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match started {
            Ok(()) => Ok(device),
            Err(e) => {
                device.shutdown();
                Err(e)
            }
        }
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
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stop: oneshot::Receiver<()>,
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
            let uapi = UapiServer::default_unix_socket(&name, None, None)
                .map_err(|e| format!("configuration socket {}: {e}", socket_path(&name)))?;
            // Whoever can connect can reconfigure the tunnel: root only.
            std::fs::set_permissions(socket_path(&name), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("configuration socket {}: {e}", socket_path(&name)))?;
            DeviceBuilder::new()
                .with_udp(Udp)
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
        let stopped = tokio::select! {
            _ = device.wait() => false,
            _ = stop => true,
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
/// `Udp:SndbufErrors` (ENOBUFS from the busy veth).
struct Udp;

impl UdpTransportFactory for Udp {
    type Send = Send;
    type Recv = UdpSocket;

    /// Binds as GotaTun's own factory does (dual-stack unless an address is given), but
    /// leaves UDP GRO off: GotaTun 0.10.2 splits a coalesced receive by walking its whole
    /// 256 KiB receive buffer rather than the bytes received, so every coalesced read also
    /// fed the device some 170 stale "datagrams" from earlier reads (old data and handshake
    /// messages replayed into the noise state machine). With it on, the leader of a
    /// 25-node mesh lost every member for 13-18 s in 6 runs of 26; off, in none of 10.
    async fn bind(&mut self, params: &UdpTransportFactoryParams) -> io::Result<(Send, UdpSocket)> {
        let addr = params
            .addr
            .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into());
        let opts = SockOpt {
            fwmark: params.fwmark,
            only_v6: addr.is_ipv6().then_some(params.addr.is_some()),
            ..SockOpt::default()
        };
        let udp = UdpSocket::bind((addr, params.port).into(), opts)?;
        Ok((Send(udp.clone()), udp))
    }
}

#[derive(Clone)]
struct Send(UdpSocket);

impl UdpSend for Send {
    type SendManyBuf = <UdpSocket as UdpSend>::SendManyBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.0.send_to(packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.0.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        if let Err(e) = self.0.send_many_to(buf, packets).await {
            // What went before the failure goes again: the receiver's replay window
            // drops the copies. A datagram refused again is lost alone.
            tracing::debug!(error = %e, datagrams = packets.len(), "batch send failed; sending one by one");
            for (packet, to) in packets.drain(..) {
                let _ = self.0.send_to(packet, to).await;
            }
        }
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.0)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.0.set_fwmark(mark)
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
        let err = Device::start(&name).err().expect("refused");
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
        let (_send, recv) = Udp.bind(&params(0)).await.unwrap();
        let mut on: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a local c_int of the size given.
        let rc = unsafe {
            libc::getsockopt(
                recv.socket().as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(UDP_GRO)");
        assert_eq!(on, 0, "UDP GRO is on");
    }

    /// One datagram the kernel refuses (here: an IPv6 destination on an IPv4 socket)
    /// must not take the rest of its batch along.
    #[tokio::test]
    async fn a_refused_datagram_does_not_drop_its_batch() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let (send, _recv) = Udp.bind(&params(0)).await.unwrap();
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
