//! Replicated write throughput and latency: 3 webmesh voters next to a 3-member etcd
//! cluster (Debian's etcd-server), both on loopback with fsync on, driven by the same
//! load generator (N concurrent clients writing 256-byte values to the leader).
//!
//!   cargo build --release --bins && target/release/raft-bench [SECONDS]
//!
//! webmesh runs with --no-wireguard here, so both systems replicate over plain TCP.

use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tonic::transport::{Channel, Endpoint};
use webmesh_api::v1::RaftLogEntry;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_e2e::{LocalNode, free_port, wait_for};

/// etcd's `etcdserverpb.PutRequest`, the two fields we send.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`; its fields are not needed.
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

type PutFn =
    Arc<dyn Fn(String, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

async fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn webmesh_put(ch: Channel) -> PutFn {
    Arc::new(move |key, value| {
        let mut c = NodeClient::new(ch.clone());
        Box::pin(async move {
            let entry = RaftLogEntry {
                r#type: 1,
                key,
                value: String::from_utf8(value)?,
                ttl: None,
            };
            let r = c.apply(entry).await?;
            anyhow::ensure!(r.get_ref().error.is_empty(), "{}", r.get_ref().error);
            Ok(())
        })
    })
}

fn etcd_put(ch: Channel) -> PutFn {
    Arc::new(move |key, value| {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        Box::pin(async move {
            grpc.ready().await?;
            let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
            let codec: tonic_prost::ProstCodec<PutRequest, PutResponse> =
                tonic_prost::ProstCodec::default();
            grpc.unary(
                tonic::Request::new(PutRequest {
                    key: key.into_bytes(),
                    value,
                }),
                path,
                codec,
            )
            .await?;
            Ok(())
        })
    })
}

/// Runs `clients` writers for `secs`: writes/s, p50, p99 (ms).
async fn load(put: &PutFn, prefix: &str, clients: usize, secs: u64) -> Result<(f64, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let put = put.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                put(format!("/bench/{prefix}/c{c}/{i}"), vec![b'x'; 256]).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let p = |q: f64| all[((all.len() as f64 - 1.0) * q).round() as usize];
    Ok((all.len() as f64 / elapsed, p(0.5), p(0.99)))
}

struct Etcd(Vec<Child>);

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A 3-member etcd cluster on loopback; returns it and the leader's client address.
async fn start_etcd(dir: &std::path::Path) -> Result<(Etcd, String)> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("etcd{i}.log")))?;
        procs.push(
            Command::new("etcd")
                .args([
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    &dir.join(format!("etcd{i}")).display().to_string(),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                ])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start etcd (apt install etcd-server)")?,
        );
    }
    let etcd = Etcd(procs);
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let leader = wait_for("an etcd leader", Duration::from_secs(30), || async {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &endpoints,
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().find_map(|s| {
            let leader = s["Status"]["leader"].as_u64()?;
            (s["Status"]["header"]["member_id"].as_u64()? == leader)
                .then(|| s["Endpoint"].as_str().map(str::to_string))?
        })
    })
    .await?;
    Ok((etcd, leader))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8);
    let dir = tempfile::tempdir_in("/var/tmp")?;

    // webmesh: n1 bootstraps; n2, n3 join and n1 (the admin) makes them voters.
    let mut nodes = Vec::new();
    // RAFT_BENCH_LOG: the nodes' log filter (e.g. `warn,webmesh::raft=trace`).
    let level = std::env::var("RAFT_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let quiet: &[&str] = &[
        "--no-wireguard",
        "--endpoint",
        "127.0.0.1",
        "--log-level",
        &level,
    ];
    let n1 = LocalNode::start("n1", dir.path(), &[&["--bootstrap"], quiet].concat()).await?;
    let join = n1.grpc.to_string();
    nodes.push(n1);
    for id in ["n2", "n3"] {
        let n = LocalNode::start(
            id,
            dir.path(),
            &[&["--join", join.as_str()], quiet].concat(),
        )
        .await?;
        nodes[0]
            .client()
            .await?
            .update(webmesh_api::v1::UpdateRequest {
                id: id.into(),
                as_voter: true,
                ..Default::default()
            })
            .await?;
        nodes.push(n);
    }
    wait_for("3 voters", Duration::from_secs(60), || async {
        let mut voters = 0;
        for n in &nodes {
            let s = n
                .client()
                .await
                .ok()?
                .get_status(webmesh_api::v1::GetStatusRequest::default())
                .await
                .ok()?
                .into_inner();
            if s.cluster_status == 1 || s.cluster_status == 2 {
                voters += 1;
            }
        }
        (voters == 3).then_some(())
    })
    .await?;
    let leader_id = nodes[0]
        .client()
        .await?
        .get_status(webmesh_api::v1::GetStatusRequest::default())
        .await?
        .into_inner()
        .current_leader;
    let leader = nodes.iter().find(|n| n.id == leader_id).context("leader")?;
    // Apply is for voters: the client acts as the leader through its admin socket (a
    // unix socket; etcd's clients use loopback TCP).
    let webmesh = webmesh_put(webmesh_e2e::admin_channel(&leader.socket)?);

    let (_etcd, etcd_leader) = start_etcd(dir.path()).await?;
    let etcd = etcd_put(channel(&etcd_leader).await?);
    let version = Command::new("etcd").arg("--version").output()?;
    let etcd_version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("etcd")
        .to_string();

    println!("3 voters, fsync on, 256-byte values, {secs} s per row; {etcd_version}");
    println!();
    println!(
        "| clients | webmesh writes/s | p50 | p99 | etcd writes/s | p50 | p99 | webmesh / etcd |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for clients in [1usize, 8, 64] {
        let w = load(&webmesh, "webmesh", clients, secs).await?;
        let e = load(&etcd, "etcd", clients, secs).await?;
        println!(
            "| {clients} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms | {:.2}x |",
            w.0,
            w.1,
            w.2,
            e.0,
            e.1,
            e.2,
            w.0 / e.0
        );
    }
    // RAFT_BENCH_KEEP_LOGS=DIR: the nodes' logs, for a look at where the time goes.
    if let Ok(keep) = std::env::var("RAFT_BENCH_KEEP_LOGS") {
        std::fs::create_dir_all(&keep)?;
        for n in &nodes {
            std::fs::write(format!("{keep}/{}.log", n.id), n.log_text())?;
        }
    }
    if nodes.iter_mut().any(|n| n.exited().is_some()) {
        bail!("a webmesh node exited during the run");
    }
    Ok(())
}
