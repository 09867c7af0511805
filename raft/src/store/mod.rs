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
mod tests;
