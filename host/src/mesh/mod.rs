//! The mesh model and its rules: IDs, key layout, bootstrap objects, address
//! arithmetic, network ACLs, RBAC, Admin API objects, the member address index, the decoded view of the state and peer computation.
//! Pure: no IO, unit-tested, benchmarked.

pub mod acl;
pub mod admin;
pub mod admission;
pub mod bootstrap;
pub mod filter;
pub mod graph;
pub mod ids;
pub mod ipam;
pub mod keys;
pub mod limits;
pub mod members;
pub mod membership;
pub mod ops;
pub mod peers;
pub mod rbac;
pub mod registry;
pub mod rules;
pub mod view;
pub mod writes;
