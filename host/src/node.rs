//! A running node: its data dir, identity and keys, Raft, and the gRPC servers.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use defguard_wireguard_rs::key::Key;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{Instrument, info, info_span, warn};
use webmesh_api::v1::{Feature, MeshNode};

use crate::config::Config;
use crate::mesh::{bootstrap, ids, ipam, keys};
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
    #[error("{0}")]
    Usage(String),
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
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Node {
    /// Opens the data dir, starts Raft and the servers, and bootstraps or resumes.
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        let dir = DataDir::open(&cfg.data_dir)?;
        let name = dir.node_id(cfg.node_id.as_deref())?;
        let span = info_span!("node", id = %name);
        Self::start_named(cfg, dir, name).instrument(span).await
    }

    async fn start_named(cfg: Config, dir: DataDir, name: String) -> Result<Node, NodeError> {
        let key = dir.wireguard_key()?;
        let engine = Engine::open(&dir.raft_path())?;
        let raft = RaftNode::start(engine, &name).await?;
        let initialized = raft.is_initialized().await;
        if !initialized && !cfg.bootstrap {
            return Err(NodeError::Usage(format!(
                "the data dir {} holds no mesh; pass --bootstrap to create one",
                cfg.data_dir.display()
            )));
        }

        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();

        // Raft transport first: peers (and our own election) need it.
        let raft_listen = SocketAddr::new(cfg.grpc_listen.ip(), cfg.raft_port);
        let raft_listener =
            TcpListener::bind(raft_listen)
                .await
                .map_err(|e| NodeError::Listen {
                    addr: raft_listen,
                    what: "raft",
                    reason: e.to_string(),
                })?;
        let raft_addr = raft_listener.local_addr().map_err(|e| NodeError::Listen {
            addr: raft_listen,
            what: "raft",
            reason: e.to_string(),
        })?;
        let raft_svc = webmesh_api::internal::raft_transport_server::RaftTransportServer::new(
            crate::raft::server::RaftServer::new(raft.raft.clone()),
        )
        .max_decoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES);
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(
            async move {
                let res = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(raft_svc)
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(raft_listener),
                        async move {
                            let _ = rx.wait_for(|s| *s).await;
                        },
                    )
                    .await;
                if let Err(e) = res {
                    warn!(error = %e, "raft transport stopped");
                }
            }
            .in_current_span(),
        ));

        let grpc_listener =
            TcpListener::bind(cfg.grpc_listen)
                .await
                .map_err(|e| NodeError::Listen {
                    addr: cfg.grpc_listen,
                    what: "gRPC API",
                    reason: e.to_string(),
                })?;
        let grpc_addr = grpc_listener.local_addr().map_err(|e| NodeError::Listen {
            addr: cfg.grpc_listen,
            what: "gRPC API",
            reason: e.to_string(),
        })?;

        if !initialized {
            // The first node takes the first addresses of the mesh; its Raft and API
            // addresses until WireGuard carries traffic are the ones it listens on.
            let me = Member {
                name: name.clone(),
                raft_addr: advertise(raft_addr).to_string(),
                grpc_addr: advertise(grpc_addr).to_string(),
            };
            info!(raft = %me.raft_addr, "bootstrapping a new mesh");
            raft.initialize(me).await?;
        } else if cfg.bootstrap {
            info!("the data dir holds a mesh already: resuming it");
        } else {
            info!("resuming");
        }
        raft.wait_for_leader(Duration::from_secs(30)).await?;
        tasks.push(raft.spawn_ttl_sweeper());
        if cfg.bootstrap {
            ensure_bootstrapped(&raft, &cfg, &name, &key).await?;
        }

        let info = Arc::new(NodeInfo {
            started_at: SystemTime::now(),
            started: Instant::now(),
            features: vec![Feature::Nodes],
        });
        let node_svc = webmesh_api::v1::node_server::NodeServer::new(NodeService::new(
            raft.clone(),
            info,
            Arc::new(|| None),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(webmesh_api::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Bootstrap(format!("reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(webmesh_api::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| NodeError::Bootstrap(format!("reflection: {e}")))?;
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(
            async move {
                let res = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(node_svc)
                    .add_service(reflection)
                    .add_service(reflection_alpha)
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(grpc_listener),
                        async move {
                            let _ = rx.wait_for(|s| *s).await;
                        },
                    )
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
            tasks,
            stop,
        })
    }

    /// Stops the servers, then Raft.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.raft.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
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
    let ipv6 = cfg.ipv6_network.unwrap_or_else(ipam::random_ula48);
    let mut ops = bootstrap::objects(&bootstrap::MeshParams {
        node_id: name,
        ipv4_network: cfg.ipv4_network,
        ipv6_network: ipv6,
        mesh_domain: &cfg.mesh_domain,
        default_policy: cfg.bootstrap_default_policy,
    });
    let me = MeshNode {
        id: name.to_string(),
        public_key: key.public_key().to_string(),
        raft_port: i32::from(cfg.raft_port),
        grpc_port: i32::from(cfg.grpc_listen.port()),
        features: vec![Feature::Nodes as i32],
        ..Default::default()
    };
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
