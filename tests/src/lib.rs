//! Test harness for multi-host tests: real `webmesh` binaries, polled with deadlines,
//! stopped and cleaned up even when a test fails (everything is released in `Drop`).

pub mod linearizability;
pub mod netns;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{GetStatusRequest, Status};

/// Path of a binary of this workspace: in `WEBMESH_BIN_DIR`, else beside the running
/// executable (`target/<profile>/deps/test-*` or `target/<profile>/bench` →
/// `target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("WEBMESH_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut profile_dir = exe.parent().expect("the executable's directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A WASM component of this workspace, built for `wasm32-wasip2` in the same profile
/// (`cargo build --target wasm32-wasip2 --lib -p NAME`): `name` is the library's file
/// stem, e.g. `auth_allowlist`.
pub fn wasm_component(name: &str) -> PathBuf {
    let native = bin("webmesh");
    // target/<profile>/webmesh -> target/wasm32-wasip2/<profile>/<name>.wasm
    let profile = native.parent().expect("profile dir");
    let target = profile.parent().expect("target dir");
    let path = target
        .join("wasm32-wasip2")
        .join(profile.file_name().expect("profile name"))
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: cargo build --target wasm32-wasip2 --lib -p {}",
        path.display(),
        name.replace('_', "-")
    );
    path
}

/// A channel to a node's admin socket: the caller acts as that node (the test runs as
/// root, which the socket lets in).
pub fn admin_channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Ok(tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        })))
}

/// A free TCP port on loopback (the OS picks; the test binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `webmesh` process on loopback, killed when dropped.
pub struct LocalNode {
    pub id: String,
    pub data_dir: PathBuf,
    /// The node's admin socket.
    pub socket: PathBuf,
    pub grpc: SocketAddr,
    pub raft_port: u16,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl LocalNode {
    /// Prepares (does not start) a node with fresh ports in `dir`.
    pub fn new(id: &str, dir: &Path) -> LocalNode {
        LocalNode {
            id: id.to_string(),
            data_dir: dir.join(id),
            socket: dir.join(format!("{id}.sock")),
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            raft_port: free_port(),
            log: dir.join(format!("{id}.log")),
            extra_args: vec![],
            child: None,
        }
    }

    /// A node in `dir` started with `args` (after its ports and paths) and ready.
    pub async fn start(id: &str, dir: &Path, args: &[&str]) -> Result<LocalNode> {
        let mut node = LocalNode::new(id, dir);
        node.extra_args = args.iter().map(|a| a.to_string()).collect();
        node.spawn()?;
        node.wait_ready(Duration::from_secs(60)).await?;
        Ok(node)
    }

    /// The WireGuard interface the harness names for this node, unless the test names
    /// one or runs without WireGuard. Nodes on loopback share one interface namespace:
    /// tests running side by side would all take `webmesh0` and UDP port 51820. The raft
    /// port is this node's alone (TCP): its number serves for both.
    fn own_interface(&self) -> Option<String> {
        let named = (self.extra_args.iter()).any(|a| a == "--interface" || a == "--no-wireguard");
        (!named).then(|| format!("wml{}", self.raft_port))
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--node-id".into(),
            self.id.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--grpc-listen".into(),
            self.grpc.to_string(),
            "--raft-port".into(),
            self.raft_port.to_string(),
            "--admin-socket".into(),
            self.socket.display().to_string(),
        ];
        // Nodes on loopback share one port space: metrics only where a test asks.
        if !self.extra_args.iter().any(|a| a == "--metrics-listen") {
            a.extend(["--metrics-listen".into(), "off".into()]);
        }
        if let Some(interface) = self.own_interface() {
            a.extend(["--interface".into(), interface]);
            if !self.extra_args.iter().any(|a| a == "--wireguard-port") {
                a.extend(["--wireguard-port".into(), self.raft_port.to_string()]);
            }
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Starts the process; its output is appended to `self.log`.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(bin("webmesh"))
            .args(self.args())
            .env("WEBMESH_LOG_LEVEL", test_log_level())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn webmesh")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process exited (e.g. a start-up error): its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// wmctl's `--server` for this node's admin socket.
    pub fn admin_server(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A client on the admin socket: it acts as this node.
    pub async fn client(&self) -> Result<NodeClient<Channel>> {
        Ok(NodeClient::new(admin_channel(&self.socket)?))
    }

    /// A client over TCP that proves nothing: an anonymous caller.
    pub async fn anon_client(&self) -> Result<NodeClient<Channel>> {
        let ch = tonic::transport::Endpoint::from_shared(self.endpoint())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        Ok(NodeClient::new(ch))
    }

    /// Waits until the node answers GetStatus (on its admin socket) and knows a leader.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Status> {
        let socket = self.socket.clone();
        let res = wait_for(&format!("{} to be ready", self.id), timeout, || {
            let socket = socket.clone();
            async move {
                let mut c = NodeClient::new(admin_channel(&socket).ok()?);
                let s = c
                    .get_status(GetStatusRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (!s.current_leader.is_empty()).then_some(s)
            }
        })
        .await;
        if res.is_err()
            && let Some(st) = self.exited()
        {
            bail!(
                "{} exited ({st}) before it was ready:\n{}",
                self.id,
                self.log_text()
            );
        }
        res.with_context(|| format!("log of {}:\n{}", self.id, self.log_text()))
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill9();
        // A killed node leaves its device's configuration socket behind; the name is
        // this node's alone, so nothing else serves it.
        if let Some(interface) = self.own_interface() {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{interface}.sock"));
        }
    }
}

/// An htpasswd file with `users` (name, password), hashed by the plugin itself.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> Result<PathBuf> {
    let mut text = String::new();
    for (user, password) in users {
        let out = std::process::Command::new(bin("auth-basic"))
            // Cost 10 (htpasswd -B uses 5): the restart test times a first, uncached
            // verification.
            .args(["hash", "--cost", "10", password])
            .output()?;
        if !out.status.success() {
            bail!("auth-basic hash: {}", String::from_utf8_lossy(&out.stderr));
        }
        text.push_str(&format!(
            "{user}:{}\n",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    let path = dir.join("htpasswd");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A fresh WireGuard key pair (private, public), base64, made by wireguard-tools.
pub fn wg_keypair() -> Result<(String, String)> {
    let out = Command::new("wg")
        .arg("genkey")
        .output()
        .context("wg genkey")?;
    with_public(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `private` with its public key (`wg pubkey`).
fn with_public(private: String) -> Result<(String, String)> {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("wg pubkey")?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((private, public))
}

/// A signer for node `id` with a key pair (as `wg_keypair` gives).
pub fn signer(
    id: &str,
    (private, public): &(String, String),
) -> std::sync::Arc<webmesh_client::proof::Signer> {
    std::sync::Arc::new(
        webmesh_client::proof::Signer::new(id, private, public).expect("a WireGuard key pair"),
    )
}

/// The key pair a node keeps in its data dir.
pub fn node_keypair(data_dir: &Path) -> Result<(String, String)> {
    let private = std::fs::read_to_string(data_dir.join("wireguard.key"))?;
    with_public(private.trim().to_string())
}

/// A plaintext channel to `addr` (`host:port`) whose requests carry `signer`'s proof.
pub fn signed_channel(
    addr: &str,
    signer: std::sync::Arc<webmesh_client::proof::Signer>,
) -> Result<webmesh_client::signing::Signed<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .connect_lazy();
    Ok(webmesh_client::signing::Signed::new(ch, signer))
}

/// A plaintext channel to `addr` that proves nothing.
pub fn plain_channel(addr: &str) -> Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect_lazy(),
    )
}

/// Runs `f` on a thread inside network namespace `ns` (with a runtime of its own):
/// what it connects to, it reaches from that host, as that host's processes would.
pub fn in_netns<T, F, Fut>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// The log level nodes under test run at: `info`, or `$WEBMESH_TEST_LOG` (for a
/// failure that needs more).
pub fn test_log_level() -> String {
    std::env::var("WEBMESH_TEST_LOG").unwrap_or_else(|_| "info".into())
}

/// A helper process (a stub server, Prometheus, a subscriber), killed when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test CA and what it signs.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        })
    }

    /// (cert PEM, key PEM) for `cn`; `ip` makes it a server certificate for that IP.
    pub fn sign(&self, cn: &str, ip: Option<std::net::Ipv4Addr>) -> Result<(String, String)> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let sans = ip.map(|i| vec![i.to_string()]).unwrap_or_default();
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = if ip.is_some() {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

pub fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> Result<(PathBuf, PathBuf)> {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &pair.0)?;
    std::fs::write(&k, &pair.1)?;
    Ok((c, k))
}
