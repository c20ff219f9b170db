//! A plugin as a process: a gRPC server on a unix socket, the handshake line, and the
//! querier stream the node opens to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use webmesh_api::v1::{
    self, auth_plugin_server, ipam_plugin_server, plugin_query::QueryCommand, plugin_server,
    storage_plugin_server, watch_plugin_server,
};

use crate::{Config, DATA_DIR_ENV, Error, HANDSHAKE_PREFIX, Plugin, SOCKET_ENV, plugin_info};

/// Runs `plugin` as a process until SIGTERM or SIGINT: on the socket the node named in
/// `WEBMESH_PLUGIN_SOCKET`, or, started by hand, on `--listen PATH` (a unix socket; the
/// node's target `unix://PATH`) or `--listen tcp://HOST:PORT` (target `grpc://`; with
/// `--tls-cert FILE --tls-key FILE`, `grpcs://`). Call it from `main`; it returns the
/// process's exit code.
pub fn serve(plugin: impl Plugin) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage(&plugin));
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        let info = plugin.info();
        println!("{} {}", info.name, info.version);
        return ExitCode::SUCCESS;
    }
    let socket = match socket_path(std::env::var_os(SOCKET_ENV), args.clone().into_iter()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let tls = match (flag("--tls-cert"), flag("--tls-key")) {
        (Some(c), Some(k)) => match (std::fs::read(&c), std::fs::read(&k)) {
            (Ok(c), Ok(k)) => Some((c, k)),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("--tls-cert/--tls-key: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
        _ => {
            eprintln!("--tls-cert and --tls-key go together");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = match socket.to_str().and_then(|s| s.strip_prefix("tcp://")) {
        Some(addr) => rt.block_on(serve_tcp(plugin, addr, tls)),
        None if tls.is_some() => {
            eprintln!("--tls-cert needs --listen tcp://HOST:PORT");
            return ExitCode::from(2);
        }
        None => rt.block_on(serve_on(plugin, &socket)),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// What `--help` prints: what the plugin is and does, its settings, how it is run.
pub fn usage(plugin: &dyn Plugin) -> String {
    let info = plugin.info();
    let caps: Vec<&str> = [
        (plugin.auth().is_some(), "auth"),
        (plugin.ipam().is_some(), "ipam"),
        (plugin.storage().is_some(), "storage"),
        (plugin.watch().is_some(), "watch"),
    ]
    .into_iter()
    .filter_map(|(on, c)| on.then_some(c))
    .collect();
    let mut out = format!(
        "{} {}: {}\n\nCapabilities: {}\n",
        info.name,
        info.version,
        info.description,
        caps.join(", ")
    );
    let settings = plugin.settings();
    if settings.is_empty() {
        out += "\nSettings: none\n";
    } else {
        out +=
            "\nSettings (webmesh --plugin-config NAME.KEY=VALUE, or the config file's plugins:):\n";
        let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
        for s in settings {
            out += &format!("  {:width$}  {}", s.key, s.help);
            if !s.default.is_empty() {
                out += &format!(" [default: {}]", s.default);
            }
            out += "\n";
        }
    }
    out += &format!(
        "\nRun by a node: webmesh --plugin NAME=PATH (the node sets {SOCKET_ENV} and\n\
         {DATA_DIR_ENV}). By hand: --listen /path/to.sock, or --listen tcp://HOST:PORT\n\
         [--tls-cert FILE --tls-key FILE]. --version prints the version.\n"
    );
    out
}

fn socket_path(
    env: Option<std::ffi::OsString>,
    mut args: impl Iterator<Item = String>,
) -> Result<PathBuf, String> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    while let Some(a) = args.next() {
        if a == "--listen" {
            return args
                .next()
                .map(|p| PathBuf::from(p.trim_start_matches("unix://")))
                .ok_or_else(|| "--listen needs a socket path or tcp://HOST:PORT".to_string());
        }
        if let Some(p) = a.strip_prefix("--listen=") {
            return Ok(PathBuf::from(p.trim_start_matches("unix://")));
        }
    }
    Err(format!(
        "no socket to serve on: webmesh starts this plugin with {SOCKET_ENV} set \
         (--plugin NAME=PATH); to run it by hand, pass --listen /path/to/plugin.sock"
    ))
}

/// Serves `plugin` on TCP (TLS with a PEM certificate and key), for a node that dials
/// it with `grpc://` or `grpcs://`; returns on SIGTERM or SIGINT.
pub async fn serve_tcp(
    plugin: impl Plugin,
    addr: &str,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    let svc = Svc(Arc::new(plugin));
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("--listen tcp://{addr}: {e}"))?;
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let id = tonic::transport::Identity::from_pem(cert, key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(id))
            .map_err(|e| format!("--tls-cert: {e}"))?;
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    eprintln!(
        "serving on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    routes(server, &svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped(),
        )
        .await
        .map_err(|e| format!("serving on {addr}: {e}"))
}

/// The plugin's services: Plugin always, the capability services it offers.
fn routes(mut server: tonic::transport::Server, svc: &Svc) -> tonic::transport::server::Router {
    let p = &svc.0;
    server
        .add_service(plugin_server::PluginServer::new(svc.clone()))
        .add_optional_service(
            p.auth()
                .map(|_| auth_plugin_server::AuthPluginServer::new(svc.clone())),
        )
        .add_optional_service(
            p.ipam()
                .map(|_| ipam_plugin_server::IpamPluginServer::new(svc.clone())),
        )
        .add_optional_service(
            p.storage()
                .map(|_| storage_plugin_server::StoragePluginServer::new(svc.clone())),
        )
        .add_optional_service(
            p.watch()
                .map(|_| watch_plugin_server::WatchPluginServer::new(svc.clone())),
        )
}

/// SIGTERM or SIGINT.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Serves `plugin` on `socket` (replacing a stale socket file), prints the handshake
/// line, and returns on SIGTERM or SIGINT.
pub async fn serve_on(plugin: impl Plugin, socket: &Path) -> Result<(), String> {
    let svc = Svc(Arc::new(plugin));
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{HANDSHAKE_PREFIX}{}", socket.display())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot print the handshake: {e}"))?;
    }
    let router = routes(tonic::transport::Server::builder(), &svc);
    let res = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped())
        .await
        .map_err(|e| format!("serving on {}: {e}", socket.display()));
    let _ = std::fs::remove_file(socket);
    res
}

#[derive(Clone)]
struct Svc(Arc<dyn Plugin>);

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("this plugin has no {what} capability"))
}

#[tonic::async_trait]
impl plugin_server::Plugin for Svc {
    type InjectQuerierStream = Pin<Box<dyn Stream<Item = Result<v1::PluginQuery, Status>> + Send>>;

    async fn get_info(&self, _: Request<()>) -> Result<Response<v1::PluginInfo>, Status> {
        Ok(Response::new(plugin_info(&*self.0)))
    }

    async fn configure(
        &self,
        req: Request<v1::PluginConfiguration>,
    ) -> Result<Response<()>, Status> {
        let config = Config::from_struct(req.get_ref().config.as_ref())?;
        self.0.configure(config).await?;
        Ok(Response::new(()))
    }

    async fn inject_querier(
        &self,
        req: Request<Streaming<v1::PluginQueryResult>>,
    ) -> Result<Response<Self::InjectQuerierStream>, Status> {
        let mut results = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let pending: Pending = Arc::default();
        querier().install(Some(Conn {
            queries: tx,
            pending: pending.clone(),
        }));
        tokio::spawn(async move {
            while let Ok(Some(r)) = results.message().await {
                let waiter = lock(&pending).get(&r.id).cloned();
                if let Some(w) = waiter {
                    let _ = w.send(r);
                }
            }
            // The node went away: waiting queries fail as their senders drop.
            lock(&pending).clear();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }

    async fn close(&self, _: Request<()>) -> Result<Response<()>, Status> {
        self.0.close().await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl auth_plugin_server::AuthPlugin for Svc {
    async fn authenticate(
        &self,
        req: Request<v1::AuthenticationRequest>,
    ) -> Result<Response<v1::AuthenticationResponse>, Status> {
        let auth = self.0.auth().ok_or_else(|| unimplemented("AUTH"))?;
        let id = auth.authenticate(req.into_inner()).await?;
        Ok(Response::new(v1::AuthenticationResponse { id }))
    }
}

#[tonic::async_trait]
impl ipam_plugin_server::IpamPlugin for Svc {
    async fn allocate(
        &self,
        req: Request<v1::AllocateIpRequest>,
    ) -> Result<Response<v1::AllocatedIp>, Status> {
        let ipam = self.0.ipam().ok_or_else(|| unimplemented("IPAM"))?;
        let ip = ipam.allocate(req.into_inner()).await?;
        Ok(Response::new(v1::AllocatedIp { ip }))
    }

    async fn release(&self, req: Request<v1::ReleaseIpRequest>) -> Result<Response<()>, Status> {
        let ipam = self.0.ipam().ok_or_else(|| unimplemented("IPAM"))?;
        ipam.release(req.into_inner()).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl storage_plugin_server::StoragePlugin for Svc {
    async fn store(
        &self,
        req: Request<v1::StoreLogRequest>,
    ) -> Result<Response<v1::RaftApplyResponse>, Status> {
        let s = self.0.storage().ok_or_else(|| unimplemented("STORE"))?;
        Ok(Response::new(s.store(req.into_inner()).await?))
    }

    async fn restore_snapshot(
        &self,
        req: Request<v1::DataSnapshot>,
    ) -> Result<Response<()>, Status> {
        let s = self.0.storage().ok_or_else(|| unimplemented("STORE"))?;
        s.restore(req.into_inner()).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl watch_plugin_server::WatchPlugin for Svc {
    async fn emit(&self, req: Request<v1::Event>) -> Result<Response<()>, Status> {
        let w = self.0.watch().ok_or_else(|| unimplemented("WATCH"))?;
        w.emit(req.into_inner()).await?;
        Ok(Response::new(()))
    }
}

type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<v1::PluginQueryResult>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct Conn {
    queries: mpsc::Sender<v1::PluginQuery>,
    pending: Pending,
}

/// Read-only access to the mesh state, answered by the node from its replica over the
/// `InjectQuerier` stream. Keys are the state's keys (`/registry/nodes/<id>`, ...);
/// values are proto3 JSON of the v1 messages.
#[derive(Clone)]
pub struct Querier {
    conn: watch::Sender<Option<Conn>>,
    next_id: Arc<AtomicU64>,
}

/// How long a query waits for the node to open the stream, and for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The plugin's querier (the node opens the stream right after `Configure`).
pub fn querier() -> Querier {
    static Q: OnceLock<Querier> = OnceLock::new();
    Q.get_or_init(|| Querier {
        conn: watch::Sender::new(None),
        next_id: Arc::new(AtomicU64::new(1)),
    })
    .clone()
}

impl Querier {
    fn install(&self, conn: Option<Conn>) {
        self.conn.send_replace(conn);
    }

    /// Whether the node has opened the query stream (it does right after `Configure`).
    pub fn is_connected(&self) -> bool {
        self.conn.borrow().is_some()
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let r = self.query(QueryCommand::Get, key).await?;
        let Some(r) = r.into_iter().next() else {
            return Ok(None);
        };
        if r.error == "key not found" {
            return Ok(None);
        }
        if !r.error.is_empty() {
            return Err(Error::internal(format!("query {key}: {}", r.error)));
        }
        Ok(r.value.into_iter().next())
    }

    /// The keys under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let r = self.query(QueryCommand::List, prefix).await?;
        match r.into_iter().next() {
            Some(r) if !r.error.is_empty() => {
                Err(Error::internal(format!("list {prefix}: {}", r.error)))
            }
            Some(r) => Ok(r.value),
            None => Ok(Vec::new()),
        }
    }

    /// The keys and values under `prefix`.
    pub async fn iter(&self, prefix: &str) -> Result<Vec<(String, String)>, Error> {
        let rs = self.query(QueryCommand::Iter, prefix).await?;
        Ok(rs
            .into_iter()
            .map(|r| (r.key, r.value.into_iter().next().unwrap_or_default()))
            .collect())
    }

    async fn query(
        &self,
        command: QueryCommand,
        query: &str,
    ) -> Result<Vec<v1::PluginQueryResult>, Error> {
        let mut rx = self.conn.subscribe();
        let conn = tokio::time::timeout(QUERY_TIMEOUT, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| Error::unavailable("the node has not opened the query stream"))?
            .map_err(|_| Error::unavailable("the query stream is gone"))?
            .clone()
            .ok_or_else(|| Error::unavailable("the query stream is gone"))?;
        let id = format!("q{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, mut results) = mpsc::unbounded_channel();
        lock(&conn.pending).insert(id.clone(), tx);
        let out = async {
            conn.queries
                .send(v1::PluginQuery {
                    id: id.clone(),
                    command: command as i32,
                    query: query.to_string(),
                })
                .await
                .map_err(|_| Error::unavailable("the node closed the query stream"))?;
            let mut out = Vec::new();
            loop {
                let r = results
                    .recv()
                    .await
                    .ok_or_else(|| Error::unavailable("the node closed the query stream"))?;
                if command != QueryCommand::Iter {
                    out.push(r);
                    return Ok(out);
                }
                if r.error == "EOF" {
                    return Ok(out);
                }
                if !r.error.is_empty() {
                    return Err(Error::internal(format!("iter {query}: {}", r.error)));
                }
                out.push(r);
            }
        };
        let res = tokio::time::timeout(QUERY_TIMEOUT, out)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("the node did not answer the query")));
        lock(&conn.pending).remove(&id);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_comes_from_the_node_or_the_command_line() {
        let args = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            socket_path(Some("/run/a.sock".into()), args(&["--listen", "/x"])).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path(None, args(&["--listen", "unix:///x.sock"])).unwrap(),
            PathBuf::from("/x.sock")
        );
        assert_eq!(
            socket_path(None, args(&["--listen=/y.sock"])).unwrap(),
            PathBuf::from("/y.sock")
        );
        assert!(
            socket_path(None, args(&[]))
                .unwrap_err()
                .contains("--listen")
        );
    }
}
