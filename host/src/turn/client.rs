//! A TURN allocation as its client keeps it (RFC 5766), sans IO: the relayed candidate
//! of a node's ICE agent. Packets from the server and the time go in; packets for the
//! server and events come out. Long-term credentials with the server's nonce, requests
//! retransmitted until answered, the allocation, permissions and channels refreshed
//! before they lapse, data to a peer by channel once bound (by Send indication until
//! then).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytecodec::DecodeExt;
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::{Message, MessageClass, MessageDecoder, Method, TransactionId};

use super::server::{
    Attribute, ChannelNumber, channel_frame, encode, parse_channel_frame, random_tid,
};

/// First retransmission after this; doubled each time (RFC 5389 §7.2.1).
const RTO: Duration = Duration::from_millis(250);
/// Tries per request before giving up.
const MAX_TRIES: u32 = 7;
/// How often the allocation checks the address the server sees (a Binding request):
/// a NAT that forgot us maps us anew, and the allocation, bound to the old address,
/// is gone — better known in seconds than at the next refresh. It also keeps the
/// NAT's mapping alive.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Tries of one such check (about 4 s) before the server counts as gone.
const CHECK_TRIES: u32 = 4;
/// Refresh this long before something lapses.
const EARLY: Duration = Duration::from_secs(60);
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// The first channel number this client binds.
const FIRST_CHANNEL: u16 = 0x4000;
/// Peers one allocation keeps channels to, at most (the server's bound too).
pub const MAX_PEERS: usize = 64;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The allocation stands: `relay` is the relayed candidate, `mapped` the
    /// server-reflexive one.
    Allocated {
        relay: SocketAddr,
        mapped: SocketAddr,
    },
    /// The server refused or stopped answering; `why` for the log.
    Failed { why: String },
    /// A peer sent `data` through the relay.
    Data { from: SocketAddr, data: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Allocating,
    Allocated {
        relay: SocketAddr,
        mapped: SocketAddr,
        expires: Instant,
        check: Instant,
    },
    Failed,
}

struct Pending {
    request: Message<Attribute>,
    next: Instant,
    tries: u32,
    /// The peer a CreatePermission or ChannelBind was for.
    peer: Option<SocketAddr>,
    /// Resent for a nonce this many times (a challenge, then a stale nonce or two).
    reauth: u8,
}

struct Channel {
    number: u16,
    bound: bool,
    expires: Instant,
}

pub struct Client {
    pub server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    state: State,
    pending: HashMap<TransactionId, Pending>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<SocketAddr, Channel>,
    by_number: HashMap<u16, SocketAddr>,
    next_channel: u16,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl Client {
    /// A client of `server` with credentials the server issued; call
    /// [`Client::allocate`] to start.
    pub fn new(server: SocketAddr, username: String, password: String) -> Client {
        Client {
            server,
            username,
            password,
            realm: None,
            nonce: None,
            state: State::Idle,
            pending: HashMap::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_number: HashMap::new(),
            next_channel: FIRST_CHANNEL,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The relayed address, once allocated.
    pub fn relay(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relay, .. } => Some(relay),
            _ => None,
        }
    }

    /// Asks for an allocation (the first try carries no credentials; the server's
    /// challenge brings its realm and nonce).
    pub fn allocate(&mut self, now: Instant) {
        if matches!(self.state, State::Idle | State::Failed) {
            self.state = State::Allocating;
            let mut m = request(ALLOCATE);
            m.add_attribute(RequestedTransport::new(17));
            self.send(now, m, None);
        }
    }

    /// Packets for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sends `data` to `peer` through the relay: by channel once bound, else by Send
    /// indication; asks for the permission and the channel as needed. False when there
    /// is no allocation or the peer table is full.
    pub fn send_to(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> bool {
        if self.relay().is_none() {
            return false;
        }
        if !self.channels.contains_key(&peer) {
            if self.channels.len() >= MAX_PEERS {
                return false;
            }
            let number = self.next_channel;
            self.next_channel = if number >= 0x7ffe {
                FIRST_CHANNEL
            } else {
                number + 1
            };
            self.channels.insert(
                peer,
                Channel {
                    number,
                    bound: false,
                    expires: now,
                },
            );
            self.by_number.insert(number, peer);
            self.bind(now, peer, number);
        }
        let ch = &self.channels[&peer];
        if ch.bound {
            self.out.push_back(channel_frame(ch.number, data));
        } else {
            let mut m = Message::<Attribute>::new(MessageClass::Indication, SEND, random_tid());
            m.add_attribute(XorPeerAddress::new(peer));
            match Data::new(data.to_vec()) {
                Ok(d) => m.add_attribute(d),
                Err(_) => return false,
            }
            if let Some(b) = encode(m) {
                self.out.push_back(b);
            }
        }
        true
    }

    /// Lets `peer` send to the relay without a channel (ICE checks from a peer come
    /// before we send to it).
    pub fn permit(&mut self, now: Instant, peer: SocketAddr) {
        if self.relay().is_none() || self.permissions.contains_key(&peer.ip()) {
            return;
        }
        self.permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        let mut m = request(CREATE_PERMISSION);
        m.add_attribute(XorPeerAddress::new(peer));
        self.send_signed(now, m, Some(peer));
    }

    fn bind(&mut self, now: Instant, peer: SocketAddr, number: u16) {
        let Ok(n) = ChannelNumber::new(number) else {
            return;
        };
        let mut m = request(CHANNEL_BIND);
        m.add_attribute(n);
        m.add_attribute(XorPeerAddress::new(peer));
        self.permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        self.send_signed(now, m, Some(peer));
    }

    /// A packet from the server; false if it was not for this client (not from the
    /// server, or neither STUN nor ChannelData).
    pub fn handle(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        if from != self.server {
            return false;
        }
        match data.first() {
            Some(0x40..=0x7f) => {
                if let Some((n, payload)) = parse_channel_frame(data)
                    && let Some(peer) = self.by_number.get(&n)
                {
                    self.events.push_back(Event::Data {
                        from: *peer,
                        data: payload.to_vec(),
                    });
                }
                true
            }
            Some(0..=3) => {
                let Ok(Ok(m)) = MessageDecoder::<Attribute>::new().decode_from_bytes(data) else {
                    return false;
                };
                self.handle_stun(now, m);
                true
            }
            _ => false,
        }
    }

    fn handle_stun(&mut self, now: Instant, m: Message<Attribute>) {
        if (m.class(), m.method()) == (MessageClass::Indication, DATA) {
            if let (Some(p), Some(d)) = (
                m.get_attribute::<XorPeerAddress>(),
                m.get_attribute::<Data>(),
            ) {
                self.events.push_back(Event::Data {
                    from: p.address(),
                    data: d.data().to_vec(),
                });
            }
            return;
        }
        let Some(p) = self.pending.remove(&m.transaction_id()) else {
            return;
        };
        match m.class() {
            MessageClass::SuccessResponse => self.succeeded(now, &m, p),
            MessageClass::ErrorResponse => self.refused(now, &m, p),
            _ => {}
        }
    }

    fn succeeded(&mut self, now: Instant, m: &Message<Attribute>, p: Pending) {
        match m.method() {
            ALLOCATE => {
                let (Some(relay), Some(mapped)) = (
                    m.get_attribute::<XorRelayAddress>(),
                    m.get_attribute::<XorMappedAddress>(),
                ) else {
                    return self.fail("an Allocate answer without addresses".into());
                };
                let lifetime = m
                    .get_attribute::<Lifetime>()
                    .map(|l| l.lifetime())
                    .unwrap_or(Duration::from_secs(600));
                self.state = State::Allocated {
                    relay: relay.address(),
                    mapped: mapped.address(),
                    expires: now + lifetime,
                    check: now + CHECK_EVERY,
                };
                self.events.push_back(Event::Allocated {
                    relay: relay.address(),
                    mapped: mapped.address(),
                });
            }
            REFRESH => {
                if let State::Allocated { expires, .. } = &mut self.state {
                    let lifetime = m
                        .get_attribute::<Lifetime>()
                        .map(|l| l.lifetime())
                        .unwrap_or(Duration::from_secs(600));
                    *expires = now + lifetime;
                }
            }
            BINDING => {
                if let State::Allocated { mapped, .. } = self.state
                    && let Some(seen) = m.get_attribute::<XorMappedAddress>()
                    && seen.address() != mapped
                {
                    self.fail(format!(
                        "the NAT maps us anew ({mapped} is now {}): the allocation is bound to the old address",
                        seen.address()
                    ));
                }
            }
            CHANNEL_BIND => {
                if let Some(ch) = p.peer.and_then(|peer| self.channels.get_mut(&peer)) {
                    ch.bound = true;
                    ch.expires = now + CHANNEL_LIFETIME;
                }
            }
            _ => {}
        }
    }

    fn refused(&mut self, now: Instant, m: &Message<Attribute>, p: Pending) {
        let code = m
            .get_attribute::<ErrorCode>()
            .map(|e| e.code())
            .unwrap_or(0);
        let fresh = m.get_attribute::<Nonce>().map(|n| n.value().to_string());
        // 401 to an unsigned request (the first try) or 438 (stale nonce): sign with
        // the server's nonce and resend. 401 to a signed one: the credentials are bad.
        let signed = p.request.get_attribute::<MessageIntegrity>().is_some();
        if ((code == 401 && !signed) || code == 438)
            && p.reauth < 3
            && let Some(nonce) = fresh
        {
            self.nonce = Some(nonce);
            if let Some(r) = m.get_attribute::<Realm>() {
                self.realm = Some(r.text().to_string());
            }
            let mut again = Message::new(MessageClass::Request, p.request.method(), random_tid());
            for a in p.request.attributes() {
                if !matches!(
                    a,
                    Attribute::Username(_)
                        | Attribute::Realm(_)
                        | Attribute::Nonce(_)
                        | Attribute::MessageIntegrity(_)
                ) {
                    again.add_attribute(a.clone());
                }
            }
            return self.send_signed_again(now, again, p.peer, p.reauth + 1);
        }
        match p.request.method() {
            ALLOCATE | REFRESH => self.fail(format!("the server refused: {code}")),
            CHANNEL_BIND => {
                if let Some(peer) = p.peer
                    && let Some(ch) = self.channels.remove(&peer)
                {
                    self.by_number.remove(&ch.number);
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, why: String) {
        self.state = State::Failed;
        self.pending.clear();
        self.channels.clear();
        self.by_number.clear();
        self.permissions.clear();
        self.events.push_back(Event::Failed { why });
    }

    /// Retransmits and refreshes.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TransactionId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            let Some(p) = self.pending.get_mut(&t) else {
                continue;
            };
            let method = p.request.method();
            let limit = if method == BINDING {
                CHECK_TRIES
            } else {
                MAX_TRIES
            };
            if p.tries >= limit {
                self.pending.remove(&t);
                if method == ALLOCATE || method == REFRESH || method == BINDING {
                    self.fail("the server does not answer".into());
                }
                continue;
            }
            p.tries += 1;
            p.next = now + RTO * (1 << p.tries.min(6));
            if let Some(b) = encode(p.request.clone()) {
                self.out.push_back(b);
            }
        }
        if let State::Allocated { expires, .. } = self.state
            && expires <= now + EARLY
            && !self.pending.values().any(|p| p.request.method() == REFRESH)
        {
            self.send_signed(now, request(REFRESH), None);
        }
        if let State::Allocated { check, .. } = &mut self.state
            && *check <= now
        {
            *check = now + CHECK_EVERY;
            if !self.pending.values().any(|p| p.request.method() == BINDING) {
                self.send(now, request(BINDING), None);
            }
        }
        let stale: Vec<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, e)| **e <= now + EARLY)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale {
            // A bound channel's refresh renews its permission; others are renewed here.
            if let Some(peer) = self.channels.keys().find(|p| p.ip() == ip).copied() {
                let number = self.channels[&peer].number;
                self.bind(now, peer, number);
            } else {
                self.permissions.remove(&ip);
            }
        }
    }

    /// When [`Client::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let refresh = match self.state {
            State::Allocated { expires, check, .. } => Some((expires - EARLY).min(check)),
            _ => None,
        };
        self.pending
            .values()
            .map(|p| p.next)
            .chain(refresh)
            .chain(self.permissions.values().map(|e| *e - EARLY))
            .min()
    }

    fn send(&mut self, now: Instant, m: Message<Attribute>, peer: Option<SocketAddr>) {
        self.send_counted(now, m, peer, 0);
    }

    fn send_counted(
        &mut self,
        now: Instant,
        m: Message<Attribute>,
        peer: Option<SocketAddr>,
        reauth: u8,
    ) {
        if let Some(b) = encode(m.clone()) {
            self.out.push_back(b);
        }
        self.pending.insert(
            m.transaction_id(),
            Pending {
                request: m,
                next: now + RTO,
                tries: 1,
                peer,
                reauth,
            },
        );
    }

    fn send_signed(&mut self, now: Instant, m: Message<Attribute>, peer: Option<SocketAddr>) {
        self.send_signed_again(now, m, peer, 0);
    }

    /// Adds the credentials (once the server's realm and nonce are known) and sends.
    fn send_signed_again(
        &mut self,
        now: Instant,
        mut m: Message<Attribute>,
        peer: Option<SocketAddr>,
        reauth: u8,
    ) {
        if let (Some(realm), Some(nonce)) = (self.realm.clone(), self.nonce.clone()) {
            let (Ok(u), Ok(r), Ok(n)) = (
                Username::new(self.username.clone()),
                Realm::new(realm),
                Nonce::new(nonce),
            ) else {
                return self.fail("credentials the STUN encoder refuses".into());
            };
            m.add_attribute(u.clone());
            m.add_attribute(r.clone());
            m.add_attribute(n);
            match MessageIntegrity::new_long_term_credential(&m, &u, &r, &self.password) {
                Ok(mi) => m.add_attribute(mi),
                Err(_) => return self.fail("cannot sign a request".into()),
            }
        }
        self.send_counted(now, m, peer, reauth);
    }
}

fn request(method: Method) -> Message<Attribute> {
    Message::new(MessageClass::Request, method, random_tid())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
