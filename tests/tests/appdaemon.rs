//! The AppDaemon driven by unprivileged users (setpriv) through its unix socket: a
//! user of the node's group connects the node, reads, watches and publishes; another
//! user is kept out. Real binaries in network namespaces. Needs root.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use webmesh_e2e::netns::TestNet;
use webmesh_e2e::{bin, wait_for};

const READY: Duration = Duration::from_secs(60);
/// nobody / nogroup: the group the node's sockets admit (`--admin-group nogroup`).
const MEMBER: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];
/// Someone else entirely.
const STRANGER: [&str; 3] = ["--reuid=65533", "--regid=65533", "--clear-groups"];

/// A directory anyone may enter, removed when dropped (the daemon makes its own 0750
/// directory inside).
struct OpenDir(PathBuf);

impl Drop for OpenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn app(user: &[&str], socket: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new("setpriv")
        .args(user)
        .arg(bin("app-client"))
        .arg(socket)
        .args(args)
        .output()?)
}

fn ok(out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "app-client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_application_drives_its_node_through_the_app_daemon() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let open = OpenDir(std::env::temp_dir().join(format!("wm-app-{}", std::process::id())));
    std::fs::create_dir_all(&open.0)?;
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o755))?;
    let socket = open.0.join("app").join("webmesh.sock");
    let sock = socket.display().to_string();

    let mut net = TestNet::new()?;
    net.bootstrap("h1", &[]).await?;
    let via = net.grpc("h1");
    // h2 has the AppDaemon and no join settings: it waits for Connect.
    let h2 = net.add_host("h2")?;
    h2.args = vec![
        "--app-daemon-listen".into(),
        format!("unix://{sock}"),
        "--admin-group".into(),
        "nogroup".into(),
    ];
    h2.start()?;
    let status = wait_for("the AppDaemon socket", READY, || async {
        app(&MEMBER, &sock, &["status"])
            .ok()
            .and_then(|o| ok(o).ok())
    })
    .await
    .with_context(|| net.logs())?;
    ensure!(
        !status.contains("CONNECTED") || status.contains("DISCONNECTED"),
        "{status}"
    );
    let mode = std::fs::metadata(socket.parent().unwrap())?
        .permissions()
        .mode()
        & 0o777;
    ensure!(mode == 0o750, "the socket's directory has mode {mode:o}");

    // Another user is kept out (the directory, then the peer-credential check).
    let out = app(&STRANGER, &sock, &["status"])?;
    ensure!(!out.status.success(), "a stranger read the status");

    // A member of the group connects the node with a setting of its own.
    let config = format!(
        "{{\"join\":[\"{via}\"],\"endpoint\":\"{}\"}}",
        net.hosts["h2"].ip
    );
    let joined: serde_json::Value =
        serde_json::from_str(ok(app(&MEMBER, &sock, &["connect", &config])?)?.trim())?;
    ensure!(joined["nodeId"] == "h2", "{joined}");
    let ipv4 = joined["ipv4"].as_str().unwrap_or_default().to_string();
    ensure!(ipv4.starts_with("172."), "{joined}");
    let st = ok(app(&MEMBER, &sock, &["status"])?)?;
    ensure!(
        st.contains("\"CONNECTED\"") && st.contains("\"h2\""),
        "{st}"
    );
    // Settings that name programs, files or credentials are not the application's.
    let evil = app(
        &MEMBER,
        &sock,
        &[
            "connect",
            "{\"plugins\":{\"x\":{\"target\":\"/tmp/evil\"}}}",
        ],
    )?;
    ensure!(
        String::from_utf8_lossy(&evil.stderr).contains("PermissionDenied"),
        "{evil:?}"
    );
    let twice = app(&MEMBER, &sock, &["connect"])?;
    ensure!(
        String::from_utf8_lossy(&twice.stderr).contains("FailedPrecondition"),
        "{twice:?}"
    );
    net.host("h2").wait_ready(READY).await?;

    // Reads of the replica.
    let got = ok(app(
        &MEMBER,
        &sock,
        &["query", "get", "/registry/nodes/h2"],
    )?)?;
    ensure!(got.contains("\\\"id\\\":\\\"h2\\\""), "{got}");
    let listed = ok(app(&MEMBER, &sock, &["query", "list", "/registry/nodes/"])?)?;
    ensure!(
        listed.contains("/registry/nodes/h1") && listed.contains("/registry/nodes/h2"),
        "{listed}"
    );
    let iter = ok(app(&MEMBER, &sock, &["query", "iter", "/registry/nodes/"])?)?;
    ensure!(
        iter.lines().count() == 3 && iter.lines().last().unwrap_or("").contains("\"EOF\""),
        "{iter}"
    );
    let m = ok(app(&MEMBER, &sock, &["metrics"])?)?;
    ensure!(m.contains(&net.hosts["h2"].ifname), "{m}");

    // Publishing writes through Raft, which takes raw writes from voters.
    net.promote("h1", &["h2"]).await?;
    // A subscriber sees a publish and a join.
    let mut sub = Command::new("setpriv")
        .args(MEMBER)
        .arg(bin("app-client"))
        .args([&sock, "subscribe", "/", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (tx, rx) = mpsc::channel();
    let out = sub.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    ensure!(rx.recv_timeout(Duration::from_secs(10))? == "subscribed");
    wait_for("a publish to be taken", Duration::from_secs(30), || async {
        app(
            &MEMBER,
            &sock,
            &["publish", "/apps/chat/hello", "world", "60"],
        )
        .ok()?
        .status
        .success()
        .then_some(())
    })
    .await?;
    // A short TTL is honoured: the key is there, then gone by itself.
    ok(app(
        &MEMBER,
        &sock,
        &["publish", "/apps/chat/brief", "soon gone", "5"],
    )?)?;
    // (Committed on the leader; this node's replica has it within an apply.)
    wait_for(
        "the 5 s key on this node",
        Duration::from_secs(3),
        || async {
            let got = ok(app(&MEMBER, &sock, &["query", "get", "/apps/chat/brief"]).ok()?).ok()?;
            got.contains("soon gone").then_some(())
        },
    )
    .await?;
    wait_for("the 5 s key to expire", Duration::from_secs(15), || async {
        let got = ok(app(&MEMBER, &sock, &["query", "get", "/apps/chat/brief"]).ok()?).ok()?;
        got.contains("not found").then_some(())
    })
    .await?;
    let reserved = app(&MEMBER, &sock, &["publish", "/registry/nodes/h9", "{}"])?;
    ensure!(
        String::from_utf8_lossy(&reserved.stderr).contains("reserved"),
        "{reserved:?}"
    );
    let via = net.grpc("h1");
    let h3 = net.add_host("h3")?;
    h3.args = vec!["--join".into(), via];
    h3.start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut published, mut joined_h3) = (false, false);
    while !(published && joined_h3) && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            published |= l.contains("/apps/chat/hello") && l.contains("world");
            joined_h3 |= l.contains("/registry/nodes/h3");
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    ensure!(
        published && joined_h3,
        "publish seen: {published}, join seen: {joined_h3}\n{}",
        net.logs()
    );

    // Disconnect, then Connect again: the same node, the same addresses.
    ok(app(&MEMBER, &sock, &["disconnect"])?)?;
    let st = ok(app(&MEMBER, &sock, &["status"])?)?;
    ensure!(
        st.contains("DISCONNECTED") || !st.contains("CONNECTED"),
        "{st}"
    );
    let again: serde_json::Value =
        serde_json::from_str(ok(app(&MEMBER, &sock, &["connect"])?)?.trim())?;
    ensure!(again["ipv4"] == ipv4.as_str(), "{again} vs {ipv4}");
    Ok(())
}
