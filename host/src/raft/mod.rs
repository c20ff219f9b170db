//! Raft: openraft on the node's RocksDB, with an internal gRPC transport.

pub mod follow;
pub mod network;
pub mod server;
pub mod storage;
pub mod stream;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

pub use storage::StateEvent;
use storage::{LogStore, StateMachine};
pub use types::{Member, NodeId, Raft, TypeConfig};

use crate::mesh::ids;
use crate::store::engine::Engine;
use crate::store::ops::{ApplyOutcome, Batch, Op, Proposal, now_ms};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is who is, when known.
    #[error("this node is not the Raft leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<Member> },
    /// The state machine refused the proposal; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// Raft cannot take writes now (shutting down, no quorum, storage failure).
    #[error("raft unavailable: {0}")]
    Unavailable(String),
    /// The data dir cannot take writes (full, read-only): refused before the disk.
    #[error("{0}")]
    Disk(#[from] crate::store::disk::DiskFault),
}

fn leader_hint(leader: &Option<Member>) -> String {
    match leader {
        Some(m) => format!("; the leader is {} at {}", m.name, m.grpc_addr),
        None => "; no leader is known right now".into(),
    }
}

/// A proposal waiting for the batcher, and where its result goes.
struct Queued {
    proposal: Proposal,
    reply: tokio::sync::oneshot::Sender<Result<Committed, ProposeError>>,
}

/// Entries in flight at once: two overlap one entry's replication with the next one's
/// local write; more would only split the waiting proposals into smaller batches
/// (measured: BENCHMARKS.md, Raft with 3 voters).
const MAX_IN_FLIGHT: usize = 2;
/// A batch closes at this many proposals or bytes (a single larger proposal goes alone).
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;

fn proposal_bytes(p: &Proposal) -> usize {
    p.ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } | Op::Expire { key, .. } => key.len(),
            Op::RegisterNode { node_json, .. } => node_json.len(),
        })
        .sum()
}

/// Group commit: openraft writes and fsyncs one entry at a time, so proposals that
/// arrive while entries are in flight are packed into the next entry.
fn spawn_batcher(raft: Raft, mut rx: tokio::sync::mpsc::UnboundedReceiver<Queued>) {
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = rx.recv().await else { return };
            let mut bytes = proposal_bytes(&first.proposal);
            let mut queued = vec![first];
            while queued.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(q) => {
                        bytes += proposal_bytes(&q.proposal);
                        queued.push(q);
                    }
                    Err(_) => break,
                }
            }
            let raft = raft.clone();
            tokio::spawn(async move {
                let (proposals, replies): (Vec<Proposal>, Vec<_>) =
                    queued.into_iter().map(|q| (q.proposal, q.reply)).unzip();
                let n = proposals.len();
                crate::metrics::get().raft_batch_proposals.observe(n as f64);
                match raft.client_write(Batch { proposals }).await {
                    Ok(resp) => {
                        let index = resp.log_id.index;
                        let mut outcomes = resp.data.into_iter();
                        for reply in replies {
                            let outcome = outcomes.next().unwrap_or_default();
                            let res = match outcome.error.clone() {
                                Some(err) => Err(ProposeError::Refused(err)),
                                None => Ok(Committed { index, outcome }),
                            };
                            let _ = reply.send(res);
                        }
                        debug!(proposals = n, index, "batch committed");
                    }
                    Err(e) => {
                        let err = match e {
                            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                                ProposeError::NotLeader {
                                    leader: f.leader_node,
                                }
                            }
                            other => ProposeError::Unavailable(other.to_string()),
                        };
                        for reply in replies {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
                drop(permit);
            });
        }
    });
}

/// A committed proposal: where it landed and what it did.
#[derive(Debug, Clone)]
pub struct Committed {
    pub index: u64,
    pub outcome: ApplyOutcome,
}

/// The node's Raft and its replica of the state.
#[derive(Clone)]
pub struct RaftNode {
    pub raft: Raft,
    pub engine: Engine,
    pub state_machine: StateMachine,
    pub id: NodeId,
    pub name: String,
    events: broadcast::Sender<StateEvent>,
    /// Raft takes one membership change at a time.
    membership_lock: Arc<tokio::sync::Mutex<()>>,
    policy: Arc<crate::store::views::PolicyCache>,
    proposals: tokio::sync::mpsc::UnboundedSender<Queued>,
    /// Whether the data dir takes writes; checked before every proposal.
    pub disk: crate::store::disk::DiskGuard,
    /// Members this voter streams the log to (`raft::stream`).
    pub served: stream::Served,
    /// Raft's figures when this node follows the log by stream instead.
    stream: Arc<stream::StreamMetrics>,
    /// The view joins read (on the leader), kept current from state events rather
    /// than decoded afresh per join; its lock makes joins one at a time.
    pub join_view: Arc<tokio::sync::Mutex<Option<follow::ViewFollower>>>,
}

/// Timing for meshes of modest hosts: openraft bounds each AppendEntries by the
/// heartbeat interval, so it must leave room for a busy follower (a timed-out append is
/// retried, delaying every change behind it).
///
/// A voter that stops hearing from its leader waits `election_timeout_max` (openraft's
/// leader lease) plus its own random election timeout, checked on a tick of 1.5
/// heartbeats: 1.5-1.8 s + up to 0.45 s here, so a dead leader is replaced and writes
/// flow again within 2.5 s (measured: BENCHMARKS.md, leader failover). Five heartbeats
/// missed in a row are needed to start an election, so a busy host is not unseated.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (600, 900);

fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "webmesh".into(),
        heartbeat_interval: 300,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        install_snapshot_timeout: 5_000,
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    }
}

impl RaftNode {
    /// Starts Raft over `engine`. The node is a member only once it is initialized
    /// ([`RaftNode::initialize`]) or added by a leader.
    pub async fn start(
        engine: Engine,
        signer: Arc<webmesh_client::proof::Signer>,
    ) -> Result<RaftNode, ProposeError> {
        let name = signer.node().to_string();
        let config = raft_config()
            .validate()
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        let (events, _) = broadcast::channel(4096);
        let state_machine = StateMachine::new(engine.clone(), events.clone());
        let id = ids::raft_id(&name);
        let policy = Arc::new(crate::store::views::PolicyCache::new(
            state_machine.rbac_version(),
        ));
        let log = LogStore::new(engine.clone(), id);
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Network::new(signer, log.durability()),
            log,
            state_machine.clone(),
        )
        .await
        .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        let (proposals, queue) = tokio::sync::mpsc::unbounded_channel();
        spawn_batcher(raft.clone(), queue);
        let disk = crate::store::disk::DiskGuard::watch(engine.path());
        let stream = Arc::new(stream::StreamMetrics::new(raft.metrics().borrow().clone()));
        Ok(RaftNode {
            disk,
            served: stream::Served::default(),
            stream,
            join_view: Arc::default(),
            raft,
            engine,
            state_machine,
            id,
            name,
            events,
            membership_lock: Arc::new(tokio::sync::Mutex::new(())),
            policy,
            proposals,
        })
    }

    /// The mesh's RBAC policy, compiled once per change (`None`: RBAC is off).
    pub fn policy(
        &self,
    ) -> Result<Option<Arc<crate::mesh::rbac::Compiled>>, crate::store::engine::StoreError> {
        self.policy.get(&self.engine)
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Makes this node the single voter of a new cluster.
    pub async fn initialize(&self, me: Member) -> Result<(), ProposeError> {
        let members = BTreeMap::from([(self.id, me)]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ProposeError::Unavailable(e.to_string()))
    }

    /// Raft's figures as they change: openraft's, or, on a member that follows the log
    /// by stream, what its stream says.
    pub fn watch_metrics(
        &self,
    ) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>> {
        if self.stream.is_on() {
            self.stream.subscribe()
        } else {
            self.raft.metrics()
        }
    }

    /// Whether this node takes part in Raft (a voter or a learner of its membership).
    pub fn in_raft(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&self.id)
            .is_some_and(|n| n.name == self.name)
    }

    /// Waits until some node leads, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ProposeError> {
        let mut rx = self.watch_metrics();
        let wait = rx.wait_for(|m| m.current_leader.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(m)) => Ok(m.current_leader.expect("waited for a leader")),
            Ok(Err(_)) => Err(ProposeError::Unavailable("raft stopped".into())),
            Err(_) => Err(ProposeError::Unavailable(format!(
                "no leader elected within {timeout:?}"
            ))),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, Member> {
        self.watch_metrics().borrow().clone()
    }

    /// Raft's figures for the metrics.
    pub fn figures(&self) -> crate::metrics::RaftFigures {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count() as u64;
        let nodes = membership.nodes().count() as u64;
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        crate::metrics::RaftFigures {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed: storage::committed_index(&self.engine)
                .unwrap_or(0)
                .max(applied),
            applied,
            leader: m.state == ServerState::Leader && m.current_leader == Some(self.id),
            voters,
            learners: nodes.saturating_sub(voters),
        }
    }

    /// Counts leader changes as this node sees them, for as long as Raft runs.
    pub fn spawn_leader_watch(&self) -> tokio::task::JoinHandle<()> {
        let mut rx = self.watch_metrics();
        tokio::spawn(async move {
            let mut leader = rx.borrow().current_leader;
            while rx.changed().await.is_ok() {
                let now = rx.borrow().current_leader;
                if now != leader {
                    if now.is_some() {
                        crate::metrics::get().raft_leader_changes.inc();
                    }
                    leader = now;
                }
            }
        })
    }

    pub fn is_leader(&self) -> bool {
        let m = self.watch_metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The member record of `id` in the current membership.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        let m = self.watch_metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Waits until this node's state reflects every write committed before the call, as
    /// confirmed by a quorum that it still leads (a read index); only the leader can.
    pub async fn linearizable_read(&self) -> Result<(), ProposeError> {
        match tokio::time::timeout(Duration::from_secs(5), self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(ProposeError::NotLeader {
                leader: f.leader_node,
            }),
            Ok(Err(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(_) => Err(ProposeError::Unavailable(
                "no quorum confirmed this node's leadership within 5 s".into(),
            )),
        }
    }

    /// Resolves once `leader` is not the leader this node knows any more: an election
    /// began (it stopped hearing from it), another node won, or Raft stopped.
    pub async fn leader_moved_from(&self, leader: NodeId) {
        let mut rx = self.watch_metrics();
        let _ = rx.wait_for(|m| m.current_leader != Some(leader)).await;
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.watch_metrics().borrow().current_leader
    }

    pub fn leader(&self) -> Option<Member> {
        self.leader_with_id().map(|(_, m)| m)
    }

    /// The leader's Raft ID and member record, read together.
    pub fn leader_with_id(&self) -> Option<(NodeId, Member)> {
        let id = self.leader_id()?;
        Some((id, self.member(id)?))
    }

    /// Whether the node named `name` is a voter in the current membership.
    pub fn is_voter(&self, name: &str) -> bool {
        let id = ids::raft_id(name);
        let m = self.watch_metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().any(|v| v == id)
            && membership.get_node(&id).is_some_and(|n| n.name == name)
    }

    /// Commits `ops` as one proposal (leader only) and returns what applying did.
    /// Concurrent proposals share log entries (group commit); each stays atomic.
    pub async fn propose(&self, ops: Vec<Op>) -> Result<Committed, ProposeError> {
        self.disk.check()?;
        let proposal = Proposal {
            issued_at_ms: now_ms(),
            ops,
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let started = std::time::Instant::now();
        self.proposals
            .send(Queued { proposal, reply })
            .map_err(|_| ProposeError::Unavailable("raft stopped".into()))?;
        let committed = rx
            .await
            .map_err(|_| ProposeError::Unavailable("raft stopped".into()))?;
        if committed.is_ok() {
            crate::metrics::get()
                .raft_commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        committed
    }

    /// Applies a membership change, retrying while another one is in flight.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Member>,
        retain: bool,
    ) -> Result<(), ProposeError> {
        self.disk.check()?;
        let _guard = self.membership_lock.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.raft.change_membership(change.clone(), retain).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return Err(ProposeError::NotLeader {
                        leader: f.leader_node,
                    });
                }
                Err(e) => return Err(ProposeError::Unavailable(e.to_string())),
            }
        }
    }

    /// Adds (or updates) `member` as a learner: it receives the log but has no vote.
    pub async fn add_learner(&self, member: Member) -> Result<(), ProposeError> {
        let id = ids::raft_id(&member.name);
        if let Some(existing) = self.member(id) {
            if existing.name != member.name {
                return Err(ProposeError::Refused(format!(
                    "node {:?} cannot join: its Raft ID collides with member {:?}; choose another ID",
                    member.name, existing.name
                )));
            }
            if existing == member {
                return Ok(());
            }
            return self
                .change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                    true,
                )
                .await;
        }
        self.change_membership(
            ChangeMembers::AddNodes(BTreeMap::from([(id, member)])),
            true,
        )
        .await
    }

    /// Makes a learner a voter once it has caught up with the leader's log (a voter that
    /// cannot yet answer would stall commits). Gives up after `timeout`.
    pub async fn promote_when_caught_up(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        let id = ids::raft_id(name);
        if self.is_voter(name) {
            return Ok(());
        }
        let mut rx = self.raft.metrics();
        let caught_up = rx.wait_for(|m| {
            let Some(repl) = &m.replication else {
                return false;
            };
            let last = m.last_log_index.unwrap_or(0);
            repl.get(&id)
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index + 1 >= last)
        });
        match tokio::time::timeout(timeout, caught_up).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(ProposeError::Unavailable("raft stopped".into())),
            Err(_) => {
                return Err(ProposeError::Unavailable(format!(
                    "{name} did not catch up with the log within {timeout:?}; it stays a non-voter"
                )));
            }
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
    }

    /// Removes a node from Raft: its vote first, then its membership.
    pub async fn remove_member(&self, name: &str) -> Result<(), ProposeError> {
        let id = ids::raft_id(name);
        if self.member(id).is_none_or(|m| m.name != name) {
            return Ok(());
        }
        if self.is_voter(name) {
            self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await?;
        }
        if self.member(id).is_some() {
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
        }
        Ok(())
    }

    /// Proposes deletes of expired keys while this node leads, so that expired keys
    /// disappear from every replica (reads hide them from the moment they expire).
    pub fn spawn_ttl_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !node.is_leader() {
                    continue;
                }
                let expired = match node.engine.expired(now_ms(), 512) {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(error = %e, "cannot read the TTL index");
                        continue;
                    }
                };
                if expired.is_empty() {
                    continue;
                }
                let n = expired.len();
                let ops = expired
                    .into_iter()
                    .map(|(key, expires_at_ms)| Op::Expire { key, expires_at_ms })
                    .collect();
                match node.propose(ops).await {
                    Ok(c) => debug!(keys = n, index = c.index, "expired keys removed"),
                    Err(e) => debug!(error = %e, "TTL sweep not committed"),
                }
            }
        })
    }

    pub async fn shutdown(&self) {
        self.stream.close();
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        } else {
            info!("raft stopped");
        }
    }
}
