//! The replicated state on RocksDB: the Raft payload (`ops`), the engine that applies
//! it (`engine`), and decoded views of what it holds (`views`).

pub mod disk;
pub mod engine;
pub mod ops;
pub mod views;
