//! The mesh's DNS zone, sans IO: names built from the replicated state and the
//! answer to one query. The server in `dns/mod.rs` only moves bytes.
//!
//! Names (`<domain>` is the mesh domain, `webmesh.internal` by default):
//! - `<node>.<domain>`: A and AAAA of the node's mesh addresses; TXT with its ID, key,
//!   endpoints and ports;
//! - `leader.<domain>`: CNAME to the Raft leader's name, with its addresses;
//! - `voters.<domain>`: A and AAAA of every Raft voter;
//! - `<domain>`: SOA and NS (the nodes that serve mesh DNS);
//! - reverse names (`in-addr.arpa`, `ip6.arpa`) of member addresses: PTR.
//!
//! `leader` and `voters` win over node IDs spelled the same. Names compare without
//! case; a name two node IDs share (differing in case, which joins now refuse) answers
//! for neither, and `leader`/`voters` follow Raft's exact IDs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::fast::FastPath;
use crate::mesh::ipam;
use crate::mesh::view::MeshView;
use webmesh_api::v1::Feature;

/// TTL of mesh records: short, so that a join, leave or new leader reaches clients
/// within seconds even through caches.
pub const TTL: u32 = 5;
/// Largest UDP answer we send to a client that does not announce a size (RFC 1035).
const CLASSIC_UDP: usize = 512;
/// Largest UDP answer we send at all (the DNS flag day 2020 figure: no fragments).
pub const MAX_UDP: u16 = 1232;

#[derive(Debug, Clone, Default)]
struct Host {
    id: String,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    txt: Vec<String>,
}

/// The zone as of one Raft index.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    serial: u32,
    /// Node ID → its records.
    hosts: HashMap<String, Host>,
    /// Lowercase name → node ID; names two IDs share (differing in case) are left out.
    names: HashMap<String, String>,
    by_addr: HashMap<IpAddr, String>,
    leader: Option<String>,
    voters: Vec<String>,
    /// Names of the nodes serving mesh DNS (the zone's NS records).
    servers: Vec<String>,
    networks: Vec<IpNet>,
    fast: FastPath,
}

impl Zone {
    /// The zone of `view` as of Raft index `index`, with the leader and the voters
    /// Raft knows of. `domain` is the mesh domain, already validated.
    pub fn build(
        view: &MeshView,
        index: u64,
        leader: Option<&str>,
        voters: &[String],
    ) -> Result<Zone, String> {
        let domain = if view.mesh_domain.is_empty() {
            "webmesh.internal"
        } else {
            view.mesh_domain.as_str()
        };
        let mut origin =
            Name::from_ascii(domain).map_err(|e| format!("mesh domain {domain:?}: {e}"))?;
        origin.set_fqdn(true);
        let mut hosts: HashMap<String, Host> = HashMap::with_capacity(view.nodes.len());
        let mut names: HashMap<String, String> = HashMap::with_capacity(view.nodes.len());
        let mut ambiguous = std::collections::HashSet::new();
        for id in view.nodes.keys() {
            let lower = id.to_ascii_lowercase();
            if names.insert(lower.clone(), id.clone()).is_some() {
                ambiguous.insert(lower);
            }
        }
        names.retain(|k, _| !ambiguous.contains(k));
        let mut by_addr = HashMap::with_capacity(view.nodes.len() * 2);
        let mut servers = Vec::new();
        let mut fast = FastPath::default();
        let apex = domain.trim_end_matches('.');
        for n in view.nodes.values() {
            let key = n.id.to_ascii_lowercase();
            let v4 = n.private_ipv4.parse::<Ipv4Net>().ok().map(|n| n.addr());
            let v6 = n.private_ipv6.parse::<Ipv6Net>().ok().map(ipam::ipv6_host);
            for a in [v4.map(IpAddr::V4), v6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                by_addr.insert(a, n.id.clone());
            }
            if n.meshdns_port > 0 && n.features.contains(&(Feature::MeshDns as i32)) {
                servers.push(n.id.clone());
            }
            let mut txt = vec![
                format!("id={}", n.id),
                format!("public_key={}", n.public_key),
            ];
            if !n.primary_endpoint.is_empty() {
                txt.push(format!("primary_endpoint={}", n.primary_endpoint));
            }
            for e in &n.wireguard_endpoints {
                txt.push(format!("wireguard_endpoint={e}"));
            }
            if !n.zone_awareness_id.is_empty() {
                txt.push(format!("zone={}", n.zone_awareness_id));
            }
            for (k, v) in [
                ("grpc_port", n.grpc_port),
                ("raft_port", n.raft_port),
                ("meshdns_port", n.meshdns_port),
            ] {
                if v > 0 {
                    txt.push(format!("{k}={v}"));
                }
            }
            if key != "leader" && key != "voters" && names.contains_key(&key) {
                fast.add(&format!("{}.{apex}", n.id), TTL, v4, v6, &txt);
            }
            hosts.insert(
                n.id.clone(),
                Host {
                    id: n.id.clone(),
                    v4,
                    v6,
                    txt,
                },
            );
        }
        let networks = [
            view.ipv4_network.map(IpNet::V4),
            view.ipv6_network.map(IpNet::V6),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(Zone {
            origin,
            // The serial only has to grow; wrapping is allowed by RFC 1982.
            serial: index as u32,
            hosts,
            names,
            by_addr,
            leader: leader.map(str::to_string),
            voters: voters.to_vec(),
            servers,
            networks,
            fast,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The mesh networks: sources inside them (or loopback) are members.
    pub fn is_member_source(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_loopback() || self.networks.iter().any(|n| n.contains(&ip))
    }

    fn name_of(&self, id: &str) -> Option<Name> {
        Name::from_ascii(id).ok()?.append_domain(&self.origin).ok()
    }

    fn soa(&self) -> Record {
        let mname = self
            .servers
            .first()
            .and_then(|s| self.name_of(s))
            .unwrap_or_else(|| self.origin.clone());
        let rname = Name::from_ascii("hostmaster")
            .ok()
            .and_then(|h| h.append_domain(&self.origin).ok())
            .unwrap_or_else(|| self.origin.clone());
        Record::from_rdata(
            self.origin.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, self.serial, 60, 10, 3600, TTL)),
        )
    }

    fn addresses(&self, owner: &Name, host: &Host, qtype: RecordType, out: &mut Vec<Record>) {
        if matches!(qtype, RecordType::A | RecordType::ANY)
            && let Some(v4) = host.v4
        {
            out.push(Record::from_rdata(owner.clone(), TTL, RData::A(A(v4))));
        }
        if matches!(qtype, RecordType::AAAA | RecordType::ANY)
            && let Some(v6) = host.v6
        {
            out.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::AAAA(AAAA(v6)),
            ));
        }
    }

    /// The node a name (as asked, any case) stands for.
    fn host_named(&self, name: &str) -> Option<&Host> {
        self.hosts.get(self.names.get(&name.to_ascii_lowercase())?)
    }

    /// The node with exactly this ID (Raft's leader and voters).
    fn host(&self, id: &str) -> Option<&Host> {
        self.hosts.get(id)
    }

    /// The answer for a name inside the zone (or a reverse name of a member address):
    /// `None` when the name is not ours to answer.
    fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Lookup> {
        if let Some(ptr) = self.reverse(qname, qtype) {
            return Some(ptr);
        }
        if !self.origin.zone_of(qname) {
            return None;
        }
        let extra = usize::from(qname.num_labels() - self.origin.num_labels());
        if extra == 0 {
            let mut answers = Vec::new();
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                answers.push(self.soa());
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY) {
                for s in &self.servers {
                    if let Some(n) = self.name_of(s) {
                        answers.push(Record::from_rdata(qname.clone(), TTL, RData::NS(NS(n))));
                    }
                }
            }
            return Some(Lookup::Found(answers));
        }
        let rel: Vec<String> = qname
            .iter()
            .take(extra)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let rel = rel.join(".");
        let mut answers = Vec::new();
        match rel.as_str() {
            "leader" => {
                let Some(host) = self.leader.as_deref().and_then(|l| self.host(l)) else {
                    // An election is under way: say so without a cacheable NXDOMAIN.
                    return Some(Lookup::Unavailable);
                };
                let target = self.name_of(&host.id)?;
                if matches!(
                    qtype,
                    RecordType::CNAME | RecordType::A | RecordType::AAAA | RecordType::ANY
                ) {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    if qtype != RecordType::CNAME {
                        self.addresses(&target, host, qtype, &mut answers);
                    }
                }
            }
            "voters" => {
                for v in &self.voters {
                    if let Some(host) = self.host(v) {
                        self.addresses(qname, host, qtype, &mut answers);
                    }
                }
            }
            id => {
                let host = self.host_named(id)?;
                self.addresses(qname, host, qtype, &mut answers);
                if matches!(qtype, RecordType::TXT | RecordType::ANY) {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::TXT(TXT::new(host.txt.clone())),
                    ));
                }
            }
        }
        Some(Lookup::Found(answers))
    }

    /// PTR for a member address; NXDOMAIN for other addresses of the mesh networks;
    /// `None` for addresses outside them.
    fn reverse(&self, qname: &Name, qtype: RecordType) -> Option<Lookup> {
        let net = qname.parse_arpa_name().ok()?;
        let full = match net {
            IpNet::V4(n) => n.prefix_len() == 32,
            IpNet::V6(n) => n.prefix_len() == 128,
        };
        let ip = net.addr();
        if !self.networks.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        let id = self.by_addr.get(&ip).filter(|_| full)?;
        let mut answers = Vec::new();
        if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            answers.push(Record::from_rdata(
                qname.clone(),
                TTL,
                RData::PTR(PTR(self.name_of(id)?)),
            ));
        }
        Some(Lookup::Found(answers))
    }

    fn in_reverse_zone(&self, qname: &Name) -> bool {
        qname
            .parse_arpa_name()
            .is_ok_and(|n| self.networks.iter().any(|m| m.contains(&n.addr())))
    }
}

enum Lookup {
    Found(Vec<Record>),
    Unavailable,
}

/// What the server does with one datagram or TCP message.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a mesh name: ask the forwarders (the parsed query comes along).
    Forward(Box<Message>),
    /// Say nothing (not a query, or too broken to answer).
    Drop,
}

/// How the query came: UDP answers are bounded by what the client can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The largest answer without EDNS, and with it.
    fn limits(self) -> (usize, usize) {
        match self {
            Transport::Udp => (CLASSIC_UDP, usize::from(MAX_UDP)),
            Transport::Tcp => (usize::from(u16::MAX), usize::from(u16::MAX)),
        }
    }
}

/// Answers one query. `member`: the source is loopback or a mesh address (only they
/// get answers); `forwarding`: names outside the zone may be forwarded.
pub fn answer(
    zone: &Zone,
    bytes: &[u8],
    member: bool,
    forwarding: bool,
    transport: Transport,
) -> Outcome {
    if member {
        let (limit, max) = transport.limits();
        if let Some(b) = zone.fast.answer(bytes, forwarding, limit, max) {
            return Outcome::Reply(b);
        }
    }
    answer_general(zone, bytes, member, forwarding, transport)
}

/// Answers `bytes` every way the server can and checks that the fast path, when it
/// answers, says what the general path says (fuzzing's differential check).
pub(crate) fn answer_every_way(zone: &Zone, bytes: &[u8]) {
    for transport in [Transport::Udp, Transport::Tcp] {
        for (member, forwarding) in [(true, true), (true, false), (false, true)] {
            let _ = answer(zone, bytes, member, forwarding, transport);
        }
        let (limit, max) = transport.limits();
        if let Some(fast) = zone.fast.answer(bytes, true, limit, max) {
            let Outcome::Reply(general) = answer_general(zone, bytes, true, true, transport) else {
                panic!("the fast path answered what the general path does not");
            };
            assert_eq!(
                Message::from_vec(&fast).ok(),
                Message::from_vec(&general).ok(),
                "the fast and general paths differ"
            );
        }
    }
}

/// [`answer`] for every query: decoded into a message, answered, encoded.
fn answer_general(
    zone: &Zone,
    bytes: &[u8],
    member: bool,
    forwarding: bool,
    transport: Transport,
) -> Outcome {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        // No header, or a response: answering responses invites loops.
        return Outcome::Drop;
    }
    let req = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return Outcome::Reply(formerr(bytes)),
    };
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.recursion_available = forwarding;
    if let Some(e) = &req.edns {
        if e.version() > 0 {
            // RFC 6891: BADVERS for EDNS versions we do not speak.
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP).set_rcode_high(1);
            resp.set_edns(edns);
            return finish(resp, &req, transport);
        }
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP);
        resp.set_edns(edns);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return finish(resp, &req, transport);
    }
    if req.queries.len() != 1 {
        resp.metadata.response_code = ResponseCode::FormErr;
        return finish(resp, &req, transport);
    }
    let q = req.queries[0].clone();
    resp.add_query(q.clone());
    if !member {
        resp.metadata.response_code = ResponseCode::Refused;
        return finish(resp, &req, transport);
    }
    if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) {
        resp.metadata.response_code = ResponseCode::Refused;
        return finish(resp, &req, transport);
    }
    let ours = matches!(q.query_class(), DNSClass::IN | DNSClass::ANY);
    let lookup = if ours {
        zone.lookup(q.name(), q.query_type())
    } else {
        None
    };
    match lookup {
        Some(Lookup::Found(answers)) => {
            resp.metadata.authoritative = true;
            if answers.is_empty() {
                resp.add_authority(zone.soa());
            }
            resp.add_answers(answers);
        }
        Some(Lookup::Unavailable) => resp.metadata.response_code = ResponseCode::ServFail,
        None if ours && (zone.origin.zone_of(q.name()) || zone.in_reverse_zone(q.name())) => {
            resp.metadata.authoritative = true;
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(zone.soa());
        }
        None if forwarding && req.metadata.recursion_desired => {
            return Outcome::Forward(Box::new(req));
        }
        None => resp.metadata.response_code = ResponseCode::Refused,
    }
    finish(resp, &req, transport)
}

/// An answer to a query: the bytes, truncated (TC, no records) when larger than the
/// client can take over UDP.
pub fn finish(resp: Message, req: &Message, transport: Transport) -> Outcome {
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => req
            .edns
            .as_ref()
            .map(|e| usize::from(e.max_payload().clamp(512, MAX_UDP)))
            .unwrap_or(CLASSIC_UDP),
    };
    match resp.to_vec() {
        Ok(b) if b.len() <= limit => Outcome::Reply(b),
        Ok(_) => {
            let mut t = Message::new(
                resp.metadata.id,
                MessageType::Response,
                resp.metadata.op_code,
            );
            t.metadata = resp.metadata;
            t.metadata.truncation = true;
            t.add_queries(resp.queries.iter().cloned());
            t.edns = resp.edns.clone();
            t.to_vec().map(Outcome::Reply).unwrap_or(Outcome::Drop)
        }
        Err(_) => Outcome::Reply(servfail(&resp.metadata)),
    }
}

/// FORMERR for a message whose header we could read but whose body we could not.
fn formerr(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes[..12].to_vec();
    // QR=1, opcode kept, AA/TC=0, RD kept; RA=0, RCODE=1; no sections.
    out[2] = 0x80 | (bytes[2] & 0x79);
    out[3] = 0x01;
    out[4..12].fill(0);
    out
}

fn servfail(m: &Metadata) -> Vec<u8> {
    let mut msg = Message::new(m.id, MessageType::Response, m.op_code);
    msg.metadata.response_code = ResponseCode::ServFail;
    msg.to_vec().unwrap_or_default()
}

/// A forwarded or cached answer `bytes` to `req`, as a UDP client may take it: whole
/// when it fits the client's size, else truncated to the header and question (the
/// client asks again over TCP).
pub fn fit_udp(req: &Message, bytes: Vec<u8>) -> Vec<u8> {
    let limit = req
        .edns
        .as_ref()
        .map(|e| usize::from(e.max_payload().clamp(512, MAX_UDP)))
        .unwrap_or(CLASSIC_UDP);
    if bytes.len() <= limit {
        return bytes;
    }
    let mut t = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    t.metadata = Metadata::response_from_request(&req.metadata);
    t.metadata.recursion_available = true;
    t.metadata.truncation = true;
    t.add_queries(req.queries.iter().cloned());
    t.to_vec().unwrap_or_default()
}

/// A SERVFAIL answer to `req` (the forwarders failed).
pub fn servfail_to(req: &Message) -> Vec<u8> {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = ResponseCode::ServFail;
    resp.add_queries(req.queries.iter().cloned());
    resp.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests;
