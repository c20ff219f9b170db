//! A client channel that proves the node's key on every request: the body is read
//! whole (the node's own requests are small), hashed and signed, and sent on with the
//! proof in [`PROOF_HEADER`](crate::proof::PROOF_HEADER).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body_util::BodyExt;

use crate::proof::{PROOF_HEADER, Purpose, Signer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct Signed<S> {
    inner: S,
    signer: Arc<Signer>,
}

impl<S> Signed<S> {
    pub fn new(inner: S, signer: Arc<Signer>) -> Signed<S> {
        Signed { inner, signer }
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Signed<S>
where
    S: tower::Service<http::Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let signer = self.signer.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            let body = if crate::proof::signs_body(&path) {
                let bytes = body.collect().await?.to_bytes();
                let proof = signer.sign(Purpose::Call, &path, &bytes, &[]);
                parts
                    .headers
                    .insert(PROOF_HEADER, http::HeaderValue::from_str(&proof)?);
                tonic::body::Body::new(http_body_util::Full::new(bytes))
            } else {
                let proof = signer.sign(Purpose::Call, &path, &[], &[]);
                parts
                    .headers
                    .insert(PROOF_HEADER, http::HeaderValue::from_str(&proof)?);
                body
            };
            let req = http::Request::from_parts(parts, body);
            inner.call(req).await.map_err(Into::into)
        })
    }
}
