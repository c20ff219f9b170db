//! STORE and WATCH duties: each plugin is fed by its own task from the state events,
//! so a slow or dead plugin never holds up Raft — it falls behind, and catches up
//! (a snapshot for STORE) when it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};
use webmesh_api::v1::{self, MeshNode, WatchEvent};

use super::PluginHandle;
use crate::mesh::keys;
use crate::raft::RaftNode;
use crate::raft::storage::StateEvent;
use crate::store::ops::{Change, now_ms};

/// Feeds a STORE plugin: a snapshot first, then every committed change in order.
/// After a failure or when it fell behind, it starts over from a snapshot.
pub fn spawn_store(plugin: Arc<PluginHandle>, raft: RaftNode) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut retry = Duration::from_millis(200);
        loop {
            match feed_store(&plugin, &raft).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(plugin = %plugin.name, error = %e, retry_in = ?retry, "storage plugin out of sync; will restore it from a snapshot");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            }
        }
    })
}

/// Ok only when the node's events end (shutdown).
async fn feed_store(plugin: &PluginHandle, raft: &RaftNode) -> Result<(), String> {
    // Subscribe before the snapshot: nothing committed after it is missed.
    let mut events = raft.subscribe();
    let sm = raft.state_machine.clone();
    let (meta, data) =
        tokio::task::spawn_blocking(move || sm.export().map_err(|e| format!("snapshot: {e}")))
            .await
            .map_err(|e| e.to_string())??;
    let (term, mut last) = meta
        .last_log_id
        .map(|l| (l.leader_id.term, l.index))
        .unwrap_or((0, 0));
    plugin
        .restore(v1::DataSnapshot {
            term,
            index: last,
            data,
        })
        .await
        .map_err(|s| s.message().to_string())?;
    info!(plugin = %plugin.name, index = last, "storage plugin restored from a snapshot");
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Err(format!("fell {n} events behind"));
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        match ev {
            StateEvent::Reset { index } => {
                return Err(format!("the state was replaced by a snapshot at {index}"));
            }
            StateEvent::Applied {
                index,
                term,
                changes,
            } => {
                if index <= last {
                    continue;
                }
                let now = now_ms();
                for c in changes.iter() {
                    let resp = plugin
                        .store(v1::StoreLogRequest {
                            term,
                            index,
                            log: Some(c.to_entry(now)),
                        })
                        .await
                        .map_err(|s| s.message().to_string())?;
                    if !resp.error.is_empty() {
                        return Err(format!("entry {index}: {}", resp.error));
                    }
                }
                last = index;
            }
        }
    }
}

/// Counters of a WATCH plugin's queue (reported in its log lines).
#[derive(Default)]
struct WatchStats {
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// What the watch dispatcher knows of the nodes, to tell joins from updates.
#[derive(Default)]
struct Known {
    nodes: HashMap<String, MeshNode>,
    leader: String,
}

/// Watch events from one batch of changes: a node record that appears is a join, one
/// that goes is a leave (with the record it had).
fn node_events(known: &mut HashMap<String, MeshNode>, changes: &[Change]) -> Vec<v1::Event> {
    let mut out = Vec::new();
    for c in changes {
        let Some(id) = c.key().strip_prefix(keys::NODES) else {
            continue;
        };
        match c {
            Change::Put { value, .. } => {
                let Ok(node) = serde_json::from_str::<MeshNode>(value) else {
                    continue;
                };
                if known.insert(id.to_string(), node.clone()).is_none() {
                    out.push(v1::Event {
                        r#type: WatchEvent::NodeJoin as i32,
                        node: Some(node),
                    });
                }
            }
            Change::Delete { .. } => {
                if let Some(node) = known.remove(id) {
                    out.push(v1::Event {
                        r#type: WatchEvent::NodeLeave as i32,
                        node: Some(node),
                    });
                }
            }
        }
    }
    out
}

/// Queue length per WATCH plugin: beyond it, events are dropped (and counted).
const WATCH_QUEUE: usize = 1024;

/// Feeds WATCH plugins: node join and leave from the state, leader changes from Raft.
pub fn spawn_watch(
    plugins: Vec<Arc<PluginHandle>>,
    raft: RaftNode,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut queues = Vec::new();
    for p in plugins {
        let (tx, rx) = mpsc::channel::<v1::Event>(WATCH_QUEUE);
        let stats = Arc::new(WatchStats::default());
        queues.push((p.name.clone(), tx, stats.clone()));
        tasks.push(tokio::spawn(emit_loop(p, rx, stats)));
    }
    if queues.is_empty() {
        return tasks;
    }
    let mut events = raft.subscribe();
    let mut metrics = raft.watch_metrics();
    let mut known = Known::default();
    if let Ok(entries) = raft.engine.list(keys::NODES) {
        for e in entries {
            if let Ok(n) = serde_json::from_str::<MeshNode>(&e.value) {
                known.nodes.insert(n.id.clone(), n);
            }
        }
    }
    known.leader = raft.leader().map(|l| l.name).unwrap_or_default();
    tasks.push(tokio::spawn(async move {
        let send = |ev: v1::Event| {
            debug!(
                event = ?WatchEvent::try_from(ev.r#type).unwrap_or(WatchEvent::Unknown),
                node = %ev.node.as_ref().map(|n| n.id.as_str()).unwrap_or(""),
                "watch event"
            );
            for (name, tx, stats) in &queues {
                if tx.try_send(ev.clone()).is_err() {
                    let n = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(plugin = %name, dropped = n, "watch queue full; event dropped");
                }
            }
        };
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(StateEvent::Applied { changes, .. }) => {
                        for e in node_events(&mut known.nodes, &changes) {
                            send(e);
                        }
                    }
                    Ok(StateEvent::Reset { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Re-learn the nodes; changes in between are reported as a diff.
                        let mut fresh = HashMap::new();
                        if let Ok(entries) = raft.engine.list(keys::NODES) {
                            for e in entries {
                                if let Ok(n) = serde_json::from_str::<MeshNode>(&e.value) {
                                    fresh.insert(n.id.clone(), n);
                                }
                            }
                        }
                        let mut changes = Vec::new();
                        for id in known.nodes.keys() {
                            if !fresh.contains_key(id) {
                                changes.push(Change::Delete { key: keys::node(id) });
                            }
                        }
                        for (id, n) in &fresh {
                            if !known.nodes.contains_key(id) {
                                changes.push(Change::Put {
                                    key: keys::node(id),
                                    value: serde_json::to_string(n).unwrap_or_default(),
                                    expires_at_ms: 0,
                                });
                            }
                        }
                        for e in node_events(&mut known.nodes, &changes) {
                            send(e);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let leader = raft.leader().map(|l| l.name).unwrap_or_default();
                    if !leader.is_empty() && leader != known.leader {
                        known.leader = leader.clone();
                        let node = known.nodes.get(&leader).cloned().unwrap_or(MeshNode {
                            id: leader,
                            ..Default::default()
                        });
                        send(v1::Event {
                            r#type: WatchEvent::LeaderChange as i32,
                            node: Some(node),
                        });
                    }
                }
            }
        }
    }));
    tasks
}

/// Delivers queued events to one plugin: a few tries each, then the event is dropped
/// and counted (the queue must keep moving).
async fn emit_loop(
    plugin: Arc<PluginHandle>,
    mut rx: mpsc::Receiver<v1::Event>,
    stats: Arc<WatchStats>,
) {
    while let Some(ev) = rx.recv().await {
        let mut delay = Duration::from_millis(100);
        let mut delivered = false;
        for attempt in 1..=4 {
            match plugin.emit(ev.clone()).await {
                Ok(()) => {
                    debug!(plugin = %plugin.name, attempt, "event emitted");
                    delivered = true;
                    break;
                }
                Err(e) => {
                    debug!(plugin = %plugin.name, attempt, error = %e, "emit failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        if delivered {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            let n = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(plugin = %plugin.name, dropped = n, "watch event dropped after 4 tries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str) -> Change {
        Change::Put {
            key: keys::node(id),
            value: serde_json::to_string(&MeshNode {
                id: id.into(),
                ..Default::default()
            })
            .unwrap(),
            expires_at_ms: 0,
        }
    }

    #[test]
    fn a_new_record_is_a_join_an_update_is_not_a_removal_is_a_leave() {
        let mut known = HashMap::new();
        let evs = node_events(
            &mut known,
            &[
                put("a"),
                put("b"),
                Change::Put {
                    key: "/registry/edges/a-b".into(),
                    value: "{}".into(),
                    expires_at_ms: 0,
                },
            ],
        );
        let kinds: Vec<_> = evs
            .iter()
            .map(|e| (e.r#type, e.node.as_ref().unwrap().id.clone()))
            .collect();
        let join = WatchEvent::NodeJoin as i32;
        assert_eq!(kinds, vec![(join, "a".into()), (join, "b".into())]);
        assert!(node_events(&mut known, &[put("a")]).is_empty());
        let evs = node_events(
            &mut known,
            &[Change::Delete {
                key: keys::node("a"),
            }],
        );
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].r#type, WatchEvent::NodeLeave as i32);
        assert_eq!(evs[0].node.as_ref().unwrap().id, "a");
        assert!(
            node_events(
                &mut known,
                &[Change::Delete {
                    key: keys::node("zz")
                }]
            )
            .is_empty()
        );
    }
}
