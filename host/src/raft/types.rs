//! openraft type configuration.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::store::ops::{ApplyOutcome, Batch};

/// Raft node ID: [`crate::mesh::ids::raft_id`] of the node's name.
pub type NodeId = u64;

/// What Raft membership records about a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The mesh node ID.
    pub name: String,
    /// `host:port` of its Raft transport.
    pub raft_addr: String,
    /// `host:port` of its public gRPC API.
    pub grpc_addr: String,
}

openraft::declare_raft_types!(
    /// The Raft types of a Webmesh node.
    pub TypeConfig:
        D = Batch,
        R = Vec<ApplyOutcome>,
        NodeId = NodeId,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig>;
