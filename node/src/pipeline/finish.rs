//! Step 8, and every other way a flow ends: the ledger command that records how it ended. A
//! configured server is marked enrolled (when its credential's command did not record that
//! already) before it is restarted; any other end releases the claim (or, under an ownership
//! epoch, finishes the flow) with an outcome the work queue acts on.

use raft::command::FlowEnd;
use raft::{Applied, Command, LedgerError, Rejection, ReleaseOutcome};
use thiserror::Error;

use super::lease::Lease;
use crate::clock::now_ms;
use crate::context::Services;

#[derive(Debug, Error)]
pub enum ProposeError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Proposes `cmd`; a rejection is an error.
pub(super) async fn propose(svc: &Services, cmd: Command) -> Result<(), ProposeError> {
    match svc.ledger.propose(cmd).await {
        Ok(Applied::Ok) => Ok(()),
        Ok(Applied::Rejected(r)) => Err(ProposeError::Rejected(r)),
        Err(e) => Err(e.into()),
    }
}

/// The command that ends this flow with `end`: `Finish` under an ownership epoch, else the
/// claim's own command (`Enrolled`, `Release`).
fn ending(svc: &Services, identity: &str, lease: &Lease, end: FlowEnd) -> Command {
    let (identity, member, at_ms) = (identity.to_string(), svc.member.clone(), now_ms());
    match (&lease.owned, end) {
        (Some(o), end) => Command::Finish {
            identity,
            member,
            epoch: o.epoch,
            seen_ms: o.seen_ms,
            end,
            at_ms,
        },
        (
            None,
            FlowEnd::Enrolled {
                config_digest,
                facts,
                ..
            },
        ) => Command::Enrolled {
            identity,
            member,
            config_digest,
            facts,
            at_ms,
        },
        (None, FlowEnd::Released { outcome, .. }) => Command::Release {
            identity,
            member,
            outcome,
            at_ms,
        },
    }
}

/// Marks the configured server enrolled, with its configuration's digest and the facts kept.
pub(super) async fn enrolled(
    svc: &Services,
    identity: &str,
    lease: &Lease,
    config_digest: String,
    facts: std::collections::BTreeMap<String, String>,
) -> Result<(), ProposeError> {
    let end = FlowEnd::Enrolled {
        credential: None,
        config_digest,
        facts,
    };
    propose(svc, ending(svc, identity, lease, end)).await
}

/// Releases the server with `outcome`; should that fail, the claim lapses with its lease.
pub(super) async fn release(
    svc: &Services,
    identity: &str,
    lease: &Lease,
    outcome: ReleaseOutcome,
) {
    let end = FlowEnd::Released {
        outcome,
        enrolled_at_ms: lease.enrolled_at_ms,
    };
    if let Err(reason) = propose(svc, ending(svc, identity, lease, end)).await {
        tracing::warn!(identity, %reason, "could not release claim; it lapses with its lease");
    }
}
