//! Finding every problem in a configuration at once: the collector the checks report to, the
//! reading of the YAML that goes on past a bad key, and the checks of the files a
//! configuration names (`provisioner config check`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use thiserror::Error;

use crate::jwt::JwtError;
use crate::orgissuer::IssuerError;

use super::{invalid, Config, ConfigError};

/// Every problem found so far. Checks go on after a problem, with a stand-in value, so one run
/// reports them all.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<ConfigError>,
    /// Keys the YAML reading dropped as unreadable: later checks that miss them say nothing
    /// new.
    dropped: Vec<String>,
}

impl Problems {
    pub(crate) fn add(&mut self, e: ConfigError) {
        if let ConfigError::Invalid { key, .. } = &e {
            let covered = self
                .dropped
                .iter()
                .any(|d| key == d || key.starts_with(&format!("{d}.")));
            if covered {
                return;
            }
        }
        self.list.push(e);
    }

    /// The value, or `None` with its problem kept.
    pub(crate) fn ok<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(e);
                None
            }
        }
    }

    /// `Ok(v)` when nothing was found; one problem as itself, several together.
    pub(crate) fn finish<T>(mut self, v: T) -> Result<T, ConfigError> {
        match self.list.len() {
            0 => Ok(v),
            1 => Err(self.list.remove(0)),
            _ => Err(ConfigError::Problems(self.list)),
        }
    }
}

/// Reads `value` as `T`; a key that cannot be read is reported and dropped, and reading starts
/// again without it, so every bad key is found in one pass. Errors only when nothing is left
/// to drop (the file is not a mapping at all).
pub(crate) fn read_all<T: DeserializeOwned>(
    mut value: yaml_serde::Value,
    problems: &mut Problems,
) -> Option<T> {
    // each round drops one key, so this ends; the bound keeps a pathological file cheap
    for _ in 0..200 {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let segments: Vec<Segment> = err.path().iter().cloned().collect();
        let key = err.path().to_string();
        let reason = describe(&err.inner().to_string());
        // straight to the list: the filter in `add` is for checks after reading
        problems.list.push(invalid(key.clone(), reason));
        if segments.is_empty() || !drop_path(&mut value, &segments) {
            return None;
        }
        problems.dropped.push(key);
    }
    None
}

/// serde's message, with its list of every accepted key cut down to the likeliest one.
fn describe(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg.to_string();
    };
    let field = rest.split('`').next().unwrap_or_default();
    let expected = msg
        .split_once("expected")
        .map(|(_, e)| e)
        .unwrap_or_default();
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::levenshtein(field, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min();
    match best {
        Some((_, k)) => format!("unknown key; did you mean `{k}`?"),
        None => "unknown key (docs/configuration.md lists every key)".to_string(),
    }
}

/// Removes the value at `path`; false when the path is not there.
fn drop_path(value: &mut yaml_serde::Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for seg in parents {
        let next = match (seg, at) {
            (Segment::Map { key }, yaml_serde::Value::Mapping(m)) => m.get_mut(key.as_str()),
            (Segment::Seq { index }, yaml_serde::Value::Sequence(s)) => s.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Map { key }, yaml_serde::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, yaml_serde::Value::Sequence(s)) if *index < s.len() => {
            s.remove(*index);
            true
        }
        _ => false,
    }
}

impl Config {
    /// Problems with the files this configuration names, as this host sees them now: each
    /// must exist and be readable, the helper must be an executable, private keys must not be
    /// readable by others. `provisioner config check` runs this after parsing.
    pub fn check_files(&self) -> Vec<ConfigError> {
        let mut p = Vec::new();
        if let Some(cmd) = self.helper.first() {
            if let Err(e) = executable(cmd) {
                p.push(invalid("helper", e));
            }
        }
        // `python3 /etc/.../helper.py`: an absolute path among the arguments is most likely the
        // script itself, and a missing script fails every server at run time
        for arg in self.helper.iter().skip(1).filter(|a| a.starts_with('/')) {
            let path = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
            if !Path::new(path).exists() {
                p.push(invalid("helper", format!("{path}: no such file")));
            }
        }
        // the same loading `run` does, so a key that does not parse is found here too
        if self.features.jwt && !self.jwt_verify_cert.is_empty() {
            if let Err(e) = crate::jwt::JwtVerifier::from_config(&self.jwt_verify_cert) {
                // the key's own error names the key already
                p.push(match e {
                    JwtError::Key(reason) => invalid("jwt_verify_cert", reason),
                    other => invalid("jwt_verify_cert", other),
                });
            }
        }
        if let (true, Some(ca)) = (self.features.pki, &self.ca) {
            if let Err(e) = crate::ca::Ca::load(&ca.cert, &ca.key, self.cert_validity) {
                p.push(invalid("ca", e.to_string()));
            }
            private(&mut p, "ca.key", &ca.key);
        }
        if self.features.ed25519 && !self.jwt_signing_key.is_empty() {
            let token =
                (!self.jwt_signing_token.is_empty()).then(|| Path::new(&self.jwt_signing_token));
            let key = Path::new(&self.jwt_signing_key);
            if let Err(e) = crate::orgissuer::OrgIssuer::load_with_chain(key, token) {
                // the key's own error names the key already
                p.push(match e {
                    IssuerError::Key { path, reason } => {
                        invalid("jwt_signing_key", format!("{path}: {reason}"))
                    }
                    other => invalid("jwt_signing_key", other),
                });
            }
            private(&mut p, "jwt_signing_key", key);
        }
        if let Some(tls) = self.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
            readable(&mut p, "cluster.tls.ca", &tls.ca);
            readable(&mut p, "cluster.tls.cert", &tls.cert);
            readable(&mut p, "cluster.tls.key", &tls.key);
            private(&mut p, "cluster.tls.key", &tls.key);
        }
        if let Some(a) = &self.admin {
            readable(&mut p, "admin.tls.client_ca", &a.client_ca);
            // by default the same files as cluster.tls, checked above
            let member = self.cluster.as_ref().and_then(|c| c.tls.as_ref());
            if member.is_none_or(|t| t.cert != a.cert || t.key != a.key) {
                readable(&mut p, "admin.tls.cert", &a.cert);
                readable(&mut p, "admin.tls.key", &a.key);
                private(&mut p, "admin.tls.key", &a.key);
            }
        }
        if let Some(d) = &self.data_dir {
            let parent = d.parent().unwrap_or(Path::new("/"));
            if !d.is_dir() && !parent.is_dir() {
                p.push(invalid(
                    "data_dir",
                    format!("neither {} nor its parent exists", d.display()),
                ));
            }
        }
        p
    }
}

fn readable(p: &mut Vec<ConfigError>, key: &'static str, f: &Path) {
    if let Err(e) = std::fs::File::open(f) {
        p.push(invalid(key, format!("{}: {e}", f.display())));
    }
}

/// A private key readable by others; a key that cannot be read at all is reported by the
/// check that loads it.
fn private(p: &mut Vec<ConfigError>, key: &'static str, f: &Path) {
    if let Ok(m) = std::fs::metadata(f) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            p.push(invalid(
                key,
                format!(
                    "{} is mode {mode:o}: a private key must be readable by its owner only (chmod 600)",
                    f.display()
                ),
            ));
        }
    }
}

/// Why the configured helper program cannot be run.
#[derive(Debug, Error)]
enum HelperProgramError {
    /// A path that names nothing.
    #[error("{0}: no such file")]
    NoSuchFile(String),
    /// A bare name no directory of `PATH` holds.
    #[error("{0}: not found in PATH")]
    NotInPath(String),
    #[error("{}: not executable", .0.display())]
    NotExecutable(PathBuf),
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The helper program exists and may be run: a path as given, a bare name through `PATH`.
fn executable(cmd: &str) -> Result<(), HelperProgramError> {
    let candidates: Vec<PathBuf> = if cmd.contains('/') {
        vec![cmd.into()]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(cmd)).collect())
            .unwrap_or_default()
    };
    let found = candidates.iter().find(|c| c.is_file());
    match found {
        None if cmd.contains('/') => Err(HelperProgramError::NoSuchFile(cmd.into())),
        None => Err(HelperProgramError::NotInPath(cmd.into())),
        Some(f) => match std::fs::metadata(f) {
            Ok(m) if m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(HelperProgramError::NotExecutable(f.clone())),
            Err(source) => Err(HelperProgramError::Unreadable {
                path: f.clone(),
                source,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, MINIMAL};
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{MINIMAL}workers: many\nwrokers: 2\ninterval: 5s\nlog_format: xml\nfeatures: {{pki: true, ed25519: true}}\ncluster:\n  id: 1\n  members: [{{id: 1, name: a, raft_addr: \"127.0.0.1:1\", bogus: 1}}]\n"
        );
        let err = parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for want in [
            "workers: invalid type",
            "wrokers: unknown key; did you mean `workers`?",
            "interval: is too small",
            "log_format: \"xml\"",
            "features: only one of pki or ed25519",
            "cluster.members[0].bogus: unknown key",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        // a section dropped as unreadable is not reported again as missing
        let err = parse(&MINIMAL.replace("servers:", "servres:"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("nats.servres: unknown key; did you mean `servers`?"),
            "{err}"
        );
        assert!(err.contains("nats: missing field `servers`"), "{err}");
        assert!(!err.contains("section is required"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_mapping_is_one_problem() {
        let err = parse("[1, 2]")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("expected struct"), "{err}");
    }

    fn file_problems(c: &Config) -> Vec<String> {
        c.check_files().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn named_files_are_checked_as_run_loads_them() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::ca::init(
            dir.path(),
            "test CA",
            crate::ca::KeyType::EcdsaP256,
            std::time::Duration::from_secs(86400),
            false,
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        // a hex ed25519 public key is a valid jwt_verify_cert, not a missing file
        let text = format!(
            "{MINIMAL}features: {{pki: true, jwt: true}}\njwt_verify_cert: {}\nca: {{cert: {}, key: {}}}\n",
            "ab".repeat(32),
            cert.display(),
            key.display()
        )
        .replace("/usr/local/bin/helper", "no-such-helper-program");
        let c = parse(&text).unwrap();
        let problems = file_problems(&c);
        assert_eq!(problems.len(), 2, "{problems:?}");
        // the script an interpreter runs is checked too
        let with_script =
            text.replace("no-such-helper-program", "\"sh -e /nonexistent/helper.sh\"");
        let script = file_problems(&parse(&with_script).unwrap());
        assert_eq!(script[0], "helper: /nonexistent/helper.sh: no such file");
        assert!(problems[0].starts_with("helper: no-such-helper-program: not found in PATH"));
        assert!(problems[1].contains("mode 644"), "{problems:?}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let good = text.replace("no-such-helper-program", "sh");
        assert!(parse(&good).unwrap().check_files().is_empty());

        let broken = good
            .replace(&cert.display().to_string(), "/nonexistent/ca.pem")
            .replace(&"ab".repeat(32), "/nonexistent/signer.pem");
        let problems = file_problems(&parse(&broken).unwrap());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("jwt_verify_cert: ")
                && problems[0].contains("/nonexistent/signer.pem"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("ca: ") && problems[1].contains("/nonexistent/ca.pem"),
            "{problems:?}"
        );
    }
}
