//! `v1.Node`: status, raw log application and snapshots of a node.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use openraft::ServerState;
use tonic::{Request, Response, Status, Streaming};
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::node_server::Node;
use webmesh_api::v1::{
    ClusterStatus, DataChannelNegotiation, Feature, GetStatusRequest, InterfaceMetrics,
    JoinRequest, JoinResponse, LeaveRequest, RaftApplyResponse, RaftCommandType, RaftLogEntry,
    SnapshotRequest, SnapshotResponse, Status as NodeStatus, UpdateRequest, UpdateResponse,
};

use super::authorization::{self, NodeFacts, NodeOp, NodeWrite, Read, may_read, node_write};
use super::identity::{Caller, Identity};
use super::membership::{self as membership_svc, field_status};
use super::{Channels, internal, propose_status};
use crate::mesh::{ids, keys, membership};
use crate::raft::RaftNode;
use crate::store::ops::Op;
use crate::version;

/// What the Node service knows about the node it runs on.
pub struct NodeInfo {
    pub started_at: SystemTime,
    pub started: Instant,
    pub features: Vec<Feature>,
    /// The node's other services and where they listen (`metrics=[::]:8080`, ...), for
    /// operators: v1's Status has no field for them, so they travel in the
    /// `x-webmesh-endpoints` header of a local GetStatus.
    pub endpoints: String,
}

/// The response header naming the node's other endpoints.
pub const ENDPOINTS_HEADER: &str = "x-webmesh-endpoints";
/// The response header saying how each ICE peer is reached: `id=direct:ADDR`,
/// `id=relayed:ADDR` (through a TURN relay) or `id=mesh-relay` (no ICE path: through
/// the mesh), comma-separated.
pub const PATHS_HEADER: &str = "x-webmesh-ice-paths";

#[derive(Clone)]
pub struct NodeService {
    raft: RaftNode,
    info: Arc<NodeInfo>,
    /// WireGuard metrics, once the interface is up (a blocking call).
    metrics: Arc<dyn Fn() -> Option<InterfaceMetrics> + Send + Sync>,
    channels: Arc<Channels>,
    /// The mesh runs without WireGuard: members are reached on their primary endpoints.
    underlay: bool,
    ipam: crate::plugins::Ipam,
    admission: membership_svc::Admission,
    /// The node's ICE, when it negotiates ICE paths (`--ice`).
    ice: Option<Arc<crate::ice::node::IceHub>>,
}

impl NodeService {
    pub fn new(
        raft: RaftNode,
        info: Arc<NodeInfo>,
        metrics: Arc<dyn Fn() -> Option<InterfaceMetrics> + Send + Sync>,
    ) -> NodeService {
        NodeService {
            raft,
            info,
            metrics,
            channels: Default::default(),
            underlay: false,
            ipam: Default::default(),
            admission: Default::default(),
            ice: None,
        }
    }

    /// Negotiates ICE paths with this hub.
    pub fn ice(mut self, ice: Option<Arc<crate::ice::node::IceHub>>) -> Self {
        self.ice = ice;
        self
    }

    /// How to reach other members (shared with the leader proxy: one connection each).
    pub fn channels(mut self, channels: Arc<Channels>) -> Self {
        self.channels = channels;
        self
    }

    /// Addresses come from these IPAM plugins when this node leads.
    pub fn ipam(mut self, ipam: crate::plugins::Ipam) -> Self {
        self.ipam = ipam;
        self
    }

    /// How many joined-but-unreached nodes this leader takes, and for how long.
    pub fn admission(mut self, admission: membership_svc::Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Members are reached on their primary endpoints (meshes run without WireGuard).
    pub fn underlay(mut self, underlay: bool) -> Self {
        self.underlay = underlay;
        self
    }

    /// What the state says about node `id` and the key `key` would register.
    fn facts(&self, id: &str, key: Option<&str>) -> (Option<String>, Option<String>) {
        let m = self.raft.state_machine.members();
        let m = m.read().unwrap_or_else(|p| p.into_inner());
        (
            m.key_of(id).map(str::to_string),
            key.and_then(|k| m.owner_of(k)).map(str::to_string),
        )
    }

    /// Whether `caller` may write node `w.id`, and as whom.
    fn authorize_node(
        &self,
        identity: &Identity,
        w: &NodeWrite<'_>,
    ) -> Result<crate::mesh::rbac::Principal, Status> {
        let (registered, owner) = self.facts(w.id, w.key);
        let facts = NodeFacts {
            registered: registered.as_deref(),
            key_owner: owner.as_deref(),
        };
        node_write(
            authorization::policy(&self.raft)?.as_deref(),
            identity,
            w,
            &facts,
        )
    }

    /// A raw write passes the typed path's checks: the same validation, and the same
    /// rights (every right on a node for its record; the object's put or delete, and
    /// no escalation, for an Admin object).
    fn authorize_raw(&self, caller: &Caller, op: &Op) -> Result<(), Status> {
        use crate::mesh::rbac::Action;
        use crate::mesh::writes::{Target, check_raw};
        use webmesh_api::v1::{RuleResource, RuleVerb};
        let (key, value) = match op {
            Op::Put { key, value, .. } => (key.as_str(), Some(value.as_str())),
            Op::Delete { key } => (key.as_str(), None),
            _ => return Err(Status::invalid_argument("type: use PUT (1) or DELETE (2)")),
        };
        let view = crate::store::views::load_view(&self.raft.engine);
        let target =
            check_raw(key, value, &view).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let verb = if value.is_some() {
            RuleVerb::VerbPut
        } else {
            RuleVerb::VerbDelete
        };
        let policy = authorization::policy(&self.raft)?;
        let who = caller.principal();
        match target {
            Target::Data => Ok(()),
            Target::Node(id) => authorization::authorize(
                &self.raft,
                &who,
                caller,
                &[Action::new(
                    RuleResource::ResourceAll,
                    id,
                    RuleVerb::VerbAll,
                )],
            ),
            Target::Object(kind, name) => {
                match value {
                    Some(_) => crate::mesh::admin::protect_put(
                        kind,
                        &name,
                        value.and_then(|v| serde_json::from_str(v).ok()).as_ref(),
                        value.and_then(|v| serde_json::from_str(v).ok()).as_ref(),
                    ),
                    None => crate::mesh::admin::protect_delete(kind, &name),
                }
                .map_err(Status::failed_precondition)?;
                authorization::authorize(
                    &self.raft,
                    &who,
                    caller,
                    &[Action::new(kind.resource(), name, verb)],
                )?;
                let granting = value.and_then(|v| match kind {
                    crate::mesh::admin::Kind::Role => {
                        serde_json::from_str(v).ok().map(authorization::Grant::Role)
                    }
                    crate::mesh::admin::Kind::RoleBinding => serde_json::from_str(v)
                        .ok()
                        .map(authorization::Grant::Binding),
                    crate::mesh::admin::Kind::Group => serde_json::from_str(v)
                        .ok()
                        .map(authorization::Grant::Group),
                    _ => None,
                });
                match granting {
                    Some(g) => authorization::may_grant(policy.as_deref(), caller, g.as_ref()),
                    None => Ok(()),
                }
            }
        }
    }

    /// The voters' raft addresses, the leader first, for a joiner that follows the log
    /// by stream.
    fn voter_addrs(&self) -> String {
        let m = self.raft.metrics();
        let membership = m.membership_config.membership();
        let mut ids: Vec<_> = membership.voter_ids().collect();
        ids.sort_by_key(|id| Some(*id) != m.current_leader);
        ids.iter()
            .filter_map(|v| membership.get_node(v))
            .map(|n| format!("{}={}", n.name, n.raft_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The voters and their keys, for a joiner to check its first Raft messages by.
    fn voter_keys(&self) -> String {
        let m = self.raft.metrics();
        let membership = m.membership_config.membership();
        let members = self.raft.state_machine.members();
        let keys = members.read().unwrap_or_else(|p| p.into_inner());
        membership
            .voter_ids()
            .filter_map(|v| membership.get_node(&v))
            .filter_map(|n| Some(format!("{}={}", n.name, keys.key_of(&n.name)?)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn local_status(&self) -> NodeStatus {
        let m = self.raft.metrics();
        let cluster_status = match m.state {
            ServerState::Leader => ClusterStatus::ClusterLeader,
            _ if self.raft.is_voter(&self.raft.name) => ClusterStatus::ClusterVoter,
            _ if m
                .membership_config
                .membership()
                .get_node(&self.raft.id)
                .is_some() =>
            {
                ClusterStatus::ClusterNonVoter
            }
            _ if self.raft.follows_by_stream() => ClusterStatus::ClusterNonVoter,
            _ => ClusterStatus::Unknown,
        };
        let started = self
            .info
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        NodeStatus {
            id: self.raft.name.clone(),
            version: version::VERSION.into(),
            commit: version::COMMIT.into(),
            build_date: version::BUILD_DATE.into(),
            uptime: format_duration(self.info.started.elapsed()),
            started_at: Some(webmesh_api::wkt::Timestamp {
                seconds: started.as_secs() as i64,
                nanos: started.subsec_nanos() as i32,
            }),
            features: self.info.features.iter().map(|f| *f as i32).collect(),
            cluster_status: cluster_status as i32,
            current_leader: self.raft.leader().map(|l| l.name).unwrap_or_default(),
            current_term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            interface_metrics: None,
        }
    }

    /// Asks another member for its own status.
    async fn remote_status(&self, id: &str) -> Result<NodeStatus, Status> {
        // Raft members by their membership record; members that follow the log by
        // stream by their node record.
        let member = match self.raft.member(ids::raft_id(id)).filter(|m| m.name == id) {
            Some(m) => m,
            None => {
                let record = self
                    .raft
                    .engine
                    .get(&keys::node(id))
                    .map_err(|e| Status::internal(e.to_string()))?
                    .and_then(|e| serde_json::from_str::<webmesh_api::v1::MeshNode>(&e.value).ok())
                    .ok_or_else(|| {
                        Status::not_found(format!("id: no node {id:?} is a member of this mesh"))
                    })?;
                match self.underlay {
                    true => membership_svc::underlay_member(&record),
                    false => Some(membership_svc::member_for(&record, false)),
                }
                .ok_or_else(|| {
                    Status::failed_precondition(format!("id: node {id:?} has no address to reach"))
                })?
            }
        };
        let mut req = Request::new(GetStatusRequest { id: id.to_string() });
        req.set_timeout(Duration::from_secs(5));
        let status = NodeClient::new(self.channels.get(&member.grpc_addr)?)
            .get_status(req)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "node {id} at {} did not answer: {}",
                    member.grpc_addr,
                    e.message()
                ))
            })?;
        Ok(status.into_inner())
    }
}

/// Go-style duration text ("1h2m3.456s"), as the reference reports uptime.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let s = format!("{}.{:03}s", rem / 1000, rem % 1000);
    let s = s.replace(".000s", "s");
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// Checks a `v1.RaftLogEntry` from the network; the error names the bad field.
pub fn validate_entry(e: &RaftLogEntry) -> Result<Op, Status> {
    let bad = |field: &str, why: String| Status::invalid_argument(format!("{field}: {why}"));
    let kind = RaftCommandType::try_from(e.r#type).map_err(|_| {
        bad(
            "type",
            format!(
                "unknown command type {}; use PUT (1) or DELETE (2)",
                e.r#type
            ),
        )
    })?;
    keys::validate_key(&e.key).map_err(|why| bad("key", why))?;
    match kind {
        RaftCommandType::Unknown => Err(bad("type", "must be PUT (1) or DELETE (2)".into())),
        RaftCommandType::Put => {
            keys::validate_value(&e.value).map_err(|why| bad("value", why))?;
            if let Some(ttl) = &e.ttl {
                if ttl.seconds < 0 || ttl.nanos < 0 || ttl.nanos >= 1_000_000_000 {
                    return Err(bad(
                        "ttl",
                        format!(
                            "must be a non-negative duration, got {}s {}ns",
                            ttl.seconds, ttl.nanos
                        ),
                    ));
                }
                if ttl.seconds > 10 * 365 * 24 * 3600 {
                    return Err(bad("ttl", "must be at most 10 years".into()));
                }
            }
            Ok(Op::from_entry(e).expect("PUT maps to an op"))
        }
        RaftCommandType::Delete => {
            if !e.value.is_empty() {
                return Err(bad("value", "DELETE takes no value".into()));
            }
            if e.ttl.is_some() {
                return Err(bad("ttl", "DELETE takes no TTL".into()));
            }
            Ok(Op::from_entry(e).expect("DELETE maps to an op"))
        }
    }
}

/// Response metadata of a join: the voters and their keys (`id=key,...`), so that the
/// joiner can check its first Raft messages before it holds the state.
pub const VOTERS_HEADER: &str = "x-webmesh-voters";
/// Response metadata of a join: the voters' raft addresses (`id=host:port,...`, the
/// leader first), where a joiner that follows the log by stream finds it.
pub const VOTER_ADDRS_HEADER: &str = "x-webmesh-voter-addrs";

type DataChannelStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<DataChannelNegotiation, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Node for NodeService {
    /// A join, on the leader (the leader proxy forwards joins arriving at a follower).
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        membership::validate_join(req.get_ref()).map_err(field_status)?;
        let identity = Identity::of(&req);
        let join = req.into_inner();
        self.authorize_node(
            &identity,
            &NodeWrite {
                op: NodeOp::Join,
                id: &join.id,
                key: Some(&join.public_key),
                as_voter: join.as_voter,
                routes: !join.routes.is_empty(),
                direct_peers: !join.direct_peers.is_empty(),
            },
        )?;
        // The member that forwarded the join (it proved itself) is the joiner's first
        // peer; else this node is.
        let handler = identity
            .forwarder
            .clone()
            .unwrap_or_else(|| self.raft.name.clone());
        let started = std::time::Instant::now();
        let resp = membership_svc::join(
            &self.raft,
            &join,
            &handler,
            self.underlay,
            &self.ipam,
            self.admission,
        )
        .await?;
        crate::metrics::get()
            .join_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut resp = Response::new(resp);
        if let Ok(v) = self.voter_keys().parse() {
            resp.metadata_mut().insert(VOTERS_HEADER, v);
        }
        if let Ok(v) = self.voter_addrs().parse() {
            resp.metadata_mut().insert(VOTER_ADDRS_HEADER, v);
        }
        Ok(resp)
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        membership::validate_update(req.get_ref()).map_err(field_status)?;
        let identity = Identity::of(&req);
        let update = req.into_inner();
        self.authorize_node(
            &identity,
            &NodeWrite {
                op: NodeOp::Update,
                id: &update.id,
                key: (!update.public_key.is_empty()).then_some(update.public_key.as_str()),
                as_voter: update.as_voter,
                routes: !update.routes.is_empty(),
                direct_peers: false,
            },
        )?;
        membership_svc::update(&self.raft, &update, self.underlay).await?;
        Ok(Response::new(UpdateResponse {}))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<()>, Status> {
        membership::validate_id(&req.get_ref().id).map_err(field_status)?;
        let identity = Identity::of(&req);
        let leave = req.into_inner();
        self.authorize_node(
            &identity,
            &NodeWrite {
                op: NodeOp::Leave,
                id: &leave.id,
                key: None,
                as_voter: false,
                routes: false,
                direct_peers: false,
            },
        )?;
        membership_svc::leave(&self.raft, &leave.id, &self.ipam).await?;
        Ok(Response::new(()))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        let caller = Identity::of(&req).caller;
        let id = req.into_inner().id;
        if id.is_empty() || id == self.raft.name {
            let mut status = self.local_status();
            let metrics = self.metrics.clone();
            status.interface_metrics = tokio::task::spawn_blocking(move || metrics())
                .await
                .ok()
                .flatten();
            // ICE peers: the address their WireGuard packets really go to.
            let paths = self.ice.as_ref().map(|i| i.paths()).unwrap_or_default();
            if let Some(m) = status.interface_metrics.as_mut() {
                for p in m.peers.iter_mut() {
                    let id = self
                        .raft
                        .state_machine
                        .members()
                        .read()
                        .ok()
                        .and_then(|k| k.owner_of(&p.public_key).map(str::to_string));
                    if let Some((
                        _,
                        crate::ice::node::PathReport::Direct(a)
                        | crate::ice::node::PathReport::Relayed(a),
                    )) = id.and_then(|id| paths.iter().find(|(n, _)| *n == id))
                    {
                        p.endpoint = a.to_string();
                    }
                }
            }
            let mut resp = Response::new(status);
            if let Ok(v) = self.info.endpoints.parse() {
                resp.metadata_mut().insert(ENDPOINTS_HEADER, v);
            }
            if !paths.is_empty() {
                let text = paths
                    .iter()
                    .map(|(id, p)| format!("{id}={p}"))
                    .collect::<Vec<_>>()
                    .join(",");
                if let Ok(v) = text.parse() {
                    resp.metadata_mut().insert(PATHS_HEADER, v);
                }
            }
            return Ok(resp);
        }
        ids::validate_node_id(&id).map_err(|why| Status::invalid_argument(format!("id: {why}")))?;
        may_read(
            authorization::policy(&self.raft)?.as_deref(),
            &caller,
            Read::State,
        )?;
        self.remote_status(&id).await.map(Response::new)
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let caller = Identity::of(&req).caller;
        may_read(
            authorization::policy(&self.raft)?.as_deref(),
            &caller,
            Read::State,
        )?;
        // Asked of the leader: a linearizable read (the leader proxy brought it here).
        let asked = req.metadata().get(super::identity::PREFER_LEADER_HEADER);
        if super::identity::prefers_leader(asked.map(|v| v.as_bytes())) {
            self.raft
                .linearizable_read()
                .await
                .map_err(propose_status)?;
        }
        let sm = self.raft.state_machine.clone();
        let (meta, data) =
            tokio::task::spawn_blocking(move || sm.export().map_err(|e| e.to_string()))
                .await
                .map_err(|e| internal("snapshot task failed", e))?
                .map_err(|e| internal("cannot read the state", e))?;
        Ok(Response::new(SnapshotResponse {
            last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            current_term: self.raft.metrics().current_term,
            snapshot: data,
        }))
    }

    async fn apply(
        &self,
        req: Request<RaftLogEntry>,
    ) -> Result<Response<RaftApplyResponse>, Status> {
        let caller = Identity::of(&req).caller;
        let op = validate_entry(req.get_ref())?;
        match &caller {
            Caller::Node(name) if self.raft.is_voter(name) => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "Apply is for voting members; {caller} is not a voter"
                )));
            }
        }
        self.authorize_raw(&caller, &op)?;
        if !self.raft.is_leader() {
            let hint = match self.raft.leader() {
                Some(l) => format!("send it to the leader {} at {}", l.name, l.grpc_addr),
                None => "no leader is known right now; retry shortly".into(),
            };
            return Err(Status::failed_precondition(format!(
                "Apply needs the Raft leader; {hint}"
            )));
        }
        let start = Instant::now();
        let resp = match self.raft.propose(vec![op]).await {
            Ok(_) => RaftApplyResponse {
                time: format_duration_precise(start.elapsed()),
                error: String::new(),
            },
            Err(crate::raft::ProposeError::Refused(reason)) => RaftApplyResponse {
                time: format_duration_precise(start.elapsed()),
                error: reason,
            },
            Err(e) => return Err(propose_status(e)),
        };
        Ok(Response::new(resp))
    }

    type NegotiateDataChannelStream = DataChannelStream;

    /// A WireGuard path's ICE negotiation between two members (see `ice::node`).
    async fn negotiate_data_channel(
        &self,
        req: Request<Streaming<DataChannelNegotiation>>,
    ) -> Result<Response<Self::NegotiateDataChannelStream>, Status> {
        let Some(ice) = &self.ice else {
            return Err(Status::unimplemented(
                "NegotiateDataChannel: this node does not negotiate ICE (start it with --ice)",
            ));
        };
        let caller = match Identity::of(&req).caller {
            Caller::Node(id) => id,
            Caller::User(u) => {
                return Err(Status::permission_denied(format!(
                    "{u:?}: WireGuard paths are negotiated between mesh nodes, which prove their key"
                )));
            }
            Caller::Anonymous => {
                return Err(Status::unauthenticated(
                    "NegotiateDataChannel takes a proof of a member's key (x-webmesh-proof)",
                ));
            }
        };
        let mut inbound = req.into_inner();
        let first = super::first_message(&mut inbound).await?;
        let out = if first.proto == crate::ice::signal::WIREGUARD_PROTO {
            ice.accept(&caller, first, inbound).await?
        } else {
            // A data channel a member relays for a client whose rights it checked.
            let me = self.raft.name.clone();
            ice.clone()
                .data_channel(me, first, Box::pin(inbound))
                .await?
        };
        Ok(Response::new(out))
    }
}

/// Sub-millisecond duration text for apply times ("1.234ms", "850µs").
fn format_duration_precise(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.3}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::wkt::Duration as PbDuration;

    fn entry(t: i32, key: &str, value: &str, ttl: Option<(i64, i32)>) -> RaftLogEntry {
        RaftLogEntry {
            r#type: t,
            key: key.into(),
            value: value.into(),
            ttl: ttl.map(|(seconds, nanos)| PbDuration { seconds, nanos }),
        }
    }

    #[test]
    fn valid_entries_become_ops() {
        let op = validate_entry(&entry(1, "/a/b", "v", Some((2, 500_000_000)))).unwrap();
        assert_eq!(
            op,
            Op::Put {
                key: "/a/b".into(),
                value: "v".into(),
                ttl_ms: 2500
            }
        );
        let op = validate_entry(&entry(2, "/a/b", "", None)).unwrap();
        assert_eq!(op, Op::Delete { key: "/a/b".into() });
    }

    #[test]
    fn bad_entries_name_the_field() {
        let cases = [
            (entry(0, "/a", "v", None), "type:"),
            (entry(7, "/a", "v", None), "type: unknown command type 7"),
            (entry(1, "a", "v", None), "key:"),
            (entry(1, "/a b", "v", None), "key:"),
            (entry(1, "", "v", None), "key:"),
            (entry(1, "/a", "", None), "value:"),
            (
                entry(1, "/a", &"x".repeat(keys::MAX_VALUE_BYTES + 1), None),
                "value:",
            ),
            (entry(1, "/a", "v", Some((-1, 0))), "ttl:"),
            (entry(1, "/a", "v", Some((0, 1_000_000_000))), "ttl:"),
            (entry(2, "/a", "v", None), "value:"),
            (entry(2, "/a", "", Some((1, 0))), "ttl:"),
        ];
        for (e, want) in cases {
            let s = validate_entry(&e).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().starts_with(want), "{want}: {}", s.message());
        }
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(format_duration(Duration::from_millis(3_500)), "3.500s");
        assert_eq!(format_duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_duration(Duration::from_secs(3_723)), "1h2m3s");
    }
}
