//! The common query answered without decoding it into a message: one question, class
//! IN, type A, AAAA or TXT of a node's name, at most an EDNS OPT record. Its answer is
//! the query's header and question followed by records encoded once per zone change,
//! each naming its owner by a pointer to the question (so the name comes back spelled
//! as asked). Anything else — and anything this parser is unsure of — goes to the
//! general path in `zone.rs`, which gives the same answer (tested) more slowly.

use std::collections::HashMap;

/// Record types on the fast path.
const A: u16 = 1;
const TXT: u16 = 16;
const AAAA: u16 = 28;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A node's answers, each a list of encoded records (owner pointer onwards).
#[derive(Debug, Clone, Default)]
struct Prebuilt {
    a: Option<Vec<u8>>,
    aaaa: Option<Vec<u8>>,
    txt: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
pub struct FastPath {
    /// Lowercase wire-format name → its answers.
    names: HashMap<Vec<u8>, Prebuilt>,
}

/// One record with its owner a pointer to offset 12 (the question's name).
fn record(rtype: u16, ttl: u32, rdata: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(rdata.len()).ok()?;
    let mut r = Vec::with_capacity(12 + rdata.len());
    r.extend_from_slice(&[0xc0, 0x0c]);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(rdata);
    Some(r)
}

/// `name` (dotted, without the root) in lowercase wire format; `None` if it is not a
/// valid name.
fn wire(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l))?;
        out.push(len);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

impl FastPath {
    /// Adds a node's name (`id.domain`) with its addresses and TXT strings.
    pub fn add(
        &mut self,
        fqdn: &str,
        ttl: u32,
        v4: Option<std::net::Ipv4Addr>,
        v6: Option<std::net::Ipv6Addr>,
        txt: &[String],
    ) {
        let Some(name) = wire(fqdn) else { return };
        if self.names.contains_key(&name) {
            return;
        }
        let mut txt_rdata = Vec::new();
        for s in txt {
            let Ok(len) = u8::try_from(s.len()) else {
                return;
            };
            txt_rdata.push(len);
            txt_rdata.extend_from_slice(s.as_bytes());
        }
        let p = Prebuilt {
            a: v4.and_then(|a| record(A, ttl, &a.octets())),
            aaaa: v6.and_then(|a| record(AAAA, ttl, &a.octets())),
            txt: record(TXT, ttl, &txt_rdata),
        };
        self.names.insert(name, p);
    }

    /// The answer to `q` if it is the common kind, else `None`. `ra`: recursion
    /// available (this server forwards); `limit`: the largest answer the transport takes
    /// without EDNS (512 on UDP), `edns_max` the largest with it.
    pub fn answer(&self, q: &[u8], ra: bool, limit: usize, edns_max: usize) -> Option<Vec<u8>> {
        // Header: a query (QR=0, opcode 0), one question, no answers or authority,
        // at most one additional (the OPT).
        if q.len() < 17 || q[2] & 0xf8 != 0 {
            return None;
        }
        let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
        let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
        if qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        // The question's name: plain labels, no compression.
        let mut key = [0u8; 255];
        let mut at = 12;
        let mut k = 0;
        loop {
            let len = usize::from(*q.get(at)?);
            if len == 0 {
                key[k] = 0;
                k += 1;
                at += 1;
                break;
            }
            if len > 63 || k + len + 1 >= 255 {
                return None;
            }
            key[k] = len as u8;
            for i in 0..len {
                key[k + 1 + i] = q.get(at + 1 + i)?.to_ascii_lowercase();
            }
            k += len + 1;
            at += len + 1;
        }
        let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
        let qclass = u16::from_be_bytes([*q.get(at + 2)?, *q.get(at + 3)?]);
        let question_end = at + 4;
        if qclass != CLASS_IN {
            return None;
        }
        // The OPT record, if any: root name, type 41, version 0, ending the message.
        let mut max = limit;
        let edns = ar == 1;
        if edns {
            let o = q.get(question_end..)?;
            if o.len() < 11 || o[0] != 0 || u16::from_be_bytes([o[1], o[2]]) != OPT || o[6] != 0 {
                return None;
            }
            let rdlen = usize::from(u16::from_be_bytes([o[9], o[10]]));
            if o.len() != 11 + rdlen {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([o[3], o[4]]));
            max = payload.clamp(512, edns_max.max(512));
        } else if q.len() != question_end {
            return None;
        }
        let p = self.names.get(&key[..k])?;
        let rr = match qtype {
            A => p.a.as_deref(),
            AAAA => p.aaaa.as_deref(),
            TXT => p.txt.as_deref(),
            _ => return None,
        };
        // No data for this type goes the general way (it adds the SOA).
        let rr = rr?;
        let mut out = Vec::with_capacity(question_end + rr.len() + 11);
        out.extend_from_slice(&q[..2]);
        // QR, AA, RD as asked; RA if we forward; CD as asked; NOERROR.
        out.push(0x84 | (q[2] & 0x01));
        out.push(if ra { 0x80 } else { 0 } | (q[3] & 0x10));
        out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, u8::from(edns)]);
        out.extend_from_slice(&q[12..question_end]);
        out.extend_from_slice(rr);
        if edns {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&super::zone::MAX_UDP.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        (out.len() <= max).then_some(out)
    }
}
