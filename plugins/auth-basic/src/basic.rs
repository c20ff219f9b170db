//! The htpasswd file, the failure limits and the AUTH calls.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use webmesh_plugin_sdk::{AuthPlugin, Config, Error, Info, Plugin, Setting, async_trait, v1};

const USER: &str = "x-webmesh-basic-auth-username";
const PASSWORD: &str = "x-webmesh-basic-auth-password";
/// Set by the node from the connection, never by the caller.
const REMOTE: &str = "x-webmesh-remote-addr";

/// Failed attempts allowed per user, and per source address, in one window.
const FAILURES_PER_USER: u32 = 5;
const FAILURES_PER_SOURCE: u32 = 20;
const WINDOW_MS: u64 = 60_000;
/// Keys (users and sources) whose failures are counted at once.
const TRACKED: usize = 100_000;

/// Failures per key within a window, bounded; time is passed in.
#[derive(Default)]
struct Failures {
    counts: HashMap<String, (u32, u64)>,
}

impl Failures {
    /// Whether `key` has `limit` failures in the window ending `now`.
    fn blocked(&self, key: &str, limit: u32, now: u64) -> Option<u64> {
        let (n, start) = self.counts.get(key)?;
        let left = (start + WINDOW_MS).saturating_sub(now);
        (*n >= limit && left > 0).then_some(left)
    }

    fn fail(&mut self, key: &str, now: u64) {
        if self.counts.len() >= TRACKED && !self.counts.contains_key(key) {
            self.counts.retain(|_, (_, start)| now < *start + WINDOW_MS);
            if self.counts.len() >= TRACKED {
                return;
            }
        }
        let e = self.counts.entry(key.to_string()).or_insert((0, now));
        if now >= e.1 + WINDOW_MS {
            *e = (0, now);
        }
        e.0 += 1;
    }

    fn clear(&mut self, key: &str) {
        self.counts.remove(key);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct State {
    path: Option<PathBuf>,
    /// When the file was last read, by its modification time and length.
    stamp: Option<(SystemTime, u64)>,
    users: HashMap<String, String>,
    /// (user, keyed hash of the password) that bcrypt accepted: bcrypt costs tens of
    /// milliseconds, and this sits in front of every API call. Cleared on reload.
    verified: HashMap<(String, u64), ()>,
    /// A hash of the users' cost that matches no password: unknown users are checked
    /// against it, so they take as long as known ones.
    decoy: String,
    failures: Failures,
}

#[derive(Default)]
pub struct Basic {
    state: Mutex<State>,
    keys: RandomState,
}

fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected user:hash", n + 1))?;
        if !hash.starts_with("$2") {
            return Err(format!(
                "line {}: user {user:?} has no bcrypt hash (use htpasswd -B)",
                n + 1
            ));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

impl State {
    /// Reads the file again if it changed since the last read.
    fn refresh(&mut self) -> Result<(), Error> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| Error::failed_precondition("auth-basic is not configured"))?;
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::unavailable(format!("htpasswd {}: {e}", path.display())))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.stamp == Some(stamp) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::unavailable(format!("htpasswd {}: {e}", path.display())))?;
        self.users = parse(&text)
            .map_err(|e| Error::invalid_argument(format!("htpasswd {}: {e}", path.display())))?;
        self.verified.clear();
        // "$2b$10$...": the cost is the third field.
        let cost = self
            .users
            .values()
            .find_map(|h| h.split('$').nth(2)?.parse::<u32>().ok())
            .filter(|c| (4..=31).contains(c))
            .unwrap_or(bcrypt::DEFAULT_COST);
        self.decoy = bcrypt::hash(format!("decoy-{}", now_ms()), cost)
            .map_err(|e| Error::internal(format!("bcrypt: {e}")))?;
        self.stamp = Some(stamp);
        eprintln!("loaded {} users from {}", self.users.len(), path.display());
        Ok(())
    }
}

#[async_trait]
impl Plugin for Basic {
    fn info(&self) -> Info {
        Info::new(
            "auth-basic",
            env!("CARGO_PKG_VERSION"),
            "usernames and bcrypt passwords from an htpasswd file",
        )
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: "htpasswd",
            default: "",
            help: "the htpasswd file (bcrypt entries, `htpasswd -B`); re-read when it changes",
        }]
    }

    async fn configure(&self, config: Config) -> Result<(), Error> {
        let path = PathBuf::from(config.required_str("htpasswd")?);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.path = Some(path);
        s.stamp = None;
        s.refresh()
    }

    fn auth(&self) -> Option<&dyn AuthPlugin> {
        Some(self)
    }
}

#[async_trait]
impl AuthPlugin for Basic {
    async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Error> {
        let (Some(user), Some(password)) = (req.headers.get(USER), req.headers.get(PASSWORD))
        else {
            return Err(Error::unauthenticated(format!(
                "basic auth: send {USER} and {PASSWORD}"
            )));
        };
        let key = (user.clone(), self.keys.hash_one(password));
        let source = req.headers.get(REMOTE).cloned().unwrap_or_default();
        let now = now_ms();
        let (hash, known) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.refresh()?;
            if s.verified.contains_key(&key) {
                return Ok(user.clone());
            }
            let blocked = s
                .failures
                .blocked(&format!("user:{user}"), FAILURES_PER_USER, now)
                .or_else(|| {
                    (!source.is_empty())
                        .then(|| {
                            s.failures.blocked(
                                &format!("source:{source}"),
                                FAILURES_PER_SOURCE,
                                now,
                            )
                        })
                        .flatten()
                });
            if let Some(left) = blocked {
                return Err(Error::resource_exhausted(format!(
                    "basic auth: too many failed attempts; retry in {} s",
                    left.div_ceil(1000)
                )));
            }
            match s.users.get(user) {
                Some(h) => (h.clone(), true),
                None => (s.decoy.clone(), false),
            }
        };
        // bcrypt is slow on purpose: on the blocking pool, outside the lock.
        let pw = password.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            s.verified.insert(key, ());
            s.failures.clear(&format!("user:{user}"));
            Ok(user.clone())
        } else {
            s.failures.fail(&format!("user:{user}"), now);
            if !source.is_empty() {
                s.failures.fail(&format!("source:{source}"), now);
            }
            Err(Error::unauthenticated(
                "basic auth: bad username or password",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin configured with an htpasswd file holding alice's `password`.
    async fn alice(password: &str) -> (tempfile::TempDir, Basic, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let h = bcrypt::hash(password, 4).unwrap();
        std::fs::write(&path, format!("alice:{h}\n")).unwrap();
        let p = Basic::default();
        let mut cfg = Config::default();
        cfg.0
            .insert("htpasswd".into(), path.to_str().unwrap().into());
        p.configure(cfg).await.unwrap();
        (dir, p, path)
    }

    /// A request with these credentials from `source` (none if empty).
    fn req(user: &str, password: &str, source: &str) -> v1::AuthenticationRequest {
        let mut headers: std::collections::HashMap<String, String> = [
            (USER.to_string(), user.to_string()),
            (PASSWORD.to_string(), password.to_string()),
        ]
        .into();
        if !source.is_empty() {
            headers.insert(REMOTE.to_string(), source.to_string());
        }
        v1::AuthenticationRequest {
            headers: headers.into_iter().collect(),
            certificates: vec![],
        }
    }

    #[test]
    fn htpasswd_lines_are_users_and_bcrypt_hashes() {
        let u = parse("# admins\nalice:$2y$05$abc\n\nbob:$2b$05$def\n").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u["alice"], "$2y$05$abc");
        assert!(parse("carol:{SHA}xyz").unwrap_err().contains("line 1"));
        assert!(parse("nocolon").unwrap_err().contains("user:hash"));
    }

    #[tokio::test]
    async fn guessing_is_limited_per_user_and_per_source() {
        let (_dir, p, _) = alice("s3cret").await;
        use webmesh_plugin_sdk::Code;
        for _ in 0..FAILURES_PER_USER {
            let e = p
                .authenticate(req("alice", "guess", "10.0.0.9"))
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::Unauthenticated);
        }
        // Alice is locked for the window, even with the right password, from anywhere.
        let e = p
            .authenticate(req("alice", "s3cret", "10.0.0.1"))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted, "{e}");
        // One source guessing many users is held back too.
        for i in 0..FAILURES_PER_SOURCE {
            let _ = p.authenticate(req(&format!("u{i}"), "x", "10.0.0.7")).await;
        }
        let e = p
            .authenticate(req("zed", "x", "10.0.0.7"))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        // Another source, another user: still served.
        let e = p
            .authenticate(req("bob", "x", "10.0.0.8"))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated);
    }

    #[test]
    fn failures_are_counted_per_window_and_bounded() {
        let mut f = Failures::default();
        for _ in 0..3 {
            f.fail("k", 0);
        }
        assert!(f.blocked("k", 3, 1).is_some());
        assert!(f.blocked("k", 3, WINDOW_MS).is_none(), "the window passed");
        f.fail("k", WINDOW_MS + 1);
        assert!(f.blocked("k", 3, WINDOW_MS + 2).is_none(), "a new window");
    }

    #[tokio::test]
    async fn the_right_password_passes_and_a_changed_file_is_reread() {
        let (_dir, p, path) = alice("s3cret").await;
        let h = std::fs::read_to_string(&path).unwrap()["alice:".len()..]
            .trim()
            .to_string();
        let req = |u: &str, pw: &str| req(u, pw, "");
        assert_eq!(
            p.authenticate(req("alice", "s3cret")).await.unwrap(),
            "alice"
        );
        // Cached now; still right.
        assert_eq!(
            p.authenticate(req("alice", "s3cret")).await.unwrap(),
            "alice"
        );
        assert!(p.authenticate(req("alice", "wrong")).await.is_err());
        assert!(p.authenticate(req("bob", "s3cret")).await.is_err());
        let none = v1::AuthenticationRequest::default();
        assert!(
            p.authenticate(none)
                .await
                .unwrap_err()
                .message
                .contains(USER)
        );
        // A new file: alice's password changed, bob added.
        let h2 = bcrypt::hash("n3w", 4).unwrap();
        std::fs::write(&path, format!("alice:{h2}\nbob:{h}\n# grown\n")).unwrap();
        assert!(p.authenticate(req("alice", "s3cret")).await.is_err());
        assert_eq!(p.authenticate(req("alice", "n3w")).await.unwrap(), "alice");
        assert_eq!(p.authenticate(req("bob", "s3cret")).await.unwrap(), "bob");
    }
}
