//! The TURN/STUN server (RFC 5389 Binding, RFC 5766 UDP relaying), sans IO: bytes from
//! a client or a peer and the time go in; packets to send come out. The shell owns the
//! sockets and opens relay ports when asked through [`Ports`].
//!
//! Not an open relay: allocations need credentials this server issued to members
//! ([`super::creds`]), nonces are stateless (an HMAC of their time and the client's
//! address, so strangers cannot make the server remember anything), and every table
//! has a bound: allocations in all and per user, permissions and channels per
//! allocation, bytes per second per allocation and in all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytecodec::{DecodeExt, EncodeExt};
use ring::hmac;
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

use super::bucket::Bucket;
pub use super::channel::ChannelNumber;
use super::creds::Secret;

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        Username,
        MessageIntegrity,
        ErrorCode,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport
    ]
);

/// Allocation lifetime when the client asks none, and the most it may ask.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permissions and channel bindings last this long unless refreshed (RFC 5766).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A nonce is good this long; then the client is told it is stale and gets a new one.
const NONCE_LIFETIME_SECS: u64 = 600;
/// Peers an allocation may have permissions or channels for.
const MAX_PEERS: usize = 64;
/// UDP, the only transport relayed.
const UDP: u8 = 17;

/// What the server allows; see the module notes.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    /// The address relayed ports are reached at (the node's public IP).
    pub relay_ip: IpAddr,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Bytes per second one allocation relays (both ways); 0: no limit.
    pub allocation_rate: u64,
    /// Bytes per second all allocations relay together; 0: no limit.
    pub total_rate: u64,
    /// Peers no allocation may reach (loopback, the mesh's own networks, ...).
    pub denied: Vec<ipnet::IpNet>,
    /// The server's own port on `relay_ip`: relaying to it would feed the server its own
    /// traffic as a client's. (Other relay ports stay reachable: two members behind
    /// symmetric NATs meet relay to relay.)
    pub listen_port: u16,
}

/// Whether a node is still a member: credentials of a removed node stop working before
/// they expire.
pub type IsMember = dyn Fn(&str) -> bool + Send + Sync;

/// Relay ports, opened and closed by the shell.
pub trait Ports {
    /// Binds a free relay port (same family as `v4`); None when none is free.
    fn open(&mut self, v4: bool) -> Option<u16>;
    fn close(&mut self, port: u16);
}

/// A packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// From the server's port to a client.
    Client { to: SocketAddr, data: Vec<u8> },
    /// From relay port `port` to a peer.
    Peer {
        port: u16,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

struct Allocation {
    port: u16,
    username: String,
    expires: Instant,
    /// Peer IP → permission expiry.
    permissions: HashMap<IpAddr, Instant>,
    /// Channel number → (peer, expiry), and back.
    channels: HashMap<u16, (SocketAddr, Instant)>,
    channel_of: HashMap<SocketAddr, u16>,
    bucket: Bucket,
}

/// Figures for metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub allocations: usize,
    pub relayed_packets: u64,
    pub relayed_bytes: u64,
    pub dropped_packets: u64,
    pub refused_auth: u64,
}

pub struct Server {
    cfg: Config,
    secret: Secret,
    is_member: Box<IsMember>,
    nonce_key: hmac::Key,
    /// By the client's address (the 5-tuple: one server socket, UDP).
    allocations: HashMap<SocketAddr, Allocation>,
    by_port: HashMap<u16, SocketAddr>,
    per_user: HashMap<String, usize>,
    total: Bucket,
    stats: Stats,
}

/// Why a request failed: the STUN error code and reason.
struct Refusal(u16, &'static str);

impl Server {
    /// `secret` checks credentials and `is_member` their node; `nonce_key` signs
    /// nonces (random per process).
    pub fn new(
        cfg: Config,
        secret: Secret,
        is_member: Box<IsMember>,
        nonce_key: [u8; 32],
        now: Instant,
    ) -> Server {
        Server {
            total: Bucket::new(cfg.total_rate, now),
            cfg,
            secret,
            is_member,
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, &nonce_key),
            allocations: HashMap::new(),
            by_port: HashMap::new(),
            per_user: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.len(),
            ..self.stats.clone()
        }
    }

    /// A packet from a client on the server's port (`unix` is the wall clock in
    /// seconds, for credentials and nonces).
    pub fn handle_client(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        data: &[u8],
        ports: &mut dyn Ports,
    ) -> Vec<Out> {
        match data.first() {
            Some(0..=3) => self.handle_stun(now, unix, from, data, ports),
            Some(0x40..=0x7f) => self.channel_data(now, from, data).into_iter().collect(),
            _ => vec![],
        }
    }

    /// A packet from a peer to relay port `port`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        port: u16,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Out> {
        let client = *self.by_port.get(&port)?;
        let a = self.permitted(now, client, from.ip(), data.len())?;
        if let Some(ch) = a.channel_of.get(&from).copied() {
            return Some(Out::Client {
                to: client,
                data: channel_frame(ch, data),
            });
        }
        let mut m = Message::<Attribute>::new(MessageClass::Indication, DATA, random_tid());
        m.add_attribute(XorPeerAddress::new(from));
        m.add_attribute(Data::new(data.to_vec()).ok()?);
        Some(Out::Client {
            to: client,
            data: encode(m)?,
        })
    }

    /// Expires allocations, permissions and channels; closes their ports.
    pub fn handle_timeout(&mut self, now: Instant, ports: &mut dyn Ports) {
        let dead: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in dead {
            self.remove(c, ports);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, e| *e > now);
            a.channels.retain(|_, (_, e)| *e > now);
            let live: Vec<SocketAddr> = a.channels.values().map(|(p, _)| *p).collect();
            a.channel_of.retain(|p, _| live.contains(p));
        }
    }

    /// Ends the allocations of nodes that are no longer members (call when the
    /// membership changes, or now and then).
    pub fn revoke_non_members(&mut self, ports: &mut dyn Ports) {
        let gone: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| !Secret::node_of(&a.username).is_some_and(|n| (self.is_member)(n)))
            .map(|(c, _)| *c)
            .collect();
        for c in gone {
            self.remove(c, ports);
        }
    }

    /// When [`Server::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations
            .values()
            .flat_map(|a| {
                std::iter::once(a.expires)
                    .chain(a.permissions.values().copied())
                    .chain(a.channels.values().map(|(_, e)| *e))
            })
            .min()
    }

    fn remove(&mut self, client: SocketAddr, ports: &mut dyn Ports) {
        if let Some(a) = self.allocations.remove(&client) {
            self.by_port.remove(&a.port);
            ports.close(a.port);
            if let Some(n) = self.per_user.get_mut(&a.username) {
                *n -= 1;
                if *n == 0 {
                    self.per_user.remove(&a.username);
                }
            }
        }
    }

    /// `client`'s allocation, if it permits `peer` and its rates take `len` more bytes.
    fn permitted(
        &mut self,
        now: Instant,
        client: SocketAddr,
        peer: IpAddr,
        len: usize,
    ) -> Option<&mut Allocation> {
        let a = self.allocations.get_mut(&client)?;
        if a.permissions.get(&peer).is_none_or(|e| *e < now) {
            return None;
        }
        metered(&mut a.bucket, &mut self.total, &mut self.stats, len, now).then_some(a)
    }

    fn channel_data(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<Out> {
        let (ch, payload) = parse_channel_frame(data)?;
        let a = self.allocations.get_mut(&from)?;
        let (peer, expires) = *a.channels.get(&ch)?;
        if expires < now {
            return None;
        }
        if !metered(
            &mut a.bucket,
            &mut self.total,
            &mut self.stats,
            payload.len(),
            now,
        ) {
            return None;
        }
        Some(Out::Peer {
            port: a.port,
            to: peer,
            data: payload.to_vec(),
        })
    }

    fn handle_stun(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        data: &[u8],
        ports: &mut dyn Ports,
    ) -> Vec<Out> {
        let m = match MessageDecoder::<Attribute>::new().decode_from_bytes(data) {
            Ok(Ok(m)) => m,
            other => {
                tracing::debug!(%from, error = ?other.map(|r| r.err()), "TURN: not a STUN message");
                return vec![];
            }
        };
        match (m.class(), m.method()) {
            (MessageClass::Request, BINDING) => {
                let mut r = Message::<Attribute>::new(
                    MessageClass::SuccessResponse,
                    BINDING,
                    m.transaction_id(),
                );
                r.add_attribute(XorMappedAddress::new(from));
                encode(r)
                    .map(|data| Out::Client { to: from, data })
                    .into_iter()
                    .collect()
            }
            (MessageClass::Indication, SEND) => {
                self.send_indication(now, from, &m).into_iter().collect()
            }
            (MessageClass::Request, method)
                if [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) =>
            {
                let reply = match self.authenticate(unix, from, &m) {
                    Err(Some(challenge)) => challenge,
                    Err(None) => return vec![],
                    Ok((username, password)) => {
                        let result = match method {
                            ALLOCATE => self.allocate(now, from, &m, username.clone(), ports),
                            REFRESH => self.refresh(now, from, &m, &username, ports),
                            CREATE_PERMISSION => self.permit(now, from, &m, &username),
                            _ => self.bind_channel(now, from, &m, &username),
                        };
                        let mut r = match result {
                            Ok(r) => r,
                            Err(Refusal(code, why)) => error(&m, code, why),
                        };
                        // Answers to authenticated requests carry integrity (RFC 5389 §10.2.2).
                        let (Ok(u), Ok(realm)) = (
                            Username::new(username.clone()),
                            Realm::new(self.cfg.realm.clone()),
                        ) else {
                            return vec![];
                        };
                        match MessageIntegrity::new_long_term_credential(&r, &u, &realm, &password)
                        {
                            Ok(mi) => r.add_attribute(mi),
                            Err(_) => return vec![],
                        }
                        r
                    }
                };
                encode(reply)
                    .map(|data| Out::Client { to: from, data })
                    .into_iter()
                    .collect()
            }
            _ => vec![],
        }
    }

    /// The request's username and password when its credentials hold; else the
    /// challenge to send (401 with a fresh nonce, 438 for a stale one), or nothing.
    fn authenticate(
        &mut self,
        unix: u64,
        from: SocketAddr,
        m: &Message<Attribute>,
    ) -> Result<(String, String), Option<Message<Attribute>>> {
        let challenge = |s: &Self, code: u16, why: &'static str| {
            let mut r = error(m, code, why);
            r.add_attribute(Realm::new(s.cfg.realm.clone()).ok()?);
            r.add_attribute(Nonce::new(s.nonce(unix, from)).ok()?);
            Some(r)
        };
        let (Some(mi), Some(user), Some(nonce)) = (
            m.get_attribute::<MessageIntegrity>(),
            m.get_attribute::<Username>(),
            m.get_attribute::<Nonce>(),
        ) else {
            return Err(challenge(self, 401, "Unauthorized"));
        };
        if !self.nonce_ok(nonce.value(), unix, from) {
            return Err(challenge(self, 438, "Stale Nonce"));
        }
        let refuse = |s: &mut Self| {
            s.stats.refused_auth += 1;
            Err(challenge(s, 401, "Unauthorized"))
        };
        let Ok(password) = self.secret.check(user.name(), unix) else {
            return refuse(self);
        };
        if !Secret::node_of(user.name()).is_some_and(|n| (self.is_member)(n)) {
            return refuse(self);
        }
        let Ok(realm) = Realm::new(self.cfg.realm.clone()) else {
            return Err(None);
        };
        if mi
            .check_long_term_credential(user, &realm, &password)
            .is_err()
        {
            return refuse(self);
        }
        Ok((user.name().to_string(), password))
    }

    /// `<unix seconds>-<HMAC(time, client)>`: nothing stored, checked by recomputing.
    fn nonce(&self, unix: u64, from: SocketAddr) -> String {
        let tag = hmac::sign(&self.nonce_key, format!("{unix}|{from}").as_bytes());
        let hex: String = tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{unix}-{hex}")
    }

    fn nonce_ok(&self, nonce: &str, unix: u64, from: SocketAddr) -> bool {
        let Some((t, _)) = nonce.split_once('-') else {
            return false;
        };
        let Ok(t) = t.parse::<u64>() else {
            return false;
        };
        t <= unix
            && unix - t <= NONCE_LIFETIME_SECS
            && same(self.nonce(t, from).as_bytes(), nonce.as_bytes())
    }

    fn allocate(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<Attribute>,
        username: String,
        ports: &mut dyn Ports,
    ) -> Result<Message<Attribute>, Refusal> {
        if self.allocations.contains_key(&from) {
            return Err(Refusal(437, "Allocation Mismatch"));
        }
        if m.get_attribute::<RequestedTransport>()
            .is_none_or(|t| t.protocol() != UDP)
        {
            return Err(Refusal(442, "Unsupported Transport Protocol"));
        }
        if self.allocations.len() >= self.cfg.max_allocations
            || self.per_user.get(&username).copied().unwrap_or(0)
                >= self.cfg.max_allocations_per_user
        {
            return Err(Refusal(486, "Allocation Quota Reached"));
        }
        let port = ports
            .open(self.cfg.relay_ip.is_ipv4())
            .ok_or(Refusal(508, "Insufficient Capacity"))?;
        let lifetime = lifetime(m);
        *self.per_user.entry(username.clone()).or_default() += 1;
        self.by_port.insert(port, from);
        self.allocations.insert(
            from,
            Allocation {
                port,
                username,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
                bucket: Bucket::new(self.cfg.allocation_rate, now),
            },
        );
        let mut r = success(m);
        r.add_attribute(XorRelayAddress::new(SocketAddr::new(
            self.cfg.relay_ip,
            port,
        )));
        r.add_attribute(Lifetime::new(lifetime).map_err(|_| Refusal(500, "Server Error"))?);
        r.add_attribute(XorMappedAddress::new(from));
        Ok(r)
    }

    /// The allocation of `from`, if `username` owns it.
    fn owned(&mut self, from: SocketAddr, username: &str) -> Result<&mut Allocation, Refusal> {
        match self.allocations.get_mut(&from) {
            Some(a) if a.username == username => Ok(a),
            _ => Err(Refusal(437, "Allocation Mismatch")),
        }
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<Attribute>,
        username: &str,
        ports: &mut dyn Ports,
    ) -> Result<Message<Attribute>, Refusal> {
        let asked = m.get_attribute::<Lifetime>().map(|l| l.lifetime());
        self.owned(from, username)?;
        let lifetime = if asked == Some(Duration::ZERO) {
            self.remove(from, ports);
            Duration::ZERO
        } else {
            let l = lifetime(m);
            self.owned(from, username)?.expires = now + l;
            l
        };
        let mut r = success(m);
        r.add_attribute(Lifetime::new(lifetime).map_err(|_| Refusal(500, "Server Error"))?);
        Ok(r)
    }

    fn peer_allowed(&self, peer: SocketAddr) -> Result<(), Refusal> {
        let ip = peer.ip();
        let special = match ip {
            IpAddr::V4(v) => {
                v.is_loopback()
                    || v.is_unspecified()
                    || v.is_multicast()
                    || v.is_broadcast()
                    || v.is_link_local()
            }
            IpAddr::V6(v) => {
                v.is_loopback()
                    || v.is_unspecified()
                    || v.is_multicast()
                    || v.is_unicast_link_local()
                    || v.to_ipv4_mapped().is_some()
            }
        };
        let own = ip.to_canonical() == self.cfg.relay_ip && peer.port() == self.cfg.listen_port;
        if special || own || peer.port() == 0 || self.cfg.denied.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal(403, "Forbidden"));
        }
        Ok(())
    }

    fn permit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<Attribute>,
        username: &str,
    ) -> Result<Message<Attribute>, Refusal> {
        let peers: Vec<SocketAddr> = m
            .attributes()
            .filter_map(|a| match a {
                Attribute::XorPeerAddress(p) => Some(p.address()),
                _ => None,
            })
            .collect();
        if peers.is_empty() {
            return Err(Refusal(400, "Bad Request"));
        }
        for p in &peers {
            self.peer_allowed(*p)?;
        }
        let a = self.owned(from, username)?;
        for p in peers {
            if a.permissions.len() >= MAX_PEERS && !a.permissions.contains_key(&p.ip()) {
                return Err(Refusal(508, "Insufficient Capacity"));
            }
            a.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        Ok(success(m))
    }

    fn bind_channel(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<Attribute>,
        username: &str,
    ) -> Result<Message<Attribute>, Refusal> {
        let (Some(ch), Some(peer)) = (
            m.get_attribute::<ChannelNumber>(),
            m.get_attribute::<XorPeerAddress>(),
        ) else {
            return Err(Refusal(400, "Bad Request"));
        };
        let (ch, peer) = (ch.value(), peer.address());
        self.peer_allowed(peer)?;
        let a = self.owned(from, username)?;
        // A number is bound to one peer and a peer to one number (RFC 5766 §11.2).
        let clash = a.channels.get(&ch).is_some_and(|(p, _)| *p != peer)
            || a.channel_of.get(&peer).is_some_and(|c| *c != ch);
        if clash {
            return Err(Refusal(400, "Bad Request"));
        }
        if a.channels.len() >= MAX_PEERS && !a.channels.contains_key(&ch) {
            return Err(Refusal(508, "Insufficient Capacity"));
        }
        a.channels.insert(ch, (peer, now + CHANNEL_LIFETIME));
        a.channel_of.insert(peer, ch);
        if a.permissions.len() < MAX_PEERS || a.permissions.contains_key(&peer.ip()) {
            a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        }
        Ok(success(m))
    }

    fn send_indication(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<Attribute>,
    ) -> Option<Out> {
        let peer = m.get_attribute::<XorPeerAddress>()?.address();
        let data = m.get_attribute::<Data>()?.data();
        let a = self.permitted(now, from, peer.ip(), data.len())?;
        Some(Out::Peer {
            port: a.port,
            to: peer,
            data: data.to_vec(),
        })
    }
}

/// Counts `len` relayed bytes against the allocation's and the total rate: false (and
/// a drop counted) when either is spent.
fn metered(
    alloc: &mut Bucket,
    total: &mut Bucket,
    stats: &mut Stats,
    len: usize,
    now: Instant,
) -> bool {
    if !alloc.take(len, now) || !total.take(len, now) {
        stats.dropped_packets += 1;
        return false;
    }
    stats.relayed_packets += 1;
    stats.relayed_bytes += len as u64;
    true
}

/// Equal bytes, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lifetime(m: &Message<Attribute>) -> Duration {
    m.get_attribute::<Lifetime>()
        .map(|l| l.lifetime().clamp(Duration::from_secs(1), MAX_LIFETIME))
        .unwrap_or(DEFAULT_LIFETIME)
}

fn success(m: &Message<Attribute>) -> Message<Attribute> {
    Message::new(
        MessageClass::SuccessResponse,
        m.method(),
        m.transaction_id(),
    )
}

fn error(m: &Message<Attribute>, code: u16, why: &str) -> Message<Attribute> {
    let mut r = Message::new(MessageClass::ErrorResponse, m.method(), m.transaction_id());
    if let Ok(e) = ErrorCode::new(code, why.to_string()) {
        r.add_attribute(e);
    }
    r
}

pub(super) fn encode(m: Message<Attribute>) -> Option<Vec<u8>> {
    MessageEncoder::new().encode_into_bytes(m).ok()
}

pub(super) fn random_tid() -> TransactionId {
    TransactionId::new(rand::random())
}

/// A ChannelData message: channel number, length, data (RFC 5766 §11.4).
pub fn channel_frame(ch: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend(ch.to_be_bytes());
    out.extend((data.len() as u16).to_be_bytes());
    out.extend(data);
    out
}

/// The channel number and data of a ChannelData message (padding allowed after it).
pub fn parse_channel_frame(b: &[u8]) -> Option<(u16, &[u8])> {
    let ch = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    let len = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize;
    if !(0x4000..=0x7fff).contains(&ch) {
        return None;
    }
    Some((ch, b.get(4..4 + len)?))
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
