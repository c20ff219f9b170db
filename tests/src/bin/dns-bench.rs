//! Mesh DNS next to dnsmasq, same names, same run, on the release binaries:
//!
//!   cargo build --release --bins
//!   target/release/dns-bench [SECONDS]       # default 10 per run
//!
//! A 3-node mesh in network namespaces; on the bootstrap node's host, its mesh DNS
//! (port 5353) and dnsmasq (port 5454) serving the same names from a hosts file, both
//! on the node's mesh address. dnsperf (same host) asks A and AAAA of every node:
//! first as fast as each server answers (queries per second), then at a fixed rate
//! with every latency recorded (p50, p99). Needs root, dnsperf and dnsmasq.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use webmesh_e2e::KillOnDrop;
use webmesh_e2e::netns::{TestNet, v4, v6};

const DOMAIN: &str = "webmesh.internal";
/// The fixed rate of the latency runs: well under either server's capacity.
const LATENCY_QPS: u32 = 5_000;

struct Run {
    qps: f64,
    lost: String,
}

fn dnsperf(ns: &str, server: &str, port: u16, data: &str, args: &[&str]) -> Result<String> {
    let port = port.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "dnsperf", "-s", server, "-p", &port, "-d", data,
        ])
        .args(args)
        .output()
        .context("dnsperf (apt-get install dnsperf)")?;
    if !out.status.success() {
        bail!("dnsperf: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn field<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// As fast as the server answers: 2 threads, 100 queries outstanding.
fn throughput(ns: &str, server: &str, port: u16, data: &str, secs: u64) -> Result<Run> {
    let out = dnsperf(
        ns,
        server,
        port,
        data,
        &["-l", &secs.to_string(), "-T", "2", "-c", "2", "-q", "100"],
    )?;
    let qps = field(&out, "Queries per second:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rate in:\n{out}"))?;
    let lost = field(&out, "Queries lost:").unwrap_or("?").to_string();
    Ok(Run { qps, lost })
}

/// At LATENCY_QPS, each query's latency (dnsperf -v); returns (p50, p99) in µs.
fn latency(ns: &str, server: &str, port: u16, data: &str, secs: u64) -> Result<(f64, f64)> {
    let out = dnsperf(
        ns,
        server,
        port,
        data,
        &[
            "-l",
            &secs.to_string(),
            "-Q",
            &LATENCY_QPS.to_string(),
            "-v",
        ],
    )?;
    // "> NOERROR h1.webmesh.internal A 0.000123"
    let mut v: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    if v.is_empty() {
        bail!(
            "no latencies in:\n{}",
            out.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Ok((at(0.5), at(0.99)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let mut net = TestNet::new()?;
    let quiet = ["--log-level", "warn"];
    net.bootstrap(
        "h1",
        &[
            "--meshdns-listen",
            ":5353",
            "--meshdns-no-forward",
            "--log-level",
            "warn",
        ],
    )
    .await?;
    net.join(&["h2", "h3"], "h1", false, &quiet).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    let server = v4(&nodes["h1"]);
    let dir = net.path().to_path_buf();
    let (mut hosts, mut queries) = (String::new(), String::new());
    for (id, n) in &nodes {
        hosts += &format!("{} {id}.{DOMAIN}\n{} {id}.{DOMAIN}\n", v4(n), v6(n));
        queries += &format!("{id}.{DOMAIN} A\n{id}.{DOMAIN} AAAA\n");
    }
    let hosts_file = dir.join("hosts");
    let data = dir.join("queries");
    std::fs::write(&hosts_file, hosts)?;
    std::fs::write(&data, queries)?;
    let data = data.display().to_string();
    let ns = net.hosts["h1"].ns.clone();
    let _dnsmasq = KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .args([
                "--bind-interfaces",
                "--listen-address",
                &server,
                "--port",
                "5454",
            ])
            .arg(format!("--local=/{DOMAIN}/"))
            .args(["--cache-size=10000", "--log-facility=/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dnsmasq (apt-get install dnsmasq-base)")?,
    );
    // Both answer before measuring.
    for port in [5353u16, 5454] {
        webmesh_e2e::wait_for("the DNS server", Duration::from_secs(10), || async {
            dnsperf(&ns, &server, port, &data, &["-n", "1", "-t", "1"])
                .ok()
                .filter(|o| {
                    field(o, "Queries completed:")
                        .is_some_and(|c| c.starts_with(&format!("{}", nodes.len() * 2)))
                })
        })
        .await?;
    }
    println!(
        "| server | queries/s ({secs} s, 2 threads) | lost | p50 at {LATENCY_QPS} q/s | p99 at {LATENCY_QPS} q/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, port) in [
        ("webmesh mesh DNS", 5353u16),
        ("dnsmasq 2.90, hosts file", 5454),
    ] {
        let t = throughput(&ns, &server, port, &data, secs)?;
        let (p50, p99) = latency(&ns, &server, port, &data, secs.min(5))?;
        println!(
            "| {name} | {:.0} | {} | {p50:.0} µs | {p99:.0} µs |",
            t.qps, t.lost
        );
        rows.push((t.qps, p99));
    }
    println!(
        "\nmesh DNS / dnsmasq: {:.2}x the rate, p99 {:.2}x",
        rows[0].0 / rows[1].0,
        rows[0].1 / rows[1].1
    );
    Ok(())
}
