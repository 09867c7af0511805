//! Step 4: ask the server for the key its new credential is for, as this member enrolls
//! ([`Enrollment`]): a CSR (`choria_provision#gencsr`, checked by [`crate::csr`]) in x509
//! networks, an ed25519 key that signs our nonce (`choria_provision#gen25519`, checked by
//! [`crate::orgissuer::verify_proof`]) in Organization Issuer networks, nothing otherwise.
//! Asking makes the server write a new key, so it is asked only while the flow may drive it.

use proto::action::{Gen25519, GenCsr};
use proto::agents::{CsrReply, CsrRequest, Ed25519Reply, Ed25519Request};
use regex::Regex;

use super::error::StepError;
use crate::call::Agents;
use crate::csr::{self, CsrError, ValidCsr};
use crate::enrollment::Enrollment;
use crate::orgissuer::{self, IssuerError};

/// The server's CSR reply together with the checked CSR.
pub struct FetchedCsr {
    pub reply: CsrReply,
    pub csr: ValidCsr,
}

/// The server's new key.
pub enum ServerKey {
    None,
    Csr(FetchedCsr),
    Ed25519(Ed25519Reply),
}

impl ServerKey {
    pub fn csr(&self) -> Option<&FetchedCsr> {
        match self {
            ServerKey::Csr(c) => Some(c),
            _ => None,
        }
    }

    pub fn ed25519(&self) -> Option<&Ed25519Reply> {
        match self {
            ServerKey::Ed25519(k) => Some(k),
            _ => None,
        }
    }
}

/// The step each enrollment asks for before its key, for the lease check's error.
pub fn asking(enrollment: &Enrollment) -> Option<&'static str> {
    match enrollment {
        Enrollment::None => None,
        Enrollment::X509 { .. } => Some("asking for a CSR"),
        Enrollment::Ed25519 { .. } => Some("asking for the ed25519 key"),
    }
}

/// Asks the server for its key as `enrollment` needs it; `deny` is the CSR names' deny list.
pub async fn ask(
    agents: &Agents,
    enrollment: &Enrollment,
    identity: &str,
    deny: &[Regex],
) -> Result<ServerKey, StepError> {
    match enrollment {
        Enrollment::None => Ok(ServerKey::None),
        Enrollment::X509 { .. } => Ok(ServerKey::Csr(fetch_csr(agents, identity, deny).await?)),
        Enrollment::Ed25519 { .. } => fetch_ed25519(agents, identity)
            .await
            .map(ServerKey::Ed25519)
            .map_err(StepError::Ed25519Key),
    }
}

/// Asks the server for a CSR with its identity as common name and checks it.
async fn fetch_csr(
    agents: &Agents,
    identity: &str,
    deny: &[Regex],
) -> Result<FetchedCsr, CsrError> {
    let req = CsrRequest {
        token: agents.token(),
        cn: identity.to_string(),
        ..Default::default()
    };
    let reply = agents.call::<GenCsr>(identity, &req).await?;
    let csr = csr::validate(&reply.csr, identity, deny)?;
    Ok(FetchedCsr { reply, csr })
}

/// Asks the server for a new ed25519 key with a fresh nonce and checks its proof.
async fn fetch_ed25519(agents: &Agents, identity: &str) -> Result<Ed25519Reply, IssuerError> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let req = Ed25519Request {
        token: agents.token(),
        nonce: nonce.clone(),
    };
    let out = agents.call::<Gen25519>(identity, &req).await?;
    orgissuer::verify_proof(&out, &nonce)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::call::tests::{agents, Scripted};

    #[tokio::test(start_paused = true)]
    async fn without_a_feature_the_server_is_asked_for_no_key() {
        let t = Arc::new(Scripted::default());
        let key = ask(&agents(&t), &Enrollment::None, "n1.example.net", &[]).await;
        assert!(matches!(key, Ok(ServerKey::None)));
        assert!(t.asked().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_csr_that_fails_its_checks_is_a_rejection_and_is_asked_for_once() {
        let t = Arc::new(Scripted::default());
        t.ok(serde_json::json!({"csr": "not a csr", "ssldir": "/etc/choria"}));
        let key = ask(
            &agents(&t),
            &Enrollment::X509 { ca: None },
            "n1.example.net",
            &[],
        )
        .await;
        let Err(e) = key else {
            panic!("a garbage CSR was accepted");
        };
        assert_eq!(e.reason(), "csr");
        assert!(e.rejected().is_some_and(|r| r.starts_with("csr_")), "{e}");
        assert_eq!(t.asked(), ["choria_provision#gencsr"]);
        let asked = t.asked.lock().unwrap()[0].2.clone();
        assert_eq!(asked["cn"], "n1.example.net");
        assert_eq!(asked["token"], "secret");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ed25519_key_that_does_not_sign_our_nonce_is_a_rejection() {
        let issuer = match crate::orgissuer::OrgIssuer::from_seed(&[7; 32]) {
            Ok(i) => Arc::new(i),
            Err(e) => panic!("{e}"),
        };
        let t = Arc::new(Scripted::default());
        // a real key, but a signature over something else
        t.ok(serde_json::json!({
            "public_key": issuer.public_hex(),
            "directory": "/etc/choria",
            "signature": "00".repeat(64),
        }));
        let key = ask(
            &agents(&t),
            &Enrollment::Ed25519 { issuer },
            "n1.example.net",
            &[],
        )
        .await;
        let Err(e) = key else {
            panic!("a key without proof was accepted");
        };
        assert_eq!((e.reason(), e.rejected()), ("ed25519_key", Some("ed25519")));
        let asked = t.asked.lock().unwrap()[0].2.clone();
        assert!(asked["nonce"].as_str().is_some_and(|n| n.len() == 32));
    }
}
