//! `webmesh.internal.Turn`: credentials for this node's TURN server, for members only.

use tonic::{Request, Response, Status};
use webmesh_api::internal::turn_server::Turn;
use webmesh_api::internal::{TurnCredentialsRequest, TurnCredentialsResponse};

use super::{Caller, Identity};

pub struct TurnService(pub crate::turn::Issuer);

#[tonic::async_trait]
impl Turn for TurnService {
    async fn credentials(
        &self,
        req: Request<TurnCredentialsRequest>,
    ) -> Result<Response<TurnCredentialsResponse>, Status> {
        // A node that proved its registered key (or this node, on the admin socket):
        // the relay is the mesh's, not the internet's.
        match Identity::of(&req).caller {
            Caller::Node(id) => Ok(Response::new(self.0.issue(&id))),
            Caller::User(u) => Err(Status::permission_denied(format!(
                "{u:?}: TURN credentials are for mesh nodes, which prove their WireGuard key"
            ))),
            Caller::Anonymous => Err(Status::unauthenticated(
                "TURN credentials are for mesh nodes: sign the request with the node's key",
            )),
        }
    }
}
