//! Parsers of single setting values: each takes the text a flag, an environment
//! variable or the config file gave, and returns the typed value or why it is wrong.
//! The caller adds the key and the value to the message.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::mesh::ids;

pub use crate::mesh::bootstrap::DefaultPolicy;

pub fn default_policy(s: &str) -> Result<DefaultPolicy, String> {
    match s {
        "accept" => Ok(DefaultPolicy::Accept),
        "deny" => Ok(DefaultPolicy::Deny),
        _ => Err("must be accept or deny".into()),
    }
}

pub fn node_id(s: &str) -> Result<String, String> {
    ids::validate_node_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

pub fn name(s: &str) -> Result<String, String> {
    ids::validate_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

pub fn path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(PathBuf::from(s))
}

/// Free text without control characters (user names and the like).
pub fn text(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(char::is_control) {
        return Err("must be a non-empty name".into());
    }
    Ok(s.to_string())
}

pub fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

pub fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err("must be a port number 1-65535".into()),
        Ok(p) => Ok(p),
    }
}

pub fn mtu(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(m) if (1280..=9000).contains(&m) => Ok(m),
        _ => Err("must be 1280-9000 (IPv6 needs at least 1280)".into()),
    }
}

pub fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| "must be an IP address".into())
}

/// `IP:PORT` with a non-zero port.
/// IP:PORT where port 0 means any free port.
pub fn bind_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "must be IP:PORT or [IPv6]:PORT (port 0: any)".to_string())
}

pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| "must be IP:PORT or [IPv6]:PORT".to_string())?;
    if addr.port() == 0 {
        return Err("port must be 1-65535".into());
    }
    Ok(addr)
}

/// Accepts `HOST:PORT` with an IP host, or a bare `:PORT` meaning every address.
pub fn listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(p) = s.strip_prefix(':') {
        return Ok(SocketAddr::from(([0u16; 8], port(p)?)));
    }
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| "must be IP:PORT, [IPv6]:PORT or :PORT".to_string())?;
    if addr.port() == 0 {
        return Err("port must be 1-65535".into());
    }
    Ok(addr)
}

/// `host:port` with a port; the host may be a name.
pub fn host_port(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    // A campfire to join through (`--join camp://KEY@HOST:PORT`).
    if s.starts_with("camp://") {
        return crate::campfire::CampUrl::parse(s)
            .map(|_| s.to_string())
            .map_err(|e| e.to_string());
    }
    let (host, p) = s.rsplit_once(':').ok_or("must be HOST:PORT")?;
    port(p)?;
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err("must be HOST:PORT".into());
    }
    Ok(s.to_string())
}

/// A network CIDR without host bits (`192.168.1.0/24`).
pub fn route(s: &str) -> Result<String, String> {
    let net: ipnet::IpNet = s
        .parse()
        .map_err(|_| "must be a CIDR like 192.168.1.0/24")?;
    if net.trunc() != net {
        return Err(format!("has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(s.to_string())
}

pub fn ipv4_network(s: &str) -> Result<Ipv4Net, String> {
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

pub fn ipv6_network(s: &str) -> Result<Ipv6Net, String> {
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

/// A DNS domain, returned lower case without the trailing dot.
pub fn domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.');
    if d.is_empty() || d.len() > 253 {
        return Err("must be a DNS name of 1-253 characters".into());
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("each label must be 1-63 letters, digits or inner hyphens".into());
        }
    }
    Ok(d.to_ascii_lowercase())
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace.
pub fn ifname(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be 1-15 characters".into());
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii())
    {
        return Err("must not contain '/', ':' or spaces".into());
    }
    Ok(s.to_string())
}

/// A tracing `EnvFilter` directive list.
pub fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A path, or `off` (or empty) for none.
pub fn optional_path(s: &str) -> Result<Option<PathBuf>, String> {
    match s {
        "" | "off" | "none" => Ok(None),
        p if p.starts_with('/') => Ok(Some(PathBuf::from(p))),
        _ => Err("must be an absolute path, or off".into()),
    }
}

pub fn clock_skew(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (5..=86_400).contains(&n) => Ok(n),
        _ => Err("must be 5-86400 seconds".into()),
    }
}

pub fn request_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        // Room for the largest value (1 MiB) with its key and framing; at most 64 MiB.
        Ok(n) if ((1 << 20) + 64 * 1024..=64 << 20).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be {}-{} bytes",
            (1 << 20) + 64 * 1024,
            64 << 20
        )),
    }
}

pub fn join_rate(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|n| *n <= 100_000)
        .ok_or_else(|| "must be 0-100000 joins per minute (0: no limit)".into())
}

pub fn pending_joins(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| "must be 1-100000".into())
}

pub fn join_timeout(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|n| (1..=7 * 24 * 3600).contains(n))
        .ok_or_else(|| "must be 1-604800 seconds".into())
}

/// A DNS server: `IP` (port 53) or `IP:PORT`.
pub fn dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    socket_addr(s).map_err(|_| "must be IP, IP:PORT or [IPv6]:PORT".into())
}

pub fn forward_timeout(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|n| (10..=30_000).contains(n))
        .ok_or_else(|| "must be 10-30000 milliseconds".into())
}

pub fn cache_entries(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n <= 1_000_000)
        .ok_or_else(|| "must be 0-1000000 entries".into())
}

/// A listen address, or `off` (or empty) for none.
pub fn optional_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    match s {
        "" | "off" | "none" => Ok(None),
        a => listen(a).map(Some).map_err(|e| format!("{e}, or off")),
    }
}

/// A network in CIDR form (host bits clear).
pub fn cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let net: ipnet::IpNet = s
        .parse()
        .map_err(|_| "must be a CIDR such as 10.0.0.0/8".to_string())?;
    if net.trunc() != net {
        return Err(format!("has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// The AppDaemon's socket: `unix:///PATH` (or the bare absolute path). `tcp://` is not
/// served: the socket's file and the caller's credentials are what guard it.
/// Where the AppDaemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppDaemonListen {
    /// A unix socket guarded by file mode, group and the caller's credentials.
    Unix(PathBuf),
    /// TCP with TLS; every call authenticated by the AUTH plugin.
    Tcp(SocketAddr),
}

impl std::fmt::Display for AppDaemonListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppDaemonListen::Unix(p) => write!(f, "unix://{}", p.display()),
            AppDaemonListen::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl serde::Serialize for AppDaemonListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub fn app_daemon(s: &str) -> Result<AppDaemonListen, String> {
    if let Some(a) = s.strip_prefix("tcp://") {
        return a
            .parse()
            .map(AppDaemonListen::Tcp)
            .map_err(|_| "tcp:// takes an IP address and port, e.g. tcp://[::]:8444".to_string());
    }
    let p = s.strip_prefix("unix://").unwrap_or(s);
    if p.starts_with('/') {
        return Ok(AppDaemonListen::Unix(PathBuf::from(p)));
    }
    Err(
        "must be unix:///PATH (e.g. unix:///var/run/webmesh/webmesh.sock) or tcp://ADDR:PORT"
            .into(),
    )
}

/// A browser origin: scheme, host and optional port, nothing after.
pub fn origin(s: &str) -> Result<String, String> {
    let bad =
        || "must be an origin such as https://app.example.com or http://localhost:3000".to_string();
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if rest.is_empty()
        || rest.len() > 253
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// An inclusive range of ports, `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub fn port_range(s: &str) -> Result<PortRange, String> {
    let bad =
        || "must be MIN-MAX, two ports 1024-65535 with MIN <= MAX, e.g. 49152-65535".to_string();
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a < 1024 || a > b {
        return Err(bad());
    }
    Ok(PortRange(a, b))
}

pub fn allocations(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| "must be 1-100000 allocations".into())
}

/// Bytes per second; 0: no limit.
pub fn rate(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| "must be bytes per second (a whole number; 0: no limit)".into())
}
