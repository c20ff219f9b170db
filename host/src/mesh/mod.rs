//! The mesh model and its rules: IDs, key layout, bootstrap objects, address
//! arithmetic. Pure: no IO, unit-tested, benchmarked.

pub mod bootstrap;
pub mod ids;
pub mod ipam;
pub mod keys;
