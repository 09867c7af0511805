//! Enrollment in Organization Issuer (ed25519) networks: the server makes an ed25519 key on
//! `choria_provision#gen25519` and proves it by signing our nonce; we sign a server JWT for
//! that key with `jwt_signing_key` (a file holding the hex seed, as upstream reads it). The
//! JWT carries upstream's claim names (`identity`, `collectives`, `permissions`, `ou`,
//! `pub_subjects`, `purpose`, `public_key` and the registered claims), so Choria parses it as
//! one of its own.
//!
//! Two ways to hold the right to sign, as upstream: the seed is the Organization Issuer's own,
//! or it belongs to a chain issuer whose client JWT (`jwt_signing_token`) the Organization
//! Issuer signed (`tcs`). In the chain case every server JWT names the chain issuer
//! (`iss` = `C-<its id>.<its public key>`), carries the chain (`tcs` = the issuer's `tcs`, a
//! dot, and our signature of `<jwt id>.<issuer tcs>`), and expires no later than the chain
//! issuer (`issexp`), so a verifier holding only the Organization Issuer's public key can
//! check the whole chain.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::agents::Ed25519Reply;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::rpc::RpcError;

/// Upstream's issuer name in server JWTs it signs.
pub const ISSUER: &str = "Choria Provisioner";
/// Upstream's `purpose` of a server JWT.
pub const SERVER_PURPOSE: &str = "choria_server";
/// Server JWTs shorter than this get the configured validity instead, as upstream does.
const MIN_VALIDITY: Duration = Duration::from_secs(3600);

#[derive(Debug, Error)]
pub enum IssuerError {
    #[error("jwt_signing_key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("gen25519 reply: {0}")]
    Reply(String),
    #[error("the server's ed25519 key did not sign our nonce")]
    BadProof,
    #[error("cannot sign the server JWT: {0}")]
    Sign(String),
    #[error("the chain issuer's token (jwt_signing_token) expired at {0}")]
    ChainExpired(i64),
}

/// Where `provisioner ca issuer` keeps an issuer: its hex seed (0600) and its public key.
pub const SEED_FILE: &str = "issuer.seed";
pub const PUBLIC_FILE: &str = "issuer.pub";

/// Loads the issuer in `dir`, or makes a new one there: `issuer.seed` (hex, 0600) and
/// `issuer.pub` (PEM). The bool says whether it was made now.
pub fn init_issuer(dir: &Path) -> Result<(OrgIssuer, bool), IssuerError> {
    let seed_path = dir.join(SEED_FILE);
    let io = |e: String| IssuerError::Key {
        path: seed_path.display().to_string(),
        reason: e,
    };
    let created = !seed_path.exists();
    let issuer = if created {
        std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
        let key = SigningKey::generate(&mut rand::rng());
        crate::ca::write_file(&seed_path, hex::encode(key.to_bytes()).as_bytes(), 0o600)
            .map_err(|e| io(e.to_string()))?;
        OrgIssuer::from_seed(&key.to_bytes())?
    } else {
        OrgIssuer::load(&seed_path)?
    };
    crate::ca::write_file(
        &dir.join(PUBLIC_FILE),
        issuer.public_pem()?.as_bytes(),
        0o644,
    )
    .map_err(|e| io(e.to_string()))?;
    Ok((issuer, created))
}

/// What servers may do beyond the basics (upstream's `ServerPermissions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPermissions {
    #[serde(default, skip_serializing_if = "is_false")]
    pub submission: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub streams: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub governor: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub service_host: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The claims of a server JWT, with upstream's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerClaims {
    pub identity: String,
    pub collectives: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<ServerPermissions>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ou: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pub_subjects: Vec<String>,
    pub purpose: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    #[serde(flatten)]
    pub reg: Registered,
}

/// The registered claims every token we sign carries, and the chain fields in chain mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// The chain issuer's expiry (chain mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issexp: Option<i64>,
    /// The trust chain signature (chain mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcs: Option<String>,
}

/// Upstream's `purpose` of a client JWT.
pub const CLIENT_PURPOSE: &str = "choria_client_id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPermissions {
    #[serde(default, skip_serializing_if = "is_false")]
    pub fleet_management: bool,
    /// May log in to a Choria Broker as its `provisioner` user (upstream's
    /// `ServerProvisioner`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub provisioner: bool,
}

/// The claims of a client JWT, with upstream's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientClaims {
    pub callerid: String,
    pub purpose: String,
    pub ou: String,
    pub public_key: String,
    pub permissions: ClientPermissions,
    #[serde(flatten)]
    pub reg: Registered,
}

/// What a chain issuer's client JWT (`jwt_signing_token`) tells us.
#[derive(Debug, Clone, Deserialize)]
pub struct ChainIssuer {
    /// The token itself: also our caller JWT in protocol v2 requests.
    #[serde(skip)]
    pub token: String,
    pub jti: String,
    pub public_key: String,
    pub tcs: String,
    pub exp: i64,
    #[serde(default)]
    pub callerid: String,
}

impl ChainIssuer {
    /// Reads the token in `path` (unverified: it is ours, and whoever verifies what we sign
    /// checks its chain) and checks it can issue with the key whose public half is `pk_hex`.
    pub fn load(path: &Path, pk_hex: &str) -> Result<ChainIssuer, IssuerError> {
        let err = |reason: String| IssuerError::Key {
            path: path.display().to_string(),
            reason,
        };
        let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let token = token.trim().to_string();
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| err("not a JWT".into()))?;
        use base64::Engine;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| err("the JWT's claims are not base64url".into()))?;
        let mut ci: ChainIssuer = serde_json::from_slice(&json)
            .map_err(|e| err(format!("needs jti, public_key, tcs and exp claims: {e}")))?;
        if ci.tcs.is_empty() {
            return Err(err("no Trust Chain Signature (tcs) claim: the Organization Issuer did not make it an issuer".into()));
        }
        if ci.jti.is_empty() {
            return Err(err("no jti claim".into()));
        }
        if ci.public_key != pk_hex {
            return Err(err(format!(
                "its public_key {} is not the key of jwt_signing_key ({pk_hex})",
                ci.public_key
            )));
        }
        ci.token = token;
        Ok(ci)
    }
}

/// The parts of the helper's `server_claims` that change what we sign.
#[derive(Debug, Default, Deserialize)]
struct HelperClaims {
    #[serde(default)]
    collectives: Vec<String>,
    #[serde(default)]
    ou: String,
    #[serde(default)]
    pub_subjects: Vec<String>,
    #[serde(default)]
    permissions: Option<ServerPermissions>,
    #[serde(default)]
    exp: Option<i64>,
}

/// Signs server JWTs: as the Organization Issuer, or as a chain issuer.
pub struct OrgIssuer {
    key: SigningKey,
    encoding: EncodingKey,
    chain: Option<ChainIssuer>,
}

impl OrgIssuer {
    /// Reads the hex seed in `key`, and the chain issuer's token in `token` when given.
    pub fn load_with_chain(key: &Path, token: Option<&Path>) -> Result<OrgIssuer, IssuerError> {
        let mut issuer = Self::load(key)?;
        if let Some(token) = token {
            issuer.chain = Some(ChainIssuer::load(token, &issuer.public_hex())?);
        }
        Ok(issuer)
    }

    /// The chain issuer we sign as, if any.
    pub fn chain(&self) -> Option<&ChainIssuer> {
        self.chain.as_ref()
    }

    /// The signing key (also our caller key in protocol v2 requests).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Reads the hex seed in `path`.
    pub fn load(path: &Path) -> Result<OrgIssuer, IssuerError> {
        let err = |reason: String| IssuerError::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let seed = hex::decode(text.trim()).map_err(|e| err(format!("not a hex seed: {e}")))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|v: Vec<u8>| err(format!("seed is {} bytes, not 32", v.len())))?;
        Self::from_seed(&seed).map_err(|e| err(e.to_string()))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Result<OrgIssuer, IssuerError> {
        let key = SigningKey::from_bytes(seed);
        let der = key
            .to_pkcs8_der()
            .map_err(|e| IssuerError::Sign(e.to_string()))?;
        Ok(OrgIssuer {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            key,
            chain: None,
        })
    }

    /// The issuer's public key, hex: what servers and brokers are configured to trust.
    /// The public key as a PEM `PUBLIC KEY`, which `jwt_verify_cert` accepts as a file.
    pub fn public_pem(&self) -> Result<String, IssuerError> {
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let der = self
            .key
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| IssuerError::Sign(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        Ok(format!(
            "-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"
        ))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Server claims as upstream builds them: collectives from the configuration
    /// (`collectives`, or `choria` with the choria security provider, else `mcollective`),
    /// organization `choria`, `validity`; the helper's `server_claims` override collectives,
    /// `ou`, `pub_subjects`, `permissions` and the expiry (under an hour means `validity`).
    pub fn claims(
        &self,
        identity: &str,
        server_key_hex: &str,
        configuration: &BTreeMap<String, String>,
        helper_claims: Option<&Value>,
        validity: Duration,
        now: i64,
    ) -> Result<ServerClaims, IssuerError> {
        let mut collectives = vec!["mcollective".to_string()];
        if configuration
            .get("plugin.security.provider")
            .is_some_and(|p| p == "choria")
        {
            collectives = vec!["choria".to_string()];
        }
        if let Some(c) = configuration.get("collectives") {
            collectives = c
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        let mut ou = "choria".to_string();
        let mut pub_subjects = Vec::new();
        let mut permissions = None;
        let mut valid_for = validity.as_secs() as i64;
        let helper: HelperClaims = helper_claims
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if !helper.ou.is_empty() {
            ou = helper.ou;
        }
        if !helper.collectives.is_empty() {
            collectives = helper.collectives;
        }
        if !helper.pub_subjects.is_empty() {
            pub_subjects = helper.pub_subjects;
        }
        if helper.permissions.is_some() {
            permissions = helper.permissions;
        }
        if let Some(exp) = helper.exp {
            valid_for = exp - now;
        }
        if valid_for <= MIN_VALIDITY.as_secs() as i64 {
            if helper.exp.is_some() {
                tracing::warn!(
                    identity,
                    "server_claims expiry is under an hour away; using server_jwt_validity"
                );
            }
            valid_for = validity.as_secs() as i64;
        }
        Ok(ServerClaims {
            identity: identity.to_string(),
            collectives,
            permissions,
            ou,
            pub_subjects,
            purpose: SERVER_PURPOSE.into(),
            public_key: server_key_hex.to_string(),
            reg: self.registered(valid_for, now)?,
        })
    }

    /// The registered claims of a new token valid `valid_for` seconds from `now`: issued by
    /// us directly, or in chain mode naming the chain issuer, capped by its expiry, with the
    /// chain signature.
    fn registered(&self, valid_for: i64, now: i64) -> Result<Registered, IssuerError> {
        let mut reg = Registered {
            iss: ISSUER.into(),
            iat: now,
            nbf: now,
            exp: now + valid_for,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            issexp: None,
            tcs: None,
        };
        if let Some(ci) = &self.chain {
            if ci.exp <= now {
                return Err(IssuerError::ChainExpired(ci.exp));
            }
            use ed25519_dalek::Signer;
            let sig = self.key.sign(format!("{}.{}", reg.jti, ci.tcs).as_bytes());
            reg.iss = format!("C-{}.{}", ci.jti, ci.public_key);
            reg.issexp = Some(ci.exp);
            reg.exp = reg.exp.min(ci.exp);
            reg.tcs = Some(format!("{}.{}", ci.tcs, hex::encode(sig.to_bytes())));
        }
        Ok(reg)
    }

    /// A client JWT for `callerid` holding `public_key`, valid `validity` from `now`: our
    /// caller identity in protocol v2 requests, chained like server JWTs in chain mode.
    pub fn client_claims(
        &self,
        callerid: &str,
        public_key: &VerifyingKey,
        validity: Duration,
        now: i64,
    ) -> Result<ClientClaims, IssuerError> {
        Ok(ClientClaims {
            callerid: callerid.to_string(),
            purpose: CLIENT_PURPOSE.into(),
            ou: "choria".into(),
            public_key: hex::encode(public_key.as_bytes()),
            permissions: ClientPermissions {
                fleet_management: true,
                provisioner: true,
            },
            reg: self.registered(validity.as_secs() as i64, now)?,
        })
    }

    /// Signs `claims` (EdDSA).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, IssuerError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| IssuerError::Sign(e.to_string()))
    }
}

/// Checks that `reply` proves possession of its key: the signature over `nonce` verifies
/// with the returned public key. Returns the key.
pub fn verify_proof(reply: &Ed25519Reply, nonce: &str) -> Result<VerifyingKey, IssuerError> {
    let pk = hex::decode(&reply.public_key)
        .map_err(|e| IssuerError::Reply(format!("public_key is not hex: {e}")))?;
    let pk: [u8; 32] = pk
        .try_into()
        .map_err(|v: Vec<u8>| IssuerError::Reply(format!("public_key is {} bytes", v.len())))?;
    let key = VerifyingKey::from_bytes(&pk)
        .map_err(|e| IssuerError::Reply(format!("public_key: {e}")))?;
    let sig = hex::decode(&reply.signature)
        .map_err(|e| IssuerError::Reply(format!("signature is not hex: {e}")))?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|v: Vec<u8>| IssuerError::Reply(format!("signature is {} bytes", v.len())))?;
    key.verify_strict(nonce.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| IssuerError::BadProof)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn an_issuer_is_made_once_and_its_public_pem_verifies_its_tokens() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (made, created) = init_issuer(dir.path()).unwrap();
        let (again, created_again) = init_issuer(dir.path()).unwrap();
        assert!(created && !created_again);
        assert_eq!(made.public_hex(), again.public_hex());
        let mode = std::fs::metadata(dir.path().join(SEED_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = std::fs::read(dir.path().join(PUBLIC_FILE)).unwrap();
        assert!(crate::jwt::JwtVerifier::from_pem(&pem).is_ok());
        let text = String::from_utf8(pem).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(hex::encode(&der[der.len() - 32..]), made.public_hex());
    }

    fn issuer() -> OrgIssuer {
        OrgIssuer::from_seed(&[7u8; 32]).unwrap()
    }

    #[test]
    fn server_jwts_verify_with_the_issuer_key_and_carry_upstream_claims() {
        let iss = issuer();
        let server = SigningKey::from_bytes(&[9u8; 32]);
        let server_hex = hex::encode(server.verifying_key().as_bytes());
        let mut config = BTreeMap::new();
        config.insert("collectives".to_string(), "lon, ams".to_string());
        let claims = iss
            .claims(
                "n1.example.net",
                &server_hex,
                &config,
                None,
                Duration::from_secs(86400),
                1_800_000_000,
            )
            .unwrap();
        let jwt = iss.sign(&claims).unwrap();
        let issuer_pub = hex::decode(iss.public_hex()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let back = jsonwebtoken::decode::<Value>(&jwt, &DecodingKey::from_ed_der(&issuer_pub), &v)
            .unwrap()
            .claims;
        assert_eq!(back["identity"], "n1.example.net");
        assert_eq!(back["collectives"], serde_json::json!(["lon", "ams"]));
        assert_eq!(back["purpose"], "choria_server");
        assert_eq!(back["public_key"], server_hex.as_str());
        assert_eq!(back["ou"], "choria");
        assert_eq!(back["iss"], "Choria Provisioner");
        assert_eq!(back["exp"], 1_800_000_000i64 + 86400);
        assert!(back.get("permissions").is_none());
        // another issuer's key does not verify it
        let other = OrgIssuer::from_seed(&[8u8; 32]).unwrap();
        let other_pub = hex::decode(other.public_hex()).unwrap();
        assert!(
            jsonwebtoken::decode::<Value>(&jwt, &DecodingKey::from_ed_der(&other_pub), &v).is_err()
        );
    }

    #[test]
    fn defaults_and_helper_overrides_follow_upstream() {
        let iss = issuer();
        let now = 1_800_000_000;
        let day = Duration::from_secs(86400);
        let mut config = BTreeMap::new();
        let c = iss.claims("n1", "00", &config, None, day, now).unwrap();
        assert_eq!(c.collectives, vec!["mcollective"]);
        config.insert("plugin.security.provider".into(), "choria".into());
        let c = iss.claims("n1", "00", &config, None, day, now).unwrap();
        assert_eq!(c.collectives, vec!["choria"]);
        let helper = serde_json::json!({
            "collectives": ["x"], "ou": "acme", "pub_subjects": ["a.b"],
            "permissions": {"streams": true}, "exp": now + 7200
        });
        let c = iss
            .claims("n1", "00", &config, Some(&helper), day, now)
            .unwrap();
        assert_eq!(c.collectives, vec!["x"]);
        assert_eq!(c.ou, "acme");
        assert_eq!(c.pub_subjects, vec!["a.b"]);
        assert!(c.permissions.as_ref().is_some_and(|p| p.streams));
        assert_eq!(c.reg.exp, now + 7200);
        // under an hour: the configured validity
        let short = serde_json::json!({"exp": now + 60});
        let c = iss
            .claims("n1", "00", &config, Some(&short), day, now)
            .unwrap();
        assert_eq!(c.reg.exp, now + 86400);
    }

    #[test]
    fn the_proof_of_possession_must_verify() {
        let server = SigningKey::from_bytes(&[3u8; 32]);
        let reply = Ed25519Reply {
            public_key: hex::encode(server.verifying_key().as_bytes()),
            directory: "/etc/choria".into(),
            signature: hex::encode(server.sign(b"nonce-1").to_bytes()),
        };
        assert!(verify_proof(&reply, "nonce-1").is_ok());
        assert!(matches!(
            verify_proof(&reply, "nonce-2"),
            Err(IssuerError::BadProof)
        ));
        let garbage = Ed25519Reply {
            public_key: "zz".into(),
            ..reply.clone()
        };
        assert!(matches!(
            verify_proof(&garbage, "nonce-1"),
            Err(IssuerError::Reply(_))
        ));
        let short_sig = Ed25519Reply {
            signature: "00".into(),
            ..reply
        };
        assert!(matches!(
            verify_proof(&short_sig, "nonce-1"),
            Err(IssuerError::Reply(_))
        ));
    }

    #[test]
    fn chain_mode_names_the_chain_issuer_and_chains_the_signature() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("signer.seed");
        std::fs::write(&seed, hex::encode([6u8; 32])).unwrap();
        let signer_pk = hex::encode(
            SigningKey::from_bytes(&[6u8; 32])
                .verifying_key()
                .as_bytes(),
        );
        let token_file = dir.path().join("signer.jwt");
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let write_token = |claims: serde_json::Value| {
            std::fs::write(
                &token_file,
                format!(
                    "{}.{}.sig",
                    b64(serde_json::json!({"alg": "EdDSA"})),
                    b64(claims)
                ),
            )
            .unwrap();
        };
        let now = 1_800_000_000;
        write_token(
            serde_json::json!({"jti": "ci1", "public_key": signer_pk, "tcs": "aabb", "exp": now + 86400, "callerid": "choria=signer"}),
        );
        let iss = OrgIssuer::load_with_chain(&seed, Some(&token_file)).unwrap();
        let c = iss
            .claims(
                "n1",
                "00",
                &BTreeMap::new(),
                None,
                Duration::from_secs(365 * 86400),
                now,
            )
            .unwrap();
        assert_eq!(c.reg.iss, format!("C-ci1.{signer_pk}"));
        assert_eq!(c.reg.issexp, Some(now + 86400));
        // no later than the chain issuer
        assert_eq!(c.reg.exp, now + 86400);
        let tcs = c.reg.tcs.clone().unwrap();
        let (org_part, ours) = tcs.split_once('.').unwrap();
        assert_eq!(org_part, "aabb");
        let sig = Signature::from_slice(&hex::decode(ours).unwrap()).unwrap();
        SigningKey::from_bytes(&[6u8; 32])
            .verifying_key()
            .verify_strict(format!("{}.aabb", c.reg.jti).as_bytes(), &sig)
            .unwrap();
        // the same for our caller JWT
        let cc = iss
            .client_claims(
                "choria=p",
                &SigningKey::from_bytes(&[1u8; 32]).verifying_key(),
                Duration::from_secs(3600),
                now,
            )
            .unwrap();
        assert_eq!(cc.reg.iss, c.reg.iss);
        assert!(cc.reg.tcs.unwrap().starts_with("aabb."));
        // an expired chain issuer signs nothing
        assert!(matches!(
            iss.claims(
                "n1",
                "00",
                &BTreeMap::new(),
                None,
                Duration::from_secs(86400),
                now + 86400
            ),
            Err(IssuerError::ChainExpired(_))
        ));
        // tokens that cannot issue are refused at load, naming the problem
        for (claims, want) in [
            (
                serde_json::json!({"jti": "x", "public_key": signer_pk, "tcs": "", "exp": 1}),
                "tcs",
            ),
            (
                serde_json::json!({"jti": "x", "public_key": "11", "tcs": "aa", "exp": 1}),
                "not the key",
            ),
            (
                serde_json::json!({"jti": "x", "public_key": signer_pk}),
                "needs jti",
            ),
        ] {
            write_token(claims);
            match OrgIssuer::load_with_chain(&seed, Some(&token_file)) {
                Err(e) => assert!(e.to_string().contains(want), "{e}"),
                Ok(_) => panic!("accepted a token without {want}"),
            }
        }
        std::fs::write(&token_file, "garbage").unwrap();
        assert!(OrgIssuer::load_with_chain(&seed, Some(&token_file)).is_err());
    }

    #[test]
    fn seed_files_are_hex_and_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("issuer.seed");
        std::fs::write(&p, hex::encode([5u8; 32]) + "\n").unwrap();
        assert!(OrgIssuer::load(&p).is_ok());
        std::fs::write(&p, "nothex").unwrap();
        assert!(OrgIssuer::load(&p).is_err());
        std::fs::write(&p, hex::encode([5u8; 16])).unwrap();
        match OrgIssuer::load(&p) {
            Err(e) => assert!(e.to_string().contains("16 bytes"), "{e}"),
            Ok(_) => panic!("a 16-byte seed was accepted"),
        }
    }
}
