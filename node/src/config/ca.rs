//! The `ca` section: the built-in CA's files, the validity of the certificates it issues and
//! where its revocation list goes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, Problems};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// CA certificate (PEM), created by `provisioner ca init`.
    pub cert: PathBuf,
    /// CA private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Validity of issued certificates, e.g. `365d`.
    #[serde(default = "default_cert_validity")]
    pub validity: String,
    /// Where the certificate revocation list is written (PEM) whenever a credential is
    /// revoked; default `data_dir/crl.pem`.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

fn default_cert_validity() -> String {
    "365d".into()
}

/// The validity of issued certificates (a year without a section); a section the pki
/// feature does not use is a warning.
pub(super) fn check_ca(
    ca: Option<&CaSection>,
    pki: bool,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Duration {
    let cert_validity = match ca {
        Some(ca) => duration(p, "ca.validity", &ca.validity),
        None => Duration::from_secs(365 * 24 * 3600),
    };
    if ca.is_some() && !pki {
        warnings
            .push("a ca section is configured but the pki feature is off; it is not used".into());
    }
    cert_validity
}
