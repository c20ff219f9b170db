//! The plugin host: starts or dials each configured plugin, learns its capabilities,
//! configures it, opens its querier, routes the node's duties to it, and supervises
//! process plugins. Calls to plugins are bounded: a dead or hung plugin makes calls
//! fail with Unavailable or DeadlineExceeded; it never hangs the node.

pub mod duties;
pub mod process;
pub mod querier;
pub mod routing;
pub mod verdicts;
pub mod wasm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use webmesh_api::v1::{
    self, auth_plugin_client::AuthPluginClient, ipam_plugin_client::IpamPluginClient,
    plugin_client::PluginClient, storage_plugin_client::StoragePluginClient,
    watch_plugin_client::WatchPluginClient,
};
use webmesh_plugin_sdk::Config as PluginConfig;

use crate::config::{PluginSettings, PluginTarget};
use crate::store::engine::Engine;
pub use routing::{RouteError, Routes};

/// How long a process plugin has to print its handshake, and a plugin to answer
/// `GetInfo` and `Configure`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on an authentication call: it sits in front of every API request.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on other plugin calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the plugins could not start; each names the plugin and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("plugin {plugin}: cannot start {path}: {reason}")]
    Spawn {
        plugin: String,
        path: PathBuf,
        reason: String,
    },
    #[error("plugin {plugin} ({path}): handshake failed: {reason}")]
    Handshake {
        plugin: String,
        path: PathBuf,
        reason: String,
    },
    #[error("plugin {plugin} ({target}): {reason}")]
    Rpc {
        plugin: String,
        target: String,
        reason: String,
    },
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("plugin socket directory {dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
}

/// How the node reaches a plugin.
enum Backend {
    Grpc(Channel),
    Wasm(Arc<wasm::WasmPlugin>),
}

/// A running plugin the node can call.
pub struct PluginHandle {
    pub name: String,
    pub target: PluginTarget,
    pub info: v1::PluginInfo,
    backend: Backend,
    /// Positive AUTH verdicts, remembered briefly (see [`verdicts`]).
    verdicts: verdicts::Verdicts,
}

/// One call, in both of its shapes: the gRPC client call, and the WASM export with its
/// request and response encoded as protobuf.
macro_rules! call {
    ($self:ident, $what:literal, $timeout:expr, $req:expr,
     grpc: |$ch:ident, $r:ident| $grpc:expr,
     wasm: |$w:ident, $bytes:ident| $wasm:expr) => {{
        let timeout = $timeout;
        match &$self.backend {
            Backend::Grpc($ch) => {
                let $r = $self.request($req, timeout);
                $self.bounded($what, timeout, $grpc).await
            }
            Backend::Wasm(w) => {
                let $bytes = prost::Message::encode_to_vec(&$req);
                let out = tokio::time::timeout(
                    timeout + Duration::from_millis(100),
                    wasm::run(w.clone(), move |$w| $wasm),
                )
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "plugin {}: {} did not answer within {timeout:?}",
                        $self.name, $what
                    ))
                })??;
                Decode::decode_from(&$self.name, $what, out)
            }
        }
    }};
}

/// Decoding a WASM export's answer into the call's result type.
trait Decode: Sized {
    fn decode_from<B: AsRef<[u8]>>(plugin: &str, what: &str, bytes: B) -> Result<Self, Status>;
}

impl Decode for () {
    fn decode_from<B: AsRef<[u8]>>(_: &str, _: &str, _: B) -> Result<(), Status> {
        Ok(())
    }
}

macro_rules! decode_msg {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode_from<B: AsRef<[u8]>>(plugin: &str, what: &str, bytes: B) -> Result<$t, Status> {
                <$t as prost::Message>::decode(bytes.as_ref()).map_err(|e| {
                    Status::internal(format!("plugin {plugin}: {what} answered garbage: {e}"))
                })
            }
        }
    )*};
}

decode_msg!(
    v1::AuthenticationResponse,
    v1::AllocatedIp,
    v1::RaftApplyResponse,
    v1::PluginInfo
);

impl PluginHandle {
    fn request<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    /// Runs one call with a hard bound, and names the plugin in any error.
    async fn bounded<T>(
        &self,
        what: &str,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(timeout + Duration::from_millis(100), call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.named(what, s)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "plugin {}: {what} did not answer within {timeout:?}",
                self.name
            ))),
        }
    }

    fn named(&self, what: &str, s: Status) -> Status {
        match s.code() {
            // The plugin's own verdicts pass through unchanged.
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::ResourceExhausted => s,
            Code::DeadlineExceeded => Status::deadline_exceeded(format!(
                "plugin {}: {what} did not answer in time",
                self.name
            )),
            code => Status::new(
                if code == Code::Unknown {
                    Code::Unavailable
                } else {
                    code
                },
                format!("plugin {}: {what}: {}", self.name, s.message()),
            ),
        }
    }

    pub fn is_wasm(&self) -> bool {
        matches!(self.backend, Backend::Wasm(_))
    }

    pub async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Status> {
        let key = self.verdicts.enabled().then(|| verdicts::key_of(&req));
        if let Some(id) = key
            .as_ref()
            .and_then(|k| self.verdicts.get(k, Instant::now()))
        {
            return Ok(id);
        }
        let r: v1::AuthenticationResponse = call!(self, "Authenticate", AUTH_TIMEOUT, req,
            grpc: |ch, r| AuthPluginClient::new(ch.clone()).authenticate(r),
            wasm: |w, b| w.authenticate(b))?;
        if let Some(k) = key
            && !r.id.is_empty()
        {
            self.verdicts.put(k, r.id.clone(), Instant::now());
        }
        Ok(r.id)
    }

    pub async fn allocate(&self, req: v1::AllocateIpRequest) -> Result<String, Status> {
        let r: v1::AllocatedIp = call!(self, "Allocate", CALL_TIMEOUT, req,
            grpc: |ch, r| IpamPluginClient::new(ch.clone()).allocate(r),
            wasm: |w, b| w.allocate(b))?;
        Ok(r.ip)
    }

    pub async fn release(&self, req: v1::ReleaseIpRequest) -> Result<(), Status> {
        call!(self, "Release", CALL_TIMEOUT, req,
            grpc: |ch, r| IpamPluginClient::new(ch.clone()).release(r),
            wasm: |w, b| w.release(b).map(|()| Vec::new()))
    }

    pub async fn store(&self, req: v1::StoreLogRequest) -> Result<v1::RaftApplyResponse, Status> {
        call!(self, "Store", CALL_TIMEOUT, req,
            grpc: |ch, r| StoragePluginClient::new(ch.clone()).store(r),
            wasm: |w, b| w.store(b))
    }

    pub async fn restore(&self, req: v1::DataSnapshot) -> Result<(), Status> {
        // A snapshot may be large; give it longer.
        call!(self, "RestoreSnapshot", CALL_TIMEOUT * 6, req,
            grpc: |ch, r| StoragePluginClient::new(ch.clone()).restore_snapshot(r),
            wasm: |w, b| w.restore(b).map(|()| Vec::new()))
    }

    pub async fn emit(&self, req: v1::Event) -> Result<(), Status> {
        call!(self, "Emit", CALL_TIMEOUT, req,
            grpc: |ch, r| WatchPluginClient::new(ch.clone()).emit(r),
            wasm: |w, b| w.emit(b).map(|()| Vec::new()))
    }

    async fn get_info(&self) -> Result<v1::PluginInfo, Status> {
        call!(self, "GetInfo", HANDSHAKE_TIMEOUT, (),
            grpc: |ch, r| PluginClient::new(ch.clone()).get_info(r),
            wasm: |w, _b| w.get_info())
    }

    async fn configure(&self, config: &PluginConfig) -> Result<(), Status> {
        let req = v1::PluginConfiguration {
            config: Some(config.to_struct()),
        };
        call!(self, "Configure", HANDSHAKE_TIMEOUT, req,
            grpc: |ch, r| PluginClient::new(ch.clone()).configure(r),
            wasm: |w, b| w.configure(b).map(|()| Vec::new()))
    }

    async fn close(&self) -> Result<(), Status> {
        call!(self, "Close", Duration::from_secs(1), (),
            grpc: |ch, r| PluginClient::new(ch.clone()).close(r),
            wasm: |w, _b| w.close().map(|()| Vec::new()))
    }

    /// The gRPC channel, for process and remote plugins.
    fn channel(&self) -> Option<&Channel> {
        match &self.backend {
            Backend::Grpc(ch) => Some(ch),
            Backend::Wasm(_) => None,
        }
    }
}

/// The IPAM plugins, if any: addresses for joiners, released on leave.
#[derive(Clone, Default)]
pub struct Ipam {
    pub v4: Option<Arc<PluginHandle>>,
    pub v6: Option<Arc<PluginHandle>>,
}

impl Ipam {
    /// Addresses for node `id` from the plugins (`addr/32`, `prefix/64`); an empty string
    /// where no plugin serves the family (or no IPv4 is wanted) and the built-in
    /// allocator decides.
    pub async fn allocate(
        &self,
        id: &str,
        want_v4: bool,
        v4net: Option<ipnet::Ipv4Net>,
        v6net: Option<ipnet::Ipv6Net>,
    ) -> Result<(String, String), Status> {
        let mut out = (String::new(), String::new());
        if let (Some(p), Some(net), true) = (&self.v4, v4net, want_v4) {
            let ip = p
                .allocate(v1::AllocateIpRequest {
                    node_id: id.to_string(),
                    subnet: net.to_string(),
                    version: v1::allocate_ip_request::IpVersion::IpVersion4 as i32,
                })
                .await?;
            out.0 = check_v4(&p.name, &ip, net)?;
        }
        if let (Some(p), Some(net)) = (&self.v6, v6net) {
            let ip = p
                .allocate(v1::AllocateIpRequest {
                    node_id: id.to_string(),
                    subnet: net.to_string(),
                    version: v1::allocate_ip_request::IpVersion::IpVersion6 as i32,
                })
                .await;
            match ip.and_then(|ip| check_v6(&p.name, &ip, net)) {
                Ok(ip) => out.1 = ip,
                Err(e) => {
                    // Do not leak the IPv4 address taken a moment ago.
                    self.release(id, &out.0, "").await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Gives a node's addresses back; failures are logged (the node is gone either way,
    /// and the plugin hands the same node the same address again).
    pub async fn release(&self, id: &str, v4: &str, v6: &str) {
        for (plugin, ip) in [(&self.v4, v4), (&self.v6, v6)] {
            if let (Some(p), false) = (plugin, ip.is_empty()) {
                let req = v1::ReleaseIpRequest {
                    node_id: id.to_string(),
                    ip: ip.to_string(),
                };
                if let Err(e) = p.release(req).await {
                    tracing::warn!(plugin = %p.name, node = %id, %ip, error = %e, "release failed");
                }
            }
        }
    }
}

fn bad_address(plugin: &str, ip: &str, what: String) -> Status {
    Status::failed_precondition(format!(
        "IPAM plugin {plugin} returned {ip:?}, which is not {what}"
    ))
}

/// An IPv4 answer as the node record keeps it: `addr/32` inside the mesh network.
fn check_v4(plugin: &str, ip: &str, net: ipnet::Ipv4Net) -> Result<String, Status> {
    let addr = ip
        .parse::<ipnet::Ipv4Net>()
        .map(|n| n.addr())
        .or_else(|_| ip.parse::<std::net::Ipv4Addr>())
        .map_err(|_| bad_address(plugin, ip, "an IPv4 address".into()))?;
    if !net.contains(&addr) || addr == net.network() || addr == net.broadcast() {
        return Err(bad_address(plugin, ip, format!("a host address of {net}")));
    }
    Ok(format!("{addr}/32"))
}

/// An IPv6 answer as the node record keeps it: a `/64` inside the mesh's /48.
fn check_v6(plugin: &str, ip: &str, net: ipnet::Ipv6Net) -> Result<String, Status> {
    let prefix = ip
        .parse::<ipnet::Ipv6Net>()
        .map_err(|_| bad_address(plugin, ip, "an IPv6 prefix (addr/64)".into()))?;
    if prefix.prefix_len() != 64 || !net.contains(&prefix) {
        return Err(bad_address(plugin, ip, format!("a /64 inside {net}")));
    }
    Ok(prefix.trunc().to_string())
}

/// A channel to a unix socket; each (re)connection dials the path afresh, so a
/// restarted plugin on the same path is picked up by the same channel.
fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://plugin.invalid")
        .connect_timeout(Duration::from_secs(1))
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
}

/// The system's CA bundle (Debian's path), the default trust of `grpcs://` targets.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A channel to a plugin on TCP. `grpcs://` verifies the plugin's certificate against
/// `grpc.ca` (default: the system bundle) and presents `grpc.client-cert` /
/// `grpc.client-key` if given; those keys are the node's and are taken out of the
/// plugin's config.
fn tcp_channel(
    name: &str,
    addr: &str,
    tls: bool,
    config: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Channel, StartError> {
    let scheme = if tls { "grpcs" } else { "grpc" };
    let err = |reason: String| StartError::Rpc {
        plugin: name.to_string(),
        target: format!("{scheme}://{addr}"),
        reason,
    };
    let mut take = |key: &str| {
        config.remove(key).map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
    };
    let (ca, cert, key) = (
        take("grpc.ca"),
        take("grpc.client-cert"),
        take("grpc.client-key"),
    );
    let mut ep = Endpoint::from_shared(format!("{}://{addr}", if tls { "https" } else { "http" }))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if tls {
        let read = |k: &str, p: &str| {
            std::fs::read(p).map_err(|e| err(format!("config key {k}: {p}: {e}")))
        };
        let ca_path = ca.unwrap_or_else(|| SYSTEM_CAS.to_string());
        let mut cfg = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read("grpc.ca", &ca_path)?),
        );
        match (cert, key) {
            (Some(c), Some(k)) => {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(
                    read("grpc.client-cert", &c)?,
                    read("grpc.client-key", &k)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(err(
                    "grpc.client-cert and grpc.client-key go together".into()
                ));
            }
        }
        ep = ep.tls_config(cfg).map_err(|e| err(e.to_string()))?;
    } else if ca.is_some() || cert.is_some() || key.is_some() {
        return Err(err("grpc.* TLS keys need a grpcs:// target".into()));
    }
    Ok(ep.connect_lazy())
}

/// The node's plugins and their duties.
pub struct Plugins {
    pub handles: BTreeMap<String, Arc<PluginHandle>>,
    pub routes: Routes,
    supervisors: Vec<tokio::task::JoinHandle<()>>,
    duties: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<watch::Sender<bool>>,
    _dir: Option<tempfile::TempDir>,
}

impl Plugins {
    /// No plugins.
    pub fn none() -> Plugins {
        Plugins {
            handles: BTreeMap::new(),
            routes: Routes::default(),
            supervisors: Vec::new(),
            duties: Vec::new(),
            stop: Arc::new(watch::Sender::new(false)),
            _dir: None,
        }
    }

    pub fn auth(&self) -> Option<Arc<PluginHandle>> {
        self.routes.auth.as_ref().map(|n| self.handles[n].clone())
    }

    pub fn ipam_v4(&self) -> Option<Arc<PluginHandle>> {
        self.routes
            .ipam_v4
            .as_ref()
            .map(|n| self.handles[n].clone())
    }

    pub fn ipam_v6(&self) -> Option<Arc<PluginHandle>> {
        self.routes
            .ipam_v6
            .as_ref()
            .map(|n| self.handles[n].clone())
    }

    /// Starts feeding STORE and WATCH plugins from `raft`'s state events.
    pub fn start_duties(&mut self, raft: &crate::raft::RaftNode) {
        for name in &self.routes.store {
            let h = self.handles[name].clone();
            self.duties.push(duties::spawn_store(h, raft.clone()));
        }
        let watchers = self
            .routes
            .watch
            .iter()
            .map(|n| self.handles[n].clone())
            .collect();
        self.duties
            .extend(duties::spawn_watch(watchers, raft.clone()));
    }

    pub fn ipam(&self) -> Ipam {
        Ipam {
            v4: self.ipam_v4(),
            v6: self.ipam_v6(),
        }
    }

    /// Starts every configured plugin (in name order), configures it and routes its
    /// capabilities. On any failure the plugins started so far are stopped again.
    pub async fn start(
        settings: &BTreeMap<String, PluginSettings>,
        engine: Engine,
        cache_dir: Option<PathBuf>,
    ) -> Result<Plugins, StartError> {
        let mut plugins = Plugins::none();
        if settings.is_empty() {
            return Ok(plugins);
        }
        match plugins.start_all(settings, engine, cache_dir).await {
            Ok(()) => Ok(plugins),
            Err(e) => {
                plugins.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_all(
        &mut self,
        settings: &BTreeMap<String, PluginSettings>,
        engine: Engine,
        cache_dir: Option<PathBuf>,
    ) -> Result<(), StartError> {
        let mut caps = Vec::new();
        for (name, s) in settings {
            let t0 = Instant::now();
            let mut s = s.clone();
            let cache_ttl =
                verdicts::ttl_from_config(&mut s.config).map_err(|reason| StartError::Rpc {
                    plugin: name.clone(),
                    target: s.target.to_string(),
                    reason,
                })?;
            let s = &s;
            let handle = match &s.target {
                PluginTarget::Process(path) => {
                    let dir = self.socket_dir()?;
                    let launched = process::launch(name, path, &dir, HANDSHAKE_TIMEOUT).await?;
                    let handle = self
                        .connect(name, s, unix_channel(&launched.socket), cache_ttl)
                        .await?;
                    let sup = Supervisor {
                        handle: handle.clone(),
                        path: path.clone(),
                        dir,
                        config: PluginConfig(s.config.clone()),
                        engine: engine.clone(),
                        stop: self.stop.clone(),
                    };
                    self.supervisors.push(tokio::spawn(sup.run(launched.child)));
                    handle
                }
                PluginTarget::Unix(path) => {
                    self.connect(name, s, unix_channel(path), cache_ttl).await?
                }
                PluginTarget::Grpc { addr, tls } => {
                    let mut config = s.config.clone();
                    let channel = tcp_channel(name, addr, *tls, &mut config)?;
                    let settings = PluginSettings {
                        target: s.target.clone(),
                        config,
                    };
                    self.connect(name, &settings, channel, cache_ttl).await?
                }
                PluginTarget::Wasm(path) => {
                    let mut config = s.config.clone();
                    let rpc_err = |reason: String| StartError::Rpc {
                        plugin: name.clone(),
                        target: path.display().to_string(),
                        reason,
                    };
                    let sandbox = wasm::Sandbox::from_config(&mut config).map_err(rpc_err)?;
                    let (n, p, st, cache) = (
                        name.clone(),
                        path.clone(),
                        engine.clone(),
                        cache_dir.clone(),
                    );
                    let plugin = tokio::task::spawn_blocking(move || {
                        wasm::WasmPlugin::open(&n, &p, sandbox, st, cache.as_deref())
                    })
                    .await
                    .map_err(|e| rpc_err(e.to_string()))?
                    .map_err(rpc_err)?;
                    let settings = PluginSettings {
                        target: s.target.clone(),
                        config,
                    };
                    let backend = Backend::Wasm(Arc::new(plugin));
                    self.handshake(name, &settings, backend, cache_ttl).await?
                }
            };
            if !handle.is_wasm() {
                querier::open(handle.clone(), engine.clone());
            }
            tracing::info!(
                plugin = %name,
                target = %s.target,
                version = %handle.info.version,
                capabilities = ?caps_names(&handle.info.capabilities),
                took = ?t0.elapsed(),
                "plugin ready"
            );
            caps.push((name.clone(), handle.info.capabilities.clone()));
            self.handles.insert(name.clone(), handle);
        }
        self.routes = routing::route(&caps)?;
        Ok(())
    }

    /// A private directory for the sockets of process plugins.
    fn socket_dir(&mut self) -> Result<PathBuf, StartError> {
        if self._dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("webmesh-plugins-")
                .tempdir()
                .map_err(|e| StartError::Dir {
                    dir: std::env::temp_dir(),
                    reason: e.to_string(),
                })?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700));
            self._dir = Some(dir);
        }
        Ok(self._dir.as_ref().expect("just made").path().to_path_buf())
    }

    /// `GetInfo` then `Configure` over `channel`.
    async fn connect(
        &self,
        name: &str,
        s: &PluginSettings,
        channel: Channel,
        cache_ttl: Duration,
    ) -> Result<Arc<PluginHandle>, StartError> {
        self.handshake(name, s, Backend::Grpc(channel), cache_ttl)
            .await
    }

    async fn handshake(
        &self,
        name: &str,
        s: &PluginSettings,
        backend: Backend,
        cache_ttl: Duration,
    ) -> Result<Arc<PluginHandle>, StartError> {
        let mut handle = PluginHandle {
            name: name.to_string(),
            target: s.target.clone(),
            info: v1::PluginInfo::default(),
            backend,
            verdicts: verdicts::Verdicts::new(cache_ttl),
        };
        let rpc_err = |what: &str, e: Status| StartError::Rpc {
            plugin: name.to_string(),
            target: s.target.to_string(),
            reason: format!("{what}: {}", e.message()),
        };
        handle.info = handle
            .get_info()
            .await
            .map_err(|e| rpc_err("GetInfo failed", e))?;
        handle
            .configure(&PluginConfig(s.config.clone()))
            .await
            .map_err(|e| rpc_err("it refused its configuration", e))?;
        Ok(Arc::new(handle))
    }

    /// Close → SIGTERM → SIGKILL for process plugins; Close for the others.
    pub async fn shutdown(&mut self) {
        for d in self.duties.drain(..) {
            d.abort();
        }
        let closes = self.handles.values().map(|h| {
            let h = h.clone();
            async move {
                if let Err(e) = h.close().await {
                    tracing::debug!(plugin = %h.name, error = %e, "close");
                }
            }
        });
        futures::future::join_all(closes).await;
        self.stop.send_replace(true);
        for s in self.supervisors.drain(..) {
            let _ = s.await;
        }
    }
}

fn caps_names(caps: &[i32]) -> Vec<&'static str> {
    caps.iter()
        .map(|c| {
            v1::PluginCapability::try_from(*c)
                .map(|c| c.as_str_name())
                .unwrap_or("?")
        })
        .collect()
}

/// Resolves once shutdown has begun.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Keeps one process plugin running: restarts it with backoff when it exits, then
/// configures it and reopens its querier; stops it on shutdown.
struct Supervisor {
    handle: Arc<PluginHandle>,
    path: PathBuf,
    dir: PathBuf,
    config: PluginConfig,
    engine: Engine,
    stop: Arc<watch::Sender<bool>>,
}

impl Supervisor {
    async fn run(self, mut child: tokio::process::Child) {
        let name = self.handle.name.clone();
        let mut backoff = process::Backoff::new();
        let mut started = Instant::now();
        loop {
            let stopped = stopped(self.stop.subscribe());
            tokio::pin!(stopped);
            tokio::select! {
                status = child.wait() => {
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let delay = backoff.delay(started.elapsed());
                    tracing::warn!(plugin = %name, %status, restart_in = ?delay, "plugin exited");
                    if self.sleep_or_stop(delay).await {
                        return;
                    }
                    match self.restart().await {
                        Ok(c) => {
                            child = c;
                            started = Instant::now();
                            tracing::info!(plugin = %name, "plugin restarted");
                        }
                        Err(e) => {
                            tracing::error!(plugin = %name, error = %e, "plugin restart failed");
                            // Go round again: the exited child's wait returns at once.
                            started = Instant::now();
                        }
                    }
                }
                _ = &mut stopped => {
                    process::stop(&mut child, Duration::from_secs(2)).await;
                    return;
                }
            }
        }
    }

    /// True when shutdown came first.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stopped(self.stop.subscribe()) => true,
        }
    }

    async fn restart(&self) -> Result<tokio::process::Child, StartError> {
        let launched =
            process::launch(&self.handle.name, &self.path, &self.dir, HANDSHAKE_TIMEOUT).await?;
        let mut child = launched.child;
        let configured = async {
            self.handle.get_info().await?;
            self.handle.configure(&self.config).await
        };
        if let Err(e) = configured.await {
            process::stop(&mut child, Duration::from_secs(1)).await;
            return Err(StartError::Rpc {
                plugin: self.handle.name.clone(),
                target: self.handle.target.to_string(),
                reason: e.message().to_string(),
            });
        }
        querier::open(self.handle.clone(), self.engine.clone());
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_answers_are_checked_and_normalised() {
        let v4: ipnet::Ipv4Net = "172.16.0.0/12".parse().unwrap();
        assert_eq!(check_v4("p", "172.16.0.9", v4).unwrap(), "172.16.0.9/32");
        assert_eq!(check_v4("p", "172.16.0.9/12", v4).unwrap(), "172.16.0.9/32");
        for bad in [
            "10.0.0.1",
            "172.16.0.0",
            "172.31.255.255",
            "nonsense",
            "fd00::1",
        ] {
            let e = check_v4("p", bad, v4).unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{bad}");
            assert!(e.message().contains("IPAM plugin p returned"), "{e:?}");
        }
        let v6: ipnet::Ipv6Net = "fd00:1:2::/48".parse().unwrap();
        assert_eq!(
            check_v6("p", "fd00:1:2:5::1/64", v6).unwrap(),
            "fd00:1:2:5::/64"
        );
        for bad in ["fd00:1:3:5::/64", "fd00:1:2::/56", "fd00:1:2::1", "x"] {
            assert!(check_v6("p", bad, v6).is_err(), "{bad}");
        }
    }
}
