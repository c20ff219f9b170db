//! Listeners and servers: the Raft transport on the mesh addresses, the public gRPC
//! API (layers, services, reflection) on the listen address.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::NodeError;

pub(super) fn listen_err(
    addr: SocketAddr,
    what: &'static str,
) -> impl Fn(std::io::Error) -> NodeError {
    move |e| NodeError::Listen {
        addr,
        what,
        reason: e.to_string(),
    }
}

/// Binds every address and merges the connections.
pub(super) async fn bind_all(
    addrs: &[SocketAddr],
    what: &'static str,
) -> Result<(Vec<SocketAddr>, Incoming), NodeError> {
    let mut bound = Vec::new();
    let mut streams: Vec<TcpListenerStream> = Vec::new();
    for a in addrs {
        // A fresh IPv6 address may still be tentative for a moment.
        let mut tries = 0;
        let l = loop {
            match TcpListener::bind(a).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other.map_err(listen_err(*a, what))?,
            }
        };
        bound.push(l.local_addr().map_err(listen_err(*a, what))?);
        streams.push(TcpListenerStream::new(l));
    }
    // tonic's `tcp_nodelay` applies only to sockets it binds itself: without it, small
    // gRPC replies wait on Nagle's algorithm for the peer's delayed ACK (~40 ms).
    let incoming = futures::stream::StreamExt::map(futures::stream::select_all(streams), |conn| {
        conn.inspect(|c| {
            let _ = c.set_nodelay(true);
            thin_linear_timeouts(c);
        })
    });
    Ok((bound, Box::pin(incoming)))
}

/// A lost segment of a thin stream (few segments in flight: a log stream's entries,
/// an answer) is retransmitted at a steady timeout instead of doubling it each time
/// (Linux's thin-stream mode, for its first six retransmissions): a mesh on a busy
/// host loses a datagram now and then, and the exponential back-off turned one unlucky
/// segment of the leader's log stream into seconds of a member's silence. Bulk
/// transfers keep the usual back-off.
fn thin_linear_timeouts(c: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(c).set_tcp_thin_linear_timeouts(true) {
        tracing::debug!(error = %e, "thin-stream timeouts not set");
    }
}

pub(super) type Incoming =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>>;

/// An address peers can dial: a wildcard listen address becomes loopback.
pub(super) fn advertise(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Spawns `fut` until `stop` turns true, logging how it ended.
fn spawn_server<F>(what: &'static str, fut: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(
        async move {
            if let Err(e) = fut.await {
                tracing::warn!(error = %e, "{what} stopped");
            }
        }
        .in_current_span(),
    )
}

/// The Raft transport on `listen`; returns the first bound address.
pub(super) async fn serve_raft(
    listen: &[SocketAddr],
    raft: &crate::raft::RaftNode,
    trust: std::sync::Arc<crate::trust::Trust>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<SocketAddr, NodeError> {
    let (bound, incoming) = bind_all(listen, "raft").await?;
    let server = crate::raft::server::RaftServer::new(raft, trust);
    let slot = server.slot();
    let mut stopping = stop.clone();
    tasks.push(tokio::spawn(async move {
        let _ = stopping.wait_for(|s| *s).await;
        slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    }));
    let svc = webmesh_api::internal::raft_transport_server::RaftTransportServer::new(server)
        .max_decoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES);
    // The leader cancels appends that outlive their deadline (a busy follower); each is
    // a stream reset on the shared HTTP/2 connection, and hyper's default of 20 pending
    // resets would drop the whole connection. Bounded all the same (rapid reset): the
    // port faces only the mesh, and every message must carry a voter's proof.
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_max_pending_accept_reset_streams(Some(1_000))
        .http2_max_local_error_reset_streams(Some(1_000))
        .max_concurrent_streams(Some(256))
        .http2_max_header_list_size(Some(16 * 1024))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tasks.push(spawn_server("raft transport", server));
    Ok(bound[0])
}

/// What the public API serves with.
pub(super) struct Api<'a> {
    pub cfg: &'a crate::config::Config,
    pub raft: &'a crate::raft::RaftNode,
    pub plugins: &'a crate::plugins::Plugins,
    pub iface: Option<std::sync::Arc<crate::net::wireguard::Interface>>,
    pub trust: std::sync::Arc<crate::trust::Trust>,
    /// This node's TURN server, whose credentials members ask for here.
    pub turn: Option<crate::turn::Issuer>,
    /// This node's ICE (`--ice`), which answers NegotiateDataChannel.
    pub ice: Option<std::sync::Arc<crate::ice::node::IceHub>>,
    /// The campfire this node hosts, for the gRPC `Campfire` service.
    pub campfire: Option<tokio::sync::mpsc::Sender<crate::turn::GrpcCampfire>>,
}

/// Requests in flight on one connection at most.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest header block a caller may send (credentials and proofs fit easily).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Longest any unary call may take on the server (joins wait for Raft at most this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The services of the API port, as reflection lists them.
const SERVED: &[&str] = &[
    webmesh_api::v1::node_server::SERVICE_NAME,
    webmesh_api::v1::mesh_server::SERVICE_NAME,
    webmesh_api::v1::admin_server::SERVICE_NAME,
    webmesh_api::v1::peer_discovery_server::SERVICE_NAME,
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The public gRPC API on the listen address (with TLS if configured) and on the admin
/// socket: layers (identity, then the leader proxy) around the Node, Admin, Mesh and
/// PeerDiscovery services and server reflection.
pub(super) async fn serve_api(
    api: Api<'_>,
    incoming: Incoming,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, NodeError> {
    use std::sync::Arc;
    use std::time::{Instant, SystemTime};

    use tracing::{info, warn};

    use crate::services;

    let Api {
        cfg,
        raft,
        plugins,
        iface,
        trust,
        turn,
        ice,
        campfire,
    } = api;
    let info = Arc::new(services::node::NodeInfo {
        started_at: SystemTime::now(),
        started: Instant::now(),
        features: super::client::features(cfg),
        endpoints: [
            cfg.metrics_listen
                .map(|a| format!("metrics=http://{a}/metrics")),
            cfg.meshdns_listen.map(|a| format!("mesh-dns={a}")),
            turn.as_ref()
                .and_then(|t| t.urls.first())
                .map(|u| format!("turn={u}")),
            cfg.app_daemon_listen
                .as_ref()
                .map(|l| format!("app-daemon={l}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(","),
    });
    // Calls to other members (the leader, above all): one channel per member.
    let channels = Arc::new(services::Channels::new(
        crate::tls::Dialer::for_members(&cfg.tls()).map_err(NodeError::Usage)?,
    ));
    let max = cfg.max_request_bytes;
    let node_svc = services::node::NodeService::new(
        raft.clone(),
        info,
        Arc::new(move || iface.as_ref().and_then(|i| i.metrics().ok())),
    )
    .underlay(cfg.no_wireguard)
    .ipam(plugins.ipam())
    .admission(services::membership::Admission {
        max_pending: cfg.max_pending_joins,
        timeout: std::time::Duration::from_secs(cfg.join_timeout),
    })
    .channels(channels.clone())
    .ice(ice.clone());
    // WebRTC data channels run where ICE does; clients get this node's STUN server.
    let webrtc_svc = ice.map(|hub| services::webrtc::WebRtcService {
        raft: raft.clone(),
        hub,
        stun: turn
            .as_ref()
            .map(|t| {
                t.urls
                    .iter()
                    .filter_map(|u| u.strip_prefix("turn:"))
                    .map(|u| format!("stun:{}", u.split('?').next().unwrap_or(u)))
                    .collect()
            })
            .unwrap_or_default(),
    });
    let webrtc_svc = webrtc_svc.map(Arc::new);
    let admin_svc = services::admin::AdminService::new(raft.clone());
    let mesh_svc = services::mesh::MeshService::new(raft.clone());
    let discovery_svc = services::mesh::DiscoveryService::new(raft.clone());
    let identity = services::identity::IdentityLayer::new(
        plugins.auth(),
        trust.clone(),
        raft.clone(),
        max,
        cfg.join_rate,
    );
    let proxy = services::forwarding::LeaderProxyLayer::new(raft.clone(), channels, trust, max);
    let metrics = crate::metrics::grpc::GrpcMetricsLayer::new(webmesh_api::FILE_DESCRIPTOR_SET);
    // One router per listener, over the same services.
    let router = |server: tonic::transport::Server| -> Result<_, NodeError> {
        // Reflection names exactly what this port serves, not every service of the
        // API's files (AppDaemon, WebRTC, Campfire, the plugin services live elsewhere).
        let served: Vec<&str> = SERVED
            .iter()
            .copied()
            .chain(
                webrtc_svc
                    .is_some()
                    .then_some(webmesh_api::v1::web_rtc_server::SERVICE_NAME),
            )
            .chain(
                campfire
                    .is_some()
                    .then_some(webmesh_api::v1::campfire_server::SERVICE_NAME),
            )
            .collect();
        let reflection_of = || {
            served.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(webmesh_api::FILE_DESCRIPTOR_SET),
                |b, name| b.with_service_name(*name),
            )
        };
        let reflection = reflection_of()
            .build_v1()
            .map_err(|e| NodeError::Bootstrap(format!("reflection: {e}")))?;
        let reflection_alpha = reflection_of()
            .build_v1alpha()
            .map_err(|e| NodeError::Bootstrap(format!("reflection: {e}")))?;
        Ok(server
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
            .http2_max_pending_accept_reset_streams(Some(20))
            .http2_max_local_error_reset_streams(Some(1024))
            .timeout(REQUEST_TIMEOUT)
            .layer(metrics.clone())
            .layer(identity.clone())
            .layer(proxy.clone())
            .add_service(
                webmesh_api::v1::node_server::NodeServer::new(node_svc.clone())
                    .max_decoding_message_size(max),
            )
            .add_service(
                webmesh_api::v1::admin_server::AdminServer::new(admin_svc.clone())
                    .max_decoding_message_size(max),
            )
            .add_service(
                webmesh_api::v1::mesh_server::MeshServer::new(mesh_svc.clone())
                    .max_decoding_message_size(max),
            )
            .add_service(
                webmesh_api::v1::peer_discovery_server::PeerDiscoveryServer::new(
                    discovery_svc.clone(),
                )
                .max_decoding_message_size(max),
            )
            .add_optional_service(turn.clone().map(|i| {
                webmesh_api::internal::turn_server::TurnServer::new(services::turn::TurnService(i))
            }))
            .add_optional_service(webrtc_svc.clone().map(|w| {
                webmesh_api::v1::web_rtc_server::WebRtcServer::from_arc(w)
                    .max_decoding_message_size(max)
            }))
            .add_optional_service(campfire.clone().map(|c| {
                webmesh_api::v1::campfire_server::CampfireServer::new(
                    services::campfire::CampfireService(c),
                )
                .max_decoding_message_size(max)
            }))
            .add_service(reflection)
            .add_service(reflection_alpha))
    };
    let mut server = tonic::transport::Server::builder();
    match crate::tls::server_config(&cfg.tls()).map_err(NodeError::Usage)? {
        Some(tls) => {
            server = server
                .tls_config(tls)
                .map_err(|e| NodeError::Usage(format!("invalid tls-cert: {e}")))?;
            info!(client_ca = cfg.tls_client_ca.is_some(), "API speaks TLS");
        }
        None if plugins.auth().is_some() => warn!(
            "the API is plaintext: credentials sent to the AUTH plugin travel in clear; \
             set --tls-cert and --tls-key"
        ),
        None => {}
    }
    let mut tasks = Vec::new();
    let mut rx = stop.clone();
    let tcp = router(server)?.serve_with_incoming_shutdown(incoming, async move {
        let _ = rx.wait_for(|s| *s).await;
    });
    tasks.push(spawn_server("gRPC API", tcp));
    if let Some(path) = &cfg.admin_socket {
        let sock = super::admin_socket::bind(path, &cfg.admin_group)?;
        info!(socket = %path.display(), group = %cfg.admin_group, "admin socket");
        let mut rx = stop;
        let unix = router(tonic::transport::Server::builder())?.serve_with_incoming_shutdown(
            sock.incoming(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        );
        tasks.push(spawn_server("admin socket", unix));
    }
    Ok(tasks)
}

/// Prometheus metrics on `--metrics-listen`, read at scrape time from Raft and the
/// interface; scrapers: loopback, the mesh, `--metrics-allow`.
pub(super) async fn serve_metrics(
    cfg: &crate::config::Config,
    raft: &crate::raft::RaftNode,
    iface: Option<std::sync::Arc<crate::net::wireguard::Interface>>,
    turn: Option<&crate::turn::Turn>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), NodeError> {
    use std::sync::Arc;

    use crate::metrics::{Sources, server};
    let Some(listen) = cfg.metrics_listen else {
        return Ok(());
    };
    let r = raft.clone();
    let members = raft.state_machine.members();
    let sources = Sources {
        raft: Arc::new(move || r.figures()),
        interface: Arc::new(move || iface.as_ref().and_then(|i| i.metrics().ok())),
        owner: Arc::new(move |key| {
            let m = members.read().ok()?;
            m.owner_of(key).map(str::to_string)
        }),
        turn: turn.map(|t| {
            let stats = t.stats.clone();
            Arc::new(move || {
                let s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
                crate::metrics::TurnFigures {
                    allocations: s.allocations as u64,
                    relayed_packets: s.relayed_packets,
                    relayed_bytes: s.relayed_bytes,
                    dropped_packets: s.dropped_packets,
                    refused_auth: s.refused_auth,
                }
            }) as Arc<dyn Fn() -> crate::metrics::TurnFigures + Send + Sync>
        }),
    };
    let engine = raft.engine.clone();
    let allowed = server::Allowed {
        mesh: Arc::new(move || {
            [crate::mesh::keys::MESH_IPV4, crate::mesh::keys::MESH_IPV6]
                .iter()
                .filter_map(|k| engine.get(k).ok().flatten()?.value.parse().ok())
                .collect()
        }),
        extra: cfg.metrics_allow.clone(),
    };
    let (_, task) =
        server::serve(listen, sources, allowed)
            .await
            .map_err(|e| NodeError::Listen {
                addr: e.addr,
                what: "metrics-listen",
                reason: e.source.to_string(),
            })?;
    tasks.push(task);
    tasks.push(raft.spawn_leader_watch());
    Ok(())
}
