//! openraft storage (v2 traits) on the node's RocksDB: the log store and the state
//! machine.

// openraft's traits fix the error type (`StorageError`, 224 bytes); boxing it in our
// helpers would only move the allocation.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use prost::Message;
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::types::{Member, NodeId, TypeConfig};
use crate::mesh::keys;
use crate::mesh::members::Members;
use crate::store::engine::{CF_LOG, CF_META, Engine};
use crate::store::ops::{ApplyOutcome, Change};

type Entry = openraft::Entry<TypeConfig>;
type SErr = StorageError<NodeId>;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const APPLIED: &str = "sm_applied";
const MEMBERSHIP: &str = "sm_membership";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> SErr {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn read_err(e: impl ToString) -> SErr {
    io_err(ErrorSubject::Store, ErrorVerb::Read, e)
}

fn write_err(e: impl ToString) -> SErr {
    io_err(ErrorSubject::Store, ErrorVerb::Write, e)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SErr> {
    postcard::to_stdvec(v).map_err(write_err)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, SErr> {
    postcard::from_bytes(b).map_err(read_err)
}

fn meta<T: DeserializeOwned>(engine: &Engine, key: &str) -> Result<Option<T>, SErr> {
    engine
        .get_meta(key)
        .map_err(read_err)?
        .map(|b| dec(&b))
        .transpose()
}

/// The Raft log and vote. openraft 0.9 waits for each append to be flushed before it
/// takes the next, so an append is one synced write; group commit happens above Raft
/// (see `RaftNode::propose`).
///
/// Only a voter's log counts towards a quorum, so a non-voter (most nodes of a mesh)
/// appends without fsync: if it loses the tail on a power cut the leader sends it
/// again. Which one this node is comes from the membership entries passing through
/// `append`; in doubt (start-up, after a truncation) it syncs.
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    id: NodeId,
    sync: Arc<AtomicBool>,
}

impl LogStore {
    pub fn new(engine: Engine, id: NodeId) -> LogStore {
        // The last membership this node knows of: in its log, else its state machine.
        let mut voter = None;
        for item in engine
            .db()
            .iterator_cf(engine.cf(CF_LOG), IteratorMode::End)
        {
            let Ok((_, v)) = item else { break };
            if let Ok(e) = dec::<Entry>(&v)
                && let EntryPayload::Membership(m) = &e.payload
            {
                voter = Some(m.voter_ids().any(|v| v == id));
                break;
            }
        }
        if voter.is_none()
            && let Ok(Some(sm)) = meta::<StoredMembership<NodeId, Member>>(&engine, MEMBERSHIP)
            && sm.log_id().is_some()
        {
            voter = Some(sm.membership().voter_ids().any(|v| v == id));
        }
        LogStore {
            engine,
            id,
            sync: Arc::new(AtomicBool::new(voter.unwrap_or(true))),
        }
    }

    /// Whether appends are fsynced (this node votes, or may).
    pub fn syncs(&self) -> bool {
        self.sync.load(Ordering::SeqCst)
    }

    fn last_entry(&self) -> Result<Option<Entry>, SErr> {
        let mut it = self
            .engine
            .db()
            .iterator_cf(self.engine.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                Ok(Some(dec(&v)?))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let start_key = start.to_be_bytes();
        let iter = self.engine.db().iterator_cf(
            self.engine.cf(CF_LOG),
            IteratorMode::From(&start_key, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(read_err)?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(read_err)?);
            if !range.contains(&idx) {
                break;
            }
            out.push(dec(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged_log_id: Option<LogId<NodeId>> = meta(&self.engine, PURGED)?;
        let last_log_id = self.last_entry()?.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let mut b = WriteBatch::default();
        b.put_cf(self.engine.cf(CF_META), VOTE, enc(vote)?);
        self.engine
            .write(b, true)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        meta(&self.engine, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let mut b = WriteBatch::default();
        b.put_cf(self.engine.cf(CF_META), COMMITTED, enc(&committed)?);
        self.engine.write(b, false).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(meta::<Option<LogId<NodeId>>>(&self.engine, COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::default();
        let mut sync = self.syncs();
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                let voter = m.voter_ids().any(|v| v == self.id);
                self.sync.store(voter, Ordering::SeqCst);
                // The entry that makes us a voter is itself synced.
                sync |= voter;
            }
            b.put_cf(
                self.engine.cf(CF_LOG),
                e.log_id.index.to_be_bytes(),
                enc(&e)?,
            );
        }
        // A voter syncs before the callback: an acknowledged entry survives a power cut.
        let res = self.engine.write(b, sync);
        let report = res
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()));
        callback.log_io_completed(report);
        res.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        // The truncated tail may have held the membership we went by.
        self.sync.store(true, Ordering::SeqCst);
        let mut b = WriteBatch::default();
        let cf = self.engine.cf(CF_LOG);
        b.delete_range_cf(cf, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
        b.delete_cf(cf, u64::MAX.to_be_bytes());
        self.engine
            .write(b, true)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut b = WriteBatch::default();
        b.put_cf(self.engine.cf(CF_META), PURGED, enc(&log_id)?);
        b.delete_range_cf(
            self.engine.cf(CF_LOG),
            0u64.to_be_bytes(),
            (log_id.index + 1).to_be_bytes(),
        );
        self.engine
            .write(b, false)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// A change to the replicated state, pushed to everything that follows it (peer
/// computation, plugins). `Reset` means the state was replaced by a snapshot: re-read it.
#[derive(Debug, Clone)]
pub enum StateEvent {
    Applied {
        index: u64,
        term: u64,
        changes: Arc<Vec<Change>>,
    },
    Reset {
        index: u64,
    },
}

/// The state machine: applies proposals to the key/value state, idempotently by index.
#[derive(Clone)]
pub struct StateMachine {
    engine: Engine,
    events: broadcast::Sender<StateEvent>,
    /// Node ID ↔ registered key, updated in step with the applied state.
    members: Arc<RwLock<Members>>,
    /// Bumped whenever the RBAC objects change, so the compiled policy is rebuilt.
    rbac_version: Arc<AtomicU64>,
}

/// The member index of what `engine` holds now.
fn load_members(engine: &Engine) -> Members {
    let mut m = Members::default();
    match engine.list(keys::NODES) {
        Ok(nodes) => nodes.iter().for_each(|e| m.apply(&e.key, Some(&e.value))),
        Err(e) => tracing::warn!(error = %e, "cannot read the node records"),
    }
    m
}

impl StateMachine {
    pub fn new(engine: Engine, events: broadcast::Sender<StateEvent>) -> StateMachine {
        let members = Arc::new(RwLock::new(load_members(&engine)));
        StateMachine {
            engine,
            events,
            members,
            rbac_version: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn rbac_version(&self) -> Arc<AtomicU64> {
        self.rbac_version.clone()
    }

    pub fn members(&self) -> Arc<RwLock<Members>> {
        self.members.clone()
    }

    fn applied(&self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(meta::<Option<LogId<NodeId>>>(&self.engine, APPLIED)?.flatten())
    }

    fn membership(&self) -> Result<StoredMembership<NodeId, Member>, SErr> {
        Ok(meta(&self.engine, MEMBERSHIP)?.unwrap_or_default())
    }

    /// The state as snapshot bytes (`internal.StateSnapshot`), consistent with its meta.
    pub fn export(&self) -> Result<(SnapshotMeta<NodeId, Member>, Vec<u8>), SErr> {
        // A point-in-time view: applies may run while the snapshot is built.
        let view = self.engine.db().snapshot();
        let get = |key: &str| view.get_cf(self.engine.cf(CF_META), key).map_err(read_err);
        let applied: Option<LogId<NodeId>> = get(APPLIED)?.map(|b| dec(&b)).transpose()?.flatten();
        let membership: StoredMembership<NodeId, Member> = get(MEMBERSHIP)?
            .map(|b| dec(&b))
            .transpose()?
            .unwrap_or_default();
        let membership_json = serde_json::to_vec(&membership).map_err(read_err)?;
        let snap = self
            .engine
            .snapshot_from(
                &view,
                applied.map(|l| l.index).unwrap_or(0),
                applied.map(|l| l.leader_id.term).unwrap_or(0),
                membership_json,
            )
            .map_err(read_err)?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}-{}",
                applied.map(|l| l.leader_id.term).unwrap_or(0),
                applied.map(|l| l.index).unwrap_or(0),
                crate::store::ops::now_ms()
            ),
        };
        Ok((meta, snap.encode_to_vec()))
    }

    /// Replaces the state with snapshot bytes, as `install_snapshot` does.
    pub fn restore(&self, meta: &SnapshotMeta<NodeId, Member>, data: &[u8]) -> Result<(), SErr> {
        let snap = Engine::decode_snapshot(data).map_err(read_err)?;
        let mut b = WriteBatch::default();
        self.engine.restore_into(&mut b, &snap).map_err(write_err)?;
        let cf = self.engine.cf(CF_META);
        b.put_cf(cf, APPLIED, enc(&meta.last_log_id)?);
        b.put_cf(cf, MEMBERSHIP, enc(&meta.last_membership)?);
        b.put_cf(cf, SNAPSHOT_META, enc(meta)?);
        b.put_cf(cf, SNAPSHOT_DATA, data);
        self.engine.write(b, true).map_err(write_err)?;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = load_members(&self.engine);
        self.rbac_version.fetch_add(1, Ordering::AcqRel);
        let _ = self.events.send(StateEvent::Reset {
            index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
        });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (meta, data) = self.export()?;
        let mut b = WriteBatch::default();
        let cf = self.engine.cf(CF_META);
        b.put_cf(cf, SNAPSHOT_META, enc(&meta)?);
        b.put_cf(cf, SNAPSHOT_DATA, &data);
        self.engine
            .write(b, true)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), SErr> {
        Ok((self.applied()?, self.membership()?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<ApplyOutcome>>, SErr>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied()?;
        let mut out = Vec::new();
        for entry in entries {
            // Idempotent by index: an entry at or below the applied index is done.
            if applied.is_some_and(|a| entry.log_id.index <= a.index) {
                out.push(Vec::new());
                continue;
            }
            let mut b = WriteBatch::default();
            let cf = self.engine.cf(CF_META);
            let outcomes = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => self.engine.apply_entry(&mut b, &batch.proposals),
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                    b.put_cf(cf, MEMBERSHIP, enc(&sm)?);
                    Vec::new()
                }
            };
            b.put_cf(cf, APPLIED, enc(&Some(entry.log_id))?);
            self.engine.write(b, false).map_err(write_err)?;
            applied = Some(entry.log_id);
            let changes: Vec<Change> = outcomes
                .iter()
                .flat_map(|o| o.changes.iter().cloned())
                .collect();
            if changes
                .iter()
                .any(|c| crate::store::views::is_rbac_key(c.key()))
            {
                self.rbac_version.fetch_add(1, Ordering::AcqRel);
            }
            if changes.iter().any(|c| c.key().starts_with(keys::NODES)) {
                let mut m = self.members.write().unwrap_or_else(|p| p.into_inner());
                for c in &changes {
                    m.apply(c.key(), c.value());
                }
            }
            if !changes.is_empty() {
                let _ = self.events.send(StateEvent::Applied {
                    index: entry.log_id.index,
                    term: entry.log_id.leader_id.term,
                    changes: Arc::new(changes),
                });
            }
            out.push(outcomes);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        self.restore(meta, snapshot.get_ref())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let meta: Option<SnapshotMeta<NodeId, Member>> = meta(&self.engine, SNAPSHOT_META)?;
        let data = self.engine.get_meta(SNAPSHOT_DATA).map_err(read_err)?;
        Ok(match (meta, data) {
            (Some(meta), Some(data)) => Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::testing::log_id;
    use openraft::{EntryPayload, Membership};

    use super::*;
    use crate::store::ops::{Batch, Op, Proposal, now_ms};

    fn machine() -> (
        tempfile::TempDir,
        StateMachine,
        broadcast::Receiver<StateEvent>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let (tx, rx) = broadcast::channel(64);
        (dir, StateMachine::new(engine, tx), rx)
    }

    fn entry(index: u64, issued_at_ms: u64, ops: Vec<Op>) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Batch {
                proposals: vec![Proposal { issued_at_ms, ops }],
            }),
        }
    }

    /// The outcome of each entry's single proposal (empty for non-proposal entries).
    async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Vec<ApplyOutcome> {
        let out = RaftStateMachine::apply(sm, entries).await.unwrap();
        out.into_iter()
            .map(|v| v.into_iter().next().unwrap_or_default())
            .collect()
    }

    fn put(key: &str, value: &str, ttl_ms: u64) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            ttl_ms,
        }
    }

    fn value(sm: &StateMachine, key: &str) -> Option<String> {
        sm.engine.get(key).unwrap().map(|e| e.value)
    }

    fn membership_entry(index: u64, voters: &[u64], learners: &[u64]) -> Entry {
        // Nodes outside the voter set are learners.
        let nodes: BTreeMap<u64, Member> = voters
            .iter()
            .chain(learners)
            .map(|&i| (i, Member::default()))
            .collect();
        let m = Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], nodes);
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Membership(m),
        }
    }

    #[tokio::test]
    async fn only_voters_fsync_their_log() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut log = LogStore::new(engine.clone(), 7);
        assert!(log.syncs(), "unknown membership: sync");
        log.blocking_append([membership_entry(1, &[1], &[7])])
            .await
            .unwrap();
        assert!(!log.syncs(), "a learner does not");
        log.blocking_append([membership_entry(2, &[1, 7], &[])])
            .await
            .unwrap();
        assert!(log.syncs(), "promoted: it does");
        log.blocking_append([membership_entry(3, &[1], &[7])])
            .await
            .unwrap();
        assert!(!log.syncs());
        // Reopened: the last membership in the log decides.
        assert!(!LogStore::new(engine.clone(), 7).syncs());
        assert!(LogStore::new(engine.clone(), 1).syncs(), "node 1 votes");
        log.truncate(log_id(1, 1, 3)).await.unwrap();
        assert!(log.syncs(), "after a truncation, in doubt: sync");
    }

    #[tokio::test]
    async fn put_and_delete() {
        let (_d, mut sm, mut events) = machine();
        let now = now_ms();
        let out = apply(
            &mut sm,
            vec![
                entry(1, now, vec![put("/a", "1", 0), put("/b", "2", 0)]),
                entry(2, now, vec![Op::Delete { key: "/a".into() }]),
            ],
        )
        .await;
        assert_eq!(out.len(), 2);
        assert_eq!(value(&sm, "/a"), None);
        assert_eq!(value(&sm, "/b").as_deref(), Some("2"));
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 2);
        match events.recv().await.unwrap() {
            StateEvent::Applied { index, changes, .. } => {
                assert_eq!(index, 1);
                assert_eq!(changes.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // Deleting what is not there changes nothing.
        let out = apply(
            &mut sm,
            vec![entry(3, now, vec![Op::Delete { key: "/zz".into() }])],
        )
        .await;
        assert!(out[0].changes.is_empty());
    }

    #[tokio::test]
    async fn a_later_op_in_one_proposal_sees_an_earlier_one() {
        let (_d, mut sm, _) = machine();
        let now = now_ms();
        apply(
            &mut sm,
            vec![entry(
                1,
                now,
                vec![
                    put("/k", "1", 0),
                    Op::Delete { key: "/k".into() },
                    put("/j", "x", 0),
                ],
            )],
        )
        .await;
        assert_eq!(value(&sm, "/k"), None);
        assert_eq!(value(&sm, "/j").as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn ttl_hides_then_sweeps_expired_keys() {
        let (_d, mut sm, _) = machine();
        let past = now_ms() - 10_000;
        // Issued 10 s ago with a 1 s TTL: expired already; the 1 h one is alive.
        apply(
            &mut sm,
            vec![entry(
                1,
                past,
                vec![put("/short", "v", 1_000), put("/long", "v", 3_600_000)],
            )],
        )
        .await;
        assert_eq!(
            value(&sm, "/short"),
            None,
            "expired keys are invisible at once"
        );
        assert_eq!(value(&sm, "/long").as_deref(), Some("v"));
        let expired = sm.engine.expired(now_ms(), 10).unwrap();
        assert_eq!(expired, vec![("/short".to_string(), past + 1_000)]);
        // The sweeper's Expire removes it from the state and the TTL index.
        let out = apply(
            &mut sm,
            vec![entry(
                2,
                now_ms(),
                vec![Op::Expire {
                    key: "/short".into(),
                    expires_at_ms: past + 1_000,
                }],
            )],
        )
        .await;
        assert_eq!(
            out[0].changes,
            vec![Change::Delete {
                key: "/short".into()
            }]
        );
        assert!(sm.engine.expired(now_ms(), 10).unwrap().is_empty());
        assert!(
            sm.engine
                .list("/")
                .unwrap()
                .iter()
                .all(|e| e.key != "/short")
        );
    }

    #[tokio::test]
    async fn expire_spares_a_key_written_again() {
        let (_d, mut sm, _) = machine();
        let past = now_ms() - 10_000;
        apply(&mut sm, vec![entry(1, past, vec![put("/k", "old", 1_000)])]).await;
        apply(&mut sm, vec![entry(2, now_ms(), vec![put("/k", "new", 0)])]).await;
        apply(
            &mut sm,
            vec![entry(
                3,
                now_ms(),
                vec![Op::Expire {
                    key: "/k".into(),
                    expires_at_ms: past + 1_000,
                }],
            )],
        )
        .await;
        assert_eq!(value(&sm, "/k").as_deref(), Some("new"));
        assert!(
            sm.engine.expired(now_ms(), 10).unwrap().is_empty(),
            "old TTL index entry removed"
        );
    }

    #[tokio::test]
    async fn reapplying_an_index_is_a_no_op() {
        let (_d, mut sm, _) = machine();
        let now = now_ms();
        apply(
            &mut sm,
            vec![
                entry(1, now, vec![put("/k", "1", 0)]),
                entry(2, now, vec![put("/k", "2", 0)]),
            ],
        )
        .await;
        // Replaying entry 1 (e.g. after a crash) must not roll /k back.
        let out = apply(&mut sm, vec![entry(1, now, vec![put("/k", "1", 0)])]).await;
        assert!(out[0].changes.is_empty());
        assert_eq!(value(&sm, "/k").as_deref(), Some("2"));
        assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 2);
    }

    #[tokio::test]
    async fn snapshot_restores_into_a_fresh_machine() {
        let (_d, mut sm, _) = machine();
        let now = now_ms();
        let members = Membership::new(
            vec![BTreeSet::from([7])],
            BTreeMap::from([(
                7,
                Member {
                    name: "n7".into(),
                    raft_addr: "10.0.0.7:9443".into(),
                    grpc_addr: "10.0.0.7:8443".into(),
                },
            )]),
        );
        apply(
            &mut sm,
            vec![
                Entry {
                    log_id: log_id(1, 7, 1),
                    payload: EntryPayload::Membership(members),
                },
                entry(2, now, vec![put("/a", "1", 0), put("/t", "ttl", 3_600_000)]),
                entry(3, now, vec![put("/b", "2", 0)]),
            ],
        )
        .await;
        let snap = sm.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 3);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snap.meta);

        let (_d2, mut fresh, mut events) = machine();
        apply(&mut fresh, vec![entry(1, now, vec![put("/stale", "x", 0)])]).await;
        fresh
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert!(matches!(events.try_recv(), Ok(StateEvent::Applied { .. })));
        assert!(matches!(
            events.try_recv(),
            Ok(StateEvent::Reset { index: 3 })
        ));
        assert_eq!(value(&fresh, "/stale"), None, "restore replaces the state");
        assert_eq!(value(&fresh, "/a").as_deref(), Some("1"));
        assert_eq!(value(&fresh, "/b").as_deref(), Some("2"));
        let t = fresh.engine.get("/t").unwrap().unwrap();
        assert_eq!(
            t.expires_at_ms,
            now + 3_600_000,
            "TTLs survive the round trip"
        );
        let (applied, membership) = fresh.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 3);
        assert_eq!(membership.membership().get_node(&7).unwrap().name, "n7");
        // And the restored machine exports the same state again.
        let (_, again) = fresh.export().unwrap();
        let a = Engine::decode_snapshot(&again).unwrap();
        let (_, orig) = sm.export().unwrap();
        let o = Engine::decode_snapshot(&orig).unwrap();
        assert_eq!(a.entries, o.entries);
        assert_eq!(a.last_log_index, o.last_log_index);
    }

    #[tokio::test]
    async fn register_node_allocates_unique_stable_addresses() {
        let (_d, mut sm, _) = machine();
        let now = now_ms();
        let settings = vec![
            put(crate::mesh::keys::MESH_IPV4, "10.9.0.0/29", 0),
            put(crate::mesh::keys::MESH_IPV6, "fd00:9::/48", 0),
        ];
        let reg = |id: &str| Op::RegisterNode {
            node_json: format!(r#"{{"id":"{id}","publicKey":"k{id}"}}"#),
            assign_ipv4: true,
        };
        let out = apply(
            &mut sm,
            vec![
                entry(1, now, settings),
                entry(2, now, vec![reg("a"), reg("b")]),
                entry(3, now, vec![reg("a")]),
            ],
        )
        .await;
        let node = |i: usize| -> webmesh_api::v1::MeshNode {
            serde_json::from_str(out[i].value.as_deref().unwrap()).unwrap()
        };
        // One proposal's second registration already sees the first.
        assert_eq!(node(1).private_ipv4, "10.9.0.2/32");
        assert_eq!(node(1).private_ipv6, "fd00:9:0:2::/64");
        // Re-registering "a" keeps its addresses.
        assert_eq!(node(2).private_ipv4, "10.9.0.1/32");
        assert_eq!(node(2).private_ipv6, "fd00:9:0:1::/64");
        // A caller-chosen duplicate address is refused, changing nothing.
        let dup = Op::RegisterNode {
            node_json: r#"{"id":"c","privateIpv4":"10.9.0.1/32"}"#.into(),
            assign_ipv4: true,
        };
        let out = apply(&mut sm, vec![entry(4, now, vec![dup])]).await;
        assert!(
            out[0]
                .error
                .as_deref()
                .unwrap()
                .contains("already belongs to node a")
        );
        assert!(sm.engine.get("/registry/nodes/c").unwrap().is_none());
    }
}
