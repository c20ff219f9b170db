//! Where a call runs. The leader proxy: a tower layer (inside the auth layer) that sends leader-only RPCs
//! arriving at a follower — Admin writes — to the leader, and reads too when the caller
//! asks with `x-webmesh-prefer-leader: true`. The request travels unchanged (HTTP/2
//! frames, deadline, credentials), plus the caller's identity in `x-webmesh-caller`,
//! which the leader trusts only because the request comes from a mesh member.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tower::ServiceExt;

use super::identity::{
    Authenticated, CALLER_HEADER, Caller, FORWARDED_HEADER, PREFER_LEADER_HEADER, identify,
    remote_ip,
};
use crate::raft::RaftNode;

/// gRPC channels to other members, made once and kept (they reconnect by themselves).
#[derive(Default)]
pub struct Channels {
    cache: std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>,
    dialer: crate::tls::Dialer,
}

impl Channels {
    pub fn new(dialer: crate::tls::Dialer) -> Channels {
        Channels {
            cache: Default::default(),
            dialer,
        }
    }

    pub fn get(&self, addr: &str) -> Result<tonic::transport::Channel, Status> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .dialer
            .channel(addr, None)
            .map_err(|e| Status::unavailable(format!("bad member address {addr}: {e}")))?;
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// What the proxy does with a request, by its gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Served here.
    Local,
    /// Must run on the leader.
    LeaderOnly,
    /// A read the caller prefers the leader to answer.
    PreferLeader,
}

/// Leader-only: Admin writes. Reads of Admin, Mesh and PeerDiscovery follow the
/// prefer-leader header. The Node service forwards its own writes (Join, Update, Leave,
/// Apply) and answers everything else for the node it runs on.
pub fn route(path: &str, prefer_leader: bool) -> Route {
    if path.starts_with("/v1.Admin/Put") || path.starts_with("/v1.Admin/Delete") {
        return Route::LeaderOnly;
    }
    let read = ["/v1.Admin/", "/v1.Mesh/", "/v1.PeerDiscovery/"]
        .iter()
        .any(|p| path.starts_with(p));
    if read && prefer_leader {
        Route::PreferLeader
    } else {
        Route::Local
    }
}

struct Ctx {
    raft: RaftNode,
    channels: Arc<Channels>,
}

#[derive(Clone)]
pub struct LeaderProxyLayer(Arc<Ctx>);

impl LeaderProxyLayer {
    pub fn new(raft: RaftNode, channels: Arc<Channels>) -> LeaderProxyLayer {
        LeaderProxyLayer(Arc::new(Ctx { raft, channels }))
    }
}

impl<S> tower::Layer<S> for LeaderProxyLayer {
    type Service = LeaderProxy<S>;
    fn layer(&self, inner: S) -> LeaderProxy<S> {
        LeaderProxy {
            inner,
            ctx: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LeaderProxy<S> {
    inner: S,
    ctx: Arc<Ctx>,
}

impl<S, B> tower::Service<http::Request<B>> for LeaderProxy<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let prefer = req
                .headers()
                .get(PREFER_LEADER_HEADER)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            let route = route(req.uri().path(), prefer);
            if route == Route::Local || ctx.raft.is_leader() {
                return inner.call(req).await;
            }
            if req.headers().contains_key(FORWARDED_HEADER) {
                // Leadership moved while the request travelled: do not bounce it on.
                return Ok(Status::unavailable(
                    "this node was the leader when the request was forwarded, and is not any \
                     more; retry",
                )
                .into_http());
            }
            let Some(leader) = ctx.raft.leader() else {
                return Ok(
                    Status::unavailable("no Raft leader is known right now; retry shortly")
                        .into_http(),
                );
            };
            let caller = match req.extensions().get::<Authenticated>() {
                Some(a) => Caller::User(a.0.clone()),
                None => identify(
                    remote_ip(&req),
                    &ctx.raft.name,
                    &ctx.raft.state_machine.members(),
                ),
            };
            let headers = req.headers_mut();
            for (k, v) in [
                (CALLER_HEADER, caller.to_header()),
                (FORWARDED_HEADER, ctx.raft.name.clone()),
            ] {
                match http::HeaderValue::from_str(&v) {
                    Ok(v) => {
                        headers.insert(k, v);
                    }
                    Err(_) => {
                        return Ok(Status::invalid_argument(format!(
                            "caller identity {v:?} cannot travel in a header"
                        ))
                        .into_http());
                    }
                }
            }
            let channel = match ctx.channels.get(&leader.grpc_addr) {
                Ok(c) => c,
                Err(s) => return Ok(s.into_http()),
            };
            tracing::debug!(path = %req.uri().path(), leader = %leader.name, %caller, "forwarding to the leader");
            match channel.oneshot(req.map(tonic::body::Body::new)).await {
                Ok(resp) => Ok(resp),
                Err(e) => Ok(Status::unavailable(format!(
                    "forwarding to the leader {} at {}: {e}",
                    leader.name, leader.grpc_addr
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_writes_go_to_the_leader_and_reads_on_request() {
        assert_eq!(route("/v1.Admin/PutNetworkACL", false), Route::LeaderOnly);
        assert_eq!(route("/v1.Admin/DeleteRole", true), Route::LeaderOnly);
        assert_eq!(route("/v1.Admin/GetRole", false), Route::Local);
        assert_eq!(route("/v1.Admin/ListRoutes", true), Route::PreferLeader);
        assert_eq!(route("/v1.Mesh/GetMeshGraph", true), Route::PreferLeader);
        assert_eq!(route("/v1.PeerDiscovery/ListPeers", false), Route::Local);
        // The Node service handles its own forwarding.
        assert_eq!(route("/v1.Node/Join", true), Route::Local);
        assert_eq!(route("/v1.Node/GetStatus", true), Route::Local);
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
