//! The built-in CA's revocation list on disk (`ca.crl`, default `data_dir/crl.pem`): rewritten
//! when the ledger's revocations change, and daily. It never loses an unexpired revocation:
//! the entries of the CRL already on disk (checked to be signed by our CA) are kept unless the
//! ledger knows their certificate has expired, so a member whose ledger is behind (restored
//! from an older backup, or catching up) cannot drop one. A member that is catching up does
//! not write at all. The file is world-readable on purpose: anyone who checks certificates
//! needs it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use x509_parser::error::{PEMError, X509Error};
use x509_parser::nom;
use x509_parser::prelude::FromDer;

use crate::ca::Ca;
use crate::clock::now_ms;
use crate::config::Config;
use crate::context::Services;

/// How long a CRL is valid; rewritten daily, so a week gives a lot of slack.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// Rewritten at least this often, so it never expires while the provisioner runs.
pub const CRL_REFRESH: Duration = Duration::from_secs(86_400);

/// A revoked serial (lower-case hex, as the ledger keeps it) and when (Unix seconds).
pub type Entry = (String, i64);

/// Where the CRL goes: `ca.crl`, else `data_dir/crl.pem`.
pub fn crl_path(config: &Config) -> Option<PathBuf> {
    config
        .ca
        .as_ref()
        .and_then(|c| c.crl.clone())
        .or_else(|| config.data_dir.as_ref().map(|d| d.join("crl.pem")))
}

/// Serials compare as numbers: no leading zeros, lower case.
fn norm(serial: &str) -> String {
    let s = serial.trim_start_matches('0').to_ascii_lowercase();
    if s.is_empty() {
        "0".into()
    } else {
        s
    }
}

/// What the CRL lists: every revocation in the ledger whose certificate has not expired,
/// and every entry of the CRL on disk (`disk`) the ledger does not know to have expired.
/// `expiry` is every serial the ledger knows, with its certificate's expiry; an entry the
/// ledger does not know at all expires at the latest `validity` after it was revoked (its
/// certificate was issued before that).
pub fn merge(
    ledger: &[Entry],
    disk: &[Entry],
    expiry: &HashMap<String, i64>,
    validity: Duration,
    now_s: i64,
) -> Vec<Entry> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for (serial, at) in ledger {
        out.insert(norm(serial), (serial.clone(), *at));
    }
    for (serial, at) in disk {
        let key = norm(serial);
        if out.contains_key(&key) {
            continue;
        }
        let expires = expiry
            .get(&key)
            .copied()
            .unwrap_or_else(|| at.saturating_add(validity.as_secs() as i64));
        if expires > now_s {
            out.insert(key, (serial.clone(), *at));
        }
    }
    out.into_values().collect()
}

/// Why the CRL on disk cannot be trusted (it is replaced then, from the ledger).
#[derive(Debug, Error)]
pub enum CrlReadError {
    /// The file is there but cannot be read.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("PEM: {0}")]
    Pem(#[source] nom::Err<PEMError>),
    #[error("CRL: {0}")]
    Crl(#[source] nom::Err<X509Error>),
    /// Our own CA certificate does not parse (it loaded, so this should not happen).
    #[error("CA certificate: {0}")]
    CaPem(#[source] nom::Err<PEMError>),
    #[error("CA certificate: {0}")]
    CaCert(#[source] nom::Err<X509Error>),
    #[error("not signed by this CA: {0}")]
    NotOurs(#[source] X509Error),
}

/// The entries and CRL number of the CRL at `path`, if it is one our CA signed. `Ok(None)`
/// when there is no file yet.
pub fn read(path: &Path, ca: &Ca) -> Result<Option<(Vec<Entry>, u64)>, CrlReadError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CrlReadError::Io(e)),
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(CrlReadError::Pem)?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
        .map_err(CrlReadError::Crl)?;
    let (_, ca_pem) =
        x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).map_err(CrlReadError::CaPem)?;
    let ca_cert = ca_pem.parse_x509().map_err(CrlReadError::CaCert)?;
    crl.verify_signature(ca_cert.public_key())
        .map_err(CrlReadError::NotOurs)?;
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| {
            (
                hex::encode(r.user_certificate.to_bytes_be()),
                r.revocation_date.timestamp(),
            )
        })
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok(Some((entries, number)))
}

/// Rewrites the CRL when the ledger's revocations change (and daily).
#[derive(Default)]
pub struct CrlState {
    written_for: Option<usize>,
    written_at: Option<tokio::time::Instant>,
    number: u64,
}

impl CrlState {
    /// `revoked` is the ledger's count of revocations; `caught_up` says this member's ledger
    /// has applied what it knows is committed.
    pub async fn refresh(&mut self, svc: &Services, revoked: usize, caught_up: bool) {
        let (Some(ca), Some(path)) = (svc.ca(), crl_path(&svc.config)) else {
            return;
        };
        let fresh = self.written_at.is_some_and(|t| t.elapsed() < CRL_REFRESH);
        if (self.written_for == Some(revoked) && fresh) || !caught_up {
            return;
        }
        let now_s = (now_ms() / 1000) as i64;
        let (disk, disk_number) = match read(&path, ca) {
            Ok(Some(d)) => d,
            Ok(None) => (Vec::new(), 0),
            Err(e) => {
                // a file we cannot trust is replaced, loudly: the ledger is the record
                tracing::warn!(path = %path.display(), error = %e, "the CRL on disk is not ours; writing a new one from the ledger");
                (Vec::new(), 0)
            }
        };
        // one pass over the ledger, keeping revocations and the expiry of serials the CRL
        // on disk names: no copy of a million records
        let on_disk: std::collections::HashSet<String> =
            disk.iter().map(|(s, _)| norm(s)).collect();
        let mut expiry = HashMap::new();
        let mut ledger = Vec::new();
        svc.ledger
            .scan(&mut |r| {
                for v in &r.revoked {
                    expiry.insert(norm(&v.serial), v.not_after);
                    if v.not_after > now_s {
                        ledger.push((v.serial.clone(), (v.revoked_at_ms / 1000) as i64));
                    }
                }
                for c in r.credential.iter().chain(r.superseded.iter()) {
                    let serial = norm(&c.serial);
                    if on_disk.contains(&serial) {
                        expiry.insert(serial, c.not_after);
                    }
                }
            })
            .await;
        let entries = merge(&ledger, &disk, &expiry, svc.config.cert_validity, now_s);
        // CRL numbers must grow; time-based numbers keep growing across restarts
        self.number = self.number.max(now_ms()).max(disk_number) + 1;
        match ca
            .crl(&entries, self.number, CRL_VALIDITY)
            .and_then(|pem| crate::ca::write_crl(&path, &pem))
        {
            Ok(()) => {
                tracing::info!(path = %path.display(), entries = entries.len(), "CRL written");
                self.written_for = Some(revoked);
                self.written_at = Some(tokio::time::Instant::now());
            }
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot write CRL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn nothing_unexpired_is_lost_and_expired_entries_go() {
        let now = 100 * DAY;
        let validity = Duration::from_secs(30 * DAY as u64);
        let ledger = vec![("0a01".to_string(), now - DAY)];
        let disk = vec![
            // the same serial, written without the leading zero: listed once
            ("a01".to_string(), now - DAY),
            // revoked, the ledger (restored from an older backup) does not know it
            ("0b02".to_string(), now - 2 * DAY),
            // the ledger knows it expired
            ("0c03".to_string(), now - 40 * DAY),
            // unknown and revoked longer ago than any certificate lives
            ("0d04".to_string(), now - 31 * DAY),
            // the ledger knows it is still valid: kept
            ("0e05".to_string(), now - 31 * DAY),
        ];
        let expiry = HashMap::from([
            (norm("0a01"), now + DAY),
            (norm("0c03"), now - DAY),
            (norm("0e05"), now + DAY),
        ]);
        let got = merge(&ledger, &disk, &expiry, validity, now);
        let serials: Vec<&str> = got.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(serials, ["0a01", "0b02", "0e05"]);
    }

    #[test]
    fn a_crl_is_read_back_only_when_our_ca_signed_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let make = |name: &str| {
            let d = dir.path().join(name);
            let (cert, key) = crate::ca::init(
                &d,
                name,
                crate::ca::KeyType::EcdsaP256,
                Duration::from_secs(86_400),
                false,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            Ca::load(&cert, &key, Duration::from_secs(3600)).unwrap_or_else(|e| panic!("{e}"))
        };
        let ours = make("ours");
        let theirs = make("theirs");
        let path = dir.path().join("crl.pem");
        assert!(matches!(read(&path, &ours), Ok(None)));

        let pem = ours
            .crl(&[("0a01".into(), 1_700_000_000)], 7, CRL_VALIDITY)
            .unwrap_or_else(|e| panic!("{e}"));
        crate::ca::write_crl(&path, &pem).unwrap_or_else(|e| panic!("{e}"));
        let (entries, number) = read(&path, &ours)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        assert_eq!(entries, vec![("0a01".to_string(), 1_700_000_000)]);
        assert_eq!(number, 7);
        // world-readable whatever the umask
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o644);

        let err = read(&path, &theirs).err();
        assert!(matches!(err, Some(CrlReadError::NotOurs(_))), "{err:?}");
        let said = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(said.starts_with("not signed by this CA: "), "{said}");
        // garbage, or a PEM that holds no CRL, is an error, not a crash
        for junk in [
            &b"\x00\xffnot pem"[..],
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        ] {
            std::fs::write(&path, junk).unwrap_or_else(|e| panic!("{e}"));
            assert!(read(&path, &ours).is_err());
        }
    }
}
