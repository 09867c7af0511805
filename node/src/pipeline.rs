//! One server from "discovered" to "configured", in the order it happens:
//!
//! 1. [`jwt`](crate::jwt): fetch and verify its provisioning JWT (feature `jwt`), before the
//!    ledger hears of it: a sighting (a startup event, a discovery reply) of a server that
//!    cannot show a valid JWT writes nothing;
//! 2. claim it in the ledger, so no other worker or member works on it at the same time; a
//!    server enrolled before is a re-enrollment: the helper is told, and at most
//!    `reenroll_limit` credentials per `reenroll_window` are issued to one identity;
//! 3. [`inventory`](crate::inventory): read its inventory;
//! 4. [`csr`](crate::csr): fetch and check its CSR (feature `pki`);
//! 5. [`helper`](crate::helper): ask user logic for its configuration or a decision;
//! 6. [`enroll`](crate::enroll): issue or accept its certificate, recorded in the ledger first;
//! 7. [`configure`](crate::configure): configure it;
//! 8. mark it enrolled in the ledger;
//! 9. restart it into its configuration; a re-enrolled server's old credential is revoked
//!    only now that it runs with the new one.
//!
//! The ledger learns of the enrollment before the server restarts, as it learns of a
//! credential before the server receives it: a member killed at any point leaves no server
//! running in production that the ledger does not show enrolled. Killed between 8 and 9, the
//! server stays in provisioning mode, enrolled in the ledger, and the next discovery finds it
//! there and provisions it again (as a server that fell back).
//!
//! Every way out of this function releases the claim with an outcome the work queue acts on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::agents::ConfigureRequest;
use raft::command::FlowEnd;
use raft::state::{ENROLL_RULES, REENROLL_SETTLE_MS};
use raft::{Applied, Command, Ledger, Rejection, ReleaseOutcome};
use sha2::{Digest, Sha256};

use crate::ca::Ca;
use crate::config::Config;
use crate::flows::Start;
use crate::helper::{HelperRequest, UserLogic};
use crate::jwt::{FetchJwtError, JwtVerifier};
use crate::metrics::Metrics;
use crate::rpc::RpcClient;
use crate::{configure, csr, enroll, inventory, jwt};

/// How long a claim holds before another member may take the server over, when not
/// clustered (a cluster uses `cluster.claim_lease`).
pub const CLAIM_LEASE_MS: u64 = 5 * 60 * 1000;

/// Everything a provisioning worker uses.
pub struct Services {
    pub config: Arc<Config>,
    /// This member's name in the ledger.
    pub member: String,
    pub rpc: RpcClient,
    pub ledger: Arc<dyn Ledger>,
    pub logic: Arc<dyn UserLogic>,
    pub ca: Option<Ca>,
    pub jwt: Option<JwtVerifier>,
    /// Signs server JWTs (feature `ed25519`).
    pub issuer: Option<Arc<crate::orgissuer::OrgIssuer>>,
    pub metrics: Arc<Metrics>,
    pub paused: AtomicBool,
    /// Set in a cluster: which servers this member works on.
    pub shard: Option<Arc<crate::shard::Shard>>,
    pub claim_lease_ms: u64,
    /// Flows by ownership epoch, and whether a server may be started without a claim.
    pub flows: Arc<crate::flows::Flows>,
    /// How many flows may run at once (see [`crate::pace`]).
    pub pace: Arc<crate::pace::Pace>,
}

impl Services {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// True when this member should work on `identity` (always, outside a cluster): it owns
    /// it, or it is lent to it; not while it is lent to another.
    pub fn owns(&self, identity: &str) -> bool {
        let Some(shard) = &self.shard else {
            return true;
        };
        self.flows
            .lent(identity, now_ms())
            .unwrap_or_else(|| shard.owns(identity))
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        self.metrics.set(&self.metrics.paused, paused as i64);
    }
}

/// How provisioning one server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Configured and restarting into its configuration.
    Provisioned,
    /// Not worked on: enrolled already.
    Skipped(String),
    /// Claimed by another member until the given time (Unix ms).
    Busy(u64),
    /// The helper deferred it; try again later.
    Deferred(String),
    /// A step failed; try again later.
    Failed(String),
    /// This member stopped the flow before its next call to the server went out, for a reason
    /// of its own (fenced: no heartbeat committed lately). Not the server's failure: it starts
    /// again first, once the member may.
    Interrupted(String),
    /// Shut down on the helper's request.
    Shutdown,
    /// Asked to update to this version; it comes back to provisioning mode afterwards.
    Upgrading(String),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Provisions one server, last seen in provisioning mode at `seen_ms` (Unix ms). Never
/// panics on what the server or helper sends.
pub async fn provision(svc: &Services, identity: &str, seen_ms: u64) -> Outcome {
    if let Some(skip) = settled(svc, identity, seen_ms).await {
        return skip;
    }
    let jwt = match fetch_jwt(svc, identity).await {
        Ok(j) => j,
        Err(reason) => return Outcome::Failed(reason),
    };
    // held until the flow ends: this member acknowledges a newer epoch only after
    let (mut lease, _ticket) = match begin(svc, identity, seen_ms).await {
        Ok(started) => started,
        Err(skip) => return skip,
    };
    let before = match svc.ledger.record(identity).await.and_then(|r| {
        let c = r.credential.clone()?;
        Some((c, r))
    }) {
        Some((c, r)) => Some(EnrolledBefore {
            serial: c.serial,
            issued_by: c.issued_by,
            issued_at_ms: c.issued_at_ms,
            issued_in_window: r.issued_since(
                now_ms().saturating_sub(svc.config.reenroll_window.as_millis() as u64),
            ),
        }),
        None => None,
    };
    let steps = run_steps(svc, identity, seen_ms, &mut lease, jwt, before.as_ref()).await;
    let (outcome, release) = match steps {
        Ok(Step::Done {
            enrolled_at_ms: Some(at_ms),
            ..
        }) => {
            svc.flows.enrolled(identity, at_ms);
            // the ledger shows it enrolled since its credential was recorded; the restart
            // goes out within the settle time that keeps other members off it
            let budget = (at_ms + REENROLL_SETTLE_MS).saturating_sub(SETTLE_MARGIN_MS + now_ms());
            return restart_enrolled(svc, identity, budget, before.is_some()).await;
        }
        Ok(Step::Done {
            digest,
            facts,
            enrolled_at_ms: None,
        }) => {
            let cmd = match &lease.owned {
                Some(o) => o.finish(
                    svc,
                    identity,
                    FlowEnd::Enrolled {
                        credential: None,
                        config_digest: digest,
                        facts,
                    },
                ),
                None => Command::Enrolled {
                    identity: identity.to_string(),
                    member: svc.member.clone(),
                    config_digest: digest,
                    facts,
                    at_ms: now_ms(),
                },
            };
            match propose(svc, cmd).await {
                Ok(()) => {
                    svc.flows.enrolled(identity, now_ms());
                    // the ledger shows it enrolled (and unowned) now; a server that does not
                    // restart stays in provisioning mode and the next discovery finds it there
                    let budget = configure::RESTART_WITHIN.as_millis() as u64;
                    return restart_enrolled(svc, identity, budget, before.is_some()).await;
                }
                Err(reason) => {
                    // not restarted: it stays in provisioning mode and is tried again
                    let reason = format!("could not record enrollment: {reason}");
                    tracing::error!(identity, %reason, "server configured but not restarted");
                    (
                        Outcome::Failed(reason.clone()),
                        ReleaseOutcome::Failed { reason },
                    )
                }
            }
        }
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
        Err(reason) if lease.interrupted => (
            Outcome::Interrupted(reason.clone()),
            ReleaseOutcome::Failed { reason },
        ),
        Err(reason) => (
            Outcome::Failed(reason.clone()),
            ReleaseOutcome::Failed { reason },
        ),
    };
    let cmd = match &lease.owned {
        Some(o) => o.finish(
            svc,
            identity,
            FlowEnd::Released {
                outcome: release,
                enrolled_at_ms: lease.enrolled_at_ms,
            },
        ),
        None => Command::Release {
            identity: identity.to_string(),
            member: svc.member.clone(),
            outcome: release,
            at_ms: now_ms(),
        },
    };
    if let Err(reason) = propose(svc, cmd).await {
        tracing::warn!(identity, %reason, "could not release claim; it lapses with its lease");
    }
    outcome
}

/// Restarts a server the ledger shows enrolled, sent within `budget_ms`; a re-enrolled one
/// (`reenrolled`) then has the credential it replaced retired.
async fn restart_enrolled(
    svc: &Services,
    identity: &str,
    budget_ms: u64,
    reenrolled: bool,
) -> Outcome {
    if let Err(e) = configure::restart(svc, identity, budget_ms).await {
        tracing::error!(identity, error = %e, "enrolled but the restart failed");
        return Outcome::Failed(format!("restart: {e}"));
    }
    if reenrolled {
        svc.metrics.inc(&svc.metrics.reenrolled);
        retire_superseded(svc, identity).await;
    }
    Outcome::Provisioned
}

/// The helper asked for version `to`. With the upgrades feature, an upgradable server at
/// another version gets `release_update` from `upgrades_repository` and comes back to
/// provisioning mode with the new version, to be provisioned then (`Some(Upgrading)`). A
/// server at that version already is provisioned as is (`None`). A failed update is an error,
/// or with `upgrades_optional` a warning and the server is provisioned as is, as upstream.
async fn upgrade(
    svc: &Services,
    identity: &str,
    inventory: &proto::agents::InventoryReply,
    to: &str,
) -> Result<Option<Step>, String> {
    let cfg = &svc.config;
    let result = |r: &str| {
        svc.metrics
            .upgrades
            .with_label_values(&[svc.metrics.site(), r])
            .inc();
    };
    if !cfg.features.upgrades {
        tracing::warn!(
            identity,
            version = to,
            "helper asked for an upgrade but the upgrades feature is off; provisioning as is"
        );
        return Ok(None);
    }
    let from = inventory.version.trim();
    let attempt = async {
        if cfg.upgrades_repository.is_empty() {
            return Err("upgrades_repository is not configured".to_string());
        }
        if from.is_empty() {
            return Err("the inventory has no version".to_string());
        }
        if !inventory.upgradable {
            return Err("the server does not support upgrades".to_string());
        }
        if same_version(from, to) {
            return Ok(false);
        }
        tracing::warn!(identity, from, to, "updating the server's version");
        configure::release_update(svc, identity, &cfg.upgrades_repository, to)
            .await
            .map(|_| true)
            .map_err(|e| e.to_string())
    };
    match attempt.await {
        Ok(true) => {
            result("started");
            Ok(Some(Step::Upgrading {
                from: from.to_string(),
                to: to.to_string(),
            }))
        }
        Ok(false) => {
            result("current");
            Ok(None)
        }
        Err(e) if cfg.upgrades_optional => {
            result("skipped");
            tracing::warn!(identity, to, error = %e, "could not upgrade; upgrades are optional, provisioning as is");
            Ok(None)
        }
        Err(e) => {
            result("failed");
            Err(format!("upgrade to {to} failed: {e}"))
        }
    }
}

/// Versions compare equal without a leading `v` and surrounding space (`v0.29.4` is `0.29.4`).
fn same_version(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_start_matches('v').to_string();
    norm(a) == norm(b)
}

/// What the ledger knew of a server's earlier enrollment when it was claimed again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnrolledBefore {
    /// Serial (or server JWT id) of the credential it holds.
    pub serial: String,
    /// The member that issued it.
    pub issued_by: String,
    /// When, Unix ms.
    pub issued_at_ms: u64,
    /// Credentials issued to this identity within `reenroll_window`.
    pub issued_in_window: usize,
}

/// What the ledger says of a sighting already, read before anything is asked of the server
/// (the claim's own rule, [`raft::Record::claim_refusal`]): a server enrolled moments ago is
/// still restarting (a discovery that caught it on its way out would otherwise cost a worker
/// every try of the JWT request), and one another member holds is theirs. The claim checks
/// again when it is written.
async fn settled(svc: &Services, identity: &str, seen_ms: u64) -> Option<Outcome> {
    let rec = svc.ledger.record(identity).await?;
    match rec.claim_refusal(&svc.member, seen_ms, now_ms())? {
        Rejection::ClaimedBy { until_ms, .. } => Some(Outcome::Busy(until_ms)),
        r => Some(Outcome::Skipped(r.to_string())),
    }
}

/// The provisioning JWT, fetched and verified when the `jwt` feature is on; `Err` is the
/// reason to give up on this sighting.
async fn fetch_jwt(svc: &Services, identity: &str) -> Result<Option<jwt::FetchedJwt>, String> {
    let Some(verifier) = svc.jwt.as_ref().filter(|_| svc.config.features.jwt) else {
        return Ok(None);
    };
    match jwt::fetch_and_verify(svc, verifier, identity).await {
        Ok(j) => Ok(Some(j)),
        Err(e) => {
            if matches!(e, FetchJwtError::Invalid(_)) {
                svc.metrics.rejected("jwt");
            }
            Err(e.to_string())
        }
    }
}

/// The re-enrolled server restarted with its new credential: the one it replaced is revoked
/// now. Should this fail, the old credential stays valid until it expires or an operator
/// revokes it; the server has its new one either way.
async fn retire_superseded(svc: &Services, identity: &str) {
    let pending = svc
        .ledger
        .record(identity)
        .await
        .is_some_and(|r| r.superseded.is_some());
    if !pending {
        return;
    }
    let cmd = Command::Restarted {
        identity: identity.to_string(),
        member: svc.member.clone(),
        at_ms: now_ms(),
    };
    if let Err(reason) = propose(svc, cmd).await {
        tracing::warn!(identity, %reason, "could not revoke the credential the server replaced");
    }
}

/// Most bytes of facts kept in the ledger per server.
const LEDGER_FACTS_BUDGET: usize = 2048;

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

/// Starts a flow on `identity`: claimed in the ledger, or under the ownership epoch in force
/// without a claim (ledger rules 6, see [`crate::flows`]).
async fn begin(
    svc: &Services,
    identity: &str,
    seen_ms: u64,
) -> Result<(Lease, crate::flows::Ticket), Outcome> {
    let now = now_ms();
    let mut lease = Lease {
        until_ms: 0,
        fenced: false,
        interrupted: false,
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

/// How soon a server that waits for its ownership epoch to settle is looked at again.
const EPOCH_WAIT_MS: u64 = 500;

/// Claims (or renews the claim on) `identity`; `Ok` is when the claim lapses, Unix ms.
async fn claim(svc: &Services, identity: &str, seen_ms: u64) -> Result<u64, Outcome> {
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

async fn propose(svc: &Services, cmd: Command) -> Result<(), String> {
    match svc.ledger.propose(cmd).await {
        Ok(Applied::Ok) => Ok(()),
        Ok(Applied::Rejected(r)) => Err(r.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn run_steps(
    svc: &Services,
    identity: &str,
    seen_ms: u64,
    lease: &mut Lease,
    jwt: Option<jwt::FetchedJwt>,
    before: Option<&EnrolledBefore>,
) -> Result<Step, String> {
    let features = &svc.config.features;

    // a storm of re-enrollments of one identity stops at the limit
    let limit = svc.config.reenroll_limit as usize;
    if let Some(b) = before.filter(|b| limit > 0 && b.issued_in_window >= limit) {
        svc.metrics.rejected("reenroll_limit");
        tracing::warn!(identity, issued = b.issued_in_window, window = ?svc.config.reenroll_window, "re-enrollment limit reached");
        return Ok(Step::Deferred(format!(
            "re-enrollment limit: {} credentials within {:?}",
            b.issued_in_window, svc.config.reenroll_window
        )));
    }

    // the server's X25519 key comes with its JWT; it is needed only to deliver a private key
    let (claims, server_ecdh) = match jwt {
        Some(j) => (Some(j.claims), j.ecdh_public),
        None => (None, String::new()),
    };

    // asking for a key makes the server a new one: only while this flow may drive it
    if svc.issuer.is_some() && features.ed25519 {
        lease.check(svc, "asking for the ed25519 key")?;
    }
    let ed_key = match (&svc.issuer, features.ed25519) {
        (Some(_), true) => match crate::orgissuer::fetch_key(svc, identity).await {
            Ok(k) => Some(k),
            Err(e) => {
                if matches!(
                    e,
                    crate::orgissuer::IssuerError::BadProof
                        | crate::orgissuer::IssuerError::Reply(_)
                ) {
                    svc.metrics.rejected("ed25519");
                }
                return Err(e.to_string());
            }
        },
        _ => None,
    };

    let inventory = inventory::fetch(svc, identity)
        .await
        .map_err(|e| e.to_string())?;

    let fetched_csr = if features.pki {
        lease.check(svc, "asking for a CSR")?;
        match csr::fetch_and_validate(svc, identity).await {
            Ok(c) => Some(c),
            Err(e) => {
                svc.metrics.rejected(e.reason());
                return Err(e.to_string());
            }
        }
    } else {
        None
    };

    if svc.is_paused() {
        return Err("provisioning is paused".into());
    }
    let facts = crate::admin::select::ledger_facts(
        &inventory.parsed.facts,
        svc.config.ledger_facts.as_deref(),
        LEDGER_FACTS_BUDGET,
    );
    let request = HelperRequest {
        identity: identity.to_string(),
        csr: fetched_csr.as_ref().map(|c| c.reply.clone()),
        ed25519_pubkey: ed_key.clone(),
        inventory: inventory.json,
        jwt: claims.map(|c| c.claims),
        enrolled_before: before.cloned(),
    };
    let started = Instant::now();
    let decision = svc.logic.decide(&request).await;
    svc.metrics
        .helper_time
        .with_label_values(&[svc.metrics.site()])
        .observe(started.elapsed().as_secs_f64());
    let decision = decision.map_err(|e| {
        svc.metrics.inc(&svc.metrics.helper_errors);
        format!("helper failed: {e}")
    })?;

    if decision.defer {
        return Ok(Step::Deferred(if decision.msg.is_empty() {
            "deferred by helper".into()
        } else {
            decision.msg
        }));
    }
    if decision.shutdown {
        tracing::warn!(identity, reason = %decision.msg, "shutting down server on helper request");
        lease.check(svc, "shutdown")?;
        configure::shutdown(svc, identity)
            .await
            .map_err(|e| e.to_string())?;
        svc.metrics.inc(&svc.metrics.helper_shutdown_requests);
        return Ok(Step::Shutdown(decision.msg));
    }
    if decision.configuration.is_empty() {
        svc.metrics.inc(&svc.metrics.helper_errors);
        return Err("helper returned an empty configuration".into());
    }
    if !decision.upgrade.is_empty() {
        lease.check(svc, "an update")?;
        if let Some(step) = upgrade(svc, identity, &inventory.parsed, &decision.upgrade).await? {
            return Ok(step);
        }
    }

    // a private key from the helper travels only encrypted for this server
    let wrapped = if decision.key.is_empty() {
        None
    } else {
        match crate::keywrap::wrap(&decision.key, &server_ecdh) {
            Ok(w) => Some(w),
            Err(e) => {
                svc.metrics.inc(&svc.metrics.helper_errors);
                return Err(format!("cannot deliver the helper's key: {e}"));
            }
        }
    };

    let config_json = serde_json::to_string(&decision.configuration)
        .map_err(|e| format!("cannot encode configuration: {e}"))?;
    let mut request = ConfigureRequest {
        token: svc.config.token.clone(),
        config: config_json,
        ssldir: enroll::ssldir(fetched_csr.as_ref().map(|c| &c.reply), &decision.ssldir)
            .to_string(),
        action_policies: decision.action_policies,
        opa_policies: decision.opa_policies,
        ..Default::default()
    };
    if let Some(w) = wrapped {
        request.key = w.pem;
        request.ecdh_public = w.ecdh_public;
    }

    // a pause that came while the helper ran stops the flow before anything is issued
    if svc.is_paused() {
        return Err("provisioning is paused".into());
    }
    let from_helper = enroll::FromHelper {
        certificate: &decision.certificate,
        ca: &decision.ca,
        key: &decision.key,
    };
    let ed25519 = ed_key.is_some() && svc.issuer.is_some();
    let digest = configure::digest(&request.config);
    // from ledger rules 5 the credential's command records the enrollment too
    let enrollment =
        (svc.ledger.settings().await.rules >= ENROLL_RULES).then(|| enroll::Enrollment {
            config_digest: digest.clone(),
            facts: facts.clone(),
            owned: lease.owned.as_ref().map(|o| (o.epoch, o.seen_ms)),
        });
    if fetched_csr.is_some() || (!ed25519 && !decision.certificate.is_empty()) {
        lease.keep(svc, identity, seen_ms, "issuing").await?;
        let csr = fetched_csr.as_ref().map(|c| &c.csr);
        let cred = enroll::enroll(svc, identity, csr, &from_helper, enrollment.as_ref())
            .await
            .map_err(|e| {
                if let enroll::EnrollError::HelperCertificate(h) = &e {
                    svc.metrics.rejected(h.reason());
                }
                e.to_string()
            })?;
        lease.fenced = true;
        lease.enrolled_at_ms = enrollment.as_ref().map(|_| cred.recorded_at_ms);
        tracing::info!(identity, serial = %cred.serial, "certificate issued");
        request.certificate = cred.certificate;
        request.ca = cred.ca;
    } else if let (Some(key), Some(issuer)) = (&ed_key, &svc.issuer) {
        lease.keep(svc, identity, seen_ms, "issuing").await?;
        let claims = issuer
            .claims(
                identity,
                &key.public_key,
                &decision.configuration,
                decision.server_claims.as_ref(),
                svc.config.server_jwt_validity,
                (now_ms() / 1000) as i64,
            )
            .map_err(|e| e.to_string())?;
        let jwt = issuer.sign(&claims).map_err(|e| e.to_string())?;
        // the JWT is in the ledger (jti as its serial) before the server sees it
        let issued = crate::ca::Issued {
            serial: claims.reg.jti.clone(),
            fingerprint: hex::encode(Sha256::digest(jwt.as_bytes())),
            not_after: claims.reg.exp,
            pem: String::new(),
        };
        let recorded_at_ms = crate::enroll::record(svc, identity, &issued, enrollment.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        lease.fenced = true;
        lease.enrolled_at_ms = enrollment.as_ref().map(|_| recorded_at_ms);
        tracing::info!(identity, jti = %claims.reg.jti, "server JWT issued");
        request.server_jwt = jwt;
        if request.ssldir.is_empty() {
            request.ssldir = key.directory.clone();
        }
    }

    fenced_configure(svc, identity, seen_ms, lease, &request).await?;
    Ok(Step::Done {
        digest,
        facts,
        enrolled_at_ms: lease.enrolled_at_ms,
    })
}

/// Time kept back from the end of the settle time after an `Enroll`: the restart is not sent
/// later than this before other members may take the server as fallen back.
const SETTLE_MARGIN_MS: u64 = 2_000;

/// How long `configure` may still be sent (and sent again) after the ledger recorded the
/// enrollment at `enrolled_at` (Unix ms): until the restart's own time
/// ([`configure::RESTART_WITHIN`]) and [`SETTLE_MARGIN_MS`] before the settle time ends;
/// `None` when that has passed.
fn settle_budget(enrolled_at: u64, now: u64) -> Option<u64> {
    let send_by = (enrolled_at + REENROLL_SETTLE_MS)
        .saturating_sub(SETTLE_MARGIN_MS + configure::RESTART_WITHIN.as_millis() as u64);
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
fn send_budget(lease_until: u64, lease_ms: u64, now: u64) -> Option<u64> {
    let send_by = lease_until.saturating_sub(lease_margin(lease_ms));
    Some(send_by.saturating_sub(now)).filter(|b| *b > 0)
}

/// This flow's claim on its server: when it lapses, and whether the ledger has confirmed it
/// since it was taken (a credential is recorded only by the claim's holder, at apply time).
/// Once the ledger recorded the enrollment (`enrolled_at_ms`) the claim is over and the
/// settle time fences what is still sent.
struct Lease {
    until_ms: u64,
    fenced: bool,
    enrolled_at_ms: Option<u64>,
    /// The flow stopped at this member's fence (see [`Outcome::Interrupted`]).
    interrupted: bool,
    /// Started without a claim, under an ownership epoch: the member's fence stands in for
    /// the claim.
    owned: Option<Owned>,
}

/// A flow under an ownership epoch (ledger rules 6).
struct Owned {
    epoch: u64,
    seen_ms: u64,
    /// A lent server (rules 7): no call goes out after then (Unix ms), so the last one has
    /// ended by the loan's end.
    send_by_ms: Option<u64>,
}

impl Owned {
    /// The command that ends this flow with `end`.
    fn finish(&self, svc: &Services, identity: &str, end: FlowEnd) -> Command {
        Command::Finish {
            identity: identity.to_string(),
            member: svc.member.clone(),
            epoch: self.epoch,
            seen_ms: self.seen_ms,
            end,
            at_ms: now_ms(),
        }
    }
}

impl Lease {
    /// Before a call that changes the server (a new key, a shutdown, an update): a flow under
    /// an epoch goes on only while this member is not fenced; a claim was checked when taken.
    fn check(&mut self, svc: &Services, before: &str) -> Result<(), String> {
        let Some(owned) = &self.owned else {
            return Ok(());
        };
        let now = now_ms();
        if !svc.flows.unfenced(now) {
            self.interrupted = true;
            return Err(format!(
                "fenced (no heartbeat committed lately) before {before}; not sent"
            ));
        }
        if owned.send_by_ms.is_some_and(|by| now >= by) {
            return Err(format!("the loan ends before {before} could end; not sent"));
        }
        Ok(())
    }

    /// Makes sure the claim holds for at least half a lease more, renewing it only when it
    /// would not: a flow that takes a fraction of its lease costs the ledger one claim, not
    /// one per step. `before` names the step, for the error.
    async fn keep(
        &mut self,
        svc: &Services,
        identity: &str,
        seen_ms: u64,
        before: &str,
    ) -> Result<(), String> {
        if self.owned.is_some() {
            return self.check(svc, before);
        }
        if !needs_renewal(self.until_ms, svc.claim_lease_ms, now_ms()) {
            return Ok(());
        }
        self.until_ms = claim(svc, identity, seen_ms)
            .await
            .map_err(|o| format!("lost claim before {before}: {o:?}"))?;
        Ok(())
    }
}

/// True when a claim lapsing at `until_ms` leaves less than half a lease (`lease_ms`) after
/// `now`.
fn needs_renewal(until_ms: u64, lease_ms: u64, now: u64) -> bool {
    until_ms.saturating_sub(now) < lease_ms / 2
}

/// `configure`, only while this member holds the claim, and every try sent before the claim's
/// end minus [`lease_margin`]; at that point the flow gives up, and the server is tried again
/// later. The claim is renewed first unless the ledger confirmed it moments ago by recording
/// this flow's credential under it and half a lease is still left: a flow without a
/// credential (configuration only) always asks the ledger. After an `Enroll` the claim is over
/// and [`settle_budget`] bounds it instead.
async fn fenced_configure(
    svc: &Services,
    identity: &str,
    seen_ms: u64,
    lease: &mut Lease,
    request: &ConfigureRequest,
) -> Result<(), String> {
    if let Some(at) = lease.enrolled_at_ms {
        let Some(budget) = settle_budget(at, now_ms()) else {
            return Err(
                "the settle time after enrollment ends before configure could be sent; not sent"
                    .into(),
            );
        };
        return send_configure(svc, identity, request, budget).await;
    }
    if let Some(owned) = &lease.owned {
        // configuration only, under an epoch: while the fence holds, with its margin, and a
        // lent server's by the loan's send-by time
        let until = svc.flows.fence_until();
        let Some(budget) = send_budget(until, crate::flows::FENCE_MS, now_ms()) else {
            lease.interrupted = true;
            return Err("fenced (no heartbeat committed lately) before configure; not sent".into());
        };
        let budget = match owned.send_by_ms {
            Some(by) => match by.checked_sub(now_ms()).filter(|b| *b > 0) {
                Some(left) => budget.min(left),
                None => return Err("the loan ends before configure could end; not sent".into()),
            },
            None => budget,
        };
        return send_configure(svc, identity, request, budget).await;
    }
    if lease.fenced {
        lease.keep(svc, identity, seen_ms, "configure").await?;
    } else {
        lease.until_ms = claim(svc, identity, seen_ms)
            .await
            .map_err(|o| format!("lost claim before configure: {o:?}"))?;
    }
    let Some(budget) = send_budget(lease.until_ms, svc.claim_lease_ms, now_ms()) else {
        return Err("the claim lapses before configure could be sent; not sent".into());
    };
    send_configure(svc, identity, request, budget).await
}

/// `configure`, given up after `budget` ms.
async fn send_configure(
    svc: &Services,
    identity: &str,
    request: &ConfigureRequest,
    budget: u64,
) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_millis(budget),
        configure::configure(svc, identity, request),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "configure not answered within the {budget} ms left to send it; gave up"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn configure_is_sent_only_until_a_margin_before_the_claim_lapses() {
        use super::{lease_margin, send_budget};
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
        use super::{settle_budget, SETTLE_MARGIN_MS};
        use crate::configure::RESTART_WITHIN;
        use raft::state::REENROLL_SETTLE_MS;
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
        use super::needs_renewal;
        assert!(!needs_renewal(30_000, 30_000, 0));
        assert!(!needs_renewal(30_000, 30_000, 15_000));
        assert!(needs_renewal(30_000, 30_000, 15_001));
        assert!(needs_renewal(30_000, 30_000, 40_000));
    }

    #[test]
    fn versions_compare_without_a_leading_v() {
        assert!(super::same_version("0.29.4", "v0.29.4"));
        assert!(super::same_version(" 0.29.4", "0.29.4 "));
        assert!(!super::same_version("0.29.4", "0.30.0"));
    }
}
