//! The Raft log entries a member appended last, kept decoded in memory.
//!
//! openraft reads entries back from the log store twice after they are appended: a leader's
//! replication stream reads each entry once per follower to send it, and every member reads
//! each committed entry to apply it. From RocksDB that is an iterator, a copy and a decode
//! every time, so a leader with four followers decoded every entry five times. The entries
//! appended last are kept here instead (a [`crate::types::Batch`] shares its commands, so
//! handing one out copies no command) and served while a read falls within them.
//!
//! What is here is always a suffix of the log as stored: every append goes through
//! [`RecentLog::appended`], and a truncation or purge of the stored log is mirrored
//! ([`RecentLog::truncated_from`], [`RecentLog::purged_upto`]); anything else that replaces
//! the log (installing a snapshot) [`RecentLog::clear`]s it. A read that starts before the
//! first kept entry goes to the store, as do all reads after a restart until the next append.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use openraft::Entry;

use crate::types::TypeConfig;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 1024;
/// Most bytes the kept entries may take together as the log stores them (an entry may be
/// up to `replicated::MAX_BATCH_BYTES`, as a batch of imports is): a busy minute's entries fit,
/// and a member's memory does not grow with the size of its entries.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// The last appended entries, consecutive by index, with their stored sizes.
#[derive(Debug, Default)]
pub struct RecentLog {
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl RecentLog {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries
            .back()
            .map(|(e, _)| e.log_id.index.saturating_add(1))
    }

    /// `entries` were written to the stored log, in order, each taking the bytes given.
    pub fn appended(&mut self, entries: impl IntoIterator<Item = (Entry<TypeConfig>, usize)>) {
        for (e, bytes) in entries {
            // a gap (or an overwrite the truncation did not announce) starts afresh
            if self.next_index().is_some_and(|next| next != e.log_id.index) {
                self.clear();
            }
            self.bytes += bytes;
            self.entries.push_back((e, bytes));
        }
        while self.entries.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }

    /// The stored log lost every entry from `index` on (a conflicting suffix).
    pub fn truncated_from(&mut self, index: u64) {
        while self.next_index().is_some_and(|next| next > index) {
            if let Some((_, bytes)) = self.entries.pop_back() {
                self.bytes = self.bytes.saturating_sub(bytes);
            }
        }
    }

    /// The stored log lost every entry up to and including `index`.
    pub fn purged_upto(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries of `range`, when they all are here: it starts at or after the first kept
    /// entry and ends at or before the last. A range open at its end, or reaching past the
    /// last kept entry (an append still being written), is the store's to answer.
    pub fn get<RB: RangeBounds<u64>>(&self, range: &RB) -> Option<Vec<Entry<TypeConfig>>> {
        let (first, next) = (self.first_index()?, self.next_index()?);
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => return None,
        };
        if start < first || end > next {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .map(|(e, _)| e)
                .take_while(|e| range.contains(&e.log_id.index))
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::types::Batch;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    /// Entry `index` as appended, taking `bytes` in the log.
    fn appended(index: u64, bytes: usize) -> (Entry<TypeConfig>, usize) {
        (entry(index, 1), bytes)
    }

    fn entry(index: u64, commands: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch::new(
                (0..commands)
                    .map(|i| Command::Heartbeat {
                        member: format!("m{i}"),
                        at_ms: index,
                    })
                    .collect(),
            )),
        }
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_a_range_only_when_it_starts_within_what_is_kept() {
        let mut r = RecentLog::default();
        assert_eq!(
            indexes(r.get(&(1..20))),
            None,
            "nothing kept: the store answers"
        );
        r.appended([appended(5, 10), appended(6, 10), appended(7, 10)]);
        assert_eq!(indexes(r.get(&(5..8))), Some(vec![5, 6, 7]));
        assert_eq!(indexes(r.get(&(6..=6))), Some(vec![6]));
        assert_eq!(indexes(r.get(&(6..=7))), Some(vec![6, 7]));
        assert_eq!(indexes(r.get(&(8..8))), Some(vec![]));
        // open-ended, or past the last appended entry: the store answers
        assert_eq!(indexes(r.get(&(6..))), None);
        assert_eq!(indexes(r.get(&(6..9))), None);
        assert_eq!(indexes(r.get(&(4..8))), None);
        assert_eq!(indexes(r.get(&(..8))), None);
    }

    #[test]
    fn follows_truncation_purge_and_gaps_as_the_store_does() {
        let mut r = RecentLog::default();
        r.appended((1..=4).map(|i| appended(i, 2)));
        r.truncated_from(3);
        assert_eq!(indexes(r.get(&(1..3))), Some(vec![1, 2]));
        assert_eq!(r.bytes, 4);
        // the new leader's entries replace the conflicting ones
        r.appended([appended(3, 1)]);
        assert_eq!(indexes(r.get(&(1..4))), Some(vec![1, 2, 3]));
        r.purged_upto(1);
        assert_eq!(indexes(r.get(&(1..4))), None);
        assert_eq!(indexes(r.get(&(2..4))), Some(vec![2, 3]));
        // an append that does not follow on (after a snapshot, say) starts afresh
        r.appended([appended(10, 1)]);
        assert_eq!(indexes(r.get(&(2..4))), None);
        assert_eq!(indexes(r.get(&(10..11))), Some(vec![10]));
        assert_eq!(r.bytes, 1);
        r.clear();
        assert_eq!(indexes(r.get(&(10..11))), None);
    }

    #[test]
    fn stays_bounded_in_entries_and_bytes() {
        let mut r = RecentLog::default();
        for i in 1..=(MAX_ENTRIES as u64 + 10) {
            r.appended([appended(i, 1)]);
        }
        assert_eq!(r.entries.len(), MAX_ENTRIES);
        assert_eq!(r.first_index(), Some(11));
        assert_eq!(r.bytes, MAX_ENTRIES);
        let next = MAX_ENTRIES as u64 + 11;
        r.appended([appended(next, MAX_BYTES / 2)]);
        r.appended([appended(next + 1, MAX_BYTES / 2)]);
        // over the bound: the oldest go until it holds again
        assert_eq!(r.first_index(), Some(next));
        assert_eq!(r.bytes, MAX_BYTES);
        // an entry over the bound alone is still kept: it was appended last
        r.appended([appended(next + 2, MAX_BYTES + 1)]);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.bytes, MAX_BYTES + 1);
        r.appended([appended(next + 3, 3)]);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.bytes, 3);
    }

    #[test]
    fn an_entry_handed_out_shares_its_commands() {
        let mut r = RecentLog::default();
        let e = entry(1, 3);
        r.appended([(e.clone(), 100)]);
        let got = r.get(&(1..2)).unwrap_or_default();
        match (&e.payload, got.first().map(|g| &g.payload)) {
            (EntryPayload::Normal(a), Some(EntryPayload::Normal(b))) => {
                assert!(std::sync::Arc::ptr_eq(&a.commands, &b.commands));
            }
            other => panic!("{other:?}"),
        }
    }
}
