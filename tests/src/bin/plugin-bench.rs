//! Plugin benchmarks on the release binaries, nodes in network namespaces:
//!
//!   cargo build --release --bins
//!   cargo build --release --target wasm32-wasip2 --lib -p auth-allowlist
//!   target/release/plugin-bench auth       # auth cost per RPC: none / WASM / process
//!   target/release/plugin-bench restart    # SIGKILL a process plugin: back in ...
//!   target/release/plugin-bench direct     # the process plugin alone, no node
//!
//! Needs root. Prints Markdown tables.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use webmesh_api::v1::GetStatusRequest;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_e2e::netns::TestNet;
use webmesh_e2e::{bin, wait_for};

const TOKEN: &str = "Bearer s3cret";

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A bootstrapped node in a namespace with `plugin` as AUTH (or none), the node's cache
/// of auth verdicts on or off; its API URL.
async fn node_with(net: &mut TestNet, plugin: Option<String>, cache: bool) -> Result<String> {
    let h = net.add_host("n1")?;
    h.args = h.api_only_args();
    h.args.extend(["--log-level".into(), "warn".into()]);
    if let Some(p) = plugin {
        h.args.extend([
            "--plugin".into(),
            format!("auth={p}"),
            "--plugin-config".into(),
            "auth.tokens=alice:s3cret".into(),
        ]);
        if !cache {
            h.args
                .extend(["--plugin-config".into(), "auth.auth.cache-ttl-ms=0".into()]);
        }
    }
    h.start()?;
    let url = format!("http://{}", net.grpc("n1"));
    wait_for("the node", Duration::from_secs(60), || async {
        call(&url).await.ok()
    })
    .await?;
    Ok(url)
}

async fn client(url: &str) -> Result<NodeClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(NodeClient::new(ch))
}

async fn call(url: &str) -> Result<()> {
    let mut c = client(url).await?;
    let mut req = tonic::Request::new(GetStatusRequest::default());
    req.metadata_mut().insert("authorization", TOKEN.parse()?);
    c.get_status(req).await?;
    Ok(())
}

async fn auth_bench() -> Result<()> {
    // The component: the one named on the command line, else this profile's build.
    let wasm = std::env::args().nth(2).unwrap_or_else(|| {
        webmesh_e2e::wasm_component("auth_allowlist")
            .display()
            .to_string()
    });
    let process = bin("auth-allowlist").display().to_string();
    let runs = [
        ("none", None, false),
        (
            "WASM (auth_allowlist.wasm), every call",
            Some(wasm.clone()),
            false,
        ),
        (
            "process (auth-allowlist), every call",
            Some(process.clone()),
            false,
        ),
        ("WASM, verdict cache (default)", Some(wasm), true),
        ("process, verdict cache (default)", Some(process), true),
    ];
    // All three nodes run at once and the calls go round-robin, so that drift in the
    // machine's load (2 vCPUs shared with the client) falls on every column alike.
    let mut nets = Vec::new();
    let mut clients = Vec::new();
    for (_, plugin, cache) in &runs {
        let mut net = TestNet::new()?;
        let url = node_with(&mut net, plugin.clone(), *cache).await?;
        clients.push(client(&url).await?);
        nets.push(net);
    }
    const WARMUP: usize = 200;
    const ROUNDS: usize = 5000;
    let mut lat: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); runs.len()];
    for round in 0..WARMUP + ROUNDS {
        for (c, out) in clients.iter_mut().zip(lat.iter_mut()) {
            let mut req = tonic::Request::new(GetStatusRequest::default());
            req.metadata_mut().insert("authorization", TOKEN.parse()?);
            let t = Instant::now();
            c.get_status(req).await?;
            if round >= WARMUP {
                out.push(t.elapsed());
            }
        }
    }
    let rows: Vec<_> = runs
        .iter()
        .zip(lat.iter_mut())
        .map(|((name, _, _), l)| (*name, pct(l, 0.5), pct(l, 0.99)))
        .collect();
    let base = rows[0].1;
    println!("| AUTH | GetStatus p50 | p99 | auth cost at p50 |\n|---|---:|---:|---:|");
    for (name, p50, p99) in rows {
        let cost = p50.saturating_sub(base);
        println!("| {name} | {p50:.1?} | {p99:.1?} | {cost:.1?} |");
    }
    drop(nets);
    Ok(())
}

fn plugin_pid(node_pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{node_pid}/task")).ok()?;
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children"))
            && let Some(p) = list.split_whitespace().next()
        {
            return p.parse().ok();
        }
    }
    None
}

async fn restart_bench() -> Result<()> {
    // A fresh node per sample: the first restart after a healthy run starts at the
    // shortest backoff (a crash loop backs off further, by design).
    let mut back = Vec::new();
    for _ in 0..5 {
        let mut net = TestNet::new()?;
        // Cache off: the call must reach the new plugin process.
        let plugin = Some(bin("auth-allowlist").display().to_string());
        let url = node_with(&mut net, plugin, false).await?;
        let node_pid = net.hosts["n1"].pid().context("pid")?;
        let pid = plugin_pid(node_pid).context("no plugin child")?;
        let t = Instant::now();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        loop {
            if plugin_pid(node_pid).is_some_and(|p| p != pid) && call(&url).await.is_ok() {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the plugin did not come back");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        back.push(t.elapsed());
    }
    println!("| kill -9 of a process plugin → next authenticated call succeeds | p50 of 5 | max |");
    println!("|---|---:|---:|");
    println!(
        "| auth-allowlist | {:.0?} | {:.0?} |",
        pct(&mut back.clone(), 0.5),
        pct(&mut back, 1.0)
    );
    Ok(())
}

/// The process plugin alone: `Authenticate` round trips from a tonic client to
/// `auth-allowlist` serving on loopback TCP (no node), the floor of the process path.
async fn direct_bench() -> Result<()> {
    use webmesh_api::v1::auth_plugin_client::AuthPluginClient;
    use webmesh_api::v1::plugin_client::PluginClient;
    use webmesh_api::v1::{AuthenticationRequest, PluginConfiguration};
    let port = webmesh_e2e::free_port();
    let mut child = std::process::Command::new(bin("auth-allowlist"))
        .args(["--listen", &format!("tcp://127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let ch = wait_for("the plugin", Duration::from_secs(10), || async {
        tonic::transport::Endpoint::from_shared(url.clone())
            .ok()?
            .tcp_nodelay(true)
            .connect()
            .await
            .ok()
    })
    .await?;
    let config: webmesh_api::wkt::Struct =
        serde_json::from_value(serde_json::json!({"tokens": "alice:s3cret"}))?;
    PluginClient::new(ch.clone())
        .configure(PluginConfiguration {
            config: Some(config),
        })
        .await?;
    let mut c = AuthPluginClient::new(ch);
    let req = AuthenticationRequest {
        headers: [("authorization".to_string(), TOKEN.to_string())].into(),
        certificates: vec![],
    };
    let mut l = Vec::new();
    for i in 0..5200 {
        let t = Instant::now();
        let id = c.authenticate(req.clone()).await?.into_inner().id;
        if i >= 200 {
            l.push(t.elapsed());
        }
        anyhow::ensure!(id == "alice", "verdict {id:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("| process plugin alone (loopback TCP) | p50 | p99 |\n|---|---:|---:|");
    println!(
        "| Authenticate round trip | {:.1?} | {:.1?} |",
        pct(&mut l, 0.5),
        pct(&mut l, 0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("auth") => auth_bench().await,
        Some("restart") => restart_bench().await,
        Some("direct") => direct_bench().await,
        _ => bail!("usage: plugin-bench auth | restart | direct"),
    }
}
