//! How long a flow may still drive its server. A flow holds the server by a claim in the
//! ledger (renewed when less than half of it is left) or, in a cluster on ledger rules 6, by
//! its ownership epoch while this member's fence holds; a lent server also by the loan's
//! end. Every call that changes the server checks here first, and `configure` is sent only
//! within the time these leave, with a margin ([`send_budget`], [`settle_budget`]).

use raft::state::REENROLL_SETTLE_MS;
use thiserror::Error;

use super::claim::claim;
use super::outcome::Outcome;
use super::restart::RESTART_WITHIN;
use crate::clock::now_ms;
use crate::context::Services;

/// The flow may not drive its server any more.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// This member's fence (no heartbeat committed lately) is up.
    #[error("fenced (no heartbeat committed lately) before {0}; not sent")]
    Fenced(&'static str),
    #[error("the loan ends before {0} could end; not sent")]
    LoanEnds(&'static str),
    #[error("lost claim before {before}: {outcome:?}")]
    LostClaim {
        before: &'static str,
        outcome: Outcome,
    },
    #[error("the settle time after enrollment ends before configure could be sent; not sent")]
    SettleEnds,
    #[error("the claim lapses before configure could be sent; not sent")]
    ClaimLapses,
}

impl LeaseError {
    pub fn reason(&self) -> &'static str {
        match self {
            LeaseError::Fenced(_) => "fenced",
            LeaseError::LoanEnds(_) => "loan",
            LeaseError::LostClaim { .. } => "lost_claim",
            LeaseError::SettleEnds | LeaseError::ClaimLapses => "no_time",
        }
    }
}

/// This flow's hold on its server: when its claim lapses, and whether the ledger has
/// confirmed it since it was taken (a credential is recorded only by the claim's holder, at
/// apply time). Once the ledger recorded the enrollment (`enrolled_at_ms`) the claim is over
/// and the settle time fences what is still sent.
pub(super) struct Lease {
    pub until_ms: u64,
    pub fenced: bool,
    pub enrolled_at_ms: Option<u64>,
    /// Started without a claim, under an ownership epoch: the member's fence stands in for
    /// the claim.
    pub owned: Option<Owned>,
}

/// A flow under an ownership epoch (ledger rules 6).
pub(super) struct Owned {
    pub epoch: u64,
    pub seen_ms: u64,
    /// A lent server (rules 7): no call goes out after then (Unix ms), so the last one has
    /// ended by the loan's end.
    pub send_by_ms: Option<u64>,
}

impl Lease {
    /// Before a call that changes the server (a new key, a shutdown, an update): a flow under
    /// an epoch goes on only while this member is not fenced; a claim was checked when taken.
    pub fn check(&self, svc: &Services, before: &'static str) -> Result<(), LeaseError> {
        let Some(owned) = &self.owned else {
            return Ok(());
        };
        let now = now_ms();
        if !svc.flows.unfenced(now) {
            return Err(LeaseError::Fenced(before));
        }
        if owned.send_by_ms.is_some_and(|by| now >= by) {
            return Err(LeaseError::LoanEnds(before));
        }
        Ok(())
    }

    /// Makes sure the claim holds for at least half a lease more, renewing it only when it
    /// would not: a flow that takes a fraction of its lease costs the ledger one claim, not
    /// one per step. `before` names the step, for the error.
    pub async fn keep(
        &mut self,
        svc: &Services,
        identity: &str,
        seen_ms: u64,
        before: &'static str,
    ) -> Result<(), LeaseError> {
        if self.owned.is_some() {
            return self.check(svc, before);
        }
        if !needs_renewal(self.until_ms, svc.claim_lease_ms, now_ms()) {
            return Ok(());
        }
        self.renew(svc, identity, seen_ms, before).await
    }

    /// Claims the server again now, whatever is left of the claim.
    pub async fn renew(
        &mut self,
        svc: &Services,
        identity: &str,
        seen_ms: u64,
        before: &'static str,
    ) -> Result<(), LeaseError> {
        self.until_ms = claim(svc, identity, seen_ms)
            .await
            .map_err(|outcome| LeaseError::LostClaim { before, outcome })?;
        Ok(())
    }
}

/// True when a claim lapsing at `until_ms` leaves less than half a lease (`lease_ms`) after
/// `now`.
fn needs_renewal(until_ms: u64, lease_ms: u64, now: u64) -> bool {
    until_ms.saturating_sub(now) < lease_ms / 2
}

/// Time kept back from the end of the settle time after an `Enroll`: the restart is not sent
/// later than this before other members may take the server as fallen back.
pub(super) const SETTLE_MARGIN_MS: u64 = 2_000;

/// How long `configure` may still be sent (and sent again) after the ledger recorded the
/// enrollment at `enrolled_at` (Unix ms): until the restart's own time ([`RESTART_WITHIN`])
/// and [`SETTLE_MARGIN_MS`] before the settle time ends; `None` when that has passed.
pub(super) fn settle_budget(enrolled_at: u64, now: u64) -> Option<u64> {
    let send_by = (enrolled_at + REENROLL_SETTLE_MS)
        .saturating_sub(SETTLE_MARGIN_MS + RESTART_WITHIN.as_millis() as u64);
    Some(send_by.saturating_sub(now)).filter(|b| *b > 0)
}

/// Time kept back from the end of a claim: `configure` is not sent (or sent again) later
/// than this before the claim lapses, so clocks a little apart and a slow commit cannot
/// make two members configure one server.
fn lease_margin(lease_ms: u64) -> u64 {
    (lease_ms / 5).clamp(1_000, 30_000)
}

/// How long `configure` may still be sent (and sent again) under a claim that lapses at
/// `lease_until` (Unix ms): until [`lease_margin`] before; `None` when that has passed.
pub(super) fn send_budget(lease_until: u64, lease_ms: u64, now: u64) -> Option<u64> {
    let send_by = lease_until.saturating_sub(lease_margin(lease_ms));
    Some(send_by.saturating_sub(now)).filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_is_sent_only_until_a_margin_before_the_claim_lapses() {
        // a fifth of the lease, between 1 s and 30 s
        assert_eq!(lease_margin(5_000), 1_000);
        assert_eq!(lease_margin(30_000), 6_000);
        assert_eq!(lease_margin(300_000), 30_000);
        // a 30 s claim renewed at t=0 lapses at 30 s: configure goes out until 24 s
        assert_eq!(send_budget(30_000, 30_000, 0), Some(24_000));
        assert_eq!(send_budget(30_000, 30_000, 20_000), Some(4_000));
        assert_eq!(send_budget(30_000, 30_000, 24_000), None);
        assert_eq!(send_budget(30_000, 30_000, 40_000), None);
    }

    #[test]
    fn after_an_enrollment_configure_goes_out_only_while_the_restart_still_fits_the_settle_time() {
        let restart = RESTART_WITHIN.as_millis() as u64;
        let last = REENROLL_SETTLE_MS - SETTLE_MARGIN_MS - restart;
        // recorded at t=1000: configure until the restart's time and the margin before the end
        assert_eq!(settle_budget(1_000, 1_000), Some(last));
        assert_eq!(settle_budget(1_000, 1_500), Some(last - 500));
        assert_eq!(settle_budget(1_000, 1_000 + last), None);
        assert_eq!(settle_budget(1_000, 60_000), None);
        // the restart after that still answers inside the settle time, with the margin
        assert!(last + restart + SETTLE_MARGIN_MS <= REENROLL_SETTLE_MS);
    }

    #[test]
    fn a_claim_is_renewed_only_when_less_than_half_a_lease_is_left() {
        assert!(!needs_renewal(30_000, 30_000, 0));
        assert!(!needs_renewal(30_000, 30_000, 15_000));
        assert!(needs_renewal(30_000, 30_000, 15_001));
        assert!(needs_renewal(30_000, 30_000, 40_000));
    }
}
