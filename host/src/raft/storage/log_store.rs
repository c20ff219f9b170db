//! The Raft log and vote on RocksDB.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StoredMembership,
    Vote,
};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::super::types::{Member, NodeId, TypeConfig};
use super::*;
use crate::store::engine::{CF_LOG, CF_META, Engine};

/// The Raft log and vote. openraft 0.9 waits for each append to be flushed before it
/// takes the next (and, on the leader, before it replicates), so an append is one synced
/// write, group commit happens above Raft (see `RaftNode::propose`), and the leader's
/// own new entries are written unsynced and synced alongside replication
/// (`storage::durable`: nothing acts on a commit before the leader's copy is durable).
///
/// Only a voter's log counts towards a quorum, so a non-voter (most nodes of a mesh)
/// appends without fsync: if it loses the tail on a power cut the leader sends it
/// again. Which one this node is comes from the membership entries passing through
/// `append`; in doubt (start-up, after a truncation) it syncs.
#[derive(Clone)]
pub struct LogStore {
    pub(super) engine: Engine,
    id: NodeId,
    sync: Arc<AtomicBool>,
    /// The vote last saved: appends of our own entries under our own committed vote are
    /// the leader's.
    vote: Arc<std::sync::Mutex<Option<Vote<NodeId>>>>,
    durable: Durability,
    /// Whether a syncer runs (a runtime existed at start); without one every append syncs.
    early: bool,
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
        // Whatever an earlier process wrote unsynced is made durable before anything
        // counts on it.
        if let Err(e) = engine.sync() {
            tracing::warn!(error = %e, "cannot sync the Raft log at start");
        }
        let vote = meta::<Vote<NodeId>>(&engine, VOTE).ok().flatten();
        let (durable, kicks) = Durability::new();
        let early = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(durable.clone().run_syncer(kicks));
                true
            }
            Err(_) => false,
        };
        LogStore {
            engine,
            id,
            sync: Arc::new(AtomicBool::new(voter.unwrap_or(true))),
            vote: Arc::new(std::sync::Mutex::new(vote)),
            durable,
            early,
        }
    }

    /// What the transport needs to hold back commits the leader's log does not yet
    /// hold durably.
    pub fn durability(&self) -> Durability {
        self.durable.clone()
    }

    /// The leader id of our own leadership, if we lead (by the vote last saved).
    fn leading(&self) -> Option<openraft::LeaderId<NodeId>> {
        let vote = self.vote.lock().unwrap_or_else(|p| p.into_inner());
        vote.as_ref()
            .filter(|v| v.is_committed() && v.leader_id().node_id == self.id)
            .map(|v| *v.leader_id())
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

/// Log entries from `start` to `last` (inclusive) as the log holds them, up to
/// `max_bytes` (at least one entry); empty when `start` is not in the log (purged, or a
/// node whose state came from a snapshot).
pub fn read_log(
    engine: &Engine,
    start: u64,
    last: u64,
    max_bytes: usize,
) -> Result<Vec<Entry>, SErr> {
    let mut out = Vec::new();
    let mut used = 0usize;
    let start_key = start.to_be_bytes();
    let iter = engine.db().iterator_cf(
        engine.cf(CF_LOG),
        IteratorMode::From(&start_key, Direction::Forward),
    );
    for item in iter {
        let (k, v) = item.map_err(read_err)?;
        let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(read_err)?);
        if idx > last || (!out.is_empty() && used.saturating_add(v.len()) > max_bytes) {
            break;
        }
        used = used.saturating_add(v.len());
        out.push(dec(&v)?);
    }
    Ok(out)
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
        let before = self.durable.unsynced();
        self.engine
            .write(b, true)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // A synced write makes every earlier one durable too.
        self.durable.synced(before);
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        meta(&self.engine, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // openraft applies what is committed after this returns: not before the
        // leader's own copy is durable (`storage::durable`).
        if let Some(c) = &committed {
            self.durable.wait(c.index).await.map_err(write_err)?;
        }
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
        let leading = self.leading();
        let (mut own, mut last) = (true, 0);
        for e in entries {
            own &= leading.is_some_and(|l| e.log_id.leader_id == l);
            last = e.log_id.index;
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
        // The leader's own entries are reported at once (openraft replicates them now)
        // and synced alongside; commits wait for that sync (`storage::durable`). Any
        // other voter's append syncs before the callback: an acknowledged entry survives
        // a power cut.
        let alongside = sync && own && last > 0 && self.early;
        let before = self.durable.unsynced();
        let res = self.engine.write(b, sync && !alongside);
        if res.is_ok() {
            if alongside {
                self.durable.written_unsynced(last, &self.engine);
            } else if sync {
                self.durable.synced(last.max(before));
            }
        }
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
        self.durable.truncated(log_id.index);
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
