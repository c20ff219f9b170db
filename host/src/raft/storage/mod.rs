//! openraft storage (v2 traits) on the node's RocksDB, one file per concern:
//! `log_store` (the log and the vote), `state_machine` (applying, snapshots),
//! `events` (what the state machine tells its followers). `tests` runs openraft's
//! storage conformance suite against both, plus our own.

// openraft's traits fix the error type (`StorageError`, 224 bytes); boxing it in our
// helpers would only move the allocation.
#![allow(clippy::result_large_err)]

mod durable;
mod events;
mod log_store;
mod state_machine;

pub use durable::Durability;
pub use events::StateEvent;
pub use log_store::{LogStore, read_log};
pub use state_machine::StateMachine;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{NodeId, TypeConfig};
use crate::store::engine::Engine;

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

/// The highest index the log store knows committed (what the leader last told it).
pub fn committed_index(engine: &Engine) -> Option<u64> {
    meta::<Option<openraft::LogId<super::NodeId>>>(engine, COMMITTED)
        .ok()
        .flatten()
        .flatten()
        .map(|l| l.index)
}

#[cfg(test)]
mod tests;
