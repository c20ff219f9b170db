//! `auth-basic`: authenticates callers by username and password against an htpasswd
//! file of bcrypt hashes (`htpasswd -B`, or `auth-basic hash PASSWORD`). The file is
//! read again whenever it changes.
//!
//! Config: `htpasswd` (path, required). Headers: `x-webmesh-basic-auth-username`,
//! `x-webmesh-basic-auth-password`. The identity is the username.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use webmesh_plugin_sdk::{AuthPlugin, Config, Error, Info, Plugin, async_trait, v1};

const USER: &str = "x-webmesh-basic-auth-username";
const PASSWORD: &str = "x-webmesh-basic-auth-password";

#[derive(Default)]
struct State {
    path: Option<PathBuf>,
    /// When the file was last read, by its modification time and length.
    stamp: Option<(SystemTime, u64)>,
    users: HashMap<String, String>,
    /// (user, keyed hash of the password) that bcrypt accepted: bcrypt costs tens of
    /// milliseconds, and this sits in front of every API call. Cleared on reload.
    verified: HashMap<(String, u64), ()>,
}

#[derive(Default)]
struct Basic {
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
        let hash = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.refresh()?;
            if s.verified.contains_key(&key) {
                return Ok(user.clone());
            }
            s.users.get(user).cloned()
        };
        let Some(hash) = hash else {
            return Err(Error::unauthenticated(
                "basic auth: bad username or password",
            ));
        };
        // Outside the lock: bcrypt is slow on purpose.
        if bcrypt::verify(password, &hash).unwrap_or(false) {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.verified.insert(key, ());
            Ok(user.clone())
        } else {
            Err(Error::unauthenticated(
                "basic auth: bad username or password",
            ))
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hash") {
        let usage = "usage: auth-basic hash [--cost 4-31] PASSWORD";
        let (cost, password) = match &args[1..] {
            [flag, cost, pw] if flag == "--cost" => (cost.parse().ok(), pw),
            [pw] => (Some(bcrypt::DEFAULT_COST), pw),
            _ => (None, &String::new()),
        };
        let Some(cost) = cost.filter(|c| (4..=31).contains(c)) else {
            eprintln!("{usage}");
            return std::process::ExitCode::from(2);
        };
        return match bcrypt::hash(password, cost) {
            Ok(h) => {
                println!("{h}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    webmesh_plugin_sdk::serve(Basic::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_lines_are_users_and_bcrypt_hashes() {
        let u = parse("# admins\nalice:$2y$05$abc\n\nbob:$2b$05$def\n").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u["alice"], "$2y$05$abc");
        assert!(parse("carol:{SHA}xyz").unwrap_err().contains("line 1"));
        assert!(parse("nocolon").unwrap_err().contains("user:hash"));
    }

    #[tokio::test]
    async fn the_right_password_passes_and_a_changed_file_is_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let h = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&path, format!("alice:{h}\n")).unwrap();
        let p = Basic::default();
        let mut cfg = Config::default();
        cfg.0
            .insert("htpasswd".into(), path.to_str().unwrap().into());
        p.configure(cfg).await.unwrap();
        let req = |u: &str, pw: &str| v1::AuthenticationRequest {
            headers: [
                (USER.to_string(), u.to_string()),
                (PASSWORD.to_string(), pw.to_string()),
            ]
            .into(),
            certificates: vec![],
        };
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
