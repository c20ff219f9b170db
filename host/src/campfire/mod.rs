//! Campfire: two parties that share a `camp://` URL — a pre-shared key and the TURN
//! servers to meet at — find each other with no other rendezvous, and a node joins a
//! mesh that way (`webmesh --join camp://...`).
//!
//! - The URL: `camp://PSK@HOST:PORT[,HOST:PORT...]`, the PSK 32 random bytes in
//!   base64url.
//! - The meeting place: the TURN server's UDP port also takes `v1.CampfireMessage`s
//!   (protobuf; their first byte, 0x08, is neither STUN's nor ChannelData's). A room is
//!   named by a hash of the PSK (`lufrag`); only the node that runs the TURN server opens
//!   rooms (`--campfire-psk`), so strangers cannot use it as a message board. The server
//!   forwards ANNOUNCE to the room's host and OFFER / ANSWER / CANDIDATE to the member
//!   named in `rufrag` ([`rooms`], sans IO).
//! - What they say is sealed with the PSK (ChaCha20-Poly1305, the header fields as
//!   associated data): the server and anyone on the path see neither SDP nor addresses
//!   beyond their own.
//! - What they set up: a WebRTC data channel from the joiner to the host's own API
//!   (`datachannel`), which the joiner's node reaches through a local TCP port
//!   ([`join`]); the host side is [`host`].

pub mod host;
pub mod join;
pub mod rooms;

use std::net::SocketAddr;

use base64::Engine as _;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use webmesh_api::v1::CampfireMessage;

/// Longest sealed payload taken (an SDP fits with room to spare).
pub const MAX_DATA: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampfireError {
    #[error("invalid camp URL {0:?}: {1}")]
    Url(String, String),
    #[error("a message that does not open with this campfire's key")]
    Seal,
}

/// The pre-shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    pub fn generate() -> Psk {
        Psk(rand::random())
    }

    pub fn parse(s: &str) -> Result<Psk, String> {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| "the key must be base64url".to_string())?;
        Ok(Psk(b
            .try_into()
            .map_err(|_| "the key must be 32 bytes".to_string())?))
    }

    pub fn text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    fn derive(&self, label: &str) -> [u8; 32] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&k, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The room's name at the TURN server (it tells nothing of the key).
    pub fn room(&self) -> String {
        self.derive("webmesh campfire room v1")[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn key(&self) -> LessSafeKey {
        let k = self.derive("webmesh campfire key v1");
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("a 32-byte key"))
    }
}

/// A `camp://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampUrl {
    pub psk: Psk,
    pub servers: Vec<SocketAddr>,
}

impl CampUrl {
    pub fn parse(url: &str) -> Result<CampUrl, CampfireError> {
        let bad = |why: &str| CampfireError::Url(redact(url), why.to_string());
        let rest = url
            .strip_prefix("camp://")
            .ok_or_else(|| bad("it must start with camp://"))?;
        let (key, hosts) = rest
            .split_once('@')
            .ok_or_else(|| bad("it must be camp://PSK@HOST:PORT"))?;
        let psk = Psk::parse(key).map_err(|e| bad(&e))?;
        let hosts = hosts.trim_end_matches('/');
        let servers = hosts
            .split(',')
            .map(|h| h.parse::<SocketAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("the TURN servers must be IP:PORT, comma-separated"))?;
        if servers.is_empty() || servers.len() > 8 {
            return Err(bad("it names 1 to 8 TURN servers"));
        }
        Ok(CampUrl { psk, servers })
    }
}

impl std::fmt::Display for CampUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self.servers.iter().map(|s| s.to_string()).collect();
        write!(f, "camp://{}@{}", self.psk.text(), hosts.join(","))
    }
}

/// A URL for a log or an error: the key left out.
pub fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((_, hosts)) => format!("camp://…@{hosts}"),
        None => url.chars().take(64).collect(),
    }
}

/// What a sealed message's header binds.
fn aad(m: &CampfireMessage) -> Vec<u8> {
    format!("{}\n{}\n{}\n{}", m.r#type, m.id, m.lufrag, m.rufrag).into_bytes()
}

/// Seals `plain` into `m.data` (a random nonce, then the ciphertext and tag).
pub fn seal(psk: &Psk, m: &mut CampfireMessage, plain: &[u8]) {
    let nonce: [u8; 12] = rand::random();
    let mut buf = plain.to_vec();
    psk.key()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(m)),
            &mut buf,
        )
        .expect("sealing fits");
    let mut data = nonce.to_vec();
    data.extend(buf);
    m.data = data;
}

/// Opens `m.data`; fails for another key, a changed header or changed data.
pub fn open(psk: &Psk, m: &CampfireMessage) -> Result<Vec<u8>, CampfireError> {
    if m.data.len() < 12 + aead::CHACHA20_POLY1305.tag_len() || m.data.len() > MAX_DATA {
        return Err(CampfireError::Seal);
    }
    let (nonce, rest) = m.data.split_at(12);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CampfireError::Seal)?;
    let mut buf = rest.to_vec();
    let plain = psk
        .key()
        .open_in_place(nonce, Aad::from(aad(m)), &mut buf)
        .map_err(|_| CampfireError::Seal)?;
    Ok(plain.to_vec())
}

/// Whether a datagram on the TURN port looks like a campfire message (a protobuf
/// whose first field is `type`).
pub fn is_campfire(b: &[u8]) -> bool {
    b.first() == Some(&0x08)
}

/// A random client ID.
pub fn client_id() -> String {
    let b: [u8; 8] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::campfire_message::MessageType;

    #[test]
    fn urls_round_trip_and_bad_ones_are_refused_without_the_key() {
        let u = CampUrl {
            psk: Psk([7; 32]),
            servers: vec![
                "203.0.113.1:3478".parse().unwrap(),
                "[2001:db8::1]:3478".parse().unwrap(),
            ],
        };
        let text = u.to_string();
        assert!(text.starts_with("camp://BwcH"));
        assert_eq!(CampUrl::parse(&text).unwrap(), u);
        for bad in [
            "http://x@1.2.3.4:3478",
            "camp://1.2.3.4:3478",
            "camp://short@1.2.3.4:3478",
            "camp://BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc@host:3478",
        ] {
            let e = CampUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("BwcHBwcH"), "the key leaks: {e}");
        }
    }

    #[test]
    fn sealed_messages_open_only_with_the_key_and_their_header() {
        let psk = Psk([1; 32]);
        let mut m = CampfireMessage {
            r#type: MessageType::Offer as i32,
            id: "a".into(),
            lufrag: psk.room(),
            rufrag: "b".into(),
            ..Default::default()
        };
        seal(&psk, &mut m, b"v=0 the offer");
        assert!(!m.data.windows(3).any(|w| w == b"v=0"));
        assert_eq!(open(&psk, &m).unwrap(), b"v=0 the offer");
        assert_eq!(open(&Psk([2; 32]), &m), Err(CampfireError::Seal));
        let mut moved = m.clone();
        moved.rufrag = "c".into();
        assert_eq!(open(&psk, &moved), Err(CampfireError::Seal));
        let mut cut = m.clone();
        cut.data.truncate(10);
        assert_eq!(open(&psk, &cut), Err(CampfireError::Seal));
        // Rooms depend on the key, and say nothing of it.
        assert_ne!(Psk([1; 32]).room(), Psk([2; 32]).room());
        assert_eq!(psk.room().len(), 32);
        let b = prost::Message::encode_to_vec(&m);
        assert!(is_campfire(&b));
    }
}
