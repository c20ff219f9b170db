//! What the node and `wmctl` share as clients of a mesh. No RocksDB, no wasmtime, no
//! openraft: building the CLI must stay cheap.
//!
//! - [`proof`]: proving possession of a node's WireGuard key in an API or Raft call.
//! - [`signing`]: a client channel that signs every request with the node's key.

pub mod proof;
pub mod signing;
