//! The provisioner's configuration file.
//!
//! It accepts upstream's `choria-provisioner.yaml` keys as they are, so an existing file keeps
//! working, plus our own sections (`nats`, `ca`, `data_dir`, `identity`, timeouts and retry
//! policy). Unknown keys and bad values are errors at start, with the key named. This module
//! reads the file and runs the checks of each section (one module each) into [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use thiserror::Error;

mod admin;
mod ca;
mod check;
mod cluster;
mod deny;
mod duration;
mod features;
mod helper;
mod identity;
mod ignored;
pub mod location;
mod logs;
mod nats;
mod raw;
mod work;

pub use admin::{Admin, AdminSection, AdminTlsSection, ReprovisionSection};
pub use ca::CaSection;
use check::{read_all, Problems};
pub use cluster::{Cluster, ClusterMember, ClusterSection, ClusterTls};
pub use deny::DEFAULT_DENY_LIST;
pub use duration::{parse_duration, DurationError};
pub use features::Features;
pub use logs::LogFormat;
pub use nats::{NatsSection, NatsTls};
use raw::RawConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// More than one problem, each on its own line.
    #[error("{}", lines(.0))]
    Problems(Vec<ConfigError>),
}

fn lines(problems: &[ConfigError]) -> String {
    let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    all.join("\n")
}

impl ConfigError {
    /// Each problem on its own, however many there are.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Problems(list) => list.iter().collect(),
            other => vec![other],
        }
    }
}

/// A problem with `key`: `reason` is a message or an error, shown as it displays.
pub(crate) fn invalid(key: impl Into<String>, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// The checked configuration the provisioner runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub workers: usize,
    pub interval: Duration,
    pub logfile: Option<PathBuf>,
    pub loglevel: String,
    pub log_format: LogFormat,
    pub helper: Vec<String>,
    /// Compiled-in user logic from the configuration, instead of a helper program.
    pub builtin_helper: Option<crate::template::BuiltinHelper>,
    pub token: String,
    pub site: String,
    pub monitor_port: u16,
    pub monitor_listen: String,
    pub broker_provisioning_password: String,
    pub cert_deny_list: Vec<Regex>,
    pub jwt_verify_cert: String,
    pub jwt_signing_key: String,
    pub jwt_signing_token: String,
    pub server_jwt_validity: Duration,
    pub lifecycle_component: String,
    pub upgrades_repository: String,
    pub upgrades_optional: bool,
    pub features: Features,
    pub identity: String,
    pub nats: NatsSection,
    pub ca: Option<CaSection>,
    pub cert_validity: Duration,
    pub data_dir: Option<PathBuf>,
    pub helper_timeout: Duration,
    pub helper_max_output: usize,
    pub rpc_timeout: Duration,
    pub discovery_timeout: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub max_attempts: u32,
    /// Credentials one identity may be issued within `reenroll_window` (0: no limit).
    pub reenroll_limit: u32,
    pub reenroll_window: Duration,
    /// How long a failed record that never held a credential is kept (zero: for ever).
    pub failed_retention: Duration,
    /// Most servers this member keeps waiting (queued, in flight or waiting to retry), and
    /// most identities one discovery collects.
    pub max_waiting: usize,
    /// Bytes that must stay free under `data_dir`: below, the provisioner stops (or does
    /// not start), before the ledger's writes fail.
    pub data_dir_min_free: u64,
    /// Set when running as a Raft group member.
    pub cluster: Option<Cluster>,
    pub admin: Option<Admin>,
    pub ledger_facts: Option<Vec<String>>,
    /// Warnings about accepted-but-unused keys, logged once logging is up.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_as(path, None)
    }

    /// [`Config::load`] as the host named `identity` would read it (see [`Config::parse_as`]).
    pub fn load_as(path: &Path, identity: Option<&str>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_as(&text, path, identity)
    }

    /// Checks the whole file: on error, every problem found, not only the first.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_as(text, path, None)
    }

    /// [`Config::parse`] as the host named `identity` would read it (a shared cluster file
    /// checked away from its members).
    pub fn parse_as(
        text: &str,
        path: &Path,
        identity: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut value: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if let (Some(id), yaml_serde::Value::Mapping(m)) = (identity, &mut value) {
            m.insert("identity".into(), id.into());
        }
        let mut p = Problems::default();
        let Some(raw) = read_all::<RawConfig>(value, &mut p) else {
            return Err(match p.finish(()) {
                Err(e) => e,
                Ok(()) => invalid("(file)", "is not a provisioner configuration"),
            });
        };
        let config = Self::check(raw, path, &mut p);
        p.finish(config)
    }

    /// The checks, section by section; a bad value is reported to `p` and a stand-in is used,
    /// so the checks after it still run. Problems are reported in this order.
    fn check(raw: RawConfig, path: &Path, p: &mut Problems) -> Config {
        let mut warnings = Vec::new();
        let interval = work::check_interval(&raw.interval, p);
        let lifecycle_component = identity::check_lifecycle_component(&raw.lifecycle_component, p);
        let features = features::check_features(&raw, p);
        let cert_deny_list = deny::check_deny_list(&raw.cert_deny_list, p);
        let server_jwt_validity = if raw.server_jwt_validity.is_empty() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            duration(p, "server_jwt_validity", &raw.server_jwt_validity)
        };
        let helper = helper::check_helper(&raw.helper, raw.builtin_helper.as_ref(), p);
        let nats = nats::check_nats(raw.nats.clone(), &raw.broker_provisioning_password, p);
        let cert_validity = ca::check_ca(raw.ca.as_ref(), features.pki, p, &mut warnings);
        let log_format = logs::check_logs(&raw.log_format, &raw.loglevel, p);
        ignored::ignored_keys(&raw, &mut warnings);
        features::check_upgrades(&raw, &features, p);
        work::check_limits(&raw, p);
        let (retry_backoff_min, retry_backoff_max) = work::check_backoff(&raw, p);
        let has_data_dir = raw.data_dir.is_some();
        let membership =
            identity::check_membership(raw.identity, raw.cluster, raw.admin, has_data_dir, p);
        let workers = if raw.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            raw.workers
        };

        Config {
            file: path.to_path_buf(),
            workers,
            interval,
            logfile: (!raw.logfile.is_empty()).then(|| PathBuf::from(&raw.logfile)),
            loglevel: raw.loglevel,
            log_format,
            helper,
            builtin_helper: raw.builtin_helper,
            token: raw.token,
            site: raw.site,
            monitor_port: raw.monitor_port,
            monitor_listen: raw.monitor_listen,
            broker_provisioning_password: raw.broker_provisioning_password,
            cert_deny_list,
            jwt_verify_cert: raw.jwt_verify_cert,
            jwt_signing_key: raw.jwt_signing_key,
            jwt_signing_token: raw.jwt_signing_token,
            server_jwt_validity,
            lifecycle_component,
            upgrades_repository: raw.upgrades_repository,
            upgrades_optional: raw.upgrades_optional,
            features,
            identity: membership.identity,
            nats,
            ca: raw.ca,
            cert_validity,
            data_dir: raw.data_dir,
            helper_timeout: duration(p, "helper_timeout", &raw.helper_timeout),
            helper_max_output: raw.helper_max_output,
            rpc_timeout: duration(p, "rpc_timeout", &raw.rpc_timeout),
            discovery_timeout: duration(p, "discovery_timeout", &raw.discovery_timeout),
            retry_backoff_min,
            retry_backoff_max,
            max_attempts: raw.max_attempts,
            reenroll_limit: raw.reenroll_limit,
            reenroll_window: duration(p, "reenroll_window", &raw.reenroll_window),
            failed_retention: duration(p, "failed_retention", &raw.failed_retention),
            max_waiting: raw.max_waiting,
            data_dir_min_free: raw.data_dir_min_free_mb.saturating_mul(1024 * 1024),
            cluster: membership.cluster,
            admin: membership.admin,
            ledger_facts: raw.ledger_facts,
            warnings,
        }
    }
}

/// A duration key's value, or zero with its problem kept.
fn duration(p: &mut Problems, key: &'static str, s: &str) -> Duration {
    p.ok(parse_duration(s).map_err(|e| invalid(key, e)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const MINIMAL: &str = r#"
helper: /usr/local/bin/helper
broker_provisioning_password: s3cret
nats:
  servers: [nats://127.0.0.1:4222]
"#;

    pub(super) fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.yaml"))
    }

    #[test]
    fn deeply_nested_yaml_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let text = format!("{MINIMAL}cert_deny_list: {deep}\n");
        assert!(parse(&text).is_err());
        let mapping = "{a: ".repeat(50_000) + "1" + &"}".repeat(50_000);
        assert!(parse(&format!("{MINIMAL}builtin_helper: {mapping}\n")).is_err());
    }

    #[test]
    fn nats_tls_needs_readable_files_and_a_whole_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let with = |tls: &str| {
            parse(&MINIMAL.replace(
                "  servers: [nats://127.0.0.1:4222]\n",
                &format!("  servers: [tls://127.0.0.1:4222]\n  tls: {tls}\n"),
            ))
        };
        let ok = with(&format!("{{ca: {}}}", ca.display())).unwrap();
        assert_eq!(ok.nats.tls.map(|t| t.ca), Some(ca.clone()));
        for (tls, why) in [
            (
                "{ca: /nonexistent/ca.pem}".to_string(),
                "/nonexistent/ca.pem",
            ),
            (
                format!("{{ca: {}, cert: {}}}", ca.display(), ca.display()),
                "go together",
            ),
            (format!("{{ca: {}, bogus: 1}}", ca.display()), "bogus"),
        ] {
            let err = with(&tls).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{tls}: {err}");
        }
    }

    #[test]
    fn the_host_name_comes_from_the_kernel() {
        let proc = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        assert_eq!(identity::hostname(), proc.trim());
    }

    #[test]
    fn minimal_config_gets_upstream_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.lifecycle_component, "provision_mode_server");
        assert_eq!(c.cert_deny_list.len(), 4);
        assert_eq!(c.nats.user, "provisioner");
        assert_eq!(c.helper_timeout, Duration::from_secs(10));
        assert!(c.workers >= 1);
    }

    #[test]
    fn upstream_file_is_accepted() {
        let text = format!(
            "{MINIMAL}\nworkers: 4\ninterval: 5m\nlogfile: /dev/stderr\nloglevel: debug\ntoken: t\nsite: lon\nmonitor_port: 9999\ncert_deny_list: ['/\\.bad$/']\njwt_verify_cert: /etc/x.pem\njwt_signing_key: k\njwt_signing_token: t\nserver_jwt_validity: 30d\nlifecycle_component: prov\nleader_election: true\nleader_election_name: provisioner\nupgrades_repository: https://repo\nupgrades_optional: true\nfeatures: {{pki: true, jwt: true, upgrades: true}}\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.workers, 4);
        assert_eq!(c.interval, Duration::from_secs(300));
        assert!(c.cert_deny_list[0].is_match("x.bad"));
        assert!(c.warnings.iter().any(|w| w.contains("leader_election ")));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("leader_election_name")));
        assert_eq!(c.server_jwt_validity, Duration::from_secs(30 * 86400));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (format!("{MINIMAL}\nbogus: 1\n"), "bogus"),
            (format!("{MINIMAL}\ninterval: 30s\n"), "interval"),
            (format!("{MINIMAL}\ninterval: 5x\n"), "interval"),
            (
                format!("{MINIMAL}\nlifecycle_component: a.b\n"),
                "lifecycle_component",
            ),
            (
                format!("{MINIMAL}\nfeatures: {{pki: true, ed25519: true}}\n"),
                "features",
            ),
            (
                format!("{MINIMAL}\nfeatures: {{jwt: true}}\n"),
                "jwt_verify_cert",
            ),
            (
                format!("{MINIMAL}\ncert_deny_list: ['(']\n"),
                "cert_deny_list",
            ),
            (format!("{MINIMAL}\nworkers: -1\n"), "workers"),
            (format!("{MINIMAL}\nlog_format: xml\n"), "log_format"),
            (format!("{MINIMAL}\nmax_attempts: 0\n"), "max_attempts"),
            (
                format!("{MINIMAL}\nbuiltin_helper: {{configuration: {{identity: x}}}}\n"),
                "builtin_helper",
            ),
            (
                "helper: x\nnats: {servers: [a]}\n".to_string(),
                "broker_provisioning_password",
            ),
            (
                "helper: x\nbroker_provisioning_password: x\n".to_string(),
                "nats",
            ),
            (format!("{MINIMAL}\nhelper: \"unterminated '\"\n"), "helper"),
        ];
        for (text, key) in cases {
            let err = match parse(&text) {
                Ok(_) => panic!("accepted bad config for {key}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
