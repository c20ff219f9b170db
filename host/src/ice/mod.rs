//! NAT traversal for WireGuard peers (issue 11, in progress): `path` is one peer's path,
//! chosen by ICE; `mux` sorts what arrives on the node's ICE socket (both sans IO);
//! `shell` is the socket's task with a proxy port per peer for WireGuard. The shell (one UDP socket, the local proxy ports WireGuard
//! sends to, signalling through the mesh) comes next; see ARCHITECTURE.md.

pub mod lab;
pub mod mux;
pub mod path;
pub mod shell;
