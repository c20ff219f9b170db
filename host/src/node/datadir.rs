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

/// What a data dir of ours holds; a non-empty directory with none of it belongs to
/// something else, and the node will not take it over (nor chmod it).
const OURS: &[&str] = &[
    "node-id",
    "wireguard.key",
    "raft",
    "wasm-cache",
    "plugins",
    "left",
];

impl DataDir {
    pub fn open(root: &Path) -> Result<DataDir, NodeError> {
        match fs::read_dir(root) {
            Ok(entries) => {
                let names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if !names.is_empty() && !names.iter().any(|n| OURS.contains(&n.as_str())) {
                    return Err(dir_err(
                        root,
                        format!(
                            "exists, is not empty and holds no webmesh identity ({} entries, e.g. {:?}); \
                             give the node a dedicated directory",
                            names.len(),
                            names[0]
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(dir_err(root, e)),
        }
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

    /// The TURN server's secret (made on first use).
    pub fn turn_secret_path(&self) -> PathBuf {
        self.root.join("turn.secret")
    }

    fn left_path(&self) -> PathBuf {
        self.root.join("left")
    }

    /// Records that this node left its mesh (`--leave-on-shutdown`): its Raft state
    /// may not have caught the removal before it stopped, and must not be resumed.
    pub fn mark_left(&self) -> Result<(), NodeError> {
        write_private(&self.left_path(), b"left the mesh\n")
    }

    pub fn has_left(&self) -> bool {
        self.left_path().exists()
    }

    pub fn clear_left(&self) {
        let _ = fs::remove_file(self.left_path());
    }

    /// Sets the Raft state of a mesh this node has left aside (`raft.left-<unix
    /// seconds>`), so that it can join again under its ID with its key.
    pub fn retire_raft(&self) -> Result<PathBuf, NodeError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = self.root.join(format!("raft.left-{secs}"));
        fs::rename(self.raft_path(), &to).map_err(|e| dir_err(&self.raft_path(), e))?;
        Ok(to)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_non_empty_directory_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let foreign = d.path().join("etc");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("passwd"), "x").unwrap();
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o755)).unwrap();
        let e = DataDir::open(&foreign).err().expect("refused").to_string();
        assert!(e.contains("holds no webmesh identity"), "{e}");
        let mode = fs::metadata(&foreign).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "not chmodded");
        // An empty or missing directory, or one of ours, is fine.
        DataDir::open(&d.path().join("new")).unwrap();
        let ours = d.path().join("ours");
        fs::create_dir(&ours).unwrap();
        fs::write(ours.join("node-id"), "n1").unwrap();
        fs::write(ours.join("other"), "x").unwrap();
        DataDir::open(&ours).unwrap();
    }
}
