//! The keys a provisioner signs and verifies with, loaded before anything else starts so that
//! a bad file stops it at once: the built-in CA (`pki`), the Organization Issuer that signs
//! server JWTs (`ed25519`), the key provisioning JWTs are verified with (`jwt`), and the caller
//! JWT an Organization Issuer network speaks protocol v2 with.

use std::path::Path;
use std::sync::Arc;

use crate::ca::Ca;
use crate::caller::CallerSigner;
use crate::config::Config;
use crate::jwt::JwtVerifier;
use crate::orgissuer::OrgIssuer;

use super::ServiceError;

/// What the configuration's features call for, loaded.
pub(super) struct Keys {
    pub ca: Option<Ca>,
    pub issuer: Option<Arc<OrgIssuer>>,
    pub jwt: Option<JwtVerifier>,
}

impl Keys {
    pub fn load(config: &Config) -> Result<Keys, ServiceError> {
        let ca = match (&config.ca, config.features.pki) {
            (Some(c), true) => Some(Ca::load(&c.cert, &c.key, config.cert_validity)?),
            _ => None,
        };
        let issuer = if config.features.ed25519 {
            Some(Arc::new(load_issuer(config)?))
        } else {
            None
        };
        let jwt = if config.features.jwt {
            Some(JwtVerifier::from_config(&config.jwt_verify_cert)?)
        } else {
            None
        };
        Ok(Keys { ca, issuer, jwt })
    }

    /// Organization Issuer networks speak protocol v2, as upstream's do, and log in to the
    /// broker with the same caller JWT; `sender` is who this provisioner speaks as.
    pub fn caller(&self, sender: &str) -> Result<Option<Arc<CallerSigner>>, ServiceError> {
        let Some(issuer) = &self.issuer else {
            return Ok(None);
        };
        let signer = CallerSigner::new(issuer.clone(), &format!("choria={sender}"))?;
        tracing::info!(
            caller = signer.callerid(),
            "speaking protocol v2 with a signed caller JWT"
        );
        Ok(Some(Arc::new(signer)))
    }
}

/// The Organization Issuer, or the chain issuer `jwt_signing_token` makes of its key.
fn load_issuer(config: &Config) -> Result<OrgIssuer, ServiceError> {
    let token =
        (!config.jwt_signing_token.is_empty()).then(|| Path::new(&config.jwt_signing_token));
    let issuer = OrgIssuer::load_with_chain(Path::new(&config.jwt_signing_key), token)?;
    match issuer.chain() {
        Some(ci) => {
            tracing::info!(chain_issuer = %ci.jti, key = %issuer.public_hex(), "signing server JWTs as a chain issuer")
        }
        None => {
            tracing::info!(issuer = %issuer.public_hex(), "signing server JWTs as Organization Issuer")
        }
    }
    Ok(issuer)
}
