//! Where the ledger's records and serials are: all in memory (a ledger kept in one process,
//! tests, format 1 snapshots), or in the store behind a [`Source`], with in memory only what
//! the batch being applied changed.
//!
//! A replica's state machine is the second kind. Applying a command first brings the one
//! record (and serial) it names into memory ([`Records::fault_in`]); the store writes each
//! applied batch to RocksDB and then [`Records::settle`]s, so between batches only the last
//! [`RECENT`] records written stay here (a flow's next command finds its record without
//! reading and decoding it again), every other read goes to the store, and a member's memory
//! does not grow with the fleet.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::{EnrollState, Record};

/// Records written last that a ledger kept in the store holds on to.
pub const RECENT: usize = 8192;

/// A failed read of the stored ledger.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("reading the stored ledger: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record {identity:?} cannot be read: {source}")]
    Record {
        identity: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Called once a scan holds its consistent view: the caller's lock may go.
pub type Release<'a> = Box<dyn FnOnce() + Send + 'a>;

/// The records and serials a store keeps.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The record of `identity`; with `term`, its digest term set from the stored bytes
    /// (what a command that changes it needs).
    fn record(&self, identity: &str, term: bool) -> Result<Option<Record>, ReadError>;

    /// Who `serial` was issued to.
    fn serial(&self, serial: &str) -> Result<Option<String>, ReadError>;

    /// Shows `visit` the records after `after` (all when empty) in identity order, only those
    /// in `states` unless it is empty, until it returns false. Reads one consistent point,
    /// taken before `release` is called.
    fn scan(
        &self,
        release: Release<'_>,
        after: &str,
        states: &BTreeSet<EnrollState>,
        visit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), ReadError>;

    /// Every serial with the identity it was issued to.
    fn serials(&self, visit: &mut dyn FnMut(&str, &str)) -> Result<(), ReadError>;

    /// The ledger digest over every record as stored (see [`crate::digest`]) and serial.
    fn sum(&self) -> Result<crate::digest::Sum, ReadError>;
}

/// Records by identity and serials; serialised as format 1 writes them (in memory only).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Records {
    /// Every record, or (with a source) those the batch being applied read or changed.
    records: BTreeMap<String, Record>,
    /// serial -> identity: every serial, or (with a source) those the batch recorded or read.
    serials: HashMap<String, String>,
    /// With a source: identities the batch forgot, so a later command of the same batch does
    /// not read them back from the store.
    #[serde(skip)]
    gone: BTreeSet<String>,
    #[serde(skip)]
    source: Option<Arc<dyn Source>>,
    /// With a source: the records written last, as the store holds them.
    #[serde(skip)]
    recent: Recent,
}

/// The last [`RECENT`] records settled, the oldest going first.
#[derive(Debug, Default, Clone)]
struct Recent {
    /// identity -> (when it was put, the record). Boxed: a record is about half a kilobyte, and
    /// as records come and go the map rehashes its slots now and then; with records in the
    /// slots each rehash copied megabytes into fresh pages (a quarter of applying a server,
    /// once a fleet outgrew this cache), with boxes it moves 40 bytes a slot.
    records: HashMap<String, (u64, Box<Record>)>,
    order: VecDeque<(u64, String)>,
    next: u64,
}

impl Recent {
    fn get(&self, identity: &str) -> Option<&Record> {
        self.records.get(identity).map(|(_, r)| r.as_ref())
    }

    fn put(&mut self, r: Record) {
        self.next += 1;
        self.order.push_back((self.next, r.identity.clone()));
        self.records
            .insert(r.identity.clone(), (self.next, Box::new(r)));
        while self.order.len() > RECENT {
            if let Some((at, id)) = self.order.pop_front() {
                // only when that is still its newest copy
                if self.records.get(&id).is_some_and(|(when, _)| *when == at) {
                    self.records.remove(&id);
                }
            }
        }
    }

    fn remove(&mut self, identity: &str) {
        self.records.remove(identity);
    }
}

impl Records {
    pub fn in_memory(records: Vec<Record>, serials: HashMap<String, String>) -> Records {
        Records {
            records: records
                .into_iter()
                .map(|r| (r.identity.clone(), r))
                .collect(),
            serials,
            ..Default::default()
        }
    }

    pub fn stored(source: Arc<dyn Source>) -> Records {
        Records {
            source: Some(source),
            ..Default::default()
        }
    }

    pub fn source(&self) -> Option<&Arc<dyn Source>> {
        self.source.as_ref()
    }

    /// Brings the record of `identity` into memory, to be read and changed in place.
    pub fn fault_in(&mut self, identity: &str) -> Result<(), ReadError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        if self.records.contains_key(identity) || self.gone.contains(identity) {
            return Ok(());
        }
        if let Some(r) = self.recent.get(identity) {
            self.records.insert(identity.to_string(), r.clone());
            return Ok(());
        }
        if let Some(r) = src.record(identity, true)? {
            self.records.insert(identity.to_string(), r);
        }
        Ok(())
    }

    /// Brings whom `serial` was issued to into memory.
    pub fn fault_in_serial(&mut self, serial: &str) -> Result<(), ReadError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        if self.serials.contains_key(serial) {
            return Ok(());
        }
        if let Some(identity) = src.serial(serial)? {
            self.serials.insert(serial.to_string(), identity);
        }
        Ok(())
    }

    /// What the store holds now is what was applied: only the last records written stay in
    /// memory.
    pub fn settle(&mut self) {
        if self.source.is_some() {
            for id in std::mem::take(&mut self.gone) {
                self.recent.remove(&id);
            }
            for (_, r) in std::mem::take(&mut self.records) {
                self.recent.put(r);
            }
            self.serials.clear();
        }
    }

    /// A record in memory (faulted in, or every record when there is no source).
    pub fn loaded(&self, identity: &str) -> Option<&Record> {
        self.records.get(identity)
    }

    pub fn loaded_mut(&mut self, identity: &str) -> Option<&mut Record> {
        self.records.get_mut(identity)
    }

    /// The record of `identity`, from memory or the store.
    pub fn get(&self, identity: &str) -> Result<Option<Record>, ReadError> {
        if let Some(r) = self.records.get(identity) {
            return Ok(Some(r.clone()));
        }
        if self.gone.contains(identity) {
            return Ok(None);
        }
        if let Some(r) = self.recent.get(identity) {
            return Ok(Some(r.clone()));
        }
        match &self.source {
            Some(src) => src.record(identity, false),
            None => Ok(None),
        }
    }

    /// The record of `identity` in memory, made by `new` when there is none.
    pub fn entry(&mut self, identity: &str, new: impl FnOnce() -> Record) -> &mut Record {
        self.gone.remove(identity);
        self.records.entry(identity.to_string()).or_insert_with(new)
    }

    pub fn remove(&mut self, identity: &str) {
        self.records.remove(identity);
        if self.source.is_some() {
            self.gone.insert(identity.to_string());
        }
    }

    /// Whom `serial` was issued to, as faulted in (or from every serial without a source).
    pub fn serial(&self, serial: &str) -> Option<&String> {
        self.serials.get(serial)
    }

    pub fn insert_serial(&mut self, serial: &str, identity: &str) {
        self.serials
            .insert(serial.to_string(), identity.to_string());
    }

    /// Shows `visit` the records after `after` in identity order (those in `states` unless
    /// empty) until it returns false. Between batches: with a source it reads the store.
    pub fn for_each(
        &self,
        after: &str,
        states: &BTreeSet<EnrollState>,
        visit: &mut dyn FnMut(&Record) -> bool,
    ) -> Result<(), ReadError> {
        use std::ops::Bound;
        if let Some(src) = &self.source {
            return src.scan(Box::new(|| ()), after, states, &mut |r| visit(&r));
        }
        let from = match after {
            "" => Bound::Unbounded,
            a => Bound::Excluded(a),
        };
        for r in self.records.range::<str, _>((from, Bound::Unbounded)) {
            if (states.is_empty() || states.contains(&r.1.state)) && !visit(r.1) {
                break;
            }
        }
        Ok(())
    }

    /// Every serial with its identity.
    pub fn for_each_serial(&self, visit: &mut dyn FnMut(&str, &str)) -> Result<(), ReadError> {
        match &self.source {
            Some(src) => src.serials(visit),
            None => {
                self.serials.iter().for_each(|(s, i)| visit(s, i));
                Ok(())
            }
        }
    }

    /// Records held in memory: all of them without a source.
    pub fn loaded_len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store holding one record per identity it is asked for, counting the reads.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    fn rec(identity: &str, attempts: u32) -> Record {
        serde_json::from_value(serde_json::json!({
            "identity": identity, "state": "Claimed", "owner": null, "lease_until_ms": 0,
            "attempts": attempts, "credential": null, "config_digest": null, "last_error": null,
            "first_seen_ms": 0, "updated_ms": 0, "history": []
        }))
        .unwrap()
    }

    impl Source for Counting {
        fn record(&self, identity: &str, _: bool) -> Result<Option<Record>, ReadError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Some(rec(identity, 0)))
        }
        fn serial(&self, _: &str) -> Result<Option<String>, ReadError> {
            Ok(None)
        }
        fn scan(
            &self,
            release: Release<'_>,
            _: &str,
            _: &BTreeSet<EnrollState>,
            _: &mut dyn FnMut(Record) -> bool,
        ) -> Result<(), ReadError> {
            release();
            Ok(())
        }
        fn serials(&self, _: &mut dyn FnMut(&str, &str)) -> Result<(), ReadError> {
            Ok(())
        }
        fn sum(&self) -> Result<crate::digest::Sum, ReadError> {
            Ok(Default::default())
        }
    }

    #[test]
    fn a_record_written_last_is_not_read_again_and_a_forgotten_one_is_not_kept() {
        let src = Arc::new(Counting::default());
        let mut r = Records::stored(src.clone());
        let reads = || src.0.load(Ordering::SeqCst);
        r.fault_in("a").unwrap();
        if let Some(a) = r.loaded_mut("a") {
            a.attempts = 7;
        }
        r.settle();
        assert_eq!(r.loaded_len(), 0, "nothing stays in the batch's memory");
        r.fault_in("a").unwrap();
        assert_eq!(reads(), 1, "the next command found it without a read");
        assert_eq!(r.get("a").unwrap().map(|a| a.attempts), Some(7));
        r.remove("a");
        assert_eq!(r.get("a").unwrap(), None, "forgotten within the batch");
        r.settle();
        assert_eq!(r.get("a").unwrap().map(|a| a.attempts), Some(0));
        assert_eq!(reads(), 2, "read from the store once no longer kept");
    }

    #[test]
    fn the_oldest_record_goes_first_and_a_rewritten_one_stays() {
        let mut recent = Recent::default();
        recent.put(rec("first", 0));
        recent.put(rec("again", 0));
        for i in 0..RECENT - 2 {
            recent.put(rec(&format!("n{i}"), 0));
        }
        // rewritten: its first copy leaving the queue must not take it along
        recent.put(rec("again", 1));
        assert!(recent.get("first").is_none());
        recent.put(rec("one-more", 0));
        assert_eq!(recent.get("again").map(|r| r.attempts), Some(1));
        assert!(recent.records.len() <= RECENT);
    }
}
