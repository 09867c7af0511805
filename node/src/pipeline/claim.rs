//! Step 2: take the server for this flow. Outside ledger rules 6 that is a claim in the
//! ledger, so no other worker or member works on it at the same time; under an ownership
//! epoch the flow starts without a claim on a server this member owns ([`crate::flows`]).
//! What the ledger already knows decides first: a server enrolled moments ago is still
//! restarting, one another member holds is theirs ([`settled`]). A server enrolled before is a
//! re-enrollment ([`enrolled_before`]): the helper is told, and at most `reenroll_limit`
//! credentials per `reenroll_window` are issued to one identity.

use raft::{Applied, Command, Rejection};

use super::lease::{Lease, Owned};
use super::outcome::Outcome;
use crate::clock::now_ms;
use crate::context::Services;
use crate::flows::{Start, Ticket};
use crate::helper::EnrolledBefore;

/// How long a claim holds before another member may take the server over, when not
/// clustered (a cluster uses `cluster.claim_lease`).
pub const CLAIM_LEASE_MS: u64 = 5 * 60 * 1000;

/// How soon a server that waits for its ownership epoch to settle is looked at again.
const EPOCH_WAIT_MS: u64 = 500;

/// What the ledger says of a sighting already, read before anything is asked of the server
/// (the claim's own rule, [`raft::Record::claim_refusal`]): a server enrolled moments ago is
/// still restarting (a discovery that caught it on its way out would otherwise cost a worker
/// every try of the JWT request), and one another member holds is theirs. The claim checks
/// again when it is written.
pub(super) async fn settled(svc: &Services, identity: &str, seen_ms: u64) -> Option<Outcome> {
    let rec = svc.ledger.record(identity).await?;
    match rec.claim_refusal(&svc.member, seen_ms, now_ms())? {
        Rejection::ClaimedBy { until_ms, .. } => Some(Outcome::Busy(until_ms)),
        r => Some(Outcome::Skipped(r.to_string())),
    }
}

/// Starts a flow on `identity`: claimed in the ledger, or under the ownership epoch in force
/// without a claim (ledger rules 6, see [`crate::flows`]). The ticket is held until the flow
/// ends: this member acknowledges a newer epoch only after.
pub(super) async fn begin(
    svc: &Services,
    identity: &str,
    seen_ms: u64,
) -> Result<(Lease, Ticket), Outcome> {
    let now = now_ms();
    let mut lease = Lease {
        until_ms: 0,
        fenced: false,
        enrolled_at_ms: None,
        owned: None,
    };
    match svc.flows.start(identity, now) {
        Start::Claim(ticket) => {
            lease.until_ms = claim(svc, identity, seen_ms).await?;
            Ok((lease, ticket))
        }
        Start::Owned(ticket) => {
            lease.owned = Some(Owned {
                epoch: ticket.epoch,
                seen_ms,
                send_by_ms: ticket
                    .loan_until_ms
                    .map(|until| until.saturating_sub(svc.config.rpc_timeout.as_millis() as u64)),
            });
            Ok((lease, ticket))
        }
        // the epoch is not settled for it yet: soon again
        Start::Wait => Err(Outcome::Busy(now + EPOCH_WAIT_MS)),
        Start::Fenced => Err(Outcome::Interrupted(
            "fenced (no heartbeat committed lately) before starting".into(),
        )),
        Start::JustEnrolled => Err(Outcome::Skipped(
            "enrolled by this member moments ago; restarting".into(),
        )),
        Start::NotMine => Err(Outcome::Skipped(
            "another member owns it under the current ownership epoch".into(),
        )),
    }
}

/// Claims (or renews the claim on) `identity`; `Ok` is when the claim lapses, Unix ms.
pub(super) async fn claim(svc: &Services, identity: &str, seen_ms: u64) -> Result<u64, Outcome> {
    let now = now_ms();
    let lease_until_ms = now + svc.claim_lease_ms;
    let cmd = Command::Claim {
        identity: identity.to_string(),
        member: svc.member.clone(),
        lease_until_ms,
        seen_ms,
        at_ms: now,
    };
    match svc.ledger.propose(cmd).await {
        Ok(Applied::Ok) => Ok(lease_until_ms),
        Ok(Applied::Rejected(Rejection::ClaimedBy { until_ms, .. })) => {
            Err(Outcome::Busy(until_ms))
        }
        // the first ownership epoch came: started again without a claim
        Ok(Applied::Rejected(Rejection::NoClaims)) => Err(Outcome::Busy(now + EPOCH_WAIT_MS)),
        Ok(Applied::Rejected(r)) => Err(Outcome::Skipped(r.to_string())),
        Err(e) => Err(Outcome::Failed(format!("cannot claim: {e}"))),
    }
}

/// What the ledger knew of the server's earlier enrollment, if it was enrolled before.
pub(super) async fn enrolled_before(svc: &Services, identity: &str) -> Option<EnrolledBefore> {
    let r = svc.ledger.record(identity).await?;
    let c = r.credential.clone()?;
    Some(EnrolledBefore {
        serial: c.serial,
        issued_by: c.issued_by,
        issued_at_ms: c.issued_at_ms,
        issued_in_window: r
            .issued_since(now_ms().saturating_sub(svc.config.reenroll_window.as_millis() as u64)),
    })
}

/// A storm of re-enrollments of one identity stops at `reenroll_limit`: the deferral's
/// reason, when this one is over it.
pub(super) fn over_reenroll_limit(
    svc: &Services,
    identity: &str,
    before: Option<&EnrolledBefore>,
) -> Option<String> {
    let limit = svc.config.reenroll_limit as usize;
    let b = before.filter(|b| limit > 0 && b.issued_in_window >= limit)?;
    svc.metrics.rejected("reenroll_limit");
    tracing::warn!(identity, issued = b.issued_in_window, window = ?svc.config.reenroll_window, "re-enrollment limit reached");
    Some(format!(
        "re-enrollment limit: {} credentials within {:?}",
        b.issued_in_window, svc.config.reenroll_window
    ))
}
