//! A linearizability checker for a key-value store of registers, in the manner of
//! Knossos and Porcupine: each key is checked on its own (a history of independent
//! registers is linearizable iff each key's is), by Lowe's just-in-time search — take
//! the earliest pending call whose effect is consistent with the register, backtrack
//! at a return that nothing linearized — with a cache of (linearized set, value)
//! states so that concurrent histories stay tractable. IO-free.
//!
//! Writes whose outcome is unknown (a timeout, `Unavailable` "may or may not have been
//! applied") are open to the end of time: they may take effect at any point after
//! their call, or never. Failed reads carry no information and are left out.

use std::collections::{BTreeMap, HashSet};

/// What a client did to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Write(String),
    /// The value read (`None`: the key was absent).
    Read(Option<String>),
}

/// One operation: when it was called, when it returned (`None`: unknown outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub kind: Kind,
    pub call: u64,
    pub ret: Option<u64>,
}

/// The first key whose history is not linearizable, if any.
pub fn check(ops: &[Op]) -> Result<(), String> {
    // A write of unknown outcome whose value no read saw can always be placed after
    // everything else: it constrains nothing, and left in, the search would try it at
    // every point. (Values are assumed unique per key, as the clients write them.)
    let seen: HashSet<(&str, &str)> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::Read(Some(v)) => Some((o.key.as_str(), v.as_str())),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if let (Kind::Write(v), None) = (&op.kind, op.ret)
            && !seen.contains(&(op.key.as_str(), v.as_str()))
        {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_register(&ops) {
            return Err(format!(
                "key {key}: {} operations admit no linearization",
                ops.len()
            ));
        }
    }
    Ok(())
}

/// Events of the search list: a call or a return of operation `op`.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
}

/// Whether one register's history (starting absent) is linearizable.
fn check_register(ops: &[&Op]) -> bool {
    // Events in time order; at equal times calls come first (the more permissive
    // reading: the two operations overlap).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, true, i));
        events.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    events.sort_by_key(|&(t, call, i)| (t, !call, i));
    let list: Vec<Event> = events
        .iter()
        .map(|&(_, call, op)| Event { op, call })
        .collect();
    // A doubly linked list over `list`, with a head sentinel at index n.
    let n = list.len();
    if n == 0 {
        return true;
    }
    let head = n;
    let end = usize::MAX;
    let mut next: Vec<usize> = (1..n).chain([end, 0]).collect();
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..n - 1).chain([end]).collect();
    // Where each operation's return event is.
    let mut ret_at = vec![0; ops.len()];
    for (i, e) in list.iter().enumerate() {
        if !e.call {
            ret_at[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != usize::MAX {
            prev[nx] = i;
        }
    };

    let mut state: Option<&str> = None;
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, Option<&str>)> = HashSet::new();
    // (call event index, the state before it).
    let mut stack: Vec<(usize, Option<&str>)> = Vec::new();
    let mut entry = next[head];
    loop {
        if next[head] == usize::MAX {
            return true;
        }
        if entry == usize::MAX {
            // Ran off the end without reaching a return: cannot happen (every call
            // has its return later in the list), but be safe.
            return false;
        }
        let e = list[entry];
        if e.call {
            let op = ops[e.op];
            let after = match &op.kind {
                Kind::Write(v) => Some(Some(v.as_str())),
                Kind::Read(r) => (r.as_deref() == state).then_some(state),
            };
            if let Some(after) = after {
                linearized.set(e.op, true);
                if cache.insert((linearized.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_at[e.op]);
                    entry = next[head];
                    continue;
                }
                linearized.set(e.op, false);
            }
            entry = next[entry];
        } else {
            // A return whose call nothing could linearize before it: backtrack.
            let Some((call, before)) = stack.pop() else {
                return false;
            };
            let op = list[call].op;
            linearized.set(op, false);
            state = before;
            relink(&mut next, &mut prev, ret_at[op]);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
}

/// Which operations are linearized: a bitset, cheap to hash and clone.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize, on: bool) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if on {
            self.0[w] |= b;
        } else {
            self.0[w] &= !b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, v: &str, call: u64, ret: Option<u64>) -> Op {
        Op {
            key: key.into(),
            kind: Kind::Write(v.into()),
            call,
            ret,
        }
    }

    fn r(key: &str, v: Option<&str>, call: u64, ret: u64) -> Op {
        Op {
            key: key.into(),
            kind: Kind::Read(v.map(str::to_string)),
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn sequential_histories() {
        assert!(check(&[]).is_ok());
        assert!(
            check(&[
                r("k", None, 0, 1),
                w("k", "a", 2, Some(3)),
                r("k", Some("a"), 4, 5)
            ])
            .is_ok()
        );
        // A read of a value never written, or of a stale one.
        assert!(check(&[r("k", Some("x"), 0, 1)]).is_err());
        let stale = [
            w("k", "a", 0, Some(1)),
            w("k", "b", 2, Some(3)),
            r("k", Some("a"), 4, 5),
        ];
        assert!(check(&stale).unwrap_err().contains("key k"));
        // The absent value after a completed write: a lost write.
        assert!(check(&[w("k", "a", 0, Some(1)), r("k", None, 2, 3)]).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // Two overlapping writes; reads after them agree on one of the two.
        let h = [
            w("k", "a", 0, Some(10)),
            w("k", "b", 1, Some(9)),
            r("k", Some("a"), 11, 12),
            r("k", Some("a"), 13, 14),
        ];
        assert!(check(&h).is_ok());
        // ...but not on both, one after the other.
        let h = [
            w("k", "a", 0, Some(10)),
            w("k", "b", 1, Some(9)),
            r("k", Some("a"), 11, 12),
            r("k", Some("b"), 13, 14),
        ];
        assert!(check(&h).is_err());
        // A read overlapping a write sees the old or the new value.
        for seen in [None, Some("a")] {
            assert!(check(&[w("k", "a", 0, Some(10)), r("k", seen, 5, 6)]).is_ok());
        }
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        // Never observed: fine.
        assert!(check(&[w("k", "a", 0, None), r("k", None, 5, 6)]).is_ok());
        // Observed late: fine (it took effect after its call).
        assert!(
            check(&[
                w("k", "a", 0, None),
                r("k", None, 5, 6),
                r("k", Some("a"), 7, 8)
            ])
            .is_ok()
        );
        // Observed, then unobserved again without another write: not fine.
        let h = [
            w("k", "a", 0, None),
            r("k", Some("a"), 5, 6),
            r("k", None, 7, 8),
        ];
        assert!(check(&h).is_err());
        // Observed before its call: not fine.
        assert!(check(&[r("k", Some("a"), 0, 1), w("k", "a", 2, None)]).is_err());
        // Hundreds of unobserved ones among concurrent operations cost nothing.
        let mut h = vec![w("k", "a", 0, Some(1))];
        for i in 0..500 {
            h.push(w("k", &format!("lost{i}"), 2 + i, None));
        }
        h.push(r("k", Some("a"), 1000, 1001));
        assert!(check(&h).is_ok());
    }

    #[test]
    fn keys_are_checked_apart_and_a_busy_history_stays_fast() {
        let h = [
            w("a", "1", 0, Some(1)),
            w("b", "2", 0, Some(1)),
            r("a", Some("1"), 2, 3),
            r("b", Some("2"), 2, 3),
        ];
        assert!(check(&h).is_ok());
        // 8 clients, 400 overlapping operations on one key: the cache keeps it quick.
        let mut ops = Vec::new();
        let mut last = String::from("v0");
        ops.push(w("k", "v0", 0, Some(1)));
        for i in 1..400u64 {
            let t = i * 10;
            if i % 3 == 0 {
                ops.push(r("k", Some(&last), t, t + 25));
            } else {
                last = format!("v{i}");
                ops.push(w("k", &last, t, Some(t + 5)));
            }
        }
        let started = std::time::Instant::now();
        assert!(check(&ops).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
