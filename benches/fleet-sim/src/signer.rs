//! The test signer of provisioning JWTs: an RSA key (RS256) or, as in Organization Issuer
//! networks, an ed25519 key (EdDSA) that signs each simulated server's `provisioning.jwt`
//! with upstream's claims, and whose public key the provisioner is configured to trust.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::PrivateKey;
use serde_json::json;

pub struct JwtSigner {
    key: EncodingKey,
    public_pem: String,
    algorithm: Algorithm,
}

impl JwtSigner {
    /// A new 2048-bit RSA signer.
    pub fn generate() -> Result<Self, String> {
        let key = PrivateKey::new(&mut rand::rng(), 2048).map_err(|e| e.to_string())?;
        Self::from_key(&key)
    }

    /// A signer from a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let key = PrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        Self::from_key(&key)
    }

    fn from_key(key: &PrivateKey) -> Result<Self, String> {
        let private = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let key = EncodingKey::from_rsa_pem(private.as_bytes()).map_err(|e| e.to_string())?;
        Ok(JwtSigner {
            key,
            public_pem,
            algorithm: Algorithm::RS256,
        })
    }

    /// An EdDSA signer from an ed25519 seed (an Organization Issuer's).
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> Result<Self, String> {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        Ok(JwtSigner {
            key: EncodingKey::from_ed_der(der.as_bytes()),
            public_pem,
            algorithm: Algorithm::EdDSA,
        })
    }

    /// The public key as a PEM `PUBLIC KEY`, for the provisioner's `jwt_verify_cert`.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A provisioning token as `choria jwt prov` makes them; `v2` is its `--protocol-v2`
    /// (servers built with it speak protocol v2 while provisioning), `secure` its `chs`
    /// (provisioning over TLS).
    pub fn provisioning_jwt(
        &self,
        token: &str,
        urls: &str,
        v2: bool,
        secure: bool,
    ) -> Result<String, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut claims = json!({
            "cht": token,
            "chs": secure,
            "chu": urls,
            "chpd": true,
            "extensions": null,
            "ou": "choria",
            "purpose": "choria_provisioning",
            "iss": "fleet-sim",
            "sub": "choria_provisioning",
            "iat": now,
            "nbf": now,
            "jti": uuid_like(),
        });
        if v2 {
            claims["v2"] = true.into();
        }
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|e| e.to_string())
    }
}

fn uuid_like() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
