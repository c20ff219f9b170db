//! Metrics read by a real Prometheus server (Debian's `prometheus`) scraping a 3-node
//! mesh in network namespaces, checked by `promtool check metrics`; a stranger on the
//! underlay is refused. Needs root.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use webmesh_api::v1::Feature;
use webmesh_e2e::netns::{TestNet, v4};
use webmesh_e2e::{KillOnDrop, bin, wait_for};

const READY: Duration = Duration::from_secs(60);

/// A plain HTTP/1.0 GET; the status code and the body.
fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((code, body.to_string()))
}

/// `s` with what a URL query may not hold escaped.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_every_family_from_a_three_node_mesh() -> Result<()> {
    let mut net = TestNet::new()?;
    let ipam = format!("ipam={}", bin("ipam-sqlite").display());
    net.bootstrap(
        "h1",
        &[
            "--meshdns-listen",
            ":5353",
            "--meshdns-no-forward",
            "--turn-server",
            "--plugin",
            &ipam,
        ],
    )
    .await?;
    net.join(&["h2", "h3"], "h1", true, &[]).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    for id in ["h1", "h2", "h3"] {
        ensure!(
            nodes[id].features.contains(&(Feature::Metrics as i32)),
            "{id}: {:?}",
            nodes[id].features
        );
    }
    // Traffic for the counters: a mesh DNS query, pings between the nodes.
    let h1 = &net.hosts["h1"];
    let _ = h1.exec(&[
        "dig",
        "-p",
        "5353",
        &format!("@{}", v4(&nodes["h1"])),
        "h2.webmesh.internal",
    ])?;
    wait_for("h1 to ping h3", READY, || async {
        h1.ping(&v4(&nodes["h3"])).then_some(())
    })
    .await?;

    // `wmctl status` says where the metrics and mesh DNS are.
    let wmctl = bin("wmctl").display().to_string();
    let out = h1.exec(&[&wmctl, "-s", &h1.admin_server(), "status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("METRICS")
            && text.contains("http://[::]:8080/metrics")
            && text.contains("MESH-DNS"),
        "{text}"
    );
    ensure!(
        text.lines()
            .any(|l| l.contains("FEATURES") && l.contains("METRICS") && l.contains("MESH_DNS")),
        "{text}"
    );
    // A stranger on the underlay (the test itself, on the bridge) is refused.
    let underlay = format!("{}:8080", net.hosts["h1"].ip);
    let (code, body) = get(&underlay, "/metrics")?;
    ensure!(
        code == 403 && body.contains("may not scrape"),
        "{code} {body}"
    );

    // promtool reads the text format as a member gets it.
    let page = h1.exec(&[
        "curl",
        "-sf",
        &format!("http://{}:8080/metrics", v4(&nodes["h1"])),
    ])?;
    ensure!(page.status.success(), "curl: {page:?}");
    let text = String::from_utf8_lossy(&page.stdout).into_owned();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (apt-get install prometheus)")?;
    check
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let checked = check.wait_with_output()?;
    ensure!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Prometheus in h1's namespace scrapes the three nodes over the mesh every second.
    let dir = net.path().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let targets: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| format!("'{}:8080'", v4(&nodes[*id])))
        .collect();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: webmesh\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )?;
    let web = format!("{}:9090", net.hosts["h1"].ip);
    let ns = net.hosts["h1"].ns.clone();
    let _prom = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns, "prometheus"])
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("prometheus (apt-get install prometheus)")?,
    );
    let query = |q: &str| -> Result<String> {
        let (code, body) = get(&web, &format!("/api/v1/query?query={}", escape(q)))?;
        if code != 200 {
            bail!("{code}: {body}");
        }
        Ok(body)
    };
    wait_for("Prometheus to scrape all three nodes", READY, || async {
        let b = query("sum(up)").ok()?;
        b.contains("\"3\"").then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    for family in [
        "webmesh_grpc_server_started_total",
        "webmesh_grpc_server_handled_total",
        "webmesh_grpc_server_handling_seconds_bucket",
        "webmesh_raft_term",
        "webmesh_raft_commit_index",
        "webmesh_raft_applied_index",
        "webmesh_raft_leader",
        "webmesh_raft_leader_changes_total",
        "webmesh_raft_commit_seconds_bucket",
        "webmesh_raft_batch_proposals_bucket",
        "webmesh_wireguard_peer_receive_bytes_total",
        "webmesh_wireguard_peer_transmit_bytes_total",
        "webmesh_wireguard_peer_last_handshake_age_seconds",
        "webmesh_wireguard_peers",
        "webmesh_plugin_calls_total",
        "webmesh_plugin_call_seconds_bucket",
        "webmesh_join_seconds_count",
        "webmesh_dns_queries_total",
        "webmesh_turn_allocations",
        "webmesh_turn_relayed_packets_total",
        "webmesh_turn_refused_auth_total",
    ] {
        let body = wait_for(
            &format!("{family} in Prometheus"),
            Duration::from_secs(15),
            || async {
                let b = query(family).ok()?;
                b.contains("\"value\"").then_some(b)
            },
        )
        .await?;
        ensure!(body.contains("\"status\":\"success\""), "{family}: {body}");
    }
    // Per peer, named by node: h1's peers include h2, with bytes both ways.
    let peers = query("webmesh_wireguard_peer_receive_bytes_total{peer=\"h2\"} > 0")?;
    ensure!(peers.contains("\"peer\":\"h2\""), "{peers}");
    // Joins were counted on the leader, one per joiner.
    let joins = query("webmesh_join_seconds_count")?;
    ensure!(joins.contains("\"2\""), "{joins}");
    // The README's three queries are valid PromQL.
    for q in [
        "sum by (method, code) (rate(webmesh_grpc_server_handled_total{code!=\"Ok\"}[5m]))",
        "webmesh_wireguard_peer_last_handshake_age_seconds > 180",
        "scalar(max(webmesh_raft_commit_index)) - webmesh_raft_applied_index > 100",
    ] {
        let body = query(q)?;
        ensure!(body.contains("\"status\":\"success\""), "{q}: {body}");
    }
    // And a gRPC status code per method.
    let handled = query("webmesh_grpc_server_handled_total{method=\"Join\",code=\"Ok\"}")?;
    ensure!(handled.contains("\"value\""), "{handled}");
    Ok(())
}
