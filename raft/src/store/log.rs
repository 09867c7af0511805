//! The Raft log and vote: entries in segment files, the last appended also kept decoded in
//! memory, and the log an earlier build kept in RocksDB moved to the segments once.

use super::*;

impl Store {
    /// Moves the entries an earlier build kept in the `logs` column family into the segment
    /// log (once: a start that stops halfway finds them still there and moves them again,
    /// over whatever segments it wrote).
    pub(super) fn move_log_once(&self) -> StoreResult<()> {
        let logs = self.cf(CF_LOGS)?;
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(logs, IteratorMode::Start) {
            let (k, v) = item.map_err(logs_read)?;
            entries.push((key_index(&k).map_err(logs_read)?, v.to_vec()));
        }
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        let (first, count) = (*first, entries.len());
        self.log.truncate_from(0).map_err(logs_write)?;
        for chunk in entries.chunks(1024) {
            self.log.append(chunk).map_err(logs_write)?;
        }
        self.db
            .delete_range_cf(logs, index_key(0), index_key(u64::MAX))
            .map_err(logs_write)?;
        // delete_range excludes its end: the entry at u64::MAX cannot exist in practice
        self.db.flush_wal(true).map_err(logs_write)?;
        tracing::info!(
            first,
            entries = count,
            "moved the raft log from RocksDB to segment files"
        );
        Ok(())
    }

    /// Changes the kept entries as the stored log changes (before a deletion, after an
    /// append); a poisoned lock (a panic elsewhere) drops them all, and reads go to the store.
    pub(super) fn change_recent(&self, change: impl FnOnce(&mut crate::recent_log::RecentLog)) {
        match self.recent.lock() {
            Ok(mut r) => change(&mut r),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }

    /// The log entries of `range`: from memory while they are the ones appended last, else
    /// from the stored log.
    pub fn log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        if let Some(kept) = self.recent.lock().ok().and_then(|r| r.get(&range)) {
            return Ok(kept);
        }
        self.read_log(&range)
    }

    /// The entries of `range` as the stored log holds them.
    pub(super) fn read_log<RB: RangeBounds<u64>>(
        &self,
        range: &RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.log
            .read(start, end)
            .map_err(logs_read)?
            .iter()
            .map(|(_, bytes)| codec::decode(bytes).map_err(logs_read))
            .collect()
    }

    /// Keeps `vote`, synced.
    pub fn save_vote(&self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_json_synced(CF_META, KEY_VOTE, vote)
    }

    pub fn read_vote(&self) -> StoreResult<Option<Vote<NodeId>>> {
        self.get_json(CF_META, KEY_VOTE)
    }

    /// The last purged and the last stored log ids.
    pub fn get_log_state(&self) -> StoreResult<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = self.get_json(CF_META, KEY_PURGED)?;
        let last = match self.log.bounds() {
            Some((_, last)) => self
                .read_log(&(last..=last))?
                .pop()
                .map(|e| e.log_id)
                .or(purged),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    /// Appends `entries` to the log, synced, and keeps them in memory as the last appended.
    pub fn append_to_log<I>(&self, entries: I) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let mut records = Vec::new();
        let mut decoded = Vec::new();
        for e in entries {
            let bytes = codec::encode(&e, true).map_err(logs_write)?;
            let index = e.log_id.index;
            decoded.push((e, bytes.len()));
            records.push((index, bytes));
        }
        self.log.append(&records).map_err(logs_write)?;
        self.change_recent(|r| r.appended(decoded));
        Ok(())
    }

    /// Deletes the log from `log_id` on (entries a new leader's log does not have).
    pub fn delete_conflict_logs_since(&self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.change_recent(|r| r.truncated_from(log_id.index));
        self.log.truncate_from(log_id.index).map_err(logs_write)
    }

    /// Deletes the log up to `log_id`, which a snapshot holds.
    pub fn purge_logs_upto(&self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.change_recent(|r| r.purged_upto(log_id.index));
        self.put_json_synced(CF_META, KEY_PURGED, &log_id)?;
        self.log.purge_upto(log_id.index).map_err(logs_write)
    }
}
