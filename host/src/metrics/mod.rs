//! Prometheus metrics: the families every module counts into (one process-wide set,
//! as Prometheus client libraries keep a default registry), the figures read at scrape
//! time from Raft and the WireGuard interface (never kept twice), and the HTTP endpoint
//! (`server`). `grpc` is the tower layer that counts API calls.
//!
//! This module imports nothing else of the node: what it reads at scrape time comes
//! in as closures from `node`, which wires it up.

pub mod grpc;
pub mod server;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use webmesh_api::v1::InterfaceMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub service: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    pub service: String,
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginName {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RcodeLabel {
    pub rcode: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 100 µs to ~100 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Counts from 1 to 4096.
fn counts() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Every family the node counts into.
pub struct Metrics {
    pub grpc_started: Family<GrpcLabels, Counter>,
    pub grpc_handled: Family<GrpcCodeLabels, Counter>,
    pub grpc_seconds: HistogramFamily<GrpcLabels>,
    pub raft_leader_changes: Counter,
    pub raft_commit_seconds: Histogram,
    pub raft_batch_proposals: Histogram,
    pub plugin_calls: Family<PluginLabels, Counter>,
    pub plugin_errors: Family<PluginLabels, Counter>,
    pub plugin_seconds: HistogramFamily<PluginLabels>,
    pub plugin_restarts: Family<PluginName, Counter>,
    pub join_seconds: Histogram,
    /// By response code, indexed by the 4-bit RCODE (counted without a lock).
    pub dns_answers: [Counter; 16],
    pub dns_forwarded: Counter,
    pub dns_cache_hits: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_seconds: Family::new_with_constructor(seconds),
            raft_leader_changes: Counter::default(),
            raft_commit_seconds: seconds(),
            raft_batch_proposals: counts(),
            plugin_calls: Family::default(),
            plugin_errors: Family::default(),
            plugin_seconds: Family::new_with_constructor(seconds),
            plugin_restarts: Family::default(),
            join_seconds: seconds(),
            dns_answers: Default::default(),
            dns_forwarded: Counter::default(),
            dns_cache_hits: Counter::default(),
        }
    }

    /// A plugin call's outcome and duration.
    pub fn plugin_call(&self, plugin: &str, call: &str, took: Duration, ok: bool) {
        let l = PluginLabels {
            plugin: plugin.to_string(),
            call: call.to_string(),
        };
        self.plugin_calls.get_or_create(&l).inc();
        if !ok {
            self.plugin_errors.get_or_create(&l).inc();
        }
        self.plugin_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    /// A DNS answer on its way out: counted by its RCODE.
    pub fn dns_answer(&self, reply: &[u8]) {
        if let Some(b) = reply.get(3) {
            self.dns_answers[usize::from(b & 0x0f)].inc();
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Raft's figures, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct RaftFigures {
    pub term: u64,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    pub leader: bool,
    pub voters: u64,
    pub learners: u64,
}

/// The node ID owning a WireGuard public key.
pub type Owner = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The TURN server's figures (`--turn-server`), read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct TurnFigures {
    pub allocations: u64,
    pub relayed_packets: u64,
    pub relayed_bytes: u64,
    pub dropped_packets: u64,
    pub refused_auth: u64,
}

/// What a scrape reads from the rest of the node.
#[derive(Clone)]
pub struct Sources {
    pub raft: Arc<dyn Fn() -> RaftFigures + Send + Sync>,
    pub interface: Arc<dyn Fn() -> Option<InterfaceMetrics> + Send + Sync>,
    /// The node ID owning a WireGuard public key.
    pub owner: Arc<Owner>,
    /// The TURN server, when the node runs one.
    pub turn: Option<Arc<dyn Fn() -> TurnFigures + Send + Sync>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

const DNS_RCODES: [&str; 16] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
];

/// The registry a scrape encodes: the families above and the scrape-time figures.
pub fn registry(sources: Sources) -> Registry {
    let m = get();
    let mut r = Registry::with_prefix("webmesh");
    r.register(
        "grpc_server_started",
        "API calls started, by service and method",
        m.grpc_started.clone(),
    );
    r.register(
        "grpc_server_handled",
        "API calls finished, by service, method and gRPC status code",
        m.grpc_handled.clone(),
    );
    r.register_with_unit(
        "grpc_server_handling",
        "API call duration, from the request to the end of the response",
        Unit::Seconds,
        m.grpc_seconds.clone(),
    );
    r.register(
        "raft_leader_changes",
        "times this node saw the Raft leader change",
        m.raft_leader_changes.clone(),
    );
    r.register_with_unit(
        "raft_commit",
        "from a proposal on the leader to its commit by a majority",
        Unit::Seconds,
        m.raft_commit_seconds.clone(),
    );
    r.register(
        "raft_batch_proposals",
        "proposals carried by one Raft log entry (group commit)",
        m.raft_batch_proposals.clone(),
    );
    r.register(
        "plugin_calls",
        "plugin calls, by plugin and call",
        m.plugin_calls.clone(),
    );
    r.register(
        "plugin_call_errors",
        "plugin calls that failed, by plugin and call",
        m.plugin_errors.clone(),
    );
    r.register_with_unit(
        "plugin_call",
        "plugin call duration, by plugin and call",
        Unit::Seconds,
        m.plugin_seconds.clone(),
    );
    r.register(
        "plugin_restarts",
        "times a process plugin was restarted after it exited",
        m.plugin_restarts.clone(),
    );
    r.register_with_unit(
        "join",
        "Join calls handled on the leader, from request to answer",
        Unit::Seconds,
        m.join_seconds.clone(),
    );
    r.register(
        "dns_forwarded",
        "mesh DNS queries for other names sent to the forwarders",
        m.dns_forwarded.clone(),
    );
    r.register(
        "dns_cache_hits",
        "mesh DNS queries for other names answered from the cache",
        m.dns_cache_hits.clone(),
    );
    r.register_collector(Box::new(Scraped { sources }));
    r
}

/// Figures read when scraped: DNS answers by code, Raft, the interface and its peers.
#[derive(Debug)]
struct Scraped {
    sources: Sources,
}

fn gauge<N: Into<i64>>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v.into());
    let enc = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(enc)
}

impl prometheus_client::collector::Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = get();
        {
            let c = ConstCounter::new(0u64);
            let mut fam = e.encode_descriptor(
                "dns_queries",
                "mesh DNS answers sent, by response code",
                None,
                c.metric_type(),
            )?;
            for (i, code) in DNS_RCODES.iter().enumerate() {
                let n = m.dns_answers[i].get();
                if n == 0 && i != 0 {
                    continue;
                }
                let l = RcodeLabel {
                    rcode: code.to_string(),
                };
                ConstCounter::new(n).encode(fam.encode_family(&l)?)?;
            }
        }
        let r = (self.sources.raft)();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(&mut e, "raft_term", "the current Raft term", clamp(r.term))?;
        gauge(
            &mut e,
            "raft_last_log_index",
            "the last index in this node's Raft log",
            clamp(r.last_log_index),
        )?;
        gauge(
            &mut e,
            "raft_commit_index",
            "the highest Raft index this node knows committed",
            clamp(r.committed),
        )?;
        gauge(
            &mut e,
            "raft_applied_index",
            "the highest Raft index applied to this node's state",
            clamp(r.applied),
        )?;
        gauge(
            &mut e,
            "raft_leader",
            "1 if this node is the Raft leader",
            i64::from(r.leader),
        )?;
        gauge(
            &mut e,
            "raft_voters",
            "voters in the Raft configuration",
            clamp(r.voters),
        )?;
        gauge(
            &mut e,
            "raft_learners",
            "learners (non-voters) in the Raft configuration",
            clamp(r.learners),
        )?;
        if let Some(turn) = &self.sources.turn {
            let t = turn();
            gauge(
                &mut e,
                "turn_allocations",
                "TURN allocations held",
                clamp(t.allocations),
            )?;
            for (name, help, v) in [
                (
                    "turn_relayed_packets",
                    "datagrams the TURN server relayed",
                    t.relayed_packets,
                ),
                (
                    "turn_relayed_bytes",
                    "bytes the TURN server relayed",
                    t.relayed_bytes,
                ),
                (
                    "turn_dropped_packets",
                    "datagrams the TURN server dropped over a rate limit",
                    t.dropped_packets,
                ),
                (
                    "turn_refused_auth",
                    "TURN requests refused for bad or expired credentials",
                    t.refused_auth,
                ),
            ] {
                let c = ConstCounter::new(v);
                let enc = e.encode_descriptor(name, help, None, c.metric_type())?;
                c.encode(enc)?;
            }
        }
        if let Some(iface) = (self.sources.interface)() {
            wireguard(&mut e, &iface, &*self.sources.owner)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    public_key: String,
    path: String,
}

/// Per-peer figures of the interface. `path`: `direct` when this node sends to the
/// peer's endpoint itself, `inbound` when only the peer knows the way (it is behind a
/// NAT and reaches us). Nodes that are not peers are reached through one (mesh relay):
/// `webmesh_wireguard_relayed_nodes` counts them.
fn wireguard(
    e: &mut DescriptorEncoder,
    iface: &InterfaceMetrics,
    owner: &Owner,
) -> Result<(), std::fmt::Error> {
    let now = std::time::SystemTime::now();
    let labels = |p: &webmesh_api::v1::PeerMetrics| PeerLabels {
        peer: owner(&p.public_key).unwrap_or_default(),
        public_key: p.public_key.clone(),
        path: if p.endpoint.is_empty() {
            "inbound"
        } else {
            "direct"
        }
        .to_string(),
    };
    for (name, help, get) in [
        (
            "wireguard_peer_receive_bytes",
            "bytes received from the peer",
            (|p: &webmesh_api::v1::PeerMetrics| p.receive_bytes)
                as fn(&webmesh_api::v1::PeerMetrics) -> u64,
        ),
        (
            "wireguard_peer_transmit_bytes",
            "bytes sent to the peer",
            |p| p.transmit_bytes,
        ),
    ] {
        let c = ConstCounter::new(0u64);
        let mut fam = e.encode_descriptor(name, help, None, c.metric_type())?;
        for p in &iface.peers {
            ConstCounter::new(get(p)).encode(fam.encode_family(&labels(p))?)?;
        }
    }
    {
        let g = ConstGauge::new(0i64);
        let mut fam = e.encode_descriptor(
            "wireguard_peer_last_handshake_age_seconds",
            "seconds since the last handshake with the peer (-1: none yet)",
            None,
            g.metric_type(),
        )?;
        for p in &iface.peers {
            let age = age_secs(&p.last_handshake_time, now).unwrap_or(-1);
            ConstGauge::new(age).encode(fam.encode_family(&labels(p))?)?;
        }
    }
    gauge(
        e,
        "wireguard_peers",
        "WireGuard peers of the interface",
        i64::from(iface.num_peers),
    )?;
    Ok(())
}

/// Seconds from an RFC 3339 time (as the interface reports handshakes; read as the
/// proto3 JSON form of a Timestamp) to `now`.
fn age_secs(t: &str, now: std::time::SystemTime) -> Option<i64> {
    let ts: webmesh_api::wkt::Timestamp =
        serde_json::from_value(serde_json::Value::String(t.to_string())).ok()?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some((i64::try_from(now).ok()? - ts.seconds).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_ages_count_from_rfc3339() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_764_658_800 + 42);
        assert_eq!(age_secs("2025-12-02T07:00:00Z", t), Some(42));
        assert_eq!(age_secs("", t), None);
        assert_eq!(age_secs("garbage", t), None);
    }
}
