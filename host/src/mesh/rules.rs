//! The state machine's rules (pure): what one operation writes, given the state as the
//! proposal sees it. The store supplies that view ([`StateRead`]) and stages the
//! writes; here is only the decision, so it is tested without RocksDB.
//!
//! - `Put` writes, with an expiry `ttl` after the proposal's time;
//! - `Delete` deletes what exists;
//! - `Expire` deletes a key only if it still carries that expiry and it has passed (a
//!   key written again meanwhile survives);
//! - `RegisterNode` writes a node record, allocating the addresses it lacks from what
//!   every replica holds (so concurrent joins never share one), keeping a rejoining
//!   node's, refusing addresses another node holds.

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use webmesh_api::v1::MeshNode;

use super::ops::Op;
use super::registry::{NodeIndex, addresses, lowest_free};
use super::{ipam, keys};

/// The state as a proposal sees it (earlier writes of the same log entry included).
pub trait StateRead {
    /// A key's value and expiry (0: none), expired or not.
    fn current(&self, key: &str) -> Result<Option<(String, u64)>, String>;
    /// Node records written earlier in the same log entry, decoded (`None`: deleted).
    fn staged_nodes(&self) -> Result<Vec<(String, Option<MeshNode>)>, String>;
    /// Runs `f` over the index of the node records as they stood before this log entry
    /// (expired or not: an address stays taken until its record goes).
    fn with_index<R>(&self, f: impl FnOnce(&NodeIndex) -> R) -> R;
}

/// One write an operation decides; once applied, the change watchers and storage
/// mirrors see (`store::ops::Change`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Write {
    Put {
        key: String,
        value: String,
        expires_at_ms: u64,
    },
    Delete {
        key: String,
    },
}

/// What `op` writes, applied at `now_ms` (the proposer's clock), and the value it
/// returns (a registered node's record). `Err`: the whole proposal is refused.
pub fn apply(
    state: &impl StateRead,
    op: &Op,
    now_ms: u64,
) -> Result<(Vec<Write>, Option<String>), String> {
    Ok(match op {
        Op::Put { key, value, ttl_ms } => (
            vec![Write::Put {
                key: key.clone(),
                value: value.clone(),
                expires_at_ms: if *ttl_ms > 0 {
                    now_ms.saturating_add(*ttl_ms)
                } else {
                    0
                },
            }],
            None,
        ),
        Op::Delete { key } => (delete_if_present(state, key)?, None),
        Op::Expire { key, expires_at_ms } => match state.current(key)? {
            Some((_, exp)) if exp == *expires_at_ms && exp <= now_ms => {
                (delete_if_present(state, key)?, None)
            }
            _ => (vec![], None),
        },
        Op::RegisterNode {
            node_json,
            assign_ipv4,
        } => {
            let (key, json) = register_node(state, node_json, *assign_ipv4, now_ms)?;
            (
                vec![Write::Put {
                    key,
                    value: json.clone(),
                    expires_at_ms: 0,
                }],
                Some(json),
            )
        }
    })
}

fn delete_if_present(state: &impl StateRead, key: &str) -> Result<Vec<Write>, String> {
    Ok(match state.current(key)? {
        Some(_) => vec![Write::Delete {
            key: key.to_string(),
        }],
        None => vec![],
    })
}

fn setting(state: &impl StateRead, key: &str) -> Result<String, String> {
    state
        .current(key)?
        .map(|(v, _)| v)
        .ok_or_else(|| format!("mesh setting {key} is missing; was the mesh bootstrapped?"))
}

/// `owner` from the committed index, unless it is `me` or its record is staged anew.
fn committed_other<'a>(
    owner: Option<&'a str>,
    me: &str,
    staged: &[(String, Option<MeshNode>)],
) -> Option<&'a str> {
    owner.filter(|o| *o != me && !staged.iter().any(|(s, _)| s == o))
}

/// [`lowest_free`] of `candidates`, with what the index holds from the first of them on.
fn first_free<T: Ord + Copy, H: Iterator<Item = T>>(
    candidates: impl Iterator<Item = T>,
    held_from: impl FnOnce(T) -> H,
    released: impl Iterator<Item = Option<T>>,
    staged: impl Iterator<Item = Option<T>>,
) -> Option<T> {
    let mut candidates = candidates.peekable();
    let first = *candidates.peek()?;
    let released: Vec<T> = released.flatten().collect();
    let staged: Vec<T> = staged.flatten().collect();
    lowest_free(candidates, held_from(first), &released, &staged)
}

/// A node record to write: its key and JSON.
pub fn register_node(
    state: &impl StateRead,
    node_json: &str,
    assign_ipv4: bool,
    now_ms: u64,
) -> Result<(String, String), String> {
    let mut node: MeshNode =
        serde_json::from_str(node_json).map_err(|e| format!("node record: {e}"))?;
    let key = keys::node(&node.id);
    let staged = state.staged_nodes()?;
    let existing = state
        .current(&key)?
        .map(|(v, _)| serde_json::from_str::<MeshNode>(&v))
        .transpose()
        .map_err(|e| format!("{key}: {e}"))?;
    if let Some(old) = &existing {
        // A rejoin keeps the addresses it had.
        if node.private_ipv4.is_empty() {
            node.private_ipv4 = old.private_ipv4.clone();
        }
        if node.private_ipv6.is_empty() {
            node.private_ipv6 = old.private_ipv6.clone();
        }
        if node.created_at.is_none() {
            node.created_at = old.created_at;
        }
    }
    let v4_net: Option<Ipv4Net> = match assign_ipv4 && node.private_ipv4.is_empty() {
        true => Some(
            setting(state, keys::MESH_IPV4)?
                .parse()
                .map_err(|e| format!("mesh IPv4 network: {e}"))?,
        ),
        false => None,
    };
    let v6_net: Option<Ipv6Net> = match node.private_ipv6.is_empty() {
        true => Some(
            setting(state, keys::MESH_IPV6)?
                .parse()
                .map_err(|e| format!("mesh IPv6 network: {e}"))?,
        ),
        false => None,
    };
    let me = node.id.clone();
    // Who else holds something: the records staged in this entry first, then the index
    // of what was committed before it (minus records staged since). Lookups borrow and
    // allocate nothing; allocation walks the held addresses in order.
    let staged_other = |f: &dyn Fn(&MeshNode) -> bool| {
        staged
            .iter()
            .find(|(id, n)| *id != me && n.as_ref().is_some_and(f))
            .map(|(id, _)| id.as_str())
    };
    state.with_index(|ix| {
        let committed = |owner| committed_other(owner, &me, &staged);
        let v4_owner = |a: Ipv4Addr| {
            staged_other(&|n| addresses(n).0 == Some(a)).or_else(|| committed(ix.ipv4_owner(a)))
        };
        let v6_owner = |p: Ipv6Net| {
            staged_other(&|n| addresses(n).1 == Some(p)).or_else(|| committed(ix.ipv6_owner(p)))
        };
        if existing.is_none() {
            let twin = staged_other(&|n| n.id.eq_ignore_ascii_case(&me))
                .or_else(|| committed(ix.folded_owner(&me)));
            if let Some(twin) = twin {
                // IDs are DNS names, which ignore case: a twin would take the other's name.
                return Err(format!(
                    "node ID {me:?} differs only in case from node {twin:?}; choose another ID"
                ));
            }
        }
        // Addresses the caller chose (e.g. an IPAM plugin) must still be unique.
        let (v4, v6) = addresses(&node);
        if let Some(owner) = v4.and_then(v4_owner) {
            return Err(format!(
                "IPv4 {} already belongs to node {owner}",
                node.private_ipv4
            ));
        }
        if let Some(owner) = v6.and_then(v6_owner) {
            return Err(format!(
                "IPv6 {} already belongs to node {owner}",
                node.private_ipv6
            ));
        }
        // The lowest address no one else holds. The records this one replaces (its
        // own, and those staged anew earlier in this entry) release what the index says
        // they hold; what the staged records hold now is taken.
        let replaced = std::iter::once(me.as_str()).chain(staged.iter().map(|(id, _)| id.as_str()));
        let released: Vec<_> = replaced
            .map(|id| {
                let (v4, v6) = ix.held_by(id);
                (
                    v4.filter(|a| ix.ipv4_owner(*a) == Some(id)),
                    v6.filter(|p| ix.ipv6_owner(*p) == Some(id)),
                )
            })
            .collect();
        let staged_now: Vec<_> = (staged.iter())
            .filter(|(id, _)| *id != me)
            .filter_map(|(_, n)| n.as_ref().map(addresses))
            .collect();
        if let Some(net) = v4_net {
            let addr = first_free(
                ipam::ipv4_hosts(net),
                |f| ix.ipv4_held_from(f),
                released.iter().map(|h| h.0),
                staged_now.iter().map(|h| h.0),
            )
            .ok_or_else(|| ipam::IpamError::V4Exhausted(net).to_string())?;
            node.private_ipv4 = format!("{addr}/32");
        }
        if let Some(net) = v6_net {
            node.private_ipv6 = first_free(
                ipam::ipv6_prefixes(net),
                |f| ix.ipv6_held_from(f),
                released.iter().map(|h| h.1),
                staged_now.iter().map(|h| h.1),
            )
            .ok_or_else(|| ipam::IpamError::V6Exhausted(net).to_string())?
            .to_string();
        }
        Ok(())
    })?;
    let stamp = Some(webmesh_api::wkt::Timestamp {
        seconds: (now_ms / 1000) as i64,
        nanos: ((now_ms % 1000) * 1_000_000) as i32,
    });
    if node.created_at.is_none() {
        node.created_at = stamp;
    }
    node.updated_at = stamp;
    let json = serde_json::to_string(&node).map_err(|e| e.to_string())?;
    Ok((key, json))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    /// A state in a map: key → (value, expiry).
    #[derive(Default)]
    struct Map(BTreeMap<String, (String, u64)>);

    impl StateRead for Map {
        fn current(&self, key: &str) -> Result<Option<(String, u64)>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn staged_nodes(&self) -> Result<Vec<(String, Option<MeshNode>)>, String> {
            Ok(Vec::new())
        }
        fn with_index<R>(&self, f: impl FnOnce(&NodeIndex) -> R) -> R {
            let mut ix = NodeIndex::default();
            for (k, (v, _)) in &self.0 {
                ix.apply(k, Some(v));
            }
            f(&ix)
        }
    }

    impl Map {
        fn mesh() -> Map {
            let mut m = Map::default();
            m.0.insert(keys::MESH_IPV4.into(), ("10.0.0.0/29".into(), 0));
            m.0.insert(keys::MESH_IPV6.into(), ("fd00:1:2::/48".into(), 0));
            m
        }
        fn write(&mut self, writes: Vec<Write>) {
            for w in writes {
                match w {
                    Write::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => {
                        self.0.insert(key, (value, expires_at_ms));
                    }
                    Write::Delete { key } => {
                        self.0.remove(&key);
                    }
                }
            }
        }
    }

    fn register(id: &str, v4: &str) -> Op {
        Op::RegisterNode {
            node_json: serde_json::to_string(&MeshNode {
                id: id.into(),
                private_ipv4: v4.into(),
                ..Default::default()
            })
            .unwrap(),
            assign_ipv4: true,
        }
    }

    #[test]
    fn registration_allocates_distinct_addresses_keeps_them_and_refuses_taken_ones() {
        let mut m = Map::mesh();
        let mut seen = HashSet::new();
        for id in ["a", "b", "c"] {
            let (w, json) = apply(&m, &register(id, ""), 1_000).unwrap();
            let n: MeshNode = serde_json::from_str(&json.unwrap()).unwrap();
            assert!(
                seen.insert(n.private_ipv4.clone()),
                "{id}: {}",
                n.private_ipv4
            );
            assert!(n.private_ipv6.ends_with("::/64"));
            m.write(w);
        }
        // A rejoin keeps its addresses and its creation time.
        let before: MeshNode = serde_json::from_str(&m.0[&keys::node("b")].0).unwrap();
        let (_, json) = apply(&m, &register("b", ""), 9_000).unwrap();
        let after: MeshNode = serde_json::from_str(&json.unwrap()).unwrap();
        assert_eq!(after.private_ipv4, before.private_ipv4);
        assert_eq!(after.created_at, before.created_at);
        assert_ne!(after.updated_at, before.updated_at);
        // Another node's address: refused.
        let e = apply(&m, &register("d", &before.private_ipv4), 1).unwrap_err();
        assert!(e.contains("already belongs to node b"), "{e}");
        // Another node's ID in other letters' case: refused (DNS names ignore case).
        let e = apply(&m, &register("B", ""), 1).unwrap_err();
        assert!(e.contains("differs only in case"), "{e}");
        // The /29 holds 6 hosts: after them, the network is full.
        for id in ["d", "e", "f"] {
            let (w, _) = apply(&m, &register(id, ""), 1).unwrap();
            m.write(w);
        }
        assert!(apply(&m, &register("g", ""), 1).is_err());
        // Without settings: a clear refusal.
        let e = apply(&Map::default(), &register("x", ""), 1).unwrap_err();
        assert!(e.contains("bootstrapped"), "{e}");
    }

    #[test]
    fn expiry_spares_a_key_written_again_and_ttls_count_from_the_proposal() {
        let mut m = Map::mesh();
        let put = Op::Put {
            key: "/k".into(),
            value: "v".into(),
            ttl_ms: 100,
        };
        let (w, _) = apply(&m, &put, 1_000).unwrap();
        assert_eq!(
            w,
            vec![Write::Put {
                key: "/k".into(),
                value: "v".into(),
                expires_at_ms: 1_100
            }]
        );
        m.write(w);
        let expire = |at| Op::Expire {
            key: "/k".into(),
            expires_at_ms: at,
        };
        // Not yet due; another expiry (written again since): nothing.
        assert!(apply(&m, &expire(1_100), 1_050).unwrap().0.is_empty());
        assert!(apply(&m, &expire(1_000), 2_000).unwrap().0.is_empty());
        assert_eq!(apply(&m, &expire(1_100), 2_000).unwrap().0.len(), 1);
        // Deleting what is not there writes nothing.
        let del = Op::Delete {
            key: "/nope".into(),
        };
        assert!(apply(&m, &del, 1).unwrap().0.is_empty());
    }
}
