//! Applying committed entries to the state machine: each batch of entries is one atomic
//! write of the records it changed, their index by state and the state machine's own keys;
//! a write that fails leaves memory as the disk is.

use super::*;

/// Names of the group's members, voters and learners (unnamed nodes, as openraft's storage
/// suite makes, are left out).
pub(super) fn member_names(m: &StoredMembership<NodeId, Member>) -> BTreeSet<String> {
    m.membership()
        .nodes()
        .map(|(_, n)| n.name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

pub(super) fn sm_json<T: Serialize + ?Sized>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(sm_write)
}

impl Store {
    /// Builds the index by state of a store an earlier build wrote (once; a start that stops
    /// halfway builds it again).
    pub(super) fn index_once(&self) -> StoreResult<()> {
        if self
            .db
            .get_cf(self.cf(CF_SM_META)?, KEY_INDEXED)
            .map_err(sm_read)?
            .is_some()
        {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct StateOf {
            state: crate::state::EnrollState,
        }
        let index = self.cf(CF_BY_STATE)?;
        self.db
            .delete_range_cf(index, &[][..], END_KEY)
            .map_err(sm_write)?;
        let mut batch = WriteBatch::default();
        let mut n = 0usize;
        for item in self
            .db
            .iterator_cf(self.cf(CF_LEDGER)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(sm_read)?;
            let s: StateOf = serde_json::from_slice(&v).map_err(sm_read)?;
            batch.put_cf(
                index,
                disk::state_key(s.state, &String::from_utf8_lossy(&k)),
                [],
            );
            n += 1;
            if batch.len() >= INSTALL_BATCH {
                self.db
                    .write(std::mem::take(&mut batch))
                    .map_err(sm_write)?;
            }
        }
        batch.put_cf(self.cf(CF_SM_META)?, KEY_INDEXED, b"1");
        self.db.write_opt(batch, &synced()).map_err(sm_write)?;
        if n > 0 {
            tracing::info!(records = n, "indexed the stored ledger by state");
        }
        Ok(())
    }

    /// The state machine as the store holds it: the ledger's records stay in the store; its
    /// counts and digest come from `sm_meta` (counted and summed once when an earlier build
    /// kept none).
    pub(super) fn load_state_machine(&self) -> StoreResult<StateMachine> {
        let heartbeats = self
            .get_json(CF_SM_META, KEY_HEARTBEATS)?
            .unwrap_or_default();
        let settings = self.get_json(CF_SM_META, KEY_SETTINGS)?.unwrap_or_default();
        let counts: Option<LedgerCounts> = self.get_json(CF_SM_META, KEY_COUNTS)?;
        let digest: Option<Sum> = self.get_json(CF_SM_META, KEY_DIGEST)?;
        let source = Arc::new(StoredRecords::new(self.db.clone()));
        let ledger =
            LedgerState::stored(source, heartbeats, settings, counts, digest).map_err(sm_read)?;
        Ok(StateMachine {
            ledger,
            last_applied: self.get_json(CF_SM_META, KEY_APPLIED)?,
            membership: self
                .get_json(CF_SM_META, KEY_MEMBERSHIP)?
                .unwrap_or_default(),
        })
    }

    /// After a failed write: the in-memory ledger goes back to what is on disk, since readers
    /// must never see a ledger the disk does not hold (Raft stops on the error).
    pub(super) fn roll_back(&self, sm: &mut StateMachine) {
        tracing::error!("the in-memory ledger goes back to what is on disk");
        match self.load_state_machine() {
            Ok(on_disk) => *sm = on_disk,
            Err(reload) => {
                tracing::error!(error = %reload, "could not read the ledger back either")
            }
        }
    }

    /// Writes the state machine changes of applied entries in one batch.
    pub(super) fn write_applied(&self, batch: WriteBatch) -> StoreResult<()> {
        #[cfg(test)]
        if self
            .fail_next_write
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            // what a full disk looks like; the batch is dropped unwritten
            drop(batch);
            return Err(sm_write(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device",
            )));
        }
        self.db.write_opt(batch, &no_wal()).map_err(sm_write)
    }

    /// The last applied log id and membership.
    pub async fn last_applied_state(
        &self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let sm = self.sm.read().await;
        Ok((sm.last_applied, sm.membership.clone()))
    }

    /// Applies committed `entries` to the ledger and writes what they changed, with the last
    /// applied log id, in one batch.
    pub async fn apply_to_state_machine(
        &self,
        entries: &[Entry<TypeConfig>],
    ) -> StoreResult<Vec<BatchResult>> {
        let mut sm = self.sm.write().await;
        let mut batch = WriteBatch::default();
        let ledger_cf = self.cf(CF_LEDGER)?;
        let serials_cf = self.cf(CF_SERIALS)?;
        let index_cf = self.cf(CF_BY_STATE)?;
        let mut out = Vec::with_capacity(entries.len());
        let mut what = SmMeta::default();
        let mut names = member_names(&sm.membership);
        // records go into the batch in identity order once all entries are applied: the
        // memtable's skip list then inserts each next to the last instead of searching from
        // its top (the last write of a record within the batch is the one kept)
        let mut records: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
        for entry in entries {
            sm.last_applied = Some(entry.log_id);
            let mut results = Vec::new();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(b) => {
                    for cmd in b.commands.iter() {
                        // a removed member may still be running; what it proposes is refused
                        // (with no named members yet, as in storage tests, everything goes)
                        let outsider = cmd
                            .actor()
                            .filter(|a| !names.is_empty() && !names.contains(*a));
                        let applied = match outsider {
                            Some(a) => Err(Rejection::NotAMember {
                                member: a.to_string(),
                            }),
                            None => match sm.ledger.apply_encoded(cmd) {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::error!(error = %e, "could not encode a record");
                                    self.roll_back(&mut sm);
                                    return Err(sm_write(e));
                                }
                            },
                        };
                        let applied = match applied {
                            Ok(encoded) => {
                                match (encoded, cmd.identity()) {
                                    // heartbeats and cluster settings
                                    (Encoded::NoRecord, _) | (_, None) => match cmd {
                                        crate::command::Command::Heartbeat { .. } => {
                                            what.heartbeats = true
                                        }
                                        _ => what.settings = true,
                                    },
                                    (Encoded::Record { json, was, now }, Some(identity)) => {
                                        records.insert(identity, Some(json));
                                        if was != Some(now) {
                                            if let Some(was) = was {
                                                batch.delete_cf(
                                                    index_cf,
                                                    disk::state_key(was, identity),
                                                );
                                            }
                                            batch.put_cf(
                                                index_cf,
                                                disk::state_key(now, identity),
                                                [],
                                            );
                                        }
                                    }
                                    (Encoded::Forgotten { was }, Some(identity)) => {
                                        records.insert(identity, None);
                                        if let Some(was) = was {
                                            batch.delete_cf(
                                                index_cf,
                                                disk::state_key(was, identity),
                                            );
                                        }
                                    }
                                }
                                if let Some((serial, identity)) = cmd.issued_serial() {
                                    batch.put_cf(
                                        serials_cf,
                                        serial.as_bytes(),
                                        identity.as_bytes(),
                                    );
                                }
                                Applied::Ok
                            }
                            Err(r) => Applied::Rejected(r),
                        };
                        results.push(applied);
                    }
                }
                EntryPayload::Membership(m) => {
                    sm.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    what.membership = true;
                    let after = member_names(&sm.membership);
                    if sm.ledger.note_membership(&names, &after) {
                        what.settings = true;
                    }
                    names = after;
                    if sm.ledger.retain_heartbeats(&names) {
                        what.heartbeats = true;
                    }
                }
            }
            out.push(BatchResult { results });
        }
        for (identity, json) in records {
            match json {
                Some(json) => batch.put_cf(ledger_cf, identity.as_bytes(), json),
                None => batch.delete_cf(ledger_cf, identity.as_bytes()),
            }
        }
        self.put_sm_meta(&mut batch, &sm, what)?;
        if let Err(e) = self.write_applied(batch) {
            // nothing of these entries is on disk, so none of it may be in memory either:
            // readers must never see a ledger the disk does not hold. Raft stops on the error.
            tracing::error!(error = %e, "could not write the ledger");
            self.roll_back(&mut sm);
            return Err(e);
        }
        // what was applied is in the store now
        sm.ledger.settle();
        if what.settings {
            // a `SetRules` may have turned the wire binary
            self.wire.follow_rules(sm.ledger.rules());
        }
        Ok(out)
    }

    /// Adds the state machine's applied index, kept digest and counts (and what else `what`
    /// names) to `batch`, so they commit atomically with the records they describe.
    pub(super) fn put_sm_meta(
        &self,
        batch: &mut WriteBatch,
        sm: &StateMachine,
        what: SmMeta,
    ) -> StoreResult<()> {
        let meta = self.cf(CF_SM_META)?;
        batch.put_cf(meta, KEY_APPLIED, sm_json(&sm.last_applied)?);
        // the digest and counts of exactly these records, or none: never stale ones
        match sm.ledger.kept_digest() {
            Some(sum) => batch.put_cf(meta, KEY_DIGEST, sm_json(&sum)?),
            None => batch.delete_cf(meta, KEY_DIGEST),
        }
        match sm.ledger.kept_counts() {
            Some(c) => batch.put_cf(meta, KEY_COUNTS, sm_json(&c)?),
            None => batch.delete_cf(meta, KEY_COUNTS),
        }
        if what.membership {
            batch.put_cf(meta, KEY_MEMBERSHIP, sm_json(&sm.membership)?);
        }
        if what.heartbeats {
            batch.put_cf(meta, KEY_HEARTBEATS, sm_json(sm.ledger.heartbeats())?);
        }
        if what.settings {
            batch.put_cf(meta, KEY_SETTINGS, sm_json(sm.ledger.settings())?);
        }
        Ok(())
    }
}

/// What of the state machine's own keys an applied batch rewrites besides its applied
/// index, digest and counts (most batches: nothing else). The settings are written only
/// when a command that may change them applied: they hold the loans, thousands near the end
/// of a fleet, and every member's heartbeat every 2 s would rewrite them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct SmMeta {
    membership: bool,
    heartbeats: bool,
    settings: bool,
}

impl SmMeta {
    pub(super) const ALL: SmMeta = SmMeta {
        membership: true,
        heartbeats: true,
        settings: true,
    };
}
