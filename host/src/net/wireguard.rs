//! The node's WireGuard interface, through defguard_wireguard_rs: the kernel module when
//! it is loaded, else a userspace device in this process (GotaTun, `super::userspace`),
//! configured through its UAPI socket as wireguard-go is. Calls block (netlink / UAPI
//! socket): callers run them on blocking threads.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer;
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi,
};
use webmesh_api::v1::{InterfaceMetrics, PeerMetrics};

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("WireGuard interface {name}: {reason}")]
    Interface { name: String, reason: String },
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Kernel,
    Userspace,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

/// What we configure for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    /// Sorted CIDRs.
    pub allowed_ips: Vec<String>,
    pub keepalive: Option<u16>,
}

/// The mark on WireGuard's UDP packets and the routing table of exit routes.
pub const FWMARK: u32 = 51820;

pub struct Interface {
    pub name: String,
    pub backend: Backend,
    pub listen_port: u16,
    pub public_key: String,
    pub addresses: Vec<IpAddrMask>,
    api: Mutex<Box<dyn WireguardInterfaceApi + Send>>,
    /// The userspace device, kept for the node's life (dropping it removes the TUN).
    device: Mutex<Option<super::userspace::Device>>,
    /// With ICE on our own device: the ICE socket the device shares with the ICE task.
    pub datapath: Option<std::sync::Arc<crate::ice::datapath::Datapath>>,
}

fn iface_err(name: &str, e: impl std::fmt::Display) -> WgError {
    WgError::Interface {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

impl Interface {
    /// Creates and configures the interface: key, port, MTU and addresses; no peers.
    /// `ice`: the ICE socket's address, which our own (userspace) device binds and
    /// serves ICE peers on (the kernel module cannot; the ICE task binds it then).
    pub fn create(
        name: &str,
        key: &Key,
        listen_port: u16,
        mtu: u32,
        addresses: &[(IpAddr, u8)],
        ice: Option<std::net::SocketAddr>,
    ) -> Result<Interface, WgError> {
        let (mut api, backend): (Box<dyn WireguardInterfaceApi + Send>, Backend) =
            if Path::new("/sys/module/wireguard").exists() {
                (
                    Box::new(WGApi::<Kernel>::new(name).map_err(|e| iface_err(name, e))?),
                    Backend::Kernel,
                )
            } else {
                (
                    Box::new(WGApi::<Userspace>::new(name).map_err(|e| iface_err(name, e))?),
                    Backend::Userspace,
                )
            };
        // The kernel module makes the interface; in userspace it is our own device, which
        // replaces the socket a killed previous run may have left behind.
        let datapath = match backend {
            Backend::Userspace => ice.map(crate::ice::datapath::Datapath::new),
            Backend::Kernel => None,
        };
        let device = match backend {
            Backend::Kernel => {
                api.create_interface().map_err(|e| {
                    iface_err(name, format!("cannot create ({}): {e}", backend.as_str()))
                })?;
                None
            }
            Backend::Userspace => {
                let device = super::userspace::Device::start(name, datapath.clone())
                    .map_err(|e| iface_err(name, format!("cannot create (userspace): {e}")))?;
                super::routing::link_up(name).map_err(|e| iface_err(name, e))?;
                Some(device)
            }
        };
        // Duplicate address detection is meaningless on a point-to-point tunnel, and
        // while it runs (about a second) nothing can bind the new IPv6 address.
        let dad = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
        if let Err(e) = std::fs::write(&dad, "0") {
            tracing::debug!(path = %dad, error = %e, "cannot turn off IPv6 DAD");
        }
        let addresses: Vec<IpAddrMask> = addresses
            .iter()
            .map(|(ip, len)| IpAddrMask::new(*ip, *len))
            .collect();
        let config = InterfaceConfiguration {
            name: name.to_string(),
            prvkey: key.to_string(),
            addresses: addresses.clone(),
            port: listen_port,
            peers: vec![],
            mtu: Some(mtu),
            // Marks the tunnel's own UDP packets, so that a default route through the
            // mesh (an exit node) does not capture them (policy routing, as wg-quick).
            fwmark: Some(FWMARK),
        };
        api.configure_interface(&config)
            .map_err(|e| iface_err(name, e))?;
        Ok(Interface {
            name: name.to_string(),
            backend,
            listen_port,
            public_key: key.public_key().to_string(),
            addresses,
            api: Mutex::new(api),
            device: Mutex::new(device),
            datapath,
        })
    }

    fn api(&self) -> std::sync::MutexGuard<'_, Box<dyn WireguardInterfaceApi + Send>> {
        self.api.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Interface::update_peer`] changes a peer in place (no endpoint to keep).
    pub fn updates_in_place(&self) -> bool {
        self.backend == Backend::Kernel
            || self
                .device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// Changes an existing peer in place, keeping its session. The kernel does so through
    /// its API; our userspace device through its handle (its configuration socket would
    /// replace the peer); a device we do not own is told to remove and add it, keeping
    /// the endpoint it roamed to when we have none for it (a peer behind NAT).
    pub fn update_peer(
        &self,
        p: &PeerConfig,
        live_endpoint: Option<SocketAddr>,
    ) -> Result<(), WgError> {
        if self.backend == Backend::Kernel {
            return self.set_peer(p);
        }
        let device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(device) = device.as_ref() {
            let peer_err = |reason: String| WgError::Peer {
                peer: p.public_key.clone(),
                reason,
            };
            let key =
                Key::try_from(p.public_key.as_str()).map_err(|e| peer_err(format!("{e:?}")))?;
            let allowed_ips = p
                .allowed_ips
                .iter()
                .map(|c| {
                    c.parse::<ipnetwork::IpNetwork>()
                        .map_err(|e| peer_err(format!("allowed IP {c}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let public_key: [u8; 32] = key.as_array();
            let known = device
                .change_peer(super::userspace::PeerChange {
                    public_key,
                    allowed_ips,
                    endpoint: p.endpoint,
                    keepalive: p.keepalive,
                })
                .map_err(peer_err)?;
            if known {
                return Ok(());
            }
            return self.set_peer(p);
        }
        drop(device);
        self.remove_peer(&p.public_key)?;
        let mut p = p.clone();
        p.endpoint = p.endpoint.or(live_endpoint);
        self.set_peer(&p)
    }

    /// Adds a peer (or, on the kernel backend, updates it; see [`Interface::update_peer`]).
    pub fn set_peer(&self, p: &PeerConfig) -> Result<(), WgError> {
        let peer_err = |e: &dyn std::fmt::Display| WgError::Peer {
            peer: p.public_key.clone(),
            reason: e.to_string(),
        };
        let key = Key::try_from(p.public_key.as_str()).map_err(|e| peer_err(&format!("{e:?}")))?;
        let mut peer = Peer::new(key);
        peer.endpoint = p.endpoint;
        peer.persistent_keepalive_interval = p.keepalive;
        peer.allowed_ips = p
            .allowed_ips
            .iter()
            .map(|c| {
                c.parse::<IpAddrMask>()
                    .map_err(|e| peer_err(&format!("allowed IP {c}: {e:?}")))
            })
            .collect::<Result<_, _>>()?;
        self.api().configure_peer(&peer).map_err(|e| peer_err(&e))
    }

    pub fn remove_peer(&self, public_key: &str) -> Result<(), WgError> {
        let peer_err = |e: &dyn std::fmt::Display| WgError::Peer {
            peer: public_key.to_string(),
            reason: e.to_string(),
        };
        let key = Key::try_from(public_key).map_err(|e| peer_err(&format!("{e:?}")))?;
        self.api().remove_peer(&key).map_err(|e| peer_err(&e))
    }

    /// Routes for CIDRs outside the mesh networks (advertised routes) via this interface.
    pub fn add_routes(&self, cidrs: &[String]) -> Result<(), WgError> {
        if cidrs.is_empty() {
            return Ok(());
        }
        let mut peer = Peer::new(Key::new([0; 32]));
        peer.allowed_ips = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
        self.api()
            .configure_peer_routing(&[peer])
            .map_err(|e| iface_err(&self.name, e))
    }

    /// Live peer statistics: public key → (endpoint, last handshake, rx, tx).
    pub fn peer_stats(&self) -> Result<BTreeMap<String, PeerStats>, WgError> {
        let host = self
            .api()
            .read_interface_data()
            .map_err(|e| iface_err(&self.name, e))?;
        Ok(host
            .peers
            .into_iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    PeerStats {
                        endpoint: p.endpoint,
                        last_handshake: p.last_handshake.filter(|t| *t > SystemTime::UNIX_EPOCH),
                        rx_bytes: p.rx_bytes,
                        tx_bytes: p.tx_bytes,
                        keepalive: p.persistent_keepalive_interval,
                        allowed_ips: p.allowed_ips.iter().map(|a| a.to_string()).collect(),
                        protocol_version: p.protocol_version,
                    },
                )
            })
            .collect())
    }

    /// `v1.InterfaceMetrics` of the interface.
    pub fn metrics(&self) -> Result<InterfaceMetrics, WgError> {
        let stats = self.peer_stats()?;
        let v4 = self.addresses.iter().find(|a| a.address.is_ipv4());
        let v6 = self.addresses.iter().find(|a| a.address.is_ipv6());
        let peers: Vec<PeerMetrics> = stats
            .iter()
            .map(|(k, s)| PeerMetrics {
                public_key: k.clone(),
                endpoint: s.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                persistent_keep_alive: s.keepalive.map(|k| format!("{k}s")).unwrap_or_default(),
                last_handshake_time: s.last_handshake.map(rfc3339).unwrap_or_default(),
                allowed_ips: s.allowed_ips.clone(),
                protocol_version: i64::from(s.protocol_version.unwrap_or(1)),
                receive_bytes: s.rx_bytes,
                transmit_bytes: s.tx_bytes,
            })
            .collect();
        Ok(InterfaceMetrics {
            device_name: self.name.clone(),
            public_key: self.public_key.clone(),
            address_v4: v4.map(|a| a.to_string()).unwrap_or_default(),
            address_v6: v6.map(|a| a.to_string()).unwrap_or_default(),
            r#type: self.backend.as_str().into(),
            listen_port: i32::from(self.listen_port),
            total_receive_bytes: stats.values().map(|s| s.rx_bytes).sum(),
            total_transmit_bytes: stats.values().map(|s| s.tx_bytes).sum(),
            num_peers: peers.len() as i32,
            peers,
        })
    }

    /// Removes the interface (the userspace device also goes when the process exits).
    pub fn remove(&self) {
        if let Err(e) = self.api().remove_interface() {
            // Removing the userspace interface also tries to clear DNS, which fails
            // harmlessly where no DNS manager runs.
            tracing::debug!(error = %e, "interface removal reported an error");
        }
        drop(self.device.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

#[derive(Debug, Clone)]
pub struct PeerStats {
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub keepalive: Option<u16>,
    pub allowed_ips: Vec<String>,
    pub protocol_version: Option<u32>,
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ts = webmesh_api::wkt::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    };
    // The proto3 JSON form of a Timestamp is RFC 3339.
    serde_json::to_value(ts)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
