//! Our caller identity in Organization Issuer networks, where requests speak protocol v2:
//! every request carries a client JWT (`caller`) and an ed25519 signature of the request made
//! with the key that JWT names.
//!
//! The key is made fresh by each process and never leaves it; the JWT is signed by the same
//! issuer that signs server JWTs (chained in chain mode), lasts a day and is renewed an hour
//! before it expires.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use proto::v2;

use crate::orgissuer::{IssuerError, OrgIssuer};

const VALIDITY: Duration = Duration::from_secs(24 * 3600);
const RENEW_BEFORE: i64 = 3600;

pub struct CallerSigner {
    issuer: Arc<OrgIssuer>,
    key: SigningKey,
    callerid: String,
    /// The current JWT and its expiry.
    token: RwLock<(String, i64)>,
}

impl CallerSigner {
    pub fn new(issuer: Arc<OrgIssuer>, callerid: &str) -> Result<CallerSigner, IssuerError> {
        let key = SigningKey::generate(&mut rand::rng());
        let (token, exp) = mint(&issuer, &key, callerid)?;
        Ok(CallerSigner {
            issuer,
            key,
            callerid: callerid.to_string(),
            token: RwLock::new((token, exp)),
        })
    }

    pub fn callerid(&self) -> &str {
        &self.callerid
    }
}

fn mint(
    issuer: &OrgIssuer,
    key: &SigningKey,
    callerid: &str,
) -> Result<(String, i64), IssuerError> {
    let claims =
        issuer.client_claims(callerid, &key.verifying_key(), VALIDITY, proto::unix_now())?;
    Ok((issuer.sign(&claims)?, claims.reg.exp))
}

impl v2::Signer for CallerSigner {
    fn caller_jwt(&self) -> String {
        let (token, exp) = match self.token.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if exp - proto::unix_now() > RENEW_BEFORE {
            return token;
        }
        match mint(&self.issuer, &self.key, &self.callerid) {
            Ok(fresh) => {
                if let Ok(mut t) = self.token.write() {
                    *t = fresh.clone();
                }
                fresh.0
            }
            Err(e) => {
                // keep sending the old one: servers in provisioning mode do not check it
                tracing::error!(error = %e, "cannot renew our caller JWT");
                token
            }
        }
    }

    fn sign(&self, request_json: &[u8]) -> Vec<u8> {
        self.key.sign(request_json).to_bytes().to_vec()
    }
}
