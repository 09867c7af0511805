//! How this member gives servers their credentials, decided once from the configuration when
//! it starts: the `pki` and `ed25519` features (which `config check` lets only one of be on)
//! and the CA or issuer key they need become one value, so a flow never meets a feature that
//! is on without its key, or a key whose feature is off.

use std::sync::Arc;

use crate::ca::Ca;
use crate::orgissuer::OrgIssuer;

pub enum Enrollment {
    /// Neither feature: the server keeps its credential, unless the helper returns a
    /// certificate and CA (and the key it made), which are checked and recorded.
    None,
    /// Feature `pki`: the server makes a key and a CSR; the built-in CA (when configured)
    /// signs it, or the helper returns the certificate.
    X509 { ca: Option<Box<Ca>> },
    /// Feature `ed25519`: the server makes an ed25519 key and we sign its server JWT as the
    /// Organization Issuer (or its chain issuer).
    Ed25519 { issuer: Arc<OrgIssuer> },
}

impl Enrollment {
    /// The built-in CA, when there is one.
    pub fn ca(&self) -> Option<&Ca> {
        match self {
            Enrollment::X509 { ca } => ca.as_deref(),
            _ => None,
        }
    }

    /// The Organization Issuer, when this member signs server JWTs.
    pub fn issuer(&self) -> Option<&Arc<OrgIssuer>> {
        match self {
            Enrollment::Ed25519 { issuer } => Some(issuer),
            _ => None,
        }
    }
}
