//! Multi-host benchmarks in network namespaces, on the release binaries:
//!
//!   cargo build --release --bins
//!   target/release/mesh-bench join            # join -> first ping, 20 joins
//!   target/release/mesh-bench propagation 3   # state change -> every interface, 3 nodes
//!   target/release/mesh-bench propagation 25
//!   target/release/mesh-bench iperf           # tunnel throughput and node RSS
//!   target/release/mesh-bench acl             # wmctl put networkacl -> every node, 5 nodes
//!   target/release/mesh-bench ice 5           # ICE path setup (5 rounds each) and throughput
//!   target/release/mesh-bench failover 20     # kill -9 the leader -> writes accepted again
//!   target/release/mesh-bench scale 10000     # 10,000 simulated members: joins, RSS, changes
//!
//! Needs root. Prints Markdown tables.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use webmesh_e2e::netns::{Nat, TestNet, v4};
use webmesh_e2e::wait_for;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (pct(&v, 0.5), pct(&v, 0.99), *v.last().expect("samples"))
}

async fn bootstrap(net: &mut TestNet, log_level: &str) -> Result<()> {
    let h = net.add_host("h1")?;
    h.args = vec![
        "--bootstrap".into(),
        "--endpoint".into(),
        h.ip.to_string(),
        "--log-level".into(),
        log_level.into(),
    ];
    h.start()?;
    h.wait_ready(Duration::from_secs(60)).await?;
    Ok(())
}

fn add_joiner(net: &mut TestNet, id: &str, log_level: &str) -> Result<()> {
    let join = net.grpc("h1");
    let h = net.add_host(id)?;
    h.args = vec![
        "--join".into(),
        join,
        "--endpoint".into(),
        h.ip.to_string(),
        "--leave-on-shutdown".into(),
        "--log-level".into(),
        log_level.into(),
    ];
    Ok(())
}

/// Join -> first successful ping from the joiner to the bootstrap node's mesh IPv4.
async fn join_bench() -> Result<()> {
    let mut net = TestNet::new()?;
    bootstrap(&mut net, "warn").await?;
    let target = v4(&net.hosts["h1"].nodes().await?["h1"]);
    let mut samples = Vec::new();
    for i in 1..=20 {
        let id = format!("j{i:02}");
        add_joiner(&mut net, &id, "warn")?;
        let started = Instant::now();
        net.host(&id).start()?;
        let h = &net.hosts[&id];
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns", "exec", &h.ns, "ping", "-c", "1", "-W", "0.2", &target,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{id} never pinged h1:\n{}", h.log_text());
            }
        }
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (p50, p99, max) = stats(samples);
    println!("| joins | p50 | p99 | max |\n|---:|---:|---:|---:|");
    println!("| 20 | {p50:.0} ms | {p99:.0} ms | {max:.0} ms |");
    Ok(())
}

/// Unix microseconds of a log line's RFC 3339 timestamp (`2026-11-26T09:10:03.189544Z`).
fn log_time_us(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 86400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The Raft index of node `id`'s registration and when the leader committed it (its
/// log's clock).
async fn registered(net: &TestNet, leader: &str, id: &str) -> Result<(u64, i64)> {
    wait_for("the registration", Duration::from_secs(30), || async {
        net.hosts[leader]
            .log_text()
            .lines()
            .rev()
            .find(|l| l.contains("node registered") && l.contains(&format!("node={id}")))
            .and_then(|l| Some((field(l, "index")?, log_time_us(l)?)))
    })
    .await
}

/// When each node first had an interface state at or past Raft index `index`.
fn applied_times(net: &TestNet, index: u64, skip: &str) -> BTreeMap<String, Option<i64>> {
    net.hosts
        .values()
        // The standing mesh (joiners of earlier rounds have left).
        .filter(|h| h.id != skip && !h.id.starts_with('x'))
        .map(|h| {
            (
                h.id.clone(),
                applied_at(&h.log_text(), index).map(|(t, _)| t),
            )
        })
        .collect()
}

/// A public node joins (a state change every node must apply): time from the leader's
/// commit of its registration to the change on every other node's interface.
async fn propagation_bench(n: usize) -> Result<()> {
    let level = std::env::var("MESH_BENCH_LOG")
        .unwrap_or_else(|_| "info,webmesh::net=debug,webmesh::services=debug".into());
    let level = level.as_str();
    let mut net = TestNet::new()?;
    bootstrap(&mut net, level).await?;
    for i in 2..=n {
        add_joiner(&mut net, &format!("m{i:02}"), level)?;
        net.host(&format!("m{i:02}")).start()?;
    }
    for i in 2..=n {
        net.host(&format!("m{i:02}"))
            .wait_ready(Duration::from_secs(120))
            .await?;
    }
    let mut samples = Vec::new();
    let nstat = std::env::var_os("MESH_BENCH_NSTAT").is_some();
    for k in 1..=20 {
        let id = format!("x{k:02}");
        let before: BTreeMap<String, BTreeMap<String, i64>> = if nstat {
            net.hosts
                .iter()
                .map(|(h, host)| (h.clone(), net_counters(host)))
                .collect()
        } else {
            BTreeMap::new()
        };
        add_joiner(&mut net, &id, level)?;
        net.host(&id).start()?;
        let leader = net.hosts["h1"].status().await?.current_leader;
        let (idx, t0) = registered(&net, &leader, &id).await?;
        if std::env::var_os("MESH_BENCH_DIAG").is_some() {
            // While the joiner waits: what the leader's sockets and neighbours look like.
            let started = Instant::now();
            let mut dumped = false;
            while !net.hosts[&id].log_text().contains("node ready") {
                if !dumped && started.elapsed() > Duration::from_secs(2) {
                    dumped = true;
                    for cmd in [
                        &["ss", "-uampn"][..],
                        &["ss", "-tmpn"][..],
                        &["ip", "neigh"][..],
                        &["wg", "show", "all", "latest-handshakes"][..],
                        &["tc", "-s", "qdisc"][..],
                        &[
                            "sh",
                            "-c",
                            "for t in /proc/$(pgrep -o -f 'webmesh.*--bootstrap')/task/*; do echo \"$(cat $t/comm) $(cat $t/wchan) $(cut -d' ' -f1 $t/syscall)\"; done | sort | uniq -c",
                        ][..],
                    ] {
                        for h in ["h1", id.as_str()] {
                            // The thread dump is of the leader's process (by its flag).
                            if cmd[0] == "sh" && h != "h1" {
                                continue;
                            }
                            if let Ok(out) = net.hosts[h].exec(cmd) {
                                eprintln!(
                                    "== {h}: {}\n{}{}",
                                    cmd.join(" "),
                                    String::from_utf8_lossy(&out.stdout),
                                    String::from_utf8_lossy(&out.stderr)
                                );
                            }
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        net.host(&id).wait_ready(Duration::from_secs(30)).await?;
        let times = wait_for(
            "every node to apply it",
            Duration::from_secs(30),
            || async {
                let t = applied_times(&net, idx, &id);
                t.values().all(|v| v.is_some()).then_some(t)
            },
        )
        .await
        .context("propagation")?;
        let last = times.values().filter_map(|v| *v).max().expect("nodes");
        samples.push((last - t0) as f64 / 1e3);
        if last - t0 > 200_000 {
            let slow: Vec<String> = times
                .iter()
                .filter(|(_, t)| t.is_some_and(|t| t - t0 > 200_000))
                .map(|(id, t)| format!("{id} {:.0} ms", (t.unwrap_or(t0) - t0) as f64 / 1e3))
                .collect();
            eprintln!("change {k} (index {idx}) was slow on: {}", slow.join(", "));
            if nstat {
                for (h, was) in &before {
                    let now = net_counters(&net.hosts[h]);
                    let d: Vec<String> = now
                        .iter()
                        // The backlog is the kernel's: said once, with h1.
                        .filter(|(c, _)| {
                            h == "h1" || !(c.starts_with("softnet:") || c.starts_with("neigh:"))
                        })
                        .filter_map(|(c, v)| {
                            let d = v - was.get(c).copied().unwrap_or(0);
                            (d != 0).then(|| format!("{c}+{d}"))
                        })
                        .collect();
                    if !d.is_empty() {
                        eprintln!("  {h}: {}", d.join(" "));
                    }
                }
            }
        }
        net.host(&id).stop(Duration::from_secs(10));
        // Wait until the leave is applied everywhere before the next change.
        let gone = net.hosts["h1"].nodes().await?;
        if gone.contains_key(&id) {
            wait_for("the leave", Duration::from_secs(10), || async {
                (!net.hosts["h1"].nodes().await.ok()?.contains_key(&id)).then_some(())
            })
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Ok(keep) = std::env::var("MESH_BENCH_KEEP_LOGS") {
        std::fs::create_dir_all(&keep)?;
        for h in net.hosts.values() {
            std::fs::write(format!("{keep}/{}.log", h.id), h.log_text())?;
        }
    }
    let (p50, p99, max) = stats(samples);
    println!("| nodes | changes | p50 | p99 | max |\n|---:|---:|---:|---:|---:|");
    println!("| {n} | 20 | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |");
    Ok(())
}

/// Loss and retransmission counters of a host's network namespace (/proc/net/snmp and
/// /proc/net/netstat): where packets were dropped while a change propagated.
fn net_counters(h: &webmesh_e2e::netns::Host) -> BTreeMap<String, i64> {
    const WANT: &[&str] = &[
        "Udp:InErrors",
        "Udp:RcvbufErrors",
        "Udp:SndbufErrors",
        "Tcp:RetransSegs",
        "Tcp:AttemptFails",
        "Tcp:EstabResets",
        "TcpExt:TCPTimeouts",
        "TcpExt:TCPLossProbes",
        "TcpExt:ListenDrops",
    ];
    // `MESH_BENCH_NSTAT=all`: every counter the kernel keeps, for a loss not in the list.
    let all = std::env::var("MESH_BENCH_NSTAT").is_ok_and(|v| v == "all");
    let mut out = BTreeMap::new();
    if all && let Ok(o) = h.exec(&["cat", "/proc/net/snmp6"]) {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some((n, v)) = line.split_once(char::is_whitespace) {
                out.insert(format!("Ip6:{n}"), v.trim().parse().unwrap_or(0));
            }
        }
    }
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let Ok(o) = h.exec(&["cat", file]) else {
            continue;
        };
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((p, names)), Some((_, values))) =
                (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                let key = format!("{p}:{n}");
                if all || WANT.contains(&key.as_str()) {
                    out.insert(key, v.parse().unwrap_or(0));
                }
            }
        }
    }
    // Drops at the namespace's interfaces (the TUN device's queue, the veth).
    if let Ok(o) = h.exec(&["ip", "-j", "-s", "link"])
        && let Ok(links) = serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout)
    {
        for l in links {
            let name = l["ifname"].as_str().unwrap_or("?");
            for dir in ["rx", "tx"] {
                let d = l["stats64"][dir]["dropped"].as_i64().unwrap_or(0);
                out.insert(format!("{name}:{dir}_dropped"), d);
            }
        }
    }
    // The kernel's per-CPU backlog, shared by every namespace: packets dropped because
    // it was full, and softirq runs cut short with work left.
    if let Ok(text) = std::fs::read_to_string("/proc/net/softnet_stat") {
        let (mut dropped, mut squeezed) = (0, 0);
        for line in text.lines() {
            let cols: Vec<i64> = (line.split_whitespace())
                .map(|c| i64::from_str_radix(c, 16).unwrap_or(0))
                .collect();
            dropped += cols.get(1).copied().unwrap_or(0);
            squeezed += cols.get(2).copied().unwrap_or(0);
        }
        out.insert("softnet:dropped".into(), dropped);
        out.insert("softnet:time_squeeze".into(), squeezed);
    }
    // The neighbour tables, also one per machine: a datagram whose ARP / NDP entry
    // could not be created (table full) or resolved is dropped before any interface.
    for (table, file) in [
        ("arp", "/proc/net/stat/arp_cache"),
        ("ndisc", "/proc/net/stat/ndisc_cache"),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let mut lines = text.lines();
        let names: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        for line in lines {
            for (n, v) in names.iter().zip(line.split_whitespace()) {
                if matches!(*n, "table_fulls" | "unresolved_discards" | "forced_gc_runs") {
                    *out.entry(format!("neigh:{table}_{n}")).or_default() +=
                        i64::from_str_radix(v, 16).unwrap_or(0);
                }
            }
        }
    }
    out
}

/// Microseconds since the Unix epoch, the clock the node logs use.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `wmctl put networkacl` (and `delete`) on h1 → every node of a 5-node mesh has
/// recomputed and applied its peers (the two nodes the ACL cuts drop each other).
async fn acl_bench() -> Result<()> {
    let level = "info,webmesh::net=debug";
    let mut net = TestNet::new()?;
    bootstrap(&mut net, level).await?;
    for i in 2..=5 {
        add_joiner(&mut net, &format!("m{i:02}"), level)?;
        net.host(&format!("m{i:02}")).start()?;
    }
    for i in 2..=5 {
        net.host(&format!("m{i:02}"))
            .wait_ready(Duration::from_secs(120))
            .await?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    let wmctl = webmesh_e2e::bin("wmctl").display().to_string();
    let mut put = Vec::new();
    let mut del = Vec::new();
    for _ in 0..20 {
        for deleting in [false, true] {
            let args: Vec<&str> = if deleting {
                vec!["delete", "networkacl", "cut"]
            } else {
                vec![
                    "put",
                    "networkacl",
                    "--name",
                    "cut",
                    "--priority",
                    "100",
                    "--action",
                    "deny",
                    "--source-node",
                    "m04,m05",
                    "--destination-node",
                    "m04,m05",
                ]
            };
            let server = net.hosts["h1"].admin_server();
            let mut cmd = vec![wmctl.as_str(), "-s", &server];
            cmd.extend(args);
            let t0 = now_us();
            let out = net.hosts["h1"].exec(&cmd)?;
            if !out.status.success() {
                bail!("wmctl: {}", String::from_utf8_lossy(&out.stderr));
            }
            let last = wait_for(
                "every node to apply it",
                Duration::from_secs(30),
                || async {
                    let mut last = 0;
                    for h in net.hosts.values() {
                        let t = h
                            .log_text()
                            .lines()
                            .filter(|l| l.contains("peers applied"))
                            .filter_map(log_time_us)
                            .find(|t| *t >= t0)?;
                        last = last.max(t);
                    }
                    Some(last)
                },
            )
            .await?;
            // The interfaces agree: m04 and m05 drop each other (or have each other back).
            let key = nodes["m05"].public_key.clone();
            wait_for(
                "m04's interface to follow",
                Duration::from_secs(5),
                || async {
                    let has = net.hosts["m04"]
                        .wg_peers()
                        .ok()?
                        .iter()
                        .any(|p| p.public_key == key);
                    (has == deleting).then_some(())
                },
            )
            .await?;
            let ms = (last - t0) as f64 / 1e3;
            if deleting {
                del.push(ms);
            } else {
                put.push(ms);
            }
        }
    }
    println!("| change (5 nodes) | samples | p50 | p99 | max |\n|---|---:|---:|---:|---:|");
    for (name, v) in [
        ("wmctl put networkacl (DENY m04↔m05)", put),
        ("wmctl delete networkacl", del),
    ] {
        let n = v.len();
        let (p50, p99, max) = stats(v);
        println!("| {name} | {n} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("VmRSS")
}

/// iperf3 over a path: server in `server_ns`, client in `client_ns` to `addr`.
fn iperf(server_ns: &str, client_ns: &str, addr: &str, secs: u32) -> Result<f64> {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            addr,
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()?;
    // A client that never connected leaves the one-shot server waiting: stop it.
    if !out.status.success() {
        let _ = server.kill();
    }
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
}

fn sh(cmd: &str) -> Result<()> {
    let st = Command::new("sh").args(["-c", cmd]).status()?;
    if !st.success() {
        bail!("{cmd}: {st}");
    }
    Ok(())
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    let hz: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(ticks / hz)
}

/// The CPU clock, from /proc/cpuinfo (MHz → Hz).
fn cpu_hz() -> Result<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo")?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|v| v.trim_start_matches([' ', '\t', ':']).trim().parse().ok())
        .context("cpu MHz")?;
    Ok(mhz * 1e6)
}

/// One iperf3 run over a tunnel: Gbit/s, and the CPU cycles the tunnel's processes
/// (`pids`, both ends) spent per byte carried.
fn tunnel_run(ns1: &str, ns2: &str, addr: &str, pids: &[u32], secs: u32) -> Result<(f64, f64)> {
    let before: f64 = pids.iter().map(|p| cpu_secs(*p)).sum::<Result<f64>>()?;
    let gbps = iperf(ns1, ns2, addr, secs)?;
    let after: f64 = pids.iter().map(|p| cpu_secs(*p)).sum::<Result<f64>>()?;
    let bytes = gbps * 1e9 / 8.0 * f64::from(secs);
    Ok((gbps, (after - before) * cpu_hz()? / bytes))
}

/// Tunnel throughput: webmesh (userspace WireGuard), wireguard-go configured by hand
/// between the same namespaces, and the raw veth path, in alternating rounds so that
/// load drift on the VM falls on both tunnels alike; CPU cycles per byte of the tunnel
/// processes; node RSS idle and under load.
async fn iperf_bench(rounds: usize) -> Result<()> {
    let secs = 8;
    let mut net = TestNet::new()?;
    bootstrap(&mut net, "warn").await?;
    add_joiner(&mut net, "h2", "warn")?;
    net.host("h2").start()?;
    net.host("h2").wait_ready(Duration::from_secs(60)).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    let (ns1, ns2) = (net.hosts["h1"].ns.clone(), net.hosts["h2"].ns.clone());
    let pid = |id: &str| -> Result<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &net.hosts[id].ns])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .context("pid")
    };
    let (p1, p2) = (pid("h1")?, pid("h2")?);
    let idle = rss_kib(p1)?;
    let mesh_v4 = v4(&nodes["h1"]);
    // Warm the tunnel.
    let _ = net.hosts["h2"].ping(&mesh_v4);

    // wireguard-go between the same two namespaces, by hand.
    let slot = net.slot;
    let (g1, g2) = (format!("wg{slot}go1"), format!("wg{slot}go2"));
    let k1 = String::from_utf8(Command::new("wg").arg("genkey").output()?.stdout)?
        .trim()
        .to_string();
    let k2 = String::from_utf8(Command::new("wg").arg("genkey").output()?.stdout)?
        .trim()
        .to_string();
    let pubkey = |k: &str| -> Result<String> {
        let mut c = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(c.stdin.as_mut().context("stdin")?, k.as_bytes())?;
        Ok(String::from_utf8(c.wait_with_output()?.stdout)?
            .trim()
            .to_string())
    };
    let (pub1, pub2) = (pubkey(&k1)?, pubkey(&k2)?);
    let (ip1, ip2) = (net.hosts["h1"].ip, net.hosts["h2"].ip);
    let result = (|| -> Result<_> {
        let mut wggo_pids = vec![];
        for (ns, dev, key, addr, peer, peer_ip, allowed) in [
            (&ns1, &g1, &k1, "10.250.0.1/24", &pub2, ip2, "10.250.0.2/32"),
            (&ns2, &g2, &k2, "10.250.0.2/24", &pub1, ip1, "10.250.0.1/32"),
        ] {
            sh(&format!("ip netns exec {ns} wireguard-go {dev}"))?;
            let keyfile = format!("/tmp/{dev}.key");
            std::fs::write(&keyfile, key)?;
            sh(&format!(
                "ip netns exec {ns} wg set {dev} listen-port 51999 private-key {keyfile} peer {peer} endpoint {peer_ip}:51999 allowed-ips {allowed}"
            ))?;
            sh(&format!(
                "ip -n {ns} addr add {addr} dev {dev} && ip -n {ns} link set {dev} mtu 1420 up"
            ))?;
            let _ = std::fs::remove_file(&keyfile);
            let out = Command::new("pgrep")
                .args(["-f", &format!("^wireguard-go {dev}$")])
                .output()?;
            wggo_pids.push(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
                    .context("wireguard-go pid")?,
            );
        }
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns2,
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "10.250.0.1",
            ])
            .status();
        let (mut mesh, mut wggo) = (vec![], vec![]);
        let mut peak = 0;
        for round in 0..rounds {
            let sampler = std::thread::spawn(move || {
                let mut peak = 0;
                for _ in 0..(secs * 4) {
                    if let Ok(r) = rss_kib(p1) {
                        peak = peak.max(r);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                peak
            });
            let m = tunnel_run(&ns1, &ns2, &mesh_v4, &[p1, p2], secs)?;
            peak = peak.max(sampler.join().map_err(|_| anyhow::anyhow!("sampler"))?);
            let g = tunnel_run(&ns1, &ns2, "10.250.0.1", &wggo_pids, secs)?;
            eprintln!(
                "round {}: webmesh {:.3} Gbit/s {:.1} cycles/B, wireguard-go {:.3} Gbit/s {:.1} cycles/B",
                round + 1,
                m.0,
                m.1,
                g.0,
                g.1
            );
            mesh.push(m);
            wggo.push(g);
        }
        Ok((mesh, wggo, peak))
    })();
    for (ns, dev) in [(&ns1, &g1), (&ns2, &g2)] {
        let _ = Command::new("ip")
            .args(["-n", ns, "link", "del", dev])
            .status();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
    }
    let (mesh, wggo, loaded) = result?;
    let veth = iperf(&ns1, &ns2, &net.hosts["h1"].ip.to_string(), secs)?;
    let med = |v: &[(f64, f64)]| {
        (
            stats(v.iter().map(|x| x.0).collect()).0,
            stats(v.iter().map(|x| x.1).collect()).0,
        )
    };
    let (m, g) = (med(&mesh), med(&wggo));
    println!(
        "| path (iperf3 TCP, {secs} s, median of {rounds}) | throughput | tunnel CPU cycles/byte |\n|---|---:|---:|"
    );
    println!("| raw veth (no tunnel) | {veth:.2} Gbit/s | — |");
    println!(
        "| webmesh (userspace WireGuard, GotaTun) | {:.2} Gbit/s | {:.1} |",
        m.0, m.1
    );
    println!(
        "| wireguard-go, configured by hand | {:.2} Gbit/s | {:.1} |",
        g.0, g.1
    );
    println!("| webmesh / wireguard-go | {:.2}× | |", m.0 / g.0);
    println!();
    println!("| node RSS | |\n|---|---:|");
    println!("| idle (2-node mesh) | {:.1} MiB |", idle as f64 / 1024.0);
    println!("| peak under iperf3 | {:.1} MiB |", loaded as f64 / 1024.0);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("join") => join_bench().await,
        Some("propagation") => {
            propagation_bench(args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(3)).await
        }
        Some("iperf") => {
            iperf_bench(args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(3)).await
        }
        Some("acl") => acl_bench().await,
        Some("ice") => ice_bench(args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(5)).await,
        Some("failover") => {
            failover_bench(args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(20)).await
        }
        Some("scale") => {
            scale_bench(
                args.get(2)
                    .map(|n| n.parse())
                    .transpose()?
                    .unwrap_or(10_000),
            )
            .await
        }
        _ => bail!(
            "usage: mesh-bench join | propagation N | iperf | acl | ice N | failover N | scale N"
        ),
    }
}

/// A public bootstrap node h1 (TURN server, signalling relay) that forwards nothing
/// (so two NAT'd nodes reach each other only over their ICE path), and two sites
/// behind `nat`: a2 behind r2, a3 behind r3, with `--ice`, not started.
async fn ice_sites(nat: Nat, extra: &[&str]) -> Result<TestNet> {
    let mut net = TestNet::new()?;
    let h = net.add_host("h1")?;
    h.args = [
        "--bootstrap",
        "--endpoint",
        &h.ip.to_string(),
        "--turn-server",
        "--ice",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    h.start()?;
    h.wait_ready(Duration::from_secs(60)).await?;
    let ns = net.hosts["h1"].ns.clone();
    sh(&format!(
        "ip netns exec {ns} nft add table inet bench_noforward && ip netns exec {ns} nft add chain inet bench_noforward noforward '{{ type filter hook forward priority -10; policy drop; }}'"
    ))?;
    let via = net.grpc("h1");
    for (router, id) in [("r2", "a2"), ("r3", "a3")] {
        let h = net.add_nat_site(router, id, nat)?;
        let level = std::env::var("MESH_BENCH_LOG").unwrap_or_else(|_| "warn".into());
        h.args = ["--join", &via, "--ice", "--log-level", &level]
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    Ok(net)
}

/// Polls a 200 ms ping from `from` to `addr` until one answers.
fn first_ping(net: &TestNet, from: &str, addr: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let ok = net.hosts[from]
            .exec(&["ping", "-c", "1", "-W", "0.2", addr])
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "no ping from {from} to {addr} in {timeout:?}\n{}",
                net.logs()
            );
        }
    }
}

/// Seconds from both NAT'd nodes started (and from both ready) to a2's first ping of
/// a3 over their ICE path.
async fn ice_setup(nat: Nat) -> Result<(f64, f64)> {
    let mut net = ice_sites(nat, &[]).await?;
    let started = Instant::now();
    net.host("a2").start()?;
    net.host("a3").start()?;
    for id in ["a2", "a3"] {
        net.host(id).wait_ready(Duration::from_secs(60)).await?;
    }
    let ready = Instant::now();
    let a3 = v4(&net.hosts["h1"].nodes().await?["a3"]);
    let pinged = first_ping(&net, "a2", &a3, Duration::from_secs(60))?;
    Ok((
        (pinged - started).as_secs_f64(),
        (pinged - ready).as_secs_f64(),
    ))
}

/// ICE: path setup behind cone NATs (direct) and symmetric NATs (relayed through
/// TURN), `rounds` fresh meshes each; then throughput over a relayed, a direct ICE and
/// a plain WireGuard path in one mesh.
async fn ice_bench(rounds: usize) -> Result<()> {
    println!(
        "| connection setup ({rounds} rounds) | from start p50 | max | from both ready p50 | max |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (label, nat) in [
        ("direct (cone/cone)", Nat::Cone),
        ("relayed (symmetric/symmetric)", Nat::Symmetric),
    ] {
        let mut from_start = Vec::new();
        let mut from_ready = Vec::new();
        for _ in 0..rounds {
            let (s, r) = ice_setup(nat).await?;
            from_start.push(s);
            from_ready.push(r);
        }
        let (s50, _, smax) = stats(from_start);
        let (r50, _, rmax) = stats(from_ready);
        println!("| {label} | {s50:.2} s | {smax:.2} s | {r50:.2} s | {rmax:.2} s |");
    }

    // Throughput: the relay without its default rate cap, to measure the path.
    let mut net = ice_sites(
        Nat::Symmetric,
        &["--turn-allocation-rate", "0", "--turn-total-rate", "0"],
    )
    .await?;
    // Public members too: h2 for the plain WireGuard path h2 -> h1, and h3 with an ICE
    // edge to h2: the same ICE path as behind the NATs, without the NAT routers'
    // forwarding in the way.
    let level = std::env::var("MESH_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    add_joiner(&mut net, "h2", &level)?;
    add_joiner(&mut net, "h3", &level)?;
    for id in ["h2", "h3"] {
        net.host(id).args.push("--ice".into());
    }
    // And plain WireGuard across two cone NATs, for the same hops as a2 -> a3: b4 behind
    // r4, b5 behind r5, whose router forwards WireGuard's port to it (its endpoint).
    let via = net.grpc("h1");
    net.add_nat_site("r4", "b4", Nat::Cone)?.args = ["--join", &via, "--log-level", "warn"]
        .map(String::from)
        .to_vec();
    let b5_lan = net.add_nat_site("r5", "b5", Nat::Cone)?.ip.to_string();
    let r5 = net.hosts["r5"].ip.to_string();
    net.host("b5").args = ["--join", &via, "--endpoint", &r5, "--log-level", "warn"]
        .map(String::from)
        .to_vec();
    sh(&format!(
        "ip netns exec {} nft 'add table ip bench_fwd; add chain ip bench_fwd pre {{ type nat hook prerouting priority dstnat; }}; add rule ip bench_fwd pre iifname \"eth0\" udp dport 51820 dnat to {b5_lan}'",
        net.hosts["r5"].ns
    ))?;
    for id in ["a2", "a3", "h2", "h3", "b4", "b5"] {
        net.host(id).start()?;
    }
    for id in ["a2", "a3", "h2", "h3", "b4", "b5"] {
        net.host(id).wait_ready(Duration::from_secs(60)).await?;
    }
    let edge = net.path().join("ice-edge.json");
    std::fs::write(
        &edge,
        r#"{"items": [
            {"source": "h2", "target": "h3", "attributes": {"EDGE_ATTRIBUTE_ICE": "true"}},
            {"source": "h3", "target": "h2", "attributes": {"EDGE_ATTRIBUTE_ICE": "true"}},
            {"source": "b4", "target": "b5", "weight": 1}
        ]}"#,
    )?;
    let out = Command::new(webmesh_e2e::bin("wmctl"))
        .args(["-s", &net.hosts["h1"].admin_server(), "put", "edges", "-f"])
        .arg(&edge)
        .output()?;
    if !out.status.success() {
        bail!("wmctl put edges: {}", String::from_utf8_lossy(&out.stderr));
    }
    let nodes = net.hosts["h1"].nodes().await?;
    let (a3, h1) = (v4(&nodes["a3"]), v4(&nodes["h1"]));
    let h2 = v4(&net.hosts["h1"].nodes().await?["h2"]);
    let ns = |id: &str| net.hosts[id].ns.clone();
    ice_path(&net, "a2", "a3", "relayed:").await?;
    first_ping(&net, "a2", &a3, Duration::from_secs(30))?;
    eprintln!("iperf3 over the relayed path");
    let relayed = iperf(&ns("a3"), &ns("a2"), &a3, 8)?;
    net.set_nat("r2", Nat::Cone)?;
    net.set_nat("r3", Nat::Cone)?;
    ice_path(&net, "a2", "a3", "direct:").await?;
    first_ping(&net, "a2", &a3, Duration::from_secs(30))?;
    eprintln!("iperf3 over the direct path");
    let relayed_before = turn_relayed(&ns("h1"));
    let direct = iperf(&ns("a3"), &ns("a2"), &a3, 8)?;
    // A direct path relays nothing: what the TURN server relayed meanwhile tells.
    eprintln!(
        "TURN packets relayed during the direct run: {}",
        turn_relayed(&ns("h1")) - relayed_before
    );
    first_ping(&net, "h2", &h1, Duration::from_secs(30))?;
    let plain = iperf(&ns("h1"), &ns("h2"), &h1, 8)?;
    // h2 and h3 signal through h1 (they have only their ICE edge): h1 forwards again.
    sh(&format!(
        "ip netns exec {} nft delete table inet bench_noforward",
        ns("h1")
    ))?;
    ice_path(&net, "h3", "h2", "direct:").await?;
    first_ping(&net, "h3", &h2, Duration::from_secs(30))?;
    let public = iperf(&ns("h2"), &ns("h3"), &h2, 8)?;
    let b5 = v4(&net.hosts["h1"].nodes().await?["b5"]);
    first_ping(&net, "b4", &b5, Duration::from_secs(30))?;
    let natted = iperf(&ns("b5"), &ns("b4"), &b5, 8)?;
    println!();
    println!("| iperf3, 8 s, one stream | Gbit/s | vs plain WireGuard |");
    println!("|---|---:|---:|");
    println!("| plain WireGuard path (public members) | {plain:.3} | 1.00x |");
    println!(
        "| ICE direct path (public members, on the shared ICE socket) | {public:.3} | {:.2}x |",
        public / plain
    );
    println!(
        "| plain WireGuard path across two cone NATs (port forward to b5) | {natted:.3} | {:.2}x |",
        natted / plain
    );
    println!(
        "| ICE direct path (cone NATs, on the shared ICE socket) | {direct:.3} | {:.2}x (vs the same NATs' plain path {:.2}x) |",
        direct / plain,
        direct / natted
    );
    println!(
        "| ICE relayed path (symmetric NATs, TURN on h1, uncapped) | {relayed:.3} | {:.2}x (vs direct {:.2}x) |",
        relayed / plain,
        relayed / direct
    );
    Ok(())
}

/// Waits until `from` reports its ICE path to `to` as `want` (`direct:`, `relayed:`).
async fn ice_path(net: &TestNet, from: &str, to: &str, want: &str) -> Result<String> {
    wait_for(
        &format!("{from}'s path to {to}: {want}"),
        Duration::from_secs(90),
        || async {
            net.hosts[from]
                .ice_paths()
                .await
                .ok()?
                .get(to)
                .filter(|p| p.starts_with(want))
                .cloned()
        },
    )
    .await
}

/// The TURN server's relayed datagrams so far (its metrics, in namespace `ns`).
fn turn_relayed(ns: &str) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "http://127.0.0.1:8080/metrics",
        ])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("webmesh_turn_relayed_packets_total "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Three voters (h1..h3, public). Each round kills the leader with SIGKILL and measures
/// the time until a `wmctl put` through a survivor's admin socket is accepted (a client
/// retrying every 100 ms, each call with wmctl's default 10 s timeout), then restarts
/// the killed node and waits until it is a voter in sync again.
async fn failover_bench(rounds: usize) -> Result<()> {
    let level = std::env::var("MESH_BENCH_LOG").unwrap_or_else(|_| "info".into());
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &level).await?;
    for id in ["h2", "h3"] {
        add_joiner(&mut net, id, &level)?;
        // Voters stay members when they stop: a restart is not a leave.
        net.host(id).args.retain(|a| a != "--leave-on-shutdown");
        net.host(id).start()?;
    }
    for id in ["h2", "h3"] {
        net.host(id).wait_ready(Duration::from_secs(60)).await?;
    }
    net.promote("h1", &["h2", "h3"]).await?;
    // Any survivor's admin socket may write: bind the admin role to the other voters.
    net.bind_admin("h1", &["h2", "h3"])?;
    let voters = ["h1", "h2", "h3"];
    let mut samples = Vec::new();
    let mut attempts_total = 0;
    for round in 1..=rounds {
        let leader = wait_for("3 voters in sync", Duration::from_secs(60), || {
            net.voters_leader(&voters, true)
        })
        .await
        .with_context(|| net.logs())?;
        let survivor = voters.iter().find(|v| **v != leader).expect("a survivor");
        let name = format!("failover-{round}");
        let t0 = Instant::now();
        net.host(&leader).kill9();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let out = net.put_acl(survivor, &name, 10)?;
            if out.status.success() {
                break;
            }
            if std::env::var_os("MESH_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "  attempt {attempts} failed at {} ms: {}",
                    t0.elapsed().as_millis(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "no write accepted within 60 s of killing {leader}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = t0.elapsed().as_secs_f64() * 1e3;
        attempts_total += attempts;
        eprintln!(
            "round {round}: killed {leader}, write accepted via {survivor} after {took:.0} ms ({attempts} attempts)"
        );
        samples.push(took);
        net.host(&leader).start()?;
        net.host(&leader)
            .wait_ready(Duration::from_secs(60))
            .await?;
    }
    let (p50, p99, max) = stats(samples);
    println!(
        "| leader kill -9 → write accepted via a survivor (3 voters) | rounds | p50 | p99 | max |\n|---|---:|---:|---:|---:|"
    );
    println!(
        "| wmctl put, retried every 100 ms ({attempts_total} calls) | {rounds} | {p50:.0} ms | {p99:.0} ms | {max:.0} ms |"
    );
    Ok(())
}

/// A fresh WireGuard key pair (private, public), base64, without a process per key.
fn sim_keypair(seed: &[u8; 32]) -> (String, String) {
    use base64::Engine as _;
    let secret = x25519_dalek::StaticSecret::from(*seed);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(secret.to_bytes()), b64.encode(public.as_bytes()))
}

/// The first "peers applied" line of a node at or past `index`, scanning from the end.
fn applied_at(log: &str, index: u64) -> Option<(i64, Option<f64>)> {
    let mut found = None;
    for l in log.lines().rev().filter(|l| l.contains("peers applied")) {
        match field(l, "index") {
            Some(i) if i >= index => {
                let took = l
                    .split("took=")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .and_then(duration_ms);
                found = log_time_us(l).map(|t| (t, took));
            }
            _ => break,
        }
    }
    found
}

/// "1.5ms", "800µs", "2.1s" (Debug of a Duration) in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("µs") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-6)
    } else {
        (s.strip_suffix('s')?, 1e3)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// `n` simulated members join a mesh of 3 voters and 20 real members through the real
/// Join path (a key, a record, addresses and an edge each; no WireGuard device, no log
/// stream), then single changes are timed to every real node.
async fn scale_bench(n: usize) -> Result<()> {
    let level = std::env::var("MESH_BENCH_LOG")
        .unwrap_or_else(|_| "info,webmesh::net=debug,webmesh::services=debug".into());
    // Simulated members never come up: their pending-join markers must neither hold
    // joins back nor expire during the run.
    let common = [
        "--join-rate",
        "0",
        "--max-pending-joins",
        "100000",
        "--join-timeout",
        "604800",
        "--log-level",
        level.as_str(),
    ];
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &common).await?;
    net.join(&["h2", "h3"], "h1", true, &common).await?;
    net.promote("h1", &["h2", "h3"]).await?;
    let members: Vec<String> = (4..=23).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    net.join(&refs, "h1", true, &common).await?;
    let leader = net.hosts["h1"].status().await?.current_leader;
    let follower = ["h1", "h2", "h3"]
        .into_iter()
        .find(|h| *h != leader)
        .context("a follower voter")?
        .to_string();
    let pid = |h: &str| net.hosts[h].pid().context("a running node");
    let (lp, fp, mp) = (pid(&leader)?, pid(&follower)?, pid("m04")?);
    let rss0 = (rss_kib(lp)?, rss_kib(fp)?, rss_kib(mp)?);
    let sim_ns = net.add_host("sim")?.ns.clone();
    let targets: Vec<String> = members.iter().map(|m| net.grpc(m)).collect();
    let mut seeds = vec![0u8; 32 * (n + 20)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seeds))
        .context("/dev/urandom")?;
    let keys: Vec<(String, String)> = seeds
        .chunks_exact(32)
        .map(|c| sim_keypair(c.try_into().expect("32 bytes")))
        .collect();
    let keys = std::sync::Arc::new(keys);
    let cpu0 = (cpu_secs(lp)?, cpu_secs(fp)?);
    let started = Instant::now();
    let (lat, marks) = {
        let keys = keys.clone();
        let targets = targets.clone();
        webmesh_e2e::in_netns(&sim_ns, move || async move {
            sim_joins(0..n, keys, &targets, 8).await
        })?
    };
    let took = started.elapsed().as_secs_f64();
    let cpu = (cpu_secs(lp)? - cpu0.0, cpu_secs(fp)? - cpu0.1);
    let rss = (rss_kib(lp)?, rss_kib(fp)?, rss_kib(mp)?);
    let (p50, p99, max) = stats(lat.clone());
    println!("### {n} simulated members, 3 voters, 20 real members\n");
    println!("| joins | took | joins/s | join p50 | p99 | max |\n|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {took:.0} s | {:.0} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |",
        lat.len(),
        lat.len() as f64 / took
    );
    println!(
        "\njoins/s per thousand: {}",
        marks
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\n| process | RSS before | RSS after | CPU during joins |\n|---|---:|---:|---:|");
    println!(
        "| leader ({leader}) | {:.0} MiB | {:.0} MiB | {:.0} s |",
        rss0.0 as f64 / 1024.0,
        rss.0 as f64 / 1024.0,
        cpu.0
    );
    println!(
        "| follower voter ({follower}) | {:.0} MiB | {:.0} MiB | {:.0} s |",
        rss0.1 as f64 / 1024.0,
        rss.1 as f64 / 1024.0,
        cpu.1
    );
    println!(
        "| member (m04) | {:.0} MiB | {:.0} MiB | |",
        rss0.2 as f64 / 1024.0,
        rss.2 as f64 / 1024.0
    );
    // Changes at that size: one more member joins (every real node recomputes).
    let real: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|s| s.to_string())
        .chain(members.iter().cloned())
        .collect();
    let mut lags = Vec::new();
    let mut recompute = Vec::new();
    for k in 0..20 {
        let i = n + k;
        let (keys2, targets2) = (keys.clone(), targets.clone());
        webmesh_e2e::in_netns(&sim_ns, move || async move {
            sim_joins(i..i + 1, keys2, &targets2, 1).await
        })?;
        let id = format!("sim{i:05}");
        let (idx, t0) = registered(&net, &leader, &id).await?;
        let times = wait_for(
            "every real node to apply it",
            Duration::from_secs(60),
            || async {
                let t: Vec<(i64, Option<f64>)> = real
                    .iter()
                    .filter_map(|h| applied_at(&net.hosts[h].log_text(), idx))
                    .collect();
                (t.len() == real.len()).then_some(t)
            },
        )
        .await?;
        let last = times.iter().map(|(t, _)| *t).max().expect("nodes");
        lags.push((last - t0) as f64 / 1e3);
        recompute.extend(times.iter().filter_map(|(_, took)| *took));
    }
    let (c50, c99, cmax) = stats(lags);
    let (r50, r99, _) = stats(recompute);
    println!(
        "\n| change → all {} real nodes | changes | p50 | p99 | max |\n|---|---:|---:|---:|---:|",
        real.len()
    );
    println!("| a member joins | 20 | {c50:.0} ms | {c99:.0} ms | {cmax:.0} ms |");
    println!(
        "\nrecompute + apply on a real node (\"peers applied\" took): p50 {r50:.1} ms, p99 {r99:.1} ms"
    );
    if let Ok(keep) = std::env::var("MESH_BENCH_KEEP_LOGS") {
        std::fs::create_dir_all(&keep)?;
        for h in net.hosts.values() {
            std::fs::write(format!("{keep}/{}.log", h.id), h.log_text())?;
        }
    }
    Ok(())
}

/// Joins members `range` (keys from `keys`), `concurrency` at a time, spread over
/// `targets`; returns each join's latency (ms) and the join rate per thousand.
async fn sim_joins(
    range: std::ops::Range<usize>,
    keys: std::sync::Arc<Vec<(String, String)>>,
    targets: &[String],
    concurrency: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    use webmesh_api::v1::JoinRequest;
    use webmesh_api::v1::node_client::NodeClient;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let done = std::sync::Arc::new(std::sync::Mutex::new((
        Vec::new(),
        Vec::new(),
        Instant::now(),
    )));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, done) = (next.clone(), done.clone());
        let keys = keys.clone();
        let targets = targets.to_vec();
        let end = range.end;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    return Ok::<(), anyhow::Error>(());
                }
                let id = format!("sim{i:05}");
                let signer = webmesh_e2e::signer(&id, &keys[i]);
                let target = &targets[i % targets.len()];
                let mut client = NodeClient::new(webmesh_e2e::signed_channel(target, signer)?);
                let req = JoinRequest {
                    id: id.clone(),
                    public_key: keys[i].1.clone(),
                    raft_port: 9443,
                    grpc_port: 8443,
                    assign_ipv4: true,
                    ..Default::default()
                };
                let t = Instant::now();
                let mut tries = 0;
                loop {
                    match client.join(req.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::Unavailable && tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(s) => bail!("join {id}: {s}"),
                    }
                }
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
                d.0.push(ms);
                if d.0.len() % 1000 == 0 {
                    let rate = 1000.0 / d.2.elapsed().as_secs_f64();
                    d.1.push(rate);
                    d.2 = Instant::now();
                    eprintln!("{} joined ({rate:.0}/s)", d.0.len());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let d = done.lock().unwrap_or_else(|p| p.into_inner());
    Ok((d.0.clone(), d.1.clone()))
}
