//! The data dir: the node's identity (`node-id`), its WireGuard key
//! (`wireguard.key`, mode 0600) and its Raft log and state (`raft/`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use defguard_wireguard_rs::key::Key;

use super::NodeError;
use crate::mesh::ids;

pub(super) fn dir_err(path: &Path, e: impl ToString) -> NodeError {
    NodeError::DataDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Files in the data dir.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> Result<DataDir, NodeError> {
        fs::create_dir_all(root).map_err(|e| dir_err(root, e))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| dir_err(root, e))?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    fn id_path(&self) -> PathBuf {
        self.root.join("node-id")
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join("wireguard.key")
    }

    pub fn raft_path(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The node ID: the configured one, else the stored one, else the hostname. A data
    /// dir belongs to one node ID for life.
    pub fn node_id(&self, configured: Option<&str>) -> Result<String, NodeError> {
        let path = self.id_path();
        let stored = match fs::read_to_string(&path) {
            Ok(s) => Some(s.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(dir_err(&path, e)),
        };
        let id = match (configured, &stored) {
            (Some(c), Some(s)) if c != s => {
                return Err(NodeError::Identity(format!(
                    "invalid node-id {c:?}: the data dir {} belongs to node {s:?}; use that ID or another data dir",
                    self.root.display()
                )));
            }
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => s.clone(),
            (None, None) => {
                let host = hostname::get()
                    .map_err(|e| {
                        NodeError::Identity(format!("cannot read the hostname: {e}; set --node-id"))
                    })?
                    .to_string_lossy()
                    .to_string();
                ids::validate_node_id(&host).map_err(|why| {
                    NodeError::Identity(format!(
                        "invalid node-id {host:?} (the hostname): {why}; set --node-id"
                    ))
                })?;
                host
            }
        };
        if stored.is_none() {
            write_private(&path, id.as_bytes())?;
        }
        Ok(id)
    }

    /// The WireGuard private key, created on first use (mode 0600).
    pub fn wireguard_key(&self) -> Result<Key, NodeError> {
        let path = self.key_path();
        match fs::read_to_string(&path) {
            Ok(s) => Key::try_from(s.trim())
                .map_err(|e| dir_err(&path, format!("unreadable WireGuard key: {e:?}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate();
                write_private(&path, key.to_string().as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(dir_err(&path, e)),
        }
    }
}

/// Writes a file readable by its owner only, atomically (temp file + rename + fsync).
pub(super) fn write_private(path: &Path, data: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| dir_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| dir_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| dir_err(path, e))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| dir_err(dir, e))?;
    }
    Ok(())
}
