//! The ledger's records as the store keeps them in RocksDB, read in place: one record by
//! identity, a serial, or records in identity order, of every state or (through the index by
//! state) of some.
//!
//! Column families (the store writes them, see `store`):
//! - `ledger`: identity -> the record's JSON;
//! - `serials`: serial -> identity, every serial ever recorded;
//! - `by_state`: one byte for the state, then the identity -> nothing; what `ledger list
//!   --state` and the forget sweep read instead of every record.

use std::collections::BTreeSet;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use crate::digest::Sum;
use crate::records::{ReadError, Release, Source};
use crate::state::{EnrollState, Record};

pub const CF_LEDGER: &str = "ledger";
pub const CF_SERIALS: &str = "serials";
pub const CF_BY_STATE: &str = "by_state";

/// The key of `identity` in the index by state.
pub fn state_key(state: EnrollState, identity: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + identity.len());
    k.push(state_byte(state));
    k.extend_from_slice(identity.as_bytes());
    k
}

fn state_byte(state: EnrollState) -> u8 {
    EnrollState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or(0) as u8
}

fn store_err(e: rocksdb::Error) -> ReadError {
    ReadError::Store(Box::new(e))
}

fn no_cf(name: &str) -> ReadError {
    ReadError::Store(format!("no column family {name}").into())
}

/// A stored record, its digest term taken from the bytes it is stored as.
pub fn decode(identity: &[u8], stored: &[u8]) -> Result<Record, ReadError> {
    let mut r = parse(identity, stored)?;
    r.digest_term.set(Sum::encoded_record(stored));
    Ok(r)
}

/// A stored record, for reading only (no digest term).
fn parse(identity: &[u8], stored: &[u8]) -> Result<Record, ReadError> {
    serde_json::from_slice(stored).map_err(|source| ReadError::Record {
        identity: String::from_utf8_lossy(identity).into_owned(),
        source,
    })
}

/// The records of one store.
#[derive(Debug)]
pub struct StoredRecords {
    db: Arc<DB>,
}

impl StoredRecords {
    pub fn new(db: Arc<DB>) -> StoredRecords {
        StoredRecords { db }
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, ReadError> {
        self.db.cf_handle(name).ok_or_else(|| no_cf(name))
    }
}

impl Source for StoredRecords {
    fn record(&self, identity: &str, term: bool) -> Result<Option<Record>, ReadError> {
        let raw = self
            .db
            .get_pinned_cf(self.cf(CF_LEDGER)?, identity.as_bytes())
            .map_err(store_err)?;
        raw.map(|v| match term {
            true => decode(identity.as_bytes(), &v),
            false => parse(identity.as_bytes(), &v),
        })
        .transpose()
    }

    fn serial(&self, serial: &str) -> Result<Option<String>, ReadError> {
        let raw = self
            .db
            .get_pinned_cf(self.cf(CF_SERIALS)?, serial.as_bytes())
            .map_err(store_err)?;
        Ok(raw.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn scan(
        &self,
        release: Release<'_>,
        after: &str,
        states: &BTreeSet<EnrollState>,
        visit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), ReadError> {
        let ledger = self.cf(CF_LEDGER)?;
        let index = self.cf(CF_BY_STATE)?;
        let snap = self.db.snapshot();
        release();
        let opts = || {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            ro
        };
        if states.is_empty() {
            let from = IteratorMode::From(after.as_bytes(), Direction::Forward);
            for item in self.db.iterator_cf_opt(ledger, opts(), from) {
                let (k, v) = item.map_err(store_err)?;
                if *k == *after.as_bytes() {
                    continue;
                }
                if !visit(parse(&k, &v)?) {
                    break;
                }
            }
            return Ok(());
        }
        // one cursor per state over the index, merged in identity order
        let mut cursors = Vec::new();
        for s in states {
            let start = state_key(*s, after);
            let mut it = self.db.iterator_cf_opt(
                index,
                opts(),
                IteratorMode::From(&start, Direction::Forward),
            );
            let prefix = state_byte(*s);
            let mut next = move || -> Result<Option<Vec<u8>>, ReadError> {
                for item in it.by_ref() {
                    let (k, _) = item.map_err(store_err)?;
                    if k.first() != Some(&prefix) {
                        return Ok(None);
                    }
                    if k[1..] != *after.as_bytes() {
                        return Ok(Some(k[1..].to_vec()));
                    }
                }
                Ok(None)
            };
            let head = next()?;
            cursors.push((head, next));
        }
        loop {
            let Some(i) = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, (head, _))| head.as_ref().map(|h| (i, h)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i)
            else {
                return Ok(());
            };
            let identity = cursors[i].0.take().unwrap_or_default();
            cursors[i].0 = (cursors[i].1)()?;
            let raw = self
                .db
                .get_pinned_cf_opt(ledger, &identity, &opts())
                .map_err(store_err)?;
            // an index entry without its record would be a bug; the record is the truth
            let Some(raw) = raw else { continue };
            if !visit(parse(&identity, &raw)?) {
                return Ok(());
            }
        }
    }

    fn sum(&self) -> Result<Sum, ReadError> {
        // a record's term is the hash of the bytes it is stored as: what apply takes out when
        // it changes the record and a snapshot's install adds up
        let mut sum = Sum::default();
        for item in self
            .db
            .iterator_cf(self.cf(CF_LEDGER)?, IteratorMode::Start)
        {
            let (_, v) = item.map_err(store_err)?;
            sum.add(Sum::encoded_record(&v));
        }
        self.serials(&mut |s, i| sum.add(Sum::serial(s, i)))?;
        Ok(sum)
    }

    fn serials(&self, visit: &mut dyn FnMut(&str, &str)) -> Result<(), ReadError> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_SERIALS)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(store_err)?;
            visit(&String::from_utf8_lossy(&k), &String::from_utf8_lossy(&v));
        }
        Ok(())
    }
}
