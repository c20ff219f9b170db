//! The local admin socket: a unix socket whose callers act as this node (`wmctl` on
//! the node's host). Two guards: the file (mode 0660, group the admin group) and the
//! peer's credentials (`SO_PEERCRED`), checked on every connection: root, the node's
//! own user, and members of the admin group get in; everyone else is closed on.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::warn;

use super::NodeError;

pub(super) struct AdminSocket {
    listener: UnixListener,
    gid: Option<u32>,
    path: PathBuf,
}

fn err(path: &Path, reason: impl ToString) -> NodeError {
    NodeError::Usage(format!(
        "invalid admin-socket {:?}: {}",
        path.display(),
        reason.to_string()
    ))
}

/// The gid of group `name`, from the group database.
pub(super) fn group_gid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// Binds `path`: its directory is made if missing; a stale socket (nobody answers) is
/// replaced; a live one, or anything that is not a socket, is an error.
pub(super) fn bind(path: &Path, group: &str) -> Result<AdminSocket, NodeError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    path,
                    "another node serves it; give each node its own --admin-socket",
                ));
            }
            std::fs::remove_file(path).map_err(|e| err(path, e))?;
        }
        Ok(_) => return Err(err(path, "exists and is not a socket")),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| err(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err(path, e))?;
    let gid = group_gid(group);
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(|e| err(path, e))?;
    }
    Ok(AdminSocket {
        listener,
        gid,
        path: path.to_path_buf(),
    })
}

/// Whether the process behind a connection may administer this node.
pub fn allowed(uid: u32, gid: u32, pid: Option<i32>, admin_gid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid == 0 || uid == me {
        return true;
    }
    let Some(admin) = admin_gid else {
        return false;
    };
    if gid == admin {
        return true;
    }
    // Supplementary groups are not in SO_PEERCRED; the kernel lists them per process.
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:").map(str::to_string))
        })
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(admin)))
}

impl AdminSocket {
    /// Connections from allowed processes; the others are closed at once.
    pub(super) fn incoming(
        self,
    ) -> impl futures::Stream<Item = std::io::Result<UnixStream>> + Send + 'static {
        let AdminSocket {
            listener,
            gid,
            path,
        } = self;
        UnixListenerStream::new(listener).filter_map(move |conn| {
            let path = path.clone();
            async move {
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) => return Some(Err(e)),
                };
                match stream.peer_cred() {
                    Ok(c) if allowed(c.uid(), c.gid(), c.pid(), gid) => Some(Ok(stream)),
                    Ok(c) => {
                        warn!(socket = %path.display(), uid = c.uid(), pid = ?c.pid(), "refused a connection to the admin socket: not root, this user or the admin group");
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, "admin socket: no peer credentials; closed");
                        None
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_this_user_are_allowed_others_only_by_group() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        assert!(allowed(0, 0, None, None));
        assert!(allowed(me, 12345, None, None));
        if me != 4242 {
            assert!(!allowed(4242, 4242, None, None));
            assert!(!allowed(4242, 4242, None, Some(999)));
            assert!(allowed(4242, 999, None, Some(999)));
        }
    }
}
