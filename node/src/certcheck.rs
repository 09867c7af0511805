//! What a certificate from the helper must be before the ledger records it and the server
//! receives it.
//!
//! With an external CA the helper signs (upstream's contract: it returns `certificate` and
//! `ca`), and a helper that signs whatever a CSR asks for hands out sub-CAs or other servers'
//! names. So its answer is held to what the built-in CA would have issued:
//!
//! - not a CA: no basicConstraints `cA TRUE`, no keyCertSign or cRLSign usage;
//! - names only the server: exactly one common name, the identity, and DNS alternative names
//!   equal to it, nothing else (no IP, e-mail or URI names);
//! - no name on the deny list;
//! - carries the key the server will use: the CSR's, or the private key the helper returns;
//! - signed by a certificate in the `ca` the helper returned, the one the server will trust;
//! - valid now.

use regex::Regex;
use thiserror::Error;
use x509_parser::prelude::*;

use crate::ca::{self, Issued};

/// Clock difference tolerated on `notBefore`: a CA a little ahead of us is not an error.
const NOT_BEFORE_SKEW_S: i64 = 300;

#[derive(Debug, Error)]
pub enum HelperCertError {
    #[error("helper certificate is not a PEM certificate: {0}")]
    Malformed(String),
    #[error("helper certificate is a CA certificate")]
    IsCa,
    #[error("helper certificate may sign certificates or CRLs (keyCertSign or cRLSign)")]
    SignsCertificates,
    #[error("helper certificate names {name}, not only {identity}")]
    WrongName { name: String, identity: String },
    #[error("helper certificate name {name} matches denied pattern {pattern}")]
    Denied { name: String, pattern: String },
    #[error("helper certificate is not for the server's key ({0})")]
    WrongKey(&'static str),
    #[error("the helper's key cannot be read: {0}")]
    BadKey(String),
    #[error("helper certificate is not signed by the CA the helper returned")]
    NotFromCa,
    #[error("helper certificate is not valid now (valid {not_before} to {not_after})")]
    NotValidNow { not_before: i64, not_after: i64 },
}

impl HelperCertError {
    /// Short reason for the `choria_provisioner_rejected` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            HelperCertError::Malformed(_) => "helper_cert_malformed",
            HelperCertError::IsCa | HelperCertError::SignsCertificates => "helper_cert_ca",
            HelperCertError::WrongName { .. } => "helper_cert_name",
            HelperCertError::Denied { .. } => "helper_cert_denied",
            HelperCertError::WrongKey(_) | HelperCertError::BadKey(_) => "helper_cert_key",
            HelperCertError::NotFromCa => "helper_cert_chain",
            HelperCertError::NotValidNow { .. } => "helper_cert_validity",
        }
    }
}

/// What the certificate must match.
pub struct Expected<'a> {
    pub identity: &'a str,
    /// The server's public key as the certificate's subjectPublicKey carries it; `None` when
    /// nothing tells which key the server holds (no CSR and no key from the helper).
    pub public_key: Option<&'a [u8]>,
    pub deny: &'a [Regex],
    /// Unix seconds.
    pub now: i64,
}

/// Checks the helper's `cert_pem` against `ca_pem` and what is expected; returns what the
/// ledger records about it.
pub fn check(cert_pem: &str, ca_pem: &str, want: &Expected<'_>) -> Result<Issued, HelperCertError> {
    let issued = ca::describe(cert_pem).map_err(|e| HelperCertError::Malformed(e.to_string()))?;
    let (_, block) = parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| HelperCertError::Malformed(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&block.contents)
        .map_err(|e| HelperCertError::Malformed(e.to_string()))?;

    if cert.is_ca() {
        return Err(HelperCertError::IsCa);
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(HelperCertError::SignsCertificates);
        }
    }

    let wrong = |name: String| HelperCertError::WrongName {
        name,
        identity: want.identity.to_string(),
    };
    let mut names = Vec::new();
    for cn in cert.subject().iter_common_name() {
        names.push(
            cn.as_str()
                .map_err(|e| HelperCertError::Malformed(format!("common name: {e}")))?
                .to_string(),
        );
    }
    if names.len() != 1 {
        return Err(wrong(format!("{} common names", names.len())));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| HelperCertError::Malformed(format!("subject alternative name: {e}")))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => names.push(d.to_string()),
            other => return Err(wrong(other.to_string())),
        }
    }
    for name in &names {
        if let Some(re) = want.deny.iter().find(|re| re.is_match(name)) {
            return Err(HelperCertError::Denied {
                name: name.clone(),
                pattern: re.as_str().to_string(),
            });
        }
        if !name.eq_ignore_ascii_case(want.identity) {
            return Err(wrong(name.clone()));
        }
    }

    if let Some(key) = want.public_key {
        if cert.public_key().subject_public_key.data.as_ref() != key {
            return Err(HelperCertError::WrongKey(
                "its public key is not the one the server will use",
            ));
        }
    }

    let signed_by_ca = Pem::iter_from_buffer(ca_pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|pem| {
            X509Certificate::from_der(&pem.contents)
                .ok()
                .map(|(_, c)| (c.subject().as_raw().to_vec(), c.public_key().raw.to_vec()))
        })
        .any(|(subject, spki)| {
            subject == cert.issuer().as_raw()
                && SubjectPublicKeyInfo::from_der(&spki)
                    .is_ok_and(|(_, key)| cert.verify_signature(Some(&key)).is_ok())
        });
    if !signed_by_ca {
        return Err(HelperCertError::NotFromCa);
    }

    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if not_before > want.now + NOT_BEFORE_SKEW_S || not_after <= want.now {
        return Err(HelperCertError::NotValidNow {
            not_before,
            not_after,
        });
    }
    Ok(issued)
}

/// The subjectPublicKey (as a certificate carries it) of a private key in PEM: PKCS#8
/// (`PRIVATE KEY`, what `openssl req -newkey` and `genpkey` write) or PKCS#1 RSA.
pub fn public_key_of(key_pem: &str) -> Result<Vec<u8>, HelperCertError> {
    if let Ok(k) = rcgen::KeyPair::from_pem(key_pem) {
        return Ok(k.public_key_raw().to_vec());
    }
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPublicKey};
    let rsa = rsa::PrivateKey::from_pkcs1_pem(key_pem).map_err(|_| {
        HelperCertError::BadKey("neither a PKCS#8 private key nor a PKCS#1 RSA key".into())
    })?;
    rsa.to_public_key()
        .to_pkcs1_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| HelperCertError::BadKey(e.to_string()))
}

/// The subjectPublicKey inside a DER SubjectPublicKeyInfo (a checked CSR's `spki_der`).
pub fn public_key_in(spki_der: &[u8]) -> Option<Vec<u8>> {
    SubjectPublicKeyInfo::from_der(spki_der)
        .ok()
        .map(|(_, spki)| spki.subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DENY_LIST;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    const ID: &str = "n1.example.net";
    const NOW: i64 = 1_800_000_000;

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.clone().self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    fn leaf_params(cn: &str, sans: &[&str]) -> CertificateParams {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = ::time::OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap();
        p.not_after = ::time::OffsetDateTime::from_unix_timestamp(NOW + 86_400).unwrap();
        p
    }

    fn signed(ca: &Ca, p: CertificateParams, key: &KeyPair) -> String {
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        p.signed_by(key, &issuer).unwrap().pem()
    }

    fn deny() -> Vec<Regex> {
        DEFAULT_DENY_LIST
            .iter()
            .map(|p| Regex::new(p).unwrap())
            .collect()
    }

    fn run(cert: &str, ca: &str, key: &KeyPair) -> Result<Issued, HelperCertError> {
        let deny = deny();
        check(
            cert,
            ca,
            &Expected {
                identity: ID,
                public_key: Some(key.public_key_raw()),
                deny: &deny,
                now: NOW,
            },
        )
    }

    #[test]
    fn a_plain_server_certificate_passes() {
        let ca = ca("Ext CA");
        let key = KeyPair::generate().unwrap();
        let cert = signed(&ca, leaf_params(ID, &[ID]), &key);
        let issued = run(&cert, &ca.pem, &key).unwrap();
        assert_eq!(issued.pem, cert);
        // a bundle holding the issuing CA among others works too
        let other = ca_pem_of("Other CA");
        run(&cert, &format!("{other}{}", ca.pem), &key).unwrap();
    }

    fn ca_pem_of(name: &str) -> String {
        ca(name).pem
    }

    #[test]
    fn every_kind_of_wrong_certificate_is_refused_with_its_reason() {
        let ca = ca("Ext CA");
        let key = KeyPair::generate().unwrap();
        let sign = |p: CertificateParams| signed(&ca, p, &key);
        let mut as_ca = leaf_params(ID, &[ID]);
        as_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut signer = leaf_params(ID, &[ID]);
        signer.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let mut with_ip = leaf_params(ID, &[ID]);
        with_ip
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
        let mut expired = leaf_params(ID, &[ID]);
        expired.not_after = ::time::OffsetDateTime::from_unix_timestamp(NOW - 1).unwrap();
        let mut early = leaf_params(ID, &[ID]);
        early.not_before = ::time::OffsetDateTime::from_unix_timestamp(NOW + 3600).unwrap();
        let mut two_cns = leaf_params(ID, &[ID]);
        two_cns
            .distinguished_name
            .push(DnType::CommonName, "n2.example.net");
        let other_key = KeyPair::generate().unwrap();
        let cases: Vec<(&str, String, String)> = vec![
            ("helper_cert_ca", sign(as_ca), ca.pem.clone()),
            ("helper_cert_ca", sign(signer), ca.pem.clone()),
            (
                "helper_cert_name",
                sign(leaf_params("n2.example.net", &[])),
                ca.pem.clone(),
            ),
            (
                "helper_cert_name",
                sign(leaf_params(ID, &[ID, "n2.example.net"])),
                ca.pem.clone(),
            ),
            ("helper_cert_name", sign(with_ip), ca.pem.clone()),
            ("helper_cert_name", sign(two_cns), ca.pem.clone()),
            (
                "helper_cert_denied",
                sign(leaf_params(ID, &["admin.privileged.choria"])),
                ca.pem.clone(),
            ),
            (
                "helper_cert_key",
                signed(&ca, leaf_params(ID, &[ID]), &other_key),
                ca.pem.clone(),
            ),
            (
                "helper_cert_chain",
                sign(leaf_params(ID, &[ID])),
                ca_pem_of("Ext CA"),
            ),
            ("helper_cert_validity", sign(expired), ca.pem.clone()),
            ("helper_cert_validity", sign(early), ca.pem.clone()),
            (
                "helper_cert_malformed",
                "not a certificate".into(),
                ca.pem.clone(),
            ),
        ];
        for (want, cert, ca_pem) in cases {
            let e = run(&cert, &ca_pem, &key).unwrap_err();
            assert_eq!(e.reason(), want, "{e}");
        }
    }

    #[test]
    fn keys_from_openssl_give_their_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let to = path.display().to_string();
        for args in [
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &to,
            ],
            vec![
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &to,
            ],
            vec!["genrsa", "-traditional", "-out", &to, "2048"],
        ] {
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let pem = std::fs::read_to_string(&path).unwrap();
            let pubkey = public_key_of(&pem).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            // the same key as openssl's own public key file says
            let spki = std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&path)
                .output()
                .unwrap()
                .stdout;
            assert_eq!(public_key_in(&spki).unwrap(), pubkey, "{args:?}");
        }
        assert!(public_key_of("garbage").is_err());
    }

    /// The shipped external-CA helper, given a CSR that asks to be a CA and for other names,
    /// returns a plain certificate for the identity only, which passes these checks.
    #[test]
    fn the_external_ca_example_signs_a_hostile_csr_as_a_plain_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(d)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-subj", "/CN=Ext CA", "-days", "2"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-new", "-subj", "/CN=n1.example.net/O=x"][..],
                &ec,
                &[
                    "-keyout",
                    "s.key",
                    "-out",
                    "s.csr",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-addext",
                    "subjectAltName=DNS:admin.privileged.choria,IP:10.0.0.1",
                ],
            ]
            .concat(),
        );
        let csr = std::fs::read_to_string(d.join("s.csr")).unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/helper-external-ca.py"
        );
        let run = |identity: &str| {
            use std::io::Write;
            let mut child = std::process::Command::new("python3")
                .arg(script)
                .env("EXTERNAL_CA_CERT", d.join("ca.pem"))
                .env("EXTERNAL_CA_KEY", d.join("ca.key"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let input =
                serde_json::json!({"identity": identity, "csr": {"csr": csr, "ssldir": "/x"}});
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.to_string().as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        };
        let out = run(ID);
        assert!(out.status.success(), "{out:?}");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cert = answer["certificate"].as_str().unwrap();
        let (_, block) = parse_x509_pem(cert.as_bytes()).unwrap();
        let strict = proto::x509::Certificate::from_der(&block.contents).unwrap();
        assert!(!strict.is_ca);
        assert_eq!(strict.dns_names, vec![ID]);
        assert!(strict.ip_addresses.is_empty());
        let ku = strict.key_usage.unwrap();
        assert!(!ku.has(proto::x509::KeyUsage::KEY_CERT_SIGN));
        // and our checks take it, with the CSR's key
        let spki =
            X509CertificationRequest::from_der(&parse_x509_pem(csr.as_bytes()).unwrap().1.contents)
                .unwrap()
                .1
                .certification_request_info
                .subject_pki
                .raw
                .to_vec();
        let deny = deny();
        check(
            cert,
            answer["ca"].as_str().unwrap(),
            &Expected {
                identity: ID,
                public_key: public_key_in(&spki).as_deref(),
                deny: &deny,
                now: proto::unix_now(),
            },
        )
        .unwrap();
        // an identity that is not a host name never reaches openssl
        let out = run("n1.example.net/O=admins");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a host name"));
    }
}
