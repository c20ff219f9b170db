//! Authentication in front of every public RPC: a tower layer that asks the AUTH
//! plugin who the caller is. Mesh members (this host over loopback, other nodes over
//! their WireGuard-authenticated mesh addresses) are known without asking.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use webmesh_api::v1::AuthenticationRequest;

use super::{Caller, identify};
use crate::mesh::members::MemberAddrs;
use crate::plugins::PluginHandle;

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
}
