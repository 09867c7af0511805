//! The enrollment ledger and every rule about how it changes.
//!
//! One record per server identity: its state, which member owns it and until when, how often
//! it was tried, the credential issued to it and a short history. [`LedgerState::apply`] is the
//! only writer. It is deterministic (time comes from the command), so replaying the same
//! commands on any replica gives the same ledger, and applying a command twice is harmless
//! where the second application is rejected or changes nothing.
//!
//! The rules:
//! - a server is worked by at most one member at a time: a claim succeeds when nobody holds a
//!   live lease on it, or the claimant already holds it;
//! - an enrolled server is claimed again only when it was seen in provisioning mode well after
//!   it was enrolled (it fell back on its own: broken configuration, expired credentials), or
//!   after an operator's reprovision request;
//! - a credential is recorded only by the member holding the claim, and a serial number is
//!   never recorded twice;
//! - only the owner releases or completes a claim;
//! - a member is live while its last heartbeat is recent; heartbeats never go back in time;
//! - a credential replaced by a new one, or revoked by an operator, is kept as revoked (the
//!   CRL is made from these);
//! - an operator's reprovision request makes an enrolled server claimable again.
//!
//! Rules 2 (applied once the cluster's `rules` setting says so, see [`LEDGER_RULES`]):
//! - a re-enrollment keeps the credential it replaces valid (`superseded`) until the server
//!   restarted with the new one (`Restarted`: its restart answered, or, unanswered, it left
//!   provisioning mode), so a re-enrollment that never completes leaves the server its
//!   working credential;
//! - a claim on an enrolled server that ends without a new credential (failed, deferred,
//!   abandoned, reassigned) leaves it enrolled: a sighting alone never unenrolls a server;
//! - the record of a server that failed and never held a credential may be forgotten once it
//!   has not changed for a while (`Forget`).
//!
//! Rules 5: a flow that issues a credential records it and the enrollment in one command
//! (`Enroll`) before it sends the configuration; its owner may still record a failure
//! (`Release`) within the settle time, while other members are kept off by that same time.
//!
//! Rules 6: once the leader made an ownership epoch (see [`crate::ownership`]) servers are
//! not claimed one by one; a flow's only command is its end (`Finish`), enrolled or with an
//! outcome, applied under the same rules as `Enroll` and `Release` except the claim, and
//! refused when its member acknowledged an epoch newer than the flow's. New claims are
//! refused (`NoClaims`); one held from before runs to its end.
//!
//! Rules 7: an owner may lend servers it has not started to another member of the epoch
//! (`Lend`, see [`crate::ownership::Loan`]); while a loan is in force a `Finish` on its server
//! is refused from anyone but the borrower.
//!
//! Rules 8: a record's history stores each line as a typed event (`history`), not its
//! sentence; a command sent again is known by its event either way.
//!
//! The ledger's parts: its records and why a command is refused (`record`); reading it
//! (counts, pages, the digest: `read`); the cluster's settings and members (`settings`);
//! applying a command (`apply`) under the rules a flow's record follows (`flow`).

mod apply;
mod flow;
mod history;
mod read;
mod record;
mod settings;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::records::{ReadError, Records};

pub use history::{Event, Logged, TYPED_HISTORY_RULES};
pub(crate) use read::page_into;
use read::Tally;
pub use read::{Filter, LedgerCounts, Page};
pub use record::{Credential, EnrollState, HistoryEntry, Record, Rejection, Revocation};
pub use settings::ClusterSettings;

/// Entries kept in a record's history; older ones are dropped.
pub const HISTORY_LIMIT: usize = 32;
/// Issue times kept per record, for the re-enrollment limit.
pub const ISSUE_TIMES_KEPT: usize = 16;

/// The newest ledger rules this build applies. Every replica applies the rules the replicated
/// `rules` setting names, never its own newest, so members of two builds side by side (a
/// rolling upgrade) apply every command alike; the leader raises the setting once every member
/// reports it applies the new rules (`SetRules`). 1: as first released. 2: see the list above.
/// 3: commands apply as in 2; every member decodes binary, so members send it to each other
/// (see [`crate::codec`]). 4: as 3; every member reads snapshots in format 2, so they are
/// built in it (see [`crate::snapshot`]). 5: `Enroll` (see the list above). 6: ownership
/// epochs and `Finish` (see the list above). 7: loans (see the list above). 8: history lines
/// stored as typed events (see the list above).
pub const LEDGER_RULES: u32 = 8;
/// The ledger rules from which `Enroll` applies.
pub const ENROLL_RULES: u32 = 5;
/// The ledger rules from which ownership epochs and `Finish` apply.
pub const OWNED_RULES: u32 = 6;
/// The ledger rules from which `Lend` applies.
pub const LEND_RULES: u32 = 7;

/// An enrolled server seen in provisioning mode within this long of its last change is still
/// restarting into its configuration; only later is it a server that fell back.
pub const REENROLL_SETTLE_MS: u64 = 15_000;

/// What applying a command leaves for the store to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// The command changed no record (heartbeats, settings).
    NoRecord,
    /// The JSON of the record as it is now, its state before (none when it is new) and now
    /// (for the store's index by state).
    Record {
        json: Vec<u8>,
        was: Option<EnrollState>,
        now: EnrollState,
    },
    /// The record is gone.
    Forgotten { was: Option<EnrollState> },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LedgerState {
    /// Records by identity and serial -> identity (to refuse a serial issued before): in
    /// memory, or in the store (see [`crate::records`]).
    #[serde(flatten)]
    records: Records,
    /// member -> time of its last heartbeat (Unix ms).
    #[serde(default)]
    heartbeats: BTreeMap<String, u64>,
    /// Cluster-wide settings: paused, and members that take no new servers.
    #[serde(default)]
    settings: ClusterSettings,
    /// [`LedgerState::digest`], kept as commands apply.
    #[serde(skip)]
    running: crate::digest::Running,
    /// [`LedgerState::counts`], kept as commands apply, once first asked for.
    #[serde(skip)]
    tally: Tally,
}

/// Why a command could not be applied to a stored ledger (the store stops and reloads).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("encoding a record: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl LedgerState {
    /// A ledger held in memory, from records, the serial index and heartbeats.
    pub fn restore(
        records: Vec<Record>,
        serials: HashMap<String, String>,
        heartbeats: BTreeMap<String, u64>,
        settings: ClusterSettings,
    ) -> Self {
        LedgerState {
            records: Records::in_memory(records, serials),
            heartbeats,
            settings,
            running: Default::default(),
            tally: Default::default(),
        }
    }

    /// A ledger whose records a store keeps (`source`), with the counts and digest the store
    /// kept with them (counted and summed over the store when it kept none).
    pub fn stored(
        source: std::sync::Arc<dyn crate::records::Source>,
        heartbeats: BTreeMap<String, u64>,
        settings: ClusterSettings,
        counts: Option<LedgerCounts>,
        digest: Option<crate::digest::Sum>,
    ) -> Result<Self, ReadError> {
        let s = LedgerState {
            records: Records::stored(source),
            heartbeats,
            settings,
            running: Default::default(),
            tally: Default::default(),
        };
        let counts = match counts {
            Some(c) => c,
            None => s.full_counts()?,
        };
        s.tally.put(Some(counts));
        let digest = match digest {
            Some(d) => d,
            None => s.full_digest()?,
        };
        s.running.set(Some(digest));
        Ok(s)
    }

    /// The store this ledger's records are in, when they are not in memory.
    pub fn source(&self) -> Option<&std::sync::Arc<dyn crate::records::Source>> {
        self.records.source()
    }

    /// A copy held wholly in memory (what a format 1 snapshot is written from).
    pub fn to_memory(&self) -> Result<LedgerState, ReadError> {
        let mut records = Vec::new();
        self.records.for_each("", &BTreeSet::new(), &mut |r| {
            records.push(r.clone());
            true
        })?;
        let mut serials = HashMap::new();
        self.records.for_each_serial(&mut |s, i| {
            serials.insert(s.to_string(), i.to_string());
        })?;
        Ok(LedgerState::restore(
            records,
            serials,
            self.heartbeats.clone(),
            self.settings.clone(),
        ))
    }

    /// The store wrote what was applied: nothing of it needs to stay in memory.
    pub fn settle(&mut self) {
        self.records.settle();
    }
}

#[cfg(test)]
mod tests;
