//! The tower layer that counts API calls: started, handled by gRPC status code, and how
//! long from the request to the end of the response body (where a successful call's
//! status travels, in the trailers). Methods outside the API are counted as `unknown`,
//! so a caller inventing paths cannot grow the label sets.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prost::Message;

use super::{GrpcCodeLabels, GrpcLabels, get};

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    known: Arc<HashSet<String>>,
}

impl GrpcMetricsLayer {
    /// Counts the methods of the services in `descriptors` (an encoded
    /// FileDescriptorSet) by name.
    pub fn new(descriptors: &[u8]) -> GrpcMetricsLayer {
        let mut known = HashSet::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(descriptors) {
            for f in set.file {
                let pkg = f.package.unwrap_or_default();
                for s in f.service {
                    let svc = format!("{pkg}.{}", s.name.unwrap_or_default());
                    for m in s.method {
                        known.insert(format!("/{svc}/{}", m.name.unwrap_or_default()));
                    }
                }
            }
        }
        GrpcMetricsLayer {
            known: Arc::new(known),
        }
    }

    fn labels(&self, path: &str) -> GrpcLabels {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|_| self.known.contains(path))
            .unwrap_or(("unknown", "unknown"));
        GrpcLabels {
            service: service.to_string(),
            method: method.to_string(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for GrpcMetrics<S>
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
        let labels = self.layer.labels(req.uri().path());
        get().grpc_started.get_or_create(&labels).inc();
        let started = Instant::now();
        Box::pin(async move {
            let resp = inner.call(req).await?;
            let (parts, body) = resp.into_parts();
            // An error travels in the headers (a trailers-only response).
            let code = status_of(&parts.headers);
            let body = Metered {
                inner: body,
                labels,
                started,
                code,
                done: false,
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

fn status_of(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The response body, counting the call when it ends (or is dropped unfinished).
struct Metered {
    inner: tonic::body::Body,
    labels: GrpcLabels,
    started: Instant,
    code: Option<i32>,
    done: bool,
}

impl Metered {
    fn finish(&mut self, code: Option<i32>) {
        if self.done {
            return;
        }
        self.done = true;
        let code = tonic::Code::from_i32(code.or(self.code).unwrap_or(tonic::Code::Unknown as i32));
        let m = get();
        m.grpc_handled
            .get_or_create(&GrpcCodeLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code: format!("{code:?}"),
            })
            .inc();
        m.grpc_seconds
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl http_body::Body for Metered {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some(tonic::Code::Internal as i32)),
            Poll::Ready(None) => {
                let code = self.code;
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // A body dropped before its end: the client went away, unless the status was
        // already known (a trailers-only answer is complete with its headers).
        let code = self.code.or(Some(tonic::Code::Cancelled as i32));
        self.finish(code);
    }
}
