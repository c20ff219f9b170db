//! The AppDaemon (`--app-daemon-listen unix:///PATH` or `tcp://ADDR`): an application
//! drives the node through it — connect to the mesh and disconnect, read and watch the
//! state, publish keys, read the interface's figures. The unix socket is guarded like
//! the admin socket (file mode and group, SO_PEERCRED: root, this user, the
//! `--admin-group`); on TCP the API's TLS certificate serves it and every call is
//! authenticated by the AUTH plugin and must name one of `--app-daemon-users`. With
//! `--app-daemon-grpc-web` browsers reach it through grpc-web.
//!
//! The process's plugins start once, with the daemon, and outlive the nodes it starts
//! and stops. A node started with join or bootstrap settings connects at once; one
//! started with the AppDaemon alone waits for `Connect`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use webmesh_api::v1::app_daemon_server::{AppDaemon, AppDaemonServer};
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::query_request::QueryCommand;
use webmesh_api::v1::status_response::ConnectionStatus;
use webmesh_api::v1::{
    AuthenticationRequest, ConnectRequest, ConnectResponse, DisconnectRequest, DisconnectResponse,
    LeaveCampfireRequest, LeaveCampfireResponse, MetricsRequest, MetricsResponse, PublishRequest,
    QueryRequest, QueryResponse, RaftCommandType, RaftLogEntry, StartCampfireRequest,
    StartCampfireResponse, StatusRequest, StatusResponse, SubscribeRequest, SubscriptionEvent,
};

use super::{Node, NodeError};
use crate::config::{AppDaemonListen, Config};
use crate::mesh::{keys, limits};
use crate::plugins::{PluginHandle, Plugins};
use crate::raft::StateEvent;

/// Settings a Connect may lay over the process's: where and how to join. Nothing that
/// names a file, a program, a listener or credentials — the caller is an unprivileged
/// application, the node often root.
const CONNECT_KEYS: &[&str] = &[
    "join",
    "discover",
    "voter",
    "endpoint",
    "wireguard-endpoint",
    "zone",
    "route",
    "leave-on-shutdown",
];

/// Keys apps may not publish: the mesh's own records.
const RESERVED: &[&str] = &["/registry/"];
/// Entries a LIST or ITER returns at most.
const MAX_QUERY_ENTRIES: usize = 10_000;

pub struct Daemon {
    base: Config,
    plugins: Arc<Plugins>,
    node: Mutex<Option<Node>>,
    status: AtomicI32,
    /// Stops a Connect that is still starting the node.
    cancel: std::sync::Mutex<Option<watch::Sender<bool>>>,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Daemon {
    pub fn new(base: Config, plugins: Arc<Plugins>) -> Arc<Daemon> {
        Arc::new(Daemon {
            base,
            plugins,
            node: Mutex::new(None),
            status: AtomicI32::new(ConnectionStatus::Disconnected as i32),
            cancel: Default::default(),
        })
    }

    fn set(&self, s: ConnectionStatus) {
        self.status.store(s as i32, Ordering::SeqCst);
    }

    /// Starts the node with the base settings and `overrides`.
    async fn connect(&self, req: &ConnectRequest) -> Result<ConnectResponse, Status> {
        // A campfire to join through: the mesh it leads to, not a new one.
        if !req.campfire_uri.is_empty() {
            crate::campfire::CampUrl::parse(&req.campfire_uri)
                .map_err(|e| Status::invalid_argument(format!("campfire_uri: {e}")))?;
        }
        let overrides = req
            .config
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        let overrides = match overrides {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => Default::default(),
            other => {
                return Err(Status::invalid_argument(format!(
                    "config: expected an object of settings, got {other}"
                )));
            }
        };
        if let Some(k) = overrides
            .keys()
            .find(|k| !CONNECT_KEYS.contains(&k.as_str()))
        {
            return Err(Status::permission_denied(format!(
                "config: {k:?} may not be set through the AppDaemon; it takes {}",
                CONNECT_KEYS.join(", ")
            )));
        }
        let mut node = self.node.try_lock().map_err(|_| {
            Status::failed_precondition("a Connect or Disconnect is under way; wait for it")
        })?;
        if node.is_some() {
            return Err(Status::failed_precondition(
                "already connected; Disconnect first",
            ));
        }
        let mut cfg = self
            .base
            .with_overrides(&overrides)
            .map_err(|e| Status::invalid_argument(format!("config: {e}")))?;
        if req.disable_bootstrap {
            cfg.bootstrap = false;
        }
        if !req.campfire_uri.is_empty() {
            cfg.bootstrap = false;
            cfg.join = vec![req.campfire_uri.clone()];
        }
        let (tx, rx) = watch::channel(false);
        *self.cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        self.set(ConnectionStatus::Connecting);
        let started = Node::start_with(cfg, rx, Some(self.plugins.clone())).await;
        self.cancel.lock().unwrap_or_else(|p| p.into_inner()).take();
        match started {
            Ok(n) => {
                let me = crate::store::views::load_view(&n.raft.engine)
                    .nodes
                    .get(&n.raft.name)
                    .cloned()
                    .unwrap_or_default();
                let view_domain = n
                    .raft
                    .engine
                    .get(keys::MESH_DOMAIN)
                    .ok()
                    .flatten()
                    .map(|e| e.value)
                    .unwrap_or_default();
                let resp = ConnectResponse {
                    node_id: n.raft.name.clone(),
                    mesh_domain: view_domain,
                    ipv4: me.private_ipv4,
                    ipv6: me.private_ipv6,
                };
                *node = Some(n);
                self.set(ConnectionStatus::Connected);
                info!(node = %resp.node_id, "AppDaemon: connected");
                Ok(resp)
            }
            Err(e) => {
                self.set(ConnectionStatus::Disconnected);
                Err(match e {
                    NodeError::Usage(m) => Status::invalid_argument(m),
                    NodeError::Cancelled => Status::aborted("Disconnect stopped the Connect"),
                    other => Status::unavailable(other.to_string()),
                })
            }
        }
    }

    /// Stops the node (it stays a member: a later Connect resumes it).
    pub async fn disconnect(&self) -> Result<(), Status> {
        if let Some(c) = self
            .cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = c.send(true);
        }
        let mut node = self.node.lock().await;
        let Some(n) = node.take() else {
            return Err(Status::failed_precondition("not connected"));
        };
        n.shutdown().await;
        self.set(ConnectionStatus::Disconnected);
        info!("AppDaemon: disconnected");
        Ok(())
    }

    /// Runs `f` on the connected node.
    async fn with_node<T>(&self, f: impl FnOnce(&Node) -> T) -> Result<T, Status> {
        let node = self.node.lock().await;
        node.as_ref()
            .map(f)
            .ok_or_else(|| Status::failed_precondition("not connected; Connect first"))
    }
}

/// Who may call. The unix socket checked the caller's uid when it accepted the
/// connection; on TCP every call is authenticated by the AUTH plugin.
#[derive(Clone)]
pub enum Guard {
    Socket,
    Plugin {
        auth: Arc<PluginHandle>,
        users: Arc<HashSet<String>>,
    },
}

/// The AppDaemon service over a shared [`Daemon`].
#[derive(Clone)]
pub struct Service {
    daemon: Arc<Daemon>,
    guard: Guard,
}

impl Service {
    pub fn new(daemon: Arc<Daemon>, guard: Guard) -> Service {
        Service { daemon, guard }
    }

    /// Lets the call through, or says why not: the AUTH plugin's refusal
    /// (Unauthenticated) or an identity that `--app-daemon-users` does not name.
    async fn admit<T>(&self, req: &Request<T>) -> Result<&Daemon, Status> {
        let Guard::Plugin { auth, users } = &self.guard else {
            return Ok(&self.daemon);
        };
        let mut headers =
            crate::services::identity::auth_headers(&req.metadata().clone().into_headers());
        if let Some(r) = req.remote_addr() {
            headers.insert(
                crate::services::identity::REMOTE_ADDR_HEADER.into(),
                r.ip().to_string(),
            );
        }
        let request = AuthenticationRequest {
            headers,
            certificates: req
                .peer_certs()
                .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                .unwrap_or_default(),
        };
        let id = auth.authenticate(request).await?;
        if id.is_empty() {
            return Err(Status::unauthenticated(format!(
                "plugin {} authenticated the caller without naming it",
                auth.name
            )));
        }
        if !users.contains(&id) {
            return Err(Status::permission_denied(format!(
                "{id:?} may not use this AppDaemon: app-daemon-users names who may"
            )));
        }
        Ok(&self.daemon)
    }
}

fn query_key(q: &str) -> Result<&str, Status> {
    if q.is_empty() || q.len() > limits::MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "query: a key or prefix of 1-{} bytes",
            limits::MAX_KEY_BYTES
        )));
    }
    Ok(q)
}

#[tonic::async_trait]
impl AppDaemon for Service {
    async fn connect(
        &self,
        req: Request<ConnectRequest>,
    ) -> Result<Response<ConnectResponse>, Status> {
        let d = self.admit(&req).await?;
        d.connect(req.get_ref()).await.map(Response::new)
    }

    async fn disconnect(
        &self,
        req: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectResponse>, Status> {
        self.admit(&req).await?.disconnect().await?;
        Ok(Response::new(DisconnectResponse {}))
    }

    async fn start_campfire(
        &self,
        req: Request<StartCampfireRequest>,
    ) -> Result<Response<StartCampfireResponse>, Status> {
        let daemon = self.admit(&req).await?;
        if !req.get_ref().camp_url.is_empty() {
            return Err(Status::invalid_argument(
                "camp_url: this node hosts campfires at its own TURN server only; leave it empty \
                 (to join someone else's campfire, Connect with campfire_uri)",
            ));
        }
        let node = daemon.node.lock().await;
        let url = node
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("not connected; Connect first"))?
            .campfire_url()
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this node hosts no campfire: start it with --turn-server --campfire-psk generate",
                )
            })?;
        Ok(Response::new(StartCampfireResponse { camp_url: url }))
    }

    async fn leave_campfire(
        &self,
        req: Request<LeaveCampfireRequest>,
    ) -> Result<Response<LeaveCampfireResponse>, Status> {
        self.admit(&req).await?;
        Err(Status::failed_precondition(
            "a campfire the node joined through is left with Disconnect; the one it hosts \
             closes with the node (or without --campfire-psk)",
        ))
    }

    type QueryStream = Stream_<QueryResponse>;

    async fn query(
        &self,
        req: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let d = self.admit(&req).await?;
        let req = req.get_ref();
        let key = query_key(&req.query)?.to_string();
        let engine = d.with_node(|n| n.raft.engine.clone()).await?;
        let err = |e: crate::store::engine::StoreError| Status::internal(e.to_string());
        let out: Vec<Result<QueryResponse, Status>> = match QueryCommand::try_from(req.command) {
            Ok(QueryCommand::Get) => {
                let e = engine.get(&key).map_err(err)?;
                vec![Ok(QueryResponse {
                    key: key.clone(),
                    value: e.iter().map(|e| e.value.clone()).collect(),
                    error: if e.is_none() {
                        "not found".into()
                    } else {
                        String::new()
                    },
                })]
            }
            Ok(QueryCommand::List) => {
                let entries = engine.list(&key).map_err(err)?;
                vec![Ok(QueryResponse {
                    key: key.clone(),
                    value: entries
                        .into_iter()
                        .take(MAX_QUERY_ENTRIES)
                        .map(|e| e.key)
                        .collect(),
                    error: String::new(),
                })]
            }
            Ok(QueryCommand::Iter) => {
                let entries = engine.list(&key).map_err(err)?;
                let mut out: Vec<_> = entries
                    .into_iter()
                    .take(MAX_QUERY_ENTRIES)
                    .map(|e| {
                        Ok(QueryResponse {
                            key: e.key,
                            value: vec![e.value],
                            error: String::new(),
                        })
                    })
                    .collect();
                out.push(Ok(QueryResponse {
                    key: String::new(),
                    value: vec![],
                    error: "EOF".into(),
                }));
                out
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "command: {} is not GET (0), LIST (1) or ITER (2)",
                    req.command
                )));
            }
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn metrics(
        &self,
        req: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let iface = self
            .admit(&req)
            .await?
            .with_node(|n| n.parts.net.as_ref().map(|m| m.iface.clone()))
            .await?;
        let mut interfaces = HashMap::new();
        if let Some(i) = iface {
            let m = tokio::task::spawn_blocking(move || i.metrics())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::unavailable(format!("the interface: {e}")))?;
            interfaces.insert(m.device_name.clone(), m);
        }
        Ok(Response::new(MetricsResponse { interfaces }))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let d = self.admit(&req).await?;
        let status = d.status.load(Ordering::SeqCst);
        let node = {
            // A Connect in progress holds the lock: say CONNECTING without waiting.
            match d.node.try_lock() {
                Ok(n) => n.as_ref().and_then(|n| {
                    crate::store::views::load_view(&n.raft.engine)
                        .nodes
                        .get(&n.raft.name)
                        .cloned()
                }),
                Err(_) => None,
            }
        };
        Ok(Response::new(StatusResponse {
            connection_status: status,
            node,
        }))
    }

    type SubscribeStream = Stream_<SubscriptionEvent>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let d = self.admit(&req).await?;
        let prefix = req.get_ref().prefix.clone();
        if prefix.len() > limits::MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "prefix: at most {} bytes",
                limits::MAX_KEY_BYTES
            )));
        }
        let mut events = d.with_node(|n| n.raft.subscribe()).await?;
        let stream = async_stream(move |tx| async move {
            loop {
                match events.recv().await {
                    Ok(StateEvent::Applied { changes, .. }) => {
                        for c in changes.iter().filter(|c| c.key().starts_with(&prefix)) {
                            let ev = SubscriptionEvent {
                                key: c.key().to_string(),
                                value: c.value().unwrap_or_default().to_string(),
                            };
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(StateEvent::Reset { .. }) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "{n} changes were missed; subscribe again"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let d = self.admit(&req).await?;
        let req = req.get_ref().clone();
        if !req.key.starts_with('/') || req.key.len() > limits::MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "key: a path of at most {} bytes, starting with /",
                limits::MAX_KEY_BYTES
            )));
        }
        if let Some(r) = RESERVED.iter().find(|r| req.key.starts_with(*r)) {
            return Err(Status::invalid_argument(format!(
                "key: {r} is reserved for the mesh's own records"
            )));
        }
        let (creds, addr) = d.with_node(|n| (n.creds.clone(), n.local_api())).await?;
        let entry = RaftLogEntry {
            r#type: RaftCommandType::Put as i32,
            key: req.key,
            value: req.value,
            ttl: req.ttl,
        };
        // As this node, through its own API: the write is checked and forwarded to the
        // leader as any node's Apply is.
        let ch = creds
            .signed_own(&addr, Duration::from_secs(10))
            .map_err(Status::unavailable)?;
        NodeClient::new(ch)
            .apply(Request::new(entry))
            .await
            .map(|_| Response::new(()))
    }
}

/// A stream fed by a task.
fn async_stream<T: Send + 'static, F, Fut>(f: F) -> Stream_<T>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serves the AppDaemon until `stop`; connects at once when the settings say to join
/// or bootstrap.
pub async fn serve(
    daemon: Arc<Daemon>,
    listen: &AppDaemonListen,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let cfg = &daemon.base;
    let guard = match listen {
        AppDaemonListen::Unix(_) => Guard::Socket,
        AppDaemonListen::Tcp(_) => Guard::Plugin {
            auth: daemon.plugins.auth().ok_or_else(|| {
                NodeError::Usage(format!(
                    "app-daemon-listen {listen}: tcp:// needs an AUTH plugin; none of the \
                     plugins ({}) offers AUTH",
                    daemon
                        .plugins
                        .handles
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
            users: Arc::new(cfg.app_daemon_users.iter().cloned().collect()),
        },
    };
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(64))
        .http2_max_header_list_size(Some(16 * 1024))
        .http2_max_pending_accept_reset_streams(Some(20))
        .accept_http1(cfg.app_daemon_grpc_web);
    if let AppDaemonListen::Tcp(_) = listen {
        let tls = crate::tls::server_config(&cfg.tls())
            .map_err(NodeError::Usage)?
            .ok_or_else(|| {
                NodeError::Usage(format!(
                    "app-daemon-listen {listen}: tcp:// needs --tls-cert and --tls-key"
                ))
            })?;
        builder = builder
            .tls_config(tls)
            .map_err(|e| NodeError::Usage(format!("invalid tls-cert: {e}")))?;
    }
    let cors = cors(&cfg.app_daemon_cors_origin)?;
    let web = cfg.app_daemon_grpc_web.then(tonic_web::GrpcWebLayer::new);
    let router = builder
        .layer(tower::util::option_layer(cors))
        .layer(tower::util::option_layer(web))
        .add_service(AppDaemonServer::new(Service::new(daemon.clone(), guard)));
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
        match listen {
            AppDaemonListen::Unix(path) => {
                private_dir(path, &cfg.admin_group)?;
                let sock = super::admin_socket::bind(path, &cfg.admin_group)?;
                Box::pin(router.serve_with_incoming_shutdown(sock.incoming(), shutdown))
            }
            AppDaemonListen::Tcp(addr) => {
                let (_, incoming) = super::servers::bind_all(&[*addr], "AppDaemon").await?;
                Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
        };
    info!(listen = %listen, group = %cfg.admin_group, grpc_web = cfg.app_daemon_grpc_web, "AppDaemon");
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            warn!(error = %e, "AppDaemon server stopped");
        }
    });
    if cfg.bootstrap || !cfg.join.is_empty() || !cfg.discover.is_empty() {
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = d.connect(&ConnectRequest::default()).await {
                warn!(error = %e.message(), "AppDaemon: connecting at start failed; waiting for Connect");
            }
        });
    }
    Ok(task)
}

/// CORS for grpc-web calls from the pages of `origins`; none: same origin only.
fn cors(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, NodeError> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let values = origins
        .iter()
        .map(|o| {
            http::HeaderValue::from_str(o).map_err(|_| {
                NodeError::Usage(format!("app-daemon-cors-origin {o}: not a header value"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(values))
            .allow_methods([http::Method::POST])
            .allow_headers(Any)
            .expose_headers([
                http::HeaderName::from_static("grpc-status"),
                http::HeaderName::from_static("grpc-message"),
            ])
            .max_age(Duration::from_secs(600)),
    ))
}

/// The socket's directory: made 0750 with the group when the daemon creates it.
fn private_dir(path: &Path, group: &str) -> Result<(), NodeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let err =
        |e: std::io::Error| NodeError::Usage(format!("app-daemon-listen {}: {e}", path.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(err)?;
    if let Some(gid) = super::admin_socket::group_gid(group) {
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// The process with an AppDaemon: starts the plugins, serves until SIGTERM or SIGINT,
/// then stops the node if it runs, and the plugins.
pub async fn run(cfg: Config) -> Result<(), NodeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |e: std::io::Error| NodeError::Usage(format!("signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(sig)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig)?;
    let Some(listen) = cfg.app_daemon_listen.clone() else {
        return Err(NodeError::Usage("app-daemon-listen is not set".into()));
    };
    // The plugins' private directories live in the data dir: check it is ours first.
    super::datadir::DataDir::open(&cfg.data_dir)?;
    let plugins = Arc::new(Plugins::start(&cfg.plugins, None, Some(cfg.data_dir.clone())).await?);
    let daemon = Daemon::new(cfg, plugins.clone());
    let (stop, stopped) = watch::channel(false);
    let task = match serve(daemon.clone(), &listen, stopped).await {
        Ok(t) => t,
        Err(e) => {
            plugins.shutdown().await;
            return Err(e);
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutting down");
    let _ = daemon.disconnect().await;
    let _ = stop.send(true);
    let _ = task.await;
    plugins.shutdown().await;
    Ok(())
}
