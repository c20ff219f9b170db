//! A running node: its data dir, identity and keys, Raft, and the gRPC servers.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use defguard_wireguard_rs::key::Key;
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{Instrument, info, info_span, warn};
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{Feature, JoinRequest, JoinResponse, LeaveRequest, MeshNode};

use crate::config::Config;
use crate::mesh::{bootstrap, ids, ipam, keys};
use crate::net::MeshNet;
use crate::net::wireguard::Interface;
use crate::raft::{Member, RaftNode};
use crate::services::node::{NodeInfo, NodeService};
use crate::store::engine::Engine;
use crate::store::ops::Op;

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
}

fn dir_err(path: &Path, e: impl ToString) -> NodeError {
    NodeError::DataDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Files in the data dir.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> Result<DataDir, NodeError> {
        fs::create_dir_all(root).map_err(|e| dir_err(root, e))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| dir_err(root, e))?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    fn id_path(&self) -> PathBuf {
        self.root.join("node-id")
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join("wireguard.key")
    }

    pub fn raft_path(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The node ID: the configured one, else the stored one, else the hostname. A data
    /// dir belongs to one node ID for life.
    pub fn node_id(&self, configured: Option<&str>) -> Result<String, NodeError> {
        let path = self.id_path();
        let stored = match fs::read_to_string(&path) {
            Ok(s) => Some(s.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(dir_err(&path, e)),
        };
        let id = match (configured, &stored) {
            (Some(c), Some(s)) if c != s => {
                return Err(NodeError::Identity(format!(
                    "invalid node-id {c:?}: the data dir {} belongs to node {s:?}; use that ID or another data dir",
                    self.root.display()
                )));
            }
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => s.clone(),
            (None, None) => {
                let host = hostname::get()
                    .map_err(|e| {
                        NodeError::Identity(format!("cannot read the hostname: {e}; set --node-id"))
                    })?
                    .to_string_lossy()
                    .to_string();
                ids::validate_node_id(&host).map_err(|why| {
                    NodeError::Identity(format!(
                        "invalid node-id {host:?} (the hostname): {why}; set --node-id"
                    ))
                })?;
                host
            }
        };
        if stored.is_none() {
            write_private(&path, id.as_bytes())?;
        }
        Ok(id)
    }

    /// The WireGuard private key, created on first use (mode 0600).
    pub fn wireguard_key(&self) -> Result<Key, NodeError> {
        let path = self.key_path();
        match fs::read_to_string(&path) {
            Ok(s) => Key::try_from(s.trim())
                .map_err(|e| dir_err(&path, format!("unreadable WireGuard key: {e:?}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate();
                write_private(&path, key.to_string().as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(dir_err(&path, e)),
        }
    }
}

/// Writes a file readable by its owner only, atomically (temp file + rename + fsync).
fn write_private(path: &Path, data: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| dir_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| dir_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| dir_err(path, e))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| dir_err(dir, e))?;
    }
    Ok(())
}

/// A started node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub raft: RaftNode,
    pub grpc_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub net: Option<MeshNet>,
    leave_on_shutdown: bool,
    join: Vec<String>,
    creds: Credentials,
    plugins: crate::plugins::Plugins,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// What this node presents when it calls another mesh's API (join, leave).
#[derive(Clone, Default)]
pub struct Credentials {
    headers: Vec<(
        &'static str,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
    dialer: crate::tls::Dialer,
}

impl Credentials {
    fn load(cfg: &Config) -> Result<Credentials, NodeError> {
        let mut c = Credentials {
            dialer: crate::tls::Dialer::for_joining(&cfg.tls).map_err(NodeError::Usage)?,
            ..Default::default()
        };
        if let (Some(user), Some(file)) = (&cfg.auth_basic_user, &cfg.auth_basic_password_file) {
            let text = std::fs::read_to_string(file).map_err(|e| {
                NodeError::Usage(format!(
                    "invalid auth-basic-password-file {:?}: {e}",
                    file.display()
                ))
            })?;
            let password = text.lines().next().unwrap_or_default();
            let value = |key: &str, v: &str| {
                v.parse().map_err(|_| {
                    NodeError::Usage(format!("invalid {key}: it must be printable ASCII"))
                })
            };
            c.headers.push((
                "x-webmesh-basic-auth-username",
                value("auth-basic-user", user)?,
            ));
            c.headers.push((
                "x-webmesh-basic-auth-password",
                value("auth-basic-password-file", password)?,
            ));
        }
        Ok(c)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        for (k, v) in &self.headers {
            r.metadata_mut().insert(*k, v.clone());
        }
        r
    }
}

/// How long a joiner keeps trying its join addresses before giving up.
const JOIN_DEADLINE: Duration = Duration::from_secs(600);

/// This node's mesh addresses and the networks they sit in.
#[derive(Debug, Clone)]
struct Addresses {
    v4: Option<(Ipv4Addr, Ipv4Net)>,
    v6: Option<(Ipv6Net, Ipv6Net)>,
}

impl Addresses {
    fn from_record(node: &MeshNode, v4net: Option<Ipv4Net>, v6net: Option<Ipv6Net>) -> Addresses {
        let v4 = node
            .private_ipv4
            .parse::<Ipv4Net>()
            .ok()
            .zip(v4net)
            .map(|(a, n)| (a.addr(), n));
        let v6 = node.private_ipv6.parse::<Ipv6Net>().ok().zip(v6net);
        Addresses { v4, v6 }
    }

    /// Interface addresses, with the mesh networks' prefix lengths so that the whole
    /// mesh routes through the interface.
    fn interface(&self) -> Vec<(IpAddr, u8)> {
        let mut out = Vec::new();
        if let Some((a, n)) = self.v4 {
            out.push((IpAddr::V4(a), n.prefix_len()));
        }
        if let Some((p, n)) = self.v6 {
            out.push((IpAddr::V6(ipam::ipv6_host(p)), n.prefix_len()));
        }
        out
    }

    fn listen_ips(&self) -> Vec<IpAddr> {
        self.interface().into_iter().map(|(ip, _)| ip).collect()
    }
}

fn listen_err(addr: SocketAddr, what: &'static str) -> impl Fn(std::io::Error) -> NodeError {
    move |e| NodeError::Listen {
        addr,
        what,
        reason: e.to_string(),
    }
}

/// Binds every address and merges the connections.
async fn bind_all(
    addrs: &[SocketAddr],
    what: &'static str,
) -> Result<(Vec<SocketAddr>, Incoming), NodeError> {
    let mut bound = Vec::new();
    let mut streams: Vec<TcpListenerStream> = Vec::new();
    for a in addrs {
        // A fresh IPv6 address may still be tentative for a moment.
        let mut tries = 0;
        let l = loop {
            match TcpListener::bind(a).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other.map_err(listen_err(*a, what))?,
            }
        };
        bound.push(l.local_addr().map_err(listen_err(*a, what))?);
        streams.push(TcpListenerStream::new(l));
    }
    // tonic's `tcp_nodelay` applies only to sockets it binds itself: without it, small
    // gRPC replies wait on Nagle's algorithm for the peer's delayed ACK (~40 ms).
    let incoming = futures::stream::StreamExt::map(futures::stream::select_all(streams), |conn| {
        conn.inspect(|c| {
            let _ = c.set_nodelay(true);
        })
    });
    Ok((bound, Box::pin(incoming)))
}

type Incoming =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>>;

impl Node {
    /// Opens the data dir, starts Raft and the servers, and bootstraps, joins or resumes.
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        let dir = DataDir::open(&cfg.data_dir)?;
        let name = dir.node_id(cfg.node_id.as_deref())?;
        let span = info_span!("node", id = %name);
        Self::start_named(cfg, dir, name).instrument(span).await
    }

    async fn start_named(cfg: Config, dir: DataDir, name: String) -> Result<Node, NodeError> {
        let key = dir.wireguard_key()?;
        let creds = Credentials::load(&cfg)?;
        let engine = Engine::open(&dir.raft_path())?;
        let raft = RaftNode::start(engine, &name).await?;
        // Plugins before the mesh: one that cannot start stops us before we join.
        let mut plugins = match crate::plugins::Plugins::start(
            &cfg.plugins,
            raft.engine.clone(),
            Some(cfg.data_dir.join("wasm-cache")),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                raft.shutdown().await;
                return Err(e.into());
            }
        };
        if plugins.auth().is_none() {
            warn!(
                "no AUTH plugin: the API trusts callers by address only (loopback acts as this \
                 node, a mesh address as that node); anyone who reaches the API port can join"
            );
        }
        let initialized = raft.is_initialized().await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();

        // What we are: addresses, the first peers, and (bootstrap) the mesh's /48.
        let mut initial_peers = Vec::new();
        let mut zone = cfg.zone.clone().unwrap_or_default();
        let mut bootstrap_v6 = None;
        let addrs = if initialized {
            let view = crate::net::load_view(&raft.engine);
            match view.nodes.get(&name) {
                Some(me) => {
                    info!("resuming");
                    if zone.is_empty() {
                        zone = me.zone_awareness_id.clone();
                    }
                    Some(Addresses::from_record(
                        me,
                        view.ipv4_network,
                        view.ipv6_network,
                    ))
                }
                None if cfg.bootstrap => None,
                None => {
                    return Err(NodeError::Usage(format!(
                        "the data dir {} holds Raft state but no record of node {name}; it may have left the mesh: remove the data dir to join again",
                        cfg.data_dir.display()
                    )));
                }
            }
        } else if !cfg.bootstrap && cfg.join.is_empty() && cfg.discover.is_empty() {
            return Err(NodeError::Usage(format!(
                "the data dir {} holds no mesh: pass --bootstrap to create one, or --join ADDR or --discover ADDR to join one",
                cfg.data_dir.display()
            )));
        } else {
            None
        };
        let addrs = match addrs {
            Some(a) => a,
            None if cfg.bootstrap => {
                // The first node takes the first addresses of the new mesh.
                let v6net = cfg.ipv6_network.unwrap_or_else(ipam::random_ula48);
                bootstrap_v6 = Some(v6net);
                let (pv4, pv6) = plugins
                    .ipam()
                    .allocate(&name, true, Some(cfg.ipv4_network), Some(v6net))
                    .await
                    .map_err(|e| NodeError::Bootstrap(format!("IPAM: {}", e.message())))?;
                let v4 = match pv4.parse::<Ipv4Net>() {
                    Ok(n) => n.addr(),
                    Err(_) => ipam::next_ipv4(cfg.ipv4_network, &Default::default())
                        .map_err(|e| NodeError::Bootstrap(e.to_string()))?,
                };
                let v6 = match pv6.parse::<Ipv6Net>() {
                    Ok(n) => n,
                    Err(_) => ipam::next_ipv6_prefix(v6net, &Default::default())
                        .map_err(|e| NodeError::Bootstrap(e.to_string()))?,
                };
                Addresses {
                    v4: Some((v4, cfg.ipv4_network)),
                    v6: Some((v6, v6net)),
                }
            }
            None => {
                let resp = join_mesh(&cfg, &name, &key, &creds).await?;
                initial_peers = resp.peers.clone();
                let v4net: Option<Ipv4Net> = resp.network_ipv4.parse().ok();
                let v6net: Option<Ipv6Net> = resp.network_ipv6.parse().ok();
                let me = MeshNode {
                    private_ipv4: resp
                        .address_ipv4
                        .parse::<Ipv4Net>()
                        .map(|n| format!("{}/32", n.addr()))
                        .unwrap_or_default(),
                    private_ipv6: resp.address_ipv6.clone(),
                    ..Default::default()
                };
                Addresses::from_record(&me, v4net, v6net)
            }
        };

        // WireGuard first: Raft listens on the mesh addresses.
        let iface = if cfg.no_wireguard {
            None
        } else {
            let (ifname, port, mtu, k, list) = (
                cfg.interface.clone(),
                cfg.wireguard_port,
                cfg.mtu,
                key.clone(),
                addrs.interface(),
            );
            let iface = tokio::task::spawn_blocking(move || {
                Interface::create(&ifname, &k, port, mtu, &list)
            })
            .await
            .map_err(|e| NodeError::Network(e.to_string()))?
            .map_err(|e| NodeError::Network(e.to_string()))?;
            info!(interface = %iface.name, backend = iface.backend.as_str(), port = iface.listen_port, addresses = ?addrs.interface(), "WireGuard interface up");
            Some(Arc::new(iface))
        };
        // Peers before Raft: a joiner's leader reaches it through them.
        let net =
            iface.map(|iface| MeshNet::spawn(iface, raft.clone(), zone.clone(), initial_peers));
        let raft_listen: Vec<SocketAddr> = if cfg.no_wireguard {
            vec![SocketAddr::new(cfg.grpc_listen.ip(), cfg.raft_port)]
        } else {
            addrs
                .listen_ips()
                .into_iter()
                .map(|ip| SocketAddr::new(ip, cfg.raft_port))
                .collect()
        };
        let (raft_bound, raft_incoming) = bind_all(&raft_listen, "raft").await?;
        let raft_addr = raft_bound[0];
        let raft_svc = webmesh_api::internal::raft_transport_server::RaftTransportServer::new(
            crate::raft::server::RaftServer::new(raft.raft.clone()),
        )
        .max_decoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES);
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(
            async move {
                // The leader cancels appends that outlive their deadline (a busy
                // follower); each is a stream reset on the shared HTTP/2 connection, and
                // hyper's default of 20 pending resets would drop the whole connection.
                let res = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .http2_max_pending_accept_reset_streams(Some(10_000))
                    .add_service(raft_svc)
                    .serve_with_incoming_shutdown(raft_incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    warn!(error = %e, "raft transport stopped");
                }
            }
            .in_current_span(),
        ));
        let (grpc_bound, grpc_incoming) = bind_all(&[cfg.grpc_listen], "gRPC API").await?;
        let grpc_addr = grpc_bound[0];

        if cfg.bootstrap && !initialized {
            let advertise_ip = |bound: SocketAddr| match (cfg.no_wireguard, addrs.v4) {
                (false, Some((v4, _))) => SocketAddr::new(IpAddr::V4(v4), bound.port()),
                _ => advertise(bound),
            };
            let me = Member {
                name: name.clone(),
                raft_addr: advertise_ip(raft_addr).to_string(),
                grpc_addr: advertise_ip(grpc_addr).to_string(),
            };
            info!(raft = %me.raft_addr, "bootstrapping a new mesh");
            raft.initialize(me).await?;
        } else if cfg.bootstrap {
            info!("the data dir holds a mesh already: resuming it");
        }
        if cfg.bootstrap || initialized {
            raft.wait_for_leader(Duration::from_secs(30)).await?;
        } else {
            info!("waiting for the Raft leader to reach this node through the mesh");
            raft.wait_for_leader(JOIN_DEADLINE).await?;
        }
        tasks.push(raft.spawn_ttl_sweeper());
        if cfg.bootstrap {
            ensure_bootstrapped(&raft, &cfg, &name, &key, &addrs, bootstrap_v6).await?;
        }

        plugins.start_duties(&raft);
        let info = Arc::new(NodeInfo {
            started_at: SystemTime::now(),
            started: Instant::now(),
            features: vec![
                Feature::Nodes,
                Feature::LeaderProxy,
                Feature::MeshApi,
                Feature::AdminApi,
                Feature::PeerDiscovery,
            ],
        });
        let metrics_iface = net.as_ref().map(|n| n.iface.clone());
        // Calls to other members (the leader, above all): one channel per member.
        let channels = Arc::new(crate::services::Channels::new(
            crate::tls::Dialer::for_members(&cfg.tls).map_err(NodeError::Usage)?,
        ));
        let node_svc = webmesh_api::v1::node_server::NodeServer::new(
            NodeService::new(
                raft.clone(),
                info,
                Arc::new(move || metrics_iface.as_ref().and_then(|i| i.metrics().ok())),
            )
            .underlay(cfg.no_wireguard)
            .ipam(plugins.ipam())
            .channels(channels.clone()),
        );
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(webmesh_api::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Bootstrap(format!("reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(webmesh_api::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| NodeError::Bootstrap(format!("reflection: {e}")))?;
        let proxy_layer = crate::services::proxy::LeaderProxyLayer::new(raft.clone(), channels);
        let admin_svc = webmesh_api::v1::admin_server::AdminServer::new(
            crate::services::admin::AdminService::new(raft.clone()),
        );
        let mesh_svc = webmesh_api::v1::mesh_server::MeshServer::new(
            crate::services::mesh::MeshService::new(raft.clone()),
        );
        let discovery_svc = webmesh_api::v1::peer_discovery_server::PeerDiscoveryServer::new(
            crate::services::mesh::DiscoveryService::new(raft.clone()),
        );
        let auth_layer = crate::services::auth::AuthLayer::new(
            plugins.auth(),
            raft.state_machine.members(),
            &name,
        );
        let mut api = tonic::transport::Server::builder();
        match crate::tls::server_config(&cfg.tls).map_err(NodeError::Usage)? {
            Some(tls) => {
                api = api
                    .tls_config(tls)
                    .map_err(|e| NodeError::Usage(format!("invalid tls-cert: {e}")))?;
                info!(client_ca = cfg.tls.client_ca.is_some(), "API speaks TLS");
            }
            None if plugins.auth().is_some() => warn!(
                "the API is plaintext: credentials sent to the AUTH plugin travel in clear; \
                 set --tls-cert and --tls-key"
            ),
            None => {}
        }
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(
            async move {
                let res = api
                    .tcp_nodelay(true)
                    .layer(auth_layer)
                    .layer(proxy_layer)
                    .add_service(node_svc)
                    .add_service(admin_svc)
                    .add_service(mesh_svc)
                    .add_service(discovery_svc)
                    .add_service(reflection)
                    .add_service(reflection_alpha)
                    .serve_with_incoming_shutdown(grpc_incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    warn!(error = %e, "gRPC API stopped");
                }
            }
            .in_current_span(),
        ));
        info!(grpc = %grpc_addr, raft = %raft_addr, "node ready");
        Ok(Node {
            raft,
            grpc_addr,
            raft_addr,
            net,
            leave_on_shutdown: cfg.leave_on_shutdown,
            // Leaving goes through the join or discovery addresses (the underlay).
            join: cfg.join.iter().chain(&cfg.discover).cloned().collect(),
            creds,
            plugins,
            tasks,
            stop,
        })
    }

    /// Leaves the mesh if asked to, then stops the servers, WireGuard and Raft.
    pub async fn shutdown(mut self) {
        if self.leave_on_shutdown {
            match leave_mesh(&self.raft, &self.join, &self.creds, &self.plugins.ipam()).await {
                Ok(()) => info!("left the mesh"),
                Err(e) => warn!(error = %e, "could not leave the mesh"),
            }
        }
        let _ = self.stop.send(true);
        if let Some(net) = self.net.take() {
            // Undoing host changes and removing the interface both block.
            let _ = tokio::task::spawn_blocking(move || {
                net.stop();
                net.iface.remove();
            })
            .await;
        }
        self.raft.shutdown().await;
        self.plugins.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Asks the leader to remove this node: through the join addresses first (the
/// underlay), because the reply of a leader reached through the mesh cannot come back
/// once the leave has removed our tunnel.
async fn leave_mesh(
    raft: &RaftNode,
    join: &[String],
    creds: &Credentials,
    ipam: &crate::plugins::Ipam,
) -> Result<(), String> {
    let req = LeaveRequest {
        id: raft.name.clone(),
    };
    if raft.is_leader() {
        return crate::services::membership::leave(raft, &req.id, ipam)
            .await
            .map_err(|s| s.message().to_string());
    }
    let mut targets: Vec<String> = join.to_vec();
    if let Some(leader) = raft.leader() {
        targets.push(leader.grpc_addr);
    }
    let mut last = "no leader known and no join address".to_string();
    for t in targets {
        let attempt = async {
            let ch = creds.dialer.channel(&t, Some(Duration::from_secs(5)))?;
            NodeClient::new(ch)
                .leave(creds.request(req.clone()))
                .await
                .map(|_| ())
                .map_err(|s| s.message().to_string())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{t}: {e}"),
        }
    }
    Err(last)
}

/// The request this node joins with.
fn join_request(cfg: &Config, name: &str, key: &Key) -> JoinRequest {
    let mut wg_endpoints: Vec<String> = cfg
        .wireguard_endpoint
        .iter()
        .map(|e| e.to_string())
        .collect();
    if wg_endpoints.is_empty()
        && let Some(ep) = cfg.endpoint
    {
        wg_endpoints.push(SocketAddr::new(ep, cfg.wireguard_port).to_string());
    }
    JoinRequest {
        id: name.to_string(),
        public_key: key.public_key().to_string(),
        raft_port: i32::from(cfg.raft_port),
        grpc_port: i32::from(cfg.grpc_listen.port()),
        meshdns_port: 0,
        primary_endpoint: cfg.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        wireguard_endpoints: wg_endpoints,
        zone_awareness_id: cfg.zone.clone().unwrap_or_default(),
        assign_ipv4: true,
        prefer_raft_ipv6: false,
        as_voter: cfg.voter,
        routes: cfg.route.clone(),
        direct_peers: vec![],
        features: [
            Feature::Nodes,
            Feature::LeaderProxy,
            Feature::MeshApi,
            Feature::AdminApi,
            Feature::PeerDiscovery,
        ]
        .map(|f| f as i32)
        .to_vec(),
    }
}

/// Tries each join address in order, with backoff between rounds, until one accepts.
/// Errors a retry cannot fix (bad input, refused credentials) stop at once.
async fn join_mesh(
    cfg: &Config,
    name: &str,
    key: &Key,
    creds: &Credentials,
) -> Result<JoinResponse, NodeError> {
    let req = join_request(cfg, name, key);
    let deadline = Instant::now() + JOIN_DEADLINE;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut addrs = discover(&cfg.discover, creds).await;
        addrs.extend(cfg.join.iter().cloned());
        addrs.dedup();
        for addr in &addrs {
            info!("contacting {addr}");
            match try_join(addr, &req, creds).await {
                Ok(resp) => {
                    let role = if cfg.voter { "voter" } else { "non-voter" };
                    info!("joined as {role} via {addr}");
                    info!("address {} {}", resp.address_ipv4, resp.address_ipv6);
                    return Ok(resp);
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument
                            | tonic::Code::PermissionDenied
                            | tonic::Code::Unauthenticated
                            | tonic::Code::Unimplemented
                    ) =>
                {
                    return Err(NodeError::Join(format!(
                        "{addr} refused the join: {:?}: {}",
                        s.code(),
                        s.message()
                    )));
                }
                Err(s) => warn!("join via {addr} failed: {:?}: {}", s.code(), s.message()),
            }
        }
        if Instant::now() + backoff > deadline {
            return Err(NodeError::Join(format!(
                "no join address accepted within {JOIN_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Join addresses from PeerDiscovery: each discovery address's Raft members (leader
/// first, then voters), then the discovery address itself.
async fn discover(from: &[String], creds: &Credentials) -> Vec<String> {
    let mut out = Vec::new();
    for addr in from {
        let Ok(ch) = creds.dialer.channel(addr, Some(Duration::from_secs(5))) else {
            continue;
        };
        match webmesh_api::v1::peer_discovery_client::PeerDiscoveryClient::new(ch)
            .list_peers(creds.request(()))
            .await
        {
            Ok(r) => {
                let mut peers = r.into_inner().peers;
                peers.sort_by_key(|p| (!p.leader, !p.voter));
                let found: Vec<String> = peers
                    .into_iter()
                    .map(|p| p.address)
                    .filter(|a| !a.is_empty())
                    .collect();
                info!(via = %addr, peers = ?found, "discovered mesh members");
                out.extend(found);
            }
            Err(e) => warn!(via = %addr, error = %e.message(), "peer discovery failed"),
        }
        out.push(addr.clone());
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(a.clone()));
    out
}

async fn try_join(
    addr: &str,
    req: &JoinRequest,
    creds: &Credentials,
) -> Result<JoinResponse, tonic::Status> {
    let ch = creds
        .dialer
        .channel(addr, Some(Duration::from_secs(30)))
        .map_err(|e| tonic::Status::invalid_argument(format!("join address: {e}")))?;
    NodeClient::new(ch)
        .join(creds.request(req.clone()))
        .await
        .map(|r| r.into_inner())
}

/// An address peers can dial: a wildcard listen address becomes loopback.
fn advertise(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Writes the bootstrap objects and this node's record unless a previous run did:
/// bootstrapping an existing mesh resumes it.
async fn ensure_bootstrapped(
    raft: &RaftNode,
    cfg: &Config,
    name: &str,
    key: &Key,
    addrs: &Addresses,
    ipv6: Option<Ipv6Net>,
) -> Result<(), NodeError> {
    if let Some(existing) = raft.engine.get(keys::MESH_IPV4)? {
        if existing.value != cfg.ipv4_network.to_string() {
            warn!(mesh = %existing.value, configured = %cfg.ipv4_network, "ipv4-network differs from the existing mesh's; keeping the mesh's");
        }
        return Ok(());
    }
    if !raft.is_leader() {
        return Err(NodeError::Bootstrap(
            "the mesh has no settings yet but this node is not its leader".into(),
        ));
    }
    let ipv6 = ipv6
        .or(addrs.v6.map(|(_, n)| n))
        .unwrap_or_else(ipam::random_ula48);
    let mut ops = bootstrap::objects(&bootstrap::MeshParams {
        node_id: name,
        ipv4_network: cfg.ipv4_network,
        ipv6_network: ipv6,
        mesh_domain: &cfg.mesh_domain,
        default_policy: cfg.bootstrap_default_policy,
        voters: &cfg.bootstrap_voters,
        disable_rbac: cfg.bootstrap_disable_rbac,
    });
    let req = join_request(cfg, name, key);
    let mut me = crate::mesh::membership::node_record(&req);
    me.private_ipv4 = addrs.v4.map(|(a, _)| format!("{a}/32")).unwrap_or_default();
    me.private_ipv6 = addrs.v6.map(|(p, _)| p.to_string()).unwrap_or_default();
    ops.push(Op::RegisterNode {
        node_json: serde_json::to_string(&me).map_err(|e| NodeError::Bootstrap(e.to_string()))?,
        assign_ipv4: true,
    });
    let committed = raft.propose(ops).await?;
    let node: MeshNode = committed
        .outcome
        .value
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| NodeError::Bootstrap(e.to_string()))?
        .unwrap_or_default();
    info!(
        ipv4_network = %cfg.ipv4_network,
        ipv6_network = %ipv6,
        domain = %cfg.mesh_domain,
        address_v4 = %node.private_ipv4,
        address_v6 = %node.private_ipv6,
        "mesh bootstrapped"
    );
    Ok(())
}
