//! What a Choria Server in an Organization Issuer network checks, written from upstream's
//! rules (choria-io/tokens) and not shared with the provisioner, so a mistake there is caught
//! here: JWTs signed by the issuer directly or through a chain issuer, and the caller JWT and
//! signature of protocol v2 requests.

use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

/// Verifies `token` (EdDSA) as issued, directly or through a chain, by the Organization
/// Issuer `org`, with the purpose `purpose`; returns its claims.
///
/// A chained token names its issuer `C-<chain issuer id>.<chain issuer key>` and carries
/// `tcs` = `<org signature of "id.key">.<chain issuer signature of "jti.<org signature>">`;
/// it is then signed by the chain issuer's key and may not outlive it (`issexp`).
pub fn verify_jwt(token: &str, org: &[u8; 32], purpose: &str) -> Result<Value, String> {
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| "claims are not base64url")?;
    let claims: Value = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    let signer: [u8; 32] = match iss.strip_prefix("C-") {
        Some(chain) => {
            let (id, key_hex) = chain.split_once('.').ok_or("chain issuer is not id.key")?;
            let key = hex32(key_hex)?;
            let tcs = claims["tcs"].as_str().ok_or("chained token without tcs")?;
            let (org_sig, chain_sig) = tcs.split_once('.').ok_or("tcs is not org.chain")?;
            verify(org, format!("{id}.{key_hex}").as_bytes(), org_sig)
                .map_err(|e| format!("chain issuer not signed by the organization issuer: {e}"))?;
            let jti = claims["jti"].as_str().ok_or("no jti")?;
            verify(&key, format!("{jti}.{org_sig}").as_bytes(), chain_sig)
                .map_err(|e| format!("chain signature: {e}"))?;
            let issexp = claims["issexp"]
                .as_i64()
                .ok_or("chained token without issexp")?;
            if issexp < unix_now() {
                return Err("the chain issuer expired".into());
            }
            key
        }
        None => *org,
    };
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_required_spec_claims(&["exp", "iat"]);
    let claims =
        jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_ed_der(&signer), &v)
            .map_err(|e| e.to_string())?
            .claims;
    if claims["purpose"] != purpose {
        return Err(format!("purpose is {}, not {purpose}", claims["purpose"]));
    }
    Ok(claims)
}

/// What a secure server checks of a v2 request: the caller JWT verifies with the issuer,
/// has fleet management rights and names the request's caller, and its key signed the
/// request.
pub fn verify_caller(
    caller_jwt: &str,
    callerid: &str,
    signed: &[u8],
    signature: &[u8],
    org: &[u8; 32],
) -> Result<(), String> {
    let claims = verify_jwt(caller_jwt, org, "choria_client_id")?;
    if claims["callerid"] != callerid {
        return Err(format!(
            "request caller {callerid} is not the JWT's {}",
            claims["callerid"]
        ));
    }
    if claims["permissions"]["fleet_management"] != true {
        return Err("the caller has no fleet management right".into());
    }
    let key = hex32(claims["public_key"].as_str().ok_or("no public_key")?)?;
    let sig = Signature::from_slice(signature).map_err(|_| "signature is not 64 bytes")?;
    VerifyingKey::from_bytes(&key)
        .map_err(|e| e.to_string())?
        .verify_strict(signed, &sig)
        .map_err(|_| "the request signature does not verify".to_string())
}

fn verify(key: &[u8; 32], msg: &[u8], sig_hex: &str) -> Result<(), String> {
    let sig = hex::decode(sig_hex).map_err(|_| "signature is not hex")?;
    let sig = Signature::from_slice(&sig).map_err(|_| "signature is not 64 bytes")?;
    VerifyingKey::from_bytes(key)
        .map_err(|e| e.to_string())?
        .verify_strict(msg, &sig)
        .map_err(|_| "does not verify".to_string())
}

fn hex32(s: &str) -> Result<[u8; 32], String> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("{s:?} is not a hex ed25519 key"))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    #[test]
    fn garbage_and_forged_tokens_are_refused() {
        let org = [7u8; 32];
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let forged_chain = format!(
            "e30.{}.c2ln",
            b64(
                serde_json::json!({"iss": format!("C-x.{}", "11".repeat(32)), "tcs": "aa.bb", "jti": "j", "issexp": 1})
            )
        );
        for token in ["", "a", "a.%%%.c", "e30.e30.c2ln", forged_chain.as_str()] {
            assert!(
                super::verify_jwt(token, &org, "choria_server").is_err(),
                "{token}"
            );
        }
        assert!(super::verify_caller("a.b.c", "choria=x", b"{}", &[0u8; 64], &org).is_err());
    }

    /// A well-formed caller JWT with a request signed by another key, a changed request, or
    /// another caller: each refused; the genuine one accepted.
    #[test]
    fn a_v2_request_signed_by_another_key_is_refused() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use ed25519_dalek::{Signer, SigningKey};
        let org = SigningKey::from_bytes(&[7u8; 32]);
        let caller = SigningKey::from_bytes(&[9u8; 32]);
        let other = SigningKey::from_bytes(&[11u8; 32]);
        let now = super::unix_now();
        let claims = serde_json::json!({
            "purpose": "choria_client_id",
            "callerid": "choria=prov",
            "permissions": {"fleet_management": true},
            "public_key": hex::encode(caller.verifying_key().to_bytes()),
            "iss": "I-org",
            "iat": now,
            "exp": now + 3600,
        });
        let der = org.to_pkcs8_der().unwrap();
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        let org_pk = org.verifying_key().to_bytes();
        let body = br#"{"a":1}"#;
        let good = caller.sign(body).to_bytes();
        let forged = other.sign(body).to_bytes();
        assert!(super::verify_caller(&jwt, "choria=prov", body, &good, &org_pk).is_ok());
        assert!(super::verify_caller(&jwt, "choria=prov", body, &forged, &org_pk).is_err());
        assert!(super::verify_caller(&jwt, "choria=prov", br#"{"a":2}"#, &good, &org_pk).is_err());
        assert!(super::verify_caller(&jwt, "choria=other", body, &good, &org_pk).is_err());
        // and a caller JWT signed by another organization
        let stranger = SigningKey::from_bytes(&[13u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(super::verify_caller(&jwt, "choria=prov", body, &good, &stranger).is_err());
    }
}
