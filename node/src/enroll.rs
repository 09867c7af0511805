//! Step 5: decide the server's certificate and record it in the ledger before the server
//! receives it.
//!
//! Either the helper returned `certificate` and `ca` (an external CA, upstream's contract),
//! which must pass [`certcheck`](crate::certcheck) first, or the built-in CA signs the checked
//! CSR (feature `pki`). Both are recorded with serial, fingerprint and expiry; a serial the
//! ledger has seen before is refused and, for the built-in CA, signed again with a new one.
//! Once the cluster applies ledger rules 5 the same command also records the enrollment
//! ([`Enrollment`]): one replicated command per server instead of two.

use proto::agents::CsrReply;
use raft::{Applied, Command, Rejection};
use thiserror::Error;

use crate::ca::{CaError, Issued};
use crate::certcheck::{self, HelperCertError};
use crate::csr::ValidCsr;
use crate::pipeline::{now_ms, Services};

/// Attempts to find a fresh serial before giving up (a collision of 128-bit random serials
/// means something is badly wrong).
const SIGN_ATTEMPTS: u32 = 3;

#[derive(Debug, Error)]
pub enum EnrollError {
    #[error(
        "pki is enabled but the helper returned no certificate and no built-in CA is configured"
    )]
    NoCertificate,
    #[error("helper returned a certificate without a CA (or a CA without a certificate)")]
    Incomplete,
    #[error(transparent)]
    HelperCertificate(#[from] HelperCertError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("ledger refused the credential: {0}")]
    Refused(Rejection),
    #[error("ledger unavailable: {0}")]
    Ledger(String),
}

/// The certificate the server will be configured with.
pub struct Credential {
    pub certificate: String,
    pub ca: String,
    pub serial: String,
    /// When the ledger recorded it, Unix ms (the command's time).
    pub recorded_at_ms: u64,
}

/// The enrollment recorded with the credential (`Command::Enroll`): the digest of the
/// configuration the server is about to be sent and the inventory facts kept.
pub struct Enrollment {
    pub config_digest: String,
    pub facts: std::collections::BTreeMap<String, String>,
    /// The flow runs under this ownership epoch without a claim, for a server last seen
    /// waiting at the second value (ledger rules 6): recorded as `Command::Finish`.
    pub owned: Option<(u64, u64)>,
}

/// What the helper answered about the server's credential.
pub struct FromHelper<'a> {
    pub certificate: &'a str,
    pub ca: &'a str,
    /// A private key the helper made for the server (delivered encrypted), or empty.
    pub key: &'a str,
}

/// The server's certificate: the helper's, checked, or one the built-in CA signs for `csr`;
/// recorded with `enrollment` when there is one.
pub async fn enroll(
    svc: &Services,
    identity: &str,
    csr: Option<&ValidCsr>,
    helper: &FromHelper<'_>,
    enrollment: Option<&Enrollment>,
) -> Result<Credential, EnrollError> {
    match (helper.certificate.is_empty(), helper.ca.is_empty()) {
        (false, false) => {
            // the certificate must carry the key the server will use
            let public_key = match (helper.key.is_empty(), csr) {
                (false, _) => Some(certcheck::public_key_of(helper.key)?),
                (true, Some(c)) => certcheck::public_key_in(&c.spki_der),
                (true, None) => None,
            };
            let issued = certcheck::check(
                helper.certificate,
                helper.ca,
                &certcheck::Expected {
                    identity,
                    public_key: public_key.as_deref(),
                    deny: &svc.config.cert_deny_list,
                    now: (now_ms() / 1000) as i64,
                },
            )?;
            let recorded_at_ms = record(svc, identity, &issued, enrollment).await?;
            Ok(Credential {
                certificate: issued.pem,
                ca: helper.ca.to_string(),
                serial: issued.serial,
                recorded_at_ms,
            })
        }
        (true, true) => {
            let ca = svc.ca.as_ref().ok_or(EnrollError::NoCertificate)?;
            let csr = csr.ok_or(EnrollError::NoCertificate)?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let issued = ca.sign(&csr.spki_der, identity)?;
                match record(svc, identity, &issued, enrollment).await {
                    Ok(recorded_at_ms) => {
                        return Ok(Credential {
                            certificate: issued.pem,
                            ca: ca.cert_pem().to_string(),
                            serial: issued.serial,
                            recorded_at_ms,
                        })
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
pub(crate) async fn record(
    svc: &Services,
    identity: &str,
    issued: &Issued,
    enrollment: Option<&Enrollment>,
) -> Result<u64, EnrollError> {
    let at_ms = now_ms();
    let cmd = match enrollment {
        Some(Enrollment {
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
        Err(e) => Err(EnrollError::Ledger(e.to_string())),
    }
}

/// The ssl directory to configure: the one the server made its key in wins, as upstream.
pub fn ssldir<'a>(csr: Option<&'a CsrReply>, helper_ssldir: &'a str) -> &'a str {
    match csr {
        Some(c) if !c.ssldir.is_empty() => &c.ssldir,
        _ => helper_ssldir,
    }
}
