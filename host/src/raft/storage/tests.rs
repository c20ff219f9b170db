//! The storage's own tests, and openraft's conformance suite.

use std::collections::{BTreeMap, BTreeSet};

use openraft::testing::log_id;
use openraft::{EntryPayload, Membership};

use openraft::RaftSnapshotBuilder;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use tokio::sync::broadcast;

use super::super::types::Member;
use super::*;
use crate::store::ops::{ApplyOutcome, Batch, Change, Op, Proposal, now_ms};

fn machine() -> (
    tempfile::TempDir,
    StateMachine,
    broadcast::Receiver<StateEvent>,
) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let (tx, rx) = broadcast::channel(64);
    (dir, StateMachine::new(engine, tx), rx)
}

fn entry(index: u64, issued_at_ms: u64, ops: Vec<Op>) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Batch {
            proposals: vec![Proposal { issued_at_ms, ops }],
        }),
    }
}

/// The outcome of each entry's single proposal (empty for non-proposal entries).
async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Vec<ApplyOutcome> {
    let out = RaftStateMachine::apply(sm, entries).await.unwrap();
    out.into_iter()
        .map(|v| v.into_iter().next().unwrap_or_default())
        .collect()
}

fn put(key: &str, value: &str, ttl_ms: u64) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        ttl_ms,
    }
}

fn value(sm: &StateMachine, key: &str) -> Option<String> {
    sm.engine.get(key).unwrap().map(|e| e.value)
}

fn membership_entry(index: u64, voters: &[u64], learners: &[u64]) -> Entry {
    // Nodes outside the voter set are learners.
    let nodes: BTreeMap<u64, Member> = voters
        .iter()
        .chain(learners)
        .map(|&i| (i, Member::default()))
        .collect();
    let m = Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], nodes);
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Membership(m),
    }
}

#[tokio::test]
async fn only_voters_fsync_their_log() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let mut log = LogStore::new(engine.clone(), 7);
    assert!(log.syncs(), "unknown membership: sync");
    log.blocking_append([membership_entry(1, &[1], &[7])])
        .await
        .unwrap();
    assert!(!log.syncs(), "a learner does not");
    log.blocking_append([membership_entry(2, &[1, 7], &[])])
        .await
        .unwrap();
    assert!(log.syncs(), "promoted: it does");
    log.blocking_append([membership_entry(3, &[1], &[7])])
        .await
        .unwrap();
    assert!(!log.syncs());
    // Reopened: the last membership in the log decides.
    assert!(!LogStore::new(engine.clone(), 7).syncs());
    assert!(LogStore::new(engine.clone(), 1).syncs(), "node 1 votes");
    log.truncate(log_id(1, 1, 3)).await.unwrap();
    assert!(log.syncs(), "after a truncation, in doubt: sync");
}

/// The leader's own entries are reported at once and synced alongside replication;
/// a commit of them never passes `save_committed` (after which openraft applies) before
/// they are durable, and the transport may then announce it. A follower's entries are
/// synced before the callback, as ever.
#[tokio::test]
async fn a_leaders_commit_waits_for_its_own_copy_to_be_durable() {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{RaftLogReader, Vote};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let mut log = LogStore::new(engine.clone(), 1);
    let durable = log.durability();
    // Node 1 follows node 2 (term 1): entries of leader 2 are synced in the append.
    log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
    let of = |leader: u64, term: u64, index: u64| Entry {
        log_id: log_id(term, leader, index),
        payload: EntryPayload::Blank,
    };
    log.blocking_append([membership_entry(1, &[1, 2, 3], &[])])
        .await
        .unwrap();
    log.blocking_append([of(2, 1, 2)]).await.unwrap();
    assert_eq!(
        durable.unsynced(),
        0,
        "a follower's append is synced in place"
    );
    // Node 1 leads term 2: its own entries are written unsynced.
    log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    log.blocking_append([of(1, 2, 3), of(1, 2, 4)])
        .await
        .unwrap();
    assert_eq!(
        durable.unsynced(),
        4,
        "the leader's own entries are synced alongside"
    );
    log.save_committed(Some(log_id(2, 1, 4))).await.unwrap();
    assert!(
        durable.may_announce(4),
        "a commit passes save_committed only once the leader's copy is durable"
    );
    // Entries of our own earlier term, sent back by another leader, are a follower's.
    log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
    log.truncate(log_id(2, 1, 4)).await.unwrap();
    log.blocking_append([of(1, 2, 4), of(2, 3, 5)])
        .await
        .unwrap();
    assert_eq!(durable.unsynced(), 3, "cut back with the log, not raised");
    assert!(durable.may_announce(5));
    assert_eq!(
        log.try_get_log_entries(1..6).await.unwrap().len(),
        5,
        "every entry readable"
    );
}

#[tokio::test]
async fn put_and_delete() {
    let (_d, mut sm, mut events) = machine();
    let now = now_ms();
    let out = apply(
        &mut sm,
        vec![
            entry(1, now, vec![put("/a", "1", 0), put("/b", "2", 0)]),
            entry(2, now, vec![Op::Delete { key: "/a".into() }]),
        ],
    )
    .await;
    assert_eq!(out.len(), 2);
    assert_eq!(value(&sm, "/a"), None);
    assert_eq!(value(&sm, "/b").as_deref(), Some("2"));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 2);
    match events.recv().await.unwrap() {
        StateEvent::Applied { index, changes, .. } => {
            assert_eq!(index, 1);
            assert_eq!(changes.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    // Deleting what is not there changes nothing.
    let out = apply(
        &mut sm,
        vec![entry(3, now, vec![Op::Delete { key: "/zz".into() }])],
    )
    .await;
    assert!(out[0].changes.is_empty());
}

#[tokio::test]
async fn a_later_op_in_one_proposal_sees_an_earlier_one() {
    let (_d, mut sm, _) = machine();
    let now = now_ms();
    apply(
        &mut sm,
        vec![entry(
            1,
            now,
            vec![
                put("/k", "1", 0),
                Op::Delete { key: "/k".into() },
                put("/j", "x", 0),
            ],
        )],
    )
    .await;
    assert_eq!(value(&sm, "/k"), None);
    assert_eq!(value(&sm, "/j").as_deref(), Some("x"));
}

#[tokio::test]
async fn ttl_hides_then_sweeps_expired_keys() {
    let (_d, mut sm, _) = machine();
    let past = now_ms() - 10_000;
    // Issued 10 s ago with a 1 s TTL: expired already; the 1 h one is alive.
    apply(
        &mut sm,
        vec![entry(
            1,
            past,
            vec![put("/short", "v", 1_000), put("/long", "v", 3_600_000)],
        )],
    )
    .await;
    assert_eq!(
        value(&sm, "/short"),
        None,
        "expired keys are invisible at once"
    );
    assert_eq!(value(&sm, "/long").as_deref(), Some("v"));
    let expired = sm.engine.expired(now_ms(), 10).unwrap();
    assert_eq!(expired, vec![("/short".to_string(), past + 1_000)]);
    // The sweeper's Expire removes it from the state and the TTL index.
    let out = apply(
        &mut sm,
        vec![entry(
            2,
            now_ms(),
            vec![Op::Expire {
                key: "/short".into(),
                expires_at_ms: past + 1_000,
            }],
        )],
    )
    .await;
    assert_eq!(
        out[0].changes,
        vec![Change::Delete {
            key: "/short".into()
        }]
    );
    assert!(sm.engine.expired(now_ms(), 10).unwrap().is_empty());
    assert!(
        sm.engine
            .list("/")
            .unwrap()
            .iter()
            .all(|e| e.key != "/short")
    );
}

#[tokio::test]
async fn expire_spares_a_key_written_again() {
    let (_d, mut sm, _) = machine();
    let past = now_ms() - 10_000;
    apply(&mut sm, vec![entry(1, past, vec![put("/k", "old", 1_000)])]).await;
    apply(&mut sm, vec![entry(2, now_ms(), vec![put("/k", "new", 0)])]).await;
    apply(
        &mut sm,
        vec![entry(
            3,
            now_ms(),
            vec![Op::Expire {
                key: "/k".into(),
                expires_at_ms: past + 1_000,
            }],
        )],
    )
    .await;
    assert_eq!(value(&sm, "/k").as_deref(), Some("new"));
    assert!(
        sm.engine.expired(now_ms(), 10).unwrap().is_empty(),
        "old TTL index entry removed"
    );
}

#[tokio::test]
async fn reapplying_an_index_is_a_no_op() {
    let (_d, mut sm, _) = machine();
    let now = now_ms();
    apply(
        &mut sm,
        vec![
            entry(1, now, vec![put("/k", "1", 0)]),
            entry(2, now, vec![put("/k", "2", 0)]),
        ],
    )
    .await;
    // Replaying entry 1 (e.g. after a crash) must not roll /k back.
    let out = apply(&mut sm, vec![entry(1, now, vec![put("/k", "1", 0)])]).await;
    assert!(out[0].changes.is_empty());
    assert_eq!(value(&sm, "/k").as_deref(), Some("2"));
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 2);
}

#[tokio::test]
async fn snapshot_restores_into_a_fresh_machine() {
    let (_d, mut sm, _) = machine();
    let now = now_ms();
    let members = Membership::new(
        vec![BTreeSet::from([7])],
        BTreeMap::from([(
            7,
            Member {
                name: "n7".into(),
                raft_addr: "10.0.0.7:9443".into(),
                grpc_addr: "10.0.0.7:8443".into(),
            },
        )]),
    );
    apply(
        &mut sm,
        vec![
            Entry {
                log_id: log_id(1, 7, 1),
                payload: EntryPayload::Membership(members),
            },
            entry(2, now, vec![put("/a", "1", 0), put("/t", "ttl", 3_600_000)]),
            entry(3, now, vec![put("/b", "2", 0)]),
        ],
    )
    .await;
    let snap = sm.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 3);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);

    let (_d2, mut fresh, mut events) = machine();
    apply(&mut fresh, vec![entry(1, now, vec![put("/stale", "x", 0)])]).await;
    fresh
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert!(matches!(events.try_recv(), Ok(StateEvent::Applied { .. })));
    assert!(matches!(
        events.try_recv(),
        Ok(StateEvent::Reset { index: 3 })
    ));
    assert_eq!(value(&fresh, "/stale"), None, "restore replaces the state");
    assert_eq!(value(&fresh, "/a").as_deref(), Some("1"));
    assert_eq!(value(&fresh, "/b").as_deref(), Some("2"));
    let t = fresh.engine.get("/t").unwrap().unwrap();
    assert_eq!(
        t.expires_at_ms,
        now + 3_600_000,
        "TTLs survive the round trip"
    );
    let (applied, membership) = fresh.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 3);
    assert_eq!(membership.membership().get_node(&7).unwrap().name, "n7");
    // And the restored machine exports the same state again.
    let (_, again) = fresh.export().unwrap();
    let a = Engine::decode_snapshot(&again).unwrap();
    let (_, orig) = sm.export().unwrap();
    let o = Engine::decode_snapshot(&orig).unwrap();
    assert_eq!(a.entries, o.entries);
    assert_eq!(a.last_log_index, o.last_log_index);
}

#[tokio::test]
async fn register_node_allocates_unique_stable_addresses() {
    let (_d, mut sm, _) = machine();
    let now = now_ms();
    let settings = vec![
        put(crate::mesh::keys::MESH_IPV4, "10.9.0.0/29", 0),
        put(crate::mesh::keys::MESH_IPV6, "fd00:9::/48", 0),
    ];
    let reg = |id: &str| Op::RegisterNode {
        node_json: format!(r#"{{"id":"{id}","publicKey":"k{id}"}}"#),
        assign_ipv4: true,
    };
    let out = apply(
        &mut sm,
        vec![
            entry(1, now, settings),
            entry(2, now, vec![reg("a"), reg("b")]),
            entry(3, now, vec![reg("a")]),
        ],
    )
    .await;
    let node = |i: usize| -> webmesh_api::v1::MeshNode {
        serde_json::from_str(out[i].value.as_deref().unwrap()).unwrap()
    };
    // One proposal's second registration already sees the first.
    assert_eq!(node(1).private_ipv4, "10.9.0.2/32");
    assert_eq!(node(1).private_ipv6, "fd00:9:0:2::/64");
    // Re-registering "a" keeps its addresses.
    assert_eq!(node(2).private_ipv4, "10.9.0.1/32");
    assert_eq!(node(2).private_ipv6, "fd00:9:0:1::/64");
    // A caller-chosen duplicate address is refused, changing nothing.
    let dup = Op::RegisterNode {
        node_json: r#"{"id":"c","privateIpv4":"10.9.0.1/32"}"#.into(),
        assign_ipv4: true,
    };
    let out = apply(&mut sm, vec![entry(4, now, vec![dup])]).await;
    assert!(
        out[0]
            .error
            .as_deref()
            .unwrap()
            .contains("already belongs to node a")
    );
    assert!(sm.engine.get("/registry/nodes/c").unwrap().is_none());
}

/// Fresh storage for openraft's conformance suite; the temp dir lives as long as it.
struct Builder;

impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
    for Builder
{
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SErr> {
        let dir = tempfile::tempdir().map_err(write_err)?;
        let engine = Engine::open(dir.path()).map_err(write_err)?;
        let (events, _) = tokio::sync::broadcast::channel(16);
        Ok((
            dir,
            LogStore::new(engine.clone(), 1),
            StateMachine::new(engine, events),
        ))
    }
}

/// openraft's storage conformance suite against the RocksDB log store and state
/// machine: the contract openraft relies on (logs, votes, purges, snapshots, membership).
#[test]
fn openraft_storage_suite() {
    openraft::testing::Suite::test_all(Builder).expect("the storage meets openraft's contract");
}
