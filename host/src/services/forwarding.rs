//! Where a call runs. The leader proxy: a tower layer (inside the identity layer) that
//! sends leader-only RPCs arriving at a follower — Admin writes, Join, Update, Leave —
//! to the leader, and reads too when the caller asks with `x-webmesh-prefer-leader:
//! true` (the leader serves `Node.Snapshot` then only after a quorum confirms it still
//! leads: a linearizable read). One path for all of them.
//!
//! Credentials travel, not conclusions: the request goes on unchanged (body, deadline,
//! the caller's proof of key and AUTH headers), so the leader checks them itself. The
//! follower adds what it vouches for — the caller as it saw it, itself as the join's
//! first peer — and signs that together with the body (`x-webmesh-forwarder-proof`); the
//! leader believes the vouched caller only from a voter. A caller on this node's admin
//! socket is this node, which signs for itself.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tower::ServiceExt;
use webmesh_client::proof::{FORWARDER_HEADER, PROOF_HEADER, Purpose};

use super::identity::{
    CALLER_HEADER, FORWARDED_HEADER, Identity, JOIN_VIA_HEADER, PREFER_LEADER_HEADER,
    prefers_leader, read_body,
};
use crate::raft::RaftNode;
use crate::trust::Trust;

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

/// Leader-only: Admin writes and the Node writes that change membership (Join, Update,
/// Leave). Reads of Admin, Mesh and PeerDiscovery follow the prefer-leader header.
/// `Node.Apply` goes to the leader too (an AppDaemon's Publish on a follower).
pub fn route(path: &str, prefer_leader: bool) -> Route {
    if path.starts_with("/v1.Admin/Put")
        || path.starts_with("/v1.Admin/Delete")
        || matches!(
            path,
            "/v1.Node/Join" | "/v1.Node/Update" | "/v1.Node/Leave" | "/v1.Node/Apply"
        )
    {
        return Route::LeaderOnly;
    }
    let read = ["/v1.Admin/", "/v1.Mesh/", "/v1.PeerDiscovery/"]
        .iter()
        .any(|p| path.starts_with(p))
        || path == "/v1.Node/Snapshot";
    if read && prefer_leader {
        Route::PreferLeader
    } else {
        Route::Local
    }
}

struct Ctx {
    raft: RaftNode,
    channels: Arc<Channels>,
    trust: Arc<Trust>,
    max_body: usize,
}

#[derive(Clone)]
pub struct LeaderProxyLayer(Arc<Ctx>);

impl LeaderProxyLayer {
    pub fn new(
        raft: RaftNode,
        channels: Arc<Channels>,
        trust: Arc<Trust>,
        max_body: usize,
    ) -> LeaderProxyLayer {
        LeaderProxyLayer(Arc::new(Ctx {
            raft,
            channels,
            trust,
            max_body,
        }))
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

impl<S> tower::Service<http::Request<tonic::body::Body>> for LeaderProxy<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let prefer = prefers_leader(
                req.headers()
                    .get(PREFER_LEADER_HEADER)
                    .map(|v| v.as_bytes()),
            );
            let route = route(req.uri().path(), prefer);
            if route == Route::Local || ctx.raft.is_leader() {
                return inner.call(req).await;
            }
            // Only a proved forwarder's header survives the identity layer.
            if req.headers().contains_key(FORWARDED_HEADER) {
                // Leadership moved while the request travelled: do not bounce it on.
                return Ok(Status::unavailable(
                    "this node was the leader when the request was forwarded, and is not any \
                     more; retry",
                )
                .into_http());
            }
            let Some((leader_id, leader)) = ctx.raft.leader_with_id() else {
                return Ok(
                    Status::unavailable("no Raft leader is known right now; retry shortly")
                        .into_http(),
                );
            };
            let identity = req
                .extensions()
                .get::<Identity>()
                .cloned()
                .unwrap_or_default();
            let (mut parts, body) = req.into_parts();
            let body = match read_body(body, ctx.max_body).await {
                Ok(b) => b,
                Err(s) => return Ok(s.into_http()),
            };
            let path = parts.uri.path().to_string();
            let me = ctx.trust.name().to_string();
            let caller = identity.caller.to_header();
            let signer = ctx.trust.signer();
            let mut add = vec![
                (CALLER_HEADER, caller.clone()),
                (FORWARDED_HEADER, me.clone()),
                (JOIN_VIA_HEADER, me.clone()),
                (
                    FORWARDER_HEADER,
                    signer.sign(Purpose::Forward, &path, &body, &[&caller, &me]),
                ),
            ];
            if identity.local {
                // The admin socket's caller is this node: it proves so itself.
                add.push((PROOF_HEADER, signer.sign(Purpose::Call, &path, &body, &[])));
            }
            for (k, v) in add {
                match http::HeaderValue::from_str(&v) {
                    Ok(v) => {
                        parts.headers.insert(k, v);
                    }
                    Err(_) => {
                        return Ok(Status::invalid_argument(format!(
                            "caller identity {v:?} cannot travel in a header"
                        ))
                        .into_http());
                    }
                }
            }
            // A node's own leave must not travel through its own tunnel: the leader drops
            // the WireGuard peer as it commits the leave, and the answer would be lost on
            // the way back. It goes to the leader's primary endpoint when it has one.
            let target = if path == "/v1.Node/Leave" && leaves_itself(&body, &me) {
                crate::store::views::load_view(&ctx.raft.engine)
                    .nodes
                    .get(&leader.name)
                    .and_then(super::membership::underlay_member)
                    .map(|m| m.grpc_addr)
                    .unwrap_or_else(|| leader.grpc_addr.clone())
            } else {
                leader.grpc_addr.clone()
            };
            let channel = match ctx.channels.get(&target) {
                Ok(c) => c,
                Err(s) => return Ok(s.into_http()),
            };
            tracing::debug!(%path, leader = %leader.name, caller = %identity.caller, "forwarding to the leader");
            let req = http::Request::from_parts(
                parts,
                tonic::body::Body::new(http_body_util::Full::new(body)),
            );
            // A leader that died or was cut off answers nothing, and the call would wait
            // out the caller's whole deadline. Once this node stops following it (an
            // election began), say so at once: the caller retries with the new leader.
            tokio::select! {
                resp = channel.oneshot(req) => match resp {
                    Ok(resp) => Ok(resp.map(tonic::body::Body::new)),
                    Err(e) => Ok(Status::unavailable(format!(
                        "forwarding to the leader {} at {}: {e}",
                        leader.name, leader.grpc_addr
                    ))
                    .into_http()),
                },
                () = ctx.raft.leader_moved_from(leader_id) => Ok(Status::unavailable(format!(
                    "the leader {} stopped answering while the request was forwarded to it and \
                     an election began; the request may or may not have been applied: retry it \
                     (or read first if it must not apply twice)",
                    leader.name
                ))
                .into_http()),
            }
        })
    }
}

/// Whether a framed `v1.LeaveRequest` names node `me`.
fn leaves_itself(body: &[u8], me: &str) -> bool {
    use prost::Message;
    body.len() >= 5
        && body[0] == 0
        && webmesh_api::v1::LeaveRequest::decode(&body[5..]).is_ok_and(|r| r.id == me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_to_the_leader_and_reads_on_request() {
        assert_eq!(route("/v1.Admin/PutNetworkACL", false), Route::LeaderOnly);
        assert_eq!(route("/v1.Admin/DeleteRole", true), Route::LeaderOnly);
        assert_eq!(route("/v1.Node/Join", false), Route::LeaderOnly);
        assert_eq!(route("/v1.Node/Update", false), Route::LeaderOnly);
        assert_eq!(route("/v1.Node/Leave", false), Route::LeaderOnly);
        assert_eq!(route("/v1.Admin/GetRole", false), Route::Local);
        assert_eq!(route("/v1.Admin/ListRoutes", true), Route::PreferLeader);
        assert_eq!(route("/v1.Mesh/GetMeshGraph", true), Route::PreferLeader);
        assert_eq!(route("/v1.PeerDiscovery/ListPeers", false), Route::Local);
        assert_eq!(route("/v1.Node/GetStatus", true), Route::Local);
        assert_eq!(route("/v1.Node/Apply", false), Route::LeaderOnly);
        // A leave names its node inside a gRPC frame.
        let frame = |id: &str| {
            use prost::Message;
            let msg = webmesh_api::v1::LeaveRequest { id: id.into() }.encode_to_vec();
            let mut b = vec![0];
            b.extend((msg.len() as u32).to_be_bytes());
            b.extend(msg);
            b
        };
        assert!(leaves_itself(&frame("n2"), "n2"));
        assert!(!leaves_itself(&frame("n3"), "n2"));
        assert!(!leaves_itself(&[0, 0], "n2"));
        assert_eq!(route("/v1.Node/Snapshot", true), Route::PreferLeader);
        assert_eq!(route("/v1.Node/Snapshot", false), Route::Local);
    }
}
