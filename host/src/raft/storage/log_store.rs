//! The Raft log and vote on RocksDB.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::raft::AppendEntriesRequest;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, Membership, OptionalSend, RaftLogReader,
    StoredMembership, Vote,
};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::super::network::Network;
use super::super::types::{Member, NodeId, TypeConfig};
use super::*;
use crate::store::engine::{CF_LOG, CF_META, Engine};

/// The Raft log and vote. openraft 0.9 waits for each append to be flushed before it
/// takes the next, so an append is one synced write; group commit happens above Raft
/// (see `RaftNode::propose`).
///
/// openraft 0.9 also replicates a leader's entries only once its own fsync is done, so
/// a lone write paid two fsyncs in a row (the leader's, then a follower's). With an
/// [`EarlyAppend`], the leader sends its new entries to the other voters before its
/// fsync (as etcd does, Raft thesis §10.2.1): the followers' fsyncs run alongside its
/// own, and openraft's own append that follows finds them stored. Safety is unchanged:
/// it is the append openraft would send, only sooner, and openraft still counts the
/// leader only after its fsync.
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
    pub(super) early: Option<Arc<EarlyAppend>>,
}

/// Where a leader sends its entries before its own fsync (see [`LogStore`]): the
/// transport, and the voters of the last membership in the log.
pub struct EarlyAppend {
    pub net: Network,
    pub(super) voters: Mutex<Vec<(NodeId, String)>>,
}

/// Entries above this size (encoded) wait for openraft: a bulk append is not latency
/// bound, and sending it twice would cost bandwidth.
const EARLY_MAX_BYTES: usize = 256 << 10;

/// The last membership in the log, else the state machine's.
fn last_membership(engine: &Engine) -> Option<Membership<NodeId, Member>> {
    for item in engine
        .db()
        .iterator_cf(engine.cf(CF_LOG), IteratorMode::End)
    {
        let Ok((_, v)) = item else { break };
        if let Ok(e) = dec::<Entry>(&v)
            && let EntryPayload::Membership(m) = e.payload
        {
            return Some(m);
        }
    }
    meta::<StoredMembership<NodeId, Member>>(engine, MEMBERSHIP)
        .ok()
        .flatten()
        .filter(|sm| sm.log_id().is_some())
        .map(|sm| sm.membership().clone())
}

fn voters_of(m: &Membership<NodeId, Member>) -> Vec<(NodeId, String)> {
    m.voter_ids()
        .filter_map(|v| m.get_node(&v).map(|n| (v, n.raft_addr.clone())))
        .collect()
}

impl LogStore {
    pub fn new(engine: Engine, id: NodeId) -> LogStore {
        let voter = last_membership(&engine).map(|m| m.voter_ids().any(|v| v == id));
        LogStore {
            engine,
            id,
            sync: Arc::new(AtomicBool::new(voter.unwrap_or(true))),
            early: None,
        }
    }

    /// Sends a leader's entries to the other voters before its own fsync.
    pub fn with_early_append(mut self, net: Network) -> LogStore {
        let voters = last_membership(&self.engine)
            .map(|m| voters_of(&m))
            .unwrap_or_default();
        self.early = Some(Arc::new(EarlyAppend {
            net,
            voters: Mutex::new(voters),
        }));
        self
    }

    /// When this node leads the term of every one of `entries`: the append openraft
    /// will send the other voters once they are flushed here (no commit index: theirs
    /// stays as the leader last said).
    pub(super) fn early_request(
        &self,
        entries: &[Entry],
    ) -> Option<AppendEntriesRequest<TypeConfig>> {
        let first = entries.first()?;
        let vote: Vote<NodeId> = meta(&self.engine, VOTE).ok()??;
        let leader = vote.leader_id();
        if !vote.is_committed() || leader.voted_for() != Some(self.id) {
            return None;
        }
        if entries.iter().any(|e| e.log_id.leader_id != *leader) {
            return None;
        }
        let prev_index = first.log_id.index.checked_sub(1)?;
        let prev = match self
            .engine
            .db()
            .get_cf(self.engine.cf(CF_LOG), prev_index.to_be_bytes())
        {
            Ok(Some(v)) => dec::<Entry>(&v).ok()?.log_id,
            Ok(None) => meta::<LogId<NodeId>>(&self.engine, PURGED).ok()??.clone(),
            Err(_) => return None,
        };
        if prev.index != prev_index {
            return None;
        }
        Some(AppendEntriesRequest {
            vote,
            prev_log_id: Some(prev),
            entries: entries.to_vec(),
            leader_commit: None,
        })
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut b = WriteBatch::default();
        let mut sync = self.syncs();
        let mut bytes = 0usize;
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                let voter = m.voter_ids().any(|v| v == self.id);
                self.sync.store(voter, Ordering::SeqCst);
                // The entry that makes us a voter is itself synced.
                sync |= voter;
                if let Some(early) = &self.early {
                    *early.voters.lock().unwrap_or_else(|p| p.into_inner()) = voters_of(m);
                }
            }
            let v = enc(e)?;
            bytes = bytes.saturating_add(v.len());
            b.put_cf(self.engine.cf(CF_LOG), e.log_id.index.to_be_bytes(), v);
        }
        if let Some(early) = &self.early
            && sync
            && bytes <= EARLY_MAX_BYTES
            && let Some(req) = self.early_request(&entries)
        {
            let to: Vec<(NodeId, String)> = (early.voters.lock())
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(v, _)| *v != self.id)
                .cloned()
                .collect();
            early.net.send_early(&to, &req);
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
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        if let Some(early) = &self.early {
            *early.voters.lock().unwrap_or_else(|p| p.into_inner()) = last_membership(&self.engine)
                .map(|m| voters_of(&m))
                .unwrap_or_default();
        }
        Ok(())
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
