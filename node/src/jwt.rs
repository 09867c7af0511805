//! Verifying a server's provisioning JWT (fetched in [`crate::pipeline::jwt`]).
//!
//! The token must be signed by the key configured in `jwt_verify_cert`: a PEM file holding an
//! RSA or ed25519 public key or a certificate (RS256/RS384/RS512 or EdDSA), or, when no such
//! file exists, a hex ed25519 public key, as upstream reads it. HMAC tokens are never
//! accepted. A valid token has the provisioning purpose and is within its `nbf`/`exp` window.

use std::path::Path;

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use thiserror::Error;
use x509_parser::prelude::*;

const PROVISIONING_PURPOSE: &str = "choria_provisioning";
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Error)]
pub enum JwtError {
    #[error("jwt_verify_cert {0}")]
    Key(String),
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token signature does not verify with the configured key")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token algorithm is not accepted: {0}")]
    Algorithm(String),
    #[error("token is not a provisioning token (purpose/sub is not choria_provisioning)")]
    NotProvisioning,
    #[error("server returned no JWT")]
    Empty,
}

/// Why a PEM file is not a key provisioning tokens can be verified with.
#[derive(Debug, Error)]
pub enum VerifyKeyError {
    #[error("not PEM: {0}")]
    Pem(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
    #[error("bad certificate: {0}")]
    Certificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("bad RSA public key: {0}")]
    Rsa(#[source] jsonwebtoken::errors::Error),
    #[error("PEM block {0:?} is not a public key or certificate")]
    Label(String),
    #[error("bad public key: {0}")]
    PublicKey(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("public key is neither RSA nor ed25519")]
    Algorithm,
}

/// Verifies provisioning tokens with one configured public key.
pub struct JwtVerifier {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The verified claims of a provisioning token, passed to the helper as `jwt`.
#[derive(Debug, Clone)]
pub struct ProvisioningClaims {
    pub claims: Map<String, Value>,
}

impl ProvisioningClaims {
    /// `cht`: the provisioning token the server was built with.
    pub fn token(&self) -> Option<&str> {
        self.claims.get("cht").and_then(Value::as_str)
    }
}

impl JwtVerifier {
    /// Reads the verification key as upstream does: a file if one exists at `value`,
    /// otherwise a hex-encoded ed25519 public key.
    pub fn from_config(value: &str) -> Result<Self, JwtError> {
        let path = Path::new(value);
        if path.exists() {
            let pem = std::fs::read(path)
                .map_err(|e| JwtError::Key(format!("{value}: cannot read: {e}")))?;
            return Self::from_pem(&pem).map_err(|e| JwtError::Key(format!("{value}: {e}")));
        }
        let raw = hex::decode(value.trim()).map_err(|_| {
            JwtError::Key(format!("{value}: no such file and not a hex ed25519 key"))
        })?;
        if raw.len() != 32 {
            return Err(JwtError::Key(format!(
                "hex ed25519 key must be 32 bytes, got {}",
                raw.len()
            )));
        }
        Ok(JwtVerifier {
            key: DecodingKey::from_ed_der(&raw),
            algorithms: vec![Algorithm::EdDSA],
        })
    }

    /// Builds a verifier from a PEM public key or certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, VerifyKeyError> {
        let (_, block) = parse_x509_pem(pem).map_err(VerifyKeyError::Pem)?;
        let spki_der: Vec<u8> = match block.label.as_str() {
            "CERTIFICATE" => {
                let cert = block.parse_x509().map_err(VerifyKeyError::Certificate)?;
                cert.public_key().raw.to_vec()
            }
            "PUBLIC KEY" => block.contents.clone(),
            "RSA PUBLIC KEY" => {
                return DecodingKey::from_rsa_pem(pem)
                    .map(|key| JwtVerifier {
                        key,
                        algorithms: rsa_algorithms(),
                    })
                    .map_err(VerifyKeyError::Rsa)
            }
            other => return Err(VerifyKeyError::Label(other.to_string())),
        };
        let (_, spki) =
            SubjectPublicKeyInfo::from_der(&spki_der).map_err(VerifyKeyError::PublicKey)?;
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Ok(JwtVerifier {
                // ASN.1 integers carry a leading zero byte that the verifier must not see
                key: DecodingKey::from_rsa_raw_components(
                    strip_zeros(rsa.modulus),
                    strip_zeros(rsa.exponent),
                ),
                algorithms: rsa_algorithms(),
            }),
            _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => Ok(JwtVerifier {
                key: DecodingKey::from_ed_der(&spki.subject_public_key.data),
                algorithms: vec![Algorithm::EdDSA],
            }),
            _ => Err(VerifyKeyError::Algorithm),
        }
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<ProvisioningClaims, JwtError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(JwtError::Empty);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed(format!(
                "{} bytes is too long",
                token.len()
            )));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = self.algorithms.clone();
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let data =
            decode::<Map<String, Value>>(token, &self.key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => JwtError::Signature,
                    ErrorKind::ExpiredSignature => JwtError::Expired,
                    ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                    ErrorKind::InvalidAlgorithm => JwtError::Algorithm(format!("{:?}", header.alg)),
                    _ => JwtError::Malformed(e.to_string()),
                }
            })?;
        let mut claims = data.claims;
        let is_provisioning = [("purpose"), ("sub")]
            .iter()
            .any(|k| claims.get(*k).and_then(Value::as_str) == Some(PROVISIONING_PURPOSE));
        if !is_provisioning {
            return Err(JwtError::NotProvisioning);
        }
        // as upstream: the organization defaults to "choria"
        let ou_missing = claims
            .get("ou")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if ou_missing {
            claims.insert("ou".into(), Value::String("choria".into()));
        }
        claims.entry("extensions").or_insert(Value::Null);
        Ok(ProvisioningClaims { claims })
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn rsa_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../proto/testdata/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    fn upstream_verifier() -> JwtVerifier {
        JwtVerifier::from_pem(fixture("provisioning-signer.pem").as_bytes()).unwrap()
    }

    #[test]
    fn upstream_fixture_verifies() {
        let claims = upstream_verifier()
            .verify(&fixture("provisioning.jwt"))
            .unwrap();
        assert_eq!(claims.token(), Some("s3cret"));
        assert_eq!(claims.claims["chu"], "nats://localhost:4222");
        assert_eq!(claims.claims["ou"], "choria");
    }

    #[test]
    fn upstream_invalid_fixture_is_rejected() {
        let err = upstream_verifier()
            .verify(&fixture("invalid-provisioning.jwt"))
            .unwrap_err();
        assert!(matches!(err, JwtError::Signature), "{err}");
    }

    #[test]
    fn hmac_tokens_are_never_accepted() {
        let err = upstream_verifier()
            .verify(&fixture("agent-testdata-provision.jwt"))
            .unwrap_err();
        assert!(matches!(err, JwtError::Algorithm(_)), "{err}");
    }

    #[test]
    fn garbage_tokens_are_rejected() {
        let v = upstream_verifier();
        for bad in [
            "",
            "a.b.c",
            "not a jwt",
            "eyJhbGciOiJSUzI1NiJ9..",
            &"x".repeat(20_000),
        ] {
            assert!(v.verify(bad).is_err(), "{bad:.20}");
        }
        // a valid token with its payload swapped fails the signature check
        let good = fixture("provisioning.jwt");
        let parts: Vec<&str> = good.trim().split('.').collect();
        let other = fixture("invalid-provisioning.jwt");
        let other_payload = other.trim().split('.').nth(1).unwrap();
        let forged = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
        assert!(matches!(v.verify(&forged), Err(JwtError::Signature)));
    }

    #[test]
    fn bad_keys_are_reported() {
        assert!(JwtVerifier::from_config("/nonexistent/and-not-hex").is_err());
        assert!(JwtVerifier::from_config("abcd").is_err());
        assert!(JwtVerifier::from_pem(b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n").is_err());
        assert!(JwtVerifier::from_config(&"ab".repeat(32)).is_ok());
    }
}
