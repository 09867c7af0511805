//! Applying a command: [`LedgerState::apply`] is the ledger's only writer. Each command is
//! judged under the rules the cluster applies; what it changed is handed to the store
//! encoded once, with the kept counts and digest following.

use super::flow::{enrolled, forgettable, note, released_as, revoke, Issue};
use super::*;
use crate::command::ReleaseOutcome;

impl LedgerState {
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
                let event = Event::CredentialIssued {
                    serial: serial.clone(),
                };
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
                    && self.replayed(identity, member, *at_ms, &Event::Enrolled {})
                {
                    return Ok(());
                }
                let event = Event::CredentialIssued {
                    serial: serial.clone(),
                };
                let issued = Issue {
                    serial,
                    fingerprint,
                    not_after: *not_after,
                };
                let rules = self.rules();
                if let Some(rec) = self.issue(identity, member, *at_ms, event, issued)? {
                    enrolled(rec, config_digest, facts);
                    note(rec, rules, *at_ms, member, Event::Enrolled {});
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
                if self.replayed(identity, member, *at_ms, &Event::Enrolled {}) {
                    return Ok(());
                }
                let rules = self.rules();
                let rec = self.owned_by(identity, member, *at_ms)?;
                enrolled(rec, config_digest, facts);
                note(rec, rules, *at_ms, member, Event::Enrolled {});
                Ok(())
            }

            Command::Revoke {
                identity,
                member,
                reason,
                at_ms,
            } => {
                let rules = self.rules();
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
                let event = Event::CredentialRevoked {
                    serial,
                    reason: reason.clone(),
                };
                note(rec, rules, *at_ms, member, event);
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
                let rules = self.rules();
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
                note(rec, rules, *at_ms, member, Event::ReprovisionRequested {});
                Ok(())
            }

            Command::Note {
                identity,
                member,
                event,
                at_ms,
            } => {
                let rules = self.rules();
                let rec = self.record_mut(identity)?;
                let event = Event::Note {
                    text: event.clone(),
                };
                note(rec, rules, *at_ms, member, event);
                Ok(())
            }

            Command::Reassign {
                identity,
                from,
                member,
                reason,
                at_ms,
            } => {
                let rules = self.rules();
                let rules2 = rules >= 2;
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
                let event = Event::TakenFrom {
                    from: from.clone(),
                    reason: reason.clone(),
                };
                note(rec, rules, *at_ms, member, event);
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
                let rules = self.rules();
                let rules2 = rules >= 2;
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
                note(rec, rules, *at_ms, member, event);
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
                let rules = self.rules();
                if rules < 2 {
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
                    let event = Event::Restarted {
                        serial: current.serial.clone(),
                        revoked: serial,
                    };
                    note(rec, rules, *at_ms, member, event);
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
}
