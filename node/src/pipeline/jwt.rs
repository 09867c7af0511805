//! Step 1 (feature `jwt`): fetch the server's provisioning JWT (`choria_provision#jwt`) and
//! verify it ([`crate::jwt`]) before the ledger hears of the server: a sighting (a startup
//! event, a discovery reply) of a server that cannot show a valid JWT writes nothing.

use proto::action::Jwt;
use proto::agents::TokenRequest;
use thiserror::Error;

use crate::call::Agents;
use crate::jwt::{JwtError, JwtVerifier, ProvisioningClaims};
use crate::rpc::RpcError;

/// What the `jwt` action gave us.
pub struct FetchedJwt {
    pub claims: ProvisioningClaims,
    /// The server's ECDH public key, used when a private key is delivered to it.
    pub ecdh_public: String,
}

#[derive(Debug, Error)]
pub enum FetchJwtError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("provisioning JWT rejected: {0}")]
    Invalid(#[from] JwtError),
}

/// Fetches the server's provisioning JWT and verifies it.
pub async fn fetch(
    agents: &Agents,
    verifier: &JwtVerifier,
    identity: &str,
) -> Result<FetchedJwt, FetchJwtError> {
    let req = TokenRequest {
        token: agents.token(),
    };
    let out = agents.call::<Jwt>(identity, &req).await?;
    let claims = verifier.verify(&out.jwt)?;
    Ok(FetchedJwt {
        claims,
        ecdh_public: out.ecdh_public,
    })
}
