//! `v1.Mesh` (nodes and the graph, from this node's replica) and `v1.PeerDiscovery`
//! (the Raft members and where their APIs answer, for joiners).

use std::net::{IpAddr, SocketAddr};

use openraft::ServerState;
use tonic::{Request, Response, Status};
use webmesh_api::v1::mesh_server::Mesh;
use webmesh_api::v1::peer_discovery_server::PeerDiscovery;
use webmesh_api::v1::{
    ClusterStatus, GetNodeRequest, ListRaftPeersResponse, MeshEdge, MeshGraph, MeshNode, NodeList,
    RaftPeer,
};

use super::authorization::{self, Read, may_read};
use super::identity::Identity;
use super::{internal, read_all};
use crate::mesh::{graph, ids, keys};
use crate::raft::RaftNode;

#[derive(Clone)]
pub struct MeshService {
    raft: RaftNode,
}

impl MeshService {
    pub fn new(raft: RaftNode) -> MeshService {
        MeshService { raft }
    }

    /// Node records and the graph are the state: members, or users with a role on all.
    fn may_read<T>(&self, req: &Request<T>) -> Result<(), Status> {
        may_read(
            authorization::policy(&self.raft)?.as_deref(),
            &Identity::of(req).caller,
            Read::State,
        )
    }

    fn nodes(&self) -> Result<Vec<MeshNode>, Status> {
        let mut nodes: Vec<MeshNode> = read_all(&self.raft.engine, keys::NODES)?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        for n in &mut nodes {
            n.cluster_status = cluster_status(&self.raft, &n.id) as i32;
        }
        Ok(nodes)
    }

    fn edges(&self) -> Result<Vec<MeshEdge>, Status> {
        Ok(read_all(&self.raft.engine, keys::EDGES)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }
}

/// A node's place in Raft, as this node sees it.
pub fn cluster_status(raft: &RaftNode, name: &str) -> ClusterStatus {
    let id = ids::raft_id(name);
    let m = raft.metrics();
    let membership = m.membership_config.membership();
    if membership.get_node(&id).is_none_or(|n| n.name != name) {
        return ClusterStatus::Unknown;
    }
    if m.current_leader == Some(id) {
        return ClusterStatus::ClusterLeader;
    }
    if name == raft.name && m.state == ServerState::Leader {
        return ClusterStatus::ClusterLeader;
    }
    if membership.voter_ids().any(|v| v == id) {
        ClusterStatus::ClusterVoter
    } else {
        ClusterStatus::ClusterNonVoter
    }
}

#[tonic::async_trait]
impl Mesh for MeshService {
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<MeshNode>, Status> {
        self.may_read(&req)?;
        let id = req.into_inner().id;
        ids::validate_node_id(&id)
            .map_err(|r| Status::invalid_argument(format!("id: {id:?} {r}")))?;
        let entry = self
            .raft
            .engine
            .get(&keys::node(&id))
            .map_err(|e| internal("reading the state", e))?
            .ok_or_else(|| Status::not_found(format!("no node {id:?} in the mesh")))?;
        let mut node: MeshNode = serde_json::from_str(&entry.value)
            .map_err(|e| internal(&format!("stored node {id}"), e))?;
        node.cluster_status = cluster_status(&self.raft, &id) as i32;
        Ok(Response::new(node))
    }

    async fn list_nodes(&self, req: Request<()>) -> Result<Response<NodeList>, Status> {
        self.may_read(&req)?;
        Ok(Response::new(NodeList {
            nodes: self.nodes()?,
        }))
    }

    async fn get_mesh_graph(&self, req: Request<()>) -> Result<Response<MeshGraph>, Status> {
        self.may_read(&req)?;
        let nodes: Vec<String> = self.nodes()?.into_iter().map(|n| n.id).collect();
        let edges = self.edges()?;
        let dot = graph::dot(&nodes, &edges);
        Ok(Response::new(MeshGraph { nodes, edges, dot }))
    }
}

#[derive(Clone)]
pub struct DiscoveryService {
    raft: RaftNode,
}

impl DiscoveryService {
    pub fn new(raft: RaftNode) -> DiscoveryService {
        DiscoveryService { raft }
    }
}

#[tonic::async_trait]
impl PeerDiscovery for DiscoveryService {
    /// Any authenticated caller may discover the members (a joiner with credentials).
    async fn list_peers(
        &self,
        req: Request<()>,
    ) -> Result<Response<ListRaftPeersResponse>, Status> {
        may_read(
            authorization::policy(&self.raft)?.as_deref(),
            &Identity::of(&req).caller,
            Read::Peers,
        )?;
        let m = self.raft.metrics();
        let membership = m.membership_config.membership();
        let mut peers = Vec::new();
        for (id, member) in membership.nodes() {
            // A joiner outside the mesh needs the public address: the node's primary
            // endpoint with its API port; else the address members use.
            let record: Option<MeshNode> = self
                .raft
                .engine
                .get(&keys::node(&member.name))
                .ok()
                .flatten()
                .and_then(|e| serde_json::from_str(&e.value).ok());
            let address = record
                .as_ref()
                .and_then(|n| {
                    let ip: IpAddr = n.primary_endpoint.parse().ok()?;
                    Some(SocketAddr::new(ip, u16::try_from(n.grpc_port).ok()?).to_string())
                })
                .unwrap_or_else(|| member.grpc_addr.clone());
            peers.push(RaftPeer {
                id: member.name.clone(),
                address,
                voter: membership.voter_ids().any(|v| v == *id),
                leader: m.current_leader == Some(*id),
            });
        }
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(ListRaftPeersResponse { peers }))
    }
}
