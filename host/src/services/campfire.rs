//! `v1.Campfire` on the API port of a node that hosts a campfire: the same rooms as
//! the TURN port's, over gRPC, for a party that cannot send UDP there. No identity is
//! asked: the room's name (a hash of the campfire's key) is what a member must know,
//! and what it says is sealed with the key. A member's stream is named by the metadata
//! `x-webmesh-campfire-room` and `x-webmesh-campfire-id`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use webmesh_api::v1::CampfireMessage;
use webmesh_api::v1::campfire_message::MessageType;
use webmesh_api::v1::campfire_server::Campfire;

use crate::turn::GrpcCampfire;

pub const ROOM_HEADER: &str = "x-webmesh-campfire-room";
pub const ID_HEADER: &str = "x-webmesh-campfire-id";

pub struct CampfireService(pub mpsc::Sender<GrpcCampfire>);

impl CampfireService {
    async fn send(&self, m: CampfireMessage, want: MessageType) -> Result<Response<()>, Status> {
        if m.r#type != want as i32 {
            return Err(Status::invalid_argument(format!(
                "type: this method sends {} messages",
                want.as_str_name()
            )));
        }
        if m.id.is_empty() || m.id.len() > 64 || m.lufrag.is_empty() || m.lufrag.len() > 64 {
            return Err(Status::invalid_argument(
                "id and lufrag (the room) must be 1 to 64 characters",
            ));
        }
        if m.data.len() > crate::campfire::MAX_DATA {
            return Err(Status::invalid_argument(format!(
                "data: at most {} bytes",
                crate::campfire::MAX_DATA
            )));
        }
        tokio::time::timeout(Duration::from_secs(5), self.0.send(GrpcCampfire::Send(m)))
            .await
            .map_err(|_| Status::unavailable("the campfire is busy; retry"))?
            .map_err(|_| Status::unavailable("the campfire is closed"))?;
        Ok(Response::new(()))
    }
}

type Messages = ReceiverStream<Result<CampfireMessage, Status>>;

#[tonic::async_trait]
impl Campfire for CampfireService {
    async fn announce(&self, r: Request<CampfireMessage>) -> Result<Response<()>, Status> {
        self.send(r.into_inner(), MessageType::Announce).await
    }

    async fn send_offer(&self, r: Request<CampfireMessage>) -> Result<Response<()>, Status> {
        self.send(r.into_inner(), MessageType::Offer).await
    }

    async fn send_answer(&self, r: Request<CampfireMessage>) -> Result<Response<()>, Status> {
        self.send(r.into_inner(), MessageType::Answer).await
    }

    async fn send_candidate(&self, r: Request<CampfireMessage>) -> Result<Response<()>, Status> {
        self.send(r.into_inner(), MessageType::Candidate).await
    }

    type ReceiveMessagesStream = Messages;

    async fn receive_messages(&self, r: Request<()>) -> Result<Response<Messages>, Status> {
        let header = |name: &str| {
            r.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 64)
                .map(str::to_string)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{name}: the metadata names the room and the member (1 to 64 characters)"
                    ))
                })
        };
        let (room, id) = (header(ROOM_HEADER)?, header(ID_HEADER)?);
        let (tx, rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        self.0
            .send(GrpcCampfire::Subscribe { room, id, tx })
            .await
            .map_err(|_| Status::unavailable("the campfire is closed"))?;
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(m) = rx.recv().await {
                if out_tx.send(Ok(m)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}
