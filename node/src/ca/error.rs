//! What can go wrong with the built-in CA: its files, making keys, signing certificates and
//! CRLs, and reading a certificate a helper returns. Each keeps the error it came from.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists already; use --force to replace the CA")]
    Exists { path: PathBuf },
    #[error("CA certificate {path}: {source}")]
    BadCert {
        path: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("CA key {path}: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("cannot create key: {0}")]
    KeyGen(#[source] KeyGenError),
    #[error("cannot sign: {0}")]
    Sign(#[source] SignError),
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
}

/// Why the CA certificate on disk cannot be used.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("{0}")]
    Pem(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
    #[error("{0}")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// rcgen cannot take it as an issuer.
    #[error("{0}")]
    Issuer(#[source] rcgen::Error),
}

/// Why a new key could not be made.
#[derive(Debug, Error)]
pub enum KeyGenError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Rsa(#[from] rsa::Error),
    #[error("{0}")]
    Pkcs8(#[from] rsa::pkcs8::Error),
}

/// Why a certificate or CRL could not be made.
#[derive(Debug, Error)]
pub enum SignError {
    #[error("CSR public key: {0}")]
    PublicKey(#[source] rcgen::Error),
    #[error("identity as DNS name: {0}")]
    Identity(#[source] rcgen::Error),
    #[error("{0:?} is not a DNS name")]
    NotDnsName(String),
    #[error("{name:?} as DNS name: {source}")]
    DnsName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0:?} is not a valid operator name (letters, digits, - . _ @)")]
    OperatorName(String),
    #[error("serial {serial:?}: {source}")]
    Serial {
        serial: String,
        #[source]
        source: hex::FromHexError,
    },
    #[error("revocation time {at}: {source}")]
    RevocationTime {
        at: i64,
        #[source]
        source: time::error::ComponentRange,
    },
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Why a PEM text is not a certificate [`super::describe`] can read.
#[derive(Debug, Error)]
pub enum DescribeError {
    #[error("{0}")]
    Pem(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
    /// A PEM block of another kind (a key, a CSR...).
    #[error("PEM block is {0:?}")]
    NotACertificate(String),
    #[error("{0}")]
    Certificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}
