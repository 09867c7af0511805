//! Tests of the store, one rule or property each.

use super::snapshots::StoredSnapshot;
use super::*;
use crate::command::Command;
use openraft::{CommittedLeaderId, Membership};
use std::collections::BTreeMap;

fn serial_count(l: &LedgerState) -> usize {
    let mut n = 0;
    l.for_each_serial(&mut |_, _| n += 1).unwrap();
    n
}

/// The data of a snapshot, read as openraft sends it.
async fn bytes_of(snap: Snapshot<TypeConfig>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = snap.snapshot;
    f.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut data = Vec::new();
    f.read_to_end(&mut data).await.unwrap();
    data
}

/// `data` received into the store in `dir`, as openraft writes a snapshot it is sent.
async fn received(dir: &Path, data: &[u8]) -> Box<SnapshotFile> {
    use tokio::io::AsyncWriteExt;
    let mut f = SnapshotFile::incoming(&dir.join("snapshot")).unwrap();
    f.write_all(data).await.unwrap();
    f.shutdown().await.unwrap();
    Box::new(f)
}

fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(crate::types::Batch::new(commands)),
    }
}

#[tokio::test]
async fn ledger_survives_restart_and_a_checkpoint_holds_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let claim = Command::Claim {
        identity: "n1".into(),
        member: "a".into(),
        lease_until_ms: 100,
        seen_ms: 1,
        at_ms: 1,
    };
    let issue = Command::IssueCredential {
        identity: "n1".into(),
        member: "a".into(),
        serial: "0a".into(),
        fingerprint: "ff".into(),
        not_after: 9,
        at_ms: 2,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let membership = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], None)),
        };
        let e2 = entry(2, vec![claim.clone(), issue.clone()]);
        store
            .append_to_log(vec![membership.clone(), e2.clone()])
            .unwrap();
        let res = store
            .apply_to_state_machine(&[membership, e2])
            .await
            .unwrap();
        assert_eq!(res[1].results, vec![Applied::Ok, Applied::Ok]);
        // the same serial issued again later is rejected by the rules, through the store
        let again = Command::IssueCredential {
            identity: "n1".into(),
            member: "a".into(),
            serial: "0a".into(),
            fingerprint: "ff".into(),
            not_after: 9,
            at_ms: 3,
        };
        let dup = entry(3, vec![again]);
        let res = store.apply_to_state_machine(&[dup]).await.unwrap();
        assert!(matches!(res[0].results[0], Applied::Rejected(_)));
        store.checkpoint(&copy.path().join("raft")).unwrap();
        // a checkpoint goes only where nothing is yet
        assert!(store.checkpoint(&copy.path().join("raft")).is_err());
    }
    // the copy, opened as a store, is the ledger as it was
    {
        let copied = Store::open(&copy.path().join("raft")).unwrap();
        let (applied, _) = copied.last_applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        assert_eq!(serial_count(&copied.state().await.ledger), 1);
        assert_eq!(copied.log_entries(1..).unwrap().len(), 2);
    }
    let store = Store::open(dir.path()).unwrap();
    let (applied, membership) = store.last_applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(3));
    assert!(membership.membership().voter_ids().any(|id| id == 1));
    let sm = store.state().await;
    let rec = sm.ledger.record("n1").unwrap();
    assert_eq!(rec.credential.as_ref().unwrap().serial, "0a");
    assert_eq!(serial_count(&sm.ledger), 1);
    drop(sm);
    let logs = store.log_entries(1..).unwrap();
    assert_eq!(logs.len(), 2);
}

/// Batches of heartbeats alone do not rewrite the settings; the settings and loans a
/// batch before them changed, and the newest heartbeat, are all there after a restart.
#[tokio::test]
async fn settings_and_heartbeats_written_in_different_batches_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hb = |at_ms| Command::Heartbeat {
        member: "a".into(),
        at_ms,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let epoch = crate::ownership::Epoch {
            epoch: 1,
            members: vec!["a".into(), "b".into()],
            leader: Some("a".into()),
            leader_share_milli: 1000,
            at_ms: 1,
            ..Default::default()
        };
        let lend = Command::Lend {
            member: "a".into(),
            to: "b".into(),
            epoch: 1,
            identities: vec!["n1".into(), "n2".into()],
            start_by_ms: 10,
            until_ms: 60_000,
            at_ms: 2,
        };
        let entries = [
            entry(
                1,
                vec![
                    Command::SetRules {
                        rules: crate::state::LEDGER_RULES,
                        at_ms: 0,
                    },
                    Command::NewEpoch(epoch),
                    hb(1),
                ],
            ),
            entry(
                2,
                vec![
                    lend,
                    Command::SetPaused {
                        paused: true,
                        at_ms: 2,
                    },
                ],
            ),
            entry(3, vec![hb(3)]),
        ];
        for e in entries {
            let res = store.apply_to_state_machine(&[e]).await.unwrap();
            assert!(res[0].results.iter().all(|r| *r == Applied::Ok), "{res:?}");
        }
        let res = store.apply_to_state_machine(&[entry(4, vec![hb(4)])]).await;
        assert_eq!(res.unwrap()[0].results, vec![Applied::Ok]);
    }
    let store = Store::open(dir.path()).unwrap();
    let sm = store.state().await;
    assert_eq!(sm.ledger.heartbeats().get("a"), Some(&4));
    let settings = sm.ledger.settings();
    assert!(settings.paused);
    assert_eq!(settings.rules, crate::state::LEDGER_RULES);
    assert_eq!(settings.ownership.epoch(), 1);
    assert_eq!(settings.ownership.loans.len(), 2);
}

/// `Enroll` writes what `IssueCredential` and `Enrolled` do: the serial, kept across a
/// restart, and the record under its new state in the index and the counts.
#[tokio::test]
async fn an_enrollment_keeps_its_serial_and_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let claim = |id: &str| Command::Claim {
        identity: id.into(),
        member: "a".into(),
        lease_until_ms: 100,
        seen_ms: 1,
        at_ms: 1,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let e1 = entry(
            1,
            vec![
                Command::SetRules {
                    rules: crate::state::ENROLL_RULES,
                    at_ms: 0,
                },
                claim("n1"),
                enroll("n1", 2),
            ],
        );
        store.append_to_log(vec![e1.clone()]).unwrap();
        let res = store.apply_to_state_machine(&[e1]).await.unwrap();
        assert_eq!(res[0].results, vec![Applied::Ok; 3]);
    }
    let store = Store::open(dir.path()).unwrap();
    let sm = store.state().await;
    let rec = sm.ledger.record("n1").unwrap();
    assert_eq!(rec.state, crate::state::EnrollState::Enrolled);
    assert_eq!(rec.credential.as_ref().unwrap().serial, "0b");
    assert_eq!(serial_count(&sm.ledger), 1);
    let counts = sm.ledger.counts("a");
    use crate::state::EnrollState;
    assert_eq!(counts.by_state.get(&EnrollState::Enrolled), Some(&1));
    assert_eq!(
        counts
            .by_state
            .get(&EnrollState::Claimed)
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(counts.enrolled_by.get("a"), Some(&1));
    let enrolled = BTreeSet::from([EnrollState::Enrolled]);
    let filter = crate::state::Filter {
        states: &enrolled,
        by_state_only: true,
        keep: &|_| true,
    };
    let page = sm.ledger.page("", 10, true, filter);
    assert_eq!(page.matched, 1);
    assert_eq!(page.records.len(), 1);
    drop(sm);
    // the serial read back from disk is refused to another server
    let e2 = entry(2, vec![claim("n2"), enroll("n2", 3)]);
    let res = store.apply_to_state_machine(&[e2]).await.unwrap();
    assert!(matches!(
        res[0].results[1],
        Applied::Rejected(Rejection::SerialInUse { .. })
    ));
}

/// A serial issued by an earlier batch is only in the serials' memtable (a vector,
/// searched only when its Bloom filter lets a key through): it is found there and
/// refused to another server, and the index by state lists what its memtable holds.
#[tokio::test]
async fn a_serial_in_the_memtable_is_refused_to_another_server() {
    use crate::state::EnrollState;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rules = Command::SetRules {
        rules: crate::state::ENROLL_RULES,
        at_ms: 0,
    };
    let e1 = entry(1, vec![rules, claim("n1", 1), enroll("n1", 2)]);
    let res = store.apply_to_state_machine(&[e1]).await.unwrap();
    assert_eq!(res[0].results, vec![Applied::Ok; 3]);
    let e2 = entry(2, vec![claim("n2", 3), enroll("n2", 4)]);
    let res = store.apply_to_state_machine(&[e2]).await.unwrap();
    assert_eq!(res[0].results[0], Applied::Ok);
    assert!(matches!(
        res[0].results[1],
        Applied::Rejected(Rejection::SerialInUse { ref identity }) if identity == "n1"
    ));
    let mut listed = Vec::new();
    let states = BTreeSet::from([EnrollState::Enrolled, EnrollState::Claimed]);
    store
        .state()
        .await
        .ledger
        .for_each("", &states, &mut |r| {
            listed.push((r.identity.clone(), r.state));
            true
        })
        .unwrap();
    assert_eq!(
        listed,
        [
            ("n1".to_string(), EnrollState::Enrolled),
            ("n2".to_string(), EnrollState::Claimed)
        ]
    );
}

/// The column families of the builds before the log moved to segment files.
const EARLIER_CFS: [&str; 6] = [
    CF_LOGS,
    CF_META,
    CF_LEDGER,
    CF_SERIALS,
    CF_BY_STATE,
    CF_SM_META,
];

/// A log an earlier build wrote (in RocksDB, JSON entries and binary ones) is moved to
/// the segment files at the first start and reads as it was; what this build appends
/// follows it, and a second start finds nothing left to move.
#[tokio::test]
async fn a_log_an_earlier_build_kept_in_rocksdb_is_moved_to_segments_once() {
    let dir = tempfile::tempdir().unwrap();
    let old = entry(1, vec![Command::Rebalance { at_ms: 1 }]);
    let newer = entry(2, vec![Command::Rebalance { at_ms: 2 }]);
    {
        // the column families an earlier build had
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), EARLIER_CFS).unwrap();
        let logs = db.cf_handle(CF_LOGS).unwrap();
        db.put_cf(logs, index_key(1), serde_json::to_vec(&old).unwrap())
            .unwrap();
        db.put_cf(logs, index_key(2), codec::encode(&newer, true).unwrap())
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.log_entries(1..).unwrap(),
        vec![old.clone(), newer.clone()]
    );
    let logs = store.cf(CF_LOGS).unwrap();
    assert!(store
        .db
        .iterator_cf(logs, IteratorMode::Start)
        .next()
        .is_none());
    let third = entry(3, vec![Command::Rebalance { at_ms: 3 }]);
    store.append_to_log(vec![third.clone()]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.read_log(&(1..)).unwrap(), vec![old, newer, third]);
    let state = store.get_log_state().unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
    drop(store);

    // an earlier build, which names only its own column families, refuses the store
    let opts = Options::default();
    let err = DB::open_cf(&opts, dir.path(), EARLIER_CFS).unwrap_err();
    assert!(err.to_string().contains(CF_LOG_MOVED), "{err}");
}

/// A purge whose segments were not all deleted when the process ended (the purge point
/// is written first) is finished at start: the log reads from the purge point on.
#[tokio::test]
async fn a_purge_cut_short_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let cmd = |i| vec![Command::Rebalance { at_ms: i }];
    store
        .append_to_log((1..=6).map(|i| entry(i, cmd(i))).collect::<Vec<_>>())
        .unwrap();
    // as if the process ended right after the purge point was written
    store
        .put_json_synced(
            CF_META,
            KEY_PURGED,
            &LogId::new(CommittedLeaderId::new(1, 1), 4),
        )
        .unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let indexes = |v: Vec<Entry<TypeConfig>>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
    assert_eq!(indexes(store.read_log(&(1..)).unwrap()), vec![5, 6]);
    let state = store.get_log_state().unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
}

/// The entries kept in memory are the stored log's: after appends, a conflicting suffix
/// replaced and a purge, every read answers what the store holds.
#[tokio::test]
async fn entries_kept_in_memory_are_what_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let cmd = |i| vec![Command::Rebalance { at_ms: i }];
    store
        .append_to_log((1..=6).map(|i| entry(i, cmd(i))).collect::<Vec<_>>())
        .unwrap();
    let same = |store: &Arc<Store>, range: std::ops::Range<u64>| {
        let reader = store.clone();
        let stored = store.read_log(&range).unwrap();
        async move {
            let got = reader.log_entries(range.clone()).unwrap();
            assert_eq!(got, stored, "{range:?}");
            got.len()
        }
    };
    assert_eq!(same(&store, 1..7).await, 6);
    assert_eq!(same(&store, 3..5).await, 2);
    // a new leader's entry 5 replaces entries 5 and 6
    store
        .delete_conflict_logs_since(LogId::new(CommittedLeaderId::new(1, 1), 5))
        .unwrap();
    let mut other = entry(5, cmd(50));
    other.log_id = LogId::new(CommittedLeaderId::new(2, 2), 5);
    store.append_to_log(vec![other.clone()]).unwrap();
    assert_eq!(same(&store, 4..6).await, 2);
    let reader = store.clone();
    assert_eq!(reader.log_entries(5..6).unwrap(), vec![other]);
    assert_eq!(same(&store, 1..7).await, 5);
    store
        .purge_logs_upto(LogId::new(CommittedLeaderId::new(1, 1), 2))
        .unwrap();
    assert_eq!(same(&store, 1..6).await, 3);
    assert_eq!(same(&store, 3..6).await, 3);
}

/// State machine writes skip the WAL, so a process that ends without a flush leaves an
/// older state machine on disk; at start the stored snapshot, when newer, replaces it
/// (the log may be purged up to the snapshot, so applying again could not get there).
#[tokio::test]
async fn a_state_machine_older_than_the_snapshot_is_replaced_by_it_at_start() {
    for rules in [3, snapshot::FORMAT2_RULES] {
        restored_at_start(rules).await;
    }
}

/// `id` enrolled by member `a` with serial `0b`.
fn enroll(id: &str, at_ms: u64) -> Command {
    Command::Enroll {
        identity: id.into(),
        member: "a".into(),
        serial: "0b".into(),
        fingerprint: "ff".into(),
        not_after: 9,
        config_digest: "d".into(),
        facts: BTreeMap::new(),
        at_ms,
    }
}

fn claim(id: &str, at: u64) -> Command {
    Command::Claim {
        identity: id.into(),
        member: "a".into(),
        lease_until_ms: 100,
        seen_ms: at,
        at_ms: at,
    }
}

/// A store whose ledger applies `rules` with two claims (n1, n2) and a serial, applied.
async fn two_claims(dir: &Path, rules: u32) -> Arc<Store> {
    let store = Store::open(dir).unwrap();
    let entries = vec![
        entry(
            1,
            vec![Command::SetRules { rules, at_ms: 0 }, claim("n1", 1)],
        ),
        entry(
            2,
            vec![
                claim("n2", 2),
                Command::IssueCredential {
                    identity: "n2".into(),
                    member: "a".into(),
                    serial: "0b".into(),
                    fingerprint: "f".into(),
                    not_after: 1,
                    at_ms: 3,
                },
            ],
        ),
    ];
    store.append_to_log(entries.clone()).unwrap();
    store.apply_to_state_machine(&entries).await.unwrap();
    store
}

/// From rules 4 snapshots are built in format 2, before in format 1; either installs on
/// an empty member (one of the earlier build sends format 1 during an upgrade) and gives
/// the same ledger.
#[tokio::test]
async fn snapshots_of_either_format_install_as_the_same_ledger() {
    for (rules, format2) in [(3, false), (snapshot::FORMAT2_RULES, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = two_claims(dir.path(), rules).await;
        let snap = store.build_snapshot().await.unwrap();
        let meta = snap.meta.clone();
        let data = bytes_of(snap).await;
        assert_eq!(data.starts_with(snapshot::MAGIC), format2, "rules {rules}");
        let stats = store.last_snapshot().unwrap();
        assert_eq!(
            (stats.kind.as_str(), stats.index, stats.records),
            ("built", 2, 2)
        );
        let other = tempfile::tempdir().unwrap();
        let empty = Store::open(other.path()).unwrap();
        let incoming = received(other.path(), &data).await;
        empty.install_snapshot(&meta, incoming).await.unwrap();
        let (a, b) = (store.state().await, empty.state().await);
        assert_eq!(a.ledger.digest(), b.ledger.digest());
        assert_eq!(b.ledger.rules(), rules);
        assert_eq!(serial_count(&b.ledger), 1);
        assert_eq!(b.ledger.counts("a"), a.ledger.counts("a"));
        drop((a, b));
        // the installed snapshot is the new member's own current one, across a restart
        drop(empty);
        let again = Store::open(other.path()).unwrap();
        let current = again.get_current_snapshot().unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(bytes_of(current).await, data);
        assert_eq!(
            again.state().await.ledger.digest(),
            store.state().await.ledger.digest()
        );
    }
}

/// The digest and counts are written with the records they cover and read back at
/// start, so a restarted member does not read a million records before it can answer;
/// a store an earlier build wrote (no counts, no index by state) gets them at its first
/// start.
#[tokio::test]
async fn the_kept_digest_and_counts_are_read_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_claims(dir.path(), 4).await;
    let more = vec![entry(3, vec![claim("n3", 3)])];
    store.append_to_log(more.clone()).unwrap();
    store.apply_to_state_machine(&more).await.unwrap();
    let want = store.state().await.ledger.digest();
    let counts = store.state().await.ledger.counts("a");
    assert_eq!(counts.claimed_by.get("a"), Some(&3));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    {
        let sm = store.state().await;
        assert_eq!(sm.ledger.kept_digest().map(|s| s.hex()), Some(want.clone()));
        assert_eq!(sm.ledger.counts("a"), counts);
        let mut serials = std::collections::HashMap::new();
        sm.ledger
            .for_each_serial(&mut |s, i| {
                serials.insert(s.to_string(), i.to_string());
            })
            .unwrap();
        let recomputed = LedgerState::restore(
            sm.ledger.all_records(),
            serials,
            Default::default(),
            Default::default(),
        );
        assert_eq!(recomputed.digest(), want);
        assert_eq!(sm.ledger.len(), 3);
    }
    // what an earlier build left: records and serials only
    let meta = store.cf(CF_SM_META).unwrap();
    for key in [KEY_DIGEST, KEY_COUNTS, KEY_INDEXED] {
        store.db.delete_cf(meta, key).unwrap();
    }
    let index = store.cf(CF_BY_STATE).unwrap();
    store.db.delete_range_cf(index, &[][..], END_KEY).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let sm = store.state().await;
    assert_eq!(sm.ledger.digest(), want);
    assert_eq!(sm.ledger.counts("a"), counts);
    let claimed = BTreeSet::from([crate::state::EnrollState::Claimed]);
    let mut listed = 0;
    sm.ledger
        .for_each("", &claimed, &mut |_| {
            listed += 1;
            true
        })
        .unwrap();
    assert_eq!(listed, 3, "the index by state was built");
}

/// The index by state follows every change of a record's state, a forgotten record
/// included: what `ledger list --state` and the forget sweep read.
#[tokio::test]
async fn the_index_by_state_follows_every_change() {
    use crate::command::ReleaseOutcome;
    use crate::state::EnrollState;
    let dir = tempfile::tempdir().unwrap();
    let store = two_claims(dir.path(), 4).await;
    let release = |id: &str, at_ms| Command::Release {
        identity: id.into(),
        member: "a".into(),
        outcome: ReleaseOutcome::Failed { reason: "x".into() },
        at_ms,
    };
    let enrolled = Command::Enrolled {
        identity: "n2".into(),
        member: "a".into(),
        config_digest: "d".into(),
        facts: Default::default(),
        at_ms: 4,
    };
    let forget = Command::Forget {
        identity: "n1".into(),
        member: "a".into(),
        older_than_ms: 1,
        at_ms: 100,
    };
    let listed = |store: &Arc<Store>, state| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            store
                .state()
                .await
                .ledger
                .for_each("", &BTreeSet::from([state]), &mut |r| {
                    assert_eq!(r.state, state);
                    ids.push(r.identity.clone());
                    true
                })
                .unwrap();
            ids
        }
    };
    assert_eq!(listed(&store, EnrollState::Claimed).await, ["n1", "n2"]);
    let entries = vec![entry(3, vec![release("n1", 5), enrolled])];
    store.apply_to_state_machine(&entries).await.unwrap();
    assert_eq!(
        listed(&store, EnrollState::Claimed).await,
        Vec::<String>::new()
    );
    assert_eq!(listed(&store, EnrollState::Failed).await, ["n1"]);
    assert_eq!(listed(&store, EnrollState::Enrolled).await, ["n2"]);
    assert_eq!(store.state().await.ledger.forgettable(50, 10), ["n1"]);
    // forgotten, then claimed again in the same batch: one record, claimed
    let entries = vec![entry(4, vec![forget, claim("n1", 101)])];
    let res = store.apply_to_state_machine(&entries).await.unwrap();
    assert_eq!(res[0].results, vec![Applied::Ok, Applied::Ok]);
    assert_eq!(
        listed(&store, EnrollState::Failed).await,
        Vec::<String>::new()
    );
    assert_eq!(listed(&store, EnrollState::Claimed).await, ["n1"]);
    let rec = store.state().await.ledger.record("n1").unwrap();
    assert_eq!(rec.attempts, 1, "a new record, not the forgotten one");
}

/// Records stay in the store: many read back in order, through the index by state too,
/// and one that does not parse stops the command that needs it (a storage error: Raft
/// stops) instead of being applied over.
#[tokio::test]
async fn records_are_read_in_place_and_a_damaged_one_stops_apply() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3 * INSTALL_BATCH + 7;
    let store = Store::open(dir.path()).unwrap();
    let cmds = (0..n).map(|i| claim(&format!("n{i:05}"), 1)).collect();
    let entries = vec![entry(1, cmds)];
    store.append_to_log(entries.clone()).unwrap();
    store.apply_to_state_machine(&entries).await.unwrap();
    let want = store.state().await.ledger.digest();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    {
        let sm = store.state().await;
        assert_eq!(sm.ledger.len(), n);
        assert_eq!(sm.ledger.digest(), want);
        let claimed = BTreeSet::from([crate::state::EnrollState::Claimed]);
        let page = sm.ledger.page(
            "n00009",
            2,
            true,
            crate::state::Filter {
                states: &claimed,
                by_state_only: true,
                keep: &|_| true,
            },
        );
        let ids: Vec<_> = page.records.iter().map(|r| r.identity.as_str()).collect();
        assert_eq!(
            (ids, page.matched, page.more),
            (vec!["n00010", "n00011"], n, true)
        );
    }
    store
        .db
        .put_cf(store.cf(CF_LEDGER).unwrap(), b"n02000", b"{not a record")
        .unwrap();
    assert!(store.state().await.ledger.record("n02000").is_none());
    let touch = vec![entry(2, vec![claim("n02000", 2)])];
    assert!(store.apply_to_state_machine(&touch).await.is_err());
    assert_eq!(store.state().await.ledger.digest(), want, "nothing applied");
}

/// An earlier build kept the snapshot in the store itself: it is still the current one,
/// moved to the file at start.
#[tokio::test]
async fn a_snapshot_kept_by_an_earlier_build_is_read_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = two_claims(dir.path(), 3).await;
    let built = store.build_snapshot().await.unwrap();
    let old = StoredSnapshot {
        meta: built.meta.clone(),
        data: bytes_of(built).await,
    };
    std::fs::remove_file(snapshot::path(dir.path())).unwrap();
    store.put_json_synced(CF_META, KEY_SNAPSHOT, &old).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let current = store.get_current_snapshot().unwrap().unwrap();
    assert_eq!(current.meta, old.meta);
    assert_eq!(bytes_of(current).await, old.data);
    assert!(store
        .get_json::<StoredSnapshot>(CF_META, KEY_SNAPSHOT)
        .unwrap()
        .is_none());
    assert!(snapshot::path(dir.path()).exists());
}

async fn restored_at_start(rules: u32) {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = two_claims(dir.path(), rules).await;
        store.build_snapshot().await.unwrap();
        // what the disk holds after losing the last apply: n2 and index 2 are gone
        store
            .db
            .delete_cf(store.cf(CF_LEDGER).unwrap(), b"n2")
            .unwrap();
        let older = Some(LogId::new(CommittedLeaderId::new(1, 1), 1));
        store
            .db
            .put_cf(
                store.cf(CF_SM_META).unwrap(),
                KEY_APPLIED,
                serde_json::to_vec(&older).unwrap(),
            )
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let (applied, _) = store.last_applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
    assert!(store.state().await.ledger.record("n2").is_some());
    drop(store);
    // and it was written back: the next start reads it from the state machine itself
    let store = Store::open(dir.path()).unwrap();
    assert!(store.state().await.ledger.record("n2").is_some());
    assert_eq!(
        store.last_applied_state().await.unwrap().0.map(|l| l.index),
        Some(2)
    );
}

/// A write that fails (a full disk) leaves the in-memory ledger as the disk holds it:
/// nobody reads a claim or a credential that was never stored.
#[tokio::test]
async fn a_failed_write_changes_nothing_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let claim = |id: &str, at_ms| Command::Claim {
        identity: id.into(),
        member: "a".into(),
        lease_until_ms: 100,
        seen_ms: 1,
        at_ms,
    };
    let e1 = entry(1, vec![claim("n1", 1)]);
    store.apply_to_state_machine(&[e1]).await.unwrap();
    let before = store.state().await.ledger.all_records();

    store
        .fail_next_write
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let issue = Command::IssueCredential {
        identity: "n1".into(),
        member: "a".into(),
        serial: "0b".into(),
        fingerprint: "ff".into(),
        not_after: 9,
        at_ms: 2,
    };
    let e2 = entry(2, vec![claim("n2", 2), issue]);
    assert!(store
        .apply_to_state_machine(std::slice::from_ref(&e2))
        .await
        .is_err());
    {
        let sm = store.state().await;
        assert_eq!(sm.ledger.all_records(), before);
        assert_eq!(serial_count(&sm.ledger), 0);
        assert_eq!(sm.last_applied.map(|l| l.index), Some(1));
    }
    // the same entries applied again once the disk has room
    let res = store.apply_to_state_machine(&[e2]).await.unwrap();
    assert_eq!(res[0].results, vec![Applied::Ok, Applied::Ok]);
    assert_eq!(store.state().await.ledger.len(), 2);
}

fn membership(index: u64, names: &[&str]) -> Entry<TypeConfig> {
    let nodes: BTreeMap<NodeId, Member> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let m = Member {
                name: n.to_string(),
                ..Default::default()
            };
            (i as NodeId + 1, m)
        })
        .collect();
    let voters = nodes.keys().copied().collect::<BTreeSet<_>>();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

#[tokio::test]
async fn a_removed_member_proposes_nothing_and_is_no_longer_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let beat = |member: &str, at_ms| Command::Heartbeat {
        member: member.into(),
        at_ms,
    };
    let claim = |identity: &str, member: &str| Command::Claim {
        identity: identity.into(),
        member: member.into(),
        lease_until_ms: 100_000,
        seen_ms: 1,
        at_ms: 2,
    };
    let note = |member: &str| Command::Note {
        identity: "n3".into(),
        member: member.into(),
        event: "looked at".into(),
        at_ms: 3,
    };
    let entries = [
        membership(1, &["a", "b"]),
        entry(2, vec![beat("a", 1), beat("b", 1), claim("n1", "b")]),
        membership(3, &["a"]),
        entry(4, vec![claim("n2", "b"), beat("b", 5), claim("n3", "a")]),
        // an operator's command counts as its member's
        entry(5, vec![note("a/ops"), note("b/ops")]),
    ];
    let res = store.apply_to_state_machine(&entries).await.unwrap();
    assert_eq!(res[1].results, vec![Applied::Ok; 3]);
    let not_b = Applied::Rejected(Rejection::NotAMember { member: "b".into() });
    assert_eq!(
        res[3].results,
        vec![not_b.clone(), not_b.clone(), Applied::Ok]
    );
    assert_eq!(res[4].results, vec![Applied::Ok, not_b]);
    let sm = store.state().await;
    assert_eq!(sm.ledger.live_members(5, 10), vec!["a".to_string()]);
    assert!(sm.ledger.record("n2").is_none());
    assert_eq!(
        sm.ledger
            .record("n3")
            .and_then(|r| r.owner.clone())
            .as_deref(),
        Some("a")
    );
    drop(sm);
    // the refusal and the forgotten heartbeat survive a restart
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let sm = store.state().await;
    assert_eq!(sm.ledger.live_members(5, 10), vec!["a".to_string()]);
}
