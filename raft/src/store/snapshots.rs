//! Building snapshots of the state machine into the current snapshot file (from a RocksDB
//! snapshot, so apply goes on meanwhile), reading the current one, and consistent copies of
//! the whole store (backups).

use super::*;

#[derive(Serialize, Deserialize)]
pub(super) struct StoredSnapshot {
    pub(super) meta: SnapshotMeta<NodeId, Member>,
    pub(super) data: Vec<u8>,
}

/// A snapshot built into the current snapshot file.
pub(super) struct Built {
    meta: SnapshotMeta<NodeId, Member>,
    bytes: u64,
    records: usize,
}

/// Reads a format 1 snapshot: the whole state machine as JSON.
pub(super) fn format1(data: &[u8]) -> Result<LedgerState, serde_json::Error> {
    serde_json::from_slice::<StateMachine>(data).map(|sm| sm.ledger)
}

/// The last snapshot this member built or installed, for `/status` and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    /// The last log index it holds.
    pub index: u64,
    /// `built` here, or `installed` from the leader.
    pub kind: String,
    /// How long building (or installing) it took.
    pub took_ms: u64,
    pub bytes: u64,
    pub records: u64,
    /// When it was done, Unix ms.
    pub at_ms: u64,
}

impl SnapshotStats {
    pub(super) fn new(
        kind: &str,
        index: Option<u64>,
        started: std::time::Instant,
        bytes: usize,
        records: usize,
    ) -> Self {
        SnapshotStats {
            index: index.unwrap_or(0),
            kind: kind.into(),
            took_ms: started.elapsed().as_millis() as u64,
            bytes: bytes as u64,
            records: records as u64,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

impl Store {
    /// The last snapshot built or installed since this member started.
    pub fn last_snapshot(&self) -> Option<SnapshotStats> {
        self.last_snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn note_snapshot(&self, stats: SnapshotStats) {
        tracing::info!(
            kind = %stats.kind,
            index = stats.index,
            took_ms = stats.took_ms,
            bytes = stats.bytes,
            records = stats.records,
            "snapshot"
        );
        *self.last_snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// A consistent copy of the whole store (log, vote, state machine and current snapshot)
    /// in `dest`, which must not exist yet. RocksDB's checkpoint: memtables are flushed
    /// first, and files are hard links where `dest` is on the same file system, so it is
    /// quick and small.
    pub fn checkpoint(&self, dest: &Path) -> StoreResult<()> {
        let read = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Store,
                ErrorVerb::Read,
                openraft::AnyError::error(e.to_string()),
            ))
        };
        // the log is held still while RocksDB's part is copied, so both are of one moment
        self.log
            .copy_to(&dest.join(LOG_DIR), || {
                rocksdb::checkpoint::Checkpoint::new(&self.db)
                    .and_then(|c| c.create_checkpoint(dest))
            })
            .map_err(|e| read(&e))?
            .map_err(|e| read(&e))?;
        // the log may be purged up to the snapshot: the copy needs it too
        let (from, to) = (snapshot::path(&self.dir), snapshot::path(dest));
        if from.exists() {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| read(&e))?;
            }
            std::fs::hard_link(&from, &to)
                .or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
                .map_err(|e| read(&e))?;
        }
        Ok(())
    }

    /// The current snapshot's meta and file. One an earlier build kept in the store (the
    /// `snapshot` key) is moved to the file first.
    pub(super) fn current_snapshot(
        &self,
    ) -> StoreResult<Option<(SnapshotMeta<NodeId, Member>, snapshot::Saved)>> {
        let path = snapshot::path(&self.dir);
        if let Some(old) = self.get_json::<StoredSnapshot>(CF_META, KEY_SNAPSHOT)? {
            self.keep_snapshot(&old.meta, &mut &old.data[..])?;
        }
        let Some(saved) = snapshot::open(&path).map_err(sm_read)? else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&saved.meta).map_err(sm_read)?;
        Ok(Some((meta, saved)))
    }

    /// Makes the snapshot `data` holds the current one (synced), dropping one an earlier
    /// build kept in the store.
    pub(super) fn keep_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        data: &mut impl std::io::Read,
    ) -> StoreResult<u64> {
        let meta_json = serde_json::to_vec(meta).map_err(sm_write)?;
        let n = snapshot::save(&snapshot::path(&self.dir), &meta_json, data).map_err(sm_write)?;
        self.drop_stored_snapshot_key()?;
        Ok(n)
    }

    pub(super) fn drop_stored_snapshot_key(&self) -> StoreResult<()> {
        let meta_cf = self.cf(CF_META)?;
        if self
            .db
            .get_cf(meta_cf, KEY_SNAPSHOT)
            .map_err(sm_read)?
            .is_some()
        {
            self.db
                .delete_cf_opt(meta_cf, KEY_SNAPSHOT, &synced())
                .map_err(sm_write)?;
        }
        Ok(())
    }

    /// Builds a snapshot into the current snapshot file: in format 2 from a RocksDB snapshot
    /// taken at the applied point, with the state machine locked only that long; in format 1
    /// (the whole state machine as JSON) while the cluster's rules are older.
    pub(super) fn build_blocking(&self, seq: u64) -> StoreResult<Built> {
        use std::io::Write;
        let sm = self.sm.blocking_read();
        let (last_applied, membership) = (sm.last_applied, sm.membership.clone());
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership.clone(),
            snapshot_id,
        };
        let meta_json = serde_json::to_vec(&meta).map_err(sm_write)?;
        let mut out =
            snapshot::Pending::create(&snapshot::path(&self.dir), &meta_json).map_err(sm_write)?;
        if sm.ledger.rules() < snapshot::FORMAT2_RULES {
            let whole = StateMachine {
                ledger: sm.ledger.to_memory().map_err(sm_read)?,
                last_applied,
                membership,
            };
            drop(sm);
            serde_json::to_writer(&mut out, &whole).map_err(sm_write)?;
            let records = whole.ledger.len();
            let bytes = out.bytes();
            out.commit().map_err(sm_write)?;
            self.drop_stored_snapshot_key()?;
            return Ok(Built {
                meta,
                bytes,
                records,
            });
        }
        let mut w = snapshot::Writer::new(out, sm.ledger.heartbeats(), sm.ledger.settings())
            .map_err(sm_write)?;
        let at = self.db.snapshot();
        drop(sm);
        for (cf, records) in [(CF_LEDGER, true), (CF_SERIALS, false)] {
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_snapshot(&at);
            for item in self
                .db
                .iterator_cf_opt(self.cf(cf)?, ro, IteratorMode::Start)
            {
                let (k, v) = item.map_err(sm_read)?;
                match records {
                    true => w.record(&v),
                    false => w.serial(&k, &v),
                }
                .map_err(sm_write)?;
            }
        }
        let records = w.records();
        let mut out = w.finish().map_err(sm_write)?;
        out.flush().map_err(sm_write)?;
        let bytes = out.bytes();
        out.commit().map_err(sm_write)?;
        self.drop_stored_snapshot_key()?;
        Ok(Built {
            meta,
            bytes,
            records,
        })
    }

    pub(super) fn snapshot_file(&self, saved: snapshot::Saved) -> SnapshotFile {
        SnapshotFile::new(saved.file, saved.offset, snapshot::path(&self.dir))
    }

    /// The snapshot built or installed last.
    pub fn get_current_snapshot(&self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.current_snapshot()?.map(|(meta, saved)| Snapshot {
            meta,
            snapshot: Box::new(self.snapshot_file(saved)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Arc<Store> {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let seq: u64 = self.get_json(CF_META, KEY_SNAPSHOT_SEQ)?.unwrap_or(0) + 1;
        self.put_json_synced(CF_META, KEY_SNAPSHOT_SEQ, &seq)?;
        // reading every record is blocking work: off the async threads
        let store = self.clone();
        let Built {
            meta,
            bytes,
            records,
        } = tokio::task::spawn_blocking(move || store.build_blocking(seq))
            .await
            .map_err(sm_read)??;
        self.note_snapshot(SnapshotStats::new(
            "built",
            meta.last_log_id.map(|l| l.index),
            started,
            bytes as usize,
            records,
        ));
        let current = self
            .current_snapshot()?
            .ok_or_else(|| sm_read(Corrupt("the snapshot just built is gone".into())))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(self.snapshot_file(current.1)),
        })
    }
}
