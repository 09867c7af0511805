//! Step 9: restart the server into its configuration (`choria_provision#restart`) once the
//! ledger shows it enrolled; a re-enrolled server's old credential is revoked only now that
//! it runs with the new one.

use proto::action::Restart;
use proto::agents::RestartRequest;
use raft::Command;

use super::finish::propose;
use super::outcome::Outcome;
use crate::clock::now_ms;
use crate::context::Services;
use crate::rpc::RpcError;

/// Well inside the ledger's settle time for enrolled servers seen in provisioning mode.
pub const RESTART_WITHIN: std::time::Duration =
    std::time::Duration::from_millis(raft::state::REENROLL_SETTLE_MS / 3);

/// Restarts a server the ledger shows enrolled, sent within `budget_ms`; a re-enrolled one
/// (`reenrolled`) then has the credential it replaced retired.
pub(super) async fn restart_enrolled(
    svc: &Services,
    identity: &str,
    budget_ms: u64,
    reenrolled: bool,
) -> Outcome {
    if let Err(e) = restart(svc, identity, budget_ms).await {
        svc.metrics.step_error("restart");
        tracing::error!(identity, error = %e, "enrolled but the restart failed");
        return Outcome::Failed(format!("restart: {e}"));
    }
    if reenrolled {
        svc.metrics.inc(&svc.metrics.reenrolled);
        retire_superseded(svc, identity).await;
    }
    Outcome::Provisioned
}

/// Asks the server to restart into its new configuration within a second of splay.
///
/// One try, answered within [`RESTART_WITHIN`] and `budget_ms`: the ledger shows the server
/// enrolled and unowned by now, and once the settle time has passed another member may take
/// it over as fallen back; a restart sent after that could boot it into a credential that
/// was replaced. No budget left: not sent.
async fn restart(svc: &Services, identity: &str, budget_ms: u64) -> Result<(), RpcError> {
    let req = RestartRequest {
        token: svc.agents.token(),
        splay: Some(1),
    };
    let limit = RESTART_WITHIN.min(std::time::Duration::from_millis(budget_ms));
    svc.agents
        .call_within::<Restart>(identity, &req, limit)
        .await
        .map(|_| ())
}

/// The re-enrolled server restarted with its new credential: the one it replaced is revoked
/// now. Should this fail, the old credential stays valid until it expires or an operator
/// revokes it; the server has its new one either way.
///
/// Proposed without looking at the ledger first: a member that is not the leader may not
/// have applied its own enrollment yet, and would see nothing superseded. Applying
/// `Restarted` when nothing is superseded changes nothing.
async fn retire_superseded(svc: &Services, identity: &str) {
    let cmd = Command::Restarted {
        identity: identity.to_string(),
        member: svc.member.clone(),
        at_ms: now_ms(),
    };
    if let Err(reason) = propose(svc, cmd).await {
        tracing::warn!(identity, %reason, "could not revoke the credential the server replaced");
    }
}
