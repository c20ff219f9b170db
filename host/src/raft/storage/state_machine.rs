//! The state machine: applying proposals, idempotently by index, and snapshots.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership,
};
use prost::Message;
use rocksdb::WriteBatch;
use tokio::sync::{broadcast, watch};

use super::super::types::{Member, NodeId, TypeConfig};
use super::*;
use crate::mesh::keys;
use crate::mesh::members::Members;
use crate::store::engine::{CF_META, Engine};
use crate::store::ops::{ApplyOutcome, Change};

/// The state machine: applies proposals to the key/value state, idempotently by index.
#[derive(Clone)]
pub struct StateMachine {
    pub(super) engine: Engine,
    events: broadcast::Sender<StateEvent>,
    /// Node ID ↔ registered key, updated in step with the applied state.
    members: Arc<RwLock<Members>>,
    /// Bumped whenever the RBAC objects change, so the compiled policy is rebuilt.
    rbac_version: Arc<AtomicU64>,
    /// The index after the applied one (0: nothing applied; openraft's first entry is
    /// 0), for the log streams a voter serves (`raft::stream`).
    applied_tx: Arc<watch::Sender<u64>>,
    /// Applying (and restoring) is one at a time: a member handing over from the log
    /// stream to Raft may get the same entries from both, and each must apply once.
    apply_lock: Arc<std::sync::Mutex<()>>,
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
        let applied = meta::<Option<LogId<NodeId>>>(&engine, APPLIED)
            .ok()
            .flatten()
            .flatten()
            .map_or(0, |l| l.index + 1);
        StateMachine {
            engine,
            events,
            members,
            rbac_version: Arc::new(AtomicU64::new(0)),
            applied_tx: Arc::new(watch::channel(applied).0),
            apply_lock: Arc::default(),
        }
    }

    /// The index after the applied one as it moves.
    pub fn watch_next(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// The index after the applied one (0: nothing applied yet).
    pub fn next_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// The last applied log ID, as stored.
    pub fn applied_log_id(&self) -> Option<LogId<NodeId>> {
        self.applied().ok().flatten()
    }

    /// The Raft membership as of the applied index.
    pub fn stored_membership(&self) -> StoredMembership<NodeId, Member> {
        self.membership().unwrap_or_default()
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
        let _one = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let snap = Engine::decode_snapshot(data).map_err(read_err)?;
        let mut b = WriteBatch::default();
        self.engine.restore_into(&mut b, &snap).map_err(write_err)?;
        let cf = self.engine.cf(CF_META);
        b.put_cf(cf, APPLIED, enc(&meta.last_log_id)?);
        b.put_cf(cf, MEMBERSHIP, enc(&meta.last_membership)?);
        b.put_cf(cf, SNAPSHOT_META, enc(meta)?);
        b.put_cf(cf, SNAPSHOT_DATA, data);
        self.engine.write(b, true).map_err(write_err)?;
        self.engine.reload_nodes().map_err(read_err)?;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = load_members(&self.engine);
        self.rbac_version.fetch_add(1, Ordering::AcqRel);
        self.applied_tx
            .send_replace(meta.last_log_id.map_or(0, |l| l.index + 1));
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
        let _one = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
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
                self.engine.note_changes(&changes);
                let mut m = self.members.write().unwrap_or_else(|p| p.into_inner());
                for c in &changes {
                    m.apply(c.key(), c.value());
                }
            }
            tracing::trace!(index = entry.log_id.index, "entry applied");
            if !changes.is_empty() {
                let _ = self.events.send(StateEvent::Applied {
                    index: entry.log_id.index,
                    term: entry.log_id.leader_id.term,
                    changes: Arc::new(changes),
                });
            }
            out.push(outcomes);
        }
        if let Some(a) = applied {
            self.applied_tx.send_if_modified(|i| {
                let moved = *i != a.index + 1;
                *i = a.index + 1;
                moved
            });
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
