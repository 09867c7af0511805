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
    /// The ledger applies `rules` from now on (never lower); proposed by the leader once every
    /// member reports it can (see `state::LEDGER_RULES`).
    SetRules { rules: u32, at_ms: u64 },
    /// The re-enrolled server restarted with its new credential: the one it replaced is
    /// revoked now (rules 2).
    Restarted {
        identity: String,
        member: String,
        at_ms: u64,
    },
    /// Drops the record of a server that failed and never held a credential, unchanged for
    /// `older_than_ms` (rules 2).
    Forget {
        identity: String,
        member: String,
        older_than_ms: u64,
        at_ms: u64,
    },
    /// `IssueCredential` and `Enrolled` in one (rules 5): the credential the server is about
    /// to receive with the configuration whose digest this names. The claim ends here; the
    /// settle time (`state::REENROLL_SETTLE_MS`) keeps other members off while the owner
    /// sends the configuration and the restart, and the owner may still record a failure
    /// (`Release`) within it. Appended last: the binary log encodes variants by position.
    Enroll {
        identity: String,
        member: String,
        serial: String,
        fingerprint: String,
        not_after: i64,
        config_digest: String,
        facts: std::collections::BTreeMap<String, String>,
        at_ms: u64,
    },
    /// The leader's new ownership epoch (rules 6, see [`crate::ownership`]).
    NewEpoch(crate::ownership::Epoch),
    /// `member` has no flow left that it started under an epoch older than `epoch`.
    EpochAck {
        member: String,
        epoch: u64,
        at_ms: u64,
    },
    /// A flow that `member` started under ownership `epoch` without claiming the server ends
    /// (rules 6): enrolled (with the credential the server is about to receive, if any) before
    /// the configuration goes out, or with an outcome like a `Release`. The first the ledger
    /// hears of a server may be this.
    Finish {
        identity: String,
        member: String,
        epoch: u64,
        /// When the server was last seen in provisioning mode.
        seen_ms: u64,
        end: FlowEnd,
        at_ms: u64,
    },
    /// `member` lends `identities`, which it owns under `epoch` and has not started, to `to`
    /// (rules 7, see [`crate::ownership::Loan`]): `to` starts each before `start_by_ms` and
    /// sends it nothing after `until_ms`.
    Lend {
        member: String,
        to: String,
        epoch: u64,
        identities: Vec<String>,
        start_by_ms: u64,
        until_ms: u64,
        at_ms: u64,
    },
}

/// How a flow without a claim ended (see [`Command::Finish`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowEnd {
    /// About to be configured (and restarted): recorded as `Enroll` (or `Enrolled` without a
    /// credential) records it.
    Enrolled {
        credential: Option<Issued>,
        config_digest: String,
        facts: std::collections::BTreeMap<String, String>,
    },
    /// Deferred, failed, shut down, upgrading: as `Release` records it. `enrolled_at_ms`:
    /// this very flow enrolled the server then (its `Enrolled` end applied) and could not
    /// configure or restart it; only such a flow may mark a server it enrolled moments ago
    /// failed (another flow of the same member is refused as any other would be).
    Released {
        outcome: ReleaseOutcome,
        enrolled_at_ms: Option<u64>,
    },
}

/// A credential as a flow issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub serial: String,
    pub fingerprint: String,
    pub not_after: i64,
}

/// Longest free text (a reason, a history line) a command carries into the ledger; what
/// servers, helpers and operators write is cut to this before it is proposed.
pub const MAX_TEXT: usize = 400;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
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
            Command::SetRules { .. } => "set_rules",
            Command::Restarted { .. } => "restarted",
            Command::Forget { .. } => "forget",
            Command::Enroll { .. } => "enroll",
            Command::NewEpoch(_) => "new_epoch",
            Command::EpochAck { .. } => "epoch_ack",
            Command::Finish {
                end: FlowEnd::Enrolled { .. },
                ..
            } => "finish_enrolled",
            Command::Finish { .. } => "finish_released",
            Command::Lend { .. } => "lend",
        }
    }

    /// About how many bytes the command takes in a log entry: its text and a fixed allowance
    /// for the rest. Enough to keep a batch under its byte budget.
    pub fn approx_bytes(&self) -> usize {
        let text = |s: &str| s.len() + 8;
        64 + match self {
            Command::Claim {
                identity, member, ..
            }
            | Command::Restarted {
                identity, member, ..
            }
            | Command::Forget {
                identity, member, ..
            }
            | Command::RequestReprovision {
                identity, member, ..
            } => text(identity) + text(member),
            Command::IssueCredential {
                identity,
                member,
                serial,
                fingerprint,
                ..
            } => text(identity) + text(member) + text(serial) + text(fingerprint),
            Command::Enrolled {
                identity,
                member,
                config_digest,
                facts,
                ..
            } => {
                text(identity)
                    + text(member)
                    + text(config_digest)
                    + facts.iter().map(|(k, v)| text(k) + text(v)).sum::<usize>()
            }
            Command::Enroll {
                identity,
                member,
                serial,
                fingerprint,
                config_digest,
                facts,
                ..
            } => {
                text(identity)
                    + text(member)
                    + text(serial)
                    + text(fingerprint)
                    + text(config_digest)
                    + facts.iter().map(|(k, v)| text(k) + text(v)).sum::<usize>()
            }
            Command::Release {
                identity,
                member,
                outcome,
                ..
            } => text(identity) + text(member) + outcome_bytes(outcome),
            Command::Finish {
                identity,
                member,
                end,
                ..
            } => {
                text(identity)
                    + text(member)
                    + match end {
                        FlowEnd::Enrolled {
                            credential,
                            config_digest,
                            facts,
                        } => {
                            credential
                                .as_ref()
                                .map_or(0, |c| text(&c.serial) + text(&c.fingerprint))
                                + text(config_digest)
                                + facts.iter().map(|(k, v)| text(k) + text(v)).sum::<usize>()
                        }
                        FlowEnd::Released { outcome, .. } => outcome_bytes(outcome),
                    }
            }
            Command::NewEpoch(e) => {
                e.members
                    .iter()
                    .chain(&e.must_ack)
                    .map(|m| text(m))
                    .sum::<usize>()
                    + e.leader.as_deref().map_or(0, text)
            }
            Command::EpochAck { member, .. } => text(member),
            Command::Lend {
                member,
                to,
                identities,
                ..
            } => text(member) + text(to) + identities.iter().map(|i| text(i)).sum::<usize>(),
            Command::Revoke {
                identity,
                member,
                reason,
                ..
            } => text(identity) + text(member) + text(reason),
            Command::Note {
                identity,
                member,
                event,
                ..
            } => text(identity) + text(member) + text(event),
            Command::Reassign {
                identity,
                from,
                member,
                reason,
                ..
            } => text(identity) + text(from) + text(member) + text(reason),
            Command::Heartbeat { member, .. } | Command::SetDraining { member, .. } => text(member),
            Command::SetPaused { .. } | Command::Rebalance { .. } | Command::SetRules { .. } => 0,
        }
    }

    /// The command with its free text (reasons, history lines) cut to [`MAX_TEXT`]; every
    /// ledger applies this to what it is asked to propose.
    pub fn bounded(mut self) -> Command {
        match &mut self {
            Command::Release { outcome, .. }
            | Command::Finish {
                end: FlowEnd::Released { outcome, .. },
                ..
            } => bound_outcome(outcome),
            Command::Revoke { reason, .. } | Command::Reassign { reason, .. } => {
                *reason = bounded(reason, MAX_TEXT)
            }
            Command::Note { event, .. } => *event = bounded(event, MAX_TEXT),
            _ => {}
        }
        self
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
            | Command::Reassign { identity, .. }
            | Command::Restarted { identity, .. }
            | Command::Forget { identity, .. }
            | Command::Enroll { identity, .. }
            | Command::Finish { identity, .. } => Some(identity),
            Command::NewEpoch(_) | Command::EpochAck { .. } | Command::Lend { .. } => None,
            Command::SetRules { .. }
            | Command::Heartbeat { .. }
            | Command::SetPaused { .. }
            | Command::SetDraining { .. }
            | Command::Rebalance { .. } => None,
        }
    }

    /// The serial a credential command records, and for which server.
    pub fn issued_serial(&self) -> Option<(&str, &str)> {
        match self {
            Command::IssueCredential {
                serial, identity, ..
            }
            | Command::Enroll {
                serial, identity, ..
            } => Some((serial, identity)),
            Command::Finish {
                identity,
                end:
                    FlowEnd::Enrolled {
                        credential: Some(c),
                        ..
                    },
                ..
            } => Some((&c.serial, identity)),
            _ => None,
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
            | Command::Reassign { member, .. }
            | Command::Restarted { member, .. }
            | Command::Forget { member, .. }
            | Command::Enroll { member, .. }
            | Command::EpochAck { member, .. }
            | Command::Lend { member, .. }
            | Command::Finish { member, .. } => Some(member),
            Command::NewEpoch(_) => None,
            Command::SetPaused { .. }
            | Command::SetDraining { .. }
            | Command::Rebalance { .. }
            | Command::SetRules { .. } => None,
        };
        named.map(|m: &String| m.split_once('/').map_or(m.as_str(), |(member, _)| member))
    }
}

fn outcome_bytes(outcome: &ReleaseOutcome) -> usize {
    let text = |s: &str| s.len() + 8;
    match outcome {
        ReleaseOutcome::Deferred { reason }
        | ReleaseOutcome::Failed { reason }
        | ReleaseOutcome::Shutdown { reason } => text(reason),
        ReleaseOutcome::Upgrading { from, to } => text(from) + text(to),
        ReleaseOutcome::Abandoned => 0,
    }
}

fn bound_outcome(outcome: &mut ReleaseOutcome) {
    match outcome {
        ReleaseOutcome::Deferred { reason }
        | ReleaseOutcome::Failed { reason }
        | ReleaseOutcome::Shutdown { reason } => *reason = bounded(reason, MAX_TEXT),
        ReleaseOutcome::Upgrading { from, to } => {
            *from = bounded(from, MAX_TEXT);
            *to = bounded(to, MAX_TEXT);
        }
        ReleaseOutcome::Abandoned => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size estimate the batcher budgets with stays within half of the JSON a log entry
    /// really holds, which the append limit counts on.
    #[test]
    fn approx_bytes_is_at_least_half_the_encoded_size() {
        let facts: std::collections::BTreeMap<String, String> = (0..50)
            .map(|i| {
                (
                    format!("fact{i}"),
                    format!("value \"{i}\" {}", "v".repeat(i)),
                )
            })
            .collect();
        let cmds = [
            Command::Claim {
                identity: "n1.example.net".into(),
                member: "prov1".into(),
                lease_until_ms: u64::MAX,
                seen_ms: u64::MAX,
                at_ms: u64::MAX,
            },
            Command::Enrolled {
                identity: "n1.example.net".into(),
                member: "prov1".into(),
                config_digest: "d".repeat(64),
                facts,
                at_ms: u64::MAX,
            },
            Command::Release {
                identity: "n1".into(),
                member: "prov1".into(),
                outcome: ReleaseOutcome::Failed {
                    reason: "x".repeat(MAX_TEXT),
                },
                at_ms: 1,
            },
            Command::SetRules { rules: 2, at_ms: 1 },
            Command::Enroll {
                identity: "n1.example.net".into(),
                member: "prov1".into(),
                serial: "0a".repeat(16),
                fingerprint: "f".repeat(64),
                not_after: i64::MAX,
                config_digest: "d".repeat(64),
                facts: std::collections::BTreeMap::from([("role".into(), "web \"x\"".into())]),
                at_ms: u64::MAX,
            },
            Command::Finish {
                identity: "n1.example.net".into(),
                member: "prov1".into(),
                epoch: u64::MAX,
                seen_ms: u64::MAX,
                end: FlowEnd::Enrolled {
                    credential: Some(Issued {
                        serial: "0a".repeat(16),
                        fingerprint: "f".repeat(64),
                        not_after: i64::MAX,
                    }),
                    config_digest: "d".repeat(64),
                    facts: std::collections::BTreeMap::from([("role".into(), "web".into())]),
                },
                at_ms: u64::MAX,
            },
            Command::Finish {
                identity: "n1".into(),
                member: "prov1".into(),
                epoch: 1,
                seen_ms: 1,
                end: FlowEnd::Released {
                    outcome: ReleaseOutcome::Failed {
                        reason: "x".repeat(MAX_TEXT),
                    },
                    enrolled_at_ms: Some(1),
                },
                at_ms: 1,
            },
            Command::NewEpoch(crate::ownership::Epoch {
                epoch: u64::MAX,
                members: vec!["prov1".into(), "prov2".into(), "prov3".into()],
                leader: Some("prov1".into()),
                leader_share_milli: 500,
                must_ack: ["prov1".to_string(), "prov2".to_string()].into(),
                settle_by_ms: u64::MAX,
                not_before_ms: u64::MAX,
                at_ms: u64::MAX,
            }),
            Command::EpochAck {
                member: "prov1".into(),
                epoch: u64::MAX,
                at_ms: u64::MAX,
            },
        ];
        for cmd in cmds {
            let json = serde_json::to_vec(&cmd).unwrap().len();
            assert!(
                cmd.approx_bytes() * 2 >= json,
                "{} vs {json}: {cmd:?}",
                cmd.approx_bytes()
            );
        }
    }

    #[test]
    fn bounded_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"ü".repeat(10), 9);
        assert!(cut.len() <= 9 && cut.ends_with("..."), "{cut}");
    }
}
