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
