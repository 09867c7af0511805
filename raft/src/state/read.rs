//! Reading the ledger: a record, pages of records by state and filter, the counts by state
//! and member, and the digest, the last two kept as commands apply so asking is cheap.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::flow::forgettable;
use super::{EnrollState, LedgerState, Record};
use crate::records::ReadError;

/// Which records a page reads (see [`LedgerState::page`]).
#[derive(Clone, Copy)]
pub struct Filter<'a> {
    /// Only records in these states (any when empty): a store reads its index by state.
    pub states: &'a BTreeSet<EnrollState>,
    /// `keep` accepts every record in `states`: the kept counts say how many match.
    pub by_state_only: bool,
    pub keep: &'a (dyn Fn(&Record) -> bool + Sync),
}

impl<'a> Filter<'a> {
    /// Every record `keep` accepts, read one by one.
    pub fn keep(keep: &'a (dyn Fn(&Record) -> bool + Sync)) -> Filter<'a> {
        static ANY: BTreeSet<EnrollState> = BTreeSet::new();
        Filter {
            states: &ANY,
            by_state_only: false,
            keep,
        }
    }
}

/// The kept counts; copies start over (they count when first asked).
#[derive(Debug, Default)]
pub(super) struct Tally(std::sync::Mutex<Option<LedgerCounts>>);

impl Tally {
    pub(super) fn take(&self) -> Option<LedgerCounts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(super) fn put(&self, c: Option<LedgerCounts>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

impl Clone for Tally {
    fn clone(&self) -> Self {
        Tally::default()
    }
}

/// One page of records (see [`LedgerState::page`]).
#[derive(Debug, Default, Clone)]
pub struct Page {
    pub records: Vec<Record>,
    /// Records that match, over the whole ledger (when counted).
    pub matched: usize,
    /// More match after the last of this page.
    pub more: bool,
}

/// Record counts for metrics and status.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounts {
    pub by_state: BTreeMap<EnrollState, usize>,
    pub owned_by_member: usize,
    /// Live claims per member.
    pub claimed_by: BTreeMap<String, usize>,
    /// Revoked credentials over all records.
    pub revoked: usize,
    /// Enrolled servers by the member that issued their credential.
    pub enrolled_by: BTreeMap<String, usize>,
}

impl LedgerCounts {
    /// Adds (`add`) or takes out what `r` counts for.
    pub(crate) fn count(&mut self, r: &Record, add: bool) {
        fn step<K: Ord>(map: &mut BTreeMap<K, usize>, key: K, add: bool) {
            if add {
                *map.entry(key).or_default() += 1;
            } else if let Some(n) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        step(&mut self.by_state, r.state, add);
        if let (EnrollState::Claimed, Some(owner)) = (r.state, &r.owner) {
            step(&mut self.claimed_by, owner.clone(), add);
        }
        if add {
            self.revoked += r.revoked.len();
        } else {
            self.revoked = self.revoked.saturating_sub(r.revoked.len());
        }
        if let (EnrollState::Enrolled, Some(cred)) = (r.state, &r.credential) {
            step(&mut self.enrolled_by, cred.issued_by.clone(), add);
        }
    }
}

impl LedgerState {
    /// Records by state, and how many `member` holds a claim on. Counted over the whole ledger
    /// once, then kept as commands apply, so metrics and `/status` read it in constant time.
    pub fn counts(&self, member: &str) -> LedgerCounts {
        let mut tally = self.tally.0.lock().unwrap_or_else(|e| e.into_inner());
        if tally.is_none() {
            match self.full_counts() {
                Ok(c) => *tally = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot count the ledger");
                    return LedgerCounts::default();
                }
            }
        }
        let mut out = tally.clone().unwrap_or_default();
        out.owned_by_member = out.claimed_by.get(member).copied().unwrap_or(0);
        out
    }

    /// The counts as kept so far, when they are: the store writes them with every batch.
    pub fn kept_counts(&self) -> Option<LedgerCounts> {
        self.tally
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`LedgerState::counts`] without `owned_by_member`, over every record.
    pub(super) fn full_counts(&self) -> Result<LedgerCounts, ReadError> {
        let mut c = LedgerCounts::default();
        self.records.for_each("", &BTreeSet::new(), &mut |r| {
            c.count(r, true);
            true
        })?;
        Ok(c)
    }

    /// Failed records that never held a credential and have not changed since `before_ms`,
    /// at most `limit`: what `Forget` may drop.
    pub fn forgettable(&self, before_ms: u64, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let failed = BTreeSet::from([EnrollState::Failed]);
        let read = self.records.for_each("", &failed, &mut |r| {
            if forgettable(r) && r.updated_ms < before_ms {
                out.push(r.identity.clone());
            }
            out.len() < limit
        });
        if let Err(e) = read {
            tracing::error!(error = %e, "cannot read the failed records");
        }
        out
    }

    /// The sum of the SHA-256 of every record and serial (see [`crate::digest`]), 64 hex
    /// digits: equal on two members exactly when their ledgers are equal. Heartbeats and
    /// settings are left out. Computed over the whole ledger once, then kept as commands
    /// apply, so asking is cheap.
    pub fn digest(&self) -> String {
        if let Some(s) = self.running.get() {
            return s.hex();
        }
        match self.full_digest() {
            Ok(s) => {
                self.running.set(Some(s));
                s.hex()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the ledger for its digest");
                String::new()
            }
        }
    }

    /// The digest as kept so far, when it is: the store writes it with every batch, so a
    /// restart reads it back instead of hashing every record again.
    pub fn kept_digest(&self) -> Option<crate::digest::Sum> {
        self.running.get()
    }

    /// Takes up the digest the store kept with the records this ledger was loaded from.
    pub fn resume_digest(&self, sum: crate::digest::Sum) {
        self.running.set(Some(sum));
    }

    pub(super) fn full_digest(&self) -> Result<crate::digest::Sum, ReadError> {
        use crate::digest::Sum;
        if let Some(src) = self.records.source() {
            return src.sum();
        }
        let mut sum = Sum::default();
        self.records.for_each("", &BTreeSet::new(), &mut |rec| {
            sum.add(rec.digest_term.get().unwrap_or_else(|| Sum::record(rec)));
            true
        })?;
        self.records
            .for_each_serial(&mut |s, i| sum.add(Sum::serial(s, i)))?;
        Ok(sum)
    }

    /// Every serial ever recorded, with the identity it was issued to.
    pub fn for_each_serial(&self, visit: &mut dyn FnMut(&str, &str)) -> Result<(), ReadError> {
        self.records.for_each_serial(visit)
    }

    /// The record of `identity` as applied (`None`, logged, when the store cannot read it).
    pub fn record(&self, identity: &str) -> Option<Record> {
        self.records.get(identity).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read a ledger record");
            None
        })
    }

    /// Shows `visit` the records after `after` in identity order (only those in `states`
    /// unless it is empty) until it returns false.
    pub fn for_each(
        &self,
        after: &str,
        states: &BTreeSet<EnrollState>,
        visit: &mut dyn FnMut(&Record) -> bool,
    ) -> Result<(), ReadError> {
        self.records.for_each(after, states, visit)
    }

    /// Every record (tests and small ledgers; a sweep over a large one uses `for_each`).
    pub fn all_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if let Err(e) = self.for_each("", &BTreeSet::new(), &mut |r| {
            out.push(r.clone());
            true
        }) {
            tracing::error!(error = %e, "cannot read the ledger");
        }
        out
    }

    /// The records `filter` keeps with an identity after `after` (all when empty), at most
    /// `limit` of them in identity order, and (with `count`) how many it keeps in all. Only
    /// the page is copied, so a page of a large ledger costs no more memory than the page.
    pub fn page(&self, after: &str, limit: usize, count: bool, filter: Filter<'_>) -> Page {
        let mut page = Page::default();
        let read = page_into(
            &mut page,
            after,
            limit,
            count,
            filter,
            self.counts(""),
            |a, s, v| self.records.for_each(a, s, v),
        );
        if let Err(e) = read {
            tracing::error!(error = %e, "cannot read a page of the ledger");
        }
        page
    }

    /// Records in the ledger.
    pub fn len(&self) -> usize {
        match self.records.source() {
            None => self.records.loaded_len(),
            Some(_) => self.counts("").by_state.values().sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fills `page` from `read` (see [`LedgerState::page`]); `counts` are the ledger's kept counts.
pub(crate) fn page_into(
    page: &mut Page,
    after: &str,
    limit: usize,
    count: bool,
    filter: Filter<'_>,
    counts: LedgerCounts,
    read: impl FnOnce(
        &str,
        &BTreeSet<EnrollState>,
        &mut dyn FnMut(&Record) -> bool,
    ) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let counted = count && filter.by_state_only;
    if counted {
        page.matched = match filter.states.is_empty() {
            true => counts.by_state.values().sum(),
            false => filter
                .states
                .iter()
                .map(|s| counts.by_state.get(s).copied().unwrap_or(0))
                .sum(),
        };
    }
    // counting by reading goes over every record; otherwise the page starts at `after`
    let (from, scan_all) = match count && !counted {
        true => ("", true),
        false => (after, false),
    };
    read(from, filter.states, &mut |r| {
        if !(filter.keep)(r) {
            return true;
        }
        if scan_all {
            page.matched += 1;
        }
        if !after.is_empty() && r.identity.as_str() <= after {
            return true;
        }
        if page.records.len() == limit {
            page.more = true;
            return scan_all;
        }
        if !page.more {
            page.records.push(r.clone());
        }
        true
    })
}
