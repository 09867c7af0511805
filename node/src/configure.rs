//! Step 6: hand the server its configuration (`choria_provision#configure`), then restart it
//! into that configuration (`choria_provision#restart`); or, when the helper says so, shut it
//! down (`choria_provision#shutdown`).

use proto::agents::{ConfigureRequest, RestartRequest, TokenRequest, PROVISION_AGENT};
use sha2::{Digest, Sha256};

use crate::pipeline::Services;
use crate::rpc::RpcError;

/// Sends the configuration (the ledger records its [`digest`]).
pub async fn configure(
    svc: &Services,
    identity: &str,
    request: &ConfigureRequest,
) -> Result<(), RpcError> {
    svc.rpc
        .call_ok(
            identity,
            PROVISION_AGENT,
            "configure",
            request,
            svc.config.rpc_timeout,
            5,
        )
        .await
        .map(|_| ())
}

/// The SHA-256 (hex) of a configuration text: what the ledger records of it.
pub fn digest(config: &str) -> String {
    hex::encode(Sha256::digest(config.as_bytes()))
}

/// Asks the server to restart into its new configuration within a second of splay.
///
/// One try, answered within [`RESTART_WITHIN`] and `budget_ms`: the ledger shows the server
/// enrolled and unowned by now, and once the settle time has passed another member may take
/// it over as fallen back; a restart sent after that could boot it into a credential that
/// was replaced. No budget left: not sent.
pub async fn restart(svc: &Services, identity: &str, budget_ms: u64) -> Result<(), RpcError> {
    let timeout = svc
        .config
        .rpc_timeout
        .min(RESTART_WITHIN)
        .min(std::time::Duration::from_millis(budget_ms));
    if timeout.is_zero() {
        return Err(RpcError::NoTime {
            rpc: format!("{PROVISION_AGENT}#restart"),
            identity: identity.to_string(),
        });
    }
    let req = RestartRequest {
        token: svc.config.token.clone(),
        splay: Some(1),
    };
    svc.rpc
        .call_ok(identity, PROVISION_AGENT, "restart", &req, timeout, 1)
        .await
        .map(|_| ())
}

/// Well inside the ledger's settle time for enrolled servers seen in provisioning mode.
pub const RESTART_WITHIN: std::time::Duration =
    std::time::Duration::from_millis(raft::state::REENROLL_SETTLE_MS / 3);

/// Asks the server to update itself to `version` from `repository`; it restarts into
/// provisioning mode with the new version.
pub async fn release_update(
    svc: &Services,
    identity: &str,
    repository: &str,
    version: &str,
) -> Result<(), RpcError> {
    let req = proto::agents::ReleaseUpdateRequest {
        token: svc.config.token.clone(),
        repository: repository.to_string(),
        version: version.to_string(),
    };
    // the server downloads and checks the release before it answers
    svc.rpc
        .call_ok(
            identity,
            PROVISION_AGENT,
            "release_update",
            &req,
            svc.config
                .rpc_timeout
                .max(std::time::Duration::from_secs(60)),
            1,
        )
        .await
        .map(|_| ())
}

pub async fn shutdown(svc: &Services, identity: &str) -> Result<(), RpcError> {
    let req = TokenRequest {
        token: svc.config.token.clone(),
    };
    svc.rpc
        .call_ok(
            identity,
            PROVISION_AGENT,
            "shutdown",
            &req,
            svc.config.rpc_timeout,
            3,
        )
        .await
        .map(|_| ())
}
