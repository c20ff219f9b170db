//! Following the log by stream: how a member that does not vote keeps its replica.
//!
//! A Raft learner costs the leader a replication stream, and openraft rebuilds every
//! stream at each membership change — each join and leave of a learner is one — so a
//! mesh of thousands of learners is thousands of streams rebuilt per join, and a change
//! reaches each learner only within heartbeat-bounded appends. A member that joins
//! without a raft port (`raft_port` 0) is no Raft member at all: it calls `Follow` on a
//! voter's raft port, and the voter streams a snapshot if the member is behind its log,
//! then every entry it applies as it applies it (entries a voter applied are committed),
//! and who leads. The member applies them through the same state machine a learner
//! would, so everything that follows the state (peers, DNS, plugins) is unchanged; its
//! Raft figures (leader, membership, applied index) come from the stream.
//!
//! Trust: the request carries the member's proof of key (any registered member may
//! follow; it holds the whole state anyway); every message back is signed by the voter
//! over its bytes and the stream's random ID, and the member checks it against the
//! voter's registered (or join-pinned) key, so a relay on the tunnel's path can neither
//! forge nor replay entries. Entries must continue the applied index exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{RaftMetrics, ServerState, SnapshotMeta};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::transport::Endpoint;
use tracing::{debug, info};
use webmesh_api::internal::RaftMessage;
use webmesh_api::internal::raft_transport_client::RaftTransportClient;
use webmesh_client::proof::{PROOF_HEADER, Purpose, body_digest};

use super::network::MAX_MESSAGE_BYTES;
use super::types::{Member, NodeId, TypeConfig};
use super::{RaftNode, storage};
use crate::mesh::{ids, keys};
use crate::trust::Trust;

type Entry = openraft::Entry<TypeConfig>;

/// What the proofs of a follow request and of its answers sign as their path.
pub const FOLLOW_PATH: &str = "raft/follow";
/// A voter says something at least this often; a member hearing nothing for
/// [`SILENCE`] dials again (another voter if this one is gone).
pub const IDLE: Duration = Duration::from_secs(1);
pub const SILENCE: Duration = Duration::from_secs(4);
/// One message carries entries up to this many bytes (at least one entry).
const MAX_ENTRY_BYTES: usize = 4 << 20;
const MAX_ENTRIES: u64 = 512;
/// Streams one voter serves at once.
pub const MAX_FOLLOWERS: usize = 8192;

#[derive(Debug, Serialize, Deserialize)]
pub struct FollowRequest {
    /// The first index the member has not applied (0: none applied).
    pub next: u64,
    /// Random; every answer's proof signs it, so an answer is good for this stream only.
    pub stream: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Followed {
    /// 0, 1, 2, ... on one stream: a dropped or repeated message shows.
    pub seq: u64,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    /// Nothing new: who leads, and that the voter is alive.
    Idle,
    /// Committed entries, continuing the member's applied index.
    Entries(Vec<Entry>),
    /// The state, for a member behind the voter's log.
    Snapshot {
        meta: SnapshotMeta<NodeId, Member>,
        data: Vec<u8>,
    },
}

/// The members this node streams the log to now, by name (the leader's pending-join
/// sweeper counts a joiner that follows it as reached).
#[derive(Clone, Default)]
pub struct Served(Arc<Mutex<HashMap<String, usize>>>);

impl Served {
    pub fn contains(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|n| *n > 0)
    }

    fn count(&self) -> usize {
        self.lock().values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, name: &str) -> ServedGuard {
        *self.lock().entry(name.to_string()).or_default() += 1;
        ServedGuard {
            served: self.clone(),
            name: name.to_string(),
        }
    }
}

struct ServedGuard {
    served: Served,
    name: String,
}

impl Drop for ServedGuard {
    fn drop(&mut self) {
        let mut m = self.served.lock();
        if let Some(n) = m.get_mut(&self.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.name);
            }
        }
    }
}

/// Raft figures of a member that follows by stream: what its stream says, in openraft's
/// shape, so that every reader of Raft's metrics works unchanged.
pub struct StreamMetrics {
    on: AtomicBool,
    /// Gone once Raft shuts down, so that whoever waits on a change learns it, as with
    /// openraft's own metrics.
    tx: Mutex<Option<watch::Sender<RaftMetrics<NodeId, Member>>>>,
    last: watch::Receiver<RaftMetrics<NodeId, Member>>,
}

impl StreamMetrics {
    pub fn new(initial: RaftMetrics<NodeId, Member>) -> StreamMetrics {
        let (tx, last) = watch::channel(initial);
        StreamMetrics {
            on: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            last,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<RaftMetrics<NodeId, Member>> {
        self.last.clone()
    }

    /// Changes the figures; `f` says whether it changed anything.
    fn modify(&self, f: impl FnOnce(&mut RaftMetrics<NodeId, Member>) -> bool) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            tx.send_if_modified(f);
        }
    }

    fn get(&self) -> RaftMetrics<NodeId, Member> {
        self.last.borrow().clone()
    }

    /// Raft stopped: watchers see the channel close.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Serves one member's `Follow` on a voter: the stream of answers.
pub fn serve(
    node: &RaftNode,
    trust: Arc<Trust>,
    follower: String,
    req: FollowRequest,
) -> Result<mpsc::Receiver<Result<RaftMessage, Status>>, Status> {
    if !node.is_voter(&node.name) {
        return Err(Status::failed_precondition(format!(
            "{} is not a voter: follow one of the mesh's voters",
            node.name
        )));
    }
    if node.served.count() >= MAX_FOLLOWERS {
        return Err(Status::resource_exhausted(format!(
            "this voter streams the log to {MAX_FOLLOWERS} members already; follow another voter"
        )));
    }
    let (tx, rx) = mpsc::channel(4);
    let node = node.clone();
    let guard = node.served.enter(&follower);
    tokio::spawn(async move {
        let _guard = guard;
        let mut applied = node.state_machine.watch_next();
        // Who leads: openraft's server metrics change with the vote, state, leader and
        // membership only (its full metrics change at every entry: a wake-up per member).
        let mut metrics = node.raft.server_metrics();
        let said_now = |m: &openraft::metrics::RaftServerMetrics<NodeId, Member>| {
            (m.vote.leader_id().term, m.current_leader)
        };
        let mut next = req.next;
        let mut seq = 0u64;
        let mut said: Option<(u64, Option<NodeId>)> = None;
        let mut beat = tokio::time::interval(IDLE);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream_id = req.stream.to_string();
        debug!(member = %follower, next = req.next, "streaming the log");
        loop {
            let upto = *applied.borrow_and_update();
            let body = if next < upto {
                let last = (upto - 1).min(next + MAX_ENTRIES - 1);
                match storage::read_log(&node.engine, next, last, MAX_ENTRY_BYTES) {
                    Ok(es) if es.first().is_some_and(|e| e.log_id.index == next) => {
                        next = es.last().map_or(next, |e| e.log_id.index + 1);
                        Body::Entries(es)
                    }
                    // Purged (or never held: this voter installed a snapshot).
                    Ok(_) => match node.state_machine.export() {
                        Ok((meta, data)) => {
                            next = meta.last_log_id.map_or(0, |l| l.index + 1);
                            Body::Snapshot { meta, data }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                            return;
                        }
                    },
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                }
            } else {
                tokio::select! {
                    r = applied.changed() => {
                        if r.is_err() { return }
                        continue;
                    }
                    r = metrics.changed() => {
                        if r.is_err() { return }
                        if said == Some(said_now(&metrics.borrow_and_update())) {
                            continue;
                        }
                        Body::Idle
                    }
                    _ = beat.tick() => Body::Idle,
                    () = tx.closed() => return,
                }
            };
            let (term, leader) = said_now(&metrics.borrow());
            said = Some((term, leader));
            let msg = Followed {
                seq,
                term,
                leader,
                body,
            };
            seq += 1;
            let data = match postcard::to_stdvec(&msg) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            let proof = trust
                .signer()
                .sign(Purpose::Raft, FOLLOW_PATH, &data, &[&stream_id]);
            if tx.send(Ok(RaftMessage { data, proof })).await.is_err() {
                return;
            }
            beat.reset();
        }
    });
    Ok(rx)
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("cannot reach {0}")]
    Dial(String),
    #[error("refused: {0}")]
    Refused(Status),
    #[error("silent for {SILENCE:?}")]
    Silent,
    #[error("the stream ended")]
    Ended,
    #[error("bad answer: {0}")]
    Bad(String),
    #[error("the leader is elsewhere")]
    Switch,
    #[error("cannot apply: {0}")]
    Apply(String),
    #[error("this node is a Raft member now")]
    Handover,
}

/// Runs the member's side for as long as the node runs: follows a voter (the leader
/// first), and another when that one fails or falls silent. `seeds` are the voters a
/// join answer named (`name`, raft address), for a node that holds no state yet.
pub fn spawn_follower(
    node: RaftNode,
    trust: Arc<Trust>,
    seeds: Vec<(String, String)>,
) -> tokio::task::JoinHandle<()> {
    node.stream.on.store(true, Ordering::Release);
    let membership = Arc::new(node.state_machine.stored_membership());
    let applied = node.state_machine.applied_log_id();
    node.stream.modify(|m| {
        m.state = ServerState::Learner;
        m.current_leader = None;
        m.membership_config = membership;
        m.last_applied = applied;
        m.last_log_index = applied.map(|l| l.index);
        true
    });
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        'follow: loop {
            for (name, addr) in candidates(&node, &seeds) {
                match follow_once(&node, &trust, &name, &addr).await {
                    Ok(()) => {}
                    Err(StreamEnd::Handover) => break 'follow,
                    Err(StreamEnd::Switch) => {
                        debug!(voter = %name, "following the leader instead");
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => debug!(voter = %name, %addr, error = %e, "log stream ended"),
                }
                forget_leader(&node);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        // The leader made this node a learner (it is to vote): Raft replicates to it
        // from now on, and its figures are Raft's own, mirrored for those who watch.
        info!("this node is a Raft member now: the log comes by Raft");
        let mut raft = node.raft.metrics();
        loop {
            let m = raft.borrow_and_update().clone();
            node.stream.modify(|to| {
                *to = m;
                true
            });
            if raft.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Voters to follow, the leader first: from the applied membership, else the seeds.
fn candidates(node: &RaftNode, seeds: &[(String, String)]) -> Vec<(String, String)> {
    let m = node.stream.get();
    let membership = m.membership_config.membership();
    let mut out: Vec<(String, String)> = Vec::new();
    let leader = m
        .current_leader
        .and_then(|id| membership.get_node(&id))
        .cloned();
    out.extend(leader.map(|l| (l.name, l.raft_addr)));
    for id in membership.voter_ids() {
        if let Some(n) = membership.get_node(&id)
            && !out.iter().any(|(name, _)| *name == n.name)
        {
            out.push((n.name.clone(), n.raft_addr.clone()));
        }
    }
    if out.is_empty() {
        out.extend(seeds.iter().cloned());
    }
    out
}

fn forget_leader(node: &RaftNode) {
    node.stream.modify(|m| {
        let had = m.current_leader.is_some();
        m.current_leader = None;
        had
    });
}

async fn follow_once(
    node: &RaftNode,
    trust: &Trust,
    voter: &str,
    addr: &str,
) -> Result<(), StreamEnd> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| StreamEnd::Dial(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(IDLE)
        .keep_alive_timeout(SILENCE)
        .connect()
        .await
        .map_err(|e| StreamEnd::Dial(format!("{addr}: {e}")))?;
    let mut client = RaftTransportClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let stream: u64 = rand::random();
    let stream_id = stream.to_string();
    let mut next = node.state_machine.next_index();
    let data = postcard::to_stdvec(&FollowRequest { next, stream })
        .map_err(|e| StreamEnd::Bad(e.to_string()))?;
    let proof = trust.signer().sign(Purpose::Raft, FOLLOW_PATH, &data, &[]);
    let mut request = tonic::Request::new(RaftMessage {
        data,
        proof: String::new(),
    });
    if let Ok(v) = proof.parse() {
        request.metadata_mut().insert(PROOF_HEADER, v);
    }
    let mut answers = client
        .follow(request)
        .await
        .map_err(StreamEnd::Refused)?
        .into_inner();
    let mut seq = 0u64;
    let pending_key = format!("{}{}", keys::PENDING, node.name);
    loop {
        let msg = match tokio::time::timeout(SILENCE, answers.message()).await {
            Err(_) => return Err(StreamEnd::Silent),
            Ok(Err(s)) => return Err(StreamEnd::Refused(s)),
            Ok(Ok(None)) => return Err(StreamEnd::Ended),
            Ok(Ok(Some(m))) => m,
        };
        let claim = trust
            .check(
                &msg.proof,
                Purpose::Raft,
                FOLLOW_PATH,
                &body_digest(&msg.data),
                &[&stream_id],
                false,
            )
            .map_err(|e| StreamEnd::Bad(format!("proof: {e}")))?;
        if claim.node != voter || !claim.registered {
            return Err(StreamEnd::Bad(format!(
                "signed by {} (registered: {}), not by the voter {voter}",
                claim.node, claim.registered
            )));
        }
        let f: Followed =
            postcard::from_bytes(&msg.data).map_err(|e| StreamEnd::Bad(e.to_string()))?;
        if f.seq != seq {
            return Err(StreamEnd::Bad(format!("message {} after {}", f.seq, seq)));
        }
        seq += 1;
        let mut membership_changed = false;
        match f.body {
            Body::Idle => {}
            Body::Entries(entries) => {
                let first = entries.first().map(|e| e.log_id.index);
                if first != Some(next) {
                    return Err(StreamEnd::Bad(format!(
                        "entries from {first:?}, where {next} is next"
                    )));
                }
                if entries
                    .windows(2)
                    .any(|w| w[1].log_id.index != w[0].log_id.index + 1)
                {
                    return Err(StreamEnd::Bad("entries with a gap".into()));
                }
                membership_changed = entries
                    .iter()
                    .any(|e| matches!(e.payload, openraft::EntryPayload::Membership(_)));
                let mut sm = node.state_machine.clone();
                sm.apply(entries)
                    .await
                    .map_err(|e| StreamEnd::Apply(e.to_string()))?;
            }
            Body::Snapshot { meta, data } => {
                info!(voter, index = ?meta.last_log_id.map(|l| l.index), bytes = data.len(), "state taken from a voter's snapshot");
                node.state_machine
                    .restore(&meta, &data)
                    .map_err(|e| StreamEnd::Apply(e.to_string()))?;
                membership_changed = true;
            }
        }
        next = node.state_machine.next_index();
        let last_applied = node.state_machine.applied_log_id();
        let membership = if membership_changed {
            Some(Arc::new(node.state_machine.stored_membership()))
        } else {
            None
        };
        node.stream.modify(|m| {
            let before = (m.current_leader, m.current_term, m.last_applied);
            m.current_leader = f.leader;
            m.current_term = f.term;
            m.last_applied = last_applied;
            m.last_log_index = last_applied.map(|l| l.index);
            if let Some(ms) = membership.clone() {
                m.membership_config = ms;
                return true;
            }
            before != (m.current_leader, m.current_term, m.last_applied)
        });
        if membership_changed
            && node
                .state_machine
                .stored_membership()
                .membership()
                .get_node(&node.id)
                .is_some_and(|n| n.name == node.name)
        {
            return Err(StreamEnd::Handover);
        }
        // A joiner counts as reached once the leader streams to it: while its
        // pending-join marker stands, follow the leader itself.
        if let Some(leader) = f.leader
            && ids::raft_id(voter) != leader
            && node.engine.get(&pending_key).ok().flatten().is_some()
        {
            return Err(StreamEnd::Switch);
        }
    }
}

impl RaftNode {
    /// Whether this node follows the log by stream rather than through Raft.
    pub fn follows_by_stream(&self) -> bool {
        self.stream.is_on()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_counts_streams_per_member_and_forgets_ended_ones() {
        let s = Served::default();
        let a = s.enter("a");
        let a2 = s.enter("a");
        let _b = s.enter("b");
        assert!(s.contains("a") && s.contains("b"));
        assert_eq!(s.count(), 3);
        drop(a);
        assert!(s.contains("a"), "one stream of a is still open");
        drop(a2);
        assert!(!s.contains("a"));
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn a_follow_message_round_trips() {
        let m = Followed {
            seq: 3,
            term: 2,
            leader: Some(7),
            body: Body::Idle,
        };
        let back: Followed = postcard::from_bytes(&postcard::to_stdvec(&m).unwrap()).unwrap();
        assert_eq!((back.seq, back.term, back.leader), (3, 2, Some(7)));
    }
}
