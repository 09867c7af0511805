//! What a simulated server does with credentials: the key and CSR it makes on `gencsr`, the
//! ed25519 key it makes on `gen25519`, and everything it checks on `configure` (certificate
//! chain, names and key, server JWT, a delivered private key, policies) before it writes its
//! configuration.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use proto::agents::{ConfigureRequest, CsrReply, CsrRequest, MessageReply};
use proto::lifecycle::EventType;
use proto::rpc::StatusCode;
use rcgen::KeyPair;
use serde_json::Value;
use x509_parser::prelude::*;

use super::provision::to_value;
use super::{Report, SimServer, CONFIG_FILE, SSL_DIR};
use crate::faults::Fault;
use crate::keys::{self, Subject};

impl SimServer {
    pub(super) fn gencsr(&self, args: CsrRequest) -> Result<Value, String> {
        let key = self.spec.keys.key()?;
        let cn = if args.cn.is_empty() {
            self.spec.identity.clone()
        } else {
            args.cn
        };
        let mut subject = Subject {
            cn,
            country: args.country,
            locality: args.locality,
            organization: args.organization,
            organizational_unit: args.organizational_unit,
            state: args.state,
            sans: vec![],
            ca: false,
        };
        let count = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| "state poisoned".to_string())?;
            st.csr_count += 1;
            st.csr_count
        };
        let mut pem = None;
        if self.spec.fault == Some(Fault::BadCsr) {
            match (self.spec.index + count as usize) % 4 {
                0 => subject.cn = format!("impostor.{}", self.spec.identity),
                1 => subject.sans = vec!["admin.privileged.choria".into()],
                2 => subject.ca = true,
                _ => pem = Some(corrupt(&keys::csr(&key, &subject)?)?),
            }
        }
        let pem = match pem {
            Some(p) => p,
            None => keys::csr(&key, &subject)?,
        };
        let public_key = key.public_key_pem();
        if let Ok(mut st) = self.state.lock() {
            st.key = Some(key);
        }
        to_value(&CsrReply {
            csr: pem,
            public_key,
            ssldir: SSL_DIR.into(),
        })
        .map_err(|(_, m)| m)
    }

    pub(super) async fn configure(
        &self,
        args: ConfigureRequest,
    ) -> Result<Value, (StatusCode, String)> {
        let refuse = |msg: String| {
            self.counters
                .configure_refused
                .fetch_add(1, Ordering::Relaxed);
            Err((StatusCode::Aborted, msg))
        };
        if args.config.is_empty() {
            return refuse("Did not receive any configuration to write, cannot write a empty configuration file".into());
        }
        if !args.key.is_empty() && args.ecdh_public.is_empty() {
            return refuse("EDCH Public Key not supplied while providing a private key".into());
        }
        // a delivered key replaces the one made on gencsr, as upstream writes it over it
        let mut delivered = None;
        if !args.key.is_empty() {
            let secret = self.state.lock().ok().and_then(|s| s.ecdh.clone());
            let Some(secret) = secret else {
                return refuse("could not decrypt private key: private key not set".into());
            };
            let der = match crate::keyrecv::receive(&args.key, &secret, &args.ecdh_public) {
                Ok(d) => d,
                Err(e) => return refuse(format!("could not decrypt private key: {e}")),
            };
            match KeyPair::try_from(der.as_slice()) {
                Ok(k) => delivered = Some(k.public_key_raw().to_vec()),
                Err(e) => return refuse(format!("the delivered key is not a private key: {e}")),
            }
        }
        let settings: BTreeMap<String, String> = match serde_json::from_str(&args.config) {
            Ok(s) => s,
            Err(e) => return refuse(format!("Could not decode configuration data: {e}")),
        };
        for (k, suffix) in args
            .action_policies
            .keys()
            .map(|k| (k, ".policy"))
            .chain(args.opa_policies.keys().map(|k| (k, ".rego")))
        {
            if !k.ends_with(suffix) {
                return refuse(format!("expected {k:?} to have {suffix} extension"));
            }
        }
        let mut serial = None;
        let mut verified = false;
        if let (Some(ca), false) = (&self.spec.expect_ca, args.certificate.is_empty()) {
            if args.ca.trim() != ca.trim() {
                return refuse("TLS Setup Failed: the CA is not the one this server trusts".into());
            }
        }
        if !args.certificate.is_empty() && !args.ssldir.is_empty() && !args.ca.is_empty() {
            let key_raw = delivered.clone().or_else(|| {
                self.state
                    .lock()
                    .ok()
                    .and_then(|s| s.key.as_ref().map(|k| k.public_key_raw().to_vec()))
            });
            match verify_certificate(
                &args.certificate,
                &args.ca,
                key_raw.as_deref(),
                &self.spec.identity,
            ) {
                Ok(s) => {
                    serial = Some(s);
                    verified = true;
                }
                Err(e) => {
                    if matches!(e, CertRefusal::IsCa) {
                        self.counters
                            .ca_certificates
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return refuse(format!("TLS Setup Failed: {e}"));
                }
            }
        }
        if !args.server_jwt.is_empty() {
            match self.check_server_jwt(&args.server_jwt) {
                Ok(Some(jti)) => {
                    serial = Some(jti);
                    verified = true;
                }
                Ok(None) => {}
                Err(e) => return refuse(format!("invalid server JWT: {e}")),
            }
        }
        let lines = settings.len() + 1;
        let delivered_serial = serial.clone();
        let again = {
            let Ok(mut st) = self.state.lock() else {
                return refuse("state poisoned".into());
            };
            st.config = Some(settings);
            st.certificate = Some(args.certificate);
            st.policies = args
                .action_policies
                .into_iter()
                .chain(args.opa_policies)
                .collect();
            if !st.policies.is_empty() {
                self.counters
                    .policies_stored
                    .fetch_add(1, Ordering::Relaxed);
            }
            if delivered.is_some() {
                self.counters.keys_delivered.fetch_add(1, Ordering::Relaxed);
            }
            st.serial = serial;
            st.verified = verified;
            st.configure_count += 1;
            st.configure_count > 1
        };
        self.counters.configures.fetch_add(1, Ordering::Relaxed);
        if let Some(serial) = delivered_serial {
            let _ = self.reports.send(Report::Delivered {
                index: self.spec.index,
                serial,
            });
        }
        if again {
            let _ = self.reports.send(Report::Reconfigured {
                index: self.spec.index,
            });
        }
        self.publish_event(EventType::Provisioned).await;
        to_value(&MessageReply {
            message: format!("Wrote {lines} lines to {CONFIG_FILE}"),
        })
    }

    /// Upstream's gen25519: a new ed25519 key, and the nonce signed with it.
    pub(super) fn gen25519(&self, nonce: &str) -> Result<Value, (StatusCode, String)> {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
        let reply = proto::agents::Ed25519Reply {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            directory: "/etc/choria".into(),
            signature: hex::encode(key.sign(nonce.as_bytes()).to_bytes()),
        };
        if let Ok(mut st) = self.state.lock() {
            st.ed_key = Some(key);
        }
        to_value(&reply)
    }

    /// Checks a server JWT against the expected issuer (directly or through a chain issuer):
    /// EdDSA signature, purpose, this server's identity and gen25519 key. `Ok(Some(jti))` when verified, `Ok(None)` when no
    /// issuer is expected.
    pub(super) fn check_server_jwt(&self, jwt: &str) -> Result<Option<String>, String> {
        let Some(issuer) = &self.spec.expect_issuer else {
            return Ok(None);
        };
        let claims = crate::trust::verify_jwt(jwt, issuer, "choria_server")?;
        if claims["identity"] != self.spec.identity.as_str() {
            return Err(format!("identity is {}", claims["identity"]));
        }
        let mine = self
            .state
            .lock()
            .ok()
            .and_then(|s| {
                s.ed_key
                    .as_ref()
                    .map(|k| hex::encode(k.verifying_key().as_bytes()))
            })
            .ok_or("no gen25519 key was made")?;
        if claims["public_key"] != mine.as_str() {
            return Err("public_key is not this server's key".into());
        }
        Ok(claims["jti"].as_str().map(String::from))
    }
}

/// Flips one bit of the CSR's signature so it no longer verifies.
fn corrupt(pem: &str) -> Result<String, String> {
    let (_, block) = parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut der = block.contents;
    if let Some(last) = der.last_mut() {
        *last ^= 0x01;
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    Ok(out)
}

/// Why a server refuses a delivered certificate.
#[derive(Debug)]
pub enum CertRefusal {
    /// The certificate would make this server a CA (or let it sign certificates or CRLs).
    IsCa,
    Other(String),
}

impl std::fmt::Display for CertRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertRefusal::IsCa => f.write_str("the certificate is a CA certificate"),
            CertRefusal::Other(m) => f.write_str(m),
        }
    }
}

/// Checks a delivered certificate as a server that will use it for mTLS needs it: strict DER
/// (what Go's and Python's parsers accept), not a CA, accepted by a TLS peer (rustls-webpki)
/// as a client certificate chaining to the delivered CA, for this identity, and for the key
/// made on `gencsr`. Returns the certificate's serial (hex).
pub fn verify_certificate(
    cert_pem: &str,
    ca_pem: &str,
    key_raw: Option<&[u8]>,
    identity: &str,
) -> Result<String, CertRefusal> {
    let other = CertRefusal::Other;
    let (_, ca_block) = parse_x509_pem(ca_pem.as_bytes()).map_err(|e| other(format!("CA: {e}")))?;
    let (_, leaf_block) =
        parse_x509_pem(cert_pem.as_bytes()).map_err(|e| other(format!("certificate: {e}")))?;
    proto::x509::Certificate::from_der(&ca_block.contents)
        .map_err(|e| other(format!("CA is not strict DER: {e}")))?;
    let leaf = proto::x509::Certificate::from_der(&leaf_block.contents)
        .map_err(|e| other(format!("certificate is not strict DER: {e}")))?;
    use proto::x509::KeyUsage as Ku;
    let signs = leaf
        .key_usage
        .is_some_and(|k| k.has(Ku::KEY_CERT_SIGN) || k.has(Ku::CRL_SIGN));
    if leaf.is_ca || signs {
        return Err(CertRefusal::IsCa);
    }

    // the chain and the usage, as the broker checks this server's client certificate
    use rustls_pki_types::{CertificateDer, UnixTime};
    let ca_der = CertificateDer::from(ca_block.contents.clone());
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)
        .map_err(|e| other(format!("CA is not a trust anchor: {e}")))?;
    let leaf_der = CertificateDer::from(leaf_block.contents.clone());
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| other(format!("certificate: {e}")))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        other(format!(
            "certificate does not verify with the CA as a client certificate: {e}"
        ))
    })?;

    if leaf.common_names != [identity] {
        return Err(other(format!(
            "certificate is for {:?}, not {identity:?}",
            leaf.common_names
        )));
    }
    let key = key_raw.ok_or(other("no key was made with gencsr".into()))?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&leaf.spki_der)
        .map_err(|e| other(format!("certificate key: {e}")))?;
    if spki.subject_public_key.data.as_ref() != key {
        return Err(other("certificate does not match the private key".into()));
    }
    Ok(hex::encode(&leaf.serial))
}
