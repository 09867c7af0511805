//! Where the ledger's records and serials are: all in memory (a ledger kept in one process,
//! tests, format 1 snapshots), or in the store behind a [`Source`], with in memory only what
//! the batch being applied changed.
//!
//! A replica's state machine is the second kind. Applying a command first brings the one
//! record (and serial) it names into memory ([`Records::fault_in`]); the store writes each
//! applied batch to RocksDB and then [`Records::settle`]s, so between batches nothing is held
//! here, every read goes to the store, and a member's memory does not grow with the fleet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::{EnrollState, Record};

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
    /// The record of `identity`, with its digest term set from the stored bytes.
    fn record(&self, identity: &str) -> Result<Option<Record>, ReadError>;

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
        if let Some(r) = src.record(identity)? {
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

    /// What the store holds now is what was applied: nothing needs to stay in memory.
    pub fn settle(&mut self) {
        if self.source.is_some() {
            self.records.clear();
            self.serials.clear();
            self.gone.clear();
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
        match &self.source {
            Some(src) if !self.gone.contains(identity) => src.record(identity),
            _ => Ok(None),
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
