//! The forwarders' answers kept for their TTL, sans IO (the caller says what time it
//! is). Positive answers live for their smallest record TTL, negative ones (NXDOMAIN,
//! no data) for the SOA's negative TTL (RFC 2308); failures and truncated answers are
//! not kept. A hit is handed out with its TTLs lowered by the time it spent here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// Longest we keep anything, whatever the TTL says.
const MAX_TTL: u32 = 3600;
/// Larger answers are not kept: the cache's memory stays bounded by its entries.
const MAX_ENTRY_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: String,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl Key {
    fn of(req: &Message) -> Option<Key> {
        let q = req.queries.first()?;
        Some(Key {
            name: q.name().to_lowercase().to_ascii(),
            qtype: u16::from(q.query_type()),
            qclass: u16::from(q.query_class()),
            dnssec_ok: req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            checking_disabled: req.metadata.checking_disabled,
        })
    }
}

struct Entry {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Cache {
    entries: HashMap<Key, Entry>,
    capacity: usize,
}

impl Cache {
    /// A cache of at most `capacity` answers (0: nothing is kept).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The kept answer to `req`, with `req`'s ID and the TTLs aged, if still fresh.
    pub fn get(&mut self, req: &Message, now: Instant) -> Option<Vec<u8>> {
        let key = Key::of(req)?;
        let e = self.entries.get(&key)?;
        let age = now.saturating_duration_since(e.stored).as_secs();
        if age >= u64::from(e.ttl) {
            self.entries.remove(&key);
            return None;
        }
        let age = age as u32;
        let mut msg = e.msg.clone();
        msg.metadata.id = req.metadata.id;
        msg.metadata.recursion_desired = req.metadata.recursion_desired;
        for r in msg
            .answers
            .iter_mut()
            .chain(msg.authorities.iter_mut())
            .chain(msg.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        msg.to_vec().ok()
    }

    /// Keeps `resp`, the forwarders' answer to `req`, if it may be kept.
    pub fn put(&mut self, req: &Message, resp: &Message, now: Instant) {
        if self.capacity == 0 || resp.metadata.truncation {
            return;
        }
        if resp.to_vec().map_or(true, |b| b.len() > MAX_ENTRY_BYTES) {
            return;
        }
        let Some(key) = Key::of(req) else { return };
        if resp
            .queries
            .first()
            .map(|q| q.name().to_lowercase().to_ascii())
            != Some(key.name.clone())
        {
            return;
        }
        let Some(ttl) = cache_ttl(resp) else { return };
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| {
                now.saturating_duration_since(e.stored) < Duration::from_secs(e.ttl.into())
            });
            if self.entries.len() >= self.capacity {
                // Full of live answers: drop one (any) rather than grow.
                if let Some(k) = self.entries.keys().next().cloned() {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                msg: resp.clone(),
                stored: now,
                ttl: ttl.min(MAX_TTL),
            },
        );
    }
}

/// How long an answer may be kept: `None` for answers that must not be.
fn cache_ttl(resp: &Message) -> Option<u32> {
    match resp.metadata.response_code {
        ResponseCode::NoError if !resp.answers.is_empty() => resp
            .answers
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .map(|r| r.ttl)
            .min(),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            resp.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn query(name: &str, id: u16) -> Message {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    fn answer(req: &Message, ttl: u32) -> Message {
        let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        m.add_queries(req.queries.clone());
        m.add_answer(Record::from_rdata(
            req.queries[0].name().clone(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    #[test]
    fn a_hit_has_the_askers_id_and_aged_ttls_until_it_expires() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        let req = query("example.org.", 1);
        c.put(&req, &answer(&req, 30), t0);
        let again = query("EXAMPLE.org.", 77);
        let hit = Message::from_vec(&c.get(&again, t0 + Duration::from_secs(10)).unwrap()).unwrap();
        assert_eq!(hit.metadata.id, 77);
        assert_eq!(hit.answers[0].ttl, 20);
        assert!(c.get(&again, t0 + Duration::from_secs(30)).is_none());
        assert!(c.is_empty(), "expired answers leave");
    }

    #[test]
    fn negative_answers_live_for_the_soa_minimum_and_failures_not_at_all() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        let req = query("nope.example.org.", 1);
        let mut nx = Message::new(1, MessageType::Response, OpCode::Query);
        nx.add_queries(req.queries.clone());
        nx.metadata.response_code = ResponseCode::NXDomain;
        let origin = Name::from_ascii("example.org.").unwrap();
        nx.add_authority(Record::from_rdata(
            origin.clone(),
            300,
            RData::SOA(SOA::new(origin.clone(), origin, 1, 1, 1, 1, 7)),
        ));
        c.put(&req, &nx, t0);
        assert!(c.get(&req, t0 + Duration::from_secs(6)).is_some());
        assert!(c.get(&req, t0 + Duration::from_secs(7)).is_none());

        let mut fail = nx.clone();
        fail.metadata.response_code = ResponseCode::ServFail;
        c.put(&req, &fail, t0);
        assert!(c.get(&req, t0).is_none());
        let mut cut = answer(&req, 30);
        cut.metadata.truncation = true;
        c.put(&req, &cut, t0);
        assert!(c.get(&req, t0).is_none());
    }

    #[test]
    fn it_never_grows_past_its_capacity_and_zero_keeps_nothing() {
        let t0 = Instant::now();
        let mut c = Cache::new(3);
        for i in 0..10 {
            let req = query(&format!("n{i}.example.org."), 1);
            c.put(&req, &answer(&req, 60), t0);
            assert!(c.len() <= 3);
        }
        let mut off = Cache::new(0);
        let req = query("example.org.", 1);
        off.put(&req, &answer(&req, 60), t0);
        assert!(off.get(&req, t0).is_none());
    }
}
