//! Step 6: give the server its new credential, recorded in the ledger before the server
//! receives it. What it is follows this member's [`Enrollment`]:
//!
//! - x509: the helper returned `certificate` and `ca` (an external CA, upstream's
//!   contract), which must pass [`certcheck`](crate::certcheck) first, or the built-in CA signs
//!   the checked CSR (feature `pki`). A serial the ledger has seen before is refused and, for
//!   the built-in CA, signed again with a new one. Without the `pki` feature only a helper's
//!   certificate (for a key the helper made) is enrolled.
//! - ed25519: we sign a server JWT for the key the server proved it holds, its `jti` as the
//!   serial.
//!
//! Every credential is recorded with serial, fingerprint and expiry. Once the cluster applies
//! ledger rules 5 the same command also records the enrollment ([`EnrollRecord`]): one
//! replicated command per server instead of two.

use proto::agents::CsrReply;
use raft::{Applied, Command, LedgerError, Rejection};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::key::ServerKey;
use crate::ca::{CaError, Issued};
use crate::certcheck::{self, HelperCertError};
use crate::clock::now_ms;
use crate::context::Services;
use crate::csr::ValidCsr;
use crate::enrollment::Enrollment;
use crate::helper::HelperResponse;
use crate::orgissuer::IssuerError;

/// Attempts to find a fresh serial before giving up (a collision of 128-bit random serials
/// means something is badly wrong).
const SIGN_ATTEMPTS: u32 = 3;

#[derive(Debug, Error)]
pub enum EnrollError {
    #[error(
        "pki is enabled but the helper returned no certificate and no built-in CA is configured"
    )]
    NoCertificate,
    #[error("the server gave no ed25519 key to sign a server JWT for")]
    NoKey,
    #[error("helper returned a certificate without a CA (or a CA without a certificate)")]
    Incomplete,
    #[error(transparent)]
    HelperCertificate(#[from] HelperCertError),
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Making or signing the server JWT.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error("ledger refused the credential: {0}")]
    Refused(Rejection),
    #[error("ledger unavailable: {0}")]
    Ledger(#[source] LedgerError),
}

impl EnrollError {
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollError::Refused(_) | EnrollError::Ledger(_) => "ledger",
            _ => "enroll",
        }
    }
}

/// The credential the server will be configured with.
pub enum Credential {
    X509 {
        certificate: String,
        ca: String,
        serial: String,
    },
    ServerJwt {
        jwt: String,
        jti: String,
    },
}

/// A credential, and when the ledger recorded it (Unix ms, the command's time).
pub struct Enrolled {
    pub credential: Credential,
    pub recorded_at_ms: u64,
}

/// The enrollment recorded with the credential (`Command::Enroll`): the digest of the
/// configuration the server is about to be sent and the inventory facts kept.
pub struct EnrollRecord {
    pub config_digest: String,
    pub facts: std::collections::BTreeMap<String, String>,
    /// The flow runs under this ownership epoch without a claim, for a server last seen
    /// waiting at the second value (ledger rules 6): recorded as `Command::Finish`.
    pub owned: Option<(u64, u64)>,
}

/// Whether this flow has a credential to enroll: the server's ed25519 key in Organization
/// Issuer networks; otherwise its CSR, or a certificate from the helper.
pub fn needed(enrollment: &Enrollment, key: &ServerKey, decision: &HelperResponse) -> bool {
    match enrollment {
        Enrollment::Ed25519 { .. } => key.ed25519().is_some(),
        Enrollment::X509 { .. } | Enrollment::None => {
            key.csr().is_some() || !decision.certificate.is_empty()
        }
    }
}

/// The server's credential as this member enrolls (when [`needed`]), recorded with
/// `enrollment` when there is one.
pub async fn enroll(
    svc: &Services,
    identity: &str,
    key: &ServerKey,
    decision: &HelperResponse,
    enrollment: Option<&EnrollRecord>,
) -> Result<Enrolled, EnrollError> {
    match (&svc.enrollment, key) {
        (Enrollment::Ed25519 { issuer }, ServerKey::Ed25519(k)) => {
            let claims = issuer.claims(
                identity,
                &k.public_key,
                &decision.configuration,
                decision.server_claims.as_ref(),
                svc.config.server_jwt_validity,
                (now_ms() / 1000) as i64,
            )?;
            let jwt = issuer.sign(&claims)?;
            // the JWT is in the ledger (jti as its serial) before the server sees it
            let issued = Issued {
                serial: claims.reg.jti.clone(),
                fingerprint: hex::encode(Sha256::digest(jwt.as_bytes())),
                not_after: claims.reg.exp,
                pem: String::new(),
            };
            let recorded_at_ms = record(svc, identity, &issued, enrollment).await?;
            Ok(Enrolled {
                credential: Credential::ServerJwt {
                    jwt,
                    jti: claims.reg.jti,
                },
                recorded_at_ms,
            })
        }
        (Enrollment::Ed25519 { .. }, _) => Err(EnrollError::NoKey),
        (Enrollment::X509 { .. } | Enrollment::None, _) => {
            let csr = key.csr().map(|c| &c.csr);
            x509(svc, identity, csr, decision, enrollment).await
        }
    }
}

/// The server's certificate: the helper's, checked, or one the built-in CA signs for `csr`.
async fn x509(
    svc: &Services,
    identity: &str,
    csr: Option<&ValidCsr>,
    helper: &HelperResponse,
    enrollment: Option<&EnrollRecord>,
) -> Result<Enrolled, EnrollError> {
    let x509 = |certificate: String, ca: String, serial: String, recorded_at_ms: u64| Enrolled {
        credential: Credential::X509 {
            certificate,
            ca,
            serial,
        },
        recorded_at_ms,
    };
    match (helper.certificate.is_empty(), helper.ca.is_empty()) {
        (false, false) => {
            // the certificate must carry the key the server will use
            let public_key = match (helper.key.is_empty(), csr) {
                (false, _) => Some(certcheck::public_key_of(&helper.key)?),
                (true, Some(c)) => certcheck::public_key_in(&c.spki_der),
                (true, None) => None,
            };
            let issued = certcheck::check(
                &helper.certificate,
                &helper.ca,
                &certcheck::Expected {
                    identity,
                    public_key: public_key.as_deref(),
                    deny: &svc.config.cert_deny_list,
                    now: (now_ms() / 1000) as i64,
                },
            )?;
            let recorded_at_ms = record(svc, identity, &issued, enrollment).await?;
            Ok(x509(
                issued.pem,
                helper.ca.clone(),
                issued.serial,
                recorded_at_ms,
            ))
        }
        (true, true) => {
            let ca = svc.ca().ok_or(EnrollError::NoCertificate)?;
            let csr = csr.ok_or(EnrollError::NoCertificate)?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let issued = ca.sign(&csr.spki_der, identity)?;
                match record(svc, identity, &issued, enrollment).await {
                    Ok(recorded_at_ms) => {
                        return Ok(x509(
                            issued.pem,
                            ca.cert_pem().to_string(),
                            issued.serial,
                            recorded_at_ms,
                        ))
                    }
                    Err(EnrollError::Refused(Rejection::SerialInUse { .. }))
                        if attempt < SIGN_ATTEMPTS =>
                    {
                        tracing::warn!(identity, serial = %issued.serial, "serial in use, signing again");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        _ => Err(EnrollError::Incomplete),
    }
}

/// Records an issued credential (certificate or server JWT) under the caller's claim, and
/// with it `enrollment` if given; returns the command's time (Unix ms).
async fn record(
    svc: &Services,
    identity: &str,
    issued: &Issued,
    enrollment: Option<&EnrollRecord>,
) -> Result<u64, EnrollError> {
    let at_ms = now_ms();
    let cmd = match enrollment {
        Some(EnrollRecord {
            config_digest,
            facts,
            owned: Some((epoch, seen_ms)),
        }) => Command::Finish {
            identity: identity.to_string(),
            member: svc.member.clone(),
            epoch: *epoch,
            seen_ms: *seen_ms,
            end: raft::command::FlowEnd::Enrolled {
                credential: Some(raft::command::Issued {
                    serial: issued.serial.clone(),
                    fingerprint: issued.fingerprint.clone(),
                    not_after: issued.not_after,
                }),
                config_digest: config_digest.clone(),
                facts: facts.clone(),
            },
            at_ms,
        },
        Some(e) => Command::Enroll {
            identity: identity.to_string(),
            member: svc.member.clone(),
            serial: issued.serial.clone(),
            fingerprint: issued.fingerprint.clone(),
            not_after: issued.not_after,
            config_digest: e.config_digest.clone(),
            facts: e.facts.clone(),
            at_ms,
        },
        None => Command::IssueCredential {
            identity: identity.to_string(),
            member: svc.member.clone(),
            serial: issued.serial.clone(),
            fingerprint: issued.fingerprint.clone(),
            not_after: issued.not_after,
            at_ms,
        },
    };
    match svc.ledger.propose(cmd).await {
        Ok(Applied::Ok) => Ok(at_ms),
        Ok(Applied::Rejected(r)) => Err(EnrollError::Refused(r)),
        Err(e) => Err(EnrollError::Ledger(e)),
    }
}

/// The ssl directory to configure: the one the server made its key in wins, as upstream.
pub fn ssldir<'a>(csr: Option<&'a CsrReply>, helper_ssldir: &'a str) -> &'a str {
    match csr {
        Some(c) if !c.ssldir.is_empty() => &c.ssldir,
        _ => helper_ssldir,
    }
}
