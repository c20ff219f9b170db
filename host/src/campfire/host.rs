//! The serving side of a campfire: the node that runs the TURN server hosts a room; a
//! joiner that announces itself gets an offer for a data channel to this node's own
//! API, sealed with the PSK, and its sealed answer completes the session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info};
use webmesh_api::v1::CampfireMessage;
use webmesh_api::v1::campfire_message::MessageType;

use super::Psk;
use crate::datachannel::{self, Proto, Signal, Target};

/// Joiners being answered at once.
const MAX_PENDING: usize = 8;
/// A joiner that announces again after this gets a new offer (its last was lost).
const REOFFER_AFTER: Duration = Duration::from_secs(5);

/// Hosts the room of `psk`: messages for the host come in on `inbox`, messages to
/// members go out on `outbox`; sessions reach `api` (this node's API) and bind their
/// UDP sockets at `bind`.
pub async fn run(
    psk: Psk,
    host_id: String,
    api: SocketAddr,
    bind: std::net::IpAddr,
    mut inbox: mpsc::Receiver<CampfireMessage>,
    outbox: mpsc::Sender<CampfireMessage>,
) {
    let room = psk.room();
    let mut sessions: HashMap<String, (mpsc::Sender<Signal>, Instant)> = HashMap::new();
    while let Some(m) = inbox.recv().await {
        let Ok(kind) = MessageType::try_from(m.r#type) else {
            continue;
        };
        match kind {
            MessageType::Announce => {
                if sessions
                    .get(&m.id)
                    .is_some_and(|(_, at)| at.elapsed() < REOFFER_AFTER)
                {
                    continue;
                }
                sessions.retain(|_, (tx, at)| {
                    !tx.is_closed() && at.elapsed() < Duration::from_secs(60)
                });
                if sessions.len() >= MAX_PENDING {
                    debug!("too many campfire joiners at once");
                    continue;
                }
                let target = Target {
                    proto: Proto::Tcp,
                    addr: api,
                };
                let session = match datachannel::open(bind, target, ()).await {
                    Ok(s) => s,
                    Err(e) => {
                        info!(error = %e, "campfire: cannot offer a data channel");
                        continue;
                    }
                };
                let mut offer = CampfireMessage {
                    r#type: MessageType::Offer as i32,
                    id: host_id.clone(),
                    lufrag: room.clone(),
                    rufrag: m.id.clone(),
                    ..Default::default()
                };
                super::seal(&psk, &mut offer, session.offer.as_bytes());
                info!(joiner = %m.id, "campfire: a joiner announced itself; offer sent");
                sessions.insert(m.id.clone(), (session.signals, Instant::now()));
                let _ = outbox.send(offer).await;
            }
            MessageType::Answer | MessageType::Candidate => {
                let Some((tx, _)) = sessions.get(&m.id) else {
                    continue;
                };
                let Ok(plain) = super::open(&psk, &m) else {
                    debug!(joiner = %m.id, "campfire: a message that does not open with the key");
                    continue;
                };
                let Ok(text) = String::from_utf8(plain) else {
                    continue;
                };
                let s = if kind == MessageType::Answer {
                    Signal::Answer(text)
                } else {
                    Signal::Candidate(text)
                };
                let _ = tx.send(s).await;
            }
            _ => {}
        }
    }
}
