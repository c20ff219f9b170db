//! The Webmesh node.
//!
//! Pure logic (no IO) lives in [`mesh`] and [`config`]; [`store`] and [`raft`] own
//! RocksDB and consensus; [`services`] are the gRPC shells; [`node`] wires them up.
//! `ARCHITECTURE.md` at the repository root has the map.

pub mod campfire;
pub mod config;
pub mod datachannel;
pub mod dns;
pub mod fuzzing;
pub mod ice;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod node;
pub mod plugins;
pub mod raft;
pub mod services;
pub mod store;
pub mod tls;
pub mod trust;
pub mod turn;
pub mod version;

#[cfg(test)]
mod architecture;
