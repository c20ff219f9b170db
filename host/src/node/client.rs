//! This node as a client of a mesh: the join request, joining through join or
//! discovery addresses with retries, and leaving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use defguard_wireguard_rs::key::Key;
use tonic::transport::Channel;
use tracing::{info, warn};
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{Feature, JoinRequest, JoinResponse, LeaveRequest, UpdateRequest};
use webmesh_client::proof::Signer;
use webmesh_client::signing::Signed;

use super::NodeError;
use crate::config::Config;
use crate::raft::RaftNode;

/// What this node presents when it calls another mesh's API (join, discover, leave):
/// a proof of its key on every request, and the AUTH plugin's credentials if set.
#[derive(Clone)]
pub struct Credentials {
    headers: Vec<(
        &'static str,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
    dialer: crate::tls::Dialer,
    /// For calls to this node's own API, which speaks TLS when `tls-cert` is set.
    own: crate::tls::Dialer,
    signer: Arc<Signer>,
}

impl Credentials {
    pub(super) fn load(cfg: &Config, signer: Arc<Signer>) -> Result<Credentials, NodeError> {
        let mut c = Credentials {
            dialer: crate::tls::Dialer::for_joining(&cfg.tls()).map_err(NodeError::Usage)?,
            own: crate::tls::Dialer::for_members(&cfg.tls()).map_err(NodeError::Usage)?,
            headers: Vec::new(),
            signer,
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

    pub(super) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        for (k, v) in &self.headers {
            r.metadata_mut().insert(*k, v.clone());
        }
        r
    }

    /// A channel to `addr` whose every request carries this node's proof of key.
    pub(super) fn signed(&self, addr: &str, timeout: Duration) -> Result<Signed<Channel>, String> {
        Ok(Signed::new(
            self.dialer.channel(addr, Some(timeout))?,
            self.signer.clone(),
        ))
    }

    /// [`Credentials::signed`] to this node's own API at `addr`.
    pub(super) fn signed_own(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Signed<Channel>, String> {
        Ok(Signed::new(
            self.own.channel(addr, Some(timeout))?,
            self.signer.clone(),
        ))
    }
}

/// How long a joiner keeps trying its join addresses before giving up.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(600);

/// Asks the leader to remove this node: through the join addresses first (the
/// underlay), because the reply of a leader reached through the mesh cannot come back
/// once the leave has removed our tunnel.
pub(super) async fn leave_mesh(
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
    targets.extend(raft.leader().map(|l| l.grpc_addr));
    first_taker(&targets, creds, |mut c| {
        let r = creds.request(req.clone());
        async move {
            match c.leave(r).await {
                // An earlier attempt that timed out may have been applied.
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                other => other.map(|_| ()),
            }
        }
    })
    .await
}

/// Sends one signed call to each of `targets` in turn until one takes it; the last
/// refusal otherwise.
async fn first_taker<F, Fut>(targets: &[String], creds: &Credentials, call: F) -> Result<(), String>
where
    F: Fn(NodeClient<Signed<Channel>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut last = "no leader known and no join address".to_string();
    for t in targets {
        let ch = match creds.signed(t, Duration::from_secs(5)) {
            Ok(ch) => ch,
            Err(e) => {
                last = format!("{t}: {e}");
                continue;
            }
        };
        match call(NodeClient::new(ch)).await {
            Ok(()) => return Ok(()),
            Err(s) => last = format!("{t}: {}", s.message()),
        }
    }
    Err(last)
}

/// After a resume: brings the mesh's record of this node in line with this run's
/// settings (ports, endpoints, features such as mesh DNS) through an Update, retried
/// until a leader takes it (at most a minute).
pub(super) async fn refresh_record(
    raft: RaftNode,
    want: JoinRequest,
    join: Vec<String>,
    creds: Credentials,
    underlay: bool,
) {
    let view = crate::store::views::load_view(&raft.engine);
    let Some(have) = view.nodes.get(&raft.name) else {
        return;
    };
    let req = UpdateRequest {
        id: raft.name.clone(),
        raft_port: want.raft_port,
        grpc_port: want.grpc_port,
        meshdns_port: want.meshdns_port,
        primary_endpoint: want.primary_endpoint.clone(),
        wireguard_endpoints: want.wireguard_endpoints.clone(),
        zone_awareness_id: want.zone_awareness_id.clone(),
        features: want.features.clone(),
        ..Default::default()
    };
    let new = crate::mesh::membership::updated_record(have, &req);
    if new == *have {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let result = if raft.is_leader() {
            crate::services::membership::update(&raft, &req, underlay)
                .await
                .map_err(|s| s.message().to_string())
        } else {
            let mut targets: Vec<String> = raft.leader().map(|l| l.grpc_addr).into_iter().collect();
            targets.extend(join.iter().cloned());
            first_taker(&targets, &creds, |mut c| {
                let r = creds.request(req.clone());
                async move { c.update(r).await.map(|_| ()) }
            })
            .await
        };
        match result {
            Ok(()) => {
                info!("the mesh's record of this node follows this run's settings");
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    warn!(error = %last, "the mesh's record of this node still shows the previous settings");
}

/// The request this node joins with.
pub(super) fn join_request(cfg: &Config, name: &str, key: &Key) -> JoinRequest {
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
        meshdns_port: cfg.meshdns_listen.map_or(0, |a| i32::from(a.port())),
        primary_endpoint: cfg.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        wireguard_endpoints: wg_endpoints,
        zone_awareness_id: cfg.zone.clone().unwrap_or_default(),
        assign_ipv4: true,
        prefer_raft_ipv6: false,
        as_voter: cfg.voter,
        routes: cfg.route.clone(),
        direct_peers: cfg.direct_peer.clone(),
        features: features(cfg).into_iter().map(|f| f as i32).collect(),
    }
}

/// What this node serves, as advertised in its record and reported by Status.
pub(super) fn features(cfg: &Config) -> Vec<Feature> {
    let mut f = vec![
        Feature::Nodes,
        Feature::LeaderProxy,
        Feature::MeshApi,
        Feature::AdminApi,
        Feature::PeerDiscovery,
    ];
    if cfg.metrics_listen.is_some() {
        f.push(Feature::Metrics);
    }
    if cfg.turn_server {
        f.push(Feature::TurnServer);
    }
    if cfg.ice && !cfg.no_wireguard {
        f.push(Feature::IceNegotiation);
    }
    if let Some(dns) = dns_settings(cfg) {
        f.push(Feature::MeshDns);
        if !dns.forwarders.is_empty() {
            f.push(Feature::ForwardMeshDns);
        }
    }
    f
}

/// Mesh DNS settings, when it is on: forwarders from the settings or resolv.conf.
pub(super) fn dns_settings(cfg: &Config) -> Option<crate::dns::Settings> {
    let listen = cfg.meshdns_listen?;
    let forwarders = if cfg.meshdns_no_forward {
        vec![]
    } else {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        crate::dns::Settings::forwarders_from(&cfg.meshdns_forwarder, &resolv, listen)
    };
    Some(crate::dns::Settings {
        listen,
        forwarders,
        forward_timeout: std::time::Duration::from_millis(cfg.meshdns_forward_timeout),
        cache: cfg.meshdns_cache,
    })
}

/// What a join answered: the response, and the voters with their keys (response
/// metadata), by which the joiner checks its first Raft messages.
pub(super) struct Joined {
    pub resp: JoinResponse,
    pub voters: Vec<(String, String)>,
    /// The voters' raft addresses, the leader first.
    pub voter_addrs: Vec<(String, String)>,
}

/// Tries each join address in order, with backoff between rounds, until one accepts.
/// Errors a retry cannot fix (bad input, refused credentials) stop at once.
pub(super) async fn join_mesh(
    cfg: &Config,
    name: &str,
    key: &Key,
    creds: &Credentials,
) -> Result<Joined, NodeError> {
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
                Ok(joined) => {
                    let role = if cfg.voter { "voter" } else { "non-voter" };
                    info!("joined as {role} via {addr}");
                    info!(
                        dns_servers = ?joined.resp.dns_servers,
                        "address {} {}",
                        joined.resp.address_ipv4, joined.resp.address_ipv6
                    );
                    return Ok(joined);
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
        let Ok(ch) = creds.signed(addr, Duration::from_secs(5)) else {
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
) -> Result<Joined, tonic::Status> {
    let ch = creds
        .signed(addr, Duration::from_secs(30))
        .map_err(|e| tonic::Status::invalid_argument(format!("join address: {e}")))?;
    let resp = NodeClient::new(ch).join(creds.request(req.clone())).await?;
    let pairs = |header: &str| {
        resp.metadata()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(parse_voters)
            .unwrap_or_default()
    };
    let voters = pairs(crate::services::node::VOTERS_HEADER);
    let voter_addrs = pairs(crate::services::node::VOTER_ADDRS_HEADER);
    Ok(Joined {
        resp: resp.into_inner(),
        voters,
        voter_addrs,
    })
}

/// `id=key,id=key` (keys are base64, so they hold '=' too: split at the first one);
/// `id=host:port,...` alike.
fn parse_voters(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|p| p.split_once('='))
        .filter(|(id, key)| !id.is_empty() && !key.is_empty())
        .map(|(id, key)| (id.to_string(), key.to_string()))
        .collect()
}
