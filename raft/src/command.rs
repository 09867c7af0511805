//! Commands: the only way the ledger changes.
//!
//! Each command carries the time it was proposed (`at_ms`, Unix milliseconds) so applying it
//! never reads a clock and every replica decides the same way.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseOutcome {
    /// The helper deferred the server or a step failed; it may be tried again later.
    Deferred { reason: String },
    /// Provisioning failed; it may be tried again on the next discovery.
    Failed { reason: String },
    /// The helper asked for the server to be shut down.
    Shutdown { reason: String },
    /// The owner gave the server up without an outcome (it vanished, or the member stops).
    Abandoned,
    /// The server was asked to update its version; it comes back to provisioning mode.
    Upgrading { from: String, to: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `member` takes `identity` to provision it, holding it until `lease_until_ms`.
    Claim {
        identity: String,
        member: String,
        lease_until_ms: u64,
        /// When the server was last seen in provisioning mode (a discovery reply or a startup
        /// event); evidence that an enrolled server fell back on its own.
        #[serde(default)]
        seen_ms: u64,
        at_ms: u64,
    },
    /// A credential was issued for `identity`; applied before the server receives it.
    IssueCredential {
        identity: String,
        member: String,
        serial: String,
        fingerprint: String,
        not_after: i64,
        at_ms: u64,
    },
    /// The server accepted its configuration and is restarting into it.
    Enrolled {
        identity: String,
        member: String,
        config_digest: String,
        /// Inventory facts kept for fact filters (see `ledger_facts`).
        #[serde(default)]
        facts: std::collections::BTreeMap<String, String>,
        at_ms: u64,
    },
    /// `member` stops working on `identity`.
    Release {
        identity: String,
        member: String,
        outcome: ReleaseOutcome,
        at_ms: u64,
    },
    /// `member` is alive; the live members share the waiting servers between them.
    Heartbeat { member: String, at_ms: u64 },
    /// Provisioning pauses (or resumes) on every member.
    SetPaused { paused: bool, at_ms: u64 },
    /// `member` stops (or resumes) taking servers; it stays a voter.
    SetDraining {
        member: String,
        draining: bool,
        at_ms: u64,
    },
    /// Every member looks at the waiting servers again (after membership changes).
    Rebalance { at_ms: u64 },
    /// An operator revokes the server's current credential.
    Revoke {
        identity: String,
        member: String,
        reason: String,
        at_ms: u64,
    },
    /// An operator asked the server to go back to provisioning mode; it may be claimed again.
    RequestReprovision {
        identity: String,
        member: String,
        at_ms: u64,
    },
    /// A line in the server's history (for example how a reprovision request went).
    Note {
        identity: String,
        member: String,
        event: String,
        at_ms: u64,
    },
    /// Takes the claim away from `from` (a dead or draining member) so another may take it.
    Reassign {
        identity: String,
        from: String,
        member: String,
        reason: String,
        at_ms: u64,
    },
}

impl Command {
    /// The command's name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Claim { .. } => "claim",
            Command::IssueCredential { .. } => "issue_credential",
            Command::Enrolled { .. } => "enrolled",
            Command::Release { .. } => "release",
            Command::Heartbeat { .. } => "heartbeat",
            Command::SetPaused { .. } => "set_paused",
            Command::SetDraining { .. } => "set_draining",
            Command::Rebalance { .. } => "rebalance",
            Command::Revoke { .. } => "revoke",
            Command::RequestReprovision { .. } => "request_reprovision",
            Command::Note { .. } => "note",
            Command::Reassign { .. } => "reassign",
        }
    }

    /// The server the command is about, if any.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Command::Claim { identity, .. }
            | Command::IssueCredential { identity, .. }
            | Command::Enrolled { identity, .. }
            | Command::Release { identity, .. }
            | Command::Revoke { identity, .. }
            | Command::RequestReprovision { identity, .. }
            | Command::Note { identity, .. }
            | Command::Reassign { identity, .. } => Some(identity),
            Command::Heartbeat { .. }
            | Command::SetPaused { .. }
            | Command::SetDraining { .. }
            | Command::Rebalance { .. } => None,
        }
    }

    /// The member that proposes the command, when it acts as one; such commands are refused
    /// once that member has left the group. An operator's command names `member/operator`,
    /// and its member part counts. Cluster settings name no actor: an operator may still
    /// undrain a member that is gone.
    pub fn actor(&self) -> Option<&str> {
        let named = match self {
            Command::Claim { member, .. }
            | Command::IssueCredential { member, .. }
            | Command::Enrolled { member, .. }
            | Command::Release { member, .. }
            | Command::Heartbeat { member, .. }
            | Command::Revoke { member, .. }
            | Command::RequestReprovision { member, .. }
            | Command::Note { member, .. }
            | Command::Reassign { member, .. } => Some(member),
            Command::SetPaused { .. } | Command::SetDraining { .. } | Command::Rebalance { .. } => {
                None
            }
        };
        named.map(|m: &String| m.split_once('/').map_or(m.as_str(), |(member, _)| member))
    }
}
