//! Step 9: restart the server into its configuration (`choria_provision#restart`) once the
//! ledger shows it enrolled; a re-enrolled server's old credential is revoked only now that
//! it runs with the new one.
//!
//! A restart whose answer never came may still have been carried out: the server left before
//! it replied, or the reply was lost. Such a server is asked, a moment later, whether it is
//! still in provisioning mode (`rpcutil#ping` in the provisioning collective). Gone, it left
//! with the configuration it was sent, the new credential with it: the old one is revoked as
//! after a restart that answered. Without this the old credential stayed valid, and out of
//! the CRL, until it expired. Still there, it keeps both, and the next discovery provisions
//! it again.

use std::time::Duration;

use proto::action::{Ping, Restart};
use proto::agents::RestartRequest;
use raft::Command;

use super::finish::propose;
use super::outcome::Outcome;
use crate::clock::now_ms;
use crate::context::Services;
use crate::rpc::RpcError;

/// Well inside the ledger's settle time for enrolled servers seen in provisioning mode.
pub const RESTART_WITHIN: Duration = Duration::from_millis(raft::state::REENROLL_SETTLE_MS / 3);

/// After a restart that got no answer, how long until asking whether the server is still in
/// provisioning mode: upstream's agent restarts 2 s and up to the splay (1 s) after it was
/// asked, and the server takes a moment to go.
const LOOK_AFTER: Duration = Duration::from_secs(5);

/// Each of the ping's tries (two, see [`crate::call`]) has this long.
const LOOK_WITHIN: Duration = Duration::from_secs(2);

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
        // an answer that came says the server did not restart; only silence is in doubt
        if reenrolled && matches!(e, RpcError::Timeout { .. }) && left(svc, identity).await {
            svc.metrics.inc(&svc.metrics.reenrolled);
            retire_superseded(svc, identity).await;
        }
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

/// Whether a server whose restart got no answer has left provisioning mode: [`LOOK_AFTER`]
/// later, it does not answer a ping there either. Any answer, even an error, says it is still
/// there; an error that is not silence says nothing.
async fn left(svc: &Services, identity: &str) -> bool {
    tokio::time::sleep(LOOK_AFTER).await;
    let ping = svc
        .agents
        .call_within::<Ping>(identity, &serde_json::json!({}), LOOK_WITHIN)
        .await;
    let (left, result) = match &ping {
        Err(RpcError::Timeout { .. }) => (true, "left"),
        Ok(_)
        | Err(RpcError::Failed { .. })
        | Err(RpcError::BadReply { .. })
        | Err(RpcError::BadData { .. }) => (false, "waiting"),
        Err(_) => (false, "unknown"),
    };
    tracing::warn!(
        identity,
        result,
        "a re-enrolled server's restart got no answer; asked whether it left provisioning mode"
    );
    let m = &svc.metrics;
    m.restart_unanswered
        .with_label_values(&[m.site(), result])
        .inc();
    left
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
