//! NAT traversal for WireGuard peers: `path` is one peer's path, chosen by ICE; `mux`
//! sorts what arrives on the node's ICE socket; `signal` turns ICE signals into
//! `DataChannelNegotiation` messages (all three sans IO); `shell` is the socket's task
//! with a proxy port per peer for WireGuard and the TURN allocations; `node` is the
//! node's ICE: which peers, the signalling streams, TURN credentials; `datapath` lets
//! our own userspace device read and write the ICE socket itself. See ARCHITECTURE.md.

pub mod datapath;
pub mod lab;
pub mod mux;
pub mod node;
pub mod path;
pub mod shell;
pub mod signal;
