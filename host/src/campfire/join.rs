//! The joining side of a campfire: announce at the URL's TURN servers until the host
//! offers a data channel, answer it, and carry this node's API calls to the host over
//! it from a local TCP port.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::net::{TcpListener, UdpSocket};
use tracing::info;
use webmesh_api::v1::CampfireMessage;
use webmesh_api::v1::campfire_message::MessageType;

use super::{CampUrl, client_id, redact};

/// How long to wait for the host's offer.
pub const OFFER_WITHIN: Duration = Duration::from_secs(60);

/// Meets the host of `url` and returns the local address (127.0.0.1:PORT) whose
/// connections reach its API.
pub async fn dial(url: &CampUrl) -> Result<SocketAddr, String> {
    let where_ = redact(&url.to_string());
    let first = url.servers[0];
    let bind = if first.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("campfire {where_}: {e}"))?;
    // The host candidate: the address that routes to the TURN server.
    let local_ip: IpAddr = {
        let probe = std::net::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        probe
            .connect(first)
            .map_err(|e| format!("campfire {where_}: {e}"))?;
        probe.local_addr().map_err(|e| e.to_string())?.ip()
    };
    let me = client_id();
    let room = url.psk.room();
    let announce = CampfireMessage {
        r#type: MessageType::Announce as i32,
        id: me.clone(),
        lufrag: room.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let deadline = Instant::now() + OFFER_WITHIN;
    let mut buf = vec![0u8; 16 * 1024];
    let (offer, host, via) = loop {
        if Instant::now() > deadline {
            return Err(format!(
                "campfire {where_}: no host answered in {OFFER_WITHIN:?} (is the URL right, and its node up?)"
            ));
        }
        for s in &url.servers {
            let _ = sock.send_to(&announce, s).await;
        }
        let until = Instant::now() + Duration::from_secs(1);
        let mut found = None;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(until.into(), sock.recv_from(&mut buf)).await
        {
            if !url.servers.contains(&from) {
                continue;
            }
            let Ok(m) = CampfireMessage::decode(&buf[..n]) else {
                continue;
            };
            if m.r#type != MessageType::Offer as i32 || m.rufrag != me || m.lufrag != room {
                continue;
            }
            let Ok(plain) = super::open(&url.psk, &m) else {
                continue;
            };
            if let Ok(offer) = String::from_utf8(plain) {
                found = Some((offer, m.id, from));
                break;
            }
        }
        if let Some(f) = found {
            break f;
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let answer = crate::datachannel::answer(&offer, local_ip, listener, ())
        .await
        .map_err(|e| format!("campfire {where_}: {e}"))?;
    let mut m = CampfireMessage {
        r#type: MessageType::Answer as i32,
        id: me,
        lufrag: room,
        rufrag: host,
        ..Default::default()
    };
    super::seal(&url.psk, &mut m, answer.as_bytes());
    let bytes = m.encode_to_vec();
    // Datagrams get lost: the host takes the first and ignores the others.
    for _ in 0..3 {
        let _ = sock.send_to(&bytes, via).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!(campfire = %where_, proxy = %local, "campfire: the host answered; its API is reached through a data channel");
    Ok(local)
}
