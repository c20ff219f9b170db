//! `ipam-sqlite`: hands out mesh addresses — an IPv4 /32 and an IPv6 /64 per node —
//! and keeps them in a SQLite file, so a node gets the same addresses every time it
//! joins, until it leaves. Safe under concurrent calls (one writer transaction at a
//! time, in this process and across processes sharing the file).
//!
//! Config: `path` (the SQLite file, created if missing). Inspect with
//! `sqlite3 PATH 'select * from allocations'`.

mod ipam;

fn main() -> std::process::ExitCode {
    webmesh_plugin_sdk::serve(ipam::Sqlite::default())
}
