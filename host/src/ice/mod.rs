//! NAT traversal for WireGuard peers (issue 11, in progress): `path` is one peer's path,
//! chosen by ICE, sans IO. The shell (one UDP socket, the local proxy ports WireGuard
//! sends to, signalling through the mesh) comes next; see ARCHITECTURE.md.

pub mod path;
