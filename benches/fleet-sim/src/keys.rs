//! Keys and CSRs as a server in provisioning mode makes them on `gencsr`.
//!
//! Upstream servers make a fresh RSA 2048 key per `gencsr`. RSA key generation costs tens to
//! hundreds of milliseconds, so large fleets may use ECDSA P-256 keys or a pool of keys made
//! before the run; the fleet reports which it used.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// RSA 2048, as upstream servers make
    Rsa2048,
    /// ECDSA P-256
    P256,
}

/// Makes one key of `kind`.
pub fn generate(kind: KeyType) -> Result<KeyPair, String> {
    match kind {
        KeyType::P256 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())
        }
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::PrivateKey::new(&mut rand::rng(), 2048).map_err(|e| e.to_string())?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| e.to_string())?;
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| e.to_string())
        }
    }
}

/// Where servers get their keys: fresh ones, or a shared pool made up front.
#[derive(Clone)]
pub struct KeySource {
    kind: KeyType,
    pool: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl KeySource {
    /// `pool_size` 0 makes a fresh key per request.
    pub fn new(kind: KeyType, pool_size: usize) -> Result<Self, String> {
        let pool = (0..pool_size)
            .map(|_| generate(kind).map(|k| k.serialize_pem()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeySource {
            kind,
            pool: Arc::new(pool),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn kind(&self) -> KeyType {
        self.kind
    }

    pub fn pool_size(&self) -> usize {
        self.pool.len()
    }

    pub fn key(&self) -> Result<KeyPair, String> {
        if self.pool.is_empty() {
            return generate(self.kind);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let alg = match self.kind {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        };
        KeyPair::from_pem_and_sign_algo(&self.pool[i], alg).map_err(|e| e.to_string())
    }
}

/// Subject fields of a `gencsr` request.
#[derive(Debug, Default, Clone)]
pub struct Subject {
    pub cn: String,
    pub country: String,
    pub locality: String,
    pub organization: String,
    pub organizational_unit: String,
    pub state: String,
    /// DNS names to request besides the common name.
    pub sans: Vec<String>,
    /// Ask to be a CA: basicConstraints `cA TRUE` and the keyCertSign and cRLSign usages, as
    /// a hostile server would.
    pub ca: bool,
}

/// A PEM CSR for `subject`, signed by `key`.
pub fn csr(key: &KeyPair, subject: &Subject) -> Result<String, String> {
    let mut params = CertificateParams::new(subject.sans.clone()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, subject.cn.as_str());
    for (kind, value) in [
        (DnType::CountryName, &subject.country),
        (DnType::LocalityName, &subject.locality),
        (DnType::OrganizationName, &subject.organization),
        (DnType::OrganizationalUnitName, &subject.organizational_unit),
        (DnType::StateOrProvinceName, &subject.state),
    ] {
        if !value.is_empty() {
            dn.push(kind, value.as_str());
        }
    }
    params.distinguished_name = dn;
    if subject.ca {
        let mut bc = rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 19],
            vec![0x30, 0x03, 0x01, 0x01, 0xff],
        );
        bc.set_criticality(true);
        params.custom_extensions.push(bc);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
    }
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_keys_round_robin() {
        let s = KeySource::new(KeyType::P256, 2).unwrap();
        let a = s.key().unwrap().public_key_raw().to_vec();
        let b = s.key().unwrap().public_key_raw().to_vec();
        let c = s.key().unwrap().public_key_raw().to_vec();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn csr_carries_the_subject() {
        let k = generate(KeyType::P256).unwrap();
        let pem = csr(
            &k,
            &Subject {
                cn: "n1.example.net".into(),
                country: "GB".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }
}
