//! The start decision, pure: what a node does at start-up given what its data dir
//! holds and what it was asked to do.

/// What the data dir and the settings say about this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Raft state exists in the data dir.
    pub initialized: bool,
    /// The replicated state holds this node's record.
    pub has_record: bool,
    /// `--bootstrap`.
    pub bootstrap: bool,
    /// `--join` or `--discover` addresses are set.
    pub can_join: bool,
}

/// How the node comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The data dir holds this node's mesh and its record: carry on.
    Resume,
    /// Create a mesh. `fresh`: Raft is not initialized yet; otherwise a previous
    /// bootstrap stopped before it wrote the mesh's objects, and this one finishes it.
    Bootstrap { fresh: bool },
    /// Join a mesh through the join or discovery addresses.
    Join,
    /// The data dir holds the Raft state of a mesh this node was removed from (it left,
    /// or an admin removed it): set that aside and join again, under the same ID and key.
    Rejoin,
}

/// Why the node refuses to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Raft state without this node's record, and no join address to come back by.
    LeftTheMesh,
    /// Nothing to resume and nothing to do.
    NothingToDo,
}

pub fn decide(f: Facts) -> Result<Mode, Refusal> {
    match (f.initialized, f.has_record) {
        (true, true) => Ok(Mode::Resume),
        (true, false) if f.bootstrap => Ok(Mode::Bootstrap { fresh: false }),
        (true, false) if f.can_join => Ok(Mode::Rejoin),
        (true, false) => Err(Refusal::LeftTheMesh),
        (false, _) if f.bootstrap => Ok(Mode::Bootstrap { fresh: true }),
        (false, _) if f.can_join => Ok(Mode::Join),
        (false, _) => Err(Refusal::NothingToDo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(initialized: bool, has_record: bool, bootstrap: bool, can_join: bool) -> Facts {
        Facts {
            initialized,
            has_record,
            bootstrap,
            can_join,
        }
    }

    #[test]
    fn every_combination_has_one_answer() {
        use Mode::*;
        let table = [
            // initialized, record, bootstrap, join => outcome
            ((true, true, false, false), Ok(Resume)),
            ((true, true, true, false), Ok(Resume)),
            ((true, true, false, true), Ok(Resume)),
            ((true, false, true, false), Ok(Bootstrap { fresh: false })),
            ((true, false, false, false), Err(Refusal::LeftTheMesh)),
            ((true, false, false, true), Ok(Rejoin)),
            ((false, false, true, false), Ok(Bootstrap { fresh: true })),
            ((false, false, true, true), Ok(Bootstrap { fresh: true })),
            ((false, false, false, true), Ok(Join)),
            ((false, false, false, false), Err(Refusal::NothingToDo)),
        ];
        for ((i, r, b, j), want) in table {
            assert_eq!(decide(facts(i, r, b, j)), want, "{i} {r} {b} {j}");
        }
    }
}
