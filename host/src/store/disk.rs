//! Whether the data dir can take writes. A full or read-only disk under RocksDB turns a
//! Raft log write into a storage error, which openraft treats as fatal: the node would
//! stop serving altogether. So writes are refused *before* they reach the disk while
//! free space is below a floor or the filesystem is read-only, and the node stays up
//! for reads, status and Raft votes; writes resume by themselves once the disk recovers.
//! The verdict is pure; the watcher is a statvfs once a second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// Free space below which writes are refused: room for RocksDB's own flushes and
/// compactions, which must not fail either.
pub const MIN_FREE_BYTES: u64 = 64 << 20;
/// How often the data dir is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskFault {
    #[error(
        "the data dir {path} is on a read-only filesystem: writes are refused until it is writable again"
    )]
    ReadOnly { path: String },
    #[error(
        "the data dir {path} has {free_mib} MiB free, below the {min_mib} MiB writes need: writes are refused until space is freed"
    )]
    Full {
        path: String,
        free_mib: u64,
        min_mib: u64,
    },
}

/// The verdict on a filesystem with `free` bytes available and the read-only flag.
pub fn verdict(path: &Path, free: u64, read_only: bool) -> Result<(), DiskFault> {
    let path = path.display().to_string();
    if read_only {
        return Err(DiskFault::ReadOnly { path });
    }
    if free < MIN_FREE_BYTES {
        return Err(DiskFault::Full {
            path,
            free_mib: free >> 20,
            min_mib: MIN_FREE_BYTES >> 20,
        });
    }
    Ok(())
}

/// Bytes available to this process and whether the filesystem is mounted read-only.
fn probe(path: &Path) -> std::io::Result<(u64, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let free = s.f_bavail.saturating_mul(s.f_frsize);
    Ok((free, s.f_flag & libc::ST_RDONLY != 0))
}

fn check(path: &Path) -> Option<DiskFault> {
    match probe(path) {
        Ok((free, ro)) => verdict(path, free, ro).err(),
        // Cannot tell: let the write try (and fail loudly if the disk is really gone).
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot check the data dir's filesystem");
            None
        }
    }
}

/// The data dir's state, kept current by a background task.
#[derive(Clone)]
pub struct DiskGuard {
    fault: watch::Receiver<Option<DiskFault>>,
}

impl DiskGuard {
    /// Checks `path` now, then once a second for as long as the guard lives (logging
    /// each change).
    pub fn watch(path: &Path) -> DiskGuard {
        let path: PathBuf = path.to_path_buf();
        let first = check(&path);
        if let Some(f) = &first {
            warn!("{f}");
        }
        let (tx, fault) = watch::channel(first);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                let p = path.clone();
                let Ok(now) = tokio::task::spawn_blocking(move || check(&p)).await else {
                    return;
                };
                let changed = tx.send_if_modified(|f| {
                    if *f == now {
                        return false;
                    }
                    match &now {
                        Some(fault) => warn!("{fault}"),
                        None => info!(path = %path.display(), "the data dir takes writes again"),
                    }
                    *f = now;
                    true
                });
                if !changed && tx.is_closed() {
                    return;
                }
            }
        });
        DiskGuard { fault }
    }

    /// A guard that never objects (tests of what runs above the disk).
    pub fn healthy() -> DiskGuard {
        let (_, fault) = watch::channel(None);
        DiskGuard { fault }
    }

    /// Whether a write may go to the disk now.
    pub fn check(&self) -> Result<(), DiskFault> {
        match &*self.fault.borrow() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_read_only_disks_refuse_writes_and_say_why() {
        let p = Path::new("/var/lib/webmesh");
        assert_eq!(verdict(p, MIN_FREE_BYTES, false), Ok(()));
        assert_eq!(verdict(p, u64::MAX, false), Ok(()));
        let full = verdict(p, MIN_FREE_BYTES - 1, false).unwrap_err();
        assert!(matches!(full, DiskFault::Full { free_mib: 63, .. }));
        let msg = full.to_string();
        assert!(
            msg.contains("/var/lib/webmesh") && msg.contains("64 MiB"),
            "{msg}"
        );
        // Read-only wins over any amount of space.
        let ro = verdict(p, u64::MAX, true).unwrap_err();
        assert_eq!(
            ro,
            DiskFault::ReadOnly {
                path: "/var/lib/webmesh".into()
            }
        );
    }

    #[tokio::test]
    async fn the_guard_reads_this_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let (free, _) = probe(dir.path()).unwrap();
        let g = DiskGuard::watch(dir.path());
        assert_eq!(g.check().is_ok(), free >= MIN_FREE_BYTES);
        assert!(DiskGuard::healthy().check().is_ok());
        assert!(probe(Path::new("/no/such/dir")).is_err());
    }
}
