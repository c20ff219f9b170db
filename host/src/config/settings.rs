//! The table: every node setting, once. A row is
//!
//! ```text
//! /// Help text (also the documentation of the field).
//! field: Type = default => "key" "VALUE-NAME" kind(parser) [omit_empty];
//! ```
//!
//! `kind` is `one` (a value), `opt` (an optional value), `switch` (a boolean) or
//! `many` (a list); `parser` turns one text into the value (`values.rs`);
//! `omit_empty` leaves an unset value out of `--print-config`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};

use super::values::{self as v, DefaultPolicy};
use super::{ConfigError, Kind, PluginSettings, Row, Sources, put_yaml};

macro_rules! kind {
    (one) => {
        Kind::One
    };
    (opt) => {
        Kind::One
    };
    (switch) => {
        Kind::Switch
    };
    (many) => {
        Kind::Many
    };
}

macro_rules! omit {
    () => {
        false
    };
    (omit_empty) => {
        true
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty = $default:expr =>
            $key:literal $value_name:literal $kind:ident($parse:expr) $($omit:ident)?;
    )*) => {
        /// The effective, validated settings of a node.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
            /// Plugins by name (`--plugin`, `--plugin-config`, the file's `plugins:`).
            pub plugins: BTreeMap<String, PluginSettings>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $( $field: $default, )*
                    plugins: BTreeMap::new(),
                }
            }
        }

        pub(crate) const ROWS: &[Row] = &[
            $( Row {
                key: $key,
                value_name: $value_name,
                help: &[$($doc),+],
                kind: kind!($kind),
                #[cfg(test)]
                omit_empty: omit!($($omit)?),
            }, )*
        ];

        impl Config {
            pub(super) fn set_rows(&mut self, src: &Sources) -> Result<(), ConfigError> {
                $(
                    if let Some(raw) = src.raw($key, kind!($kind))? {
                        self.$field = src.$kind($key, raw, $parse)?;
                    }
                )*
                Ok(())
            }

            pub(super) fn rows_yaml(&self, out: &mut serde_norway::Mapping) {
                $( put_yaml(out, $key, &self.$field, omit!($($omit)?)); )*
            }
        }
    };
}

settings! {
    /// This node's ID [default: the stored ID, else the hostname].
    node_id: Option<String> = None => "node-id" "ID" opt(v::node_id);
    /// Where the node keeps its Raft log, state, keys and identity [default: /var/lib/webmesh].
    data_dir: PathBuf = PathBuf::from("/var/lib/webmesh") => "data-dir" "DIR" one(v::path);
    /// Address of the public gRPC API [default: [::]:8443].
    grpc_listen: SocketAddr = SocketAddr::from(([0u16; 8], 8443)) => "grpc-listen" "ADDR" one(v::listen);
    /// TCP port of the internal Raft transport [default: 9443].
    raft_port: u16 = 9443 => "raft-port" "N" one(v::port);
    /// Create a new mesh in the data dir (resumes it if it exists).
    bootstrap: bool = false => "bootstrap" "BOOL" switch(v::boolean);
    /// IPv4 network of a new mesh [default: 172.16.0.0/12].
    ipv4_network: Ipv4Net = Ipv4Net::new(std::net::Ipv4Addr::new(172, 16, 0, 0), 12).expect("valid default")
        => "ipv4-network" "CIDR" one(v::ipv4_network);
    /// IPv6 /48 of a new mesh [default: a random ULA /48].
    ipv6_network: Option<Ipv6Net> = None => "ipv6-network" "CIDR" opt(v::ipv6_network);
    /// DNS domain of a new mesh [default: webmesh.internal].
    mesh_domain: String = "webmesh.internal".into() => "mesh-domain" "DOMAIN" one(v::domain);
    /// Network ACL policy of a new mesh: accept or deny [default: accept].
    bootstrap_default_policy: DefaultPolicy = DefaultPolicy::Accept
        => "bootstrap-default-policy" "accept|deny" one(v::default_policy);
    /// Node IDs that may join a new mesh as Raft voters (the `voters` group; repeatable).
    bootstrap_voters: Vec<String> = vec![] => "bootstrap-voters" "ID" many(v::node_id) omit_empty;
    /// Create a new mesh with RBAC off: every caller may do everything (labs only).
    bootstrap_disable_rbac: bool = false => "bootstrap-disable-rbac" "BOOL" switch(v::boolean);
    /// A CIDR this node routes into the mesh (repeatable; needs RBAC's put routes).
    route: Vec<String> = vec![] => "route" "CIDR" many(v::route) omit_empty;
    /// gRPC address of a mesh node to join through (repeatable; tried in order, with
    /// retries).
    join: Vec<String> = vec![] => "join" "HOST:PORT" many(v::host_port);
    /// gRPC address of a member serving PeerDiscovery (repeatable): the mesh's Raft
    /// members found there are tried as join addresses, the leader first.
    discover: Vec<String> = vec![] => "discover" "HOST:PORT" many(v::host_port) omit_empty;
    /// Ask for a vote in Raft elections when joining.
    voter: bool = false => "voter" "BOOL" switch(v::boolean);
    /// This node's routable IP; unset means behind NAT.
    endpoint: Option<IpAddr> = None => "endpoint" "IP" opt(v::ip);
    /// A WireGuard endpoint of this node (repeatable) [default: ENDPOINT:WIREGUARD-PORT].
    wireguard_endpoint: Vec<SocketAddr> = vec![] => "wireguard-endpoint" "IP:PORT" many(v::socket_addr);
    /// Zone (e.g. a LAN or datacenter): same-zone nodes peer over LAN endpoints.
    zone: Option<String> = None => "zone" "ID" opt(v::name);
    /// WireGuard interface name [default: webmesh0].
    interface: String = "webmesh0".into() => "interface" "NAME" one(v::ifname);
    /// WireGuard UDP port [default: 51820].
    wireguard_port: u16 = 51820 => "wireguard-port" "N" one(v::port);
    /// MTU of the WireGuard interface [default: 1420].
    mtu: u32 = 1420 => "mtu" "N" one(v::mtu);
    /// Leave the mesh (release addresses, drop Raft membership) on SIGTERM/SIGINT.
    leave_on_shutdown: bool = false => "leave-on-shutdown" "BOOL" switch(v::boolean);
    /// Run without a WireGuard interface: Raft and the API use the listen addresses
    /// (labs and benchmarks; the mesh carries no traffic).
    no_wireguard: bool = false => "no-wireguard" "BOOL" switch(v::boolean);
    /// Log filter (tracing EnvFilter syntax) [default: info].
    log_level: String = "info".into() => "log-level" "FILTER" one(v::log_filter);
    /// Username this node presents to the mesh it joins (the auth-basic plugin).
    auth_basic_user: Option<String> = None => "auth-basic-user" "NAME" opt(v::text);
    /// File holding the password for --auth-basic-user (first line).
    auth_basic_password_file: Option<PathBuf> = None => "auth-basic-password-file" "FILE" opt(v::path);
    /// PEM certificate (chain) of the API's TLS listener; with --tls-key turns TLS on.
    tls_cert: Option<PathBuf> = None => "tls-cert" "FILE" opt(v::path) omit_empty;
    /// PEM private key for --tls-cert.
    tls_key: Option<PathBuf> = None => "tls-key" "FILE" opt(v::path) omit_empty;
    /// PEM CA bundle: ask API clients for certificates and verify those they present
    /// (an AUTH plugin such as auth-mtls decides what a certificate is worth).
    tls_client_ca: Option<PathBuf> = None => "tls-client-ca" "FILE" opt(v::path) omit_empty;
    /// PEM CA bundle that signs the API certificates of the mesh this node joins.
    tls_ca: Option<PathBuf> = None => "tls-ca" "FILE" opt(v::path) omit_empty;
    /// PEM client certificate this node presents when it joins.
    tls_client_cert: Option<PathBuf> = None => "tls-client-cert" "FILE" opt(v::path) omit_empty;
    /// PEM private key for --tls-client-cert.
    tls_client_key: Option<PathBuf> = None => "tls-client-key" "FILE" opt(v::path) omit_empty;
    /// Talk TLS to the join addresses without verifying their certificates (labs only).
    tls_skip_verify: bool = false => "tls-skip-verify" "BOOL" switch(v::boolean);
    /// Unix socket of local administration (`wmctl` on this host): callers act as this
    /// node. Only root, this node's user and the admin group get in; `off` disables it.
    admin_socket: Option<PathBuf> = Some(PathBuf::from("/run/webmesh/webmesh.sock"))
        => "admin-socket" "PATH|off" one(v::optional_path);
    /// Group whose members may use the admin socket, besides root [default: webmesh].
    admin_group: String = "webmesh".into() => "admin-group" "NAME" one(v::text);
    /// How far a proof of key's time may be from this node's clock, in seconds
    /// [default: 300]. Proofs older than this are refused; nonces are remembered as long.
    max_clock_skew: u64 = 300 => "max-clock-skew" "SECONDS" one(v::clock_skew);
    /// Joins a source address may make per minute at this node, as a burst
    /// [default: 10; 0: no limit].
    join_rate: u32 = 10 => "join-rate" "PER-MINUTE" one(v::join_rate);
    /// Nodes that joined but were not reached yet, at most; more joins wait [default: 32].
    max_pending_joins: usize = 32 => "max-pending-joins" "N" one(v::pending_joins);
    /// Seconds after which a node that joined but was never reached is removed and its
    /// addresses released [default: 600].
    join_timeout: u64 = 600 => "join-timeout" "SECONDS" one(v::join_timeout);
    /// Largest request the API reads, in bytes [default: 4194304].
    max_request_bytes: usize = 4 << 20 => "max-request-bytes" "N" one(v::request_bytes);
    /// Serve the AppDaemon (applications drive this node) on unix:///PATH (e.g.
    /// unix:///var/run/webmesh/webmesh.sock; guarded like the admin socket) or on
    /// tcp://ADDR:PORT (TLS with --tls-cert/--tls-key, every call authenticated by the
    /// AUTH plugin and allowed by --app-daemon-users).
    app_daemon_listen: Option<v::AppDaemonListen> = None => "app-daemon-listen" "unix:///PATH|tcp://ADDR" opt(v::app_daemon) omit_empty;
    /// An identity, as the AUTH plugin names it, that may use a tcp:// AppDaemon
    /// (repeatable; needed for tcp://).
    app_daemon_users: Vec<String> = vec![] => "app-daemon-users" "ID" many(v::text) omit_empty;
    /// Accept grpc-web (HTTP/1.1; browser apps) on the AppDaemon besides gRPC.
    app_daemon_grpc_web: bool = false => "app-daemon-grpc-web" "BOOL" switch(v::boolean);
    /// A browser origin whose pages may call the AppDaemon through grpc-web
    /// (repeatable; CORS) [default: none: same origin only].
    app_daemon_cors_origin: Vec<String> = vec![] => "app-daemon-cors-origin" "ORIGIN" many(v::origin) omit_empty;
    /// Serve Prometheus metrics at http://ADDR/metrics; `off` disables them
    /// [default: [::]:8080].
    metrics_listen: Option<SocketAddr> = Some(SocketAddr::from(([0u16; 8], 8080)))
        => "metrics-listen" "ADDR|off" one(v::optional_listen);
    /// A network whose hosts may scrape the metrics, besides loopback and the mesh
    /// (repeatable).
    metrics_allow: Vec<ipnet::IpNet> = vec![] => "metrics-allow" "CIDR" many(v::cidr) omit_empty;
    /// Serve mesh DNS on this UDP and TCP address (e.g. [::]:53; its port is
    /// advertised to the mesh); unset: no DNS server.
    meshdns_listen: Option<SocketAddr> = None => "meshdns-listen" "ADDR" opt(v::listen) omit_empty;
    /// Upstream resolver for names outside the mesh (repeatable; IP or IP:PORT)
    /// [default: the nameservers of /etc/resolv.conf].
    meshdns_forwarder: Vec<SocketAddr> = vec![] => "meshdns-forwarder" "IP[:PORT]" many(v::dns_server) omit_empty;
    /// Mesh DNS answers mesh names only: it forwards nothing.
    meshdns_no_forward: bool = false => "meshdns-no-forward" "BOOL" switch(v::boolean);
    /// How long mesh DNS waits for each forwarder, in milliseconds [default: 2000].
    meshdns_forward_timeout: u64 = 2000 => "meshdns-forward-timeout" "MS" one(v::forward_timeout);
    /// Point this host's resolver at mesh DNS for the mesh domain (systemd-resolved
    /// when it runs, else /etc/resolv.conf, restored when the node stops).
    use_meshdns: bool = false => "use-meshdns" "BOOL" switch(v::boolean);
    /// Forwarded answers mesh DNS keeps for their TTL, at most [default: 10000; 0: none].
    meshdns_cache: usize = 10_000 => "meshdns-cache" "ENTRIES" one(v::cache_entries);
    /// Run a TURN/STUN server (UDP) for members behind NAT; it relays only for
    /// credentials this node issues to members.
    turn_server: bool = false => "turn-server" "BOOL" switch(v::boolean);
    /// Address of the TURN/STUN server [default: [::]:3478].
    turn_listen: SocketAddr = SocketAddr::from(([0u16; 8], 3478)) => "turn-listen" "ADDR" one(v::listen);
    /// The public IP relayed addresses carry [default: --endpoint].
    turn_public_ip: Option<IpAddr> = None => "turn-public-ip" "IP" opt(v::ip) omit_empty;
    /// UDP ports relayed allocations use [default: 49152-65535].
    turn_relay_ports: v::PortRange = v::PortRange(49152, 65535) => "turn-relay-ports" "MIN-MAX" one(v::port_range);
    /// Relayed allocations at once, at most [default: 1024].
    turn_max_allocations: usize = 1024 => "turn-max-allocations" "N" one(v::allocations);
    /// Bytes per second one allocation relays [default: 12500000, 100 Mbit/s; 0: no limit].
    turn_allocation_rate: u64 = 12_500_000 => "turn-allocation-rate" "BYTES/S" one(v::rate);
    /// Bytes per second all allocations relay together [default: 125000000, 1 Gbit/s;
    /// 0: no limit].
    turn_total_rate: u64 = 125_000_000 => "turn-total-rate" "BYTES/S" one(v::rate);
    /// Negotiate ICE paths (direct through NATs, else through a member's TURN relay) with
    /// peers an ICE edge names; a node without --endpoint gets ICE edges to every other
    /// such node when it joins.
    ice: bool = false => "ice" "BOOL" switch(v::boolean);
    /// Address of the ICE socket (its IP is the host candidate) [default: the address
    /// that routes to the first join address, or --endpoint; any free port].
    ice_listen: Option<SocketAddr> = None => "ice-listen" "IP:PORT" opt(v::bind_addr) omit_empty;
    /// A node to reach over an ICE path of its own when joining (repeatable; an ICE
    /// edge, which takes putting data channels and edges).
    direct_peer: Vec<String> = vec![] => "direct-peer" "ID" many(v::name) omit_empty;
    /// Host a campfire on this node's TURN server (needs --turn-server): a node that
    /// has the `camp://` URL (logged at start, and in the data dir's `campfire.url`)
    /// joins with `--join URL`, with no other address. `generate` makes a key (kept in
    /// the data dir); else the key itself (32 bytes, base64url).
    campfire_psk: Option<String> = None => "campfire-psk" "KEY|generate" opt(v::text) omit_empty;
}
