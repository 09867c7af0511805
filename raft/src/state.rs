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
//!   restarted with the new one (`Restarted`), so a re-enrollment that never completes leaves
//!   the server its working credential;
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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{Command, FlowEnd, ReleaseOutcome};
use crate::records::{ReadError, Records};

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
/// epochs and `Finish` (see the list above). 7: loans (see the list above).
pub const LEDGER_RULES: u32 = 7;
/// The ledger rules from which `Enroll` applies.
pub const ENROLL_RULES: u32 = 5;
/// The ledger rules from which ownership epochs and `Finish` apply.
pub const OWNED_RULES: u32 = 6;
/// The ledger rules from which `Lend` applies.
pub const LEND_RULES: u32 = 7;

fn rules_v1() -> u32 {
    1
}
/// An enrolled server seen in provisioning mode within this long of its last change is still
/// restarting into its configuration; only later is it a server that fell back.
pub const REENROLL_SETTLE_MS: u64 = 15_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EnrollState {
    Claimed,
    Enrolled,
    Deferred,
    Failed,
    Shutdown,
    /// An operator asked it to go back to provisioning mode.
    Reprovisioning,
    /// An operator revoked its credential.
    Revoked,
    /// Asked to update its Choria version; it comes back to provisioning mode after.
    Upgrading,
}

impl EnrollState {
    pub const ALL: [EnrollState; 8] = [
        EnrollState::Claimed,
        EnrollState::Enrolled,
        EnrollState::Deferred,
        EnrollState::Failed,
        EnrollState::Shutdown,
        EnrollState::Reprovisioning,
        EnrollState::Revoked,
        EnrollState::Upgrading,
    ];

    /// Lower-case name, as in metrics labels and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            EnrollState::Claimed => "claimed",
            EnrollState::Enrolled => "enrolled",
            EnrollState::Deferred => "deferred",
            EnrollState::Failed => "failed",
            EnrollState::Shutdown => "shutdown",
            EnrollState::Reprovisioning => "reprovisioning",
            EnrollState::Revoked => "revoked",
            EnrollState::Upgrading => "upgrading",
        }
    }

    pub fn from_name(name: &str) -> Option<EnrollState> {
        EnrollState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A credential that is no longer valid: replaced by a newer one or revoked by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub serial: String,
    pub fingerprint: String,
    /// Unix seconds; after this the entry can leave the CRL.
    pub not_after: i64,
    pub revoked_at_ms: u64,
    pub revoked_by: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Certificate serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 of the certificate DER, lower-case hex.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
    pub issued_by: String,
    pub issued_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
    pub member: String,
    pub event: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub identity: String,
    pub state: EnrollState,
    pub owner: Option<String>,
    pub lease_until_ms: u64,
    /// Claims made for this server, including the current one.
    pub attempts: u32,
    pub credential: Option<Credential>,
    pub config_digest: Option<String>,
    pub last_error: Option<String>,
    pub first_seen_ms: u64,
    pub updated_ms: u64,
    pub history: Vec<HistoryEntry>,
    /// Earlier credentials of this server, all revoked.
    #[serde(default)]
    pub revoked: Vec<Revocation>,
    /// Inventory facts kept at enrollment, for fact filters.
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    /// The credential a re-enrollment replaced, still valid until the server restarted with
    /// the new one (rules 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Credential>,
    /// Claimed while it was enrolled: ending without a new credential leaves it enrolled
    /// (rules 2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claimed_while_enrolled: bool,
    /// When its latest credentials were issued (Unix ms), oldest first, at most
    /// [`ISSUE_TIMES_KEPT`] (rules 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issued_at_ms: Vec<u64>,
    /// This record's term in the ledger digest, once computed (see [`crate::digest::Term`]).
    #[serde(skip)]
    pub digest_term: crate::digest::Term,
}

impl Record {
    /// Why `member` may not claim this server at `at_ms`, seen waiting at `seen_ms`: enrolled
    /// so recently it is still restarting, or held by another member's live claim. The rule a
    /// `Claim` is applied with, and what a member reads before it asks the server anything.
    pub fn claim_refusal(&self, member: &str, seen_ms: u64, at_ms: u64) -> Option<Rejection> {
        match (&self.state, &self.owner) {
            (EnrollState::Enrolled, _)
                if seen_ms < self.updated_ms.saturating_add(REENROLL_SETTLE_MS) =>
            {
                Some(Rejection::AlreadyEnrolled)
            }
            (EnrollState::Claimed, Some(owner))
                if owner != member && self.lease_until_ms > at_ms =>
            {
                Some(Rejection::ClaimedBy {
                    member: owner.clone(),
                    until_ms: self.lease_until_ms,
                })
            }
            _ => None,
        }
    }

    /// Credentials issued to this server at or after `since_ms`.
    pub fn issued_since(&self, since_ms: u64) -> usize {
        self.issued_at_ms.iter().filter(|t| **t >= since_ms).count()
    }
}

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

/// Why a command did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// Another member holds a live claim on the server.
    ClaimedBy { member: String, until_ms: u64 },
    /// The server is enrolled already.
    AlreadyEnrolled,
    /// The command needs a claim that `member` does not hold.
    NotOwner { member: String },
    /// No record exists for the identity.
    UnknownServer,
    /// The serial number was recorded before, for `identity`.
    SerialInUse { identity: String },
    /// The server has no credential to revoke.
    NoCredential,
    /// The proposing member is not (or no longer) in the group's membership.
    NotAMember { member: String },
    /// The command needs ledger rules the cluster does not apply yet.
    NotEnabled { rules: u32 },
    /// The record may not be forgotten: it held a credential, is not failed, or changed
    /// recently.
    NotForgettable,
    /// Servers are not claimed once ownership epochs apply (rules 6).
    NoClaims,
    /// The command names an ownership epoch that is not (or no longer) the one it needs; the
    /// current one is `epoch`.
    StaleEpoch { epoch: u64 },
    /// The server is lent to `to` (rules 7), or a loan broke a rule (`to` empty, `why` says).
    Lent { to: String, why: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::ClaimedBy { member, until_ms } => {
                write!(f, "claimed by {member} until {until_ms}")
            }
            Rejection::AlreadyEnrolled => f.write_str("already enrolled"),
            Rejection::NotOwner { member } => write!(f, "{member} does not hold the claim"),
            Rejection::UnknownServer => f.write_str("unknown server"),
            Rejection::SerialInUse { identity } => write!(f, "serial already issued to {identity}"),
            Rejection::NoCredential => f.write_str("no credential to revoke"),
            Rejection::NotAMember { member } => write!(f, "{member} is not a member of the group"),
            Rejection::NotEnabled { rules } => {
                write!(
                    f,
                    "needs ledger rules {rules}, which the cluster does not apply yet"
                )
            }
            Rejection::NotForgettable => f.write_str("the record may not be forgotten"),
            Rejection::NoClaims => f.write_str("servers are not claimed under ownership epochs"),
            Rejection::StaleEpoch { epoch } => {
                write!(f, "not under the ownership epoch it names (now {epoch})")
            }
            Rejection::Lent { to, why } if to.is_empty() => write!(f, "not lent: {why}"),
            Rejection::Lent { to, .. } => write!(f, "lent to {to}"),
        }
    }
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
struct Tally(std::sync::Mutex<Option<LedgerCounts>>);

impl Tally {
    fn take(&self) -> Option<LedgerCounts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(&self, c: Option<LedgerCounts>) {
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

/// Replicated switches operators flip for the whole cluster.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub paused: bool,
    pub draining: std::collections::BTreeSet<String>,
    /// Bumped by every rebalance request; members rediscover when it changes.
    #[serde(default)]
    pub rebalance_epoch: u64,
    /// Members removed from the group and not added back since: their certificates are
    /// refused on the Raft port, joining included (see `authz`).
    #[serde(default)]
    pub departed: std::collections::BTreeSet<String>,
    /// The ledger rules every replica applies (see [`LEDGER_RULES`]); ledgers written before
    /// the setting existed apply rules 1.
    #[serde(default = "rules_v1")]
    pub rules: u32,
    /// Ownership epochs (rules 6).
    #[serde(default, skip_serializing_if = "is_default")]
    pub ownership: crate::ownership::Ownership,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
    fn full_counts(&self) -> Result<LedgerCounts, ReadError> {
        let mut c = LedgerCounts::default();
        self.records.for_each("", &BTreeSet::new(), &mut |r| {
            c.count(r, true);
            true
        })?;
        Ok(c)
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The rules this ledger applies now.
    pub fn rules(&self) -> u32 {
        self.settings.rules.max(1)
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

    /// Last heartbeat of every member that ever sent one.
    pub fn heartbeats(&self) -> &BTreeMap<String, u64> {
        &self.heartbeats
    }

    /// Forgets the heartbeats of members not in `names` (they left the group), so nobody counts
    /// them live until their window runs out.
    pub fn retain_heartbeats(&mut self, names: &BTreeSet<String>) -> bool {
        let before = self.heartbeats.len();
        self.heartbeats.retain(|m, _| names.contains(m));
        self.heartbeats.len() != before
    }

    /// Notes a membership change from member names `before` to `after`: who left is
    /// departed, who is (back) in is not. True when that changed anything.
    pub fn note_membership(&mut self, before: &BTreeSet<String>, after: &BTreeSet<String>) -> bool {
        let acks = self.settings.ownership.acked.len();
        self.settings.ownership.retain(after);
        let departed = &mut self.settings.departed;
        let was = departed.clone();
        departed.extend(before.difference(after).cloned());
        departed.retain(|n| !after.contains(n));
        *departed != was || self.settings.ownership.acked.len() != acks
    }

    /// Members that take work: a heartbeat within `window_ms` of `now_ms` and not draining;
    /// sorted.
    pub fn live_members(&self, now_ms: u64, window_ms: u64) -> Vec<String> {
        self.heartbeats
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) <= window_ms)
            .filter(|(m, _)| !self.settings.draining.contains(*m))
            .map(|(m, _)| m.clone())
            .collect()
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

    fn full_digest(&self) -> Result<crate::digest::Sum, ReadError> {
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

    /// Applies `cmd` if the rules allow it; the ledger is unchanged when it is rejected.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), Rejection> {
        match self.apply_kept(cmd, false) {
            Ok(r) => r.map(|_| ()),
            // the record is in memory as applied; only its encoding for the digest failed
            Err(_) => Ok(()),
        }
    }

    /// [`LedgerState::apply`], returning what the store writes: the JSON of the record the
    /// command changed. The same bytes give the record's digest term, so a record is encoded
    /// once per command. The outer error is a record that could not be read or encoded
    /// (the store treats it as a failed write and reloads).
    pub fn apply_encoded(
        &mut self,
        cmd: &Command,
    ) -> Result<Result<Encoded, Rejection>, ApplyError> {
        self.apply_kept(cmd, true)
    }

    /// Applies `cmd`, keeping the digest (when kept) and counts; the record's JSON is made
    /// only when the store needs it (`store`) or the digest does.
    fn apply_kept(
        &mut self,
        cmd: &Command,
        store: bool,
    ) -> Result<Result<Encoded, Rejection>, ApplyError> {
        use crate::digest::Sum;
        // commands without an identity touch no record (the store writes only the named one)
        let Some(identity) = cmd.identity() else {
            return Ok(self.apply_command(cmd).map(|()| Encoded::NoRecord));
        };
        self.records.fault_in(identity)?;
        if let Some((serial, _)) = cmd.issued_serial() {
            self.records.fault_in_serial(serial)?;
        }
        let keeping = self.running.get().is_some();
        let was = self.records.loaded(identity).map(|r| r.state);
        let before = match self.records.loaded(identity) {
            Some(r) if keeping => Some(r.digest_term.get().unwrap_or_else(|| Sum::record(r))),
            _ => None,
        };
        let new_serial = cmd
            .issued_serial()
            .map(|(serial, _)| serial)
            .filter(|serial| self.records.serial(serial).is_none());
        // the record's counts come out before and go back in as it is after (unchanged when
        // the command is rejected)
        let mut tally = self.tally.take();
        if let (Some(t), Some(r)) = (tally.as_mut(), self.records.loaded(identity)) {
            t.count(r, false);
        }
        let result = self.apply_command(cmd);
        if let (Some(t), Some(r)) = (tally.as_mut(), self.records.loaded(identity)) {
            t.count(r, true);
        }
        self.tally.put(tally);
        if let Err(r) = result {
            return Ok(Err(r));
        }
        let Some(rec) = self.records.loaded_mut(identity) else {
            if let Some(b) = before {
                self.running.update(|sum| sum.sub(b));
            }
            return Ok(Ok(Encoded::Forgotten { was }));
        };
        let now = rec.state;
        if !store && !keeping {
            // nobody reads the bytes: an in-memory ledger whose digest nobody asked for yet;
            // a term cached earlier no longer matches the record
            rec.digest_term = Default::default();
            return Ok(Ok(Encoded::Record {
                json: Vec::new(),
                was,
                now,
            }));
        }
        let json = match serde_json::to_vec(rec) {
            Ok(j) => j,
            Err(e) => {
                // the running digest no longer follows; computed again when next asked
                self.running.set(None);
                return Err(ApplyError::Encode(e));
            }
        };
        let after = Sum::encoded_record(&json);
        rec.digest_term.set(after);
        if keeping {
            let serial = new_serial.and_then(|s| self.records.serial(s).map(|i| Sum::serial(s, i)));
            self.running.update(|sum| {
                before.into_iter().for_each(|b| sum.sub(b));
                std::iter::once(after)
                    .chain(serial)
                    .for_each(|a| sum.add(a));
            });
        }
        Ok(Ok(Encoded::Record { json, was, now }))
    }

    fn apply_command(&mut self, cmd: &Command) -> Result<(), Rejection> {
        match cmd {
            Command::Claim {
                identity,
                member,
                lease_until_ms,
                seen_ms,
                at_ms,
            } => {
                // under epochs only a claim held from before may be renewed
                if self.settings.ownership.current.is_some() && !self.holds(identity, member) {
                    return Err(Rejection::NoClaims);
                }
                self.claim(identity, member, *lease_until_ms, *seen_ms, *at_ms)
            }

            Command::NewEpoch(epoch) => {
                self.needs(OWNED_RULES)?;
                self.settings
                    .ownership
                    .advance(epoch.clone())
                    .map_err(|epoch| Rejection::StaleEpoch { epoch })?;
                self.settings.ownership.drop_ended_loans(epoch.at_ms);
                Ok(())
            }

            Command::EpochAck { member, epoch, .. } => {
                self.needs(OWNED_RULES)?;
                self.settings
                    .ownership
                    .ack(member, *epoch)
                    .map_err(|epoch| Rejection::StaleEpoch { epoch })
            }

            Command::Lend {
                member,
                to,
                epoch,
                identities,
                start_by_ms,
                until_ms,
                at_ms,
            } => {
                self.needs(LEND_RULES)?;
                self.settings
                    .ownership
                    .lend(
                        member,
                        to,
                        *epoch,
                        identities,
                        *start_by_ms,
                        *until_ms,
                        *at_ms,
                    )
                    .map_err(|e| Rejection::Lent {
                        to: String::new(),
                        why: e.to_string(),
                    })
            }

            Command::Finish {
                identity,
                member,
                epoch,
                seen_ms,
                end,
                at_ms,
            } => {
                self.needs(OWNED_RULES)?;
                if let Some(loan) = self.settings.ownership.loan(identity, *at_ms) {
                    if loan.to != *member {
                        return Err(Rejection::Lent {
                            to: loan.to.clone(),
                            why: String::new(),
                        });
                    }
                }
                self.finish(identity, member, *epoch, *seen_ms, end, *at_ms)
            }

            Command::IssueCredential {
                identity,
                member,
                serial,
                fingerprint,
                not_after,
                at_ms,
            } => {
                let event = format!("credential issued, serial {serial}");
                let issued = Issue {
                    serial,
                    fingerprint,
                    not_after: *not_after,
                };
                self.issue(identity, member, *at_ms, event, issued)
                    .map(|_| ())
            }

            Command::Enroll {
                identity,
                member,
                serial,
                fingerprint,
                not_after,
                config_digest,
                facts,
                at_ms,
            } => {
                if self.rules() < ENROLL_RULES {
                    return Err(Rejection::NotEnabled {
                        rules: ENROLL_RULES,
                    });
                }
                // the history reads as the two commands' would: issued, then enrolled
                if self.records.serial(serial).map(String::as_str) == Some(identity.as_str())
                    && self.replayed(identity, member, *at_ms, "enrolled")
                {
                    return Ok(());
                }
                let event = format!("credential issued, serial {serial}");
                let issued = Issue {
                    serial,
                    fingerprint,
                    not_after: *not_after,
                };
                if let Some(rec) = self.issue(identity, member, *at_ms, event, issued)? {
                    enrolled(rec, config_digest, facts);
                    note(rec, *at_ms, member, "enrolled".into());
                }
                Ok(())
            }

            Command::Enrolled {
                identity,
                member,
                config_digest,
                facts,
                at_ms,
            } => {
                if self.replayed(identity, member, *at_ms, "enrolled") {
                    return Ok(());
                }
                let rec = self.owned_by(identity, member, *at_ms)?;
                enrolled(rec, config_digest, facts);
                note(rec, *at_ms, member, "enrolled".into());
                Ok(())
            }

            Command::Revoke {
                identity,
                member,
                reason,
                at_ms,
            } => {
                let rec = self.record_mut(identity)?;
                let cred = rec.credential.take().ok_or(Rejection::NoCredential)?;
                let serial = cred.serial.clone();
                revoke(rec, cred, member, *at_ms, reason.clone());
                if let Some(old) = rec.superseded.take() {
                    revoke(rec, old, member, *at_ms, reason.clone());
                }
                // a flow in progress keeps its claim; it will issue a new credential
                if rec.state != EnrollState::Claimed {
                    rec.state = EnrollState::Revoked;
                }
                note(
                    rec,
                    *at_ms,
                    member,
                    format!("credential {serial} revoked: {reason}"),
                );
                Ok(())
            }

            Command::RequestReprovision {
                identity,
                member,
                at_ms,
            } => {
                // a server enrolled by `Enroll` moments ago is still being configured: its
                // flow holds it as a claim would, until the settle time ends
                if let Some(by) = self.enrolled_just_now_by(identity, *at_ms) {
                    return Err(Rejection::ClaimedBy {
                        member: by.0,
                        until_ms: by.1,
                    });
                }
                let rec = self.record_mut(identity)?;
                if rec.state == EnrollState::Claimed && rec.lease_until_ms > *at_ms {
                    if let Some(owner) = &rec.owner {
                        return Err(Rejection::ClaimedBy {
                            member: owner.clone(),
                            until_ms: rec.lease_until_ms,
                        });
                    }
                }
                rec.state = EnrollState::Reprovisioning;
                rec.owner = None;
                rec.lease_until_ms = 0;
                note(rec, *at_ms, member, "reprovision requested".into());
                Ok(())
            }

            Command::Note {
                identity,
                member,
                event,
                at_ms,
            } => {
                let rec = self.record_mut(identity)?;
                note(rec, *at_ms, member, event.clone());
                Ok(())
            }

            Command::Reassign {
                identity,
                from,
                member,
                reason,
                at_ms,
            } => {
                let rules2 = self.rules() >= 2;
                let rec = self.record_mut(identity)?;
                if rec.state != EnrollState::Claimed || rec.owner.as_deref() != Some(from) {
                    return Err(Rejection::NotOwner {
                        member: from.clone(),
                    });
                }
                let still_enrolled = rules2 && rec.claimed_while_enrolled;
                rec.state = if still_enrolled {
                    EnrollState::Enrolled
                } else {
                    EnrollState::Deferred
                };
                rec.claimed_while_enrolled = false;
                rec.owner = None;
                rec.lease_until_ms = 0;
                rec.last_error = Some(reason.clone());
                note(rec, *at_ms, member, format!("taken from {from}: {reason}"));
                Ok(())
            }

            Command::Heartbeat { member, at_ms } => {
                let last = self.heartbeats.entry(member.clone()).or_insert(0);
                *last = (*last).max(*at_ms);
                Ok(())
            }

            Command::SetPaused { paused, .. } => {
                self.settings.paused = *paused;
                Ok(())
            }

            Command::Rebalance { .. } => {
                self.settings.rebalance_epoch += 1;
                Ok(())
            }

            Command::SetDraining {
                member, draining, ..
            } => {
                if *draining {
                    self.settings.draining.insert(member.clone());
                } else {
                    self.settings.draining.remove(member);
                }
                Ok(())
            }

            Command::Release {
                identity,
                member,
                outcome,
                at_ms,
            } => {
                let (state, error, event) = released_as(outcome);
                if self.replayed(identity, member, *at_ms, &event) {
                    return Ok(());
                }
                let rules2 = self.rules() >= 2;
                let rec = if self.enrolled_just_now(identity, member, *at_ms) {
                    // the flow that enrolled it could not configure or restart it
                    self.record_mut(identity)?
                } else {
                    self.owned_by(identity, member, *at_ms)?
                };
                // a flow on an enrolled server that issued nothing leaves it enrolled
                let keep_enrolled = rules2
                    && rec.claimed_while_enrolled
                    && matches!(
                        outcome,
                        ReleaseOutcome::Deferred { .. }
                            | ReleaseOutcome::Failed { .. }
                            | ReleaseOutcome::Abandoned
                    );
                rec.state = if keep_enrolled {
                    EnrollState::Enrolled
                } else {
                    state
                };
                rec.claimed_while_enrolled = false;
                rec.owner = None;
                rec.lease_until_ms = 0;
                rec.last_error = error;
                note(rec, *at_ms, member, event);
                Ok(())
            }

            Command::SetRules { rules, .. } => {
                self.settings.rules = self.rules().max(*rules);
                Ok(())
            }

            Command::Restarted {
                identity,
                member,
                at_ms,
            } => {
                if self.rules() < 2 {
                    return Err(Rejection::NotEnabled { rules: 2 });
                }
                let rec = self.record_mut(identity)?;
                let Some(current) = rec.credential.clone() else {
                    return Err(Rejection::NoCredential);
                };
                if rec.state != EnrollState::Enrolled || &current.issued_by != member {
                    return Err(Rejection::NotOwner {
                        member: member.clone(),
                    });
                }
                // a copy sent again finds nothing left to do
                if let Some(old) = rec.superseded.take() {
                    let serial = old.serial.clone();
                    let reason = format!("superseded by {}", current.serial);
                    revoke(rec, old, member, *at_ms, reason);
                    note(
                        rec,
                        *at_ms,
                        member,
                        format!("restarted with {}; {serial} revoked", current.serial),
                    );
                }
                Ok(())
            }

            Command::Forget {
                identity,
                older_than_ms,
                at_ms,
                ..
            } => {
                if self.rules() < 2 {
                    return Err(Rejection::NotEnabled { rules: 2 });
                }
                let rec = self
                    .records
                    .loaded(identity)
                    .ok_or(Rejection::UnknownServer)?;
                if !forgettable(rec) || rec.updated_ms.saturating_add(*older_than_ms) > *at_ms {
                    return Err(Rejection::NotForgettable);
                }
                self.records.remove(identity);
                Ok(())
            }
        }
    }

    fn claim(
        &mut self,
        identity: &str,
        member: &str,
        lease_until_ms: u64,
        seen_ms: u64,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let rules2 = self.rules() >= 2;
        let mut fell_back = false;
        if let Some(rec) = self.records.loaded(identity) {
            if let Some(refusal) = rec.claim_refusal(member, seen_ms, at_ms) {
                return Err(refusal);
            }
            fell_back = rec.state == EnrollState::Enrolled;
        }
        let rec = self.records.entry(identity, || new_record(identity, at_ms));
        let renewal = rec.state == EnrollState::Claimed && rec.owner.as_deref() == Some(member);
        if fell_back && rules2 {
            rec.claimed_while_enrolled = true;
        }
        rec.state = EnrollState::Claimed;
        rec.owner = Some(member.to_string());
        rec.lease_until_ms = lease_until_ms;
        if !renewal {
            rec.attempts += 1;
            let event = if fell_back {
                "claimed: back in provisioning mode after enrollment"
            } else {
                "claimed"
            };
            note(rec, at_ms, member, event.into());
        }
        Ok(())
    }

    fn needs(&self, rules: u32) -> Result<(), Rejection> {
        if self.rules() < rules {
            return Err(Rejection::NotEnabled { rules });
        }
        Ok(())
    }

    /// Whether `member` holds the claim on `identity` (live or not).
    fn holds(&self, identity: &str, member: &str) -> bool {
        self.records
            .loaded(identity)
            .is_some_and(|r| r.state == EnrollState::Claimed && r.owner.as_deref() == Some(member))
    }

    /// The end of a flow without a claim (see [`Command::Finish`]).
    fn finish(
        &mut self,
        identity: &str,
        member: &str,
        epoch: u64,
        seen_ms: u64,
        end: &FlowEnd,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let own = &self.settings.ownership;
        if !own.flow_may_end(member, epoch) {
            return Err(Rejection::StaleEpoch { epoch: own.epoch() });
        }
        let (released, enrolled_at) = match end {
            FlowEnd::Released {
                outcome,
                enrolled_at_ms,
            } => (Some(outcome), *enrolled_at_ms),
            FlowEnd::Enrolled { .. } => (None, None),
        };
        let (event, failed_now) = match released {
            Some(outcome) => {
                let (state, error, event) = released_as(outcome);
                (event, Some((state, error)))
            }
            None => ("enrolled".to_string(), None),
        };
        if self.replayed(identity, member, at_ms, &event) {
            return Ok(());
        }
        // the flow that enrolled it moments ago could not configure or restart it
        let own_enrollment = enrolled_at.is_some_and(|t| {
            self.enrolled_just_now(identity, member, at_ms)
                && self
                    .records
                    .loaded(identity)
                    .and_then(|r| r.credential.as_ref())
                    .is_some_and(|c| c.issued_at_ms == t)
        });
        if !own_enrollment {
            if let Some((by, until_ms)) = self.enrolled_just_now_by(identity, at_ms) {
                return Err(Rejection::ClaimedBy {
                    member: by,
                    until_ms,
                });
            }
            if let Some(rec) = self.records.loaded(identity) {
                if let Some(refusal) = rec.claim_refusal(member, seen_ms, at_ms) {
                    return Err(refusal);
                }
            }
        }
        if let FlowEnd::Enrolled {
            credential: Some(c),
            ..
        } = end
        {
            if let Some(other) = self.records.serial(&c.serial) {
                return Err(Rejection::SerialInUse {
                    identity: other.clone(),
                });
            }
        }
        let rules = self.rules();
        let rec = self.records.entry(identity, || new_record(identity, at_ms));
        let was_enrolled = rec.state == EnrollState::Enrolled && rec.credential.is_some();
        if !own_enrollment {
            rec.attempts += 1;
        }
        rec.owner = None;
        rec.lease_until_ms = 0;
        rec.claimed_while_enrolled = false;
        match (end, failed_now) {
            (
                FlowEnd::Enrolled {
                    credential,
                    config_digest,
                    facts,
                },
                _,
            ) => {
                if let Some(c) = credential {
                    let issued = Issue {
                        serial: &c.serial,
                        fingerprint: &c.fingerprint,
                        not_after: c.not_after,
                    };
                    let event = format!("credential issued, serial {}", c.serial);
                    record_credential(rec, rules, member, at_ms, event, issued);
                    self.records.insert_serial(&c.serial, identity);
                }
                let rec = self.record_mut(identity)?;
                enrolled(rec, config_digest, facts);
                note(rec, at_ms, member, event);
            }
            (FlowEnd::Released { outcome, .. }, Some((state, error))) => {
                // a flow on an enrolled server that issued nothing leaves it enrolled
                let keep_enrolled = was_enrolled
                    && !own_enrollment
                    && matches!(
                        outcome,
                        ReleaseOutcome::Deferred { .. }
                            | ReleaseOutcome::Failed { .. }
                            | ReleaseOutcome::Abandoned
                    );
                if !keep_enrolled {
                    rec.state = state;
                }
                rec.last_error = error;
                note(rec, at_ms, member, event);
            }
            (FlowEnd::Released { .. }, None) => {}
        }
        Ok(())
    }

    fn record_mut(&mut self, identity: &str) -> Result<&mut Record, Rejection> {
        self.records
            .loaded_mut(identity)
            .ok_or(Rejection::UnknownServer)
    }

    /// Whether this command was applied already: a proposal is sent again when the leader
    /// that took it died before answering, and its first copy may have committed. The record's
    /// last history line is then exactly the one the command wrote (same member, time and
    /// event). Should another command (an operator's) land in between, the copy is judged
    /// like any late command and refused, as before; the flow then ends as failed and the
    /// server is picked up again.
    fn replayed(&self, identity: &str, member: &str, at_ms: u64, event: &str) -> bool {
        self.records
            .loaded(identity)
            .and_then(|r| r.history.last())
            .is_some_and(|h| h.at_ms == at_ms && h.member == member && h.event == event)
    }

    /// Records the credential `issued` for `identity` under `member`'s claim, with `event` in
    /// its history; `None` when this very command was applied before (a forward sent again).
    fn issue(
        &mut self,
        identity: &str,
        member: &str,
        at_ms: u64,
        event: String,
        issued: Issue<'_>,
    ) -> Result<Option<&mut Record>, Rejection> {
        let serial = issued.serial;
        if self.records.serial(serial).map(String::as_str) == Some(identity)
            && self.replayed(identity, member, at_ms, &event)
        {
            return Ok(None);
        }
        if let Some(other) = self.records.serial(serial) {
            return Err(Rejection::SerialInUse {
                identity: other.clone(),
            });
        }
        let rules = self.rules();
        let rec = self.owned_by(identity, member, at_ms)?;
        record_credential(rec, rules, member, at_ms, event, issued);
        self.records.insert_serial(serial, identity);
        self.records
            .loaded_mut(identity)
            .map(Some)
            .ok_or(Rejection::UnknownServer)
    }

    /// True when `member` enrolled `identity` with `Enroll` less than the settle time before
    /// `at_ms` and nothing changed it since: that flow may still report it failed.
    fn enrolled_just_now(&self, identity: &str, member: &str, at_ms: u64) -> bool {
        self.enrolled_just_now_by(identity, at_ms)
            .is_some_and(|(by, _)| by == member)
    }

    /// Who enrolled `identity` with `Enroll` less than the settle time before `at_ms`, with
    /// nothing changed since, and when that time ends (rules 5): its flow may still be
    /// sending the configuration and the restart.
    fn enrolled_just_now_by(&self, identity: &str, at_ms: u64) -> Option<(String, u64)> {
        if self.rules() < ENROLL_RULES {
            return None;
        }
        let r = self.records.loaded(identity)?;
        let c = r.credential.as_ref()?;
        let until = c.issued_at_ms.saturating_add(REENROLL_SETTLE_MS);
        (r.state == EnrollState::Enrolled
            && r.owner.is_none()
            && c.issued_at_ms == r.updated_ms
            && at_ms < until)
            .then(|| (c.issued_by.clone(), until))
    }

    /// The record of `identity` if `member` holds a live claim on it.
    fn owned_by(
        &mut self,
        identity: &str,
        member: &str,
        at_ms: u64,
    ) -> Result<&mut Record, Rejection> {
        let rec = self.record_mut(identity)?;
        let owns = rec.state == EnrollState::Claimed
            && rec.owner.as_deref() == Some(member)
            && rec.lease_until_ms > at_ms;
        if !owns {
            return Err(Rejection::NotOwner {
                member: member.to_string(),
            });
        }
        Ok(rec)
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

/// A failed record that never held a credential and is not worked on.
/// A record for a server the ledger has not heard of, first seen at `at_ms`.
fn new_record(identity: &str, at_ms: u64) -> Record {
    Record {
        identity: identity.to_string(),
        state: EnrollState::Claimed,
        owner: None,
        lease_until_ms: 0,
        attempts: 0,
        credential: None,
        config_digest: None,
        last_error: None,
        first_seen_ms: at_ms,
        updated_ms: at_ms,
        history: Vec::new(),
        revoked: Vec::new(),
        facts: BTreeMap::new(),
        superseded: None,
        claimed_while_enrolled: false,
        issued_at_ms: Vec::new(),
        digest_term: Default::default(),
    }
}

/// The state, error and history line a flow's outcome leaves.
fn released_as(outcome: &ReleaseOutcome) -> (EnrollState, Option<String>, String) {
    match outcome {
        ReleaseOutcome::Deferred { reason } => (
            EnrollState::Deferred,
            Some(reason.clone()),
            format!("deferred: {reason}"),
        ),
        ReleaseOutcome::Failed { reason } => (
            EnrollState::Failed,
            Some(reason.clone()),
            format!("failed: {reason}"),
        ),
        ReleaseOutcome::Shutdown { reason } => {
            (EnrollState::Shutdown, None, format!("shut down: {reason}"))
        }
        ReleaseOutcome::Upgrading { from, to } => (
            EnrollState::Upgrading,
            None,
            format!("upgrading from {from} to {to}"),
        ),
        ReleaseOutcome::Abandoned => (
            EnrollState::Failed,
            Some("abandoned".into()),
            "abandoned".into(),
        ),
    }
}

/// Makes `issued` the server's credential: the one it replaces stays valid until the server
/// restarted (rules 2) or is revoked.
fn record_credential(
    rec: &mut Record,
    rules: u32,
    member: &str,
    at_ms: u64,
    event: String,
    issued: Issue<'_>,
) {
    let serial = issued.serial;
    if let Some(old) = rec.credential.take() {
        if old.serial != serial {
            if rules >= 2 && rec.superseded.is_none() {
                // the server may still use it: valid until it restarted with the new
                rec.superseded = Some(old);
            } else {
                let reason = format!("superseded by {serial}");
                revoke(rec, old, member, at_ms, reason);
            }
        }
    }
    if rules >= 2 {
        rec.claimed_while_enrolled = false;
        rec.issued_at_ms.push(at_ms);
        let excess = rec.issued_at_ms.len().saturating_sub(ISSUE_TIMES_KEPT);
        rec.issued_at_ms.drain(..excess);
    }
    rec.credential = Some(Credential {
        serial: serial.to_string(),
        fingerprint: issued.fingerprint.to_string(),
        not_after: issued.not_after,
        issued_by: member.to_string(),
        issued_at_ms: at_ms,
    });
    note(rec, at_ms, member, event);
}

fn forgettable(rec: &Record) -> bool {
    rec.state == EnrollState::Failed
        && rec.owner.is_none()
        && rec.credential.is_none()
        && rec.superseded.is_none()
        && rec.revoked.is_empty()
        && rec.config_digest.is_none()
}

fn revoke(rec: &mut Record, cred: Credential, member: &str, at_ms: u64, reason: String) {
    rec.revoked.push(Revocation {
        serial: cred.serial,
        fingerprint: cred.fingerprint,
        not_after: cred.not_after,
        revoked_at_ms: at_ms,
        revoked_by: member.to_string(),
        reason,
    });
}

/// A credential as a command names it.
struct Issue<'a> {
    serial: &'a str,
    fingerprint: &'a str,
    not_after: i64,
}

/// Marks `rec` enrolled with the configuration whose digest is `config_digest`; its claim ends.
fn enrolled(rec: &mut Record, config_digest: &str, facts: &BTreeMap<String, String>) {
    rec.state = EnrollState::Enrolled;
    rec.owner = None;
    rec.lease_until_ms = 0;
    rec.last_error = None;
    rec.claimed_while_enrolled = false;
    rec.config_digest = Some(config_digest.to_string());
    rec.facts = facts.clone();
}

fn note(rec: &mut Record, at_ms: u64, member: &str, event: String) {
    rec.updated_ms = at_ms;
    rec.history.push(HistoryEntry {
        at_ms,
        member: member.to_string(),
        event,
    });
    if rec.history.len() > HISTORY_LIMIT {
        let excess = rec.history.len() - HISTORY_LIMIT;
        rec.history.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, m: &str, at: u64) -> Command {
        Command::Claim {
            identity: id.into(),
            member: m.into(),
            lease_until_ms: at + 1000,
            seen_ms: at,
            at_ms: at,
        }
    }

    fn issue(id: &str, m: &str, serial: &str, at: u64) -> Command {
        Command::IssueCredential {
            identity: id.into(),
            member: m.into(),
            serial: serial.into(),
            fingerprint: "f".into(),
            not_after: 1,
            at_ms: at,
        }
    }

    fn enrolled(id: &str, m: &str, at: u64) -> Command {
        Command::Enrolled {
            identity: id.into(),
            member: m.into(),
            config_digest: "d".into(),
            facts: BTreeMap::new(),
            at_ms: at,
        }
    }

    fn enroll(id: &str, m: &str, serial: &str, at: u64) -> Command {
        Command::Enroll {
            identity: id.into(),
            member: m.into(),
            serial: serial.into(),
            fingerprint: "f".into(),
            not_after: 1,
            config_digest: "d".into(),
            facts: BTreeMap::from([("role".into(), "web".into())]),
            at_ms: at,
        }
    }

    fn at_rules(rules: u32) -> LedgerState {
        let mut s = LedgerState::default();
        s.apply(&Command::SetRules { rules, at_ms: 0 }).unwrap();
        s
    }

    #[test]
    fn enroll_is_the_credential_and_the_enrollment_in_one_command() {
        // not before rules 5: a member of an earlier build would not know it
        let mut old = at_rules(ENROLL_RULES - 1);
        old.apply(&claim("n1", "a", 0)).unwrap();
        assert_eq!(
            old.apply(&enroll("n1", "a", "01", 10)),
            Err(Rejection::NotEnabled {
                rules: ENROLL_RULES
            })
        );
        // the same record, serial index and digest as the two commands it stands for
        let (mut one, mut two) = (at_rules(ENROLL_RULES), at_rules(ENROLL_RULES));
        one.apply(&claim("n1", "a", 0)).unwrap();
        two.apply(&claim("n1", "a", 0)).unwrap();
        one.apply(&enroll("n1", "a", "01", 10)).unwrap();
        two.apply(&issue("n1", "a", "01", 10)).unwrap();
        two.apply(&Command::Enrolled {
            identity: "n1".into(),
            member: "a".into(),
            config_digest: "d".into(),
            facts: BTreeMap::from([("role".into(), "web".into())]),
            at_ms: 10,
        })
        .unwrap();
        let r = one.record("n1").unwrap();
        assert_eq!(Some(&r), two.record("n1").as_ref());
        assert_eq!(one.digest(), two.digest());
        assert_eq!((r.state, r.owner.as_deref()), (EnrollState::Enrolled, None));
        assert_eq!(r.credential.as_ref().map(|c| c.serial.as_str()), Some("01"));
        let events: Vec<_> = r.history.iter().map(|h| h.event.as_str()).collect();
        assert_eq!(
            events,
            ["claimed", "credential issued, serial 01", "enrolled"]
        );
        // sent again (a forward retried after it committed): nothing changes
        one.apply(&enroll("n1", "a", "01", 10)).unwrap();
        assert_eq!(one.record("n1").unwrap(), r);
        // the serial is nobody else's, and a credential needs the claim
        one.apply(&claim("n2", "a", 0)).unwrap();
        assert!(matches!(
            one.apply(&enroll("n2", "a", "01", 11)),
            Err(Rejection::SerialInUse { .. })
        ));
        assert!(matches!(
            one.apply(&enroll("n2", "b", "02", 11)),
            Err(Rejection::NotOwner { .. })
        ));
        // another member that sees it waiting within the settle time leaves it alone: it is
        // being configured and restarted
        assert_eq!(
            one.apply(&claim("n1", "b", 20)),
            Err(Rejection::AlreadyEnrolled)
        );
    }

    fn finish(id: &str, m: &str, epoch: u64, serial: Option<&str>, at: u64) -> Command {
        Command::Finish {
            identity: id.into(),
            member: m.into(),
            epoch,
            seen_ms: at,
            end: FlowEnd::Enrolled {
                credential: serial.map(|s| crate::command::Issued {
                    serial: s.into(),
                    fingerprint: "f".into(),
                    not_after: 1,
                }),
                config_digest: "d".into(),
                facts: BTreeMap::from([("role".into(), "web".into())]),
            },
            at_ms: at,
        }
    }

    fn failed(id: &str, m: &str, epoch: u64, at: u64) -> Command {
        failed_after(id, m, epoch, at, None)
    }

    /// A flow's failure; `enrolled_at`: after its own enrollment then.
    fn failed_after(id: &str, m: &str, epoch: u64, at: u64, enrolled_at: Option<u64>) -> Command {
        Command::Finish {
            identity: id.into(),
            member: m.into(),
            epoch,
            seen_ms: at,
            end: FlowEnd::Released {
                outcome: ReleaseOutcome::Failed {
                    reason: "no csr".into(),
                },
                enrolled_at_ms: enrolled_at,
            },
            at_ms: at,
        }
    }

    fn new_epoch(n: u64, must_ack: &[&str], settle_by_ms: u64) -> Command {
        Command::NewEpoch(crate::ownership::Epoch {
            epoch: n,
            members: vec!["a".into(), "b".into()],
            leader: Some("a".into()),
            leader_share_milli: 500,
            must_ack: must_ack.iter().map(|m| m.to_string()).collect(),
            settle_by_ms,
            not_before_ms: 0,
            at_ms: 0,
        })
    }

    #[test]
    fn a_flow_under_an_epoch_enrolls_its_server_with_one_command() {
        let mut old = at_rules(OWNED_RULES - 1);
        assert_eq!(
            old.apply(&finish("n1", "a", 0, Some("01"), 10)),
            Err(Rejection::NotEnabled { rules: OWNED_RULES })
        );
        assert_eq!(
            old.apply(&new_epoch(1, &[], 0)),
            Err(Rejection::NotEnabled { rules: OWNED_RULES })
        );

        let mut s = at_rules(OWNED_RULES);
        // one member alone makes no epochs: its flows carry 0
        s.apply(&finish("n1", "a", 0, Some("01"), 10)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Enrolled);
        assert_eq!(r.attempts, 1);
        assert_eq!(r.owner, None);
        assert_eq!(r.credential.as_ref().map(|c| c.serial.as_str()), Some("01"));
        assert_eq!(r.facts["role"], "web");
        let events: Vec<_> = r.history.iter().map(|h| h.event.as_str()).collect();
        assert_eq!(events, ["credential issued, serial 01", "enrolled"]);
        // the same command again (a forward sent twice) changes nothing
        let digest = s.digest();
        s.apply(&finish("n1", "a", 0, Some("01"), 10)).unwrap();
        assert_eq!(s.digest(), digest);
        // a serial is never recorded twice; without a credential it is Enrolled's record
        assert_eq!(
            s.apply(&finish("n2", "a", 0, Some("01"), 11)),
            Err(Rejection::SerialInUse {
                identity: "n1".into()
            })
        );
        s.apply(&finish("n3", "a", 0, None, 12)).unwrap();
        assert_eq!(s.record("n3").unwrap().state, EnrollState::Enrolled);
        assert!(s.record("n3").unwrap().credential.is_none());
        // the server that just enrolled is the enroller's until the settle time ends
        assert_eq!(
            s.apply(&finish("n1", "b", 0, Some("02"), 20)),
            Err(Rejection::ClaimedBy {
                member: "a".into(),
                until_ms: 10 + REENROLL_SETTLE_MS
            })
        );
    }

    fn lend(ids: &[&str], from: &str, to: &str, epoch: u64, at: u64) -> Command {
        Command::Lend {
            member: from.into(),
            to: to.into(),
            epoch,
            identities: ids.iter().map(|i| i.to_string()).collect(),
            start_by_ms: at + 10_000,
            until_ms: at + 60_000,
            at_ms: at,
        }
    }

    #[test]
    fn a_lent_server_ends_only_with_its_borrower_while_the_loan_is_in_force() {
        let mut old = at_rules(OWNED_RULES);
        old.apply(&new_epoch(1, &[], 0)).unwrap();
        assert_eq!(
            old.apply(&lend(&["n1"], "a", "b", 1, 10)),
            Err(Rejection::NotEnabled { rules: LEND_RULES })
        );

        let mut s = at_rules(LEND_RULES);
        s.apply(&new_epoch(1, &[], 0)).unwrap();
        // a loan that breaks a rule is refused whole, saying why
        let r = s.apply(&lend(&["n1"], "a", "c", 1, 10)).unwrap_err();
        assert!(r.to_string().starts_with("not lent: "), "{r}");
        s.apply(&lend(&["n1", "n2"], "a", "b", 1, 10)).unwrap();
        assert_eq!(
            s.settings().ownership.loan("n1", 10).map(|l| l.to.as_str()),
            Some("b")
        );
        // the lender (or anyone but the borrower) cannot end a flow on it
        assert_eq!(
            s.apply(&finish("n1", "a", 1, Some("01"), 20)),
            Err(Rejection::Lent {
                to: "b".into(),
                why: String::new()
            })
        );
        assert!(s.record("n1").is_none(), "a refused end leaves no record");
        // the borrower can, even after its loan's end (its last call ended by then)
        s.apply(&finish("n1", "b", 1, Some("01"), 30)).unwrap();
        assert_eq!(s.record("n1").unwrap().state, EnrollState::Enrolled);
        s.apply(&finish("n2", "b", 1, None, 60_010)).unwrap();
        // once the loan and its grace are over, the owner works it again
        let after = 10 + 60_000 + crate::ownership::LOAN_GRACE_MS;
        s.apply(&finish("n3", "a", 1, None, after)).unwrap();
        assert!(s.settings().ownership.loan("n2", after).is_none());
        // a new epoch drops the loans that ended
        let mut e2 = new_epoch(2, &[], 0);
        if let Command::NewEpoch(e) = &mut e2 {
            e.at_ms = after;
        }
        s.apply(&e2).unwrap();
        assert!(s.settings().ownership.loans.is_empty());
    }

    #[test]
    fn under_epochs_nobody_claims_and_a_flow_ends_only_under_an_epoch_not_left_behind() {
        let mut s = at_rules(OWNED_RULES);
        // a claim from before the first epoch is still renewed and may end as it began
        s.apply(&claim("old", "b", 1)).unwrap();
        s.apply(&new_epoch(1, &["a", "b"], 100_000)).unwrap();
        assert_eq!(s.apply(&claim("n1", "a", 2)), Err(Rejection::NoClaims));
        s.apply(&claim("old", "b", 3)).unwrap();
        // a flow that ends while another member holds the claim is refused
        assert!(matches!(
            s.apply(&finish("old", "a", 1, Some("09"), 4)),
            Err(Rejection::ClaimedBy { .. })
        ));
        // with epochs a flow must name one, and not one yet to come
        assert_eq!(
            s.apply(&finish("n1", "a", 0, Some("01"), 5)),
            Err(Rejection::StaleEpoch { epoch: 1 })
        );
        assert_eq!(
            s.apply(&finish("n1", "a", 2, Some("01"), 5)),
            Err(Rejection::StaleEpoch { epoch: 1 })
        );
        s.apply(&finish("n1", "a", 1, Some("01"), 5)).unwrap();
        // epochs follow one another
        assert_eq!(
            s.apply(&new_epoch(3, &[], 0)),
            Err(Rejection::StaleEpoch { epoch: 1 })
        );
        assert_eq!(
            s.apply(&Command::EpochAck {
                member: "a".into(),
                epoch: 2,
                at_ms: 6
            }),
            Err(Rejection::StaleEpoch { epoch: 1 })
        );
        s.apply(&new_epoch(2, &["a", "b"], 100_000)).unwrap();
        // a flow of epoch 1 ends until its member says it has none left
        s.apply(&finish("n2", "a", 1, Some("02"), 7)).unwrap();
        s.apply(&Command::EpochAck {
            member: "a".into(),
            epoch: 2,
            at_ms: 8,
        })
        .unwrap();
        assert_eq!(
            s.apply(&finish("n3", "a", 1, Some("03"), 9)),
            Err(Rejection::StaleEpoch { epoch: 2 })
        );
        assert!(s.record("n3").is_none());
        s.apply(&finish("n3", "b", 1, Some("03"), 9)).unwrap();
        s.apply(&finish("n4", "a", 2, Some("04"), 9)).unwrap();
        let own = &s.settings().ownership;
        assert_eq!(own.epoch(), 2);
        assert_eq!(own.previous.as_ref().map(|e| e.epoch), Some(1));
        // settled by a's and b's acks, or by the settle time; b acknowledged neither yet
        assert_eq!(own.newest_settled(10).map(|e| e.epoch), None);
        assert_eq!(own.newest_settled(100_000).map(|e| e.epoch), Some(2));
        s.apply(&Command::EpochAck {
            member: "b".into(),
            epoch: 2,
            at_ms: 10,
        })
        .unwrap();
        assert_eq!(
            s.settings().ownership.newest_settled(10).map(|e| e.epoch),
            Some(2)
        );
    }

    #[test]
    fn a_flow_that_ends_without_enrolling_keeps_an_enrolled_server_enrolled() {
        let mut s = at_rules(OWNED_RULES);
        // the first the ledger hears of a server may be its failure
        s.apply(&failed("n1", "a", 0, 10)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!((r.state, r.attempts), (EnrollState::Failed, 1));
        assert_eq!(r.last_error.as_deref(), Some("no csr"));
        // the flow that enrolled it may record that it could not configure it, within the
        // settle time; another flow of the same member (a second sighting) may not
        s.apply(&finish("n1", "a", 0, Some("01"), 20)).unwrap();
        assert!(matches!(
            s.apply(&failed("n1", "a", 0, 25)),
            Err(Rejection::ClaimedBy { .. })
        ));
        assert!(matches!(
            s.apply(&failed_after("n1", "a", 0, 25, Some(19))),
            Err(Rejection::ClaimedBy { .. })
        ));
        s.apply(&failed_after("n1", "a", 0, 30, Some(20))).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!((r.state, r.attempts), (EnrollState::Failed, 2));
        // a server that enrolled and fell back later stays enrolled when a flow fails
        s.apply(&finish("n2", "a", 0, Some("02"), 40)).unwrap();
        let later = 40 + REENROLL_SETTLE_MS + 1;
        s.apply(&failed("n2", "b", 0, later)).unwrap();
        let r = s.record("n2").unwrap();
        assert_eq!(r.state, EnrollState::Enrolled);
        assert_eq!(r.last_error.as_deref(), Some("no csr"));
        // but within the settle time another member's flow is refused
        s.apply(&finish("n3", "a", 0, Some("03"), 50)).unwrap();
        assert!(matches!(
            s.apply(&failed("n3", "b", 0, 60)),
            Err(Rejection::ClaimedBy { .. })
        ));
    }

    #[test]
    fn the_flow_that_enrolled_a_server_may_record_its_failure_within_the_settle_time() {
        let failed = |m: &str, at: u64| Command::Release {
            identity: "n1".into(),
            member: m.into(),
            outcome: ReleaseOutcome::Failed {
                reason: "configure: no reply".into(),
            },
            at_ms: at,
        };
        let mut s = at_rules(ENROLL_RULES);
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&enroll("n1", "a", "01", 10)).unwrap();
        // not another member, and not the enroller once the settle time is over
        assert!(matches!(
            s.apply(&failed("b", 20)),
            Err(Rejection::NotOwner { .. })
        ));
        let mut late = s.clone();
        assert!(matches!(
            late.apply(&failed("a", 10 + REENROLL_SETTLE_MS)),
            Err(Rejection::NotOwner { .. })
        ));
        s.apply(&failed("a", 20)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Failed);
        assert_eq!(r.last_error.as_deref(), Some("configure: no reply"));
        // the same release again is a no-op; any other is refused: the record moved on
        s.apply(&failed("a", 20)).unwrap();
        assert_eq!(s.record("n1").unwrap(), r);
        assert!(matches!(
            s.apply(&failed("a", 21)),
            Err(Rejection::NotOwner { .. })
        ));
        // an operator's reprovision waits for the flow as for a claim, then goes through
        let mut r = at_rules(ENROLL_RULES);
        r.apply(&claim("n1", "a", 0)).unwrap();
        r.apply(&enroll("n1", "a", "01", 10)).unwrap();
        let reprovision = |at: u64| Command::RequestReprovision {
            identity: "n1".into(),
            member: "a/op".into(),
            at_ms: at,
        };
        assert_eq!(
            r.apply(&reprovision(20)),
            Err(Rejection::ClaimedBy {
                member: "a".into(),
                until_ms: 10 + REENROLL_SETTLE_MS
            })
        );
        r.apply(&reprovision(10 + REENROLL_SETTLE_MS)).unwrap();
        assert_eq!(r.record("n1").unwrap().state, EnrollState::Reprovisioning);
        // an enrollment recorded by `Enrolled` after the configure is final, as before
        let mut two = at_rules(ENROLL_RULES);
        two.apply(&claim("n1", "a", 0)).unwrap();
        two.apply(&issue("n1", "a", "01", 10)).unwrap();
        two.apply(&enrolled("n1", "a", 20)).unwrap();
        assert!(matches!(
            two.apply(&failed("a", 30)),
            Err(Rejection::NotOwner { .. })
        ));
    }

    #[test]
    fn pages_follow_identity_order_and_count_what_matches() {
        let mut s = LedgerState::default();
        for i in 1..=5 {
            s.apply(&claim(&format!("n{i}"), "a", 0)).unwrap();
        }
        let ids = |p: &Page| {
            p.records
                .iter()
                .map(|r| r.identity.clone())
                .collect::<Vec<_>>()
        };
        let first = s.page("", 2, true, Filter::keep(&|_| true));
        assert_eq!(
            (ids(&first), first.matched, first.more),
            (vec!["n1".into(), "n2".into()], 5, true)
        );
        let rest = s.page("n2", 10, true, Filter::keep(&|_| true));
        assert_eq!(
            (ids(&rest), rest.more),
            (vec!["n3".into(), "n4".into(), "n5".into()], false)
        );
        let odd = |r: &Record| r.identity.ends_with(['1', '3', '5']);
        let p = s.page("n1", 1, true, Filter::keep(&odd));
        assert_eq!((ids(&p), p.matched, p.more), (vec!["n3".into()], 3, true));
        assert_eq!(
            s.page("n1", 1, false, Filter::keep(&odd)).matched,
            0,
            "not counted when not asked"
        );
        assert!(s
            .page("n5", 10, true, Filter::keep(&|_| true))
            .records
            .is_empty());
    }

    #[test]
    fn a_command_sent_again_after_it_committed_changes_nothing_and_succeeds() {
        let mut s = LedgerState::default();
        for cmd in [claim("n1", "a", 0), issue("n1", "a", "01", 10)] {
            s.apply(&cmd).unwrap();
            s.apply(&cmd).unwrap();
        }
        let before = s.record("n1").unwrap();
        s.apply(&issue("n1", "a", "01", 10)).unwrap();
        assert_eq!(s.record("n1").unwrap(), before);
        // the serial is still refused to anyone else, and again later
        assert!(matches!(
            s.apply(&issue("n2", "a", "01", 11)),
            Err(Rejection::SerialInUse { .. })
        ));
        assert!(matches!(
            s.apply(&issue("n1", "a", "01", 12)),
            Err(Rejection::SerialInUse { .. })
        ));
        s.apply(&enrolled("n1", "a", 20)).unwrap();
        let done = s.record("n1").unwrap();
        s.apply(&enrolled("n1", "a", 20)).unwrap();
        assert_eq!(s.record("n1").unwrap(), done);
        // a new enrollment without a claim is still refused
        assert!(matches!(
            s.apply(&enrolled("n1", "a", 21)),
            Err(Rejection::NotOwner { .. })
        ));
        // a release sent twice
        s.apply(&claim("n3", "a", 0)).unwrap();
        let release = Command::Release {
            identity: "n3".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Deferred {
                reason: "later".into(),
            },
            at_ms: 5,
        };
        s.apply(&release).unwrap();
        let released = s.record("n3").unwrap();
        s.apply(&release).unwrap();
        assert_eq!(s.record("n3").unwrap(), released);
        assert_eq!(released.state, EnrollState::Deferred);
    }

    #[test]
    fn one_owner_at_a_time_until_the_lease_ends() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        assert!(matches!(
            s.apply(&claim("n1", "b", 10)),
            Err(Rejection::ClaimedBy { .. })
        ));
        // the owner renews without counting a new attempt
        s.apply(&claim("n1", "a", 20)).unwrap();
        assert_eq!(s.record("n1").unwrap().attempts, 1);
        // after the lease another member may take it over
        s.apply(&claim("n1", "b", 5000)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.owner.as_deref(), Some("b"));
        assert_eq!(r.attempts, 2);
        // and the old owner can no longer act on it
        assert!(matches!(
            s.apply(&issue("n1", "a", "01", 5001)),
            Err(Rejection::NotOwner { .. })
        ));
    }

    #[test]
    fn serials_are_never_recorded_twice() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&claim("n2", "a", 0)).unwrap();
        s.apply(&issue("n1", "a", "abc", 1)).unwrap();
        assert_eq!(
            s.apply(&issue("n2", "a", "abc", 2)),
            Err(Rejection::SerialInUse {
                identity: "n1".into()
            })
        );
        assert!(s.record("n2").unwrap().credential.is_none());
    }

    #[test]
    fn enrolled_servers_are_not_claimed_again() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&issue("n1", "a", "01", 1)).unwrap();
        s.apply(&enrolled("n1", "a", 2)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Enrolled);
        assert_eq!(r.owner, None);
        assert_eq!(
            s.apply(&claim("n1", "b", 3)),
            Err(Rejection::AlreadyEnrolled)
        );
        // a repeated completion is rejected and changes nothing
        assert!(s.apply(&enrolled("n1", "a", 4)).is_err());
        assert_eq!(s.record("n1").unwrap().updated_ms, 2);
    }

    #[test]
    fn an_upgrading_server_is_recorded_and_can_be_claimed_when_it_is_back() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&Command::Release {
            identity: "n1".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Upgrading {
                from: "0.29.4".into(),
                to: "0.30.0".into(),
            },
            at_ms: 1,
        })
        .unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Upgrading);
        assert_eq!(r.owner, None);
        assert!(r
            .history
            .iter()
            .any(|h| h.event.contains("upgrading from 0.29.4 to 0.30.0")));
        assert_eq!(
            EnrollState::from_name("upgrading"),
            Some(EnrollState::Upgrading)
        );
        // back at the new version, any member may take it
        s.apply(&claim("n1", "b", 2)).unwrap();
        assert_eq!(s.record("n1").unwrap().owner.as_deref(), Some("b"));
    }

    #[test]
    fn release_needs_the_owner_and_allows_a_new_claim() {
        let mut s = LedgerState::default();
        assert_eq!(
            s.apply(&Command::Release {
                identity: "n1".into(),
                member: "a".into(),
                outcome: ReleaseOutcome::Abandoned,
                at_ms: 0
            }),
            Err(Rejection::UnknownServer)
        );
        s.apply(&claim("n1", "a", 0)).unwrap();
        let defer = |member: &str| Command::Release {
            identity: "n1".into(),
            member: member.into(),
            outcome: ReleaseOutcome::Deferred {
                reason: "later".into(),
            },
            at_ms: 1,
        };
        assert!(s.apply(&defer("b")).is_err());
        s.apply(&defer("a")).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Deferred);
        assert_eq!(r.last_error.as_deref(), Some("later"));
        s.apply(&claim("n1", "b", 2)).unwrap();
        assert_eq!(s.record("n1").unwrap().attempts, 2);
    }

    #[test]
    fn heartbeats_make_members_live_and_never_go_back() {
        let mut s = LedgerState::default();
        let hb = |m: &str, at| Command::Heartbeat {
            member: m.into(),
            at_ms: at,
        };
        s.apply(&hb("a", 10_000)).unwrap();
        s.apply(&hb("b", 1_000)).unwrap();
        s.apply(&hb("a", 5_000)).unwrap();
        assert_eq!(s.heartbeats()["a"], 10_000);
        assert_eq!(s.live_members(11_000, 2_000), vec!["a".to_string()]);
        assert_eq!(
            s.live_members(11_000, 20_000),
            vec!["a".to_string(), "b".to_string()]
        );
        // a draining member is alive but takes no work
        s.apply(&Command::SetDraining {
            member: "a".into(),
            draining: true,
            at_ms: 0,
        })
        .unwrap();
        assert!(s.live_members(11_000, 20_000) == vec!["b".to_string()]);
        s.apply(&Command::SetDraining {
            member: "a".into(),
            draining: false,
            at_ms: 0,
        })
        .unwrap();
        s.apply(&Command::SetPaused {
            paused: true,
            at_ms: 0,
        })
        .unwrap();
        assert!(s.settings().paused);
        // heartbeats do not change the digest; records do
        let d = s.digest();
        s.apply(&hb("a", 20_000)).unwrap();
        assert_eq!(s.digest(), d);
        s.apply(&claim("n1", "a", 0)).unwrap();
        assert_ne!(s.digest(), d);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = LedgerState::default();
        for i in 0..100u64 {
            s.apply(&claim("n1", if i % 2 == 0 { "a" } else { "b" }, i * 10_000))
                .unwrap();
        }
        assert_eq!(s.record("n1").unwrap().history.len(), HISTORY_LIMIT);
    }

    #[test]
    fn reprovisioning_supersedes_and_revokes_the_old_credential() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&issue("n1", "a", "01", 1)).unwrap();
        s.apply(&enrolled("n1", "a", 2)).unwrap();
        let req = |at| Command::RequestReprovision {
            identity: "n1".into(),
            member: "b".into(),
            at_ms: at,
        };
        s.apply(&req(3)).unwrap();
        assert_eq!(s.record("n1").unwrap().state, EnrollState::Reprovisioning);
        // claimable again, by anyone
        s.apply(&claim("n1", "b", 4)).unwrap();
        // not while someone holds a live claim
        assert!(matches!(s.apply(&req(5)), Err(Rejection::ClaimedBy { .. })));
        s.apply(&issue("n1", "b", "02", 6)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.credential.as_ref().unwrap().serial, "02");
        assert_eq!(r.revoked.len(), 1);
        assert_eq!(r.revoked[0].serial, "01");
        assert!(r.revoked[0].reason.contains("superseded"));
        assert_eq!(s.counts("b").revoked, 1);
        assert_eq!(s.counts("b").claimed_by.get("b"), Some(&1));
        // the old serial stays used
        s.apply(&claim("n2", "b", 7)).unwrap();
        assert!(s.apply(&issue("n2", "b", "01", 8)).is_err());
    }

    #[test]
    fn revoke_marks_the_record_and_needs_a_credential() {
        let mut s = LedgerState::default();
        let revoke = |at| Command::Revoke {
            identity: "n1".into(),
            member: "admin".into(),
            reason: "key leaked".into(),
            at_ms: at,
        };
        assert_eq!(s.apply(&revoke(0)), Err(Rejection::UnknownServer));
        s.apply(&claim("n1", "a", 0)).unwrap();
        assert_eq!(s.apply(&revoke(1)), Err(Rejection::NoCredential));
        s.apply(&issue("n1", "a", "01", 2)).unwrap();
        s.apply(&enrolled("n1", "a", 3)).unwrap();
        s.apply(&revoke(4)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Revoked);
        assert!(r.credential.is_none());
        assert_eq!(r.revoked[0].reason, "key leaked");
        // a revoked server may be provisioned again
        s.apply(&claim("n1", "b", 5)).unwrap();
    }

    #[test]
    fn reassign_takes_a_claim_from_its_owner_only() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        let reassign = |from: &str| Command::Reassign {
            identity: "n1".into(),
            from: from.into(),
            member: "c".into(),
            reason: "member gone".into(),
            at_ms: 10,
        };
        assert!(matches!(
            s.apply(&reassign("b")),
            Err(Rejection::NotOwner { .. })
        ));
        s.apply(&reassign("a")).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Deferred);
        assert_eq!(r.owner, None);
        s.apply(&claim("n1", "b", 11)).unwrap();
        for st in EnrollState::ALL {
            assert_eq!(EnrollState::from_name(st.name()), Some(st));
        }
    }

    #[test]
    fn an_enrolled_server_seen_waiting_well_after_enrollment_is_claimed_again() {
        let mut s = LedgerState::default();
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&issue("n1", "a", "01", 1)).unwrap();
        s.apply(&enrolled("n1", "a", 2)).unwrap();
        let claim_seen = |seen: u64, at: u64| Command::Claim {
            identity: "n1".into(),
            member: "b".into(),
            lease_until_ms: at + 1000,
            seen_ms: seen,
            at_ms: at,
        };
        // seen while it was restarting into its configuration: not again
        assert_eq!(
            s.apply(&claim_seen(5_000, 60_000)),
            Err(Rejection::AlreadyEnrolled)
        );
        // seen waiting long after: it fell back on its own
        s.apply(&claim_seen(2 + REENROLL_SETTLE_MS, 60_000))
            .unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Claimed);
        assert_eq!(r.attempts, 2);
        assert!(r
            .history
            .last()
            .unwrap()
            .event
            .contains("back in provisioning"));
        // the new credential supersedes the old one
        s.apply(&issue("n1", "b", "02", 60_001)).unwrap();
        assert_eq!(s.record("n1").unwrap().revoked[0].serial, "01");
    }

    fn rules2() -> LedgerState {
        let mut s = LedgerState::default();
        s.apply(&Command::SetRules { rules: 2, at_ms: 0 }).unwrap();
        s
    }

    /// An enrolled n1 (serial 01 by a) seen waiting again long after, and claimed by b.
    fn enrolled_then_reclaimed(s: &mut LedgerState) {
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&issue("n1", "a", "01", 1)).unwrap();
        s.apply(&enrolled("n1", "a", 2)).unwrap();
        s.apply(&Command::Claim {
            identity: "n1".into(),
            member: "b".into(),
            lease_until_ms: 200_000,
            seen_ms: 100_000,
            at_ms: 100_000,
        })
        .unwrap();
    }

    #[test]
    fn rules_are_raised_by_command_never_lowered_and_default_to_1() {
        let mut s = LedgerState::default();
        assert_eq!(s.rules(), 1);
        // a restart reported before the rules allow it is refused and changes nothing
        assert_eq!(
            s.apply(&Command::Restarted {
                identity: "n1".into(),
                member: "a".into(),
                at_ms: 1
            }),
            Err(Rejection::NotEnabled { rules: 2 })
        );
        s.apply(&Command::SetRules { rules: 2, at_ms: 1 }).unwrap();
        s.apply(&Command::SetRules { rules: 1, at_ms: 2 }).unwrap();
        assert_eq!(s.rules(), 2);
        // settings stored before the field existed read as rules 1
        let old: ClusterSettings =
            serde_json::from_str(r#"{"paused":false,"draining":[]}"#).unwrap();
        assert_eq!(old.rules, 1);
    }

    #[test]
    fn a_reenrollment_keeps_the_old_credential_until_the_server_restarted() {
        let mut s = rules2();
        enrolled_then_reclaimed(&mut s);
        assert!(s.record("n1").unwrap().claimed_while_enrolled);
        s.apply(&issue("n1", "b", "02", 100_001)).unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.superseded.as_ref().unwrap().serial, "01");
        assert!(
            r.revoked.is_empty(),
            "revoked before the new one was in use"
        );
        assert_eq!(s.counts("b").revoked, 0);
        s.apply(&enrolled("n1", "b", 100_002)).unwrap();
        // only the member that issued the new credential reports the restart
        let restarted = |m: &str, at| Command::Restarted {
            identity: "n1".into(),
            member: m.into(),
            at_ms: at,
        };
        assert!(s.apply(&restarted("a", 100_003)).is_err());
        s.apply(&restarted("b", 100_003)).unwrap();
        let r = s.record("n1").unwrap();
        assert!(r.superseded.is_none());
        assert_eq!(r.revoked.len(), 1);
        assert_eq!(r.revoked[0].serial, "01");
        assert_eq!(r.revoked[0].reason, "superseded by 02");
        assert_eq!(r.issued_at_ms, vec![1, 100_001]);
        assert_eq!(r.issued_since(50_000), 1);
        // sent again: nothing left to do
        let before = r.clone();
        s.apply(&restarted("b", 100_004)).unwrap();
        assert_eq!(s.record("n1").unwrap(), before);
    }

    #[test]
    fn a_second_reissue_before_the_restart_revokes_the_unused_one() {
        let mut s = rules2();
        enrolled_then_reclaimed(&mut s);
        s.apply(&issue("n1", "b", "02", 100_001)).unwrap();
        s.apply(&issue("n1", "b", "03", 100_002)).unwrap();
        let r = s.record("n1").unwrap();
        // 01 is what the server may still run with; 02 was never used
        assert_eq!(r.superseded.as_ref().unwrap().serial, "01");
        assert_eq!(r.revoked.len(), 1);
        assert_eq!(r.revoked[0].serial, "02");
        // an operator's revocation takes both
        s.apply(&Command::Revoke {
            identity: "n1".into(),
            member: "b/ops".into(),
            reason: "lost".into(),
            at_ms: 100_003,
        })
        .unwrap();
        let r = s.record("n1").unwrap();
        let revoked: Vec<&str> = r.revoked.iter().map(|c| c.serial.as_str()).collect();
        assert_eq!(revoked, ["02", "03", "01"]);
        assert!(r.superseded.is_none() && r.credential.is_none());
    }

    #[test]
    fn a_claim_on_an_enrolled_server_that_issues_nothing_leaves_it_enrolled() {
        for outcome in [
            ReleaseOutcome::Failed {
                reason: "no jwt".into(),
            },
            ReleaseOutcome::Deferred {
                reason: "helper says later".into(),
            },
            ReleaseOutcome::Abandoned,
        ] {
            let mut s = rules2();
            enrolled_then_reclaimed(&mut s);
            s.apply(&Command::Release {
                identity: "n1".into(),
                member: "b".into(),
                outcome: outcome.clone(),
                at_ms: 100_001,
            })
            .unwrap();
            let r = s.record("n1").unwrap();
            assert_eq!(r.state, EnrollState::Enrolled, "{outcome:?}");
            assert_eq!(r.credential.as_ref().unwrap().serial, "01");
            assert!(!r.claimed_while_enrolled);
        }
        // the same under rules 1: it fails, as before
        let mut s = LedgerState::default();
        enrolled_then_reclaimed(&mut s);
        s.apply(&Command::Release {
            identity: "n1".into(),
            member: "b".into(),
            outcome: ReleaseOutcome::Failed { reason: "x".into() },
            at_ms: 100_001,
        })
        .unwrap();
        assert_eq!(s.record("n1").unwrap().state, EnrollState::Failed);
        // a claim taken from a dead member also leaves it enrolled
        let mut s = rules2();
        enrolled_then_reclaimed(&mut s);
        s.apply(&Command::Reassign {
            identity: "n1".into(),
            from: "b".into(),
            member: "a".into(),
            reason: "b is gone".into(),
            at_ms: 100_001,
        })
        .unwrap();
        assert_eq!(s.record("n1").unwrap().state, EnrollState::Enrolled);
        // once a new credential was issued, a failure is a failure
        let mut s = rules2();
        enrolled_then_reclaimed(&mut s);
        s.apply(&issue("n1", "b", "02", 100_001)).unwrap();
        s.apply(&Command::Release {
            identity: "n1".into(),
            member: "b".into(),
            outcome: ReleaseOutcome::Failed {
                reason: "configure".into(),
            },
            at_ms: 100_002,
        })
        .unwrap();
        assert_eq!(s.record("n1").unwrap().state, EnrollState::Failed);
    }

    #[test]
    fn failed_records_that_never_held_a_credential_are_forgotten_when_old_enough() {
        let mut s = rules2();
        s.apply(&claim("n1", "a", 0)).unwrap();
        s.apply(&Command::Release {
            identity: "n1".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Failed { reason: "x".into() },
            at_ms: 10,
        })
        .unwrap();
        s.apply(&claim("n2", "a", 0)).unwrap();
        s.apply(&issue("n2", "a", "02", 1)).unwrap();
        s.apply(&Command::Release {
            identity: "n2".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Failed { reason: "x".into() },
            at_ms: 10,
        })
        .unwrap();
        s.apply(&claim("n3", "a", 0)).unwrap();
        let forget = |id: &str, at| Command::Forget {
            identity: id.into(),
            member: "a".into(),
            older_than_ms: 1000,
            at_ms: at,
        };
        assert_eq!(s.forgettable(2000, 10), vec!["n1".to_string()]);
        assert_eq!(s.apply(&forget("n1", 500)), Err(Rejection::NotForgettable));
        assert_eq!(s.apply(&forget("n2", 5000)), Err(Rejection::NotForgettable));
        assert_eq!(s.apply(&forget("n3", 5000)), Err(Rejection::NotForgettable));
        s.apply(&forget("n1", 5000)).unwrap();
        assert!(s.record("n1").is_none());
        assert_eq!(s.apply(&forget("n1", 5000)), Err(Rejection::UnknownServer));
        // the serial of a failed record with a credential stays taken
        let mut serials = Vec::new();
        s.for_each_serial(&mut |serial, _| serials.push(serial.to_string()))
            .unwrap();
        assert!(serials.contains(&"02".to_string()));
    }

    /// The digest kept as commands apply is the one computed over the whole ledger, after
    /// every kind of change (rejected commands included), and after a restart from records.
    #[test]
    fn the_kept_digest_and_counts_are_those_computed_over_the_whole_ledger() {
        let mut s = rules2();
        let empty = s.digest();
        assert_eq!(s.counts("a"), LedgerCounts::default());
        let mut seen = vec![empty.clone()];
        let cmds = vec![
            claim("n1", "a", 0),
            issue("n1", "a", "01", 1),
            // the same serial again: rejected, nothing changes
            issue("n1", "a", "01", 1),
            enrolled("n1", "a", 2),
            claim("n2", "a", 3),
            Command::Release {
                identity: "n2".into(),
                member: "a".into(),
                outcome: ReleaseOutcome::Failed { reason: "x".into() },
                at_ms: 10,
            },
            Command::Heartbeat {
                member: "a".into(),
                at_ms: 11,
            },
            Command::Forget {
                identity: "n2".into(),
                member: "a".into(),
                older_than_ms: 1,
                at_ms: 5000,
            },
            Command::Revoke {
                identity: "n1".into(),
                member: "a".into(),
                reason: "lost".into(),
                at_ms: 5001,
            },
        ];
        for cmd in &cmds {
            let _ = s.apply(cmd);
            assert_eq!(s.digest(), s.full_digest().unwrap().hex(), "after {cmd:?}");
            let mut full = s.full_counts().unwrap();
            full.owned_by_member = full.claimed_by.get("a").copied().unwrap_or(0);
            assert_eq!(s.counts("a"), full, "after {cmd:?}");
            seen.push(s.digest());
        }
        // changes change it; a record forgotten leaves it as before that record came
        assert_ne!(seen[1], seen[0]);
        assert_eq!(seen[3], seen[2]);
        assert_eq!(seen[8], seen[4]);
        assert_eq!(s.counts("a").revoked, 1);
        let mut serials = HashMap::new();
        s.for_each_serial(&mut |a, b| {
            serials.insert(a.to_string(), b.to_string());
        })
        .unwrap();
        let restored = LedgerState::restore(
            s.all_records(),
            serials,
            BTreeMap::new(),
            s.settings().clone(),
        );
        assert_eq!(restored.digest(), s.digest());
    }

    #[test]
    fn free_text_is_bounded_before_it_reaches_the_ledger() {
        let long = "é".repeat(1000);
        let cmd = Command::Release {
            identity: "n1".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Failed { reason: long },
            at_ms: 1,
        }
        .bounded();
        let Command::Release {
            outcome: ReleaseOutcome::Failed { reason },
            ..
        } = cmd
        else {
            panic!("not a release");
        };
        assert!(reason.len() <= crate::command::MAX_TEXT, "{}", reason.len());
        assert!(reason.ends_with("..."));
    }
}
