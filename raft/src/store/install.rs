//! Installing a snapshot: a received one is kept as the current snapshot first, then
//! written into the state machine a batch of records at a time (format 2) or whole (format
//! 1); the state machine is marked incomplete meanwhile, so a crash halfway installs it again.

use super::*;

impl Store {
    /// A file to receive a snapshot into.
    pub fn begin_receiving_snapshot(&self) -> StoreResult<Box<SnapshotFile>> {
        let dir = snapshot::path(&self.dir);
        let dir = dir.parent().unwrap_or(&self.dir);
        Ok(Box::new(SnapshotFile::incoming(dir).map_err(sm_write)?))
    }

    /// Keeps the snapshot `received` as the current one and replaces the ledger with it.
    pub async fn install_snapshot(
        self: &Arc<Self>,
        meta: &SnapshotMeta<NodeId, Member>,
        received: Box<SnapshotFile>,
    ) -> StoreResult<()> {
        let started = std::time::Instant::now();
        self.change_recent(|r| r.clear());
        let (incoming, offset) = {
            let (p, o) = received.path();
            (p.to_path_buf(), o)
        };
        drop(received);
        // kept first: a crash while it is installed installs it again at the next start
        let store = self.clone();
        let meta_owned = meta.clone();
        let mut sm = self.sm.write().await;
        let installed = tokio::task::spawn_blocking(move || -> StoreResult<(StateMachine, u64)> {
            use std::io::{Seek, SeekFrom};
            let mut data = std::fs::File::open(&incoming).map_err(sm_read)?;
            data.seek(SeekFrom::Start(offset)).map_err(sm_read)?;
            let bytes = store.keep_snapshot(&meta_owned, &mut data)?;
            let _ = std::fs::remove_file(&incoming);
            let (_, saved) = store
                .current_snapshot()?
                .ok_or_else(|| sm_read(Corrupt("the snapshot just kept is gone".into())))?;
            Ok((store.install_from(&meta_owned, saved)?, bytes))
        })
        .await
        .map_err(sm_write)?;
        let (incoming, bytes) = match installed {
            Ok(i) => i,
            Err(e) => {
                // whatever the store holds now is not the ledger: read back what it is
                self.roll_back(&mut sm);
                return Err(e);
            }
        };
        let records = incoming.ledger.len();
        tracing::info!(
            last_log = ?meta.last_log_id.map(|l| l.index),
            records,
            bytes,
            "installed a snapshot from the leader"
        );
        self.wire.follow_rules(incoming.ledger.rules());
        *sm = incoming;
        drop(sm);
        self.note_snapshot(SnapshotStats::new(
            "installed",
            meta.last_log_id.map(|l| l.index),
            started,
            bytes as usize,
            records,
        ));
        Ok(())
    }

    /// Installs the snapshot `saved` holds (the current one) as the state machine, a batch
    /// of records at a time, and returns the state machine.
    pub(super) fn install_from(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        saved: snapshot::Saved,
    ) -> StoreResult<StateMachine> {
        use std::io::{BufReader, Seek, SeekFrom};
        let snap_err = |e: snapshot::SnapshotError| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        };
        let mut file = saved.file;
        file.seek(SeekFrom::Start(saved.offset)).map_err(sm_read)?;
        // format 2 clears the state machine at its header (the installer), format 1 when it
        // is written whole
        let mut sink = Installer::new(self);
        let found = snapshot::read(BufReader::with_capacity(1 << 20, file), format1, &mut sink)
            .map_err(snap_err)?;
        let ledger = match found {
            snapshot::Found::Format1(ledger) => {
                let whole = StateMachine {
                    ledger: *ledger,
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                };
                return self.write_whole_state_machine(&whole);
            }
            snapshot::Found::Streamed => sink.finish()?,
        };
        let whole = StateMachine {
            ledger,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.finish_state_machine(WriteBatch::default(), &whole)?;
        Ok(whole)
    }

    /// Empties the state machine's records, serials and index, and marks it incomplete (no
    /// applied index) until what replaces them is written (synced).
    pub(super) fn clear_state_machine(&self) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_SM_META)?, KEY_APPLIED);
        for cf in SM_DATA {
            batch.delete_range_cf(self.cf(cf)?, &[][..], END_KEY);
        }
        self.db.write_opt(batch, &synced()).map_err(sm_write)
    }

    /// Writes the state machine's meta and makes everything written since it was cleared
    /// durable; the state machine is complete again.
    pub(super) fn finish_state_machine(
        &self,
        mut batch: WriteBatch,
        sm: &StateMachine,
    ) -> StoreResult<()> {
        self.put_sm_meta(&mut batch, sm, SmMeta::ALL)?;
        self.db.write_opt(batch, &no_wal()).map_err(sm_write)?;
        // the records first, then the meta that says they are complete
        for cf in SM_DATA.into_iter().chain([CF_SM_META]) {
            self.db.flush_cf(self.cf(cf)?).map_err(sm_write)?;
        }
        Ok(())
    }

    /// Replaces the persisted state machine with `sm`, a ledger held in memory (format 1
    /// snapshots, tests), and returns it as the store holds it.
    pub(super) fn write_whole_state_machine(&self, sm: &StateMachine) -> StoreResult<StateMachine> {
        self.clear_state_machine()?;
        let mut batch = WriteBatch::default();
        let (ledger, index) = (self.cf(CF_LEDGER)?, self.cf(CF_BY_STATE)?);
        let mut failed = None;
        sm.ledger
            .for_each("", &BTreeSet::new(), &mut |rec| {
                match serde_json::to_vec(rec) {
                    Ok(json) => {
                        batch.put_cf(ledger, rec.identity.as_bytes(), json);
                        batch.put_cf(index, disk::state_key(rec.state, &rec.identity), []);
                    }
                    Err(e) => failed = Some(e),
                }
                failed.is_none()
            })
            .map_err(sm_read)?;
        if let Some(e) = failed {
            return Err(sm_write(e));
        }
        let serials = self.cf(CF_SERIALS)?;
        sm.ledger
            .for_each_serial(&mut |serial, identity| {
                batch.put_cf(serials, serial.as_bytes(), identity.as_bytes())
            })
            .map_err(sm_read)?;
        // the digest and counts go with the records
        sm.ledger.digest();
        sm.ledger.counts("");
        self.finish_state_machine(batch, sm)?;
        let mut stored = self.load_state_machine()?;
        stored.last_applied = sm.last_applied;
        stored.membership = sm.membership.clone();
        Ok(stored)
    }
}

/// Writes a format 2 snapshot's frames into the store as they are read (its header first
/// empties the state machine), counting and summing the records on the way.
pub(super) struct Installer<'s> {
    store: &'s Store,
    batch: WriteBatch,
    header: Option<snapshot::Header>,
    counts: LedgerCounts,
    digest: Sum,
}

impl<'s> Installer<'s> {
    pub(super) fn new(store: &'s Store) -> Installer<'s> {
        Installer {
            store,
            batch: WriteBatch::default(),
            header: None,
            counts: LedgerCounts::default(),
            digest: Sum::default(),
        }
    }

    pub(super) fn sink_err(e: StorageError<NodeId>) -> snapshot::SnapshotError {
        snapshot::SnapshotError::Sink(e.to_string().into())
    }

    pub(super) fn written(&mut self) -> Result<(), snapshot::SnapshotError> {
        if self.batch.len() >= INSTALL_BATCH {
            let batch = std::mem::take(&mut self.batch);
            self.store
                .db
                .write_opt(batch, &no_wal())
                .map_err(|e| snapshot::SnapshotError::Sink(Box::new(e)))?;
        }
        Ok(())
    }

    /// The ledger installed, with the records still to be written.
    pub(super) fn finish(self) -> StoreResult<LedgerState> {
        let Installer {
            store,
            batch,
            header,
            counts,
            digest,
        } = self;
        store.db.write_opt(batch, &no_wal()).map_err(sm_write)?;
        let h = header.ok_or_else(|| sm_read(snapshot::SnapshotError::NoHeader))?;
        let source = Arc::new(StoredRecords::new(store.db.clone()));
        LedgerState::stored(source, h.heartbeats, h.settings, Some(counts), Some(digest))
            .map_err(sm_read)
    }
}

impl snapshot::Sink for Installer<'_> {
    fn header(&mut self, header: snapshot::Header) -> Result<(), snapshot::SnapshotError> {
        // the records that follow replace everything the state machine held
        self.store.clear_state_machine().map_err(Self::sink_err)?;
        self.header = Some(header);
        Ok(())
    }

    fn record(&mut self, stored: &[u8]) -> Result<(), snapshot::SnapshotError> {
        let rec =
            disk::decode(b"", stored).map_err(|e| snapshot::SnapshotError::Sink(Box::new(e)))?;
        let (ledger, index) = (
            self.store.cf(CF_LEDGER).map_err(Self::sink_err)?,
            self.store.cf(CF_BY_STATE).map_err(Self::sink_err)?,
        );
        self.batch.put_cf(ledger, rec.identity.as_bytes(), stored);
        self.batch
            .put_cf(index, disk::state_key(rec.state, &rec.identity), []);
        self.counts.count(&rec, true);
        self.digest.add(Sum::encoded_record(stored));
        self.written()
    }

    fn serial(&mut self, serial: &str, identity: &str) -> Result<(), snapshot::SnapshotError> {
        let cf = self.store.cf(CF_SERIALS).map_err(Self::sink_err)?;
        self.batch
            .put_cf(cf, serial.as_bytes(), identity.as_bytes());
        self.digest.add(Sum::serial(serial, identity));
        self.written()
    }
}
