//! What the state machine tells everything that follows the state.

use std::sync::Arc;

use crate::store::ops::Change;

/// A change to the replicated state, pushed to everything that follows it (peer
/// computation, plugins). `Reset` means the state was replaced by a snapshot: re-read it.
#[derive(Debug, Clone)]
pub enum StateEvent {
    Applied {
        index: u64,
        term: u64,
        changes: Arc<Vec<Change>>,
    },
    Reset {
        index: u64,
    },
}
