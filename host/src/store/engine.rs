//! The node's RocksDB: Raft log, Raft metadata, and the replicated key/value state.
//!
//! One database, so one write-ahead log: a synced write (log append, vote) makes every
//! earlier unsynced write durable too. State writes are unsynced: anything lost on power
//! failure is re-applied from the synced log, because the applied index is written in
//! the same batch as the state it describes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use prost::Message;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use webmesh_api::internal::{StateEntry, StateSnapshot};
use webmesh_api::v1::MeshNode;

use super::ops::{ApplyOutcome, Change, Proposal};
use crate::mesh::keys;
use crate::mesh::registry::NodeIndex;
use crate::mesh::rules::{self, StateRead, Write};

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_STATE: &str = "state";
pub const CF_TTL: &str = "ttl";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
}

fn corrupt(what: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// A stored value: 8 bytes of expiry (Unix ms, big-endian; 0 = never), then the value.
fn encode_value(value: &str, expires_at_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v.extend_from_slice(value.as_bytes());
    v
}

fn decode_value(raw: &[u8]) -> Result<(String, u64), StoreError> {
    if raw.len() < 8 {
        return Err(corrupt("state value", "shorter than its header"));
    }
    let exp = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let value = String::from_utf8(raw[8..].to_vec()).map_err(|e| corrupt("state value", e))?;
    Ok((value, exp))
}

fn ttl_key(expires_at_ms: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// A live (unexpired) key/value pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub expires_at_ms: u64,
}

fn live(exp: u64, now_ms: u64) -> bool {
    exp == 0 || exp > now_ms
}

/// The database, shared by the log store, the state machine and readers.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    /// The node records' addresses and IDs, as written (registrations check it).
    nodes: Arc<RwLock<NodeIndex>>,
}

impl Engine {
    pub fn open(path: &Path) -> Result<Engine, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A mesh's state is small; keep RocksDB's footprint small too.
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        let cfs = [CF_LOG, CF_META, CF_STATE, CF_TTL]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let engine = Engine {
            db: Arc::new(db),
            nodes: Arc::default(),
        };
        engine.reload_nodes()?;
        Ok(engine)
    }

    /// Rebuilds the node index from the state (after a snapshot replaced it).
    pub fn reload_nodes(&self) -> Result<(), StoreError> {
        let mut ix = NodeIndex::default();
        for e in self.list_at(keys::NODES, 0, false)? {
            ix.apply(&e.key, Some(&e.value));
        }
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = ix;
        Ok(())
    }

    /// Keeps the node index in step with changes just written.
    pub fn note_changes(&self, changes: &[Change]) {
        let mut ix = None;
        for c in changes.iter().filter(|c| c.key().starts_with(keys::NODES)) {
            ix.get_or_insert_with(|| self.nodes.write().unwrap_or_else(|p| p.into_inner()))
                .apply(c.key(), c.value());
        }
    }

    /// The directory RocksDB keeps its files in.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    /// Writes a batch; `sync` makes it (and everything before it) durable on return.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Makes every earlier write durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// A live value, or `None` if absent or expired.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.get_at(key, super::ops::now_ms())
    }

    fn get_at(&self, key: &str, now_ms: u64) -> Result<Option<Entry>, StoreError> {
        match self.db.get_cf(self.cf(CF_STATE), key)? {
            None => Ok(None),
            Some(raw) => {
                let (value, exp) = decode_value(&raw)?;
                Ok(live(exp, now_ms).then(|| Entry {
                    key: key.to_string(),
                    value,
                    expires_at_ms: exp,
                }))
            }
        }
    }

    /// Live entries whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.list_at(prefix, super::ops::now_ms(), true)
    }

    fn list_at(
        &self,
        prefix: &str,
        now_ms: u64,
        only_live: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_STATE),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(k.to_vec()).map_err(|e| corrupt("state key", e))?;
            let (value, exp) = decode_value(&v)?;
            if !only_live || live(exp, now_ms) {
                out.push(Entry {
                    key,
                    value,
                    expires_at_ms: exp,
                });
            }
        }
        Ok(out)
    }

    /// Keys whose TTL ran out by `now_ms`, with the expiry they carry (for the sweeper).
    pub fn expired(&self, now_ms: u64, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TTL), IteratorMode::Start) {
            let (k, _) = item?;
            if k.len() < 8 {
                return Err(corrupt("ttl index", "short key"));
            }
            let exp = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            if exp > now_ms || out.len() >= limit {
                break;
            }
            let key = String::from_utf8(k[8..].to_vec()).map_err(|e| corrupt("ttl index", e))?;
            out.push((key, exp));
        }
        Ok(out)
    }

    /// Applies the proposals of one log entry into `batch` (not yet written), in order.
    /// Each proposal is atomic on its own: a refused one changes nothing and says why,
    /// and later ones see the effects of earlier ones.
    pub fn apply_entry(&self, batch: &mut WriteBatch, proposals: &[Proposal]) -> Vec<ApplyOutcome> {
        let mut base: Pending = HashMap::new();
        let mut outcomes = Vec::with_capacity(proposals.len());
        for p in proposals {
            let (outcome, own) = self.apply_one(&base, p);
            if outcome.error.is_none() {
                for (key, (old_exp, new)) in own {
                    // The expiry stored in the database is the one whose index entry goes.
                    base.entry(key)
                        .and_modify(|e| e.1 = new.clone())
                        .or_insert((old_exp, new));
                }
            }
            outcomes.push(outcome);
        }
        for (key, (old_exp, new)) in base {
            if old_exp > 0 {
                batch.delete_cf(self.cf(CF_TTL), ttl_key(old_exp, &key));
            }
            match new {
                Some((v, exp)) => {
                    batch.put_cf(self.cf(CF_STATE), &key, encode_value(&v, exp));
                    if exp > 0 {
                        batch.put_cf(self.cf(CF_TTL), ttl_key(exp, &key), b"");
                    }
                }
                None => batch.delete_cf(self.cf(CF_STATE), &key),
            }
        }
        outcomes
    }

    fn apply_one(&self, base: &Pending, p: &Proposal) -> (ApplyOutcome, Pending) {
        let mut txn = Txn {
            engine: self,
            base,
            overlay: HashMap::new(),
            changes: Vec::new(),
        };
        let mut value = None;
        for op in &p.ops {
            let res = rules::apply(&txn, op, p.issued_at_ms).and_then(|(writes, v)| {
                if v.is_some() {
                    value = v;
                }
                writes.into_iter().try_for_each(|w| match w {
                    Write::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => txn.put(&key, &value, expires_at_ms),
                    Write::Delete { key } => txn.delete(&key),
                })
            });
            if let Err(e) = res {
                let refused = ApplyOutcome {
                    error: Some(e),
                    value: None,
                    changes: vec![],
                };
                return (refused, HashMap::new());
            }
        }
        let outcome = ApplyOutcome {
            error: None,
            value,
            changes: txn.changes,
        };
        (outcome, txn.overlay)
    }

    /// A snapshot of the whole state as of `view` (expired keys included until swept,
    /// so that every replica restores to the same bytes).
    pub fn snapshot_from(
        &self,
        view: &rocksdb::Snapshot<'_>,
        last_index: u64,
        last_term: u64,
        membership: Vec<u8>,
    ) -> Result<StateSnapshot, StoreError> {
        let mut entries = Vec::new();
        for item in view.iterator_cf(self.cf(CF_STATE), IteratorMode::Start) {
            let (k, v) = item?;
            let key = String::from_utf8(k.to_vec()).map_err(|e| corrupt("state key", e))?;
            let (value, expires_at_ms) = decode_value(&v)?;
            entries.push(StateEntry {
                key,
                value,
                expires_at_ms,
            });
        }
        Ok(StateSnapshot {
            format: 1,
            last_log_index: last_index,
            last_log_term: last_term,
            membership,
            entries,
        })
    }

    /// Replaces the whole state with a snapshot's, into `batch`.
    pub fn restore_into(
        &self,
        batch: &mut WriteBatch,
        snap: &StateSnapshot,
    ) -> Result<(), StoreError> {
        if snap.format != 1 {
            return Err(corrupt(
                "snapshot",
                format!("unknown format {}", snap.format),
            ));
        }
        for cf in [CF_STATE, CF_TTL] {
            for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (k, _) = item?;
                batch.delete_cf(self.cf(cf), k);
            }
        }
        for e in &snap.entries {
            batch.put_cf(
                self.cf(CF_STATE),
                &e.key,
                encode_value(&e.value, e.expires_at_ms),
            );
            if e.expires_at_ms > 0 {
                batch.put_cf(self.cf(CF_TTL), ttl_key(e.expires_at_ms, &e.key), b"");
            }
        }
        Ok(())
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<StateSnapshot, StoreError> {
        StateSnapshot::decode(bytes).map_err(|e| corrupt("snapshot", e))
    }
}

/// Pending writes of one proposal: key → (expiry stored before, new value or delete).
type Pending = HashMap<String, (u64, Option<(String, u64)>)>;

struct Txn<'a> {
    engine: &'a Engine,
    /// Effects of the earlier proposals of the same entry.
    base: &'a Pending,
    overlay: Pending,
    changes: Vec<Change>,
}

impl Txn<'_> {
    fn stage(&mut self, key: &str, new: Option<(String, u64)>) -> Result<(), String> {
        if !self.overlay.contains_key(key) {
            let old_exp = self.current(key)?.map(|(_, e)| e).unwrap_or(0);
            self.overlay.insert(key.to_string(), (old_exp, None));
        }
        self.overlay.get_mut(key).expect("inserted above").1 = new;
        Ok(())
    }

    fn put(&mut self, key: &str, value: &str, exp: u64) -> Result<(), String> {
        self.stage(key, Some((value.to_string(), exp)))?;
        self.changes.push(Change::Put {
            key: key.to_string(),
            value: value.to_string(),
            expires_at_ms: exp,
        });
        Ok(())
    }

    /// Deletes `key` (the rules delete only what exists).
    fn delete(&mut self, key: &str) -> Result<(), String> {
        self.stage(key, None)?;
        self.changes.push(Change::Delete {
            key: key.to_string(),
        });
        Ok(())
    }
}

impl StateRead for Txn<'_> {
    /// The current raw value and expiry (expired values included).
    fn current(&self, key: &str) -> Result<Option<(String, u64)>, String> {
        if let Some((_, new)) = self.overlay.get(key).or_else(|| self.base.get(key)) {
            return Ok(new.clone());
        }
        let raw = self
            .engine
            .db
            .get_cf(self.engine.cf(CF_STATE), key)
            .map_err(|e| e.to_string())?;
        raw.map(|r| decode_value(&r).map_err(|e| e.to_string()))
            .transpose()
    }

    fn staged_nodes(&self) -> Result<Vec<(String, Option<MeshNode>)>, String> {
        let from_base = self
            .base
            .iter()
            .filter(|(k, _)| !self.overlay.contains_key(*k));
        let mut out = Vec::new();
        for (key, (_, new)) in self.overlay.iter().chain(from_base) {
            if let Some(id) = key.strip_prefix(keys::NODES) {
                let node = match new {
                    Some((v, _)) => {
                        Some(serde_json::from_str(v).map_err(|e| format!("{key}: {e}"))?)
                    }
                    None => None,
                };
                out.push((id.to_string(), node));
            }
        }
        Ok(out)
    }

    fn with_index<R>(&self, f: impl FnOnce(&NodeIndex) -> R) -> R {
        f(&self.engine.nodes.read().unwrap_or_else(|p| p.into_inner()))
    }
}
