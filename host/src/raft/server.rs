//! Raft transport, server side: admits a message only from a voter of this node's Raft
//! configuration whose registered key signed it (a fresh joiner, which holds no state
//! yet, goes by the voters its join answer named), refuses terms and indexes no real
//! mesh reaches, and hands the decoded message to the local Raft.
//!
//! Learners never send Raft requests; only voters campaign and only the leader (a
//! voter) appends, so nothing else is let through. The one call members make is
//! `Follow` (`raft::stream`): any registered member proving its key may follow a voter.

use std::sync::Arc;

use openraft::{LogId, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use webmesh_api::internal::RaftMessage;
use webmesh_api::internal::raft_transport_server::RaftTransport;
use webmesh_client::proof::{self, PROOF_HEADER, Purpose};

use super::network::Kind;
use super::types::{NodeId, Raft};
use crate::mesh::ids;
use crate::trust::Trust;

/// No mesh holds an election or a log entry past this: 2^62 elections at one per
/// millisecond take 146 million years. A larger term or index is an attack on `+ 1`.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

pub struct RaftServer {
    /// Taken away when the node stops ([`RaftServer::slot`]): the server's connection
    /// tasks outlive it, and must not keep the node's RocksDB open.
    node: Arc<std::sync::Mutex<Option<super::RaftNode>>>,
    raft: Raft,
    trust: Arc<Trust>,
    disk: crate::store::disk::DiskGuard,
}

impl RaftServer {
    pub fn new(node: &super::RaftNode, trust: Arc<Trust>) -> RaftServer {
        RaftServer {
            raft: node.raft.clone(),
            disk: node.disk.clone(),
            node: Arc::new(std::sync::Mutex::new(Some(node.clone()))),
            trust,
        }
    }

    /// Emptied when the node stops.
    pub fn slot(&self) -> Arc<std::sync::Mutex<Option<super::RaftNode>>> {
        self.node.clone()
    }

    fn node(&self) -> Result<super::RaftNode, Status> {
        self.node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Status::unavailable("raft: this node is stopping"))
    }

    /// The member asking to follow the log, if it proves a registered key (its nonce
    /// is taken: a follow request is good once).
    fn admit_follower(&self, req: &Request<RaftMessage>) -> Result<String, Status> {
        let header = req
            .metadata()
            .get(PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "raft: a follow request must carry its member's proof of key",
                )
            })?;
        let digest = proof::body_digest(&req.get_ref().data);
        let claim = self
            .trust
            .check(
                header,
                Purpose::Raft,
                super::stream::FOLLOW_PATH,
                &digest,
                &[],
                true,
            )
            .map_err(|e| Status::unauthenticated(format!("raft: {e}")))?;
        if !claim.registered {
            return Err(Status::permission_denied(format!(
                "raft: {} is not a member with that key",
                claim.node
            )));
        }
        Ok(claim.node)
    }

    /// The sender, if it may speak Raft to this node.
    fn admit(&self, kind: Kind, req: &Request<RaftMessage>) -> Result<String, Status> {
        let header = req
            .metadata()
            .get(PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("raft: a message must carry its sender's proof of key")
            })?;
        let digest = proof::body_digest(&req.get_ref().data);
        let claim = self
            .trust
            .check(header, Purpose::Raft, kind.path(), &digest, &[], false)
            .map_err(|e| Status::unauthenticated(format!("raft: {e}")))?;
        if !claim.registered {
            return Err(Status::permission_denied(format!(
                "raft: {} is not a member with that key",
                claim.node
            )));
        }
        // Raft's configuration, or on a member that follows the log by stream (and is
        // being made a learner) the one its stream applied.
        let metrics = self.node()?.watch_metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voter = membership
            .voter_ids()
            .any(|v| v == ids::raft_id(&claim.node));
        // Before its first entry a joiner knows no configuration: the voters its join
        // answer named stand in.
        let fresh = membership.voter_ids().next().is_none();
        if voter || (fresh && self.trust.pinned().contains(&claim.node)) {
            Ok(claim.node)
        } else {
            Err(Status::permission_denied(format!(
                "raft: {} is not a voter of this node's configuration",
                claim.node
            )))
        }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    postcard::from_bytes(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    postcard::to_stdvec(v)
        .map(|data| {
            Response::new(RaftMessage {
                data,
                proof: String::new(),
            })
        })
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

/// Terms and indexes a message names must be ones a real mesh reaches.
pub fn check_bounds<'a>(
    vote: &Vote<NodeId>,
    log_ids: impl IntoIterator<Item = &'a LogId<NodeId>>,
) -> Result<(), Status> {
    let bad = |what: &str, n: u64| {
        Status::invalid_argument(format!(
            "raft: {what} {n} is beyond {MAX_TERM_OR_INDEX}; no mesh gets there"
        ))
    };
    if vote.leader_id().term >= MAX_TERM_OR_INDEX {
        return Err(bad("term", vote.leader_id().term));
    }
    for id in log_ids {
        if id.leader_id.term >= MAX_TERM_OR_INDEX {
            return Err(bad("term", id.leader_id.term));
        }
        if id.index >= MAX_TERM_OR_INDEX {
            return Err(bad("index", id.index));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl RaftTransport for RaftServer {
    type FollowStream = tokio_stream::wrappers::ReceiverStream<Result<RaftMessage, Status>>;

    async fn follow(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let member = self.admit_follower(&req)?;
        let follow: super::stream::FollowRequest = decode(req)?;
        if follow.next >= MAX_TERM_OR_INDEX {
            return Err(Status::invalid_argument(format!(
                "raft: index {} is beyond {MAX_TERM_OR_INDEX}; no mesh gets there",
                follow.next
            )));
        }
        let rx = super::stream::serve(&self.node()?, self.trust.clone(), member, follow)?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(Kind::Append, &req)?;
        let rpc: openraft::raft::AppendEntriesRequest<super::types::TypeConfig> = decode(req)?;
        check_bounds(
            &rpc.vote,
            rpc.prev_log_id
                .iter()
                .chain(rpc.leader_commit.iter())
                .chain(rpc.entries.iter().map(|e| &e.log_id)),
        )?;
        let (entries, commit) = (rpc.entries.len(), rpc.leader_commit.map(|c| c.index));
        // A log write on a full or read-only disk would stop Raft here for good: refuse
        // the entries instead (the leader retries; heartbeats still pass).
        if entries > 0 {
            self.disk
                .check()
                .map_err(|f| Status::unavailable(f.to_string()))?;
        }
        let started = std::time::Instant::now();
        let res = self.raft.append_entries(rpc).await;
        tracing::trace!(entries, ?commit, took = ?started.elapsed(), "append taken");
        encode(&res)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(Kind::Vote, &req)?;
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(req)?;
        check_bounds(&rpc.vote, rpc.last_log_id.iter())?;
        let res = self.raft.vote(rpc).await;
        encode(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(Kind::Snapshot, &req)?;
        self.disk
            .check()
            .map_err(|f| Status::unavailable(f.to_string()))?;
        let rpc: openraft::raft::InstallSnapshotRequest<super::types::TypeConfig> = decode(req)?;
        check_bounds(&rpc.vote, rpc.meta.last_log_id.iter())?;
        let res = self.raft.install_snapshot(rpc).await;
        encode(&res)
    }
}
