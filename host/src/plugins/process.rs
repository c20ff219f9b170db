//! Plugins as child processes: start, handshake, stderr into our log, restart with
//! backoff when one dies, and Close → SIGTERM → SIGKILL on shutdown. Every child is
//! waited for, so none is left a zombie.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::process::{Child, ChildStdout, Command};
use webmesh_plugin_sdk::{DATA_DIR_ENV, HANDSHAKE_PREFIX, SOCKET_ENV};

use super::StartError;

/// How many of a plugin's last stderr lines a start-up error quotes.
const STDERR_TAIL: usize = 8;
/// Longest line read from a plugin's stdout or stderr; a longer one is cut (a plugin
/// gone bad printing without newlines must not fill the node's memory).
const MAX_LINE: usize = 8 * 1024;

/// The next line of `r`, at most `max` bytes (the rest of a longer line comes as the
/// next one); `None` at the end.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut buf = Vec::new();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        let take = avail.len().min(max - buf.len());
        if let Some(i) = avail[..take].iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&avail[..i]);
            r.consume(i + 1);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if buf.len() >= max {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

/// The socket a handshake line names, if it is exactly the one the node assigned: a
/// plugin may not send the node to another socket (another plugin's, the admin
/// socket).
pub fn parse_handshake(line: &str, assigned: &Path) -> Result<PathBuf, String> {
    let sock = line
        .trim()
        .strip_prefix(HANDSHAKE_PREFIX)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            format!(
                "it printed {:?} instead of the handshake line \"{HANDSHAKE_PREFIX}<socket>\" \
                 (is it a webmesh plugin?)",
                line.chars().take(200).collect::<String>()
            )
        })?;
    if Path::new(sock) != assigned {
        return Err(format!(
            "it names the socket {:?}, not the one it was given ({}); a plugin serves where \
             {SOCKET_ENV} says",
            sock.chars().take(200).collect::<String>(),
            assigned.display()
        ));
    }
    Ok(PathBuf::from(sock))
}

/// A started child that has printed a valid handshake.
pub struct Launched {
    pub child: Child,
    pub socket: PathBuf,
}

/// The private directory of plugin `name` under the node's data dir
/// (`plugins/<name>`, mode 0700), created if missing: where a plugin keeps its files
/// unless told otherwise.
pub fn state_dir(data_dir: &Path, name: &str) -> Result<PathBuf, StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = data_dir.join("plugins").join(name);
    let err = |e: std::io::Error| StartError::Spawn {
        plugin: name.to_string(),
        path: dir.clone(),
        reason: format!("its data directory: {e}"),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(err)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(dir)
}

/// Starts `path` with its socket in `dir` (and its private directory `state`, if any),
/// forwards its output into the log, and waits up to `timeout` for the handshake line.
pub async fn launch(
    name: &str,
    path: &Path,
    dir: &Path,
    state: Option<&Path>,
    timeout: Duration,
) -> Result<Launched, StartError> {
    let socket = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new(path);
    if let Some(state) = state {
        cmd.env(DATA_DIR_ENV, state);
    }
    cmd.env(SOCKET_ENV, &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only sets a flag of the new process.
    unsafe {
        cmd.pre_exec(|| {
            // If the node dies without a shutdown (SIGKILL), its plugins go with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| StartError::Spawn {
        plugin: name.to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_done = child.stderr.take().map(|err| {
        let (name, tail) = (name.to_string(), tail.clone());
        tokio::spawn(async move {
            let mut err = BufReader::new(err);
            while let Ok(Some(line)) = next_line(&mut err, MAX_LINE).await {
                tracing::info!(plugin = %name, "{line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout);
    let first = tokio::time::timeout(timeout, next_line(&mut lines, MAX_LINE)).await;
    let printed = |tail: &Arc<Mutex<VecDeque<String>>>| {
        let t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            "nothing on stderr".to_string()
        } else {
            format!(
                "stderr: {}",
                t.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    };
    let fail = |reason: String| StartError::Handshake {
        plugin: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    match first {
        Ok(Ok(Some(line))) => match parse_handshake(&line, &socket) {
            Ok(socket) => {
                forward_stdout(name, lines);
                Ok(Launched { child, socket })
            }
            Err(why) => {
                let _ = child.kill().await;
                Err(fail(why))
            }
        },
        Ok(_) => {
            // Stdout closed: the plugin exited (or closed it). Give stderr a moment to
            // drain so the error can quote it.
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            if let Some(h) = stderr_done {
                let _ = tokio::time::timeout(Duration::from_millis(500), h).await;
            }
            let status = match status {
                Ok(Ok(s)) => s.to_string(),
                _ => {
                    let _ = child.kill().await;
                    "closed its stdout".to_string()
                }
            };
            Err(fail(format!(
                "it exited ({status}) after {:.1?} without a handshake; {}",
                started.elapsed(),
                printed(&tail)
            )))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(fail(format!(
                "no handshake within {timeout:?}; {}",
                printed(&tail)
            )))
        }
    }
}

/// Plugin stdout after the handshake goes to the log too.
fn forward_stdout(name: &str, mut lines: BufReader<ChildStdout>) {
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok(Some(line)) = next_line(&mut lines, MAX_LINE).await {
            tracing::info!(plugin = %name, "{line}");
        }
    });
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`; always reaped.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling a child we own and have not reaped yet.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Restart delays: 100 ms doubling to 10 s; back to the start after a minute of health.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);
    const HEALTHY: Duration = Duration::from_secs(60);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The delay before the next start, given how long the last run lasted.
    pub fn delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Self::HEALTHY {
            self.next = Self::FIRST;
        }
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_must_name_the_assigned_socket() {
        let mine = Path::new("/run/p/auth.sock");
        let ok = format!("{HANDSHAKE_PREFIX}/run/p/auth.sock\n");
        assert_eq!(parse_handshake(&ok, mine).unwrap(), mine);
        for bad in [
            format!("{HANDSHAKE_PREFIX}/run/webmesh/webmesh.sock"),
            HANDSHAKE_PREFIX.to_string(),
            "hello".to_string(),
            "x".repeat(100_000),
        ] {
            let e = parse_handshake(&bad, mine).unwrap_err();
            assert!(
                e.len() < 700,
                "the error quotes at most a little: {}",
                e.len()
            );
        }
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut text: &[u8] = b"short\nxxxxxxxxxxxxyy\nlast";
        let mut r = tokio::io::BufReader::new(&mut text);
        assert_eq!(
            next_line(&mut r, 12).await.unwrap().as_deref(),
            Some("short")
        );
        assert_eq!(
            next_line(&mut r, 12).await.unwrap().as_deref(),
            Some("xxxxxxxxxxxx")
        );
        assert_eq!(next_line(&mut r, 12).await.unwrap().as_deref(), Some("yy"));
        assert_eq!(
            next_line(&mut r, 12).await.unwrap().as_deref(),
            Some("last")
        );
        assert_eq!(next_line(&mut r, 12).await.unwrap(), None);
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() {
        let mut b = Backoff::new();
        let short = Duration::from_millis(10);
        let got: Vec<u128> = (0..9).map(|_| b.delay(short).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(b.delay(Duration::from_secs(120)), Backoff::FIRST);
    }
}
