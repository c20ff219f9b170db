//! Who is calling: a tower layer in front of every public RPC asks the AUTH plugin who
//! the caller is; mesh members (this host over loopback, other nodes over their
//! WireGuard-authenticated mesh addresses) are known without asking. A request a member
//! forwarded names its original caller in a header, believed only from members.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use webmesh_api::v1::AuthenticationRequest;

use crate::mesh::members::MemberAddrs;
use crate::plugins::PluginHandle;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A mesh node, by ID.
    Node(String),
    /// An identity the AUTH plugin vouched for.
    User(String),
    /// Nobody we can name.
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

/// The caller a member forwarded a request for (leader proxy, forwarded joins):
/// `node:<id>`, `user:<id>` or `anonymous`. Trusted only from mesh members.
pub const CALLER_HEADER: &str = "x-webmesh-caller";
/// Set on a request a member forwarded to the leader: a node that is not the leader
/// any more answers it rather than forwarding it again.
pub const FORWARDED_HEADER: &str = "x-webmesh-forwarded-by";
/// Asks a follower to forward a read to the leader.
pub const PREFER_LEADER_HEADER: &str = "x-webmesh-prefer-leader";

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

    /// The RBAC principal; `None` for anonymous callers (only SUBJECT_ALL "*" names them).
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
}

/// Who made `req`: the AUTH plugin's answer, else the address (loopback, a member's
/// mesh address); for a request a member forwarded, the caller it names.
pub fn request_caller<T>(
    req: &tonic::Request<T>,
    local_node: &str,
    members: &std::sync::RwLock<crate::mesh::members::MemberAddrs>,
) -> Caller {
    let direct = match req.extensions().get::<Authenticated>() {
        Some(a) => Caller::User(a.0.clone()),
        None => identify(req.remote_addr().map(|a| a.ip()), local_node, members),
    };
    if let Caller::Node(_) = direct
        && let Some(fwd) = req
            .metadata()
            .get(CALLER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Caller::from_header)
    {
        return fwd;
    }
    direct
}

/// Without an auth plugin, the only identity a connection proves is where it comes
/// from: a loopback caller is on this host, so it acts as this node.
pub fn caller_from_addr(remote: Option<IpAddr>, local_node: &str) -> Caller {
    match remote {
        Some(ip) if ip.is_loopback() || is_mapped_loopback(ip) => {
            Caller::Node(local_node.to_string())
        }
        _ => Caller::Anonymous,
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// [`caller_from_addr`], plus mesh addresses: a TCP connection from a node's mesh
/// address came through WireGuard, which authenticated the peer's key.
pub fn identify(
    remote: Option<IpAddr>,
    local_node: &str,
    members: &std::sync::RwLock<crate::mesh::members::MemberAddrs>,
) -> Caller {
    let caller = caller_from_addr(remote, local_node);
    match remote.filter(|_| caller == Caller::Anonymous) {
        Some(ip) => {
            let m = members.read().unwrap_or_else(|p| p.into_inner());
            m.owner(ip)
                .map_or(Caller::Anonymous, |id| Caller::Node(id.to_string()))
        }
        None => caller,
    }
}

/// The identity the AUTH plugin returned for a request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub String);

#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<PluginHandle>>,
    members: Arc<RwLock<MemberAddrs>>,
    local: Arc<str>,
}

impl AuthLayer {
    pub fn new(
        auth: Option<Arc<PluginHandle>>,
        members: Arc<RwLock<MemberAddrs>>,
        local: &str,
    ) -> AuthLayer {
        AuthLayer {
            auth,
            members,
            local: local.into(),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The peer address of an HTTP request, over plain TCP or TLS.
pub fn remote_ip<B>(req: &http::Request<B>) -> Option<std::net::IpAddr> {
    let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    req.extensions()
        .get::<TcpConnectInfo>()
        .or(tls.map(|t| t.get_ref()))
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())
}

/// The request's metadata as the plugin sees it: text headers, names in lower case,
/// HTTP/2 and gRPC transport headers left out.
pub fn auth_headers(headers: &http::HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !k.ends_with("-bin")
                && !matches!(k, "te" | "content-type" | "user-agent" | "grpc-timeout")
                && !k.starts_with("grpc-accept")
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let Some(auth) = layer.auth else {
                return inner.call(req).await;
            };
            let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
            let remote = remote_ip(&req);
            if let Caller::Node(_) = identify(remote, &layer.local, &layer.members) {
                return inner.call(req).await;
            }
            let request = AuthenticationRequest {
                headers: auth_headers(req.headers()),
                certificates: tls
                    .and_then(|t| t.peer_certs())
                    .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                    .unwrap_or_default(),
            };
            match auth.authenticate(request).await {
                Ok(id) if !id.is_empty() => {
                    req.extensions_mut().insert(Authenticated(id));
                    inner.call(req).await
                }
                Ok(_) => Ok(tonic::Status::unauthenticated(format!(
                    "plugin {} authenticated the caller without naming it",
                    auth.name
                ))
                .into_http()),
                Err(status) => {
                    tracing::debug!(remote = ?remote, error = %status, "authentication failed");
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_headers_stay_out_of_authentication() {
        let mut h = http::HeaderMap::new();
        h.insert("x-webmesh-basic-auth-username", "alice".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("grpc-timeout", "5S".parse().unwrap());
        h.insert("x-trace-bin", "AAEC".parse().unwrap());
        let got = auth_headers(&h);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["x-webmesh-basic-auth-username"], "alice");
        assert_eq!(got["authorization"], "Bearer t");
    }

    #[test]
    fn loopback_callers_act_as_this_node() {
        let me = "n1";
        assert_eq!(
            caller_from_addr(Some("127.0.0.1".parse().unwrap()), me),
            Caller::Node("n1".into())
        );
        assert_eq!(
            caller_from_addr(Some("::1".parse().unwrap()), me),
            Caller::Node("n1".into())
        );
        assert_eq!(
            caller_from_addr(Some("::ffff:127.0.0.1".parse().unwrap()), me),
            Caller::Node("n1".into())
        );
        assert_eq!(
            caller_from_addr(Some("10.0.0.2".parse().unwrap()), me),
            Caller::Anonymous
        );
        assert_eq!(caller_from_addr(None, me), Caller::Anonymous);
    }
}
