//! Node settings, layered: config file < environment (`WEBMESH_*`) < flags.
//!
//! Pure: reading the file is the only IO. Every error names the key and the bad value
//! on one line, so an operator can fix it without reading code.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::mesh::ids;

/// A bad setting: which key, which value, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn invalid(key: &'static str, value: impl ToString, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// What a new mesh does with traffic no network ACL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    Accept,
    Deny,
}

/// Command-line flags. Each one can also come from `WEBMESH_<NAME>` and from the config
/// file key of the same name; flags win over the environment, which wins over the file.
#[derive(Debug, Parser, Default)]
#[command(name = "webmesh", version = crate::version::LONG, about = "A zero-configuration WireGuard mesh node.")]
pub struct Flags {
    /// YAML or JSON config file; its keys are the long flag names (e.g. `node-id`).
    #[arg(long, env = "WEBMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's ID [default: the stored ID, else the hostname].
    #[arg(long, env = "WEBMESH_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Where the node keeps its Raft log, state, keys and identity [default: /var/lib/webmesh].
    #[arg(long, env = "WEBMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the public gRPC API [default: [::]:8443].
    #[arg(long, env = "WEBMESH_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// TCP port of the internal Raft transport [default: 9443].
    #[arg(long, env = "WEBMESH_RAFT_PORT", value_name = "N")]
    pub raft_port: Option<String>,
    /// Create a new mesh in the data dir (resumes it if it exists).
    #[arg(long, env = "WEBMESH_BOOTSTRAP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bootstrap: Option<String>,
    /// IPv4 network of a new mesh [default: 172.16.0.0/12].
    #[arg(long, env = "WEBMESH_IPV4_NETWORK", value_name = "CIDR")]
    pub ipv4_network: Option<String>,
    /// IPv6 /48 of a new mesh [default: a random ULA /48].
    #[arg(long, env = "WEBMESH_IPV6_NETWORK", value_name = "CIDR")]
    pub ipv6_network: Option<String>,
    /// DNS domain of a new mesh [default: webmesh.internal].
    #[arg(long, env = "WEBMESH_MESH_DOMAIN", value_name = "DOMAIN")]
    pub mesh_domain: Option<String>,
    /// Network ACL policy of a new mesh: accept or deny [default: accept].
    #[arg(
        long,
        env = "WEBMESH_BOOTSTRAP_DEFAULT_POLICY",
        value_name = "accept|deny"
    )]
    pub bootstrap_default_policy: Option<String>,
    /// Node IDs that may join a new mesh as Raft voters (the `voters` group; repeatable).
    #[arg(
        long,
        env = "WEBMESH_BOOTSTRAP_VOTERS",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub bootstrap_voters: Vec<String>,
    /// Create a new mesh with RBAC off: every caller may do everything (labs only).
    #[arg(long, env = "WEBMESH_BOOTSTRAP_DISABLE_RBAC", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bootstrap_disable_rbac: Option<String>,
    /// A CIDR this node routes into the mesh (repeatable; needs RBAC's put routes).
    #[arg(
        long,
        env = "WEBMESH_ROUTE",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub route: Vec<String>,
    /// gRPC address of a mesh node to join through (repeatable; tried in order, with
    /// retries).
    #[arg(
        long,
        env = "WEBMESH_JOIN",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub join: Vec<String>,
    /// gRPC address of a member serving PeerDiscovery (repeatable): the mesh's Raft
    /// members found there are tried as join addresses, the leader first.
    #[arg(
        long,
        env = "WEBMESH_DISCOVER",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub discover: Vec<String>,
    /// Ask for a vote in Raft elections when joining.
    #[arg(long, env = "WEBMESH_VOTER", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub voter: Option<String>,
    /// This node's routable IP; unset means behind NAT.
    #[arg(long, env = "WEBMESH_ENDPOINT", value_name = "IP")]
    pub endpoint: Option<String>,
    /// A WireGuard endpoint of this node (repeatable) [default: ENDPOINT:WIREGUARD-PORT].
    #[arg(
        long,
        env = "WEBMESH_WIREGUARD_ENDPOINT",
        value_name = "IP:PORT",
        value_delimiter = ','
    )]
    pub wireguard_endpoint: Vec<String>,
    /// Zone (e.g. a LAN or datacenter): same-zone nodes peer over LAN endpoints.
    #[arg(long, env = "WEBMESH_ZONE", value_name = "ID")]
    pub zone: Option<String>,
    /// WireGuard interface name [default: webmesh0].
    #[arg(long, env = "WEBMESH_INTERFACE", value_name = "NAME")]
    pub interface: Option<String>,
    /// WireGuard UDP port [default: 51820].
    #[arg(long, env = "WEBMESH_WIREGUARD_PORT", value_name = "N")]
    pub wireguard_port: Option<String>,
    /// MTU of the WireGuard interface [default: 1420].
    #[arg(long, env = "WEBMESH_MTU", value_name = "N")]
    pub mtu: Option<String>,
    /// Leave the mesh (release addresses, drop Raft membership) on SIGTERM/SIGINT.
    #[arg(long, env = "WEBMESH_LEAVE_ON_SHUTDOWN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub leave_on_shutdown: Option<String>,
    /// Run without a WireGuard interface: Raft and the API use the listen addresses
    /// (labs and benchmarks; the mesh carries no traffic).
    #[arg(long, env = "WEBMESH_NO_WIREGUARD", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_wireguard: Option<String>,
    /// PEM certificate (chain) of the API's TLS listener; with --tls-key turns TLS on.
    #[arg(long, env = "WEBMESH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WEBMESH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: ask API clients for certificates and verify those they present
    /// (an AUTH plugin such as auth-mtls decides what a certificate is worth).
    #[arg(long, env = "WEBMESH_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA bundle that signs the API certificates of the mesh this node joins.
    #[arg(long, env = "WEBMESH_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate this node presents when it joins.
    #[arg(long, env = "WEBMESH_TLS_CLIENT_CERT", value_name = "FILE")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key for --tls-client-cert.
    #[arg(long, env = "WEBMESH_TLS_CLIENT_KEY", value_name = "FILE")]
    pub tls_client_key: Option<PathBuf>,
    /// Talk TLS to the join addresses without verifying their certificates (labs only).
    #[arg(long, env = "WEBMESH_TLS_SKIP_VERIFY", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tls_skip_verify: Option<String>,
    /// Username this node presents to the mesh it joins (the auth-basic plugin).
    #[arg(long, env = "WEBMESH_AUTH_BASIC_USER", value_name = "NAME")]
    pub auth_basic_user: Option<String>,
    /// File holding the password for --auth-basic-user (first line).
    #[arg(long, env = "WEBMESH_AUTH_BASIC_PASSWORD_FILE", value_name = "FILE")]
    pub auth_basic_password_file: Option<PathBuf>,
    /// A plugin, NAME=TARGET (repeatable). TARGET: an executable (started and
    /// supervised by the node), a `.wasm` component, `unix:///path.sock`, or
    /// `grpc://host:port` / `grpcs://host:port` (a plugin already running).
    #[arg(
        long = "plugin",
        env = "WEBMESH_PLUGIN",
        value_name = "NAME=TARGET",
        value_delimiter = ','
    )]
    pub plugins: Vec<String>,
    /// A plugin setting, NAME.KEY=VALUE (repeatable); reaches the plugin's `Configure`.
    #[arg(long = "plugin-config", value_name = "NAME.KEY=VALUE")]
    pub plugin_config: Vec<String>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, env = "WEBMESH_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The config file: the same keys as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    data_dir: Option<PathBuf>,
    grpc_listen: Option<String>,
    raft_port: Option<u16>,
    bootstrap: Option<bool>,
    ipv4_network: Option<String>,
    ipv6_network: Option<String>,
    mesh_domain: Option<String>,
    bootstrap_default_policy: Option<String>,
    bootstrap_voters: Option<Vec<String>>,
    bootstrap_disable_rbac: Option<bool>,
    route: Option<Vec<String>>,
    join: Option<Vec<String>>,
    discover: Option<Vec<String>>,
    voter: Option<bool>,
    endpoint: Option<String>,
    wireguard_endpoint: Option<Vec<String>>,
    zone: Option<String>,
    interface: Option<String>,
    wireguard_port: Option<u16>,
    mtu: Option<u32>,
    leave_on_shutdown: Option<bool>,
    no_wireguard: Option<bool>,
    log_level: Option<String>,
    auth_basic_user: Option<String>,
    auth_basic_password_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    tls_skip_verify: Option<bool>,
    plugins: Option<std::collections::BTreeMap<String, FilePlugin>>,
}

/// TLS of the API (server side) and of this node's calls to join addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    #[serde(rename = "tls-cert", skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(rename = "tls-key", skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(rename = "tls-client-ca", skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    #[serde(rename = "tls-ca", skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(rename = "tls-client-cert", skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(rename = "tls-client-key", skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(rename = "tls-skip-verify")]
    pub skip_verify: bool,
}

impl TlsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let pair = |a: &Option<PathBuf>,
                    ak: &'static str,
                    b: &Option<PathBuf>,
                    bk: &'static str| match (a, b) {
            (Some(p), None) => Err(invalid(ak, p.display(), format!("needs --{bk}"))),
            (None, Some(p)) => Err(invalid(bk, p.display(), format!("needs --{ak}"))),
            _ => Ok(()),
        };
        pair(&self.cert, "tls-cert", &self.key, "tls-key")?;
        pair(
            &self.client_cert,
            "tls-client-cert",
            &self.client_key,
            "tls-client-key",
        )?;
        if let (Some(ca), None) = (&self.client_ca, &self.cert) {
            return Err(invalid(
                "tls-client-ca",
                ca.display(),
                "client certificates need a TLS listener: set --tls-cert and --tls-key",
            ));
        }
        Ok(())
    }

    /// The API listens with TLS.
    pub fn server(&self) -> bool {
        self.cert.is_some()
    }

    /// This node's calls to join addresses use TLS.
    pub fn client(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.skip_verify
    }
}

/// `plugins: {NAME: {target: ..., config: {...}}}` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlugin {
    target: Option<String>,
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
}

/// Where a plugin runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginTarget {
    /// An executable the node starts and supervises.
    Process(PathBuf),
    /// A WebAssembly component run in the node's sandbox.
    Wasm(PathBuf),
    /// A plugin already serving on a unix socket.
    Unix(PathBuf),
    /// A plugin already serving on TCP, `tls` for `grpcs://`.
    Grpc { addr: String, tls: bool },
}

impl std::fmt::Display for PluginTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginTarget::Process(p) | PluginTarget::Wasm(p) => write!(f, "{}", p.display()),
            PluginTarget::Unix(p) => write!(f, "unix://{}", p.display()),
            PluginTarget::Grpc { addr, tls: false } => write!(f, "grpc://{addr}"),
            PluginTarget::Grpc { addr, tls: true } => write!(f, "grpcs://{addr}"),
        }
    }
}

/// Written as the config file takes it: `/path`, `x.wasm`, `unix://...`, `grpc://...`.
impl Serialize for PluginTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl PluginTarget {
    pub fn parse(s: &str) -> Result<PluginTarget, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the target is empty".into());
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err("unix:// needs an absolute socket path (unix:///run/p.sock)".into());
            }
            return Ok(PluginTarget::Unix(PathBuf::from(path)));
        }
        for (scheme, tls) in [("grpc://", false), ("grpcs://", true)] {
            if let Some(addr) = s.strip_prefix(scheme) {
                validate_host_port(addr)?;
                return Ok(PluginTarget::Grpc {
                    addr: addr.to_string(),
                    tls,
                });
            }
        }
        if s.contains("://") {
            return Err("unknown scheme; use a path, unix://, grpc:// or grpcs://".into());
        }
        if s.ends_with(".wasm") {
            return Ok(PluginTarget::Wasm(PathBuf::from(s)));
        }
        Ok(PluginTarget::Process(PathBuf::from(s)))
    }
}

/// One configured plugin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginSettings {
    pub target: PluginTarget,
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// Plugin names: what `--plugin-config NAME.KEY` and the logs use.
fn validate_plugin_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("a plugin name must be 1-63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err("a plugin name may use a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

fn layer_plugins(
    file: Option<std::collections::BTreeMap<String, FilePlugin>>,
    flags: &[String],
    settings: &[String],
) -> Result<std::collections::BTreeMap<String, PluginSettings>, ConfigError> {
    let mut targets = std::collections::BTreeMap::new();
    let mut configs: std::collections::BTreeMap<String, serde_json::Map<_, _>> = Default::default();
    for (name, p) in file.unwrap_or_default() {
        validate_plugin_name(&name).map_err(|e| invalid("plugins", &name, e))?;
        if let Some(t) = p.target {
            let target = PluginTarget::parse(&t)
                .map_err(|e| invalid("plugins", format!("{name}.target={t}"), e))?;
            targets.insert(name.clone(), target);
        }
        configs.insert(name, p.config);
    }
    for f in flags {
        let (name, target) = f
            .split_once('=')
            .ok_or_else(|| invalid("plugin", f, "must be NAME=TARGET"))?;
        validate_plugin_name(name).map_err(|e| invalid("plugin", f, e))?;
        let target = PluginTarget::parse(target).map_err(|e| invalid("plugin", f, e))?;
        targets.insert(name.to_string(), target);
    }
    for s in settings {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| invalid("plugin-config", s, "must be NAME.KEY=VALUE"))?;
        let (name, key) = path
            .split_once('.')
            .filter(|(n, k)| !n.is_empty() && !k.is_empty())
            .ok_or_else(|| invalid("plugin-config", s, "must be NAME.KEY=VALUE"))?;
        configs.entry(name.to_string()).or_default().insert(
            key.to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    let mut out = std::collections::BTreeMap::new();
    for name in configs.keys() {
        if !targets.contains_key(name) {
            return Err(invalid(
                "plugin-config",
                name,
                format!("no plugin {name:?} is configured (add --plugin {name}=TARGET)"),
            ));
        }
    }
    for (name, target) in targets {
        let config = configs.remove(&name).unwrap_or_default();
        out.insert(name, PluginSettings { target, config });
    }
    Ok(out)
}

/// The effective, validated settings of a node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// `None` means: the ID stored in the data dir, else the hostname.
    pub node_id: Option<String>,
    pub data_dir: PathBuf,
    pub grpc_listen: SocketAddr,
    pub raft_port: u16,
    pub bootstrap: bool,
    pub ipv4_network: Ipv4Net,
    /// `None` means a random ULA /48, chosen when the mesh is bootstrapped.
    pub ipv6_network: Option<Ipv6Net>,
    pub mesh_domain: String,
    pub bootstrap_default_policy: DefaultPolicy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_voters: Vec<String>,
    pub bootstrap_disable_rbac: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<String>,
    pub join: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub discover: Vec<String>,
    pub voter: bool,
    pub endpoint: Option<IpAddr>,
    pub wireguard_endpoint: Vec<SocketAddr>,
    pub zone: Option<String>,
    pub interface: String,
    pub wireguard_port: u16,
    pub mtu: u32,
    pub leave_on_shutdown: bool,
    pub no_wireguard: bool,
    pub log_level: String,
    pub auth_basic_user: Option<String>,
    pub auth_basic_password_file: Option<PathBuf>,
    #[serde(flatten)]
    pub tls: TlsSettings,
    pub plugins: std::collections::BTreeMap<String, PluginSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            data_dir: PathBuf::from("/var/lib/webmesh"),
            grpc_listen: SocketAddr::from(([0u16; 8], 8443)),
            raft_port: 9443,
            bootstrap: false,
            ipv4_network: "172.16.0.0/12".parse().expect("valid default"),
            ipv6_network: None,
            mesh_domain: "webmesh.internal".into(),
            bootstrap_default_policy: DefaultPolicy::Accept,
            bootstrap_voters: vec![],
            bootstrap_disable_rbac: false,
            route: vec![],
            join: vec![],
            discover: vec![],
            voter: false,
            endpoint: None,
            wireguard_endpoint: vec![],
            zone: None,
            interface: "webmesh0".into(),
            wireguard_port: 51820,
            mtu: 1420,
            leave_on_shutdown: false,
            no_wireguard: false,
            log_level: "info".into(),
            auth_basic_user: None,
            auth_basic_password_file: None,
            tls: TlsSettings::default(),
            plugins: Default::default(),
        }
    }
}

impl Config {
    /// Builds the settings from flags (already merged with the environment by clap) over
    /// the config file they name, over the defaults.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::layer(file, flags)
    }

    /// Parses a config file's text (YAML, of which JSON is a subset) over the defaults.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = parse_file(text, path)?;
        Self::layer(file, &Flags::default())
    }

    fn layer(file: FileConfig, flags: &Flags) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(id) = flags.node_id.clone().or(file.node_id) {
            ids::validate_node_id(&id).map_err(|e| invalid("node-id", &id, e))?;
            cfg.node_id = Some(id);
        }
        if let Some(dir) = flags.data_dir.clone().or(file.data_dir) {
            if dir.as_os_str().is_empty() {
                return Err(invalid("data-dir", "", "must not be empty"));
            }
            cfg.data_dir = dir;
        }
        if let Some(addr) = flags.grpc_listen.clone().or(file.grpc_listen) {
            cfg.grpc_listen = parse_listen(&addr).map_err(|e| invalid("grpc-listen", &addr, e))?;
        }
        match (&flags.raft_port, file.raft_port) {
            (Some(p), _) => {
                cfg.raft_port = parse_port(p).map_err(|e| invalid("raft-port", p, e))?
            }
            (None, Some(0)) => return Err(invalid("raft-port", 0, "must be 1-65535")),
            (None, Some(p)) => cfg.raft_port = p,
            (None, None) => {}
        }
        if let Some(b) = &flags.bootstrap {
            cfg.bootstrap = parse_bool(b).map_err(|e| invalid("bootstrap", b, e))?;
        } else if let Some(b) = file.bootstrap {
            cfg.bootstrap = b;
        }
        if let Some(net) = flags.ipv4_network.clone().or(file.ipv4_network) {
            cfg.ipv4_network =
                parse_ipv4_network(&net).map_err(|e| invalid("ipv4-network", &net, e))?;
        }
        if let Some(net) = flags.ipv6_network.clone().or(file.ipv6_network) {
            cfg.ipv6_network =
                Some(parse_ipv6_network(&net).map_err(|e| invalid("ipv6-network", &net, e))?);
        }
        if let Some(domain) = flags.mesh_domain.clone().or(file.mesh_domain) {
            validate_domain(&domain).map_err(|e| invalid("mesh-domain", &domain, e))?;
            cfg.mesh_domain = domain.trim_end_matches('.').to_ascii_lowercase();
        }
        if let Some(p) = flags
            .bootstrap_default_policy
            .clone()
            .or(file.bootstrap_default_policy)
        {
            cfg.bootstrap_default_policy = match p.as_str() {
                "accept" => DefaultPolicy::Accept,
                "deny" => DefaultPolicy::Deny,
                _ => {
                    return Err(invalid(
                        "bootstrap-default-policy",
                        &p,
                        "must be accept or deny",
                    ));
                }
            };
        }
        let voters = if flags.bootstrap_voters.is_empty() {
            file.bootstrap_voters.unwrap_or_default()
        } else {
            flags.bootstrap_voters.clone()
        };
        for v in &voters {
            ids::validate_node_id(v).map_err(|e| invalid("bootstrap-voters", v, e))?;
        }
        cfg.bootstrap_voters = voters;
        cfg.bootstrap_disable_rbac = bool_layer(
            "bootstrap-disable-rbac",
            &flags.bootstrap_disable_rbac,
            file.bootstrap_disable_rbac,
        )?
        .unwrap_or(false);
        let routes = if flags.route.is_empty() {
            file.route.unwrap_or_default()
        } else {
            flags.route.clone()
        };
        for r in &routes {
            let net: ipnet::IpNet = r
                .parse()
                .map_err(|_| invalid("route", r, "must be a CIDR like 192.168.1.0/24"))?;
            if net.trunc() != net {
                return Err(invalid(
                    "route",
                    r,
                    format!("has host bits set; did you mean {}?", net.trunc()),
                ));
            }
        }
        cfg.route = routes;
        let join = if flags.join.is_empty() {
            file.join.unwrap_or_default()
        } else {
            flags.join.clone()
        };
        for j in &join {
            validate_host_port(j).map_err(|e| invalid("join", j, e))?;
        }
        cfg.join = join;
        let discover = if flags.discover.is_empty() {
            file.discover.unwrap_or_default()
        } else {
            flags.discover.clone()
        };
        for d in &discover {
            validate_host_port(d).map_err(|e| invalid("discover", d, e))?;
        }
        cfg.discover = discover;
        cfg.voter = bool_layer("voter", &flags.voter, file.voter)?.unwrap_or(false);
        if let Some(ep) = flags.endpoint.clone().or(file.endpoint) {
            cfg.endpoint = Some(
                ep.parse()
                    .map_err(|_| invalid("endpoint", &ep, "must be an IP address"))?,
            );
        }
        if let Some(port) = &flags.wireguard_port {
            cfg.wireguard_port =
                parse_port(port).map_err(|e| invalid("wireguard-port", port, e))?;
        } else if let Some(p) = file.wireguard_port {
            cfg.wireguard_port = if p == 0 {
                return Err(invalid("wireguard-port", 0, "must be 1-65535"));
            } else {
                p
            };
        }
        let wg_eps = if flags.wireguard_endpoint.is_empty() {
            file.wireguard_endpoint.unwrap_or_default()
        } else {
            flags.wireguard_endpoint.clone()
        };
        for ep in &wg_eps {
            let addr: SocketAddr = ep
                .parse()
                .map_err(|_| invalid("wireguard-endpoint", ep, "must be IP:PORT or [IPv6]:PORT"))?;
            if addr.port() == 0 {
                return Err(invalid("wireguard-endpoint", ep, "port must be 1-65535"));
            }
            cfg.wireguard_endpoint.push(addr);
        }
        if let Some(zone) = flags.zone.clone().or(file.zone) {
            ids::validate_name(&zone).map_err(|e| invalid("zone", &zone, e))?;
            cfg.zone = Some(zone);
        }
        if let Some(name) = flags.interface.clone().or(file.interface) {
            validate_ifname(&name).map_err(|e| invalid("interface", &name, e))?;
            cfg.interface = name;
        }
        if let Some(mtu) = &flags.mtu {
            cfg.mtu = parse_mtu(mtu).map_err(|e| invalid("mtu", mtu, e))?;
        } else if let Some(m) = file.mtu {
            cfg.mtu = parse_mtu(&m.to_string()).map_err(|e| invalid("mtu", m, e))?;
        }
        cfg.leave_on_shutdown = bool_layer(
            "leave-on-shutdown",
            &flags.leave_on_shutdown,
            file.leave_on_shutdown,
        )?
        .unwrap_or(false);
        cfg.no_wireguard =
            bool_layer("no-wireguard", &flags.no_wireguard, file.no_wireguard)?.unwrap_or(false);
        if let Some(level) = flags.log_level.clone().or(file.log_level) {
            tracing_subscriber::EnvFilter::try_new(&level)
                .map_err(|e| invalid("log-level", &level, e))?;
            cfg.log_level = level;
        }
        cfg.auth_basic_user = flags.auth_basic_user.clone().or(file.auth_basic_user);
        cfg.auth_basic_password_file = flags
            .auth_basic_password_file
            .clone()
            .or(file.auth_basic_password_file);
        match (&cfg.auth_basic_user, &cfg.auth_basic_password_file) {
            (Some(u), _) if u.is_empty() || u.contains(char::is_control) => {
                return Err(invalid("auth-basic-user", u, "must be a non-empty name"));
            }
            (Some(u), None) => {
                return Err(invalid(
                    "auth-basic-user",
                    u,
                    "needs --auth-basic-password-file",
                ));
            }
            (None, Some(f)) => {
                return Err(invalid(
                    "auth-basic-password-file",
                    f.display(),
                    "needs --auth-basic-user",
                ));
            }
            _ => {}
        }
        let pick = |f: &Option<PathBuf>, file: Option<PathBuf>| f.clone().or(file);
        cfg.tls = TlsSettings {
            cert: pick(&flags.tls_cert, file.tls_cert),
            key: pick(&flags.tls_key, file.tls_key),
            client_ca: pick(&flags.tls_client_ca, file.tls_client_ca),
            ca: pick(&flags.tls_ca, file.tls_ca),
            client_cert: pick(&flags.tls_client_cert, file.tls_client_cert),
            client_key: pick(&flags.tls_client_key, file.tls_client_key),
            skip_verify: bool_layer(
                "tls-skip-verify",
                &flags.tls_skip_verify,
                file.tls_skip_verify,
            )?
            .unwrap_or(false),
        };
        cfg.tls.validate()?;
        cfg.plugins = layer_plugins(file.plugins, &flags.plugins, &flags.plugin_config)?;
        Ok(cfg)
    }

    /// The effective settings as YAML, for `--print-config`.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string().replace('\n', " "),
    })
}

fn bool_layer(
    key: &'static str,
    flag: &Option<String>,
    file: Option<bool>,
) -> Result<Option<bool>, ConfigError> {
    match flag {
        Some(b) => parse_bool(b).map(Some).map_err(|e| invalid(key, b, e)),
        None => Ok(file),
    }
}

fn parse_mtu(s: &str) -> Result<u32, &'static str> {
    match s.parse::<u32>() {
        Ok(m) if (1280..=9000).contains(&m) => Ok(m),
        _ => Err("must be 1280-9000 (IPv6 needs at least 1280)"),
    }
}

/// `host:port` with a port; the host may be a name.
fn validate_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or("must be HOST:PORT")?;
    parse_port(port)?;
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err("must be HOST:PORT".into());
    }
    Ok(())
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace.
fn validate_ifname(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be 1-15 characters");
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii())
    {
        return Err("must not contain '/', ':' or spaces");
    }
    Ok(())
}

fn parse_bool(s: &str) -> Result<bool, &'static str> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false"),
    }
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err("must be a port number 1-65535"),
        Ok(p) => Ok(p),
    }
}

/// Accepts `HOST:PORT` with an IP host, or a bare `:PORT` meaning every address.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        return Ok(SocketAddr::from(([0u16; 8], parse_port(port)?)));
    }
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| "must be IP:PORT, [IPv6]:PORT or :PORT".to_string())?;
    if addr.port() == 0 {
        return Err("port must be 1-65535".into());
    }
    Ok(addr)
}

fn parse_ipv4_network(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| "must be an IPv4 CIDR such as 172.16.0.0/12")?;
    if net.prefix_len() > 30 {
        return Err("prefix must be /30 or shorter to hold nodes".into());
    }
    if net != net.trunc() {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

fn parse_ipv6_network(s: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = s
        .parse()
        .map_err(|_| "must be an IPv6 CIDR such as fd00:1:2::/48")?;
    if net.prefix_len() != 48 {
        return Err("must be a /48 (each node gets a /64 inside it)".into());
    }
    if net != net.trunc() {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

fn validate_domain(s: &str) -> Result<(), &'static str> {
    let s = s.trim_end_matches('.');
    if s.is_empty() || s.len() > 253 {
        return Err("must be a DNS name of 1-253 characters");
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("each label must be 1-63 letters, digits or inner hyphens");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut v = vec!["webmesh"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = Config::load(&flags(&[])).unwrap();
        assert_eq!(c.grpc_listen.to_string(), "[::]:8443");
        assert_eq!(c.raft_port, 9443);
        assert_eq!(c.ipv4_network.to_string(), "172.16.0.0/12");
        assert_eq!(c.mesh_domain, "webmesh.internal");
        assert!(!c.bootstrap);
        assert_eq!(c.bootstrap_default_policy, DefaultPolicy::Accept);
    }

    #[test]
    fn plugins_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "plugins:\n  auth:\n    target: /usr/lib/webmesh/auth-basic\n    config:\n      \
             htpasswd: /etc/webmesh/htpasswd\n      reload: true\n  store:\n    target: \
             unix:///run/store.sock\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(&flags(&[
            "--config",
            p,
            "--plugin",
            "ipam=./ipam-sqlite",
            "--plugin",
            "wasm=./allow.wasm",
            "--plugin",
            "remote=grpcs://plugins.example:7443",
            "--plugin-config",
            "ipam.path=/var/lib/ipam.db",
            "--plugin-config",
            "auth.htpasswd=/other",
        ]))
        .unwrap();
        let auth = &c.plugins["auth"];
        assert_eq!(
            auth.target,
            PluginTarget::Process("/usr/lib/webmesh/auth-basic".into())
        );
        assert_eq!(auth.config["htpasswd"], "/other");
        assert_eq!(auth.config["reload"], true);
        assert_eq!(
            c.plugins["store"].target,
            PluginTarget::Unix("/run/store.sock".into())
        );
        assert_eq!(
            c.plugins["ipam"].target,
            PluginTarget::Process("./ipam-sqlite".into())
        );
        assert_eq!(c.plugins["ipam"].config["path"], "/var/lib/ipam.db");
        assert_eq!(
            c.plugins["wasm"].target,
            PluginTarget::Wasm("./allow.wasm".into())
        );
        assert_eq!(
            c.plugins["remote"].target,
            PluginTarget::Grpc {
                addr: "plugins.example:7443".into(),
                tls: true
            }
        );
    }

    #[test]
    fn tls_settings_come_in_pairs() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--tls-cert", "/c.pem"],
                "invalid tls-cert \"/c.pem\": needs --tls-key",
            ),
            (
                &["--tls-key", "/k.pem"],
                "invalid tls-key \"/k.pem\": needs --tls-cert",
            ),
            (&["--tls-client-cert", "/c.pem"], "needs --tls-client-key"),
            (&["--tls-client-ca", "/ca.pem"], "need a TLS listener"),
            (&["--tls-skip-verify", "perhaps"], "invalid tls-skip-verify"),
        ];
        for (args, want) in cases {
            let err = Config::load(&flags(args)).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        let c = Config::load(&flags(&["--tls-cert", "/c", "--tls-key", "/k"])).unwrap();
        assert!(c.tls.server() && !c.tls.client());
        let c = Config::load(&flags(&["--tls-skip-verify"])).unwrap();
        assert!(c.tls.client());
    }

    #[test]
    fn bad_plugin_settings_name_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--plugin", "ipam"],
                "invalid plugin \"ipam\": must be NAME=TARGET",
            ),
            (&["--plugin", "Bad Name=x"], "invalid plugin \"Bad Name=x\""),
            (&["--plugin", "a=http://x:1"], "unknown scheme"),
            (&["--plugin", "a=unix://rel.sock"], "absolute socket path"),
            (
                &["--plugin", "a=grpc://nohost"],
                "invalid plugin \"a=grpc://nohost\"",
            ),
            (
                &["--plugin-config", "a.k=v"],
                "no plugin \"a\" is configured",
            ),
            (
                &["--plugin", "a=/x", "--plugin-config", "a=v"],
                "NAME.KEY=VALUE",
            ),
        ];
        for (args, want) in cases {
            let err = Config::load(&flags(args)).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "node-id: from-file\nraft-port: 7000\nbootstrap: true\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(&flags(&["--config", p, "--node-id", "from-flag"])).unwrap();
        assert_eq!(c.node_id.as_deref(), Some("from-flag"));
        assert_eq!(c.raft_port, 7000);
        assert!(c.bootstrap);
        let c = Config::load(&flags(&["--config", p, "--bootstrap=false"])).unwrap();
        assert!(!c.bootstrap);
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let cases: &[(&[&str], &str)] = &[
            (&["--raft-port", "abc"], "invalid raft-port \"abc\""),
            (&["--raft-port", "0"], "invalid raft-port \"0\""),
            (&["--ipv4-network", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
            (&["--ipv4-network", "nope"], "invalid ipv4-network \"nope\""),
            (&["--ipv6-network", "fd00::/64"], "must be a /48"),
            (
                &["--grpc-listen", "localhost"],
                "invalid grpc-listen \"localhost\"",
            ),
            (&["--node-id", "a/b"], "invalid node-id \"a/b\""),
            (&["--mesh-domain", "bad_domain"], "invalid mesh-domain"),
            (
                &["--bootstrap-default-policy", "maybe"],
                "must be accept or deny",
            ),
            (&["--bootstrap=perhaps"], "invalid bootstrap \"perhaps\""),
            (&["--join", "nohost"], "invalid join \"nohost\""),
            (&["--endpoint", "example.com"], "invalid endpoint"),
            (
                &["--wireguard-endpoint", "10.0.0.1"],
                "invalid wireguard-endpoint",
            ),
            (
                &["--interface", "a-very-long-interface-name"],
                "invalid interface",
            ),
            (&["--mtu", "100"], "invalid mtu \"100\""),
            (&["--zone", "a zone"], "invalid zone"),
        ];
        for (args, want) in cases {
            let err = Config::load(&flags(args)).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let err = Config::from_file_text("raft-port: lots\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.yaml") && err.contains("raft-port"), "{err}");
        let err = Config::from_file_text("no-such-key: 1\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-key"), "{err}");
    }

    #[test]
    fn print_config_round_trips_through_the_file_format() {
        let c = Config::load(&flags(&[
            "--node-id",
            "n1",
            "--ipv6-network",
            "fd12:3456:789a::/48",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--plugin",
            "ipam=/usr/lib/ipam-sqlite",
            "--plugin",
            "remote=grpc://10.0.0.1:7000",
            "--plugin-config",
            "ipam.path=/var/lib/ipam.db",
        ]))
        .unwrap();
        let again = Config::from_file_text(&c.to_yaml(), Path::new("printed.yaml")).unwrap();
        assert_eq!(again.tls, c.tls);
        assert_eq!(again.plugins, c.plugins);
        assert_eq!(again.node_id.as_deref(), Some("n1"));
        assert_eq!(again.ipv6_network, c.ipv6_network);
        assert_eq!(again.grpc_listen, c.grpc_listen);
    }
}
