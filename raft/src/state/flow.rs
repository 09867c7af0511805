//! The rules a server's record follows through a flow: who may claim it, how a flow ends
//! (with or without a claim), how a credential is recorded and what replaces or revokes it,
//! and when a command sent again is known as applied already.

use std::collections::BTreeMap;

use super::*;
use crate::command::{FlowEnd, ReleaseOutcome};

impl LedgerState {
    pub(super) fn claim(
        &mut self,
        identity: &str,
        member: &str,
        lease_until_ms: u64,
        seen_ms: u64,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let rules = self.rules();
        let rules2 = rules >= 2;
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
            note(rec, rules, at_ms, member, Event::Claimed { fell_back });
        }
        Ok(())
    }

    pub(super) fn needs(&self, rules: u32) -> Result<(), Rejection> {
        if self.rules() < rules {
            return Err(Rejection::NotEnabled { rules });
        }
        Ok(())
    }

    /// Whether `member` holds the claim on `identity` (live or not).
    pub(super) fn holds(&self, identity: &str, member: &str) -> bool {
        self.records
            .loaded(identity)
            .is_some_and(|r| r.state == EnrollState::Claimed && r.owner.as_deref() == Some(member))
    }

    /// The end of a flow without a claim (see [`Command::Finish`]).
    pub(super) fn finish(
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
            None => (Event::Enrolled {}, None),
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
                    let event = Event::CredentialIssued {
                        serial: c.serial.clone(),
                    };
                    record_credential(rec, rules, member, at_ms, event, issued);
                    self.records.insert_serial(&c.serial, identity);
                }
                let rec = self.record_mut(identity)?;
                enrolled(rec, config_digest, facts);
                note(rec, rules, at_ms, member, event);
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
                note(rec, rules, at_ms, member, event);
            }
            (FlowEnd::Released { .. }, None) => {}
        }
        Ok(())
    }

    pub(super) fn record_mut(&mut self, identity: &str) -> Result<&mut Record, Rejection> {
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
    pub(super) fn replayed(&self, identity: &str, member: &str, at_ms: u64, event: &Event) -> bool {
        self.records
            .loaded(identity)
            .and_then(|r| r.history.last())
            .is_some_and(|h| h.at_ms == at_ms && h.member == member && h.event.is(event))
    }

    /// Records the credential `issued` for `identity` under `member`'s claim, with `event` in
    /// its history; `None` when this very command was applied before (a forward sent again).
    pub(super) fn issue(
        &mut self,
        identity: &str,
        member: &str,
        at_ms: u64,
        event: Event,
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
    pub(super) fn enrolled_just_now(&self, identity: &str, member: &str, at_ms: u64) -> bool {
        self.enrolled_just_now_by(identity, at_ms)
            .is_some_and(|(by, _)| by == member)
    }

    /// Who enrolled `identity` with `Enroll` less than the settle time before `at_ms`, with
    /// nothing changed since, and when that time ends (rules 5): its flow may still be
    /// sending the configuration and the restart.
    pub(super) fn enrolled_just_now_by(&self, identity: &str, at_ms: u64) -> Option<(String, u64)> {
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
    pub(super) fn owned_by(
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

/// A failed record that never held a credential and is not worked on.
/// A record for a server the ledger has not heard of, first seen at `at_ms`.
pub(super) fn new_record(identity: &str, at_ms: u64) -> Record {
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
pub(super) fn released_as(outcome: &ReleaseOutcome) -> (EnrollState, Option<String>, Event) {
    match outcome {
        ReleaseOutcome::Deferred { reason } => (
            EnrollState::Deferred,
            Some(reason.clone()),
            Event::Deferred {
                reason: reason.clone(),
            },
        ),
        ReleaseOutcome::Failed { reason } => (
            EnrollState::Failed,
            Some(reason.clone()),
            Event::Failed {
                reason: reason.clone(),
            },
        ),
        ReleaseOutcome::Shutdown { reason } => (
            EnrollState::Shutdown,
            None,
            Event::ShutDown {
                reason: reason.clone(),
            },
        ),
        ReleaseOutcome::Upgrading { from, to } => (
            EnrollState::Upgrading,
            None,
            Event::Upgrading {
                from: from.clone(),
                to: to.clone(),
            },
        ),
        ReleaseOutcome::Abandoned => (
            EnrollState::Failed,
            Some("abandoned".into()),
            Event::Abandoned {},
        ),
    }
}

/// Makes `issued` the server's credential: the one it replaces stays valid until the server
/// restarted (rules 2) or is revoked.
pub(super) fn record_credential(
    rec: &mut Record,
    rules: u32,
    member: &str,
    at_ms: u64,
    event: Event,
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
    note(rec, rules, at_ms, member, event);
}

pub(super) fn forgettable(rec: &Record) -> bool {
    rec.state == EnrollState::Failed
        && rec.owner.is_none()
        && rec.credential.is_none()
        && rec.superseded.is_none()
        && rec.revoked.is_empty()
        && rec.config_digest.is_none()
}

pub(super) fn revoke(rec: &mut Record, cred: Credential, member: &str, at_ms: u64, reason: String) {
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
pub(super) struct Issue<'a> {
    pub(super) serial: &'a str,
    pub(super) fingerprint: &'a str,
    pub(super) not_after: i64,
}

/// Marks `rec` enrolled with the configuration whose digest is `config_digest`; its claim ends.
pub(super) fn enrolled(rec: &mut Record, config_digest: &str, facts: &BTreeMap<String, String>) {
    rec.state = EnrollState::Enrolled;
    rec.owner = None;
    rec.lease_until_ms = 0;
    rec.last_error = None;
    rec.claimed_while_enrolled = false;
    rec.config_digest = Some(config_digest.to_string());
    rec.facts = facts.clone();
}

/// Adds `event` to the record's history, as ledger `rules` store it.
pub(super) fn note(rec: &mut Record, rules: u32, at_ms: u64, member: &str, event: Event) {
    rec.updated_ms = at_ms;
    rec.history.push(HistoryEntry {
        at_ms,
        member: member.to_string(),
        event: Logged::under(rules, event),
    });
    if rec.history.len() > HISTORY_LIMIT {
        let excess = rec.history.len() - HISTORY_LIMIT;
        rec.history.drain(..excess);
    }
}
