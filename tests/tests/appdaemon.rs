//! The AppDaemon driven by unprivileged users (setpriv) through its unix socket: a
//! user of the node's group connects the node, reads, watches and publishes; another
//! user is kept out. Real binaries in network namespaces. Needs root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
        "--app-daemon-grpc-web".into(),
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
    // grpc-web over HTTP/1.1 on the socket (a local web server's backend, say).
    let web = Command::new("setpriv")
        .args(MEMBER)
        .args([
            "curl",
            "-sS",
            "--http1.1",
            "--max-time",
            "10",
            "--unix-socket",
            &sock,
        ])
        .args([
            "-H",
            "content-type: application/grpc-web+proto",
            "--data-binary",
            "@-",
        ])
        .args(["-o", "-", "http://localhost/v1.AppDaemon/Status"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(&[0; 5]));
            c.wait_with_output()
        })?;
    let body = String::from_utf8_lossy(&web.stdout);
    ensure!(
        web.status.success() && body.contains("h2") && body.contains("grpc-status:0"),
        "grpc-web on the socket: {web:?}"
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

/// `app-client` against a tcp:// AppDaemon, as `user` (password `pw`) if given.
fn tcp_app(url: &str, ca: &Path, user: Option<(&str, &str)>, args: &[&str]) -> Result<Output> {
    let mut c = Command::new(bin("app-client"));
    c.arg(url).args(args).env("APP_CA", ca);
    if let Some((u, p)) = user {
        c.env("APP_USER", u).env("APP_PASSWORD", p);
    }
    Ok(c.output()?)
}

fn code(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A grpc-web call (curl, as a browser's fetch would make it: HTTP/2 by ALPN over TLS):
/// the decoded messages of the answer and its `grpc-status` trailer.
fn grpc_web(
    url: &str,
    ca: &Path,
    headers: &[(&str, &str)],
    message: &[u8],
) -> Result<(Vec<Vec<u8>>, String)> {
    let dir = tempfile::tempdir()?;
    let body = dir.path().join("body");
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    std::fs::write(&body, frame)?;
    let (answer, head) = (dir.path().join("answer"), dir.path().join("head"));
    let mut c = Command::new("curl");
    c.args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-H", "content-type: application/grpc-web+proto"])
        .args(["-H", "x-grpc-web: 1"]);
    for (k, v) in headers {
        c.args(["-H", &format!("{k}: {v}")]);
    }
    let out = c
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg("-o")
        .arg(&answer)
        .arg("-D")
        .arg(&head)
        .arg(url)
        .output()?;
    ensure!(out.status.success(), "curl: {}", code(&out));
    let bytes = std::fs::read(&answer)?;
    let (mut messages, mut trailers, mut at) = (Vec::new(), String::new(), 0);
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into()?) as usize;
        let data = bytes
            .get(at + 5..at + 5 + len)
            .context("a truncated grpc-web frame")?;
        if bytes[at] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(data));
        } else {
            messages.push(data.to_vec());
        }
        at += 5 + len;
    }
    // An answer without messages carries its status in the headers (trailers-only).
    trailers.push_str(&std::fs::read_to_string(&head)?);
    let status = trailers
        .lines()
        .find_map(|l| l.trim().strip_prefix("grpc-status:"))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((messages, status))
}

/// The headers curl printed for a CORS preflight from `origin`.
fn preflight(url: &str, ca: &Path, origin: &str) -> Result<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["-X", "OPTIONS", "-H", &format!("origin: {origin}")])
        .args(["-H", "access-control-request-method: POST"])
        .args([
            "-H",
            "access-control-request-headers: content-type,x-grpc-web",
        ])
        .arg(url)
        .output()?;
    ensure!(out.status.success(), "curl: {}", code(&out));
    Ok(String::from_utf8_lossy(&out.stdout).to_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_daemon_on_tcp_takes_tls_the_auth_plugin_and_grpc_web() -> Result<()> {
    use prost::Message;
    use webmesh_e2e::{TestCa, htpasswd, write_pair};
    let mut net = TestNet::new()?;
    let dir = net.path().to_path_buf();
    let pw = htpasswd(&dir, &[("alice", "a1ice"), ("bob", "b0b")])?;
    let h2 = net.add_host("h2")?;
    let ip = h2.ip;
    let ca = TestCa::new("app-ca")?;
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem)?;
    let (cert, key) = write_pair(&dir, "h2", &ca.sign("h2", Some(ip))?)?;
    let mut args = h2.api_only_args();
    args.extend(
        [
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--plugin",
            &format!("auth={}", bin("auth-basic").display()),
            "--plugin-config",
            &format!("auth.htpasswd={}", pw.display()),
            "--app-daemon-listen",
            &format!("tcp://{ip}:8444"),
            "--app-daemon-users",
            "alice",
            "--app-daemon-grpc-web",
            "--app-daemon-cors-origin",
            "https://app.example",
        ]
        .map(String::from),
    );
    h2.args = args;
    h2.start()?;
    let url = format!("https://{ip}:8444");
    let alice = Some(("alice", "a1ice"));
    // It bootstraps at start and says so.
    wait_for(
        "the AppDaemon on TCP to report CONNECTED",
        READY,
        || async {
            let out = tcp_app(&url, &ca_pem, alice, &["status"]).ok()?;
            let s = ok(out).ok()?;
            (s.contains("\"CONNECTED\"") && s.contains("\"h2\"")).then_some(())
        },
    )
    .await
    .with_context(|| net.logs())?;

    // Refusals: no credentials, a wrong password, someone the plugin knows but
    // app-daemon-users does not name, and plaintext.
    let none = tcp_app(&url, &ca_pem, None, &["status"])?;
    ensure!(code(&none).contains("Unauthenticated"), "{none:?}");
    let wrong = tcp_app(&url, &ca_pem, Some(("alice", "nope")), &["status"])?;
    ensure!(code(&wrong).contains("Unauthenticated"), "{wrong:?}");
    let bob = tcp_app(
        &url,
        &ca_pem,
        Some(("bob", "b0b")),
        &["query", "list", "/registry/"],
    )?;
    ensure!(
        code(&bob).contains("PermissionDenied") && code(&bob).contains("app-daemon-users"),
        "{bob:?}"
    );
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--http2-prior-knowledge"])
        .arg(format!("http://{ip}:8444/v1.AppDaemon/Status"))
        .output()?;
    ensure!(
        !String::from_utf8_lossy(&plain.stdout).contains("grpc-status"),
        "plaintext was served: {plain:?}"
    );

    // And alice still drives it: reads of the replica, a publish, Disconnect/Connect.
    let listed = ok(tcp_app(
        &url,
        &ca_pem,
        alice,
        &["query", "list", "/registry/nodes/"],
    )?)?;
    ensure!(listed.contains("/registry/nodes/h2"), "{listed}");
    ok(tcp_app(
        &url,
        &ca_pem,
        alice,
        &["publish", "/apps/web/hello", "tcp"],
    )?)?;
    let got = ok(tcp_app(
        &url,
        &ca_pem,
        alice,
        &["query", "get", "/apps/web/hello"],
    )?)?;
    ensure!(got.contains("tcp"), "{got}");
    ok(tcp_app(&url, &ca_pem, alice, &["disconnect"])?)?;
    // The AUTH plugin outlives the node: calls are still authenticated.
    let bob = tcp_app(&url, &ca_pem, Some(("bob", "b0b")), &["status"])?;
    ensure!(code(&bob).contains("PermissionDenied"), "{bob:?}");
    let st = ok(tcp_app(&url, &ca_pem, alice, &["status"])?)?;
    ensure!(!st.contains("\"CONNECTED\""), "{st}");
    let again: serde_json::Value =
        serde_json::from_str(ok(tcp_app(&url, &ca_pem, alice, &["connect"])?)?.trim())?;
    ensure!(again["nodeId"] == "h2", "{again}");

    // grpc-web, as a browser sends it.
    let status_url = format!("{url}/v1.AppDaemon/Status");
    let (msgs, status) = grpc_web(
        &status_url,
        &ca_pem,
        &[
            ("x-webmesh-basic-auth-username", "alice"),
            ("x-webmesh-basic-auth-password", "a1ice"),
        ],
        &[],
    )?;
    ensure!(status == "0", "grpc-web status {status:?}");
    let resp =
        webmesh_api::v1::StatusResponse::decode(msgs.first().context("no message")?.as_slice())?;
    ensure!(
        resp.connection_status
            == webmesh_api::v1::status_response::ConnectionStatus::Connected as i32
            && resp.node.map(|n| n.id) == Some("h2".into()),
        "grpc-web Status: {}",
        resp.connection_status
    );
    let (_, status) = grpc_web(&status_url, &ca_pem, &[], &[])?;
    ensure!(
        status == "16",
        "grpc-web without credentials: status {status:?}"
    );
    // CORS: the allowed origin gets its preflight answered, another does not.
    let allowed = preflight(&status_url, &ca_pem, "https://app.example")?;
    ensure!(
        allowed.contains("access-control-allow-origin: https://app.example"),
        "{allowed}"
    );
    let other = preflight(&status_url, &ca_pem, "https://evil.example")?;
    ensure!(!other.contains("access-control-allow-origin"), "{other}");
    Ok(())
}

/// A tcp:// AppDaemon without what it needs does not start, and says what is missing.
#[test]
fn a_tcp_app_daemon_without_tls_or_auth_does_not_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").display().to_string();
    let run = |extra: &[&str]| -> Result<String> {
        let out = Command::new(bin("webmesh"))
            .args([
                "--data-dir",
                &data,
                "--admin-socket",
                "off",
                "--metrics-listen",
                "off",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .output()?;
        ensure!(!out.status.success(), "started: {extra:?}");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let tcp = ["--app-daemon-listen", "tcp://127.0.0.1:0"];
    let e = run(&tcp)?;
    ensure!(
        e.contains("app-daemon-listen") && e.contains("needs TLS"),
        "{e}"
    );
    let ca = webmesh_e2e::TestCa::new("ca")?;
    let (cert, key) =
        webmesh_e2e::write_pair(dir.path(), "n", &ca.sign("n", Some([127, 0, 0, 1].into()))?)?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls = [&tcp[..], &["--tls-cert", &cert, "--tls-key", &key]].concat();
    let e = run(&tls)?;
    ensure!(e.contains("needs an AUTH plugin"), "{e}");
    let ipam = format!("ipam={}", bin("ipam-sqlite").display());
    let e = run(&[&tls[..], &["--plugin", &ipam]].concat())?;
    ensure!(e.contains("--app-daemon-users"), "{e}");
    // A plugin, but none that authenticates: found out once it runs.
    let e = run(&[
        &tls[..],
        &["--plugin", &ipam, "--app-daemon-users", "alice"],
    ]
    .concat())?;
    ensure!(e.contains("none of the plugins (ipam) offers AUTH"), "{e}");
    let unix = format!("unix://{}/app.sock", dir.path().display());
    let e = run(&[
        "--app-daemon-listen",
        &unix,
        "--app-daemon-cors-origin",
        "https://a.example",
    ])?;
    ensure!(e.contains("app-daemon-cors-origin"), "{e}");
    Ok(())
}
