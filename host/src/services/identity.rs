//! Who is calling. A tower layer in front of every public RPC establishes an
//! [`Identity`] from what the request proves, in this order:
//!
//! 1. the local admin socket (file permissions and `SO_PEERCRED` let only root, this
//!    user and the admin group in): the caller acts as this node;
//! 2. a member's forwarder proof ([`FORWARDER_HEADER`]): the request was forwarded by
//!    that member, whose key signed the request and the caller it vouches for; that
//!    caller is believed only from a voter (voters hold the whole state anyway);
//! 3. a node's own proof ([`PROOF_HEADER`]): the caller is the node whose registered key
//!    signed the request; a valid proof with a key the state does not give that node is
//!    only a claim (a first join, or a stranger);
//! 4. the AUTH plugin, for everyone else;
//! 5. otherwise the caller is anonymous.
//!
//! Architecture invariant: no identity comes from an address. Loopback is not the local
//! node and a mesh address is nobody (a relay forwards packets for the nodes behind it).
//! Headers only a proved forwarder may set are removed from every other request.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use webmesh_api::v1::AuthenticationRequest;
use webmesh_client::proof::{self, FORWARDER_HEADER, PROOF_HEADER, Purpose};

use crate::plugins::PluginHandle;
use crate::raft::RaftNode;
use crate::trust::{Claim, Trust};

/// Who made a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Caller {
    /// A mesh node, by ID: it proved its registered key, or it is this node (the admin
    /// socket), or a voter vouched for it.
    Node(String),
    /// An identity the AUTH plugin vouched for.
    User(String),
    /// Nobody we can name.
    #[default]
    Anonymous,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(id) => write!(f, "node {id}"),
            Caller::User(id) => write!(f, "{id:?} (authenticated)"),
            Caller::Anonymous => f.write_str("an anonymous caller"),
        }
    }
}

/// The caller a member forwarded a request for: `node:<id>`, `user:<id>` or
/// `anonymous`. Signed into the forwarder's proof; believed only from voters.
pub const CALLER_HEADER: &str = "x-webmesh-caller";
/// Set on a request a member forwarded to the leader: a node that is not the leader
/// any more answers it rather than forwarding it again.
pub const FORWARDED_HEADER: &str = "x-webmesh-forwarded-by";
/// Names the node that handled a join when it forwards it to the leader (the joiner's
/// first edge). Signed into the forwarder's proof.
pub const JOIN_VIA_HEADER: &str = "x-webmesh-join-via";
/// Asks a follower to forward a read to the leader.
pub const PREFER_LEADER_HEADER: &str = "x-webmesh-prefer-leader";

/// Whether a value of `x-webmesh-prefer-leader` asks for the leader.
pub fn prefers_leader(value: Option<&[u8]>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case(b"true"))
}
/// The caller's address as the AUTH plugin sees it (for rate limits); set by the node,
/// never taken from the request.
pub const REMOTE_ADDR_HEADER: &str = "x-webmesh-remote-addr";

/// Headers only a proved forwarder may set.
const FORWARDER_ONLY: [&str; 3] = [CALLER_HEADER, FORWARDED_HEADER, JOIN_VIA_HEADER];

impl Caller {
    pub fn to_header(&self) -> String {
        match self {
            Caller::Node(id) => format!("node:{id}"),
            Caller::User(id) => format!("user:{id}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    pub fn from_header(v: &str) -> Option<Caller> {
        match v.split_once(':') {
            Some(("node", id)) if !id.is_empty() => Some(Caller::Node(id.into())),
            Some(("user", id)) if !id.is_empty() => Some(Caller::User(id.into())),
            None if v == "anonymous" => Some(Caller::Anonymous),
            _ => None,
        }
    }

    /// The RBAC principal; anonymous callers are nobody (no subject names them).
    pub fn principal(&self) -> crate::mesh::rbac::Principal {
        use crate::mesh::rbac::Principal;
        match self {
            Caller::Node(id) => Principal::node(id),
            Caller::User(id) => Principal::user(id),
            Caller::Anonymous => Principal {
                name: String::new(),
                node: false,
                user: false,
            },
        }
    }

    pub fn is_anonymous(&self) -> bool {
        *self == Caller::Anonymous
    }
}

/// What the identity layer established about a request (in its extensions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub caller: Caller,
    /// The request came through the local admin socket.
    pub local: bool,
    /// A verified proof of key carried by the request, registered or not.
    pub claim: Option<Claim>,
    /// The member that forwarded this request, having proved it.
    pub forwarder: Option<String>,
    /// The caller came from the AUTH plugin's verdict on this request's credentials
    /// (not re-checkable elsewhere when they include a TLS client certificate).
    pub by_plugin: bool,
}

impl Identity {
    /// The identity the layer put on `req` (anonymous if it was never through it).
    pub fn of<T>(req: &tonic::Request<T>) -> Identity {
        req.extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or_default()
    }

    /// The node this caller proved to be by key, this request's own claim included.
    pub fn proven_node(&self) -> Option<&str> {
        match &self.claim {
            Some(c) if c.registered => Some(&c.node),
            _ => None,
        }
    }
}

/// Who made `req` (shortcut for [`Identity::of`]).
pub fn request_caller<T>(req: &tonic::Request<T>) -> Caller {
    Identity::of(req).caller
}

/// The facts a request proved, before they are weighed.
#[derive(Debug, Default)]
pub struct Proved {
    pub local: bool,
    /// A verified forwarder proof: the forwarder, whether it is a voter, and the caller
    /// it vouches for.
    pub forwarded: Option<(Claim, bool, Option<Caller>)>,
    /// A verified proof of the caller's own key.
    pub own: Option<Claim>,
}

/// Weighs what a request proved (pure). `None`: the AUTH plugin should be asked.
pub fn resolve(local_node: &str, p: Proved) -> (Identity, bool) {
    let mut id = Identity {
        local: p.local,
        claim: p.own.clone(),
        ..Default::default()
    };
    if p.local {
        id.caller = Caller::Node(local_node.to_string());
        return (id, false);
    }
    if let Some((f, voter, vouched)) = p.forwarded {
        id.forwarder = Some(f.node.clone());
        if voter && let Some(c) = vouched {
            id.caller = c;
            return (id, false);
        }
    }
    if let Some(node) = id.proven_node() {
        id.caller = Caller::Node(node.to_string());
        return (id, false);
    }
    (id, true)
}

#[derive(Clone)]
pub struct IdentityLayer(Arc<Ctx>);

struct Ctx {
    auth: Option<Arc<PluginHandle>>,
    trust: Arc<Trust>,
    raft: RaftNode,
    /// Largest request body read to check a proof.
    max_body: usize,
    /// Joins per source address that reach this node first (not forwarded ones).
    joins: std::sync::Mutex<crate::mesh::admission::JoinRate>,
}

/// Sources whose join rate is tracked at once (each bucket is a few dozen bytes).
const JOIN_SOURCES: usize = 65_536;

impl IdentityLayer {
    pub fn new(
        auth: Option<Arc<PluginHandle>>,
        trust: Arc<Trust>,
        raft: RaftNode,
        max_body: usize,
        joins_per_minute: u32,
    ) -> IdentityLayer {
        IdentityLayer(Arc::new(Ctx {
            auth,
            trust,
            raft,
            max_body,
            joins: std::sync::Mutex::new(crate::mesh::admission::JoinRate::new(
                joins_per_minute,
                JOIN_SOURCES,
            )),
        }))
    }
}

impl<S> tower::Layer<S> for IdentityLayer {
    type Service = IdentityService<S>;
    fn layer(&self, inner: S) -> IdentityService<S> {
        IdentityService {
            inner,
            ctx: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct IdentityService<S> {
    inner: S,
    ctx: Arc<Ctx>,
}

/// The peer address of a connection, over plain TCP or TLS (for logs and rate limits;
/// never for identity).
fn remote_of(ext: &http::Extensions) -> Option<std::net::IpAddr> {
    let tls = ext.get::<TlsConnectInfo<TcpConnectInfo>>();
    ext.get::<TcpConnectInfo>()
        .or(tls.map(|t| t.get_ref()))
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())
}

/// The request's metadata as the plugin sees it: text headers, names in lower case,
/// HTTP/2, gRPC and webmesh transport headers left out.
pub fn auth_headers(headers: &http::HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !k.ends_with("-bin")
                && !matches!(k, "te" | "content-type" | "user-agent" | "grpc-timeout")
                && !k.starts_with("grpc-accept")
                && k != PROOF_HEADER
                && k != FORWARDER_HEADER
                && k != REMOTE_ADDR_HEADER
                && !FORWARDER_ONLY.contains(&k)
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

fn unauthenticated(what: &str, e: impl std::fmt::Display) -> http::Response<tonic::body::Body> {
    tonic::Status::unauthenticated(format!("{what}: {e}")).into_http()
}

/// Reads a body whole, up to `max` bytes.
pub async fn read_body(body: tonic::body::Body, max: usize) -> Result<bytes::Bytes, tonic::Status> {
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(tonic::Status::invalid_argument(format!(
                "the request is larger than this node's limit of {max} bytes"
            )))
        }
        Err(e) => Err(tonic::Status::invalid_argument(format!(
            "cannot read the request: {e}"
        ))),
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for IdentityService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let own = header(PROOF_HEADER);
            let fwd = header(FORWARDER_HEADER);
            // What only a proved forwarder may say; put back only if one proves it.
            let vouched: Vec<(&str, Option<http::HeaderValue>)> = FORWARDER_ONLY
                .iter()
                .map(|h| (*h, parts.headers.remove(*h)))
                .collect();
            parts.headers.remove(REMOTE_ADDR_HEADER);
            let text = |h: &str| {
                vouched
                    .iter()
                    .find(|(n, _)| *n == h)
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            // A proof signs the exact body: read it (bounded) only when one comes.
            let streaming = !proof::signs_body(parts.uri.path());
            let (body, digest) = if streaming {
                (body, proof::body_digest(&[]))
            } else if own.is_some() || fwd.is_some() {
                match read_body(body, ctx.max_body).await {
                    Ok(b) => {
                        let d = proof::body_digest(&b);
                        (tonic::body::Body::new(http_body_util::Full::new(b)), d)
                    }
                    Err(s) => return Ok(s.into_http()),
                }
            } else {
                (body, [0; 32])
            };
            let path = parts.uri.path().to_string();
            let mut proved = Proved {
                local: parts.extensions.get::<UdsConnectInfo>().is_some(),
                ..Default::default()
            };
            if let Some(h) = &fwd {
                let (caller_h, via_h) = (text(CALLER_HEADER), text(JOIN_VIA_HEADER));
                let claim = match ctx.trust.check(
                    h,
                    Purpose::Forward,
                    &path,
                    &digest,
                    &[&caller_h, &via_h],
                    true,
                ) {
                    Ok(c) if c.registered => c,
                    Ok(c) => {
                        return Ok(unauthenticated(
                            FORWARDER_HEADER,
                            format!("{} does not hold that key; only members forward", c.node),
                        ));
                    }
                    Err(e) => return Ok(unauthenticated(FORWARDER_HEADER, e)),
                };
                for (name, v) in vouched {
                    if let Some(v) = v {
                        parts.headers.insert(name, v);
                    }
                }
                let voter = ctx.raft.is_voter(&claim.node);
                proved.forwarded = Some((claim, voter, Caller::from_header(&caller_h)));
            }
            if let Some(h) = &own {
                match ctx.trust.check(h, Purpose::Call, &path, &digest, &[], true) {
                    Ok(c) => proved.own = Some(c),
                    Err(e) => return Ok(unauthenticated(PROOF_HEADER, e)),
                }
            }
            let (mut identity, ask_plugin) = resolve(ctx.trust.name(), proved);
            // Joins are rate-limited per source where they arrive (not again when a
            // member forwards them).
            if path == "/v1.Node/Join"
                && identity.forwarder.is_none()
                && !identity.local
                && let Some(ip) = remote_of(&parts.extensions)
            {
                let mut joins = ctx.joins.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(wait_ms) = joins.take(ip, proof::now_ms()) {
                    return Ok(tonic::Status::resource_exhausted(format!(
                        "too many joins from {ip}; retry in {} s",
                        wait_ms.div_ceil(1000)
                    ))
                    .into_http());
                }
            }
            if ask_plugin && let Some(auth) = &ctx.auth {
                let tls = parts.extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
                let remote = remote_of(&parts.extensions);
                let mut headers = auth_headers(&parts.headers);
                if let Some(r) = remote {
                    headers.insert(REMOTE_ADDR_HEADER.into(), r.to_string());
                }
                let request = AuthenticationRequest {
                    headers,
                    certificates: tls
                        .and_then(|t| t.peer_certs())
                        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                        .unwrap_or_default(),
                };
                match auth.authenticate(request).await {
                    Ok(id) if !id.is_empty() => {
                        identity.caller = Caller::User(id);
                        identity.by_plugin = true;
                    }
                    Ok(_) => {
                        return Ok(tonic::Status::unauthenticated(format!(
                            "plugin {} authenticated the caller without naming it",
                            auth.name
                        ))
                        .into_http());
                    }
                    Err(status) => {
                        tracing::debug!(remote = ?remote, error = %status, "authentication failed");
                        return Ok(status.into_http());
                    }
                }
            }
            parts.extensions.insert(identity);
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(node: &str, registered: bool) -> Claim {
        Claim {
            node: node.into(),
            key: "K".into(),
            registered,
        }
    }

    #[test]
    fn transport_and_webmesh_headers_stay_out_of_authentication() {
        let mut h = http::HeaderMap::new();
        h.insert("x-webmesh-basic-auth-username", "alice".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("grpc-timeout", "5S".parse().unwrap());
        h.insert("x-trace-bin", "AAEC".parse().unwrap());
        h.insert(PROOF_HEADER, "v1;x".parse().unwrap());
        h.insert(CALLER_HEADER, "user:admin".parse().unwrap());
        h.insert(REMOTE_ADDR_HEADER, "1.2.3.4".parse().unwrap());
        let got = auth_headers(&h);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["x-webmesh-basic-auth-username"], "alice");
        assert_eq!(got["authorization"], "Bearer t");
    }

    #[test]
    fn proofs_are_weighed_in_order() {
        // The admin socket is this node, whatever else the request says.
        let (id, ask) = resolve(
            "me",
            Proved {
                local: true,
                own: Some(claim("other", true)),
                ..Default::default()
            },
        );
        assert_eq!((id.caller, ask), (Caller::Node("me".into()), false));
        // A voter's word for the caller is taken.
        let (id, ask) = resolve(
            "me",
            Proved {
                forwarded: Some((claim("v", true), true, Some(Caller::User("alice".into())))),
                ..Default::default()
            },
        );
        assert_eq!(id.caller, Caller::User("alice".into()));
        assert_eq!(id.forwarder.as_deref(), Some("v"));
        assert!(!ask);
        // A non-voter's is not: the request's own credentials decide.
        let (id, ask) = resolve(
            "me",
            Proved {
                forwarded: Some((claim("m", true), false, Some(Caller::User("admin".into())))),
                ..Default::default()
            },
        );
        assert_eq!((id.caller, ask), (Caller::Anonymous, true));
        let (id, ask) = resolve(
            "me",
            Proved {
                forwarded: Some((claim("m", true), false, Some(Caller::User("admin".into())))),
                own: Some(claim("n2", true)),
                ..Default::default()
            },
        );
        assert_eq!((id.caller, ask), (Caller::Node("n2".into()), false));
        // A key the state does not give that node is a claim: the plugin decides.
        let (id, ask) = resolve(
            "me",
            Proved {
                own: Some(claim("n2", false)),
                ..Default::default()
            },
        );
        assert_eq!((id.caller.clone(), ask), (Caller::Anonymous, true));
        assert_eq!(id.claim, Some(claim("n2", false)));
        assert_eq!(id.proven_node(), None);
    }

    #[test]
    fn caller_headers_round_trip() {
        for c in [
            Caller::Node("n1".into()),
            Caller::User("alice@example".into()),
            Caller::Anonymous,
        ] {
            assert_eq!(Caller::from_header(&c.to_header()), Some(c));
        }
        assert_eq!(Caller::from_header("root"), None);
        assert_eq!(Caller::from_header("node:"), None);
    }
}
