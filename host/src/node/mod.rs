//! A running node: its data dir, identity and keys, Raft, WireGuard and the gRPC
//! servers, brought up in named steps ([`Node::start`]) and taken down in one place.
//!
//! - `datadir`: identity, key, where Raft lives
//! - `start`: the pure decision resume / bootstrap / join / refuse
//! - `client`: this node as a client of a mesh (join, discover, leave)
//! - `bootstrap`: the first node's addresses and the mesh's objects
//! - `servers`: listeners, the Raft transport and the public API

mod admin_socket;
mod bootstrap;
mod client;
pub mod daemon;
mod datadir;
mod place;
mod servers;
pub mod start;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use defguard_wireguard_rs::key::Key;
use ipnet::Ipv4Net;
use tracing::{Instrument, info, info_span, warn};
use webmesh_api::v1::MeshNode;

pub use client::Credentials;
pub use datadir::DataDir;

use crate::config::Config;
use crate::net::MeshNet;
use crate::net::wireguard::Interface;
use crate::plugins::Plugins;
use crate::raft::{Member, RaftNode};
use crate::store::engine::Engine;
use crate::trust::Trust;
use place::{Addresses, Place};
use start::{Facts, Mode, Refusal};
use webmesh_client::proof::Signer;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("{0}")]
    Identity(String),
    #[error("storage: {0}")]
    Store(#[from] crate::store::engine::StoreError),
    #[error("raft: {0}")]
    Raft(#[from] crate::raft::ProposeError),
    #[error("cannot listen on {addr} ({what}): {reason}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        reason: String,
    },
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("join: {0}")]
    Join(String),
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Plugin(#[from] crate::plugins::StartError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error("start-up interrupted (SIGTERM or SIGINT)")]
    Cancelled,
}

/// openraft narrates every election, and logs an error per retry to an unreachable
/// member; defguard and boringtun narrate every peer. Quiet unless asked for.
const QUIET: &str =
    "openraft=error,openraft::replication=off,defguard_wireguard_rs=warn,defguard_boringtun=error";

/// Logs to stderr at `level` (an EnvFilter), the chatty dependencies quieted.
pub fn init_logging(level: &str) {
    let filter = if level.contains("openraft") {
        level.to_string()
    } else {
        format!("{level},{QUIET}")
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// `fut`, unless `cancel` turns true first: a signal during a long join or wait ends
/// the start at once (and the teardown runs as for any failure).
async fn cancellable<T>(
    cancel: &mut tokio::sync::watch::Receiver<bool>,
    fut: impl std::future::Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
    tokio::select! {
        r = fut => r,
        _ = cancel.wait_for(|c| *c) => Err(NodeError::Cancelled),
    }
}

/// What a start has brought up so far. On failure and on shutdown it is taken down
/// here, in the reverse order of bringing it up.
#[derive(Default)]
struct Parts {
    raft: Option<RaftNode>,
    plugins: Option<Arc<Plugins>>,
    /// The plugins came from the AppDaemon and outlive this node.
    shared_plugins: bool,
    net: Option<MeshNet>,
    resolver: Option<crate::dns::resolver::HostResolver>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Parts {
    async fn teardown(mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
        if let Some(r) = self.resolver.take() {
            let _ = tokio::task::spawn_blocking(move || r.restore()).await;
        }
        if let Some(net) = self.net.take() {
            // Undoing host changes and removing the interface both block.
            let _ = tokio::task::spawn_blocking(move || {
                net.stop();
                net.iface.remove();
            })
            .await;
        }
        if let Some(raft) = &self.raft {
            raft.shutdown().await;
        }
        if let Some(plugins) = self.plugins.take() {
            if self.shared_plugins {
                plugins.detach();
            } else {
                plugins.shutdown().await;
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        // An aborted task is dropped when the runtime next polls it, and what it holds
        // goes with it — RocksDB among them: wait, so that a node started again in this
        // process (the AppDaemon's Connect) finds the data dir free.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            futures::future::join_all(self.tasks),
        )
        .await;
    }
}

/// A started node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub raft: RaftNode,
    pub grpc_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    leave_on_shutdown: bool,
    join: Vec<String>,
    creds: Credentials,
    parts: Parts,
    dir: DataDir,
    /// This node hosts a campfire (`--campfire-psk`).
    hosts_campfire: bool,
}

impl Node {
    /// The `camp://` URL of the campfire this node hosts, if it hosts one.
    pub fn campfire_url(&self) -> Option<String> {
        if !self.hosts_campfire {
            return None;
        }
        std::fs::read_to_string(self.dir.root.join("campfire.url"))
            .ok()
            .map(|u| u.trim().to_string())
    }

    /// Opens the data dir, starts Raft and the servers, and bootstraps, joins or resumes.
    /// `cancel` turning true stops a start that waits (joining, finding a leader).
    pub async fn start(
        cfg: Config,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Node, NodeError> {
        Self::start_with(cfg, cancel, None).await
    }

    /// [`Node::start`] with plugins already running (the AppDaemon's, which outlive the
    /// node); else the node starts its own from the settings.
    pub async fn start_with(
        mut cfg: Config,
        mut cancel: tokio::sync::watch::Receiver<bool>,
        plugins: Option<Arc<Plugins>>,
    ) -> Result<Node, NodeError> {
        cfg.join = campfire_joins(std::mem::take(&mut cfg.join)).await;
        let dir = DataDir::open(&cfg.data_dir)?;
        let name = dir.node_id(cfg.node_id.as_deref())?;
        // A run that died with --use-meshdns left its resolv.conf behind.
        crate::dns::resolver::restore_after_crash(&cfg.data_dir);
        let span = info_span!("node", id = %name);
        async move {
            let mut parts = Parts {
                shared_plugins: plugins.is_some(),
                plugins,
                ..Default::default()
            };
            match Self::bring_up(&cfg, &dir, &name, &mut parts, &mut cancel).await {
                Ok(node) => Ok(node),
                Err(e) => {
                    parts.teardown().await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The steps of a start, in order. Whatever they bring up goes into `parts`.
    async fn bring_up(
        cfg: &Config,
        dir: &DataDir,
        name: &str,
        parts: &mut Parts,
        cancel: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Node, NodeError> {
        let key = dir.wireguard_key()?;
        let signer = Arc::new(
            Signer::new(name, &key.to_string(), &key.public_key().to_string())
                .map_err(|e| NodeError::Identity(format!("the WireGuard key cannot sign: {e}")))?,
        );
        let creds = Credentials::load(cfg, signer.clone())?;
        let mut raft = parts
            .raft
            .insert(RaftNode::start(Engine::open(&dir.raft_path())?, signer.clone()).await?)
            .clone();
        let mut mode = Self::decide(cfg, dir, &raft, name).await?;
        if mode == Mode::Rejoin {
            info!(
                "the mesh this data dir remembers no longer has this node (it left or was \
                 removed): joining again under the same ID and key"
            );
            raft.shutdown().await;
            parts.raft = None;
            drop(raft);
            let old = dir.retire_raft()?;
            info!(old = %old.display(), "the old Raft state is set aside");
            raft = parts
                .raft
                .insert(RaftNode::start(Engine::open(&dir.raft_path())?, signer.clone()).await?)
                .clone();
            mode = Mode::Join;
        }
        if mode == Mode::Join {
            dir.clear_left();
        }
        let trust = Arc::new(Trust::new(
            signer,
            raft.state_machine.members(),
            Duration::from_secs(cfg.max_clock_skew),
        ));
        // Plugins before the mesh: one that cannot start stops us before we join.
        let plugins = match &parts.plugins {
            Some(shared) => {
                shared.attach(raft.engine.clone());
                shared.clone()
            }
            None => parts
                .plugins
                .insert(Arc::new(
                    Plugins::start(
                        &cfg.plugins,
                        Some(raft.engine.clone()),
                        Some(cfg.data_dir.clone()),
                    )
                    .await?,
                ))
                .clone(),
        };
        if plugins.auth().is_none() {
            warn!(
                "no AUTH plugin (open mode): anyone who reaches the API port may join under a \
                 new node ID that no role binding names, as a non-voter without routes, \
                 proving the key it registers; nothing more. Members act by proof of key, \
                 local administration through the admin socket"
            );
        }
        let place = cancellable(
            cancel,
            Self::find_place(cfg, &raft, name, &key, &creds, &plugins, mode),
        )
        .await?;
        trust.pin(place.voters.iter().cloned());
        let iface = Self::bring_up_wireguard(cfg, &key, &place).await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        parts.stop = Some(stop);
        let ice = match (&iface, cfg.ice) {
            (Some(i), true) => Some(
                Self::start_ice(
                    cfg,
                    name,
                    i,
                    &raft,
                    &trust,
                    stop_rx.clone(),
                    &mut parts.tasks,
                )
                .await?,
            ),
            _ => None,
        };
        // Peers before Raft: a joiner's leader reaches it through them.
        parts.net = iface.clone().map(|iface| {
            MeshNet::spawn(
                iface,
                raft.clone(),
                place.zone.clone(),
                place.initial_peers.clone(),
                ice.clone(),
            )
        });
        let raft_listen: Vec<SocketAddr> = if cfg.no_wireguard {
            vec![SocketAddr::new(cfg.grpc_listen.ip(), cfg.raft_port)]
        } else {
            place
                .addrs
                .listen_ips()
                .into_iter()
                .map(|ip| SocketAddr::new(ip, cfg.raft_port))
                .collect()
        };
        let raft_addr = servers::serve_raft(
            &raft_listen,
            &raft,
            trust.clone(),
            stop_rx.clone(),
            &mut parts.tasks,
        )
        .await?;
        // A node that is no Raft member (it joined without a raft port) follows the log
        // by stream from a voter; before anything reads Raft's figures.
        if Self::follows_by_stream(cfg, &raft, mode) {
            info!("following the log by stream from a voter");
            parts.tasks.push(crate::raft::stream::spawn_follower(
                raft.clone(),
                trust.clone(),
                place.voter_addrs.clone(),
            ));
        }
        let (grpc_bound, grpc_incoming) = servers::bind_all(&[cfg.grpc_listen], "gRPC API").await?;
        let grpc_addr = grpc_bound[0];
        cancellable(
            cancel,
            Self::join_raft(cfg, &raft, name, mode, &place, raft_addr, grpc_addr),
        )
        .await?;
        parts.tasks.push(raft.spawn_ttl_sweeper());
        parts
            .tasks
            .push(crate::services::membership::spawn_pending_sweeper(
                raft.clone(),
                parts.plugins.as_ref().map(|p| p.ipam()).unwrap_or_default(),
            ));
        if let Mode::Bootstrap { .. } = mode {
            bootstrap::ensure_bootstrapped(
                &raft,
                cfg,
                name,
                &key,
                &place.addrs,
                place.bootstrap_v6,
            )
            .await?;
        }
        let own_dns = match client::dns_settings(cfg) {
            Some(dns) => Some(crate::dns::serve(dns, &raft, &mut parts.tasks).await?.addr),
            None => None,
        };
        if cfg.use_meshdns {
            let servers = crate::dns::resolver::choose(own_dns, &place.dns_servers);
            let iface = (!cfg.no_wireguard).then_some(cfg.interface.as_str());
            match crate::dns::resolver::configure(
                iface,
                &place.mesh_domain,
                &servers,
                &cfg.data_dir,
            ) {
                Ok(r) => parts.resolver = Some(r),
                // The mesh works without it: say so rather than refuse to start.
                Err(e) => warn!(error = %e, "the host resolver is left as it was"),
            }
        }
        let turn = match cfg.turn_server {
            true => {
                // No relaying into the mesh's own networks: that would pass around its ACLs.
                let denied = place
                    .addrs
                    .v4
                    .map(|(_, n)| ipnet::IpNet::from(n))
                    .into_iter()
                    .chain(place.addrs.v6.map(|(_, n)| ipnet::IpNet::from(n)))
                    .collect();
                let stop = stop_rx.clone();
                let members = raft.state_machine.members();
                let is_member =
                    Box::new(move |id: &str| members.read().is_ok_and(|m| m.key_of(id).is_some()));
                Some(Self::start_turn(cfg, dir, denied, is_member, stop, &mut parts.tasks).await?)
            }
            false => None,
        };
        servers::serve_metrics(cfg, &raft, iface.clone(), turn.as_ref(), &mut parts.tasks).await?;
        parts.tasks.extend(plugins.start_duties(&raft));
        let api = servers::Api {
            cfg,
            raft: &raft,
            plugins: &plugins,
            campfire: turn.as_ref().and_then(|t| t.campfire.clone()),
            turn: turn.map(|t| t.issuer),
            iface,
            trust,
            ice,
        };
        parts
            .tasks
            .extend(servers::serve_api(api, grpc_incoming, stop_rx).await?);
        if mode == Mode::Resume {
            parts.tasks.push(tokio::spawn(
                client::refresh_record(
                    raft.clone(),
                    client::join_request(cfg, name, &key),
                    cfg.join.iter().chain(&cfg.discover).cloned().collect(),
                    creds.clone(),
                    cfg.no_wireguard,
                )
                .in_current_span(),
            ));
        }
        info!(grpc = %grpc_addr, raft = %raft_addr, "node ready");
        Ok(Node {
            raft,
            grpc_addr,
            raft_addr,
            leave_on_shutdown: cfg.leave_on_shutdown,
            // Leaving goes through the join or discovery addresses (the underlay).
            join: cfg.join.iter().chain(&cfg.discover).cloned().collect(),
            creds,
            parts: std::mem::take(parts),
            hosts_campfire: cfg.turn_server && cfg.campfire_psk.is_some(),
            dir: DataDir {
                root: dir.root.clone(),
            },
        })
    }

    /// Resume, bootstrap, join or refuse: [`start::decide`] over the data dir's facts.
    async fn decide(
        cfg: &Config,
        dir: &DataDir,
        raft: &RaftNode,
        name: &str,
    ) -> Result<Mode, NodeError> {
        let initialized = raft.is_initialized().await;
        // A node that left on shutdown may have stopped before its Raft state showed
        // the removal: the marker it wrote says so.
        let has_record = initialized
            && !dir.has_left()
            && crate::store::views::load_view(&raft.engine)
                .nodes
                .contains_key(name);
        let facts = Facts {
            initialized,
            has_record,
            bootstrap: cfg.bootstrap,
            can_join: !cfg.join.is_empty() || !cfg.discover.is_empty(),
        };
        start::decide(facts).map_err(|r| {
            let dir = cfg.data_dir.display();
            NodeError::Usage(match r {
                Refusal::LeftTheMesh => format!(
                    "the data dir {dir} holds Raft state but no record of node {name}; it may have left the mesh: remove the data dir to join again"
                ),
                Refusal::NothingToDo => format!(
                    "the data dir {dir} holds no mesh: pass --bootstrap to create one, or --join ADDR or --discover ADDR to join one"
                ),
            })
        })
    }

    /// The TURN server: relayed addresses on the public IP, none into `denied`.
    async fn start_turn(
        cfg: &Config,
        dir: &DataDir,
        denied: Vec<ipnet::IpNet>,
        is_member: Box<crate::turn::server::IsMember>,
        stop: tokio::sync::watch::Receiver<bool>,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<crate::turn::Turn, NodeError> {
        let public_ip = cfg.turn_public_ip.or(cfg.endpoint).ok_or_else(|| {
            NodeError::Usage("turn-server needs --turn-public-ip or --endpoint".into())
        })?;
        let secret = crate::turn::load_secret(&dir.turn_secret_path())
            .map_err(|e| NodeError::Usage(format!("the TURN secret in the data dir: {e}")))?;
        let settings = crate::turn::Settings {
            listen: cfg.turn_listen,
            public_ip,
            relay_ports: (cfg.turn_relay_ports.0, cfg.turn_relay_ports.1),
            max_allocations: cfg.turn_max_allocations,
            allocation_rate: cfg.turn_allocation_rate,
            total_rate: cfg.turn_total_rate,
            denied,
        };
        let (grpc, grpc_rx) = tokio::sync::mpsc::channel(256);
        let campfire = match &cfg.campfire_psk {
            Some(v) => Some(Self::open_campfire(cfg, dir, v, public_ip, grpc_rx, tasks)?),
            None => None,
        };
        let hosts = campfire.is_some();
        let mut turn = crate::turn::serve(settings, secret, is_member, campfire, stop, tasks)
            .await
            .map_err(|e| NodeError::Usage(e.to_string()))?;
        turn.campfire = hosts.then_some(grpc);
        Ok(turn)
    }

    /// A campfire room on this node's TURN server (`--campfire-psk KEY|generate`): its
    /// host task, and the `camp://` URL in the log and in the data dir.
    fn open_campfire(
        cfg: &Config,
        dir: &DataDir,
        value: &str,
        public_ip: std::net::IpAddr,
        grpc: tokio::sync::mpsc::Receiver<crate::turn::GrpcCampfire>,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<crate::turn::CampfireRoom, NodeError> {
        use crate::campfire::{CampUrl, Psk};
        let kept = dir.root.join("campfire.psk");
        let psk = if value == "generate" {
            match std::fs::read_to_string(&kept)
                .ok()
                .and_then(|t| Psk::parse(&t).ok())
            {
                Some(p) => p,
                None => {
                    let p = Psk::generate();
                    datadir::write_private(&kept, p.text().as_bytes())?;
                    p
                }
            }
        } else {
            Psk::parse(value).map_err(|e| {
                NodeError::Usage(format!(
                    "invalid campfire-psk: {e} (or `generate` for a new one)"
                ))
            })?
        };
        let port = if cfg.turn_listen.port() == 0 {
            3478
        } else {
            cfg.turn_listen.port()
        };
        let url = CampUrl {
            psk: psk.clone(),
            servers: vec![SocketAddr::new(public_ip, port)],
        };
        datadir::write_private(&dir.root.join("campfire.url"), url.to_string().as_bytes())?;
        info!(url = %url, "campfire open: nodes join with --join <url>");
        let (to_host, inbox) = tokio::sync::mpsc::channel(64);
        let (outbox, from_host) = tokio::sync::mpsc::channel(64);
        let host_id = crate::campfire::client_id();
        let api_port = cfg.grpc_listen.port();
        let api = SocketAddr::from(([127, 0, 0, 1], api_port));
        tasks.push(tokio::spawn(
            crate::campfire::host::run(psk.clone(), host_id.clone(), api, public_ip, inbox, outbox)
                .in_current_span(),
        ));
        Ok(crate::turn::CampfireRoom {
            room: psk.room(),
            host_id,
            to_host,
            from_host,
            grpc,
        })
    }

    /// This node's addresses and first peers: from its record (resume), from the new
    /// mesh (bootstrap) or from the join's answer.
    async fn find_place(
        cfg: &Config,
        raft: &RaftNode,
        name: &str,
        key: &Key,
        creds: &Credentials,
        plugins: &Plugins,
        mode: Mode,
    ) -> Result<Place, NodeError> {
        let zone = cfg.zone.clone().unwrap_or_default();
        let view = crate::store::views::load_view(&raft.engine);
        if let Some(me) = view.nodes.get(name).filter(|_| mode == Mode::Resume) {
            info!("resuming");
            return Ok(Place {
                addrs: Addresses::from_record(me, view.ipv4_network, view.ipv6_network),
                initial_peers: vec![],
                zone: if zone.is_empty() {
                    me.zone_awareness_id.clone()
                } else {
                    zone
                },
                bootstrap_v6: None,
                voters: vec![],
                voter_addrs: vec![],
                dns_servers: view.dns_servers(name, |id| raft.is_voter(id)),
                mesh_domain: view.mesh_domain.clone(),
            });
        }
        if let Mode::Bootstrap { .. } = mode {
            let (addrs, v6net) = bootstrap::first_addresses(cfg, name, &plugins.ipam()).await?;
            return Ok(Place {
                addrs,
                initial_peers: vec![],
                zone,
                bootstrap_v6: Some(v6net),
                voters: vec![],
                voter_addrs: vec![],
                dns_servers: vec![],
                mesh_domain: cfg.mesh_domain.clone(),
            });
        }
        let client::Joined {
            resp,
            voters,
            voter_addrs,
        } = client::join_mesh(cfg, name, key, creds).await?;
        let me = MeshNode {
            private_ipv4: resp
                .address_ipv4
                .parse::<Ipv4Net>()
                .map(|n| format!("{}/32", n.addr()))
                .unwrap_or_default(),
            private_ipv6: resp.address_ipv6.clone(),
            ..Default::default()
        };
        Ok(Place {
            addrs: Addresses::from_record(
                &me,
                resp.network_ipv4.parse().ok(),
                resp.network_ipv6.parse().ok(),
            ),
            initial_peers: resp.peers,
            zone,
            bootstrap_v6: None,
            voters,
            voter_addrs,
            dns_servers: resp.dns_servers,
            mesh_domain: resp.mesh_domain,
        })
    }

    /// The ICE socket and the tasks around it (`--ice`). Our own WireGuard device has
    /// bound the socket already (`iface.datapath`); with the kernel module the ICE task
    /// binds it.
    async fn start_ice(
        cfg: &Config,
        name: &str,
        iface: &Interface,
        raft: &RaftNode,
        trust: &Arc<Trust>,
        stop: tokio::sync::watch::Receiver<bool>,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<Arc<crate::ice::node::IceHub>, NodeError> {
        let listen = match &iface.datapath {
            Some(dp) => dp.listen,
            None => ice_listen(cfg)?,
        };
        let dialer = crate::tls::Dialer::for_members(&cfg.tls()).map_err(NodeError::Usage)?;
        let c = crate::ice::node::HubConfig {
            me: name.to_string(),
            listen,
            datapath: iface.datapath.clone(),
            wireguard_port: iface.listen_port,
            raft: raft.clone(),
            signer: trust.signer().clone(),
            dialer,
        };
        crate::ice::node::IceHub::start(c, stop, tasks)
            .await
            .map_err(|e| NodeError::Network(format!("ice-listen {listen}: {e}")))
    }

    /// The WireGuard interface with this node's addresses (none with `--no-wireguard`).
    async fn bring_up_wireguard(
        cfg: &Config,
        key: &Key,
        place: &Place,
    ) -> Result<Option<Arc<Interface>>, NodeError> {
        if cfg.no_wireguard {
            return Ok(None);
        }
        let ice = if cfg.ice {
            Some(ice_listen(cfg)?)
        } else {
            None
        };
        let (ifname, port, mtu, k, list) = (
            cfg.interface.clone(),
            cfg.wireguard_port,
            cfg.mtu,
            key.clone(),
            place.addrs.interface(),
        );
        let iface = tokio::task::spawn_blocking(move || {
            Interface::create(&ifname, &k, port, mtu, &list, ice)
        })
        .await
        .map_err(|e| NodeError::Network(e.to_string()))?
        .map_err(|e| NodeError::Network(e.to_string()))?;
        info!(interface = %iface.name, backend = iface.backend.as_str(), port = iface.listen_port, addresses = ?place.addrs.interface(), "WireGuard interface up");
        Ok(Some(Arc::new(iface)))
    }

    /// Whether this node follows the log by stream: it is no member of its Raft
    /// configuration (only voters are; a joiner that asked for a vote becomes a learner
    /// first). Once the leader makes it one (a promotion), Raft takes over.
    fn follows_by_stream(cfg: &Config, raft: &RaftNode, mode: Mode) -> bool {
        match mode {
            Mode::Bootstrap { .. } => false,
            Mode::Join | Mode::Rejoin => !cfg.voter,
            Mode::Resume => !raft.in_raft(),
        }
    }

    /// A new mesh initializes Raft with this node as its only voter; then every node
    /// waits for a leader (a joiner: for the leader to reach it through the mesh).
    async fn join_raft(
        cfg: &Config,
        raft: &RaftNode,
        name: &str,
        mode: Mode,
        place: &Place,
        raft_addr: SocketAddr,
        grpc_addr: SocketAddr,
    ) -> Result<(), NodeError> {
        match mode {
            Mode::Bootstrap { fresh: true } => {
                let advertise_ip = |bound: SocketAddr| match (cfg.no_wireguard, place.addrs.v4) {
                    (false, Some((v4, _))) => SocketAddr::new(IpAddr::V4(v4), bound.port()),
                    _ => servers::advertise(bound),
                };
                let me = Member {
                    name: name.to_string(),
                    raft_addr: advertise_ip(raft_addr).to_string(),
                    grpc_addr: advertise_ip(grpc_addr).to_string(),
                };
                info!(raft = %me.raft_addr, "bootstrapping a new mesh");
                raft.initialize(me).await?;
            }
            Mode::Bootstrap { fresh: false } => {
                info!("the data dir holds a mesh already: resuming it")
            }
            Mode::Resume if cfg.bootstrap => {
                info!("the data dir holds a mesh already: resuming it")
            }
            Mode::Resume => {}
            Mode::Join | Mode::Rejoin => {
                info!("waiting for the Raft leader to reach this node through the mesh");
                raft.wait_for_leader(client::JOIN_DEADLINE).await?;
                return Ok(());
            }
        }
        raft.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// This node's own API address as a local client dials it.
    fn local_api(&self) -> String {
        let a = self.grpc_addr;
        let ip = match a.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, a.port()).to_string()
    }

    /// Leaves the mesh if asked to, then stops the servers, WireGuard and Raft.
    pub async fn shutdown(self) {
        if self.leave_on_shutdown {
            let ipam = self
                .parts
                .plugins
                .as_ref()
                .map(|p| p.ipam())
                .unwrap_or_default();
            match client::leave_mesh(&self.raft, &self.join, &self.creds, &ipam).await {
                Ok(()) => {
                    info!("left the mesh");
                    if let Err(e) = self.dir.mark_left() {
                        warn!(error = %e, "cannot record that this node left");
                    }
                }
                Err(e) => warn!(error = %e, "could not leave the mesh"),
            }
        }
        self.parts.teardown().await;
    }
}

/// Join addresses with each `camp://` URL replaced by the local port that reaches its
/// host over a data channel; one whose host does not answer is left out (with a
/// warning: a node that resumes does not need it).
async fn campfire_joins(join: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(join.len());
    for j in join {
        if !j.starts_with("camp://") {
            out.push(j);
            continue;
        }
        let dialed = match crate::campfire::CampUrl::parse(&j) {
            Ok(url) => crate::campfire::join::dial(&url).await,
            Err(e) => Err(e.to_string()),
        };
        match dialed {
            Ok(local) => out.push(local.to_string()),
            Err(e) => warn!(error = %e, "campfire: no way in through it"),
        }
    }
    out
}

/// The ICE socket's address: `--ice-listen`, or (its IP unset) the address that routes
/// to the first join address, else `--endpoint`. The IP must be a specific one: it is
/// the host candidate, which STUN checks are addressed to.
fn ice_listen(cfg: &Config) -> Result<SocketAddr, NodeError> {
    let port = cfg.ice_listen.map(|a| a.port()).unwrap_or(0);
    if let Some(a) = cfg.ice_listen
        && !a.ip().is_unspecified()
    {
        return Ok(a);
    }
    let towards = cfg.join.iter().chain(&cfg.discover).find_map(|j| {
        use std::net::ToSocketAddrs;
        j.to_socket_addrs().ok()?.next()
    });
    if let Some(t) = towards {
        let bind = if t.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        if let Ok(s) = std::net::UdpSocket::bind(bind)
            && s.connect(t).is_ok()
            && let Ok(local) = s.local_addr()
        {
            return Ok(SocketAddr::new(local.ip(), port));
        }
    }
    match cfg.endpoint {
        Some(ip) => Ok(SocketAddr::new(ip, port)),
        None => Err(NodeError::Usage(
            "invalid ice-listen: give it an IP of this host (the host ICE candidate); \
             there is no join address or --endpoint to find one by"
                .into(),
        )),
    }
}
