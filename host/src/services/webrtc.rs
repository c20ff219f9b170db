//! `v1.WebRTC`: a client opens a data channel to `dst:port` through a node of the
//! mesh (served with `--ice`). The node the request names runs the session
//! (`datachannel`); another node in between relays the signalling to it over
//! `Node.NegotiateDataChannel`.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use webmesh_api::v1::web_rtc_server::WebRtc;
use webmesh_api::v1::{
    DataChannelNegotiation, DataChannelOffer, RuleResource, RuleVerb, StartDataChannelRequest,
};

use super::authorization;
use super::identity::{Caller, Identity};
use crate::ice::node::IceHub;
use crate::mesh::ids;
use crate::mesh::rbac::Action;
use crate::raft::RaftNode;

pub struct WebRtcService {
    pub raft: RaftNode,
    pub hub: Arc<IceHub>,
    /// STUN servers to offer clients (`stun:HOST:PORT`): this node's TURN server's.
    pub stun: Vec<String>,
}

type OfferStream = std::pin::Pin<Box<dyn Stream<Item = Result<DataChannelOffer, Status>> + Send>>;

#[tonic::async_trait]
impl WebRtc for WebRtcService {
    type StartDataChannelStream = OfferStream;

    async fn start_data_channel(
        &self,
        req: Request<Streaming<StartDataChannelRequest>>,
    ) -> Result<Response<OfferStream>, Status> {
        let caller = Identity::of(&req).caller;
        if caller == Caller::Anonymous {
            return Err(Status::unauthenticated(
                "a data channel takes an identity (the AUTH plugin's credentials, or a proof of a member's key)",
            ));
        }
        let mut inbound = req.into_inner();
        let first = super::first_message(&mut inbound).await?;
        ids::validate_node_id(&first.node_id)
            .map_err(|why| Status::invalid_argument(format!("node_id: {why}")))?;
        authorization::authorize(
            &self.raft,
            &caller.principal(),
            &caller,
            &[Action::new(
                RuleResource::ResourceDataChannels,
                first.node_id.clone(),
                RuleVerb::VerbPut,
            )],
        )?;
        let opening = DataChannelNegotiation {
            proto: first.proto.clone(),
            src: caller.to_header(),
            dst: first.dst.clone(),
            port: first.port,
            ..Default::default()
        };
        // What the client sends next: its answer and candidates.
        let rest = inbound.map(|m| {
            m.map(|r| DataChannelNegotiation {
                answer: r.answer,
                candidate: r.candidate,
                ..Default::default()
            })
        });
        let out = self
            .hub
            .clone()
            .data_channel(first.node_id.clone(), opening, Box::pin(rest))
            .await?;
        let stun = self.stun.clone();
        Ok(Response::new(Box::pin(out.map(move |m| {
            m.map(|n| DataChannelOffer {
                stun_servers: if n.offer.is_empty() {
                    vec![]
                } else {
                    stun.clone()
                },
                offer: n.offer,
                candidate: n.candidate,
            })
        }))))
    }
}
