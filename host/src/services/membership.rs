//! Join, Update and Leave on the leader: state changes, Raft membership, and the
//! joiner's view of the mesh.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tonic::Status;
use tracing::{debug, info, warn};
use webmesh_api::v1::{JoinRequest, JoinResponse, MeshNode, UpdateRequest};

use super::propose_status;
use crate::mesh::membership::{self, FieldError};
use crate::mesh::{keys, peers, writes};
use crate::plugins::Ipam;
use crate::raft::{Member, RaftNode};
use crate::store::ops::Op;
use crate::store::views::load_view;

pub fn field_status(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// How a member is reached inside the mesh: its mesh address (IPv4 unless it prefers
/// IPv6 or has none) and ports.
pub fn member_for(node: &MeshNode, prefer_ipv6: bool) -> Member {
    let ip = membership::mesh_ip(node, prefer_ipv6);
    let addr = |port: i32| match ip {
        Some(ip) => std::net::SocketAddr::new(ip, port as u16).to_string(),
        None => String::new(),
    };
    Member {
        name: node.id.clone(),
        raft_addr: addr(node.raft_port),
        grpc_addr: addr(node.grpc_port),
    }
}

/// A member reached on its primary endpoint (meshes without WireGuard).
pub fn underlay_member(node: &MeshNode) -> Option<Member> {
    let ip: IpAddr = node.primary_endpoint.parse().ok()?;
    Some(Member {
        name: node.id.clone(),
        raft_addr: std::net::SocketAddr::new(ip, node.raft_port as u16).to_string(),
        grpc_addr: std::net::SocketAddr::new(ip, node.grpc_port as u16).to_string(),
    })
}

fn mesh_node(json: Option<&str>) -> Result<MeshNode, Status> {
    json.map(serde_json::from_str)
        .transpose()
        .map_err(|e| Status::internal(format!("stored node record: {e}")))?
        .ok_or_else(|| Status::internal("registration returned no record"))
}

/// How many joined-but-unreached nodes the mesh takes, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_pending: usize,
    pub timeout: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            max_pending: 32,
            timeout: Duration::from_secs(600),
        }
    }
}

/// A join, on the leader. `handler` is the node the joiner contacted (its first peer).
pub async fn join(
    raft: &RaftNode,
    req: &JoinRequest,
    handler: &str,
    underlay: bool,
    ipam: &Ipam,
    admission: Admission,
) -> Result<JoinResponse, Status> {
    // One join at a time from reading the view to committing: a join's edges depend on
    // the nodes already there, and two joins that each read the view before the other
    // committed would miss the edges between them (two public nodes, two nodes behind
    // NATs that negotiate ICE). The view is kept current from state events: decoding
    // every record per join would cost tens of milliseconds at 10,000 nodes.
    let mut cached = raft.join_view.lock().await;
    let follower = cached.get_or_insert_with(|| crate::raft::follow::ViewFollower::new(raft));
    if follower.catch_up().is_none() {
        return Err(Status::unavailable("raft stopped"));
    }
    let view = &follower.view;
    if !req.direct_peers.is_empty() && view.ice_servers(&req.id).is_empty() {
        return Err(Status::failed_precondition(
            "direct_peers: no public node of this mesh negotiates ICE (run one with --ice); \
             join without them",
        ));
    }
    writes::check_routes("routes", &req.routes, view)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut record = membership::node_record(req);
    // IPAM plugins choose first; the state machine still checks uniqueness, and
    // allocates what no plugin chose.
    let (v4, v6) = ipam
        .allocate(
            &req.id,
            req.assign_ipv4,
            view.ipv4_network,
            view.ipv6_network,
        )
        .await?;
    if !v4.is_empty() {
        record.private_ipv4 = v4.clone();
    }
    if !v6.is_empty() {
        record.private_ipv6 = v6.clone();
    }
    let rejoin = view.nodes.contains_key(&req.id);
    // A new node counts as pending until the leader reaches it; too many pending
    // (joined, never seen) nodes and joins wait.
    let pending = raft
        .engine
        .list(keys::PENDING)
        .map_err(|e| Status::internal(e.to_string()))?
        .len();
    if !rejoin && pending >= admission.max_pending {
        ipam.release(&req.id, &v4, &v6).await;
        return Err(Status::unavailable(format!(
            "{pending} nodes joined and were not reached yet (this mesh takes {}); retry \
             once they come up or are removed (after {:?})",
            admission.max_pending, admission.timeout
        )));
    }
    let mut ops = vec![Op::RegisterNode {
        node_json: serde_json::to_string(&record).map_err(|e| Status::internal(e.to_string()))?,
        assign_ipv4: req.assign_ipv4,
    }];
    ops.extend(membership::default_edges(view, &record, handler));
    ops.extend(
        membership::ice_edges(view, &record, &req.direct_peers)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
    );
    let deadline = crate::store::ops::now_ms() + admission.timeout.as_millis() as u64;
    ops.push(Op::Put {
        key: format!("{}{}", keys::PENDING, req.id),
        value: deadline.to_string(),
        ttl_ms: 0,
    });
    if !req.routes.is_empty() {
        ops.push(route_op(&req.id, &req.routes));
    }
    let committed = match raft.propose(ops).await {
        Ok(c) => c,
        Err(e) => {
            if !rejoin {
                ipam.release(&req.id, &v4, &v6).await;
            }
            return Err(propose_status(e));
        }
    };
    debug!(node = %req.id, index = committed.index, "node registered");
    let node = mesh_node(committed.outcome.value.as_deref())?;
    let member = if underlay {
        underlay_member(&node).ok_or_else(|| {
            Status::invalid_argument(
                "primary_endpoint: this mesh runs without WireGuard; joiners must give --endpoint",
            )
        })?
    } else {
        member_for(&node, req.prefer_raft_ipv6)
    };
    // Only a joiner that asks for a vote takes part in Raft (a learner until it has
    // caught up); every other member follows the log by stream from a voter
    // (`raft::stream`): no replication stream on the leader per member.
    if req.as_voter {
        raft.add_learner(member).await.map_err(propose_status)?;
        let r = raft.clone();
        let name = req.id.clone();
        tokio::spawn(async move {
            match r
                .promote_when_caught_up(&name, Duration::from_secs(60))
                .await
            {
                Ok(()) => info!(node = %name, "promoted to voter"),
                Err(e) => warn!(node = %name, error = %e, "not promoted to voter"),
            }
        });
    }
    // The commit is applied here before it returns: catching up takes it in.
    if follower.catch_up().is_none() {
        return Err(Status::unavailable("raft stopped"));
    }
    let view = &follower.view;
    let plan = peers::compute(view, &req.id);
    info!(node = %req.id, via = %handler, address_v4 = %node.private_ipv4, address_v6 = %node.private_ipv6, peers = plan.peers.len(), "node joined");
    Ok(JoinResponse {
        address_ipv4: with_network_bits(
            &node.private_ipv4,
            view.ipv4_network.map(|n| n.prefix_len()),
        ),
        address_ipv6: node.private_ipv6.clone(),
        network_ipv4: view.ipv4_network.map(|n| n.to_string()).unwrap_or_default(),
        network_ipv6: view.ipv6_network.map(|n| n.to_string()).unwrap_or_default(),
        peers: plan.peers,
        ice_servers: view.ice_servers(&req.id),
        dns_servers: view.dns_servers(&req.id, |id| raft.is_voter(id)),
        mesh_domain: view.mesh_domain.clone(),
    })
}

/// "10.0.0.5/32" with the mesh network's prefix length: "10.0.0.5/12".
fn with_network_bits(addr: &str, bits: Option<u8>) -> String {
    match (addr.parse::<IpNet>(), bits) {
        (Ok(n), Some(b)) => format!("{}/{b}", n.addr()),
        _ => addr.to_string(),
    }
}

/// The route a node advertises with `routes` on join or update.
fn route_op(node: &str, cidrs: &[String]) -> Op {
    let name = format!("{node}-auto");
    let route = webmesh_api::v1::Route {
        name: name.clone(),
        node: node.to_string(),
        destination_cidrs: cidrs.to_vec(),
        next_hop_node: String::new(),
    };
    Op::Put {
        key: format!("{}{name}", keys::ROUTES),
        value: serde_json::to_string(&route).expect("routes serialize"),
        ttl_ms: 0,
    }
}

/// An update, on the leader: only the set fields change; `as_voter` promotes.
pub async fn update(raft: &RaftNode, req: &UpdateRequest, underlay: bool) -> Result<(), Status> {
    if !req.routes.is_empty() {
        writes::check_routes("routes", &req.routes, &load_view(&raft.engine))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let existing = raft
        .engine
        .get(&keys::node(&req.id))
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| {
            Status::not_found(format!("id: no node {:?} in the mesh; join first", req.id))
        })?;
    let old: MeshNode =
        serde_json::from_str(&existing.value).map_err(|e| Status::internal(e.to_string()))?;
    let new = membership::updated_record(&old, req);
    let mut ops = vec![Op::RegisterNode {
        node_json: serde_json::to_string(&new).map_err(|e| Status::internal(e.to_string()))?,
        assign_ipv4: !old.private_ipv4.is_empty(),
    }];
    if !req.routes.is_empty() {
        ops.push(route_op(&req.id, &req.routes));
    }
    let committed = raft.propose(ops).await.map_err(propose_status)?;
    let node = mesh_node(committed.outcome.value.as_deref())?;
    let in_raft = raft.member(crate::mesh::ids::raft_id(&req.id)).is_some();
    // A Raft member that moved is re-addressed; a member that follows by stream and is
    // to vote becomes a learner first (its node hands over from the stream to Raft).
    if (in_raft && (new.raft_port != old.raft_port || new.grpc_port != old.grpc_port))
        || (!in_raft && req.as_voter)
    {
        let member = match underlay {
            true => underlay_member(&node).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{} has no primary endpoint, which a mesh without WireGuard reaches it on",
                    req.id
                ))
            })?,
            false => member_for(&node, false),
        };
        raft.add_learner(member).await.map_err(propose_status)?;
    }
    if req.as_voter {
        raft.promote_when_caught_up(&req.id, Duration::from_secs(30))
            .await
            .map_err(propose_status)?;
    }
    Ok(())
}

/// A leave, on the leader: the record, edges, auto route and Raft membership go.
pub async fn leave(raft: &RaftNode, id: &str, ipam: &Ipam) -> Result<(), Status> {
    let view = load_view(&raft.engine);
    let Some(node) = view.nodes.get(id).cloned() else {
        return Err(Status::not_found(format!("id: no node {id:?} in the mesh")));
    };
    let mut ops = membership::leave_ops(&view, id);
    ops.push(Op::Delete {
        key: format!("{}{id}-auto", keys::ROUTES),
    });
    ops.push(Op::Delete {
        key: format!("{}{id}", keys::PENDING),
    });
    raft.propose(ops).await.map_err(propose_status)?;
    ipam.release(id, &node.private_ipv4, &node.private_ipv6)
        .await;
    raft.remove_member(id).await.map_err(propose_status)?;
    info!(node = %id, "node left");
    Ok(())
}

/// On the leader, every 2 s: nodes with a pending-join marker that the leader has
/// reached lose it; those never reached within their time are removed (record, edges,
/// addresses, Raft membership) — a joiner that never comes up holds nothing for long.
pub fn spawn_pending_sweeper(raft: RaftNode, ipam: Ipam) -> tokio::task::JoinHandle<()> {
    use tracing::Instrument;
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if !raft.is_leader() {
                    continue;
                }
                let Ok(pending) = raft.engine.list(keys::PENDING) else {
                    continue;
                };
                if pending.is_empty() {
                    continue;
                }
                let m = raft.metrics();
                let now = crate::store::ops::now_ms();
                for e in pending {
                    let id = &e.key[keys::PENDING.len()..];
                    let deadline = e.value.parse().unwrap_or(0);
                    let has_record = raft.engine.get(&keys::node(id)).ok().flatten().is_some();
                    let reached = raft.served.contains(id)
                        || m.replication.as_ref().is_some_and(|r| {
                            r.get(&crate::mesh::ids::raft_id(id))
                                .is_some_and(|matched| matched.is_some())
                        });
                    use crate::mesh::admission::{Pending, pending};
                    let verdict = pending(now, deadline, has_record, reached);
                    let res = match verdict {
                        Pending::Wait => continue,
                        Pending::CameUp | Pending::Gone => raft
                            .propose(vec![Op::Delete { key: e.key.clone() }])
                            .await
                            .map(|_| ())
                            .map_err(propose_status),
                        Pending::Expired => {
                            warn!(node = %id, "joined but was never reached in time: removing it and releasing its addresses");
                            leave(&raft, id, &ipam).await
                        }
                    };
                    if let Err(err) = res {
                        debug!(node = %id, error = %err, "pending join not settled yet");
                    }
                }
            }
        }
        .in_current_span(),
    )
}
