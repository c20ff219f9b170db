//! The allocation table in SQLite and the IPAM calls over it.

use std::collections::HashSet;
use std::sync::Mutex;

use ipnet::{Ipv4Net, Ipv6Net};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use webmesh_plugin_sdk::{
    Config, Error, Info, IpamPlugin, Plugin, Setting, async_trait, querier, v1,
};

use v1::allocate_ip_request::IpVersion;

#[derive(Default)]
pub struct Sqlite {
    db: Mutex<Option<Connection>>,
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::unavailable(format!("ipam database: {e}"))
}

fn open(path: &str) -> Result<Connection, Error> {
    let c = Connection::open(path)
        .map_err(|e| Error::invalid_argument(format!("config key path: {path}: {e}")))?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS allocations (
             node_id TEXT NOT NULL,
             version INTEGER NOT NULL,
             ip TEXT NOT NULL,
             allocated_at TEXT NOT NULL DEFAULT (datetime('now')),
             PRIMARY KEY (node_id, version),
             UNIQUE (version, ip)
         );",
    )
    .map_err(|e| Error::invalid_argument(format!("config key path: {path}: {e}")))?;
    Ok(c)
}

/// The lowest free host address of `net` (network and broadcast excluded).
fn next_v4(net: Ipv4Net, used: &HashSet<String>) -> Option<String> {
    net.hosts()
        .map(|a| format!("{a}/32"))
        .find(|a| !used.contains(a))
}

/// The lowest free /64 of `net`, skipping the first (kept for the mesh itself).
fn next_v6(net: Ipv6Net, used: &HashSet<String>) -> Option<String> {
    net.subnets(64)
        .ok()?
        .skip(1)
        .map(|p| p.to_string())
        .find(|p| !used.contains(p))
}

/// Addresses other nodes of the mesh hold (some may come from elsewhere, e.g. the node
/// that bootstrapped before this plugin was configured).
async fn mesh_addresses(except: &str) -> HashSet<String> {
    let q = querier();
    let mut used = HashSet::new();
    if !q.is_connected() {
        return used;
    }
    match q.iter("/registry/nodes/").await {
        Ok(nodes) => {
            for (_, json) in nodes {
                if let Ok(n) = serde_json::from_str::<v1::MeshNode>(&json)
                    && n.id != except
                {
                    used.insert(n.private_ipv4);
                    used.insert(n.private_ipv6);
                }
            }
        }
        Err(e) => eprintln!("reading the mesh's addresses: {e}"),
    }
    used
}

impl Sqlite {
    fn allocate_in_db(
        &self,
        node: &str,
        version: IpVersion,
        subnet: &str,
        mesh: &HashSet<String>,
    ) -> Result<String, Error> {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = guard
            .as_mut()
            .ok_or_else(|| Error::failed_precondition("ipam-sqlite is not configured"))?;
        let v = version as i64;
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT ip FROM allocations WHERE node_id = ?1 AND version = ?2",
                params![node, v],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(ip) = existing {
            return Ok(ip);
        }
        let mut used: HashSet<String> = mesh.clone();
        {
            let mut stmt = tx
                .prepare("SELECT ip FROM allocations WHERE version = ?1")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![v], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            for ip in rows {
                used.insert(ip.map_err(db_err)?);
            }
        }
        let ip = match version {
            IpVersion::IpVersion4 => {
                let net: Ipv4Net = subnet.parse().map_err(|_| {
                    Error::invalid_argument(format!("subnet: {subnet:?} is not an IPv4 network"))
                })?;
                next_v4(net.trunc(), &used)
            }
            IpVersion::IpVersion6 => {
                let net: Ipv6Net = subnet.parse().map_err(|_| {
                    Error::invalid_argument(format!("subnet: {subnet:?} is not an IPv6 network"))
                })?;
                if net.prefix_len() > 64 {
                    return Err(Error::invalid_argument(format!(
                        "subnet: {subnet} is smaller than a /64"
                    )));
                }
                next_v6(net.trunc(), &used)
            }
            IpVersion::Unknown => None,
        }
        .ok_or_else(|| Error::resource_exhausted(format!("subnet {subnet} is full")))?;
        tx.execute(
            "INSERT INTO allocations (node_id, version, ip) VALUES (?1, ?2, ?3)",
            params![node, v, ip],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(ip)
    }
}

#[async_trait]
impl Plugin for Sqlite {
    fn info(&self) -> Info {
        Info::new(
            "ipam-sqlite",
            env!("CARGO_PKG_VERSION"),
            "mesh addresses kept in a SQLite file",
        )
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: "path",
            default: "ipam.db in the directory the node gives the plugin",
            help: "the SQLite file (created if missing; may be shared by nodes on one host)",
        }]
    }

    async fn configure(&self, config: Config) -> Result<(), Error> {
        let path = config.path_or_default("path", "ipam.db")?;
        let c = open(&path)?;
        *self.db.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        Ok(())
    }

    fn ipam(&self) -> Option<&dyn IpamPlugin> {
        Some(self)
    }
}

#[async_trait]
impl IpamPlugin for Sqlite {
    async fn allocate(&self, req: v1::AllocateIpRequest) -> Result<String, Error> {
        if req.node_id.is_empty() {
            return Err(Error::invalid_argument("node_id is empty"));
        }
        let version = match IpVersion::try_from(req.version) {
            Ok(v @ (IpVersion::IpVersion4 | IpVersion::IpVersion6)) => v,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "version: {} is neither 4 nor 6",
                    req.version
                )));
            }
        };
        let mesh = mesh_addresses(&req.node_id).await;
        self.allocate_in_db(&req.node_id, version, &req.subnet, &mesh)
    }

    async fn release(&self, req: v1::ReleaseIpRequest) -> Result<(), Error> {
        let guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| Error::failed_precondition("ipam-sqlite is not configured"))?;
        // Addresses may come back with or without their prefix length.
        let bare = req.ip.split('/').next().unwrap_or_default().to_string();
        db.execute(
            "DELETE FROM allocations WHERE node_id = ?1 AND (ip = ?2 OR ip = ?3 || '/32' \
             OR ip = ?3 || '/64' OR ?2 = '')",
            params![req.node_id, req.ip, bare],
        )
        .map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn req(node: &str, v: IpVersion, subnet: &str) -> v1::AllocateIpRequest {
        v1::AllocateIpRequest {
            node_id: node.into(),
            subnet: subnet.into(),
            version: v as i32,
        }
    }

    async fn plugin(path: &std::path::Path) -> Sqlite {
        let p = Sqlite::default();
        let mut c = Config::default();
        c.0.insert("path".into(), path.to_str().unwrap().into());
        p.configure(c).await.unwrap();
        p
    }

    #[tokio::test]
    async fn stable_per_node_freed_on_release_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        let p = plugin(&db).await;
        let v4 = "10.9.0.0/24";
        let v6 = "fd00:9:9::/48";
        let a = p
            .allocate(req("a", IpVersion::IpVersion4, v4))
            .await
            .unwrap();
        let b = p
            .allocate(req("b", IpVersion::IpVersion4, v4))
            .await
            .unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("10.9.0.1/32", "10.9.0.2/32"));
        assert_eq!(
            p.allocate(req("a", IpVersion::IpVersion4, v4))
                .await
                .unwrap(),
            a
        );
        let a6 = p
            .allocate(req("a", IpVersion::IpVersion6, v6))
            .await
            .unwrap();
        assert_eq!(a6, "fd00:9:9:1::/64");
        p.release(v1::ReleaseIpRequest {
            node_id: "a".into(),
            ip: "10.9.0.1".into(),
        })
        .await
        .unwrap();
        // a's IPv4 is free again; its IPv6 stays.
        let c = p
            .allocate(req("c", IpVersion::IpVersion4, v4))
            .await
            .unwrap();
        assert_eq!(c, "10.9.0.1/32");
        drop(p);
        let p = plugin(&db).await;
        assert_eq!(
            p.allocate(req("b", IpVersion::IpVersion4, v4))
                .await
                .unwrap(),
            b
        );
        assert_eq!(
            p.allocate(req("a", IpVersion::IpVersion6, v6))
                .await
                .unwrap(),
            a6
        );
    }

    #[tokio::test]
    async fn concurrent_allocations_are_distinct_and_a_full_subnet_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(plugin(&dir.path().join("ipam.db")).await);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.allocate(req(&format!("n{i}"), IpVersion::IpVersion4, "10.1.0.0/27"))
                        .await
                })
            })
            .collect();
        let mut got = HashSet::new();
        for t in tasks {
            assert!(got.insert(t.await.unwrap().unwrap()));
        }
        assert_eq!(got.len(), 20);
        for i in 20..30 {
            p.allocate(req(&format!("n{i}"), IpVersion::IpVersion4, "10.1.0.0/27"))
                .await
                .unwrap();
        }
        let e = p
            .allocate(req("n31", IpVersion::IpVersion4, "10.1.0.0/27"))
            .await
            .unwrap_err();
        assert!(e.message.contains("full"), "{e}");
        let e = p
            .allocate(req("x", IpVersion::Unknown, "10.1.0.0/27"))
            .await
            .unwrap_err();
        assert!(e.message.starts_with("version"), "{e}");
        let e = p
            .allocate(req("x", IpVersion::IpVersion4, "nope"))
            .await
            .unwrap_err();
        assert!(e.message.starts_with("subnet"), "{e}");
    }
}
