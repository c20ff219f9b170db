//! `GET /metrics` over HTTP/1.1: the Prometheus text format, or OpenMetrics when the
//! scraper asks for it. Answers loopback, mesh addresses and `--metrics-allow`
//! networks only; others get 403 (per-peer figures say who talks to whom).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info};

use super::{Sources, registry};

/// Scrapes served at once; more connections wait in the kernel's backlog.
const MAX_CLIENTS: usize = 32;
const FORBIDDEN: &str = "this address may not scrape this node (see --metrics-allow)\n";
/// A connection that sends no complete request for this long is closed.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("metrics-listen {addr}: cannot listen: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Who may scrape: loopback, the networks the closure names (the mesh's), and the
/// configured ones.
#[derive(Clone)]
pub struct Allowed {
    pub mesh: Arc<dyn Fn() -> Vec<IpNet> + Send + Sync>,
    pub extra: Vec<IpNet>,
}

impl Allowed {
    fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_loopback()
            || self.extra.iter().any(|n| n.contains(&ip))
            || (self.mesh)().iter().any(|n| n.contains(&ip))
    }
}

/// Binds `addr` and serves until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    sources: Sources,
    allowed: Allowed,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    info!(addr = %bound, "metrics on http://{bound}/metrics");
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let refusals = Arc::new(Semaphore::new(MAX_CLIENTS));
    let task = tokio::spawn(
        async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "metrics: accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Refused before they take a slot (a TCP peer's address is real), so
                // strangers holding connections cannot keep scrapers out.
                if !allowed.admits(peer.ip()) {
                    if let Ok(p) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(refuse(stream, p));
                    }
                    continue;
                }
                let Ok(permit) = clients.clone().try_acquire_owned() else {
                    continue;
                };
                let (sources, allowed) = (sources.clone(), allowed.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let svc = hyper::service::service_fn(move |req| {
                        let (sources, allowed) = (sources.clone(), allowed.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(req, peer, sources, allowed).await,
                            )
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "metrics: connection");
                    }
                });
            }
        }
        .in_current_span(),
    );
    Ok((bound, task))
}

/// A 403 for a stranger: its request head read (briefly, boundedly), the answer sent,
/// the connection closed.
async fn refuse(mut s: tokio::net::TcpStream, _permit: tokio::sync::OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    let reply = format!(
        "HTTP/1.1 403 Forbidden\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{FORBIDDEN}",
        FORBIDDEN.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(reply.as_bytes())).await;
    let _ = s.shutdown().await;
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    sources: Sources,
    allowed: Allowed,
) -> Response<String> {
    let reply = |code: StatusCode, text: String| {
        let mut r = Response::new(text);
        *r.status_mut() = code;
        r
    };
    if !allowed.admits(peer.ip()) {
        return reply(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not scrape this node (see --metrics-allow)\n",
                peer.ip()
            ),
        );
    }
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "metrics are at GET /metrics\n".into(),
        );
    }
    let openmetrics = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    // The interface is read through a blocking call (the userspace device's socket).
    let encoded = tokio::task::spawn_blocking(move || {
        let r = registry(sources);
        let mut out = String::new();
        let done = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &r)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &r)
        };
        done.map(|()| out)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => {
            let mut r = reply(StatusCode::OK, text);
            let ct = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ct),
            );
            r
        }
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n".into(),
        ),
    }
}
