//! Ledger import: servers enrolled elsewhere (upstream's provisioner, another cluster's
//! `ledger export`) recorded as enrolled with their credential.
//!
//! Each server goes through the commands a provisioning flow proposes (claim, credential,
//! enrolled; from ledger rules 6 the one `Finish`), so every ledger rule applies as it would
//! to a flow: a serial recorded before is
//! refused, a server another member works on is left alone, and nothing an import sends can
//! change a record that is already there. What comes in is checked and bounded first; the
//! ledger's own record of who imported it is `member/operator`, as for other operator writes.

use std::collections::BTreeMap;

use futures::StreamExt;
use proto::grpc::admin as pb;
use raft::command::{FlowEnd, Issued};
use raft::state::OWNED_RULES;
use raft::{Applied, Command, Rejection, ReleaseOutcome};

use crate::clock::now_ms;
use crate::context::Services;

/// Servers one call may carry.
pub const MAX_SERVERS: usize = 1_000;
/// Most bytes of facts kept per server, as for a provisioned one.
const FACTS_BUDGET: usize = 2_048;
const MAX_SERIAL: usize = 128;
const MAX_DIGEST: usize = 128;
/// How long the import's claim holds, should the import stop half-way.
const IMPORT_LEASE_MS: u64 = 60_000;
/// Reasons returned per call; the counts cover the rest.
const MAX_ERRORS: usize = 100;

/// One server, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    pub identity: String,
    pub serial: String,
    pub fingerprint: String,
    pub not_after: i64,
    pub config_digest: String,
    pub facts: BTreeMap<String, String>,
}

/// What is wrong with a server sent for import; its text is what the operator reads after the
/// server's identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a valid identity")]
    Identity,
    #[error("no credential")]
    NoCredential,
    #[error("serial must be 1 to {max} letters, digits, '-' or '_'", max = MAX_SERIAL)]
    Serial,
    #[error("fingerprint must be a SHA-256 in 64 hex digits")]
    Fingerprint,
    #[error("not_after must be a time (Unix seconds)")]
    NotAfter,
    #[error("config_digest must be at most {max} printable characters", max = MAX_DIGEST)]
    ConfigDigest,
    #[error("facts are {bytes} bytes, more than the {budget} kept per server", budget = FACTS_BUDGET)]
    FactsTooLarge { bytes: usize },
}

impl Invalid {
    /// The field at fault, short and fixed: for logs and labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Identity => "identity",
            Invalid::NoCredential => "no_credential",
            Invalid::Serial => "serial",
            Invalid::Fingerprint => "fingerprint",
            Invalid::NotAfter => "not_after",
            Invalid::ConfigDigest => "config_digest",
            Invalid::FactsTooLarge { .. } => "facts",
        }
    }
}

/// Why `s` cannot be imported, or what is recorded for it.
pub fn check(s: &pb::ImportedServer) -> Result<Valid, Invalid> {
    if !proto::subject::is_valid_identity(&s.identity) {
        return Err(Invalid::Identity);
    }
    let cred = s.credential.as_ref().ok_or(Invalid::NoCredential)?;
    let serial_ok = !cred.serial.is_empty()
        && cred.serial.len() <= MAX_SERIAL
        && cred
            .serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !serial_ok {
        return Err(Invalid::Serial);
    }
    let fingerprint = cred.fingerprint.to_ascii_lowercase();
    if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::Fingerprint);
    }
    if cred.not_after <= 0 {
        return Err(Invalid::NotAfter);
    }
    let digest_ok = s.config_digest.len() <= MAX_DIGEST
        && s.config_digest.bytes().all(|b| b.is_ascii_graphic());
    if !digest_ok {
        return Err(Invalid::ConfigDigest);
    }
    let bytes: usize = s.facts.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > FACTS_BUDGET {
        return Err(Invalid::FactsTooLarge { bytes });
    }
    Ok(Valid {
        identity: s.identity.clone(),
        serial: cred.serial.to_ascii_lowercase(),
        fingerprint,
        not_after: cred.not_after,
        config_digest: if s.config_digest.is_empty() {
            "imported".into()
        } else {
            s.config_digest.clone()
        },
        facts: s.facts.clone().into_iter().collect(),
    })
}

enum One {
    Imported,
    Skipped,
    Refused(String),
}

/// Imports `servers` as `actor` (`member/operator`); at most [`MAX_SERVERS`], checked by the
/// caller. Servers are proposed concurrently, so the ledger commits them in shared batches.
pub async fn import(
    svc: &Services,
    actor: &str,
    servers: Vec<pb::ImportedServer>,
) -> pb::ImportLedgerReply {
    let mut reply = pb::ImportLedgerReply::default();
    let refuse =
        |reply: &mut pb::ImportLedgerReply, identity: &str, why: &dyn std::fmt::Display| {
            reply.refused += 1;
            svc.metrics.rejected("import");
            if reply.errors.len() < MAX_ERRORS {
                reply.errors.push(format!("{identity:?}: {why}"));
            }
        };
    let mut valid = Vec::with_capacity(servers.len());
    for s in &servers {
        match check(s) {
            Ok(v) => valid.push(v),
            Err(why) => refuse(&mut reply, &s.identity, &why),
        }
    }
    let results: Vec<(String, One)> = futures::stream::iter(valid)
        .map(|v| async move {
            let one = import_one(svc, actor, &v).await;
            (v.identity, one)
        })
        .buffer_unordered(MAX_SERVERS)
        .collect()
        .await;
    for (identity, one) in results {
        match one {
            One::Imported => reply.imported += 1,
            One::Skipped => reply.skipped += 1,
            One::Refused(why) => {
                tracing::warn!(identity, reason = %why, "import refused");
                refuse(&mut reply, &identity, &why)
            }
        }
    }
    reply
}

async fn import_one(svc: &Services, actor: &str, v: &Valid) -> One {
    // a record that is there stays as it is, unless it is this import's own claim left by a
    // call that stopped half-way
    if let Some(rec) = svc.ledger.record(&v.identity).await {
        if rec.owner.as_deref() != Some(actor) {
            return One::Skipped;
        }
    }
    let at = now_ms();
    // from ledger rules 6 one command records it, under the ownership epoch in force
    let settings = svc.ledger.settings().await;
    if settings.rules >= OWNED_RULES {
        let cmd = Command::Finish {
            identity: v.identity.clone(),
            member: actor.to_string(),
            epoch: settings.ownership.epoch(),
            seen_ms: at,
            end: FlowEnd::Enrolled {
                credential: Some(Issued {
                    serial: v.serial.clone(),
                    fingerprint: v.fingerprint.clone(),
                    not_after: v.not_after,
                }),
                config_digest: v.config_digest.clone(),
                facts: v.facts.clone(),
            },
            at_ms: at,
        };
        return match svc.ledger.propose(cmd).await {
            Ok(Applied::Ok) => One::Imported,
            Ok(Applied::Rejected(Rejection::ClaimedBy { .. } | Rejection::AlreadyEnrolled)) => {
                One::Skipped
            }
            Ok(Applied::Rejected(r)) => One::Refused(r.to_string()),
            Err(e) => One::Refused(format!("ledger: {e}")),
        };
    }
    let claim = Command::Claim {
        identity: v.identity.clone(),
        member: actor.to_string(),
        lease_until_ms: at + IMPORT_LEASE_MS,
        seen_ms: at,
        at_ms: at,
    };
    match svc.ledger.propose(claim).await {
        Ok(Applied::Ok) => {}
        Ok(Applied::Rejected(Rejection::ClaimedBy { .. } | Rejection::AlreadyEnrolled)) => {
            return One::Skipped
        }
        Ok(Applied::Rejected(r)) => return One::Refused(r.to_string()),
        Err(e) => return One::Refused(format!("ledger: {e}")),
    }
    let steps = [
        Command::IssueCredential {
            identity: v.identity.clone(),
            member: actor.to_string(),
            serial: v.serial.clone(),
            fingerprint: v.fingerprint.clone(),
            not_after: v.not_after,
            at_ms: now_ms(),
        },
        Command::Enrolled {
            identity: v.identity.clone(),
            member: actor.to_string(),
            config_digest: v.config_digest.clone(),
            facts: v.facts.clone(),
            at_ms: now_ms(),
        },
    ];
    for cmd in steps {
        let why = match svc.ledger.propose(cmd).await {
            Ok(Applied::Ok) => continue,
            Ok(Applied::Rejected(r)) => r.to_string(),
            Err(e) => format!("ledger: {e}"),
        };
        let release = Command::Release {
            identity: v.identity.clone(),
            member: actor.to_string(),
            outcome: ReleaseOutcome::Failed {
                reason: format!("import refused: {why}"),
            },
            at_ms: now_ms(),
        };
        if let Err(e) = svc.ledger.propose(release).await {
            tracing::warn!(identity = %v.identity, error = %e, "could not release the import's claim; it lapses");
        }
        return One::Refused(why);
    }
    One::Imported
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> pb::ImportedServer {
        pb::ImportedServer {
            identity: "n1.example.net".into(),
            credential: Some(pb::Credential {
                serial: "0A1b".into(),
                fingerprint: "AB".repeat(32),
                not_after: 1_900_000_000,
                ..Default::default()
            }),
            config_digest: String::new(),
            facts: [("role".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn a_good_server_is_kept_with_lower_case_hex_and_a_default_digest() {
        let v = check(&server()).unwrap();
        assert_eq!(v.serial, "0a1b");
        assert_eq!(v.fingerprint, "ab".repeat(32));
        assert_eq!(v.config_digest, "imported");
        assert_eq!(v.facts.get("role").map(String::as_str), Some("web"));
    }

    #[test]
    fn bad_servers_are_refused_with_the_reason() {
        type Change = Box<dyn Fn(&mut pb::ImportedServer)>;
        let cases: Vec<(Change, &str, &str)> = vec![
            (
                Box::new(|s| s.identity = "a b".into()),
                "identity",
                "not a valid identity",
            ),
            (
                Box::new(|s| s.identity = "x".repeat(300)),
                "identity",
                "not a valid identity",
            ),
            (
                Box::new(|s| s.credential = None),
                "no_credential",
                "no credential",
            ),
            (
                Box::new(|s| s.credential.as_mut().unwrap().serial = "01;rm".into()),
                "serial",
                "serial must be 1 to 128 letters, digits, '-' or '_'",
            ),
            (
                Box::new(|s| s.credential.as_mut().unwrap().serial = "a".repeat(129)),
                "serial",
                "serial must be 1 to 128 letters, digits, '-' or '_'",
            ),
            (
                Box::new(|s| s.credential.as_mut().unwrap().fingerprint = "zz".repeat(32)),
                "fingerprint",
                "fingerprint must be a SHA-256 in 64 hex digits",
            ),
            (
                Box::new(|s| s.credential.as_mut().unwrap().not_after = 0),
                "not_after",
                "not_after must be a time (Unix seconds)",
            ),
            (
                Box::new(|s| s.config_digest = "a\nb".into()),
                "config_digest",
                "config_digest must be at most 128 printable characters",
            ),
            (
                Box::new(|s| {
                    s.facts.insert("big".into(), "v".repeat(3000));
                }),
                "facts",
                "facts are 3010 bytes, more than the 2048 kept per server",
            ),
        ];
        for (change, reason, text) in cases {
            let mut s = server();
            change(&mut s);
            let err = check(&s).unwrap_err();
            assert_eq!(err.reason(), reason, "{err:?}");
            assert_eq!(err.to_string(), text);
        }
    }
}
