//! The Webmesh v1 wire API.
//!
//! Messages, enums, gRPC servers and clients generated from `proto/v1/*.proto`, which
//! are wire-compatible with the reference Webmesh v1 API (package `v1`, so paths such
//! as `/v1.Node/Join`). Every message also has proto3-JSON serde impls, so it can be
//! read from and written as JSON or YAML.

/// Package `v1`: every message, enum and service of the API.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/v1.serde.rs"));
}

/// Node-to-node messages that are not part of the v1 API (the Raft transport and the
/// snapshot format).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod internal {
    include!(concat!(env!("OUT_DIR"), "/webmesh.internal.rs"));
}

/// Well-known protobuf types as used by the generated code (with serde support).
pub use pbjson_types as wkt;

/// The encoded `FileDescriptorSet` of every file and its imports, for gRPC server
/// reflection and for tools that decode messages dynamically.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/webmesh_descriptor.bin"));
