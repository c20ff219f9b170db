//! What the node and `wmctl` share as clients of a mesh. No RocksDB, no wasmtime, no
//! openraft: building the CLI must stay cheap.
//!
//! - [`proof`]: proving possession of a node's WireGuard key in an API or Raft call.
//! - [`signing`]: a client channel that signs every request with the node's key.
//! - [`tls`]: dialing a mesh's API: TLS verified or not, plain, `unix://` sockets.
//! - [`names`]: RBAC resources and verbs as people write them.
//! - [`version`]: build information.

pub mod names;
pub mod proof;
pub mod signing;
pub mod tls;
pub mod version;
