//! Raft transport, client side: openraft messages, postcard-encoded, over the internal
//! gRPC service of each member's raft port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use webmesh_api::internal::RaftMessage;
use webmesh_api::internal::raft_transport_client::RaftTransportClient;
use webmesh_client::proof::{PROOF_HEADER, Purpose, Signer};

use super::storage::Durability;
use super::types::{Member, NodeId, TypeConfig};

/// Largest Raft message either side accepts (entries carry values up to 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// An append carries entries up to a byte budget (at least one entry, whatever its
/// size): openraft batches by count, and 64 entries of 1 MiB would neither fit the
/// transport nor arrive within the heartbeat interval, which openraft allows each
/// append; a follower far behind would never catch up. The budget adapts per peer: an
/// append cut off at its deadline quarters it, one that arrives doubles it.
pub const MAX_APPEND_BYTES: usize = 16 << 20;
pub const MIN_APPEND_BYTES: usize = 64 << 10;
const START_APPEND_BYTES: usize = 2 << 20;

/// How many of `entries` (at least one) fit in `budget` bytes.
pub fn fitting<T: Serialize>(entries: &[T], budget: usize) -> usize {
    let mut used: usize = 0;
    for (i, e) in entries.iter().enumerate() {
        let n = postcard::experimental::serialized_size(e).unwrap_or(usize::MAX);
        if i > 0 && used.saturating_add(n) > budget {
            return i;
        }
        used = used.saturating_add(n);
    }
    entries.len()
}

/// Makes a client per peer. Every message is signed with this node's key (the receiver
/// admits only its configuration's voters).
///
/// Connections are made lazily and outlive the clients that use them: openraft 0.9
/// tears down and re-creates every replication stream on each membership change —
/// every join and every leave — and a fresh connection per stream meant a burst of
/// one TCP handshake per member at each change, all behind a 1 s SYN retransmission
/// timeout when one was lost: followers then applied the change 1–3 s late
/// (BENCHMARKS.md, propagation). A stream for the same member at the same address now
/// takes the connection its predecessor used.
#[derive(Clone)]
pub struct Network {
    signer: Arc<Signer>,
    pool: Arc<Mutex<HashMap<NodeId, Arc<Conn>>>>,
    durable: Durability,
}

impl Network {
    /// `durable`: the log store's, to hold back commits the leader's log does not yet
    /// hold durably (`storage::durable`).
    pub fn new(signer: Arc<Signer>, durable: Durability) -> Network {
        Network {
            signer,
            pool: Arc::default(),
            durable,
        }
    }

    /// The connection to `target` at `addr`: the pooled one, or a new one (a member
    /// that moved gets a new connection). Connections unused for a minute go.
    fn conn(&self, target: NodeId, addr: &str) -> Arc<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        pool.retain(|_, c| {
            Arc::strong_count(c) > 1 || now.duration_since(c.state().used) < POOL_IDLE
        });
        let conn = match pool.get(&target) {
            Some(c) if c.addr == addr => c.clone(),
            _ => {
                let c = Arc::new(Conn {
                    addr: addr.to_string(),
                    state: Mutex::new(ConnState {
                        client: connect(addr),
                        last_answer: now,
                        used: now,
                    }),
                });
                pool.insert(target, c.clone());
                c
            }
        };
        conn.state().used = now;
        conn
    }
}

/// How long an unused pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// A connection to one member, shared by the clients openraft makes for it in turn.
pub struct Conn {
    addr: String,
    state: Mutex<ConnState>,
}

struct ConnState {
    client: Result<RaftTransportClient<Channel>, String>,
    /// When the connection last answered a call.
    last_answer: Instant,
    /// When a client last took or used this connection.
    used: Instant,
}

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            target,
            conn: self.conn(target, &node.raft_addr),
            in_flight: false,
            signer: self.signer.clone(),
            durable: self.durable.clone(),
            budget: START_APPEND_BYTES,
            sent_entries: 0,
        }
    }
}

/// A lazily connected client of `addr`'s Raft transport.
fn connect(addr: &str) -> Result<RaftTransportClient<Channel>, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            // Pings find a connection that stopped answering (a peer gone, or TCP in a
            // long retransmission back-off) within seconds; hyper then drops it and
            // the channel dials again.
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(STALE)
                .keep_alive_while_idle(true)
                .connect_lazy()
        })
        .map(|ch| {
            RaftTransportClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
        .map_err(|e| e.to_string())
}

pub struct Peer {
    target: NodeId,
    conn: Arc<Conn>,
    /// Set while a call is in flight; still set at the next call when openraft dropped
    /// the previous one at its deadline.
    in_flight: bool,
    signer: Arc<Signer>,
    durable: Durability,
    /// Bytes of entries the next append may carry.
    budget: usize,
    /// Entries the call in flight carried.
    sent_entries: usize,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.in_flight {
            self.redial_if_stale("a call was dropped at its deadline");
        }
        // A clone shares the connection (tonic channels are handles).
        let client = {
            let mut state = self.conn.state();
            state.used = Instant::now();
            state.client.clone()
        };
        let mut client = match client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&StrErr(e)))),
        };
        let data =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let proof = self.signer.sign(Purpose::Raft, kind.path(), &data, &[]);
        let mut request = tonic::Request::new(RaftMessage {
            data,
            proof: String::new(),
        });
        request.set_timeout(option.hard_ttl());
        if let Ok(v) = proof.parse() {
            request.metadata_mut().insert(PROOF_HEADER, v);
        }
        self.in_flight = true;
        let started = Instant::now();
        let resp = match kind {
            Kind::Append => client.append_entries(request).await,
            Kind::Vote => client.vote(request).await,
            Kind::Snapshot => client.install_snapshot(request).await,
        };
        self.in_flight = false;
        let msg = match resp {
            Ok(msg) => {
                self.conn.state().last_answer = Instant::now();
                msg
            }
            Err(s) => {
                tracing::debug!(target_node = self.target, code = ?s.code(), took = ?started.elapsed(), error = %s.message(), source = ?std::error::Error::source(&s), "raft call failed");
                self.redial_if_stale("a call failed");
                return Err(match s.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&s)),
                    _ => RPCError::Network(NetworkError::new(&s)),
                });
            }
        };
        let res: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&msg.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl Peer {
    /// A timed-out or broken call may leave its TCP connection in a long retransmission
    /// back-off (packets lost while the peer was busy or its tunnel re-keyed), and every
    /// later call would wait on it: a connection that has answered nothing for `STALE`
    /// is replaced. Not sooner: under load a single call misses openraft's deadline (the
    /// heartbeat interval) while the connection is sound, and replacing every such
    /// connection at once made each new one miss the deadline too — a mesh of 25 on
    /// two cores replicated nothing for 15 s that way (BENCHMARKS.md).
    fn redial_if_stale(&mut self, why: &str) {
        let mut state = self.conn.state();
        if state.last_answer.elapsed() >= STALE {
            tracing::debug!(target_node = self.target, why, silent = ?state.last_answer.elapsed(), "raft connection answers nothing; dialing afresh");
            state.client = connect(&self.conn.addr);
            // The fresh connection gets its own chance.
            state.last_answer = Instant::now();
        }
    }
}

/// How long a connection may answer nothing before it is replaced.
const STALE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
pub enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl Kind {
    /// What a proof of this kind of message signs as its path: a vote's proof is no
    /// good as an append's.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Append => "raft/append",
            Kind::Vote => "raft/vote",
            Kind::Snapshot => "raft/snapshot",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft makes a new client for every member at each membership change: the
    /// new one must ride the old one's connection, not dial again.
    #[tokio::test]
    async fn clients_for_the_same_member_share_one_connection() {
        let signer = Signer::new(
            "me",
            "eBAIZCV/idFvXEcPcD9yqrXOzqcNSGLgdtlrNjo+tkU=",
            "XJWwAGPx6RCS9sbUT83DE418349AiNbWhBk/H90Tjlk=",
        )
        .unwrap();
        let net = Network::new(Arc::new(signer), Durability::new().0);
        let a = net.conn(1, "10.0.0.1:9443");
        let again = net.conn(1, "10.0.0.1:9443");
        assert!(Arc::ptr_eq(&a, &again), "same member, same address");
        let other = net.conn(2, "10.0.0.2:9443");
        assert!(!Arc::ptr_eq(&a, &other));
        // A member that moved gets a connection to its new address.
        let moved = net.conn(1, "10.0.0.9:9443");
        assert!(!Arc::ptr_eq(&a, &moved));
        assert_eq!(moved.addr, "10.0.0.9:9443");
        // Unused for longer than POOL_IDLE, with no client holding it: dropped.
        drop((a, again, moved));
        net.pool.lock().unwrap().get(&2).unwrap().state().used = Instant::now() - POOL_IDLE;
        drop(other);
        let _ = net.conn(3, "10.0.0.3:9443");
        let pool = net.pool.lock().unwrap();
        assert!(!pool.contains_key(&2), "idle connection pruned");
        assert!(pool.contains_key(&1), "recently used connection kept");
    }

    #[test]
    fn appends_carry_a_prefix_within_the_budget_and_at_least_one_entry() {
        let entries: Vec<Vec<u8>> = (0..10).map(|_| vec![7u8; 1000]).collect();
        assert_eq!(fitting(&entries, 10_000), 9, "length prefixes count too");
        assert_eq!(fitting(&entries, 1_000_000), 10);
        assert_eq!(fitting(&entries, 10), 1, "one entry goes whatever its size");
        assert_eq!(fitting::<Vec<u8>>(&[], 10), 0);
    }
}

#[derive(Debug)]
struct StrErr(String);
impl std::fmt::Display for StrErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StrErr {}

impl RaftNetwork<TypeConfig> for Peer {
    /// Retry an unreachable peer soon: a joiner becomes reachable the moment its
    /// WireGuard handshake completes.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // The last append was dropped at its deadline while carrying several entries:
        // too much for this follower now.
        if self.in_flight && self.sent_entries > 1 {
            self.budget = (self.budget / 4).max(MIN_APPEND_BYTES);
        }
        // Followers learn a commit only once the leader's own copy is durable: a
        // heartbeat waits for it (a sync is under way), entries go now and carry the
        // last commit that is.
        if let Some(c) = rpc.leader_commit
            && !self.durable.may_announce(c.index)
        {
            if rpc.entries.is_empty() {
                self.durable
                    .wait(c.index)
                    .await
                    .map_err(|e| RPCError::Network(NetworkError::new(&StrErr(e))))?;
            } else {
                rpc.leader_commit = rpc
                    .prev_log_id
                    .filter(|p| *p <= c && self.durable.may_announce(p.index));
            }
        }
        let keep = fitting(&rpc.entries, self.budget);
        let partial = keep < rpc.entries.len();
        // Send a prefix; openraft sends the rest next.
        rpc.entries.truncate(keep);
        self.sent_entries = keep;
        let last = rpc.entries.last().map(|e| e.log_id);
        let resp = self.call(Kind::Append, &rpc, &option).await?;
        if partial {
            self.budget = (self.budget * 2).min(MAX_APPEND_BYTES);
        }
        match resp {
            AppendEntriesResponse::Success if partial => {
                Ok(AppendEntriesResponse::PartialSuccess(last))
            }
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Kind::Vote, &rpc, &option).await
    }
}
