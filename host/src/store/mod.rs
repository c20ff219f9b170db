//! The replicated key/value state on RocksDB: proposals, their application, TTLs and
//! snapshots.

pub mod engine;
pub mod ops;
