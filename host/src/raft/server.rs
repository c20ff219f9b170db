//! Raft transport, server side: hands decoded openraft messages to the local Raft.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use webmesh_api::internal::RaftMessage;
use webmesh_api::internal::raft_transport_server::RaftTransport;

use super::types::Raft;

pub struct RaftServer {
    raft: Raft,
}

impl RaftServer {
    pub fn new(raft: Raft) -> RaftServer {
        RaftServer { raft }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    postcard::from_bytes(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    postcard::to_stdvec(v)
        .map(|data| Response::new(RaftMessage { data }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let res = self.raft.append_entries(decode(req)?).await;
        encode(&res)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let res = self.raft.vote(decode(req)?).await;
        encode(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let res = self.raft.install_snapshot(decode(req)?).await;
        encode(&res)
    }
}
