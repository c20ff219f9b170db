//! Linearizability under faults. Three voters in namespaces; clients write and read a
//! few keys through the API (writes with `Node.Apply` through any voter, forwarded to
//! the leader; reads with `Node.Snapshot` asked of the leader, a linearizable read) while
//! a nemesis kills the leader with SIGKILL, pauses a voter for longer than an election,
//! cuts a follower off, and cuts the leader off; at the end the whole cluster is killed
//! and restarted, and every key read once more. The history (calls, returns, results)
//! must be linearizable (`webmesh_e2e::linearizability`), which covers "no acknowledged
//! write lost" too. One round of each fault in CI; `WEBMESH_NEMESIS_SECS=600` runs
//! rounds for that long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use prost::Message;
use tokio::sync::Mutex;
use webmesh_api::internal::StateSnapshot;
use webmesh_api::v1::{RaftLogEntry, SnapshotRequest};
use webmesh_e2e::linearizability::{Kind, Op, check};
use webmesh_e2e::netns::TestNet;
use webmesh_e2e::wait_for;

const VOTERS: [&str; 3] = ["h1", "h2", "h3"];
const KEYS: usize = 3;
const CLIENTS: usize = 6;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn key(k: usize) -> String {
    format!("/nemesis/k{k}")
}

/// The leader, once all three are voters.
async fn leader(net: &TestNet) -> Option<String> {
    net.voters_leader(&VOTERS, false).await
}

/// Any node's idea of who leads (a survivor's, while one is down).
async fn current_leader(net: &TestNet) -> Option<String> {
    for id in VOTERS {
        if let Ok(s) = net.hosts[id].status().await
            && !s.current_leader.is_empty()
        {
            return Some(s.current_leader);
        }
    }
    None
}

type Client = webmesh_api::v1::node_client::NodeClient<tonic::transport::Channel>;

/// A linearizable read of every key through `client`'s node (forwarded to the leader).
async fn read_all(mut client: Client) -> Result<Vec<Option<String>>> {
    let mut req = tonic::Request::new(SnapshotRequest {});
    req.set_timeout(CALL_TIMEOUT);
    req.metadata_mut()
        .insert("x-webmesh-prefer-leader", "true".parse()?);
    let snap = client.snapshot(req).await?.into_inner();
    let state = StateSnapshot::decode(snap.snapshot.as_slice())?;
    Ok((0..KEYS)
        .map(|k| {
            state
                .entries
                .iter()
                .find(|e| e.key == key(k))
                .map(|e| e.value.clone())
        })
        .collect())
}

struct Clock(Instant);
impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// One client: alternately writes a fresh value to a key and reads all keys, through
/// voter `via`, until `stop`.
async fn client(
    node: Client,
    n: usize,
    clock: Arc<Clock>,
    history: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let call = clock.now();
        if i % 2 == 1 {
            let k = (n + i) % KEYS;
            let value = format!("c{n}-{i}");
            let res = async {
                let mut c = node.clone();
                let mut req = tonic::Request::new(RaftLogEntry {
                    r#type: 1,
                    key: key(k),
                    value: value.clone(),
                    ttl: None,
                });
                req.set_timeout(CALL_TIMEOUT);
                anyhow::Ok(c.apply(req).await?.into_inner())
            }
            .await;
            let ret = match res {
                Ok(r) if r.error.is_empty() => Some(clock.now()),
                // Refused by the state machine: it never took effect.
                Ok(_) => continue,
                // Timed out, Unavailable, node down: it may or may not have.
                Err(_) => None,
            };
            history.lock().await.push(Op {
                key: key(k),
                kind: Kind::Write(value),
                call,
                ret,
            });
        } else {
            let res = read_all(node.clone()).await;
            if let Ok(values) = res {
                let ret = clock.now();
                let mut h = history.lock().await;
                for (k, v) in values.into_iter().enumerate() {
                    h.push(Op {
                        key: key(k),
                        kind: Kind::Read(v),
                        call,
                        ret: Some(ret),
                    });
                }
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_kills_pauses_and_partitions_are_linearizable() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &[]).await?;
    net.join(&["h2", "h3"], "h1", true, &[]).await?;
    net.promote("h1", &["h2", "h3"]).await?;
    net.bind_admin("h1", &["h2", "h3"])?;
    wait_for("3 voters", Duration::from_secs(60), || leader(&net))
        .await
        .with_context(|| net.logs())?;
    let run_for = std::env::var("WEBMESH_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);

    let clock = Arc::new(Clock(Instant::now()));
    let history = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        // Each client talks to one voter's admin socket (it reconnects by itself).
        let node = net.hosts[VOTERS[n % VOTERS.len()]].client().await?;
        clients.push(tokio::spawn(client(
            node,
            n,
            clock.clone(),
            history.clone(),
            stop.clone(),
        )));
    }

    // The nemesis: rounds of each fault, with quiet time in between.
    let started = Instant::now();
    let mut faults = Vec::new();
    for round in 0.. {
        for fault in [
            "kill -9 the leader",
            "pause a follower",
            "cut a follower off",
            "cut the leader off",
        ] {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let leader = wait_for("a leader", Duration::from_secs(30), || leader(&net))
                .await
                .with_context(|| net.logs())?;
            // The followers take turns.
            let follower = VOTERS
                .iter()
                .filter(|v| **v != leader)
                .nth(round % 2)
                .expect("two followers")
                .to_string();
            match fault {
                "kill -9 the leader" => net.host(&leader).kill9(),
                "pause a follower" => net.hosts[&follower].pause(true)?,
                "cut a follower off" => net.cut_off(&follower)?,
                _ => net.cut_off(&leader)?,
            }
            // Longer than an election (0.6-0.9 s after a 0.9 s lease).
            tokio::time::sleep(Duration::from_secs(3)).await;
            match fault {
                "kill -9 the leader" => net.host(&leader).start()?,
                "pause a follower" => net.hosts[&follower].pause(false)?,
                "cut a follower off" => net.heal(&follower)?,
                _ => net.heal(&leader)?,
            }
            faults.push(format!(
                "{fault} ({})",
                if fault.contains("leader") {
                    &leader
                } else {
                    &follower
                }
            ));
        }
        if run_for.is_none_or(|d| started.elapsed() >= d) {
            break;
        }
    }
    // Writes go on a while after the last heal, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }

    // The whole cluster dies at once and comes back: nothing acknowledged is lost.
    for id in VOTERS {
        net.host(id).kill9();
    }
    faults.push("kill -9 all three, restart".into());
    for id in VOTERS {
        net.host(id).start()?;
    }
    wait_for(
        "a leader after the full restart",
        Duration::from_secs(60),
        || current_leader(&net),
    )
    .await
    .with_context(|| net.logs())?;
    let call = clock.now();
    let values = wait_for("a final read", Duration::from_secs(60), || async {
        async { read_all(net.hosts["h2"].client().await?).await }
            .await
            .ok()
    })
    .await
    .with_context(|| net.logs())?;
    let ret = clock.now();
    let mut history = history.lock().await.clone();
    for (k, v) in values.into_iter().enumerate() {
        history.push(Op {
            key: key(k),
            kind: Kind::Read(v),
            call,
            ret: Some(ret),
        });
    }

    let writes = history
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)))
        .count();
    let acked = history
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)) && o.ret.is_some())
        .count();
    let reads = history.len() - writes;
    println!(
        "history: {} operations ({writes} writes, {acked} acknowledged; {reads} reads), faults: {}",
        history.len(),
        faults.join(", ")
    );
    // Not vacuous: the clients got through between the faults.
    ensure!(
        acked >= 30 && reads >= 30,
        "too little got through: {acked} writes, {reads} reads"
    );
    let checking = Instant::now();
    let verdict = check(&history);
    println!(
        "checked in {:?}; anomalies: {}",
        checking.elapsed(),
        match &verdict {
            Ok(()) => "0".to_string(),
            Err(e) => e.clone(),
        }
    );
    verdict.map_err(|e| anyhow::anyhow!("not linearizable: {e}"))?;

    // The checker is not vacuous on this history: one stale read added after the end
    // (an acknowledged value that the final read shows was overwritten) is caught.
    let last = history.last().expect("the final read").clone();
    if let Kind::Read(Some(now)) = &last.kind {
        let stale = history.iter().find_map(|o| match &o.kind {
            Kind::Write(v) if o.key == last.key && o.ret.is_some() && v != now => Some(v.clone()),
            _ => None,
        });
        if let Some(stale) = stale {
            let end = clock.now();
            history.push(Op {
                key: last.key.clone(),
                kind: Kind::Read(Some(stale)),
                call: end,
                ret: Some(end + 1),
            });
            ensure!(check(&history).is_err(), "a stale read went unnoticed");
        }
    }
    Ok(())
}
