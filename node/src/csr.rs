//! Checking a server's certificate signing request (asked for in [`crate::pipeline::key`])
//! before anything signs it.
//!
//! A CSR is accepted when it is a PEM `CERTIFICATE REQUEST`, its self-signature verifies (the
//! server holds the key) with SHA-256 or stronger (RSA, ECDSA) or Ed25519, an RSA key has at
//! least 2048 bits, its key is one the CA can sign for, its one common name is the server's
//! identity, neither the common name nor any requested DNS name matches the deny list
//! (upstream's defaults refuse names that would pose as privileged clients), and it asks for
//! no extension but DNS names equal to the identity. Upstream's servers ask for none at all;
//! a CSR asking to be a CA, for key usages or for other names is an attack on a CA that copies
//! extensions (as `openssl x509 -copy_extensions` does), so it is refused here whatever signs it.

use regex::Regex;
use thiserror::Error;
use x509_parser::prelude::*;

use crate::rpc::RpcError;

const MAX_CSR_BYTES: usize = 64 * 1024;
/// Smallest RSA key signed, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Signature algorithms a CSR may use: sha256/384/512WithRSAEncryption,
/// ecdsa-with-SHA256/384/512 and Ed25519. SHA-1 is refused, as Go's x509 (upstream) does.
const SIGNATURE_OIDS: &[&str] = &[
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12",
    "1.2.840.113549.1.1.13",
    "1.2.840.10045.4.3.2",
    "1.2.840.10045.4.3.3",
    "1.2.840.10045.4.3.4",
    "1.3.101.112",
];

#[derive(Debug, Error)]
pub enum CsrError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("gencsr reply: {0}")]
    Reply(String),
    #[error("no CSR received")]
    Empty,
    #[error("CSR is not PEM: {0}")]
    Pem(String),
    #[error("CSR is not a certificate request: {0}")]
    Der(String),
    #[error("CSR signature does not verify: {0}")]
    Signature(String),
    #[error("CSR key or signature algorithm refused: {0}")]
    WeakKey(String),
    #[error("CSR has no common name")]
    NoCommonName,
    #[error("CSR has more than one common name")]
    SeveralCommonNames,
    #[error("common name {cn} does not match identity {identity}")]
    CommonNameMismatch { cn: String, identity: String },
    #[error("{name} matches denied certificate pattern {pattern}")]
    Denied { name: String, pattern: String },
    #[error("CSR asks for {0}; only DNS names equal to the identity may be requested")]
    Extension(String),
    #[error("CSR asks for the name {name}, not the identity {identity}")]
    NameMismatch { name: String, identity: String },
}

impl CsrError {
    /// Short reason for the `choria_provisioner_rejected` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::Rpc(_) | CsrError::Reply(_) => "csr_rpc",
            CsrError::Empty | CsrError::Pem(_) | CsrError::Der(_) => "csr_malformed",
            CsrError::Signature(_) => "csr_signature",
            CsrError::WeakKey(_) => "csr_weak_key",
            CsrError::NoCommonName | CsrError::SeveralCommonNames => "csr_cn",
            CsrError::CommonNameMismatch { .. } => "csr_cn",
            CsrError::Denied { .. } => "csr_denied",
            CsrError::Extension(_) => "csr_extension",
            CsrError::NameMismatch { .. } => "csr_name",
        }
    }
}

/// A CSR that passed every check.
#[derive(Debug, Clone)]
pub struct ValidCsr {
    pub pem: String,
    /// The requested public key (DER SubjectPublicKeyInfo), signed into the certificate
    /// without parsing and verifying the CSR a second time.
    pub spki_der: Vec<u8>,
    pub common_name: String,
    pub dns_names: Vec<String>,
}

/// Checks a PEM CSR for `identity` against the deny list.
pub fn validate(pem: &str, identity: &str, deny: &[Regex]) -> Result<ValidCsr, CsrError> {
    if pem.trim().is_empty() {
        return Err(CsrError::Empty);
    }
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::Pem(format!("{} bytes is too long", pem.len())));
    }
    let (_, block) = parse_x509_pem(pem.as_bytes()).map_err(|e| CsrError::Pem(e.to_string()))?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Pem(format!("PEM block is {:?}", block.label)));
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| CsrError::Der(e.to_string()))?;
    let alg = csr.signature_algorithm.algorithm.to_id_string();
    if !SIGNATURE_OIDS.contains(&alg.as_str()) {
        return Err(CsrError::WeakKey(format!("signature algorithm {alg}")));
    }
    let spki = &csr.certification_request_info.subject_pki;
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() {
        if rsa.key_size() < MIN_RSA_BITS {
            return Err(CsrError::WeakKey(format!(
                "RSA key of {} bits, {MIN_RSA_BITS} at least",
                rsa.key_size()
            )));
        }
    }
    csr.verify_signature()
        .map_err(|e| CsrError::Signature(e.to_string()))?;
    // the CA signs this key as it is; a key it cannot describe is refused here, not later
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::WeakKey(format!("public key: {e}")))?;

    let subject = &csr.certification_request_info.subject;
    let mut cns = subject.iter_common_name();
    let common_name = cns
        .next()
        .ok_or(CsrError::NoCommonName)?
        .as_str()
        .map_err(|e| CsrError::Der(format!("common name: {e}")))?
        .to_string();
    if cns.next().is_some() {
        return Err(CsrError::SeveralCommonNames);
    }
    if common_name != identity {
        return Err(CsrError::CommonNameMismatch {
            cn: common_name,
            identity: identity.to_string(),
        });
    }

    let dns_names = requested_dns_names(&csr)?;
    for name in std::iter::once(&common_name).chain(dns_names.iter()) {
        if let Some(re) = deny.iter().find(|re| re.is_match(name)) {
            return Err(CsrError::Denied {
                name: name.clone(),
                pattern: re.as_str().to_string(),
            });
        }
    }
    if let Some(other) = dns_names.iter().find(|n| !n.eq_ignore_ascii_case(identity)) {
        return Err(CsrError::NameMismatch {
            name: other.clone(),
            identity: identity.to_string(),
        });
    }

    Ok(ValidCsr {
        pem: pem.to_string(),
        spki_der: spki.raw.to_vec(),
        common_name,
        dns_names,
    })
}

/// The DNS names the CSR asks for; any other requested extension, or alternative name of
/// another kind, is an error.
fn requested_dns_names(csr: &X509CertificationRequest<'_>) -> Result<Vec<String>, CsrError> {
    let mut names = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CsrError::Extension(format!(
                    "extension {}",
                    ext.oid.to_id_string()
                )));
            };
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => names.push(d.to_string()),
                    other => {
                        return Err(CsrError::Extension(format!("the alternative name {other}")))
                    }
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::DEFAULT_DENY_LIST;

    fn deny() -> Vec<Regex> {
        DEFAULT_DENY_LIST
            .iter()
            .map(|p| Regex::new(p).unwrap())
            .collect()
    }

    fn make_csr(cn: &str, sans: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// A CSR made by `openssl req` with `args` (key and digest) for `cn`.
    pub(crate) fn openssl_csr(cn: &str, args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("openssl")
            .args(["req", "-new", "-nodes", "-subj", &format!("/CN={cn}")])
            .args(args)
            .arg("-keyout")
            .arg(dir.path().join("k.pem"))
            .output()
            .expect("openssl is installed (scripts/setup)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn sha1_signatures_and_short_rsa_keys_are_refused() {
        let id = "n1.example.net";
        let sha1 = openssl_csr(id, &["-newkey", "rsa:2048", "-sha1"]);
        let e = validate(&sha1, id, &[]).unwrap_err();
        assert!(matches!(e, CsrError::WeakKey(_)), "{e}");
        assert_eq!(e.reason(), "csr_weak_key");
        let short = openssl_csr(id, &["-newkey", "rsa:1024", "-sha256"]);
        let e = validate(&short, id, &[]).unwrap_err();
        assert!(e.to_string().contains("1024 bits"), "{e}");
        for ok in [
            &["-newkey", "rsa:2048", "-sha256"][..],
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-sha384",
            ],
            &["-newkey", "ed25519"],
        ] {
            let pem = openssl_csr(id, ok);
            validate(&pem, id, &[]).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn good_csr_passes() {
        let pem = make_csr("n1.example.net", &["n1.example.net"]);
        let v = validate(&pem, "n1.example.net", &deny()).unwrap();
        assert_eq!(v.common_name, "n1.example.net");
        assert_eq!(v.dns_names, vec!["n1.example.net"]);
    }

    #[test]
    fn common_name_must_be_the_identity() {
        let pem = make_csr("other.example.net", &[]);
        assert!(matches!(
            validate(&pem, "n1.example.net", &deny()),
            Err(CsrError::CommonNameMismatch { .. })
        ));
    }

    #[test]
    fn deny_list_covers_cn_and_sans() {
        let pem = make_csr("n1.privileged.choria", &[]);
        assert!(matches!(
            validate(&pem, "n1.privileged.choria", &deny()),
            Err(CsrError::Denied { .. })
        ));
        let pem = make_csr("n1.example.net", &["admin.mcollective"]);
        let err = validate(&pem, "n1.example.net", &deny()).unwrap_err();
        assert!(matches!(err, CsrError::Denied { ref name, .. } if name == "admin.mcollective"));
        assert_eq!(err.reason(), "csr_denied");
    }

    /// What a hostile server asks for, made with openssl as an attacker would.
    #[test]
    fn csrs_asking_for_extensions_or_other_names_are_refused() {
        let id = "n1.example.net";
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        let with = |ext: &str| {
            let mut args = ec.to_vec();
            args.extend(["-addext", ext]);
            openssl_csr(id, &args)
        };
        for (ext, want) in [
            ("basicConstraints=critical,CA:TRUE", "csr_extension"),
            ("keyUsage=critical,keyCertSign,cRLSign", "csr_extension"),
            ("extendedKeyUsage=serverAuth", "csr_extension"),
            ("subjectAltName=IP:10.0.0.1", "csr_extension"),
            ("subjectAltName=email:root@example.net", "csr_extension"),
            ("subjectAltName=DNS:n2.example.net", "csr_name"),
            (
                "subjectAltName=DNS:n1.example.net,DNS:*.example.net",
                "csr_name",
            ),
            ("subjectAltName=DNS:admin.privileged.choria", "csr_denied"),
        ] {
            let e = validate(&with(ext), id, &deny()).unwrap_err();
            assert_eq!(e.reason(), want, "{ext}: {e}");
        }
        // what upstream's servers send, and our own identity as a DNS name, pass
        validate(&openssl_csr(id, &ec), id, &deny()).unwrap();
        validate(&with("subjectAltName=DNS:N1.example.net"), id, &deny()).unwrap();
        // a subject with upstream's optional fields passes
        let out = std::process::Command::new("openssl")
            .args(["req", "-new", "-nodes", "-keyout", "/dev/null"])
            .args(ec)
            .args([
                "-subj",
                "/C=GB/L=London/O=Example/OU=Ops/ST=Greater London/CN=n1.example.net",
            ])
            .output()
            .unwrap();
        validate(&String::from_utf8(out.stdout).unwrap(), id, &deny()).unwrap();
    }

    #[test]
    fn bad_signature_is_rejected() {
        let pem = make_csr("n1.example.net", &[]);
        let (_, block) = parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents.clone();
        // flip a bit in the signature, at the end of the structure
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            validate(&tampered, "n1.example.net", &deny()),
            Err(CsrError::Signature(_))
        ));
        // and a changed subject no longer matches the signature either
        let mut der = block.contents.clone();
        if let Some(pos) = der.windows(2).position(|w| w == b"n1") {
            der[pos] = b'm';
        }
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            validate(&tampered, "m1.example.net", &deny()),
            Err(CsrError::Signature(_))
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        ] {
            assert!(validate(bad, "n1", &deny()).is_err(), "{bad}");
        }
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
