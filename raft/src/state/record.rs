//! A server's record in the ledger, and why a command about it is refused ([`Rejection`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::REENROLL_SETTLE_MS;

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
    /// Rendered for people with `to_string()`; compared as an event.
    pub event: super::history::Logged,
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
    /// [`ISSUE_TIMES_KEPT`](super::ISSUE_TIMES_KEPT) (rules 2).
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
