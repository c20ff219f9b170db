//! Single-node `v1.Node/Apply` throughput and latency, fsync on, through the real gRPC
//! API of a real `webmesh` process. Prints a Markdown table.
//!
//!   cargo build --release --bins && target/release/apply-bench [SECONDS] [VALUE_BYTES]

use std::time::{Duration, Instant};

use webmesh_api::v1::RaftLogEntry;
use webmesh_e2e::LocalNode;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let value_bytes: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let mut node = LocalNode::start(
        "bench-1",
        dir.path(),
        &["--bootstrap", "--no-wireguard", "--log-level", "warn"],
    )
    .await?;
    let value = "x".repeat(value_bytes);

    println!("Single-node Apply, fsync on, {value_bytes}-byte values, {secs} s per row");
    println!();
    println!("| concurrent clients | writes/s | p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for clients in [1usize, 8, 64] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut client = node.client().await?;
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let entry = RaftLogEntry {
                        r#type: 1,
                        key: format!("/bench/c{clients}/t{c}/{i}"),
                        value: value.clone(),
                        ttl: None,
                    };
                    let t = Instant::now();
                    let r = client.apply(entry).await?;
                    anyhow::ensure!(
                        r.get_ref().error.is_empty(),
                        "apply error: {}",
                        r.get_ref().error
                    );
                    lat.push(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let elapsed = start.elapsed();
        all.sort();
        println!(
            "| {clients} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            all.len() as f64 / elapsed.as_secs_f64(),
            percentile(&all, 0.50).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3,
            all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    node.stop(Duration::from_secs(10));
    Ok(())
}
