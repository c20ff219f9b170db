//! A node killed with SIGKILL at any moment keeps its identity, keys, addresses and
//! every acknowledged write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::Mutex;
use webmesh_api::internal::StateSnapshot;
use webmesh_api::v1::{GetStatusRequest, MeshNode, RaftLogEntry, SnapshotRequest};
use webmesh_e2e::LocalNode;

async fn state(node: &LocalNode) -> anyhow::Result<BTreeMap<String, String>> {
    let snap = node
        .client()
        .await?
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let s = StateSnapshot::decode(snap.snapshot.as_slice())?;
    Ok(s.entries.into_iter().map(|e| (e.key, e.value)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = LocalNode::new("durable-1", dir.path());
    node.extra_args = vec![
        "--bootstrap".into(),
        "--ipv4-network".into(),
        "10.42.0.0/16".into(),
    ];
    node.spawn()?;
    let before = node.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(before.id, "durable-1");
    let key_file = std::fs::read_to_string(node.data_dir.join("wireguard.key"))?;
    let self_before: MeshNode =
        serde_json::from_str(&state(&node).await?["/registry/nodes/durable-1"])?;
    let mesh_v6 = state(&node).await?["/registry/meshstate/ipv6-prefix"].clone();

    // Writers run until the node dies; the kill lands while writes are in flight.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = node.client().await?;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut client = client;
            for i in 0.. {
                let key = format!("/test/w{w}/k{i}");
                let value = format!("v{i}");
                let entry = RaftLogEntry {
                    r#type: 1,
                    key: key.clone(),
                    value: value.clone(),
                    ttl: None,
                };
                match client.apply(entry).await {
                    Ok(r) if r.get_ref().error.is_empty() => {
                        acked.lock().await.insert(key, value);
                    }
                    _ => break,
                }
            }
        }));
    }
    webmesh_e2e::wait_for("200 acknowledged writes", Duration::from_secs(60), || {
        let acked = acked.clone();
        async move { (acked.lock().await.len() >= 200).then_some(()) }
    })
    .await?;
    node.kill9();
    for w in writers {
        w.await?;
    }
    let acked = acked.lock().await.clone();

    node.spawn()?;
    let after = node.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(after.id, before.id, "same identity");
    let st = state(&node).await?;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| st.get(*k) != Some(v))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        std::fs::read_to_string(node.data_dir.join("wireguard.key"))?,
        key_file,
        "same key"
    );
    let self_after: MeshNode = serde_json::from_str(&st["/registry/nodes/durable-1"])?;
    assert_eq!(self_after.public_key, self_before.public_key);
    assert_eq!(
        self_after.private_ipv4, self_before.private_ipv4,
        "same IPv4"
    );
    assert_eq!(
        self_after.private_ipv6, self_before.private_ipv6,
        "same IPv6"
    );
    assert_eq!(
        st["/registry/meshstate/ipv6-prefix"], mesh_v6,
        "--bootstrap resumed, no second mesh"
    );
    let status = node
        .client()
        .await?
        .get_status(GetStatusRequest::default())
        .await?
        .into_inner();
    // Writes share log entries (group commit), so compare with the index before them.
    assert!(
        status.last_applied > before.last_applied,
        "{} <= {}",
        status.last_applied,
        before.last_applied
    );
    Ok(())
}

#[tokio::test]
async fn node_ids_are_bound_to_their_data_dir() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = LocalNode::new("owner", dir.path());
    node.extra_args = vec!["--bootstrap".into(), "--no-wireguard".into()];
    node.spawn()?;
    node.wait_ready(Duration::from_secs(60)).await?;
    node.stop(Duration::from_secs(10)).expect("stopped");
    // Same data dir, another ID: refused with one line that names the key.
    node.id = "intruder".into();
    node.spawn()?;
    let st = webmesh_e2e::wait_for("the refused start to exit", Duration::from_secs(30), || {
        let s = node.exited();
        async move { s }
    })
    .await?;
    assert!(!st.success());
    let log = node.log_text();
    assert!(
        log.contains("invalid node-id \"intruder\"") && log.contains("belongs to node \"owner\""),
        "{log}"
    );
    Ok(())
}

/// A tmpfs of `size` mounted on `dir` for the life of the value (lazily unmounted).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let opts = format!("size={size},mode=0700");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir)
            .status()?
            .success();
        anyhow::ensure!(ok, "mount a tmpfs on {}", dir.display());
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A bootstrap node `id` in `dir` on its own IPv4 network, started and ready.
async fn bootstrap_node(id: &str, dir: &std::path::Path, ipv4: &str) -> anyhow::Result<LocalNode> {
    let mut node = LocalNode::new(id, dir);
    node.extra_args = vec!["--bootstrap".into(), "--ipv4-network".into(), ipv4.into()];
    node.spawn()?;
    node.wait_ready(Duration::from_secs(60)).await?;
    Ok(node)
}

fn entry(key: &str) -> RaftLogEntry {
    RaftLogEntry {
        r#type: 1,
        key: key.into(),
        value: "v".into(),
        ttl: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_writes_with_a_clear_error_and_the_node_stays_up() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    // The data dir alone is on a small filesystem (the log stays outside it).
    let disk = Tmpfs::mount(&dir.path().join("full-1"), "160m")?;
    let mut node = bootstrap_node("full-1", dir.path(), "10.43.0.0/16").await?;
    let mut client = node.client().await?;
    client.apply(entry("/test/before")).await?;

    // Fill it to 32 MiB below the floor the node keeps for RocksDB.
    let filler = disk.0.join("filler");
    let fill = format!(
        "fallocate -l $(( $(df --output=avail -B1 {d} | tail -1) - 32*1024*1024 )) {f}",
        d = disk.0.display(),
        f = filler.display()
    );
    let ok = std::process::Command::new("sh")
        .args(["-c", &fill])
        .status()?
        .success();
    anyhow::ensure!(ok, "{fill}");
    let refusal = webmesh_e2e::wait_for(
        "writes refused for the full disk",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move { client.apply(entry("/test/full")).await.err() }
        },
    )
    .await?;
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("MiB free") && refusal.message().contains("full-1"),
        "names the data dir and its free space: {}",
        refusal.message()
    );
    // The node stays up: it answers, and a refused write leaves nothing behind.
    let again = client.apply(entry("/test/refused")).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::ResourceExhausted);
    assert!(node.exited().is_none(), "the node is still running");
    client.get_status(GetStatusRequest::default()).await?;
    assert!(!state(&node).await?.contains_key("/test/refused"));
    assert!(
        node.log_text()
            .contains("writes are refused until space is freed")
    );

    // Space freed: writes resume by themselves, and what was there before is intact.
    std::fs::remove_file(&filler)?;
    webmesh_e2e::wait_for("writes accepted again", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.apply(entry("/test/after")).await.ok() }
    })
    .await?;
    let st = state(&node).await?;
    assert!(st.contains_key("/test/before") && st.contains_key("/test/after"));
    node.kill9();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_log_tail_after_a_crash_is_never_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = bootstrap_node("torn-1", dir.path(), "10.44.0.0/16").await?;
    let mut client = node.client().await?;
    for i in 0..100 {
        let mut e = entry(&format!("/test/k{i:03}"));
        e.value = format!("value-{i}");
        client.apply(e).await?;
    }
    node.kill9();
    // The crash tore the write-ahead log's last bytes: garble them.
    let wal = std::fs::read_dir(node.data_dir.join("raft"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .ok_or_else(|| anyhow::anyhow!("no write-ahead log in the data dir"))?;
    let mut bytes = std::fs::read(&wal)?;
    anyhow::ensure!(
        bytes.len() > 512,
        "{} is {} bytes",
        wal.display(),
        bytes.len()
    );
    let n = bytes.len();
    for b in &mut bytes[n - 300..] {
        *b ^= 0x5a;
    }
    std::fs::write(&wal, &bytes)?;

    // It restarts, or refuses to; what it serves is never a garbled value.
    node.spawn()?;
    match node.wait_ready(Duration::from_secs(60)).await {
        Ok(_) => {
            let st = state(&node).await?;
            let mut kept = 0;
            for i in 0..100 {
                if let Some(v) = st.get(&format!("/test/k{i:03}")) {
                    assert_eq!(v, &format!("value-{i}"), "k{i:03}");
                    kept += 1;
                }
            }
            // A prefix of the writes survives, in order: no hole before a kept write.
            for i in 0..kept {
                assert!(
                    st.contains_key(&format!("/test/k{i:03}")),
                    "hole at k{i:03}"
                );
            }
            println!("restarted with {kept} of 100 writes after the torn tail");
            // And it still takes writes.
            node.client().await?.apply(entry("/test/after")).await?;
        }
        Err(e) => {
            assert!(node.exited().is_some(), "not ready, yet running: {e:#}");
            println!("refused to start: {}", node.log_text());
        }
    }
    Ok(())
}
