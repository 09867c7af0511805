//! The built-in certificate authority: creates the CA (`provisioner ca init`), loads it, and
//! signs checked CSRs into server certificates.
//!
//! Issued certificates carry only what the provisioner decided: the identity as common name
//! and DNS name, client and server authentication usages, a 128-bit random serial and the
//! configured validity. Nothing the server asked for in its CSR beyond its public key is
//! copied. The CA key is written with mode 0600 and never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

mod error;

pub use error::{CaError, CertError, DescribeError, KeyGenError, SignError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256
    EcdsaP256,
    /// RSA 2048 with SHA-256
    Rsa2048,
}

/// The file names `ca init` writes into its directory.
pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca.key";

/// Creates a new CA in `dir`: `ca.pem` and `ca.key` (0600). Refuses to replace an existing
/// CA unless `force`.
pub fn init(
    dir: &Path,
    common_name: &str,
    key_type: KeyType,
    validity: Duration,
    force: bool,
) -> Result<(PathBuf, PathBuf), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(CaError::Exists { path: p.clone() });
            }
        }
    }
    let key = generate_key(key_type)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial().0);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + to_time(validity)?;
    let cert = params.self_signed(&key).map_err(sign)?;

    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn generate_key(key_type: KeyType) -> Result<KeyPair, CaError> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(keygen),
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::PrivateKey::new(&mut rand::rng(), 2048).map_err(keygen)?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(keygen)?;
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).map_err(keygen)
        }
    }
}

pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

fn keygen(e: impl Into<KeyGenError>) -> CaError {
    CaError::KeyGen(e.into())
}

fn sign(e: impl Into<SignError>) -> CaError {
    CaError::Sign(e.into())
}

fn to_time(d: Duration) -> Result<time::Duration, CaError> {
    time::Duration::try_from(d).map_err(|_| CaError::Validity(d))
}

/// Says "not a CA" in the one form DER allows: a critical basicConstraints that is an empty
/// SEQUENCE. rcgen 0.13's `IsCa::ExplicitNoCa` writes `cA FALSE` out, a DEFAULT value strict
/// parsers (Python's cryptography, Go) refuse (X.690 11.5); fixed in rcgen 0.14.
fn mark_not_a_ca(params: &mut CertificateParams) {
    params.is_ca = IsCa::NoCa;
    let mut bc = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    bc.set_criticality(true);
    params.custom_extensions.push(bc);
}

/// 16 random bytes, positive and without a leading zero byte, as RFC 5280 wants.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// A certificate issued by the CA, with what the ledger records about it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub pem: String,
    /// Lower-case hex.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A loaded CA, ready to sign.
pub struct Ca {
    cert_pem: String,
    /// The CA's name, key identifier and key usages, as its certificate on disk has them,
    /// with its key.
    issuer: rcgen::Issuer<'static, KeyPair>,
    validity: Duration,
}

impl Ca {
    pub fn load(cert_path: &Path, key_path: &Path, validity: Duration) -> Result<Self, CaError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| CaError::Io {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|source| CaError::Io {
            path: key_path.to_path_buf(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::BadKey {
            path: key_path.to_path_buf(),
            source,
        })?;
        let bad_cert = |source| CaError::BadCert {
            path: cert_path.to_path_buf(),
            source,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad_cert(CertError::Pem(e)))?;
        let parsed = pem.parse_x509().map_err(|e| bad_cert(CertError::X509(e)))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| bad_cert(CertError::Issuer(e)))?;
        Ok(Ca {
            cert_pem,
            issuer,
            validity,
        })
    }

    /// The CA certificate, handed to servers as `ca`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a certificate for `identity` with the public key of a CSR that
    /// [`crate::csr::validate`] checked (its `spki_der`).
    pub fn sign(&self, spki_der: &[u8], identity: &str) -> Result<Issued, CaError> {
        let public_key =
            SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| sign(SignError::PublicKey(e)))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity);
        params.subject_alt_names = vec![SanType::DnsName(
            identity
                .try_into()
                .map_err(|e| sign(SignError::Identity(e)))?,
        )];
        mark_not_a_ca(&mut params);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + to_time(self.validity)?;
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&public_key, &self.issuer).map_err(sign)?;
        Ok(Issued {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            pem: cert.pem(),
            serial: serial_hex,
            not_after,
        })
    }
}

impl Ca {
    /// A certificate and key (PEM) for cluster member `name`, for mutual TLS between members:
    /// the name (and any extra DNS names and IPs) as subject alternative names, client and
    /// server authentication.
    pub fn issue_member(
        &self,
        name: &str,
        dns: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(String, String), CaError> {
        let mut sans = Vec::new();
        for d in std::iter::once(name).chain(dns.iter().map(String::as_str)) {
            let dns_like = !d.is_empty()
                && d.len() <= 253
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !dns_like {
                return Err(sign(SignError::NotDnsName(d.to_string())));
            }
            sans.push(SanType::DnsName(d.try_into().map_err(|source| {
                sign(SignError::DnsName {
                    name: d.to_string(),
                    source,
                })
            })?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue_leaf(
            name,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate and key (PEM) for operator `name`, for the admin API.
    pub fn issue_admin(&self, name: &str) -> Result<(String, String), CaError> {
        let printable = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._@".contains(c));
        if !printable {
            return Err(sign(SignError::OperatorName(name.to_string())));
        }
        self.issue_leaf(name, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue_leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(keygen)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        mark_not_a_ca(&mut params);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = ekus;
        params.serial_number = Some(random_serial().0);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + to_time(self.validity)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(sign)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CRL (PEM) listing `revoked` (serial in hex, revocation time in Unix seconds), signed
    /// by the CA, valid for `next_update`.
    pub fn crl(
        &self,
        revoked: &[(String, i64)],
        number: u64,
        next_update: Duration,
    ) -> Result<String, CaError> {
        let mut certs = Vec::with_capacity(revoked.len());
        for (serial, at) in revoked {
            let bytes = hex::decode(serial).map_err(|source| {
                sign(SignError::Serial {
                    serial: serial.clone(),
                    source,
                })
            })?;
            certs.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: OffsetDateTime::from_unix_timestamp(*at)
                    .map_err(|source| sign(SignError::RevocationTime { at: *at, source }))?,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + to_time(next_update)?,
            // minimal big-endian bytes: DER integers carry no leading zero bytes
            crl_number: {
                let bytes = number.to_be_bytes();
                let first = bytes
                    .iter()
                    .position(|b| *b != 0)
                    .unwrap_or(bytes.len() - 1);
                SerialNumber::from_slice(&bytes[first..])
            },
            issuing_distribution_point: None,
            revoked_certs: certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|c| c.pem())
            .map_err(sign)
    }
}

/// Writes `pem` to `path` through a temporary file, so readers never see half a CRL. It is
/// world-readable on purpose, whatever the umask: whoever checks certificates needs it.
pub fn write_crl(path: &Path, pem: &str) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CaError::Io { path: p, source }
    };
    write_file(&tmp, pem.as_bytes(), 0o644)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes a member's certificate and key into `dir` as `<name>.pem` and `<name>.key` (0600).
pub fn write_member(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(PathBuf, PathBuf), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write_file(&key, key_pem.as_bytes(), 0o600)?;
    write_file(&cert, cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Serial, fingerprint and expiry of a PEM certificate, for certificates a helper returns.
pub fn describe(cert_pem: &str) -> Result<Issued, DescribeError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(DescribeError::Pem)?;
    if pem.label != "CERTIFICATE" {
        return Err(DescribeError::NotACertificate(pem.label));
    }
    let cert = pem.parse_x509().map_err(DescribeError::Certificate)?;
    Ok(Issued {
        pem: cert_pem.to_string(),
        serial: hex::encode(cert.raw_serial()),
        fingerprint: hex::encode(Sha256::digest(&pem.contents)),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    /// The checked public key of a fresh P-256 CSR for `cn`.
    fn csr(cn: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        crate::csr::validate(&pem, cn, &[]).unwrap().spki_der
    }

    /// A new P-256 CA named `name` in a temporary directory (kept while the test runs).
    fn test_ca(name: &str) -> (tempfile::TempDir, Ca) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = init(
            dir.path(),
            name,
            KeyType::EcdsaP256,
            Duration::from_secs(86400),
            false,
        )
        .unwrap();
        let ca = Ca::load(&cert, &key, Duration::from_secs(3600)).unwrap();
        (dir, ca)
    }

    #[test]
    fn rsa_csrs_from_openssl_are_signed_with_their_own_key() {
        let (_dir, ca) = test_ca("CA");
        let pem = crate::csr::tests::openssl_csr("n1.example.net", &["-newkey", "rsa:2048"]);
        let v = crate::csr::validate(&pem, "n1.example.net", &[]).unwrap();
        let issued = ca.sign(&v.spki_der, "n1.example.net").unwrap();
        verify_chain(ca.cert_pem(), &issued.pem, "n1.example.net");
        let (_, leaf) = parse_x509_pem(issued.pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        assert_eq!(leaf.public_key().raw, &v.spki_der[..]);
        assert!(ca.sign(b"not a key", "n1.example.net").is_err());
    }

    fn verify_chain(ca_pem: &str, leaf_pem: &str, identity: &str) {
        let (_, ca) = parse_x509_pem(ca_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        let (_, leaf) = parse_x509_pem(leaf_pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        let cn = leaf.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), identity);
        assert!(!leaf.is_ca());
    }

    #[test]
    fn init_load_sign_and_verify_both_key_types() {
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) =
                init(dir.path(), "Test CA", kt, Duration::from_secs(86400), false).unwrap();
            let mode = std::fs::metadata(&key).unwrap().permissions();
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(mode.mode() & 0o777, 0o600);
            let ca = Ca::load(&cert, &key, Duration::from_secs(3600)).unwrap();
            let issued = ca.sign(&csr("n1.example.net"), "n1.example.net").unwrap();
            verify_chain(ca.cert_pem(), &issued.pem, "n1.example.net");
            assert_eq!(issued.serial.len(), 32);
            let d = describe(&issued.pem).unwrap();
            assert_eq!(d.serial, issued.serial);
            assert_eq!(d.fingerprint, issued.fingerprint);
            assert_eq!(d.not_after, issued.not_after);
        }
    }

    #[test]
    fn member_certificates_name_the_member() {
        let (dir, ca) = test_ca("Cluster CA");
        let (pem, key_pem) = ca
            .issue_member(
                "prov1",
                &["prov1.example.net".into()],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        verify_chain(ca.cert_pem(), &pem, "prov1");
        let (c, k) = write_member(&dir.path().join("members"), "prov1", &pem, &key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(c.exists());
        assert!(ca.issue_member("bad name", &[], &[]).is_err());
    }

    fn der_of(pem: &str) -> Vec<u8> {
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    /// What a TLS peer (rustls-webpki) decides about `leaf` for `usage`, with `ca` its only
    /// trust anchor and `crl` checked when given.
    fn tls_verify(
        ca: &[u8],
        leaf: &[u8],
        usage: webpki::KeyUsage,
        crl: Option<&[u8]>,
    ) -> Result<(), webpki::Error> {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let ca = CertificateDer::from(ca.to_vec());
        let anchor = webpki::anchor_from_trusted_cert(&ca)?;
        let leaf = CertificateDer::from(leaf.to_vec());
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        let crl = crl
            .map(webpki::BorrowedCertRevocationList::from_der)
            .transpose()?
            .map(webpki::CertRevocationList::from);
        let crls: Vec<&webpki::CertRevocationList<'_>> = crl.iter().collect();
        let revocation = match crls.is_empty() {
            true => None,
            false => Some(
                webpki::RevocationOptionsBuilder::new(&crls)
                    .unwrap()
                    .build(),
            ),
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            usage,
            revocation,
            None,
        )
        .map(|_| ())
    }

    fn names(ee: &[u8], name: &str) -> Result<(), webpki::Error> {
        use rustls::pki_types::{CertificateDer, ServerName};
        let der = CertificateDer::from(ee.to_vec());
        let ee = webpki::EndEntityCert::try_from(&der)?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        ee.verify_is_valid_for_subject_name(&name)
    }

    /// Every kind of certificate the CA makes, and its CRL, read by a strict DER parser (the
    /// one Python's cryptography uses) and checked as a TLS peer checks them.
    #[test]
    fn everything_the_ca_makes_is_strict_der_and_verifies_as_a_tls_peer() {
        use proto::x509::{Certificate, KeyUsage as Ku, RevocationList};
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = init(
                dir.path(),
                "Strict CA",
                kt,
                Duration::from_secs(86400),
                false,
            )
            .unwrap();
            let ca = Ca::load(&cert, &key, Duration::from_secs(3600)).unwrap();
            let ca_der = der_of(ca.cert_pem());
            let c = Certificate::from_der(&ca_der).unwrap();
            assert!(c.is_ca, "{kt:?}");
            assert!(c.key_usage.unwrap().has(Ku::KEY_CERT_SIGN));
            assert!(c.key_usage.unwrap().has(Ku::CRL_SIGN));

            // a server's certificate: usable as TLS client (to the broker) and server
            let id = "n1.example.net";
            let server = der_of(&ca.sign(&csr(id), id).unwrap().pem);
            let c = Certificate::from_der(&server).unwrap();
            assert!(!c.is_ca);
            assert!(!c.key_usage.unwrap().has(Ku::KEY_CERT_SIGN));
            assert_eq!(
                (c.common_names.clone(), c.dns_names.clone()),
                (vec![id.to_string()], vec![id.to_string()])
            );
            tls_verify(&ca_der, &server, webpki::KeyUsage::client_auth(), None).unwrap();
            tls_verify(&ca_der, &server, webpki::KeyUsage::server_auth(), None).unwrap();
            names(&server, id).unwrap();
            assert!(names(&server, "n2.example.net").is_err());

            // a cluster member's: both ends of mutual TLS, by name and address
            let (member, _) = ca
                .issue_member(
                    "prov1",
                    &["prov1.example.net".into()],
                    &["127.0.0.1".parse().unwrap()],
                )
                .unwrap();
            let member = der_of(&member);
            let c = Certificate::from_der(&member).unwrap();
            assert!(!c.is_ca);
            assert_eq!(c.dns_names, vec!["prov1", "prov1.example.net"]);
            tls_verify(&ca_der, &member, webpki::KeyUsage::server_auth(), None).unwrap();
            tls_verify(&ca_der, &member, webpki::KeyUsage::client_auth(), None).unwrap();
            names(&member, "prov1.example.net").unwrap();
            names(&member, "127.0.0.1").unwrap();

            // an operator's: a client only
            let (op, _) = ca.issue_admin("ops-alice").unwrap();
            let op = der_of(&op);
            let c = Certificate::from_der(&op).unwrap();
            assert!(!c.is_ca && c.client_auth() && !c.server_auth());
            tls_verify(&ca_der, &op, webpki::KeyUsage::client_auth(), None).unwrap();
            assert!(tls_verify(&ca_der, &op, webpki::KeyUsage::server_auth(), None).is_err());

            // the CRL: read strictly, and a TLS peer refuses what it lists, and only that
            let serial = hex::encode(&c.serial);
            let crl = ca
                .crl(
                    &[(serial.clone(), 1_700_000_000)],
                    3,
                    Duration::from_secs(3600),
                )
                .unwrap();
            let crl = der_of(&crl);
            let parsed = RevocationList::from_der(&crl).unwrap();
            assert_eq!(parsed.revoked, vec![c.serial.clone()]);
            assert_eq!(parsed.crl_number, Some(vec![3]));
            assert!(matches!(
                tls_verify(&ca_der, &op, webpki::KeyUsage::client_auth(), Some(&crl)),
                Err(webpki::Error::CertRevoked)
            ));
            tls_verify(
                &ca_der,
                &server,
                webpki::KeyUsage::client_auth(),
                Some(&crl),
            )
            .unwrap();
        }
    }

    #[test]
    fn serials_differ() {
        let (_dir, ca) = test_ca("CA");
        let c = csr("n1");
        let a = ca.sign(&c, "n1").unwrap();
        let b = ca.sign(&c, "n1").unwrap();
        assert_ne!(a.serial, b.serial);
    }

    #[test]
    fn init_refuses_to_overwrite_and_load_checks_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = init(
            dir.path(),
            "CA",
            KeyType::EcdsaP256,
            Duration::from_secs(86400),
            false,
        )
        .unwrap();
        assert!(matches!(
            init(
                dir.path(),
                "CA",
                KeyType::EcdsaP256,
                Duration::from_secs(86400),
                false
            ),
            Err(CaError::Exists { .. })
        ));
        // a key from another CA does not match
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = init(
            other.path(),
            "CA2",
            KeyType::EcdsaP256,
            Duration::from_secs(86400),
            false,
        )
        .unwrap();
        assert!(matches!(
            Ca::load(&cert, &other_key, Duration::from_secs(60)),
            Err(CaError::KeyMismatch)
        ));
        std::fs::write(&cert, "garbage").unwrap();
        assert!(Ca::load(&cert, &key, Duration::from_secs(60)).is_err());
        assert!(describe("garbage").is_err());
    }

    #[test]
    fn admin_certificates_and_crls() {
        let (_dir, ca) = test_ca("Test CA");
        let (cert, _key) = ca.issue_admin("ops-alice").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let x = pem.parse_x509().unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(ca.issue_admin("no spaces").is_err());

        let crl = ca
            .crl(
                &[
                    ("4a01".into(), 1_700_000_000),
                    ("5b02".into(), 1_700_000_100),
                ],
                7,
                Duration::from_secs(3600),
            )
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(crl.as_bytes()).unwrap();
        assert_eq!(pem.label, "X509 CRL");
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
                .unwrap();
        let serials: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec!["4a01", "5b02"]);
        assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("7".into()));
        assert!(ca
            .crl(&[("zz".into(), 0)], 1, Duration::from_secs(60))
            .is_err());
    }
}
