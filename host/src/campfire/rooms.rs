//! Campfire rooms at a TURN server (sans IO): who is in which room, and where each
//! message goes. Rooms are opened only by the server's own node (their host); members
//! join by announcing — over UDP at the TURN port, or through the gRPC `Campfire`
//! service — and may then send to the host or another member of the room.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use webmesh_api::v1::CampfireMessage;
use webmesh_api::v1::campfire_message::MessageType;

/// Members one room keeps (the host not counted).
pub const MAX_MEMBERS: usize = 16;
/// Rooms one server keeps.
pub const MAX_ROOMS: usize = 64;
/// A member that has not spoken for this long is forgotten.
pub const MEMBER_TTL: Duration = Duration::from_secs(120);
/// Longest client ID or room name.
const MAX_ID: usize = 64;

/// Where a member is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// At this address, over UDP.
    Udp(SocketAddr),
    /// On its `Campfire.ReceiveMessages` stream (by its ID).
    Grpc,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// A member, at its address.
    Udp(SocketAddr),
    /// A member on its gRPC stream, by ID.
    Grpc(String),
    /// The room's host, this server's node.
    Host,
}

struct Room {
    host: String,
    members: HashMap<String, (At, Instant)>,
}

fn to(at: At, id: &str) -> To {
    match at {
        At::Udp(a) => To::Udp(a),
        At::Grpc => To::Grpc(id.to_string()),
    }
}

#[derive(Default)]
pub struct Rooms {
    rooms: HashMap<String, Room>,
}

impl Rooms {
    /// Opens `room` with this node as its host `host` (false: too many rooms).
    pub fn open(&mut self, room: &str, host: &str) -> bool {
        if !self.rooms.contains_key(room) && self.rooms.len() >= MAX_ROOMS {
            return false;
        }
        self.rooms.insert(
            room.to_string(),
            Room {
                host: host.to_string(),
                members: HashMap::new(),
            },
        );
        true
    }

    pub fn close(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// A message from `from` on the network: where it goes (nowhere, if it is not
    /// for an open room or its sender has not announced itself from there).
    pub fn from_member(
        &mut self,
        now: Instant,
        from: At,
        m: CampfireMessage,
    ) -> Option<(To, CampfireMessage)> {
        if m.id.is_empty()
            || m.id.len() > MAX_ID
            || m.rufrag.len() > MAX_ID
            || m.data.len() > super::MAX_DATA
        {
            return None;
        }
        let room = self.rooms.get_mut(&m.lufrag)?;
        if m.id == room.host {
            return None;
        }
        match MessageType::try_from(m.r#type).ok()? {
            MessageType::Announce => {
                if !room.members.contains_key(&m.id) && room.members.len() >= MAX_MEMBERS {
                    room.members.retain(|_, (_, seen)| now - *seen < MEMBER_TTL);
                    if room.members.len() >= MAX_MEMBERS {
                        return None;
                    }
                }
                room.members.insert(m.id.clone(), (from, now));
                Some((To::Host, m))
            }
            MessageType::Offer | MessageType::Answer | MessageType::Candidate => {
                let (at, seen) = room.members.get_mut(&m.id)?;
                if *at != from {
                    return None;
                }
                *seen = now;
                if m.rufrag == room.host {
                    return Some((To::Host, m));
                }
                let (at, _) = room.members.get(&m.rufrag)?;
                Some((to(*at, &m.rufrag), m))
            }
            MessageType::Unknown => None,
        }
    }

    /// A message from a room's host to one of its members.
    pub fn from_host(&self, m: CampfireMessage) -> Option<(To, CampfireMessage)> {
        let room = self.rooms.get(&m.lufrag)?;
        if m.id != room.host {
            return None;
        }
        let (at, _) = room.members.get(&m.rufrag)?;
        Some((to(*at, &m.rufrag), m))
    }

    /// Forgets members that went quiet.
    pub fn expire(&mut self, now: Instant) {
        for r in self.rooms.values_mut() {
            r.members.retain(|_, (_, seen)| now - *seen < MEMBER_TTL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: MessageType, id: &str, room: &str, to: &str) -> CampfireMessage {
        CampfireMessage {
            r#type: t as i32,
            id: id.into(),
            lufrag: room.into(),
            rufrag: to.into(),
            ..Default::default()
        }
    }

    /// Where a member's message goes, if anywhere.
    fn member(r: &mut Rooms, at: At, t: MessageType, id: &str, room: &str, to: &str) -> Option<To> {
        r.from_member(Instant::now(), at, msg(t, id, room, to))
            .map(|(to, _)| to)
    }

    /// Where the host's message goes, if anywhere.
    fn host(r: &Rooms, t: MessageType, id: &str, to: &str) -> Option<To> {
        r.from_host(msg(t, id, "room", to)).map(|(to, _)| to)
    }

    #[test]
    fn members_meet_the_host_and_strangers_get_nowhere() {
        use MessageType::{Announce, Answer, Offer};
        let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
            "198.51.100.1:4000".parse().unwrap(),
            "198.51.100.2:4000".parse().unwrap(),
            "198.51.100.3:4000".parse().unwrap(),
        );
        let mut r = Rooms::default();
        // No room yet: nothing goes anywhere (the port is no message board).
        assert_eq!(member(&mut r, At::Udp(a), Announce, "ja", "room", ""), None);
        assert!(r.open("room", "host"));
        assert_eq!(
            member(&mut r, At::Udp(a), Announce, "ja", "room", ""),
            Some(To::Host)
        );
        // The host answers the member it names.
        assert_eq!(host(&r, Offer, "host", "ja"), Some(To::Udp(a)));
        // Only from the address it announced from, and only to the room's host or members.
        assert_eq!(
            member(&mut r, At::Udp(a), Answer, "ja", "room", "host"),
            Some(To::Host)
        );
        // A gRPC member is reached on its stream.
        assert_eq!(
            member(&mut r, At::Grpc, Announce, "jg", "room", ""),
            Some(To::Host)
        );
        assert_eq!(host(&r, Offer, "host", "jg"), Some(To::Grpc("jg".into())));
        let refused = [
            // Another address speaking as ja, a stranger writing to ja, ja writing to
            // nobody.
            (At::Udp(b), Answer, "ja", "room", "host"),
            (At::Udp(c), Offer, "jc", "room", "ja"),
            (At::Udp(a), Answer, "ja", "room", "nobody"),
            // Nobody speaks as the host.
            (At::Udp(a), Announce, "host", "room", ""),
            // Another room's name.
            (At::Udp(a), Announce, "ja", "other", ""),
            // Only a gRPC sender speaks as a gRPC member, and only a UDP one as ja.
            (At::Udp(a), Answer, "jg", "room", "host"),
            (At::Grpc, Answer, "ja", "room", "host"),
        ];
        for (at, t, id, room, to) in refused {
            assert_eq!(member(&mut r, at, t, id, room, to), None, "{id} -> {to}");
        }
        // The host speaks to members only.
        assert_eq!(host(&r, Offer, "ja", "ja"), None);
        // Members that went quiet are forgotten.
        r.expire(Instant::now() + MEMBER_TTL + Duration::from_secs(1));
        assert_eq!(host(&r, Offer, "host", "ja"), None);
    }

    #[test]
    fn rooms_and_members_are_bounded() {
        let now = Instant::now();
        let mut r = Rooms::default();
        for i in 0..MAX_ROOMS {
            assert!(r.open(&format!("r{i}"), "h"));
        }
        assert!(!r.open("one-more", "h"));
        for i in 0..MAX_MEMBERS {
            let from = SocketAddr::from(([198, 51, 100, 1], 4000 + i as u16));
            assert!(
                r.from_member(
                    now,
                    At::Udp(from),
                    msg(MessageType::Announce, &format!("m{i}"), "r0", "")
                )
                .is_some()
            );
        }
        let late: SocketAddr = "198.51.100.9:9".parse().unwrap();
        assert_eq!(
            r.from_member(
                now,
                At::Udp(late),
                msg(MessageType::Announce, "late", "r0", "")
            ),
            None
        );
        let mut big = msg(MessageType::Announce, "m0", "r0", "");
        big.data = vec![0; super::super::MAX_DATA + 1];
        assert_eq!(r.from_member(now, At::Udp(late), big), None);
    }
}
