//! One server from "discovered" to "configured", in the order it happens; each step is a
//! module of its own, read top-down in [`provision`]:
//!
//! 1. [`jwt`]: fetch and verify its provisioning JWT (feature `jwt`), before the ledger
//!    hears of it: a sighting of a server that cannot show a valid JWT writes nothing;
//! 2. [`claim`]: take it in the ledger (a claim, or its ownership epoch), so no other worker
//!    or member works on it at the same time; a server enrolled before is a re-enrollment,
//!    limited to `reenroll_limit` credentials per `reenroll_window`;
//! 3. [`inventory`]: read its inventory;
//! 4. [`key`]: ask it for the key its credential is for: a CSR (feature `pki`) or an
//!    ed25519 key (feature `ed25519`);
//! 5. [`decide`]: ask user logic for its configuration or a decision (defer, shut down,
//!    and [`upgrade`] first);
//! 6. [`enroll`]: issue or accept its credential, recorded in the ledger first;
//! 7. [`configure`]: configure it, while the flow still holds it ([`lease`]);
//! 8. [`finish`]: mark it enrolled in the ledger;
//! 9. [`restart`]: restart it into its configuration; a re-enrolled server's old credential
//!    is revoked only now that it runs with the new one.
//!
//! The ledger learns of the enrollment before the server restarts, as it learns of a
//! credential before the server receives it: a member killed at any point leaves no server
//! running in production that the ledger does not show enrolled. Killed between 8 and 9, the
//! server stays in provisioning mode, enrolled in the ledger, and the next discovery finds it
//! there and provisions it again (as a server that fell back).
//!
//! Every way out of [`provision`] releases the claim with an outcome the work queue acts on;
//! a step that fails says why with a [`StepError`].

pub mod claim;
pub mod configure;
pub mod decide;
pub mod enroll;
mod error;
pub mod finish;
pub mod inventory;
pub mod jwt;
pub mod key;
pub mod lease;
mod outcome;
pub mod restart;
pub mod upgrade;

#[cfg(test)]
mod tests;

use proto::action::Shutdown;
use proto::agents::TokenRequest;
use raft::state::{ENROLL_RULES, REENROLL_SETTLE_MS};
use raft::ReleaseOutcome;

pub use claim::CLAIM_LEASE_MS;
pub use error::StepError;
pub use outcome::Outcome;

use crate::context::Services;
use crate::helper::{EnrolledBefore, HelperRequest};
use decide::Decision;
use enroll::EnrollRecord;
use lease::{Lease, SETTLE_MARGIN_MS};

/// How the steps ended, when none failed.
enum Step {
    /// Configured (not yet restarted): the configuration digest and the facts to keep, and
    /// when the ledger recorded the enrollment with the credential (`Command::Enroll`), if
    /// it did.
    Done {
        digest: String,
        facts: std::collections::BTreeMap<String, String>,
        enrolled_at_ms: Option<u64>,
    },
    Deferred(String),
    Shutdown(String),
    Upgrading {
        from: String,
        to: String,
    },
}

/// Most bytes of facts kept in the ledger per server.
const LEDGER_FACTS_BUDGET: usize = 2048;

/// Provisions one server, last seen in provisioning mode at `seen_ms` (Unix ms). Never
/// panics on what the server or helper sends.
pub async fn provision(svc: &Services, identity: &str, seen_ms: u64) -> Outcome {
    if let Some(skip) = claim::settled(svc, identity, seen_ms).await {
        return skip;
    }
    let jwt = match fetch_jwt(svc, identity).await {
        Ok(j) => j,
        Err(e) => return Outcome::Failed(failed(svc, &e)),
    };
    // the ticket is held until the flow ends: this member acknowledges a newer epoch only after
    let (mut lease, _ticket) = match claim::begin(svc, identity, seen_ms).await {
        Ok(started) => started,
        Err(skip) => {
            if matches!(skip, Outcome::Failed(_)) {
                svc.metrics.step_error("claim");
            }
            return skip;
        }
    };
    let before = claim::enrolled_before(svc, identity).await;
    let steps = run_steps(svc, identity, seen_ms, &mut lease, jwt, before.as_ref()).await;
    let reenrolled = before.is_some();
    let (outcome, release) = match steps {
        Ok(Step::Done {
            enrolled_at_ms: Some(at_ms),
            ..
        }) => {
            svc.flows.enrolled(identity, at_ms);
            // the ledger shows it enrolled since its credential was recorded; the restart
            // goes out within the settle time that keeps other members off it
            let budget = (at_ms + REENROLL_SETTLE_MS)
                .saturating_sub(SETTLE_MARGIN_MS + crate::clock::now_ms());
            return restart::restart_enrolled(svc, identity, budget, reenrolled).await;
        }
        Ok(Step::Done {
            digest,
            facts,
            enrolled_at_ms: None,
        }) => match finish::enrolled(svc, identity, &lease, digest, facts).await {
            Ok(()) => {
                svc.flows.enrolled(identity, crate::clock::now_ms());
                // the ledger shows it enrolled (and unowned) now; a server that does not
                // restart stays in provisioning mode and the next discovery finds it there
                let budget = restart::RESTART_WITHIN.as_millis() as u64;
                return restart::restart_enrolled(svc, identity, budget, reenrolled).await;
            }
            Err(e) => {
                // not restarted: it stays in provisioning mode and is tried again
                svc.metrics.step_error("record");
                let reason = format!("could not record enrollment: {e}");
                tracing::error!(identity, %reason, "server configured but not restarted");
                (
                    Outcome::Failed(reason.clone()),
                    ReleaseOutcome::Failed { reason },
                )
            }
        },
        Ok(Step::Deferred(reason)) => (
            Outcome::Deferred(reason.clone()),
            ReleaseOutcome::Deferred { reason },
        ),
        Ok(Step::Shutdown(reason)) => (Outcome::Shutdown, ReleaseOutcome::Shutdown { reason }),
        Ok(Step::Upgrading { from, to }) => (
            Outcome::Upgrading(to.clone()),
            ReleaseOutcome::Upgrading { from, to },
        ),
        // stopped by this member's fence, not by the server: recorded as a failure, and
        // started again first
        Err(e) => {
            let reason = failed(svc, &e);
            let outcome = if e.interrupted() {
                Outcome::Interrupted(reason.clone())
            } else {
                Outcome::Failed(reason.clone())
            };
            (outcome, ReleaseOutcome::Failed { reason })
        }
    };
    finish::release(svc, identity, &lease, release).await;
    outcome
}

/// Counts a failed step (and a rejected input) and gives the reason the ledger records.
fn failed(svc: &Services, e: &StepError) -> String {
    svc.metrics.step_error(e.reason());
    if let Some(r) = e.rejected() {
        svc.metrics.rejected(r);
    }
    e.to_string()
}

/// The provisioning JWT, fetched and verified when the `jwt` feature is on.
async fn fetch_jwt(svc: &Services, identity: &str) -> Result<Option<jwt::FetchedJwt>, StepError> {
    let Some(verifier) = svc.jwt.as_ref().filter(|_| svc.config.features.jwt) else {
        return Ok(None);
    };
    Ok(Some(jwt::fetch(&svc.agents, verifier, identity).await?))
}

/// Steps 3 to 7, under the flow's `lease`.
async fn run_steps(
    svc: &Services,
    identity: &str,
    seen_ms: u64,
    lease: &mut Lease,
    jwt: Option<jwt::FetchedJwt>,
    before: Option<&EnrolledBefore>,
) -> Result<Step, StepError> {
    if let Some(reason) = claim::over_reenroll_limit(svc, identity, before) {
        return Ok(Step::Deferred(reason));
    }
    // the server's X25519 key comes with its JWT; it is needed only to deliver a private key
    let (claims, server_ecdh) = match jwt {
        Some(j) => (Some(j.claims), j.ecdh_public),
        None => (None, String::new()),
    };

    let inventory = inventory::fetch(&svc.agents, identity).await?;

    // asking for a key makes the server a new one: only while this flow may drive it
    if let Some(asking) = key::asking(&svc.enrollment) {
        lease.check(svc, asking)?;
    }
    let server_key = key::ask(
        &svc.agents,
        &svc.enrollment,
        identity,
        &svc.config.cert_deny_list,
    )
    .await?;

    if svc.is_paused() {
        return Err(StepError::Paused);
    }
    let facts = crate::admin::select::ledger_facts(
        &inventory.parsed.facts,
        svc.config.ledger_facts.as_deref(),
        LEDGER_FACTS_BUDGET,
    );
    let request = HelperRequest {
        identity: identity.to_string(),
        csr: server_key.csr().map(|c| c.reply.clone()),
        ed25519_pubkey: server_key.ed25519().cloned(),
        inventory: inventory.json,
        jwt: claims.map(|c| c.claims),
        enrolled_before: before.cloned(),
    };
    let decision = match decide::ask(svc.logic.as_ref(), &svc.metrics, &request).await? {
        Decision::Defer(reason) => return Ok(Step::Deferred(reason)),
        Decision::Shutdown(msg) => {
            tracing::warn!(identity, reason = %msg, "shutting down server on helper request");
            lease.check(svc, "shutdown")?;
            let req = TokenRequest {
                token: svc.agents.token(),
            };
            svc.agents
                .call::<Shutdown>(identity, &req)
                .await
                .map_err(StepError::Shutdown)?;
            svc.metrics.inc(&svc.metrics.helper_shutdown_requests);
            return Ok(Step::Shutdown(msg));
        }
        Decision::Configure(d) => d,
    };
    if !decision.upgrade.is_empty() {
        lease.check(svc, "an update")?;
        if let Some(u) =
            upgrade::upgrade(svc, identity, &inventory.parsed, &decision.upgrade).await?
        {
            return Ok(Step::Upgrading {
                from: u.from,
                to: u.to,
            });
        }
    }

    let mut request = configure::request(svc, &decision, &server_key, &server_ecdh)?;
    // a pause that came while the helper ran stops the flow before anything is issued
    if svc.is_paused() {
        return Err(StepError::Paused);
    }
    let digest = configure::digest(&request.config);
    // from ledger rules 5 the credential's command records the enrollment too
    let record = (svc.ledger.settings().await.rules >= ENROLL_RULES).then(|| EnrollRecord {
        config_digest: digest.clone(),
        facts: facts.clone(),
        owned: lease.owned.as_ref().map(|o| (o.epoch, o.seen_ms)),
    });
    if enroll::needed(&svc.enrollment, &server_key, &decision) {
        lease.keep(svc, identity, seen_ms, "issuing").await?;
        let enrolled =
            enroll::enroll(svc, identity, &server_key, &decision, record.as_ref()).await?;
        lease.fenced = true;
        lease.enrolled_at_ms = record.as_ref().map(|_| enrolled.recorded_at_ms);
        match &enrolled.credential {
            enroll::Credential::X509 { serial, .. } => {
                tracing::info!(identity, serial = %serial, "certificate issued")
            }
            enroll::Credential::ServerJwt { jti, .. } => {
                tracing::info!(identity, jti = %jti, "server JWT issued")
            }
        }
        configure::with_credential(&mut request, enrolled, &server_key);
    }

    configure::send(svc, identity, seen_ms, lease, &request).await?;
    Ok(Step::Done {
        digest,
        facts,
        enrolled_at_ms: lease.enrolled_at_ms,
    })
}
