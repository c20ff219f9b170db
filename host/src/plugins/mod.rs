//! The plugin host: starts or dials each configured plugin, learns its capabilities,
//! configures it, opens its querier, routes the node's duties to it, and supervises
//! process plugins. Calls to plugins are bounded: a dead or hung plugin makes calls
//! fail with Unavailable or DeadlineExceeded; it never hangs the node.

mod handle;
mod ipam;
mod supervisor;

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

use tokio::sync::watch;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use webmesh_api::v1;
use webmesh_plugin_sdk::Config as PluginConfig;

use crate::config::{PluginSettings, PluginTarget};
use crate::store::engine::Engine;
pub use querier::StateSlot;

use handle::Backend;
pub use handle::PluginHandle;
pub use ipam::Ipam;
pub use routing::{RouteError, Routes};
use supervisor::Supervisor;

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

/// The process's plugins. A node started on its own owns them; under the AppDaemon
/// they outlive the nodes it starts and stops, reading each one's replica in turn.
pub struct Plugins {
    pub handles: BTreeMap<String, Arc<PluginHandle>>,
    pub routes: Routes,
    state: StateSlot,
    supervisors: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: Arc<watch::Sender<bool>>,
    _dir: Option<tempfile::TempDir>,
}

impl Plugins {
    /// No plugins.
    pub fn none() -> Plugins {
        Plugins {
            handles: BTreeMap::new(),
            routes: Routes::default(),
            state: StateSlot::default(),
            supervisors: Default::default(),
            stop: Arc::new(watch::Sender::new(false)),
            _dir: None,
        }
    }

    /// Plugins read `engine` from now on (the replica of the node that runs).
    pub fn attach(&self, engine: Engine) {
        self.state.set(Some(engine));
    }

    /// The node stopped: queries answer that it is not connected.
    pub fn detach(&self) {
        self.state.set(None);
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

    /// Starts feeding STORE and WATCH plugins from `raft`'s state events; the tasks end
    /// with that node.
    pub fn start_duties(&self, raft: &crate::raft::RaftNode) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .routes
            .store
            .iter()
            .map(|name| duties::spawn_store(self.handles[name].clone(), raft.clone()))
            .collect();
        let watchers = self
            .routes
            .watch
            .iter()
            .map(|n| self.handles[n].clone())
            .collect();
        tasks.extend(duties::spawn_watch(watchers, raft.clone()));
        tasks
    }

    pub fn ipam(&self) -> Ipam {
        Ipam {
            v4: self.ipam_v4(),
            v6: self.ipam_v6(),
        }
    }

    /// Starts every configured plugin (in name order), configures it and routes its
    /// capabilities. On any failure the plugins started so far are stopped again.
    /// `state` is the replica their queries read, if a node runs already.
    pub async fn start(
        settings: &BTreeMap<String, PluginSettings>,
        state: Option<Engine>,
        data_dir: Option<PathBuf>,
    ) -> Result<Plugins, StartError> {
        let mut plugins = Plugins::none();
        plugins.state.set(state);
        if settings.is_empty() {
            return Ok(plugins);
        }
        match plugins.start_all(settings, data_dir).await {
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
        data_dir: Option<PathBuf>,
    ) -> Result<(), StartError> {
        let cache_dir = data_dir.as_ref().map(|d| d.join("wasm-cache"));
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
                    let state = match &data_dir {
                        Some(d) => Some(process::state_dir(d, name)?),
                        None => None,
                    };
                    let launched =
                        process::launch(name, path, &dir, state.as_deref(), HANDSHAKE_TIMEOUT)
                            .await?;
                    let handle = self
                        .connect(name, s, unix_channel_at(&launched.socket), cache_ttl)
                        .await?;
                    let sup = Supervisor {
                        handle: handle.clone(),
                        path: path.clone(),
                        dir,
                        state,
                        config: PluginConfig(s.config.clone()),
                        replica: self.state.clone(),
                        stop: self.stop.clone(),
                    };
                    self.supervisors
                        .get_mut()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(tokio::spawn(sup.run(launched.child)));
                    handle
                }
                PluginTarget::Unix(path) => {
                    self.connect(name, s, unix_channel_at(path), cache_ttl)
                        .await?
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
                        self.state.clone(),
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
                querier::open(handle.clone(), self.state.clone());
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
    pub async fn shutdown(&self) {
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
        let supervisors =
            std::mem::take(&mut *self.supervisors.lock().unwrap_or_else(|p| p.into_inner()));
        for s in supervisors {
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

/// A channel to a plugin's unix socket; each (re)connection dials the path afresh, so
/// a restarted plugin on the same path is picked up by the same channel.
fn unix_channel_at(path: &Path) -> Channel {
    webmesh_client::tls::unix_channel(&path.to_string_lossy(), None)
        .unwrap_or_else(|_| Endpoint::from_static("http://plugin.invalid").connect_lazy())
}
