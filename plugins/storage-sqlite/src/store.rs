//! The SQLite mirror of the state and the storage calls that keep it in step.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use webmesh_plugin_sdk::{
    Config, Error, Info, Plugin, Setting, StoragePlugin, async_trait, decode_snapshot, v1,
};

#[derive(Default)]
pub struct Store {
    db: Mutex<Option<Connection>>,
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::unavailable(format!("storage database: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open(path: &str) -> Result<Connection, Error> {
    let bad = |e: rusqlite::Error| Error::invalid_argument(format!("config key path: {path}: {e}"));
    let c = Connection::open(path).map_err(bad)?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(bad)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS state (
             key TEXT PRIMARY KEY,
             value TEXT NOT NULL,
             expires_at_ms INTEGER NOT NULL DEFAULT 0
         );
         CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .map_err(bad)?;
    Ok(c)
}

fn last_index(c: &Connection) -> Result<u64, Error> {
    Ok(c.query_row(
        "SELECT value FROM meta WHERE name = 'last_index'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map_err(db_err)?
    .unwrap_or(0) as u64)
}

const SET_META: &str = "INSERT INTO meta (name, value) VALUES (?1, ?2) \
                        ON CONFLICT(name) DO UPDATE SET value = excluded.value";

/// Records the log position the table reflects.
fn set_position(c: &Connection, index: u64, term: u64) -> Result<(), Error> {
    for (name, v) in [("last_index", index), ("last_term", term)] {
        c.execute(SET_META, params![name, v as i64])
            .map_err(db_err)?;
    }
    Ok(())
}

impl Store {
    fn with_db<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error>) -> Result<T, Error> {
        let mut g = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let c = g
            .as_mut()
            .ok_or_else(|| Error::failed_precondition("storage-sqlite is not configured"))?;
        f(c)
    }
}

#[async_trait]
impl Plugin for Store {
    fn info(&self) -> Info {
        Info::new(
            "storage-sqlite",
            env!("CARGO_PKG_VERSION"),
            "a SQLite copy of the mesh state",
        )
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: "path",
            default: "state.db in the directory the node gives the plugin",
            help: "the SQLite file (created if missing)",
        }]
    }

    async fn configure(&self, config: Config) -> Result<(), Error> {
        let c = open(&config.path_or_default("path", "state.db")?)?;
        *self.db.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        Ok(())
    }

    fn storage(&self) -> Option<&dyn StoragePlugin> {
        Some(self)
    }
}

#[async_trait]
impl StoragePlugin for Store {
    async fn store(&self, req: v1::StoreLogRequest) -> Result<v1::RaftApplyResponse, Error> {
        let started = Instant::now();
        let log = req
            .log
            .ok_or_else(|| Error::invalid_argument("log: missing"))?;
        self.with_db(|c| {
            let tx = c.transaction().map_err(db_err)?;
            // Several changes share an index; only older indexes are known to be in.
            if req.index < last_index(&tx)? {
                return Ok(());
            }
            match v1::RaftCommandType::try_from(log.r#type) {
                Ok(v1::RaftCommandType::Put) => {
                    let exp = log
                        .ttl
                        .map(|d| now_ms() + d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
                        .unwrap_or(0);
                    tx.execute(
                        "INSERT INTO state (key, value, expires_at_ms) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, \
                         expires_at_ms = excluded.expires_at_ms",
                        params![log.key, log.value, exp],
                    )
                    .map_err(db_err)?;
                }
                Ok(v1::RaftCommandType::Delete) => {
                    tx.execute("DELETE FROM state WHERE key = ?1", params![log.key])
                        .map_err(db_err)?;
                }
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "log.type: unknown command {}",
                        log.r#type
                    )));
                }
            }
            set_position(&tx, req.index, req.term)?;
            tx.commit().map_err(db_err)
        })?;
        Ok(v1::RaftApplyResponse {
            time: format!("{:?}", started.elapsed()),
            error: String::new(),
        })
    }

    async fn restore(&self, snapshot: v1::DataSnapshot) -> Result<(), Error> {
        let entries = decode_snapshot(&snapshot.data)?;
        self.with_db(|c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.execute("DELETE FROM state", []).map_err(db_err)?;
            {
                let mut ins = tx
                    .prepare("INSERT INTO state (key, value, expires_at_ms) VALUES (?1, ?2, ?3)")
                    .map_err(db_err)?;
                for e in &entries {
                    ins.execute(params![e.key, e.value, e.expires_at_ms as i64])
                        .map_err(db_err)?;
                }
            }
            set_position(&tx, snapshot.index, snapshot.term)?;
            tx.commit().map_err(db_err)
        })?;
        eprintln!(
            "restored {} keys at index {}",
            entries.len(),
            snapshot.index
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use webmesh_api::internal::{StateEntry, StateSnapshot};

    fn put(index: u64, key: &str, value: &str) -> v1::StoreLogRequest {
        v1::StoreLogRequest {
            term: 1,
            index,
            log: Some(v1::RaftLogEntry {
                r#type: v1::RaftCommandType::Put as i32,
                key: key.into(),
                value: value.into(),
                ttl: None,
            }),
        }
    }

    fn rows(s: &Store) -> Vec<(String, String)> {
        s.with_db(|c| {
            let mut st = c
                .prepare("SELECT key, value FROM state ORDER BY key")
                .unwrap();
            Ok(st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect())
        })
        .unwrap()
    }

    #[tokio::test]
    async fn entries_apply_in_order_idempotently_and_a_restore_replaces_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::default();
        let mut cfg = Config::default();
        cfg.0.insert(
            "path".into(),
            dir.path().join("s.db").to_str().unwrap().into(),
        );
        s.configure(cfg).await.unwrap();
        s.store(put(5, "/a", "1")).await.unwrap();
        s.store(put(5, "/b", "2")).await.unwrap();
        s.store(put(6, "/a", "3")).await.unwrap();
        // A replay of older entries changes nothing.
        s.store(put(5, "/a", "1")).await.unwrap();
        assert_eq!(
            rows(&s),
            vec![("/a".into(), "3".into()), ("/b".into(), "2".into())]
        );
        let mut del = put(7, "/b", "");
        del.log.as_mut().unwrap().r#type = v1::RaftCommandType::Delete as i32;
        s.store(del).await.unwrap();
        assert_eq!(rows(&s), vec![("/a".into(), "3".into())]);
        let snap = StateSnapshot {
            format: 1,
            last_log_index: 9,
            last_log_term: 2,
            membership: vec![],
            entries: vec![StateEntry {
                key: "/z".into(),
                value: "26".into(),
                expires_at_ms: 0,
            }],
        };
        s.restore(v1::DataSnapshot {
            term: 2,
            index: 9,
            data: snap.encode_to_vec(),
        })
        .await
        .unwrap();
        assert_eq!(rows(&s), vec![("/z".into(), "26".into())]);
        s.store(put(8, "/old", "x")).await.unwrap();
        assert_eq!(rows(&s).len(), 1, "entries before the snapshot are ignored");
        let bad = s
            .restore(v1::DataSnapshot {
                term: 1,
                index: 1,
                data: vec![1, 2, 3],
            })
            .await
            .unwrap_err();
        assert!(bad.message.contains("snapshot"), "{bad}");
    }
}
