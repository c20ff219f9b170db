//! `storage-sqlite`: keeps a SQLite copy of the mesh state — every key, value and
//! expiry — in step with the node's Raft log. Restores replace the table; entries are
//! applied in log order and idempotently by index (the node re-sends from a snapshot
//! after a restart or a gap).
//!
//! Config: `path` (created if missing). Query it: `sqlite3 PATH 'select key, value from
//! state'`; `meta` holds `last_index` and `last_term`.

mod store;

fn main() -> std::process::ExitCode {
    webmesh_plugin_sdk::serve(store::Store::default())
}
