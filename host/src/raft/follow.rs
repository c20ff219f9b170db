//! A decoded view of the mesh kept current from state events: what every follower of
//! the state (the peer manager, mesh DNS) needs, written once.

use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::{RaftNode, StateEvent};
use crate::mesh::view::{Changes, MeshView, Section};
use crate::store::views::load_view;

pub struct ViewFollower {
    pub view: MeshView,
    /// The Raft index the view reflects.
    pub index: u64,
    engine: crate::store::engine::Engine,
    state_machine: super::storage::StateMachine,
    events: broadcast::Receiver<StateEvent>,
    /// What changed since [`ViewFollower::take_changes`], for incremental consumers
    /// (`None`: no one asked, so nothing is kept).
    changes: Option<Changes>,
}

impl ViewFollower {
    /// Subscribes before reading, so no change falls between the read and the events.
    pub fn new(raft: &RaftNode) -> ViewFollower {
        let events = raft.subscribe();
        let view = load_view(&raft.engine);
        let index = raft.metrics().last_applied.map(|l| l.index).unwrap_or(0);
        ViewFollower {
            view,
            index,
            engine: raft.engine.clone(),
            state_machine: raft.state_machine.clone(),
            events,
            changes: None,
        }
    }

    /// What changed in the view since the last call (the first call: nothing; the view
    /// as loaded is the starting point). Changes are kept from the first call on.
    pub fn take_changes(&mut self) -> Changes {
        self.changes.replace(Changes::default()).unwrap_or_default()
    }

    /// Waits for state events and applies every one already queued. Returns whether a
    /// mesh object changed; `None` once Raft is gone. Cancel-safe: the only await is
    /// the first receive.
    pub async fn next(&mut self) -> Option<bool> {
        let first = self.events.recv().await;
        let changed = self.take(first)?;
        Some(self.catch_up()? || changed)
    }

    /// Applies every state event already queued, without waiting: the view then holds
    /// everything applied before the call. Returns whether a mesh object changed;
    /// `None` once Raft is gone.
    pub fn catch_up(&mut self) -> Option<bool> {
        let mut changed = false;
        loop {
            let ev = match self.events.try_recv() {
                Ok(e) => Ok(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Empty) => return Some(changed),
                Err(broadcast::error::TryRecvError::Closed) => return None,
            };
            changed |= self.take(ev)?;
        }
    }

    fn take(&mut self, ev: Result<StateEvent, broadcast::error::RecvError>) -> Option<bool> {
        let mut changed = false;
        match ev {
            Ok(StateEvent::Applied { index, changes, .. }) => {
                self.index = index;
                for c in changes.iter() {
                    if let Some(ch) = &mut self.changes {
                        ch.record(c.key());
                    }
                    match self.view.apply(c.key(), c.value()) {
                        Ok(Section::Other) => {}
                        Ok(_) => changed = true,
                        Err(e) => warn!(error = %e, "skipping an undecodable record"),
                    }
                }
            }
            Ok(StateEvent::Reset { index }) => {
                self.index = index;
                self.reload();
                changed = true;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "state events lagged; reloading");
                self.reload();
                self.index = (self.state_machine.applied_log_id())
                    .map(|l| l.index)
                    .unwrap_or(self.index);
                changed = true;
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
        Some(changed)
    }

    fn reload(&mut self) {
        self.view = load_view(&self.engine);
        if let Some(ch) = &mut self.changes {
            *ch = Changes {
                rebuild: true,
                ..Default::default()
            };
        }
    }
}
