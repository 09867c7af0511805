//! X.509 certificates and CRLs (RFC 5280) read strictly as DER (X.690), the way the strictest
//! TLS peers read them: Python's `cryptography` (through the same `asn1` crate), Go, mozilla::pkix.
//!
//! The certificates the provisioner hands out travel in `choria_provision#configure` and end up
//! in every server's TLS stack, so they are a wire format like the envelopes: a certificate a
//! lenient parser (OpenSSL, x509-parser) takes but a strict one refuses is a broken delivery.
//! Strict here means: every length, integer and boolean in its one DER form, nothing left over,
//! no `DEFAULT` value encoded (X.690 11.5: `cA FALSE` or `critical FALSE` written out is an
//! error), times in their DER forms, no extension twice and no critical extension this module
//! does not know.
//!
//! [`Certificate::from_der`] and [`RevocationList::from_der`] return what a peer decides on:
//! names, whether it is a CA, key usages, validity, serials. Nothing here checks signatures;
//! that is the TLS peer's job (the tests use rustls-webpki).

// The derived readers return the asn1 crate's own (large) ParseError; nothing here is hot.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;

use asn1::SimpleAsn1Readable;
use thiserror::Error;

/// Why a certificate or CRL is refused.
#[derive(Debug, Error)]
pub enum X509Error {
    /// Not DER, or not the structure RFC 5280 describes; `location` names the field.
    #[error("not a DER {what}: {source}")]
    Der {
        what: &'static str,
        #[source]
        source: Box<asn1::ParseError>,
    },
    #[error("extension {oid} appears more than once")]
    DuplicateExtension { oid: String },
    #[error("critical extension {oid} is not understood")]
    UnknownCriticalExtension { oid: String },
    #[error("{0}")]
    Invalid(&'static str),
}

fn der(what: &'static str) -> impl Fn(asn1::ParseError) -> X509Error {
    move |source| X509Error::Der {
        what,
        source: Box::new(source),
    }
}

// ---- RFC 5280 structures, as the asn1 crate reads them ----

#[derive(asn1::Asn1Read)]
struct RawCertificate<'a> {
    tbs: TbsCertificate<'a>,
    _signature_algorithm: AlgorithmIdentifier<'a>,
    _signature: asn1::BitString<'a>,
}

#[derive(asn1::Asn1Read)]
struct TbsCertificate<'a> {
    #[explicit(0)]
    #[default(0u8)]
    version: u8,
    serial: asn1::BigInt<'a>,
    _signature: AlgorithmIdentifier<'a>,
    _issuer: Name<'a>,
    validity: Validity,
    subject: Name<'a>,
    spki: asn1::Tlv<'a>,
    #[implicit(1)]
    _issuer_unique_id: Option<asn1::BitString<'a>>,
    #[implicit(2)]
    _subject_unique_id: Option<asn1::BitString<'a>>,
    #[explicit(3)]
    extensions: Option<asn1::SequenceOf<'a, Extension<'a>>>,
}

#[derive(asn1::Asn1Read)]
struct AlgorithmIdentifier<'a> {
    _algorithm: asn1::ObjectIdentifier,
    _parameters: Option<asn1::Tlv<'a>>,
}

type Name<'a> = asn1::SequenceOf<'a, asn1::SetOf<'a, AttributeTypeAndValue<'a>>>;

#[derive(asn1::Asn1Read)]
struct AttributeTypeAndValue<'a> {
    kind: asn1::ObjectIdentifier,
    value: asn1::Tlv<'a>,
}

#[derive(asn1::Asn1Read)]
struct Validity {
    not_before: Time,
    not_after: Time,
}

#[derive(asn1::Asn1Read)]
enum Time {
    Utc(asn1::UtcTime),
    Generalized(asn1::X509GeneralizedTime),
}

#[derive(asn1::Asn1Read)]
struct Extension<'a> {
    id: asn1::ObjectIdentifier,
    #[default(false)]
    critical: bool,
    value: &'a [u8],
}

#[derive(asn1::Asn1Read)]
struct BasicConstraints {
    #[default(false)]
    ca: bool,
    _path_len: Option<u64>,
}

#[derive(asn1::Asn1Read)]
enum GeneralName<'a> {
    #[implicit(1)]
    Rfc822(asn1::IA5String<'a>),
    #[implicit(2)]
    Dns(asn1::IA5String<'a>),
    #[implicit(6)]
    Uri(asn1::IA5String<'a>),
    #[implicit(7)]
    Ip(&'a [u8]),
}

#[derive(asn1::Asn1Read)]
struct AuthorityKeyIdentifier<'a> {
    #[implicit(0)]
    _key_identifier: Option<&'a [u8]>,
    #[implicit(1)]
    _issuer: Option<asn1::SequenceOf<'a, GeneralName<'a>>>,
    #[implicit(2)]
    _serial: Option<asn1::BigUint<'a>>,
}

#[derive(asn1::Asn1Read)]
struct RawCertificateList<'a> {
    tbs: TbsCertList<'a>,
    _signature_algorithm: AlgorithmIdentifier<'a>,
    _signature: asn1::BitString<'a>,
}

#[derive(asn1::Asn1Read)]
struct TbsCertList<'a> {
    _version: Option<u8>,
    _signature: AlgorithmIdentifier<'a>,
    _issuer: Name<'a>,
    this_update: Time,
    next_update: Option<Time>,
    revoked: Option<asn1::SequenceOf<'a, RevokedCertificate<'a>>>,
    #[explicit(0)]
    extensions: Option<asn1::SequenceOf<'a, Extension<'a>>>,
}

#[derive(asn1::Asn1Read)]
struct RevokedCertificate<'a> {
    serial: asn1::BigInt<'a>,
    _revocation_date: Time,
    extensions: Option<asn1::SequenceOf<'a, Extension<'a>>>,
}

// ---- object identifiers ----

const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_SUBJECT_KEY_ID: &str = "2.5.29.14";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SUBJECT_ALT_NAME: &str = "2.5.29.17";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_CRL_NUMBER: &str = "2.5.29.20";
const OID_CRL_REASON: &str = "2.5.29.21";
const OID_AUTHORITY_KEY_ID: &str = "2.5.29.35";
const OID_EXT_KEY_USAGE: &str = "2.5.29.37";
const OID_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
const OID_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";

// ---- what callers get ----

/// The key usages RFC 5280 4.2.1.3 names, by bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage(u16);

impl KeyUsage {
    pub const DIGITAL_SIGNATURE: u16 = 0;
    pub const KEY_ENCIPHERMENT: u16 = 2;
    pub const KEY_CERT_SIGN: u16 = 5;
    pub const CRL_SIGN: u16 = 6;

    pub fn has(self, bit: u16) -> bool {
        self.0 & (1 << bit) != 0
    }
}

/// A certificate as a TLS peer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Serial number, the INTEGER's content bytes.
    pub serial: Vec<u8>,
    /// Every common name in the subject.
    pub common_names: Vec<String>,
    /// DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Alternative names of other kinds (`email:...`, `uri:...`), which we never issue.
    pub other_names: Vec<String>,
    /// basicConstraints says it is a CA.
    pub is_ca: bool,
    /// `None` when the certificate has no key usage extension.
    pub key_usage: Option<KeyUsage>,
    /// `None` when the certificate has no extended key usage extension.
    pub extended_key_usage: Option<Vec<String>>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

impl Certificate {
    /// Reads one DER certificate; anything that is not exactly one strict DER certificate is an
    /// error.
    pub fn from_der(der: &[u8]) -> Result<Certificate, X509Error> {
        let raw =
            asn1::parse_single::<RawCertificate<'_>>(der).map_err(self::der("certificate"))?;
        let tbs = raw.tbs;
        if tbs.version > 2 {
            return Err(X509Error::Invalid("certificate version is not 1, 2 or 3"));
        }
        let mut cert = Certificate {
            serial: tbs.serial.as_bytes().to_vec(),
            common_names: common_names(&tbs.subject)?,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            other_names: Vec::new(),
            is_ca: false,
            key_usage: None,
            extended_key_usage: None,
            not_before: unix(&tbs.validity.not_before),
            not_after: unix(&tbs.validity.not_after),
            spki_der: tbs.spki.full_data().to_vec(),
        };
        let mut seen = Vec::new();
        for ext in tbs.extensions.into_iter().flatten() {
            let oid = ext.id.to_string();
            if seen.contains(&oid) {
                return Err(X509Error::DuplicateExtension { oid });
            }
            match oid.as_str() {
                OID_BASIC_CONSTRAINTS => {
                    let bc = asn1::parse_single::<BasicConstraints>(ext.value)
                        .map_err(self::der("basicConstraints"))?;
                    cert.is_ca = bc.ca;
                }
                OID_KEY_USAGE => {
                    let bits = asn1::parse_single::<asn1::BitString<'_>>(ext.value)
                        .map_err(self::der("keyUsage"))?;
                    let mut ku = 0u16;
                    for bit in 0..9u16 {
                        if bits.has_bit_set(bit as usize) {
                            ku |= 1 << bit;
                        }
                    }
                    cert.key_usage = Some(KeyUsage(ku));
                }
                OID_EXT_KEY_USAGE => {
                    let oids = asn1::parse_single::<asn1::SequenceOf<'_, asn1::ObjectIdentifier>>(
                        ext.value,
                    )
                    .map_err(self::der("extKeyUsage"))?;
                    cert.extended_key_usage = Some(oids.map(|o| o.to_string()).collect());
                }
                OID_SUBJECT_ALT_NAME => {
                    let names =
                        asn1::parse_single::<asn1::SequenceOf<'_, GeneralName<'_>>>(ext.value)
                            .map_err(self::der("subjectAltName"))?;
                    for name in names {
                        match name {
                            GeneralName::Dns(d) => cert.dns_names.push(d.as_str().to_string()),
                            GeneralName::Ip(bytes) => cert.ip_addresses.push(ip(bytes)?),
                            GeneralName::Rfc822(m) => {
                                cert.other_names.push(format!("email:{}", m.as_str()))
                            }
                            GeneralName::Uri(u) => {
                                cert.other_names.push(format!("uri:{}", u.as_str()))
                            }
                        }
                    }
                }
                OID_AUTHORITY_KEY_ID => {
                    asn1::parse_single::<AuthorityKeyIdentifier<'_>>(ext.value)
                        .map_err(self::der("authorityKeyIdentifier"))?;
                }
                OID_SUBJECT_KEY_ID => {
                    asn1::parse_single::<&[u8]>(ext.value)
                        .map_err(self::der("subjectKeyIdentifier"))?;
                }
                _ if ext.critical => return Err(X509Error::UnknownCriticalExtension { oid }),
                _ => {}
            }
            seen.push(oid);
        }
        Ok(cert)
    }

    /// Whether the extended key usage allows TLS server authentication (no extension allows
    /// everything).
    pub fn server_auth(&self) -> bool {
        self.eku_allows(OID_SERVER_AUTH)
    }

    /// Whether the extended key usage allows TLS client authentication.
    pub fn client_auth(&self) -> bool {
        self.eku_allows(OID_CLIENT_AUTH)
    }

    fn eku_allows(&self, oid: &str) -> bool {
        self.extended_key_usage
            .as_ref()
            .is_none_or(|ekus| ekus.iter().any(|e| e == oid))
    }
}

/// A certificate revocation list as a TLS peer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Serial numbers of the revoked certificates, as INTEGER content bytes.
    pub revoked: Vec<Vec<u8>>,
    /// The CRL number, as INTEGER content bytes.
    pub crl_number: Option<Vec<u8>>,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: Option<i64>,
}

impl RevocationList {
    pub fn from_der(der: &[u8]) -> Result<RevocationList, X509Error> {
        let raw = asn1::parse_single::<RawCertificateList<'_>>(der).map_err(self::der("CRL"))?;
        let tbs = raw.tbs;
        let mut revoked = Vec::new();
        for entry in tbs.revoked.into_iter().flatten() {
            for ext in entry.extensions.into_iter().flatten() {
                match ext.id.to_string().as_str() {
                    OID_CRL_REASON => {
                        asn1::parse_single::<asn1::Enumerated>(ext.value)
                            .map_err(self::der("CRL reason"))?;
                    }
                    oid if ext.critical => {
                        return Err(X509Error::UnknownCriticalExtension {
                            oid: oid.to_string(),
                        })
                    }
                    _ => {}
                }
            }
            revoked.push(entry.serial.as_bytes().to_vec());
        }
        let mut crl_number = None;
        let mut seen = Vec::new();
        for ext in tbs.extensions.into_iter().flatten() {
            let oid = ext.id.to_string();
            if seen.contains(&oid) {
                return Err(X509Error::DuplicateExtension { oid });
            }
            match oid.as_str() {
                OID_CRL_NUMBER => {
                    let n = asn1::parse_single::<asn1::BigUint<'_>>(ext.value)
                        .map_err(self::der("CRL number"))?;
                    crl_number = Some(n.as_bytes().to_vec());
                }
                OID_AUTHORITY_KEY_ID => {
                    asn1::parse_single::<AuthorityKeyIdentifier<'_>>(ext.value)
                        .map_err(self::der("authorityKeyIdentifier"))?;
                }
                _ if ext.critical => return Err(X509Error::UnknownCriticalExtension { oid }),
                _ => {}
            }
            seen.push(oid);
        }
        Ok(RevocationList {
            revoked,
            crl_number,
            this_update: unix(&tbs.this_update),
            next_update: tbs.next_update.as_ref().map(unix),
        })
    }
}

/// The subject's common names, as UTF8String or PrintableString (the two RFC 5280 wants new
/// certificates to use).
fn common_names(name: &Name<'_>) -> Result<Vec<String>, X509Error> {
    let mut out = Vec::new();
    for rdn in name.clone() {
        for atv in rdn {
            if atv.kind.to_string() != OID_COMMON_NAME {
                continue;
            }
            let value = match atv.value.tag() {
                t if t == asn1::Utf8String::TAG => atv
                    .value
                    .parse::<asn1::Utf8String<'_>>()
                    .map(|s| s.as_str().to_string()),
                t if t == asn1::PrintableString::TAG => atv
                    .value
                    .parse::<asn1::PrintableString<'_>>()
                    .map(|s| s.as_str().to_string()),
                _ => {
                    return Err(X509Error::Invalid(
                        "common name is not a UTF8 or printable string",
                    ))
                }
            }
            .map_err(self::der("common name"))?;
            out.push(value);
        }
    }
    Ok(out)
}

fn ip(bytes: &[u8]) -> Result<IpAddr, X509Error> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).unwrap_or_default(),
        )),
        _ => Err(X509Error::Invalid(
            "an IP address name is neither 4 nor 16 bytes",
        )),
    }
}

fn unix(t: &Time) -> i64 {
    let dt = match t {
        Time::Utc(u) => u.as_datetime(),
        Time::Generalized(g) => g.as_datetime(),
    };
    let days = days_from_civil(i64::from(dt.year()), dt.month().into(), dt.day().into());
    days * 86_400
        + i64::from(dt.hour()) * 3600
        + i64::from(dt.minute()) * 60
        + i64::from(dt.second())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 29), 20_786);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused() {
        for bad in [&b""[..], b"\x30\x00", b"\x30\x03\x02\x01\x01", b"hello"] {
            assert!(Certificate::from_der(bad).is_err());
            assert!(RevocationList::from_der(bad).is_err());
        }
    }

    #[test]
    fn an_encoded_default_is_refused_where_it_is_written() {
        // basicConstraints { cA FALSE } written out: what rcgen 0.13 makes for ExplicitNoCa
        let e = asn1::parse_single::<BasicConstraints>(&[0x30, 0x03, 0x01, 0x01, 0x00])
            .err()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        assert!(e.contains("EncodedDefault"), "{e}");
        // the empty SEQUENCE is the DER of "not a CA"
        let bc = asn1::parse_single::<BasicConstraints>(&[0x30, 0x00]).unwrap();
        assert!(!bc.ca);
        // an extension with `critical FALSE` written out
        let ext = [
            0x30, 0x0b, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0x00, 0x04, 0x01, 0x00,
        ];
        assert!(asn1::parse_single::<Extension<'_>>(&ext).is_err());
    }
}
