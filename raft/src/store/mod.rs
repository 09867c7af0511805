//! Storage of one member: the Raft log and vote, and the ledger state machine in RocksDB.
//! openraft reaches it through the two halves of its storage API in [`crate::storage`].
//!
//! The log's entries are in segment files under `log/` ([`crate::segment_log`]), binary
//! (entries an earlier build wrote, JSON, are read as they are; see [`crate::codec`]); the
//! entries appended last are also kept decoded in memory ([`crate::recent_log`]), which serves
//! replication and apply. Column families:
//! - `logs`: where earlier builds kept the entries, by big-endian index; a store found with
//!   entries there has them moved to the segments once, at start; `log_moved` (empty) is
//!   there from then on, so an earlier build refuses the store instead of missing its log;
//! - `meta`: vote, last purged log id (and the current snapshot where an earlier build kept
//!   it; now it is the file `snapshot/current`, see [`crate::snapshot`]);
//! - `ledger`, `serials`, `by_state`: the ledger's records, serials and index by state (see
//!   [`crate::disk`]), read in place: a member's memory does not hold the ledger;
//! - `sm_meta`: last applied log id and last membership, heartbeats, settings, and the
//!   ledger's digest and counts as of the last applied entry.
//!
//! Durability: log appends, the vote and snapshots are written with `sync`, so an acknowledged
//! entry survives power loss. State machine writes skip RocksDB's write-ahead log: the log
//! append each member fsyncs would otherwise carry every record written since the last one,
//! which was most of what the members' disks and CPUs spent per server. Each applied batch is
//! still one atomic write together with its `last_applied`, and `atomic_flush` persists the
//! state machine's column families together, so after a crash the state machine is at some
//! earlier applied point and Raft applies the rest again from the log. The log is purged only
//! up to a snapshot (synced); a state machine found older than the stored snapshot at start is
//! replaced by it first. A snapshot is built from a RocksDB snapshot of the state machine's
//! column families, so apply goes on while it is written, straight into its file; one
//! received is written to a file as it arrives and installed from it a batch of records at a
//! time, so neither is ever held in memory whole. An install first marks the state machine
//! incomplete (no applied index), so a crash halfway installs the kept snapshot again.

//!
//! The parts: the log and the vote (`log`), applying entries to the state machine
//! (`apply`), building and reading snapshots and copies (`snapshots`) and installing one
//! (`install`).

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); boxing it in our
// own helpers would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

mod apply;
mod install;
mod log;
mod snapshots;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogState, RaftSnapshotBuilder, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::codec::{self, WireFormat};
use crate::digest::Sum;
use crate::disk::{self, StoredRecords, CF_BY_STATE, CF_LEDGER, CF_SERIALS};
use crate::ledger::Applied;
use crate::segment_log::SegmentLog;
use crate::snapshot;
use crate::snapshot_file::SnapshotFile;
use crate::state::{Encoded, LedgerCounts, LedgerState, Rejection};
use crate::types::{BatchResult, Member, NodeId, TypeConfig};

use apply::SmMeta;
use snapshots::format1;
pub use snapshots::SnapshotStats;

const CF_LOGS: &str = "logs";
/// Its presence says the log is in segment files: RocksDB refuses to open a store with a
/// column family the opener does not name, so an earlier build stops with
/// `Column families not opened: log_moved` instead of starting without its log.
const CF_LOG_MOVED: &str = "log_moved";
const CF_META: &str = "meta";
/// The log's directory, inside the store's.
const LOG_DIR: &str = "log";
const CF_SM_META: &str = "sm_meta";
/// The state machine's column families, which a snapshot replaces.
const SM_DATA: [&str; 3] = [CF_LEDGER, CF_SERIALS, CF_BY_STATE];

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_SNAPSHOT_SEQ: &[u8] = b"snapshot_seq";
const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_HEARTBEATS: &[u8] = b"heartbeats";
const KEY_SETTINGS: &[u8] = b"settings";
/// The ledger digest as of `last_applied`, present only while the digest is kept.
const KEY_DIGEST: &[u8] = b"digest";
/// The ledger's counts as of `last_applied`, present only while they are kept.
const KEY_COUNTS: &[u8] = b"counts";
/// Present once the index by state holds every record (a store an earlier build wrote
/// gets it at its first start).
const KEY_INDEXED: &[u8] = b"by_state_indexed";
/// Records written per batch while a snapshot is installed or the index built.
const INSTALL_BATCH: usize = 4096;
/// Above any key of the state machine's column families (UTF-8 never holds 0xff).
const END_KEY: &[u8] = &[0xff];

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// The state machine: the ledger (its records read from the store), the applied index and
/// membership.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct StateMachine {
    pub ledger: LedgerState,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
}

/// One member's storage. Shared (`Arc`) between Raft and the application, which reads the
/// ledger through [`Store::state`].
pub struct Store {
    db: Arc<DB>,
    /// Where the store lives; its current snapshot is a file in it ([`crate::snapshot`]).
    dir: std::path::PathBuf,
    sm: RwLock<StateMachine>,
    /// Follows the applied ledger rules: whether this member talks binary to its peers.
    wire: WireFormat,
    last_snapshot: std::sync::Mutex<Option<SnapshotStats>>,
    /// The log entries appended last, so replication and apply need not read them back.
    recent: std::sync::Mutex<crate::recent_log::RecentLog>,
    /// The stored log.
    log: SegmentLog,
    /// Tests: the next state machine write fails, as on a full disk.
    #[cfg(test)]
    pub(crate) fail_next_write: std::sync::atomic::AtomicBool,
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn logs_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn logs_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

/// A named invariant violation found in stored data.
#[derive(Debug)]
struct Corrupt(String);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt store: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, Corrupt> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl Store {
    /// Opens (or creates) the store in `dir` and loads the state machine from it.
    pub fn open(dir: &Path) -> StoreResult<Arc<Store>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // state machine writes skip the WAL: their column families are flushed together
        opts.set_atomic_flush(true);
        // a vector memtable takes one writer at a time (see `cf_options`); writes come from
        // Raft's one thread anyway
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = [
            CF_LOGS,
            CF_LOG_MOVED,
            CF_META,
            CF_LEDGER,
            CF_SERIALS,
            CF_BY_STATE,
            CF_SM_META,
        ]
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, cf_options(n)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let (log, opened) = SegmentLog::open(&dir.join(LOG_DIR)).map_err(logs_read)?;
        if opened.torn_bytes > 0 {
            tracing::warn!(
                bytes = opened.torn_bytes,
                "the raft log ended in an append a crash cut short; it was never acknowledged and is dropped"
            );
        }
        let mut store = Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            sm: RwLock::new(StateMachine::default()),
            wire: WireFormat::default(),
            last_snapshot: Default::default(),
            recent: Default::default(),
            log,
            #[cfg(test)]
            fail_next_write: Default::default(),
        };
        store.move_log_once()?;
        if let Some(purged) = store.get_json::<LogId<NodeId>>(CF_META, KEY_PURGED)? {
            // a purge that ended before its segments were deleted
            store.log.purge_upto(purged.index).map_err(logs_write)?;
        }
        store.index_once()?;
        let mut sm = store.load_state_machine()?;
        if let Some((meta, saved)) = store.current_snapshot()? {
            if meta.last_log_id > sm.last_applied {
                // the latest applies were in memory only when the process ended (or an install
                // stopped halfway); the snapshot is newer than what reached the disk (and the
                // log may be purged up to it)
                let from = sm.last_applied.map(|l| l.index);
                sm = store.install_from(&meta, saved)?;
                tracing::info!(
                    from = ?from,
                    to = ?sm.last_applied.map(|l| l.index),
                    "state machine restored from the stored snapshot"
                );
            }
        }
        store.wire.follow_rules(sm.ledger.rules());
        store.sm = RwLock::new(sm);
        Ok(Arc::new(store))
    }

    /// The wire format this store's ledger rules call for, shared with the member's network.
    pub fn wire(&self) -> WireFormat {
        self.wire.clone()
    }

    /// Read access to the state machine as last applied on this member.
    pub async fn state(&self) -> tokio::sync::RwLockReadGuard<'_, StateMachine> {
        self.sm.read().await
    }

    fn cf(&self, name: &str) -> StoreResult<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| {
            io_err(
                ErrorSubject::Store,
                ErrorVerb::Read,
                Corrupt(format!("no column family {name}")),
            )
        })
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
    ) -> StoreResult<Option<T>> {
        let raw = self.db.get_cf(self.cf(cf)?, key).map_err(logs_read)?;
        raw.map(|b| serde_json::from_slice(&b).map_err(logs_read))
            .transpose()
    }

    fn put_json_synced<T: Serialize>(&self, cf: &str, key: &[u8], v: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(v).map_err(logs_write)?;
        self.db
            .put_cf_opt(self.cf(cf)?, key, bytes, &synced())
            .map_err(logs_write)
    }
}

/// Records and serials are read by key, most of all keys not there yet (a new server's
/// first command, a new serial): Bloom filters answer those without reading the tables, nor
/// searching the memtable, where the records of a busy minute are.
///
/// The state index and the serials take a vector memtable (an append per write, sorted once
/// when flushed or iterated) instead of the skip list, whose insert walks a random path
/// through the memtable: every member applies every server's record, and those two index
/// writes were a quarter of what applying a server cost (`benches/BENCHMARKS.md`, "Cheaper
/// apply"). What they are read by suits it: the state index only by scans (one sort per
/// iterator), the serials by key, almost always a new serial that the memtable's Bloom filter
/// turns away before the vector is searched. The records stay in a skip list: they are read
/// by key, existing ones included (a state scan reads each record it lists).
fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    if name == CF_BY_STATE || name == CF_SERIALS {
        o.set_memtable_factory(rocksdb::MemtableFactory::Vector);
    }
    if name == CF_LEDGER || name == CF_SERIALS {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&table);
        o.set_memtable_prefix_bloom_ratio(0.05);
        o.set_memtable_whole_key_filtering(true);
    }
    o
}

fn no_wal() -> WriteOptions {
    let mut w = WriteOptions::default();
    // see the module doc: the log holds what this batch applied, until a snapshot does
    w.disable_wal(true);
    w
}

#[cfg(test)]
mod tests {
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
        let indexes =
            |v: Vec<Entry<TypeConfig>>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
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
}
