//! The plugin host against real binaries: handshake failures, duplicate capabilities,
//! supervision of a plugin killed with SIGKILL, and authentication swapped in by the
//! config file alone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use webmesh_api::v1::GetStatusRequest;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_e2e::netns::TestNet;
use webmesh_e2e::{LocalNode, TestCa, bin, htpasswd, wait_for, wasm_component, write_pair};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Waits for a node that should not start to exit; returns its last log line.
async fn startup_failure(node: &mut LocalNode, within: Duration) -> Result<String> {
    let id = node.id.clone();
    wait_for(&format!("{id} to exit"), within, || {
        let exited = node.exited().is_some();
        async move { exited.then_some(()) }
    })
    .await?;
    let status = node.exited().context("exited")?;
    assert!(!status.success(), "{} exited with success", node.id);
    let log = node.log_text();
    Ok(log.lines().last().unwrap_or_default().to_string())
}

#[tokio::test]
async fn plugins_that_fail_their_handshake_stop_startup_with_one_clear_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: Vec<(&str, PathBuf, &[&str], Duration)> = vec![
        (
            "dies",
            script(
                dir.path(),
                "dies.sh",
                "echo 'cannot open /var/lib/x.db' >&2\nexit 3",
            ),
            &[
                "plugin dies",
                "exited (exit status: 3)",
                "cannot open /var/lib/x.db",
            ],
            Duration::from_secs(8),
        ),
        (
            "chatty",
            script(dir.path(), "chatty.sh", "echo 'hello there'\nexec sleep 60"),
            &[
                "plugin chatty",
                "printed \"hello there\" instead of the handshake line",
            ],
            Duration::from_secs(8),
        ),
        (
            "mute",
            script(
                dir.path(),
                "mute.sh",
                "echo 'starting up' >&2\nexec sleep 60",
            ),
            &["plugin mute", "no handshake within 10s", "starting up"],
            Duration::from_secs(16),
        ),
        (
            "missing",
            dir.path().join("no-such-plugin"),
            &["plugin missing", "cannot start", "No such file"],
            Duration::from_secs(8),
        ),
    ];
    for (name, path, want, within) in cases {
        let mut node = LocalNode::new(&format!("hs-{name}"), dir.path());
        node.extra_args = vec![
            "--bootstrap".into(),
            "--no-wireguard".into(),
            "--plugin".into(),
            format!("{name}={}", path.display()),
        ];
        let t0 = Instant::now();
        node.spawn()?;
        let line = startup_failure(&mut node, within).await?;
        for w in want {
            assert!(line.contains(w), "{name}: {w:?} not in {line:?}");
        }
        assert!(line.starts_with("webmesh: "), "{name}: {line:?}");
        assert_eq!(line.matches(&format!("plugin {name}")).count(), 1, "{line}");
        eprintln!("{name}: failed in {:?}: {line}", t0.elapsed());
    }
    // The misbehaving children went with their nodes.
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}/(chatty|mute).sh", dir.path().display())])
        .output()?;
    assert!(
        out.stdout.is_empty(),
        "leftover plugin processes: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[tokio::test]
async fn a_second_auth_plugin_is_a_startup_error_naming_both() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pw = htpasswd(dir.path(), &[("admin", "pw")])?;
    let mut node = LocalNode::new("dup-auth", dir.path());
    node.extra_args = vec!["--bootstrap".into(), "--no-wireguard".into()];
    for name in ["basic-one", "basic-two"] {
        node.extra_args.extend([
            "--plugin".into(),
            format!("{name}={}", bin("auth-basic").display()),
            "--plugin-config".into(),
            format!("{name}.htpasswd={}", pw.display()),
        ]);
    }
    node.spawn()?;
    let line = startup_failure(&mut node, Duration::from_secs(15)).await?;
    assert!(
        line.contains("plugins \"basic-one\" and \"basic-two\" both provide AUTH"),
        "{line}"
    );
    Ok(())
}

fn with_basic<T>(msg: T, user: &str, password: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "x-webmesh-basic-auth-username",
        user.parse().expect("ascii"),
    );
    r.metadata_mut().insert(
        "x-webmesh-basic-auth-password",
        password.parse().expect("ascii"),
    );
    r
}

/// Child processes of `pid`, with their state letter from /proc.
fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for c in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let state = std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.trim_start().chars().next()?;
                    Some(after)
                })
                .unwrap_or('?');
            out.push((c, state));
        }
    }
    out
}

#[tokio::test]
async fn auth_by_config_file_and_a_killed_plugin_comes_back() -> Result<()> {
    let mut net = TestNet::new()?;
    let pw = htpasswd(
        net.path(),
        &[("admin", "adm1n"), ("b", "b-pass"), ("c", "c-pass")],
    )?;
    // Swapping auth in is a config file change only.
    let config = net.path().join("h1.yaml");
    std::fs::write(
        &config,
        format!(
            "bootstrap: true\nplugins:\n  auth:\n    target: {}\n    config:\n      htpasswd: {}\n",
            bin("auth-basic").display(),
            pw.display()
        ),
    )?;
    let h1 = net.add_host("h1")?;
    h1.args = vec![
        "--config".into(),
        config.display().to_string(),
        "--endpoint".into(),
        h1.ip.to_string(),
    ];
    h1.start()?;
    let url = format!("http://{}", net.grpc("h1"));
    let status = |user: Option<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(url)?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .connect()
                .await?;
            let req = match user {
                Some((u, p)) => with_basic(GetStatusRequest::default(), u, p),
                None => tonic::Request::new(GetStatusRequest::default()),
            };
            Ok::<_, anyhow::Error>(NodeClient::new(ch).get_status(req).await)
        }
    };
    wait_for(
        "h1 to serve authenticated callers",
        Duration::from_secs(60),
        || async {
            status(Some(("admin", "adm1n")))
                .await
                .ok()?
                .ok()
                .filter(|s| !s.get_ref().current_leader.is_empty())
        },
    )
    .await?;
    for (who, user) in [
        ("no credentials", None),
        ("a wrong password", Some(("admin", "nope"))),
        ("an unknown user", Some(("zed", "adm1n"))),
    ] {
        let err = status(user).await?.expect_err(who);
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{who}: {err:?}");
    }

    // Joiners: without credentials, with a wrong password, then right.
    let bad = net.path().join("bad-pass");
    std::fs::write(&bad, "wrong\n")?;
    let good = net.path().join("good-pass");
    std::fs::write(&good, "b-pass\n")?;
    let join = net.grpc("h1");
    // "badpass" presents user b with a wrong password; "b" the right one.
    for (id, creds) in [
        ("nocreds", None),
        ("badpass", Some(("b", &bad))),
        ("b", Some(("b", &good))),
    ] {
        let h = net.add_host(id)?;
        h.args = vec![
            "--join".into(),
            join.clone(),
            "--endpoint".into(),
            h.ip.to_string(),
        ];
        if let Some((user, file)) = creds {
            h.args.extend([
                "--auth-basic-user".into(),
                user.into(),
                "--auth-basic-password-file".into(),
                file.display().to_string(),
            ]);
        }
        h.start()?;
    }
    for id in ["nocreds", "badpass"] {
        let h = net.host(id);
        wait_for(&format!("{id} to give up"), Duration::from_secs(30), || {
            let running = h.running();
            async move { (!running).then_some(()) }
        })
        .await?;
        let log = net.hosts[id].log_text();
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.contains("refused the join: Unauthenticated"),
            "{id}: {last}"
        );
    }
    net.host("b").wait_ready(Duration::from_secs(60)).await?;

    // SIGKILL the plugin: the node keeps serving; the plugin is back within a second.
    // The probe uses credentials never shown before, so the node's cache of verdicts
    // cannot answer for the plugin.
    let node_pid = net.hosts["h1"].pid().context("h1 pid")?;
    let plugin_pid = children(node_pid)
        .into_iter()
        .map(|(p, _)| p)
        .next()
        .context("h1 has no plugin child")?;
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &plugin_pid.to_string()])
        .status()?;
    let back = wait_for(
        "the plugin to answer again",
        Duration::from_secs(5),
        || async {
            let r = status(Some(("c", "c-pass"))).await.ok()?;
            r.ok().map(|_| killed.elapsed())
        },
    )
    .await?;
    eprintln!("plugin back after {back:?}");
    assert!(back < Duration::from_secs(1), "plugin back after {back:?}");
    let kids = children(node_pid);
    assert_eq!(kids.len(), 1, "one plugin child: {kids:?}");
    assert_ne!(kids[0].0, plugin_pid, "a new plugin process");
    assert!(kids.iter().all(|(_, s)| *s != 'Z'), "zombies: {kids:?}");
    assert!(net.host("h1").running());
    // A clean shutdown takes the plugin with it (Close, then signals).
    let survivor = kids[0].0;
    net.host("h1").stop(Duration::from_secs(10));
    wait_for(
        "the plugin to exit with the node",
        Duration::from_secs(5),
        || async { (!Path::new(&format!("/proc/{survivor}")).exists()).then_some(()) },
    )
    .await?;
    Ok(())
}

/// Two columns of a query, through the sqlite3 CLI (an independent reader).
fn sqlite_pairs(db: &Path, sql: &str, cols: (&str, &str)) -> Result<Vec<(String, String)>> {
    let out = std::process::Command::new("sqlite3")
        .args(["-json", db.to_str().context("db path")?, sql])
        .output()
        .context("sqlite3 (apt-get install sqlite3)")?;
    if !out.status.success() {
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![]);
    }
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&out.stdout)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let col = |c: &str| {
                r.get(c)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            (col(cols.0), col(cols.1))
        })
        .collect())
}

fn sqlite_rows(db: &Path) -> Result<Vec<(String, String)>> {
    sqlite_pairs(
        db,
        "SELECT node_id, ip FROM allocations ORDER BY node_id, version",
        ("node_id", "ip"),
    )
}

#[tokio::test]
async fn joiners_get_their_addresses_from_the_ipam_sqlite_plugin() -> Result<()> {
    let mut net = TestNet::new()?;
    let db = net.path().join("ipam.db");
    let h1 = net.add_host("h1")?;
    h1.args = vec![
        "--bootstrap".into(),
        "--endpoint".into(),
        h1.ip.to_string(),
        "--plugin".into(),
        format!("ipam={}", bin("ipam-sqlite").display()),
        "--plugin-config".into(),
        format!("ipam.path={}", db.display()),
    ];
    h1.start()?;
    h1.wait_ready(Duration::from_secs(60)).await?;
    let join = net.grpc("h1");
    for id in ["h2", "h3"] {
        let h = net.add_host(id)?;
        h.args = vec![
            "--join".into(),
            join.clone(),
            "--endpoint".into(),
            h.ip.to_string(),
            "--leave-on-shutdown".into(),
        ];
        h.start()?;
    }
    for id in ["h2", "h3"] {
        net.host(id).wait_ready(Duration::from_secs(60)).await?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    let rows = sqlite_rows(&db)?;
    // Every node's addresses, the bootstrap node's included, are the file's rows.
    let mut want = Vec::new();
    for (id, n) in &nodes {
        want.push((id.clone(), n.private_ipv4.clone()));
        want.push((id.clone(), n.private_ipv6.clone()));
    }
    want.sort();
    let mut got = rows.clone();
    got.sort();
    assert_eq!(got, want, "rows vs node records");
    assert_eq!(rows.len(), 6);
    // A leave gives the addresses back.
    net.host("h3").stop(Duration::from_secs(10));
    wait_for("h3's rows to go", Duration::from_secs(10), || async {
        let rows = sqlite_rows(&db).ok()?;
        (rows.len() == 4 && rows.iter().all(|(n, _)| n != "h3")).then_some(())
    })
    .await?;
    // And the mesh works on those addresses.
    let h2_v4 = webmesh_e2e::netns::v4(&nodes["h2"]);
    let h1 = &net.hosts["h1"];
    wait_for("h1 to ping h2", Duration::from_secs(10), || async {
        h1.ping(&h2_v4).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_readme_command_runs_ipam_sqlite_in_its_own_directory() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // `webmesh --bootstrap --plugin ipam=./ipam-sqlite`, nothing more (the host adds
    // only its ID, data dir, interface and admin socket).
    let mut net = TestNet::new()?;
    let h1 = net.add_host("h1")?;
    h1.args = vec![
        "--bootstrap".into(),
        "--plugin".into(),
        format!("ipam={}", bin("ipam-sqlite").display()),
    ];
    h1.start()?;
    h1.wait_ready(Duration::from_secs(60)).await?;
    let dir = net.hosts["h1"].data_dir.join("plugins/ipam");
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "{} has mode {mode:o}", dir.display());
    let rows = sqlite_rows(&dir.join("ipam.db"))?;
    let nodes = net.hosts["h1"].nodes().await?;
    ensure!(
        rows.contains(&("h1".to_string(), nodes["h1"].private_ipv4.clone())),
        "the bootstrap node's address is in the plugin's file: {rows:?}"
    );
    Ok(())
}

#[test]
fn every_plugin_binary_answers_help_and_version() -> Result<()> {
    for (name, keys) in [
        ("auth-basic", &["htpasswd"][..]),
        ("auth-mtls", &["ca"]),
        ("auth-allowlist", &["tokens"]),
        ("ipam-sqlite", &["path"]),
        ("storage-sqlite", &["path"]),
        ("watch-webhook", &["url", "retries", "timeout", "queue"]),
    ] {
        let help = std::process::Command::new(bin(name))
            .arg("--help")
            .output()?;
        let text = String::from_utf8_lossy(&help.stdout);
        ensure!(help.status.success(), "{name} --help: {help:?}");
        ensure!(
            text.starts_with(name) && text.contains("Capabilities:"),
            "{name}: {text}"
        );
        for k in keys {
            ensure!(
                text.lines().any(|l| l.trim_start().starts_with(k)),
                "{name} --help lists {k}: {text}"
            );
        }
        let version = std::process::Command::new(bin(name))
            .arg("--version")
            .output()?;
        ensure!(version.status.success());
        ensure!(
            String::from_utf8_lossy(&version.stdout).trim()
                == format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} --version: {version:?}"
        );
    }
    Ok(())
}

/// The node's whole state, from its Snapshot RPC (on its admin socket).
async fn node_state(node: &LocalNode) -> Result<Vec<(String, String)>> {
    use prost::Message;
    let snap = node
        .client()
        .await?
        .snapshot(webmesh_api::v1::SnapshotRequest {})
        .await?
        .into_inner();
    let s = webmesh_api::internal::StateSnapshot::decode(snap.snapshot.as_slice())?;
    Ok(s.entries.into_iter().map(|e| (e.key, e.value)).collect())
}

fn sqlite_state(db: &Path) -> Result<Vec<(String, String)>> {
    sqlite_pairs(
        db,
        "SELECT key, value FROM state ORDER BY key",
        ("key", "value"),
    )
}

async fn wait_equal(node: &LocalNode, db: &Path, what: &str) -> Result<usize> {
    wait_for(what, Duration::from_secs(20), || async {
        let want = node_state(node).await.ok()?;
        let got = sqlite_state(db).ok()?;
        (got == want).then_some(want.len())
    })
    .await
}

async fn put(node: &LocalNode, key: &str, value: &str, delete: bool) -> Result<()> {
    let r = node
        .client()
        .await?
        .apply(webmesh_api::v1::RaftLogEntry {
            r#type: if delete { 2 } else { 1 },
            key: key.into(),
            value: value.into(),
            ttl: None,
        })
        .await?
        .into_inner();
    if !r.error.is_empty() {
        bail!("apply {key}: {}", r.error);
    }
    Ok(())
}

#[tokio::test]
async fn storage_sqlite_equals_the_state_through_writes_restarts_and_restores() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("state.db");
    let mut node = LocalNode::new("store-1", dir.path());
    node.extra_args = vec![
        "--bootstrap".into(),
        "--no-wireguard".into(),
        "--plugin".into(),
        format!("store={}", bin("storage-sqlite").display()),
        "--plugin-config".into(),
        format!("store.path={}", db.display()),
    ];
    node.spawn()?;
    node.wait_ready(Duration::from_secs(60)).await?;
    let n = wait_equal(&node, &db, "the bootstrap state in SQLite").await?;
    assert!(n > 5, "bootstrap objects: {n}");
    for i in 0..50 {
        put(&node, &format!("/test/k{i:02}"), &format!("v{i}"), false).await?;
    }
    for i in 0..10 {
        put(&node, &format!("/test/k{i:02}"), "", true).await?;
    }
    put(&node, "/test/k20", "changed", false).await?;
    let n = wait_equal(&node, &db, "SQLite to follow the writes").await?;
    // A restart: the plugin comes back with the node and is restored.
    node.stop(Duration::from_secs(10));
    node.spawn()?;
    node.wait_ready(Duration::from_secs(60)).await?;
    put(&node, "/test/after-restart", "yes", false).await?;
    assert_eq!(
        wait_equal(&node, &db, "SQLite after the restart").await?,
        n + 1
    );
    // The copy lost while the node is down is rebuilt from a snapshot.
    node.stop(Duration::from_secs(10));
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    node.spawn()?;
    node.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(
        wait_equal(&node, &db, "SQLite restored from a snapshot").await?,
        n + 1
    );
    node.stop(Duration::from_secs(10));
    Ok(())
}

/// A webhook receiver: collects POST bodies.
async fn receiver(
    addr: std::net::SocketAddr,
) -> Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    if let Ok(v) = serde_json::from_str(&body[..len]) {
                        g.lock().unwrap().push(v);
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    buf.clear();
                }
            });
        }
    });
    Ok((bound, got))
}

#[tokio::test]
async fn the_webhook_receives_join_leave_and_leader_change_events() -> Result<()> {
    let mut net = TestNet::new()?;
    let (addr, got) = receiver((net.bridge_ip(), 0).into()).await?;
    let h1 = net.add_host("h1")?;
    h1.args = vec!["--bootstrap".into(), "--endpoint".into(), h1.ip.to_string()];
    h1.start()?;
    h1.wait_ready(Duration::from_secs(60)).await?;
    let join = net.grpc("h1");
    // Open mode: h2 and h3 join as non-voters and the admin (h1's socket) promotes them.
    let promote = |net: &TestNet, id: &str| {
        let (h1, id) = (net.hosts["h1"].admin_server(), id.to_string());
        async move {
            let out = std::process::Command::new(bin("wmctl"))
                .args(["-s", &h1, "promote", &id])
                .output()?;
            ensure!(
                out.status.success(),
                "wmctl promote {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<_, anyhow::Error>(())
        }
    };
    let h2 = net.add_host("h2")?;
    h2.args = vec![
        "--join".into(),
        join.clone(),
        "--endpoint".into(),
        h2.ip.to_string(),
        "--plugin".into(),
        format!("hook={}", bin("watch-webhook").display()),
        "--plugin-config".into(),
        format!("hook.url=http://{addr}/events"),
    ];
    h2.start()?;
    net.host("h2").wait_ready(Duration::from_secs(60)).await?;
    promote(&net, "h2").await?;
    for (id, voter) in [("h3", true), ("h4", false)] {
        let h = net.add_host(id)?;
        h.args = vec![
            "--join".into(),
            join.clone(),
            "--endpoint".into(),
            h.ip.to_string(),
            "--leave-on-shutdown".into(),
        ];
        h.start()?;
        net.host(id).wait_ready(Duration::from_secs(60)).await?;
        if voter {
            promote(&net, id).await?;
        }
    }
    let has = |kind: &str, id: &str| {
        got.lock()
            .unwrap()
            .iter()
            .any(|e| e["type"] == kind && e["node"]["id"] == id)
    };
    let joins = wait_for(
        "join events for h3 and h4",
        Duration::from_secs(10),
        || async {
            (has("WATCH_EVENT_NODE_JOIN", "h3") && has("WATCH_EVENT_NODE_JOIN", "h4")).then_some(())
        },
    )
    .await;
    if let Err(e) = joins {
        bail!(
            "{e}; received {:?}; h2's log:\n{}",
            got.lock().unwrap(),
            net.hosts["h2"].log_text()
        );
    }
    net.host("h4").stop(Duration::from_secs(10));
    wait_for("a leave event for h4", Duration::from_secs(20), || async {
        has("WATCH_EVENT_NODE_LEAVE", "h4").then_some(())
    })
    .await?;
    // Wait until h3 votes, then take the leader away.
    wait_for("h3 to be a voter", Duration::from_secs(30), || async {
        let s = net.hosts["h3"].status().await.ok()?;
        (s.cluster_status == webmesh_api::v1::ClusterStatus::ClusterVoter as i32).then_some(())
    })
    .await?;
    net.host("h1").kill9();
    wait_for("a leader change event", Duration::from_secs(20), || async {
        (has("WATCH_EVENT_LEADER_CHANGE", "h2") || has("WATCH_EVENT_LEADER_CHANGE", "h3"))
            .then_some(())
    })
    .await?;
    Ok(())
}

/// A bootstrapped node in a namespace (so the test's calls are not trusted by address)
/// with one plugin.
async fn node_with_plugin(net: &mut TestNet, plugin: &str, config: &[&str]) -> Result<String> {
    let h = net.add_host("n1")?;
    h.args = h.api_only_args();
    h.args.extend(["--plugin".into(), format!("auth={plugin}")]);
    for c in config {
        h.args
            .extend(["--plugin-config".into(), format!("auth.{c}")]);
    }
    h.start()?;
    let url = format!("http://{}", net.grpc("n1"));
    let probe = url.clone();
    let running = || net.hosts["n1"].log_text();
    wait_for("the node to serve", Duration::from_secs(60), || {
        let probe = probe.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(probe)
                .ok()?
                .connect()
                .await
                .ok()?;
            // Any answer (even Unauthenticated) means the API is up.
            let r = NodeClient::new(ch)
                .get_status(GetStatusRequest::default())
                .await;
            match r {
                Ok(_) => Some(()),
                Err(s) if s.code() == tonic::Code::Unauthenticated => Some(()),
                Err(_) => None,
            }
        }
    })
    .await
    .with_context(running)?;
    Ok(url)
}

async fn status_with(url: &str, headers: &[(&'static str, &str)]) -> Result<tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut req = tonic::Request::new(GetStatusRequest::default());
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse()?);
    }
    Ok(match NodeClient::new(ch).get_status(req).await {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    })
}

#[tokio::test]
async fn the_wasm_plugin_enforces_the_same_policy_as_its_process_twin() -> Result<()> {
    let targets = [
        ("process", bin("auth-allowlist")),
        ("wasm", wasm_component("auth_allowlist")),
    ];
    let mut verdicts = Vec::new();
    for (kind, path) in targets {
        let mut net = TestNet::new()?;
        let url = node_with_plugin(
            &mut net,
            &path.display().to_string(),
            &["tokens=alice:s3cret,bob:hunter2"],
        )
        .await?;
        let mut row = Vec::new();
        for h in [
            vec![("authorization", "Bearer s3cret")],
            vec![("authorization", "Bearer hunter2")],
            vec![("authorization", "Bearer wrong")],
            vec![("authorization", "Basic s3cret")],
            vec![],
        ] {
            row.push(status_with(&url, &h).await?.code());
        }
        eprintln!("{kind}: {row:?}");
        verdicts.push(row);
    }
    use tonic::Code::{Ok as Allowed, Unauthenticated as Refused};
    assert_eq!(
        verdicts[0],
        vec![Allowed, Allowed, Refused, Refused, Refused]
    );
    assert_eq!(verdicts[1], verdicts[0], "WASM and process twins disagree");
    Ok(())
}

#[tokio::test]
async fn a_wasm_plugin_that_loops_or_hoards_memory_is_stopped_and_the_node_stays_up() -> Result<()>
{
    let mut net = TestNet::new()?;
    let url = node_with_plugin(
        &mut net,
        &wasm_component("wasm_misbehave").display().to_string(),
        &["wasm.deadline-ms=300", "wasm.memory-mb=32"],
    )
    .await?;
    assert_eq!(status_with(&url, &[]).await?.code(), tonic::Code::Ok);
    let t = Instant::now();
    let s = status_with(&url, &[("x-misbehave", "loop")]).await?;
    let took = t.elapsed();
    assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "{s:?}");
    assert!(s.message().contains("deadline"), "{s:?}");
    assert!(took < Duration::from_secs(2), "the loop ran {took:?}");
    // A fresh instance serves the next call.
    assert_eq!(status_with(&url, &[]).await?.code(), tonic::Code::Ok);
    let s = status_with(&url, &[("x-misbehave", "grab")]).await?;
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("memory"), "{s:?}");
    assert_eq!(status_with(&url, &[]).await?.code(), tonic::Code::Ok);
    assert!(net.host("n1").running(), "the node went down");
    eprintln!("loop stopped after {took:?}");
    Ok(())
}

/// A TLS call to `ip:8443`, trusting `ca`, presenting `client` if given.
async fn tls_client(
    ip: std::net::Ipv4Addr,
    ca: &str,
    client: Option<&(String, String)>,
) -> Result<NodeClient<tonic::transport::Channel>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((c, k)) = client {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{ip}:8443"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(NodeClient::new(ch))
}

#[tokio::test]
async fn mtls_lets_in_certificates_of_the_mesh_ca_only() -> Result<()> {
    let mut net = TestNet::new()?;
    let dir = net.path().to_path_buf();
    let ca = TestCa::new("mesh ca")?;
    let other = TestCa::new("some other ca")?;
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem)?;
    let h1 = net.add_host("h1")?;
    let h1_ip = h1.ip;
    let (cert, key) = write_pair(&dir, "h1", &ca.sign("h1", Some(h1_ip))?)?;
    h1.args = vec![
        "--bootstrap".into(),
        "--endpoint".into(),
        h1_ip.to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--tls-client-ca".into(),
        ca_pem.display().to_string(),
        "--plugin".into(),
        format!("auth={}", bin("auth-mtls").display()),
        "--plugin-config".into(),
        format!("auth.ca={}", ca_pem.display()),
    ];
    h1.start()?;
    let admin = ca.sign("admin", None)?;
    let ca_text = ca.pem.clone();
    wait_for("h1 to answer over TLS", Duration::from_secs(60), || async {
        let mut c = tls_client(h1_ip, &ca_text, Some(&admin)).await.ok()?;
        let s = c.get_status(GetStatusRequest::default()).await.ok()?;
        (!s.get_ref().current_leader.is_empty()).then_some(())
    })
    .await
    .with_context(|| net.hosts["h1"].log_text())?;
    // Without a certificate: the plugin refuses. From another CA: TLS refuses.
    let err = tls_client(h1_ip, &ca.pem, None)
        .await?
        .get_status(GetStatusRequest::default())
        .await
        .expect_err("no client certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("certificate"), "{err:?}");
    let intruder = other.sign("h1", None)?;
    let refused = match tls_client(h1_ip, &ca.pem, Some(&intruder)).await {
        Err(_) => true,
        Ok(mut c) => c.get_status(GetStatusRequest::default()).await.is_err(),
    };
    assert!(refused, "a certificate of another CA got in");

    // Joiners: h2 with a certificate of the mesh CA joins; h3 with another CA's does not;
    // h4 does not verify the server (--tls-skip-verify) but has a good certificate.
    let join = net.grpc("h1");
    for (id, signer, verify) in [("h2", &ca, true), ("h3", &other, true), ("h4", &ca, false)] {
        let (c, k) = write_pair(&dir, id, &signer.sign(id, None)?)?;
        let h = net.add_host(id)?;
        h.args = vec![
            "--join".into(),
            join.clone(),
            "--endpoint".into(),
            h.ip.to_string(),
            "--tls-client-cert".into(),
            c.display().to_string(),
            "--tls-client-key".into(),
            k.display().to_string(),
        ];
        if verify {
            h.args
                .extend(["--tls-ca".into(), ca_pem.display().to_string()]);
        } else {
            h.args.push("--tls-skip-verify".into());
        }
        h.start()?;
    }
    net.host("h2").wait_ready(Duration::from_secs(60)).await?;
    net.host("h4").wait_ready(Duration::from_secs(60)).await?;
    let nodes = |admin: (String, String)| {
        let ca = ca.pem.clone();
        async move {
            use prost::Message;
            let snap = tls_client(h1_ip, &ca, Some(&admin))
                .await?
                .snapshot(webmesh_api::v1::SnapshotRequest {})
                .await?
                .into_inner();
            let s = webmesh_api::internal::StateSnapshot::decode(snap.snapshot.as_slice())?;
            Ok::<_, anyhow::Error>(
                s.entries
                    .into_iter()
                    .filter_map(|e| e.key.strip_prefix("/registry/nodes/").map(str::to_string))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let ids = nodes(admin.clone()).await?;
    assert!(ids.contains(&"h2".to_string()), "{ids:?}");
    assert!(ids.contains(&"h4".to_string()), "{ids:?}");
    assert!(!ids.contains(&"h3".to_string()), "{ids:?}");
    assert!(
        net.hosts["h3"].log_text().contains("join via"),
        "h3 should be retrying"
    );
    net.host("h3").stop(Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn a_plugin_already_running_is_reached_over_grpcs() -> Result<()> {
    let mut net = TestNet::new()?;
    let dir = net.path().to_path_buf();
    let ca = TestCa::new("plugin ca")?;
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem)?;
    let bridge = net.bridge_ip();
    let (cert, key) = write_pair(&dir, "plugin", &ca.sign("plugin", Some(bridge))?)?;
    let port = webmesh_e2e::free_port();
    // The plugin runs on its own, outside the node's namespace, with TLS.
    let mut plugin = std::process::Command::new(bin("auth-allowlist"))
        .args([
            "--listen",
            &format!("tcp://{bridge}:{port}"),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let res = async {
        let url = node_with_plugin(
            &mut net,
            &format!("grpcs://{bridge}:{port}"),
            &[
                format!("grpc.ca={}", ca_pem.display()).as_str(),
                "tokens=alice:s3cret",
            ],
        )
        .await?;
        let ok = status_with(&url, &[("authorization", "Bearer s3cret")]).await?;
        assert_eq!(ok.code(), tonic::Code::Ok, "{ok:?}");
        let no = status_with(&url, &[("authorization", "Bearer guess")]).await?;
        assert_eq!(no.code(), tonic::Code::Unauthenticated, "{no:?}");
        assert!(
            net.hosts["n1"].log_text().contains("plugin ready"),
            "{}",
            net.hosts["n1"].log_text()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = plugin.kill();
    let _ = plugin.wait();
    res
}
