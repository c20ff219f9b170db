//! The leader's own fsync alongside replication, as etcd does, within openraft 0.9.
//!
//! openraft 0.9 waits for the leader's append to be flushed before it replicates, so a
//! lone write paid the leader's fsync and then a follower's, one after the other. Here
//! the leader writes its own new entries without syncing, reports them flushed at once
//! (openraft replicates right away), and syncs them in the background. What keeps every
//! acknowledged write durable on a majority is that nothing may act on a commit until
//! the leader's copy is durable too:
//! - the state machine applies (and so answers clients and readers) only committed
//!   entries, and `LogStore::save_committed`, which openraft awaits before it applies,
//!   waits for this node's durability first;
//! - followers learn a commit only from AppendEntries, and the transport holds back a
//!   commit index the leader's log does not yet hold durably (`Durability::commit_to_send`).
//!
//! A commit counted with the leader's unsynced copy is thus invisible until that copy is
//! synced; if the leader loses power first, the entry was never acknowledged, applied
//! or announced anywhere, and Raft may overwrite it as any uncommitted entry. Entries a
//! node takes as a follower are synced before it answers, as before.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::store::engine::Engine;

#[derive(Debug, Clone, Default)]
struct State {
    /// The highest index the leader wrote without syncing (0: none).
    unsynced: u64,
    /// Every index up to this one is durable.
    durable: u64,
    /// Bumped by a truncation: a sync that started before it proves nothing after.
    epoch: u64,
    /// A failed sync: the log can no longer be trusted to be on disk; Raft stops.
    failed: Option<Arc<str>>,
}

impl State {
    /// The index up to which `upto` needs a sync still (none if 0).
    fn owed(&self, upto: u64) -> u64 {
        let need = upto.min(self.unsynced);
        if need > self.durable { need } else { 0 }
    }
}

/// Shared by the log store and the transport of one node.
#[derive(Clone)]
pub struct Durability {
    state: Arc<watch::Sender<State>>,
    kick: mpsc::UnboundedSender<Engine>,
}

impl Durability {
    /// A handle and the requests of its syncer ([`Durability::run_syncer`]).
    pub fn new() -> (Durability, mpsc::UnboundedReceiver<Engine>) {
        let (kick, rx) = mpsc::unbounded_channel();
        let d = Durability {
            state: Arc::new(watch::Sender::new(State::default())),
            kick,
        };
        (d, rx)
    }

    /// The leader wrote up to `index` without syncing: sync it soon.
    pub fn written_unsynced(&self, index: u64, engine: &Engine) {
        self.state
            .send_modify(|s| s.unsynced = s.unsynced.max(index));
        let _ = self.kick.send(engine.clone());
    }

    /// A synced write of up to `index` (and of everything written before it).
    pub fn synced(&self, index: u64) {
        self.state.send_if_modified(|s| {
            let changed = index > s.durable;
            s.durable = s.durable.max(index);
            changed
        });
    }

    /// The log was cut back to before `from`.
    pub fn truncated(&self, from: u64) {
        let last = from.saturating_sub(1);
        self.state.send_modify(|s| {
            s.unsynced = s.unsynced.min(last);
            s.durable = s.durable.min(last);
            s.epoch += 1;
        });
    }

    /// Waits until every index up to `upto` this node wrote is durable.
    pub async fn wait(&self, upto: u64) -> Result<(), String> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| s.failed.is_some() || s.owed(upto) == 0)
            .await
            .map_err(|_| "the log store stopped".to_string())?;
        match &s.failed {
            Some(e) => Err(format!("the Raft log could not be synced: {e}")),
            None => Ok(()),
        }
    }

    /// The highest index the leader wrote without syncing.
    pub fn unsynced(&self) -> u64 {
        self.state.borrow().unsynced
    }

    /// Whether a commit index of `upto` may be told to followers now.
    pub fn may_announce(&self, upto: u64) -> bool {
        let s = self.state.borrow();
        s.failed.is_none() && s.owed(upto) == 0
    }

    /// Runs the syncs the leader's unsynced writes ask for; several requests that
    /// arrive during one sync are served by the next.
    pub async fn run_syncer(self, mut kicks: mpsc::UnboundedReceiver<Engine>) {
        // The channel closes when the log store and transport are gone; the loop holds
        // no store in between.
        let weak = Arc::downgrade(&self.state);
        drop(self);
        while let Some(mut engine) = kicks.recv().await {
            while let Ok(e) = kicks.try_recv() {
                engine = e;
            }
            // Sync until a sync covers what was written before it began (a truncation
            // meanwhile voids the one under way).
            loop {
                let Some(state) = weak.upgrade() else { return };
                let (upto, epoch) = {
                    let s = state.borrow();
                    (s.unsynced, s.epoch)
                };
                drop(state);
                let (back, res) = match tokio::task::spawn_blocking(move || {
                    let r = engine.sync();
                    (engine, r)
                })
                .await
                {
                    Ok((engine, r)) => (Some(engine), r.map_err(|e| e.to_string())),
                    Err(e) => (None, Err(e.to_string())),
                };
                let Some(state) = weak.upgrade() else { return };
                if let Err(e) = res {
                    tracing::error!(error = %e, "cannot sync the Raft log: this node stops taking writes");
                    state.send_modify(|s| s.failed = Some(e.into()));
                    return;
                }
                let done = state.send_if_modified(|s| {
                    let current = s.epoch == epoch;
                    if current && upto > s.durable {
                        s.durable = upto;
                        return true;
                    }
                    false
                });
                let again = !done && state.borrow().owed(u64::MAX) > 0;
                match back {
                    Some(e) if again => engine = e,
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_leader_wrote_unsynced_is_owed() {
        let mut s = State::default();
        // A follower (or learner): nothing written unsynced, nothing to wait for.
        assert_eq!(s.owed(100), 0);
        s.unsynced = 10;
        assert_eq!(s.owed(5), 5);
        assert_eq!(
            s.owed(100),
            10,
            "indexes beyond the leader's writes are not ours"
        );
        s.durable = 7;
        assert_eq!(s.owed(7), 0);
        assert_eq!(s.owed(8), 8);
        s.durable = 10;
        assert_eq!(s.owed(100), 0);
    }

    #[tokio::test]
    async fn a_truncation_voids_a_sync_in_flight_and_lowers_what_is_durable() {
        let (d, _rx) = Durability::new();
        d.state.send_modify(|s| {
            s.unsynced = 20;
            s.durable = 20;
        });
        d.truncated(15);
        let s = d.state.borrow().clone();
        assert_eq!((s.unsynced, s.durable, s.epoch), (14, 14, 1));
        // Synced writes raise it again; waiting on what is durable returns at once.
        d.synced(18);
        assert!(d.may_announce(18));
        d.wait(18).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_waiters() {
        let (d, _rx) = Durability::new();
        d.state.send_modify(|s| s.unsynced = 3);
        assert!(!d.may_announce(3));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait(3).await })
        };
        d.state.send_modify(|s| s.failed = Some("EIO".into()));
        let err = waiter.await.unwrap().unwrap_err();
        assert!(err.contains("EIO"), "{err}");
        assert!(!d.may_announce(1));
    }
}
