//! Step 7: hand the server its configuration, policies and new credential
//! (`choria_provision#configure`), only while this flow still holds the server: every try is
//! sent within the time its claim, its ownership epoch and fence, or (after the ledger
//! recorded the enrollment) the settle time leave, with a margin ([`super::lease`]). A
//! private key from the helper travels only encrypted for this server ([`crate::keywrap`]).

use std::time::Duration;

use proto::action::Configure;
use proto::agents::ConfigureRequest;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::enroll::{self, Credential, Enrolled};
use super::error::StepError;
use super::key::ServerKey;
use super::lease::{send_budget, settle_budget, Lease, LeaseError};
use crate::clock::now_ms;
use crate::context::Services;
use crate::helper::HelperResponse;
use crate::keywrap::KeyWrapError;
use crate::rpc::RpcError;

#[derive(Debug, Error)]
pub enum ConfigureError {
    #[error("cannot deliver the helper's key: {0}")]
    Key(#[source] KeyWrapError),
    #[error("cannot encode configuration: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("configure not answered within the {0} ms left to send it; gave up")]
    NotAnswered(u64),
}

impl ConfigureError {
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigureError::Key(_) | ConfigureError::Encode(_) => "helper_output",
            ConfigureError::Rpc(_) | ConfigureError::NotAnswered(_) => "configure",
        }
    }
}

/// The SHA-256 (hex) of a configuration text: what the ledger records of it.
pub fn digest(config: &str) -> String {
    hex::encode(Sha256::digest(config.as_bytes()))
}

/// The request the helper's decision makes, before a credential is added; `server_ecdh` is
/// the server's X25519 key from its JWT, needed only to deliver the helper's private key. A
/// key that cannot be delivered counts in `choria_provisioner_helper_errors`.
pub fn request(
    svc: &Services,
    decision: &HelperResponse,
    key: &ServerKey,
    server_ecdh: &str,
) -> Result<ConfigureRequest, ConfigureError> {
    let wrapped = if decision.key.is_empty() {
        None
    } else {
        let w = crate::keywrap::wrap(&decision.key, server_ecdh).map_err(|e| {
            svc.metrics.inc(&svc.metrics.helper_errors);
            ConfigureError::Key(e)
        })?;
        Some(w)
    };
    let config = serde_json::to_string(&decision.configuration).map_err(ConfigureError::Encode)?;
    let mut request = ConfigureRequest {
        token: svc.agents.token(),
        config,
        ssldir: enroll::ssldir(key.csr().map(|c| &c.reply), &decision.ssldir).to_string(),
        action_policies: decision.action_policies.clone(),
        opa_policies: decision.opa_policies.clone(),
        ..Default::default()
    };
    if let Some(w) = wrapped {
        request.key = w.pem;
        request.ecdh_public = w.ecdh_public;
    }
    Ok(request)
}

/// Adds the credential the server was enrolled with to its request.
pub fn with_credential(request: &mut ConfigureRequest, enrolled: Enrolled, key: &ServerKey) {
    match enrolled.credential {
        Credential::X509 {
            certificate, ca, ..
        } => {
            request.certificate = certificate;
            request.ca = ca;
        }
        Credential::ServerJwt { jwt, .. } => {
            request.server_jwt = jwt;
            if let (true, Some(k)) = (request.ssldir.is_empty(), key.ed25519()) {
                request.ssldir = k.directory.clone();
            }
        }
    }
}

/// `configure`, only while this member holds the claim, and every try sent before the claim's
/// end minus its margin; at that point the flow gives up, and the server is tried again
/// later. The claim is renewed first unless the ledger confirmed it moments ago by recording
/// this flow's credential under it and half a lease is still left: a flow without a
/// credential (configuration only) always asks the ledger. After an `Enroll` the claim is over
/// and [`settle_budget`] bounds it instead.
pub(super) async fn send(
    svc: &Services,
    identity: &str,
    seen_ms: u64,
    lease: &mut Lease,
    request: &ConfigureRequest,
) -> Result<(), StepError> {
    if let Some(at) = lease.enrolled_at_ms {
        let budget = settle_budget(at, now_ms()).ok_or(LeaseError::SettleEnds)?;
        return Ok(within(svc, identity, request, budget).await?);
    }
    if let Some(owned) = &lease.owned {
        // configuration only, under an epoch: while the fence holds, with its margin, and a
        // lent server's by the loan's send-by time
        let until = svc.flows.fence_until();
        let budget = send_budget(until, crate::flows::FENCE_MS, now_ms())
            .ok_or(LeaseError::Fenced("configure"))?;
        let budget = match owned.send_by_ms {
            Some(by) => match by.checked_sub(now_ms()).filter(|b| *b > 0) {
                Some(left) => budget.min(left),
                None => return Err(LeaseError::LoanEnds("configure").into()),
            },
            None => budget,
        };
        return Ok(within(svc, identity, request, budget).await?);
    }
    if lease.fenced {
        lease.keep(svc, identity, seen_ms, "configure").await?;
    } else {
        lease.renew(svc, identity, seen_ms, "configure").await?;
    }
    let budget =
        send_budget(lease.until_ms, svc.claim_lease_ms, now_ms()).ok_or(LeaseError::ClaimLapses)?;
    Ok(within(svc, identity, request, budget).await?)
}

/// `configure`, given up after `budget` ms.
async fn within(
    svc: &Services,
    identity: &str,
    request: &ConfigureRequest,
    budget: u64,
) -> Result<(), ConfigureError> {
    match tokio::time::timeout(
        Duration::from_millis(budget),
        svc.agents.call::<Configure>(identity, request),
    )
    .await
    {
        Ok(r) => r.map(|_| ()).map_err(ConfigureError::from),
        Err(_) => Err(ConfigureError::NotAnswered(budget)),
    }
}
