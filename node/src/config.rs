//! The provisioner's configuration file.
//!
//! It accepts upstream's `choria-provisioner.yaml` keys as they are, so an existing file keeps
//! working, plus our own sections (`nats`, `ca`, `data_dir`, `identity`, timeouts and retry
//! policy). Unknown keys and bad values are errors at start, with the key named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use thiserror::Error;

mod admin;
mod check;
mod cluster;
mod duration;
pub mod location;

use admin::check_admin;
pub use admin::{Admin, AdminSection, AdminTlsSection, ReprovisionSection};
use check::{read_all, Problems};
use cluster::check_cluster;
pub use cluster::{Cluster, ClusterMember, ClusterSection, ClusterTls};
pub use duration::{parse_duration, DurationError};

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

/// Upstream's default certificate deny list: names that would pose as privileged clients.
pub const DEFAULT_DENY_LIST: &[&str] = &[
    r"\.privileged.mcollective$",
    r"\.privileged.choria$",
    r"\.mcollective$",
    r"\.choria$",
];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    #[serde(default)]
    pub pki: bool,
    #[serde(default)]
    pub jwt: bool,
    #[serde(default)]
    pub ed25519: bool,
    #[serde(default)]
    pub upgrades: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Broker URLs, e.g. `nats://broker:4222`.
    pub servers: Vec<String>,
    /// Upstream logs in as `provisioner`.
    #[serde(default = "default_nats_user")]
    pub user: String,
    /// TLS to the broker, as production brokers run it; required then.
    #[serde(default)]
    pub tls: Option<NatsTls>,
}

/// TLS to a NATS broker: the CA its certificate is checked against, and optionally a client
/// certificate when the broker asks for one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl NatsTls {
    /// Refuses a half-given client certificate, and files that cannot be read.
    pub(crate) fn check(&self, key: &'static str) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(key, "cert and key go together"));
        }
        for f in [Some(&self.ca), self.cert.as_ref(), self.key.as_ref()]
            .into_iter()
            .flatten()
        {
            std::fs::metadata(f).map_err(|e| invalid(key, format!("{}: {e}", f.display())))?;
        }
        Ok(())
    }

    /// `opts` with TLS required and these certificates.
    pub fn apply(&self, opts: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let opts = opts
            .require_tls(true)
            .add_root_certificates(self.ca.clone());
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => opts.add_client_certificate(c.clone(), k.clone()),
            _ => opts,
        }
    }
}

fn default_nats_user() -> String {
    "provisioner".into()
}

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

/// The file as written; see [`Config`] for the checked form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // upstream keys
    #[serde(default)]
    workers: usize,
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default)]
    logfile: String,
    #[serde(default = "default_loglevel")]
    loglevel: String,
    #[serde(default)]
    helper: String,
    #[serde(default)]
    builtin_helper: Option<crate::template::BuiltinHelper>,
    #[serde(default)]
    token: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    monitor_port: u16,
    #[serde(default)]
    broker_provisioning_password: String,
    #[serde(default)]
    cert_deny_list: Vec<String>,
    #[serde(default)]
    jwt_verify_cert: String,
    #[serde(default)]
    jwt_signing_key: String,
    #[serde(default)]
    jwt_signing_token: String,
    #[serde(default)]
    server_jwt_validity: String,
    #[serde(default)]
    lifecycle_component: String,
    #[serde(default)]
    leader_election: bool,
    /// Upstream's helm chart names the election; there is none to name here.
    #[serde(default)]
    leader_election_name: Option<String>,
    #[serde(default)]
    upgrades_repository: String,
    #[serde(default)]
    upgrades_optional: bool,
    #[serde(default)]
    features: Features,
    // upstream keys we accept and do not use
    #[serde(default)]
    choria_insecure: Option<bool>,
    #[serde(default)]
    broker_port: Option<u16>,
    #[serde(default)]
    rego_policy: Option<String>,

    // our keys
    #[serde(default)]
    identity: String,
    nats: Option<NatsSection>,
    ca: Option<CaSection>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default = "default_log_format")]
    log_format: String,
    #[serde(default = "default_helper_timeout")]
    helper_timeout: String,
    #[serde(default = "default_helper_max_output")]
    helper_max_output: usize,
    #[serde(default = "default_rpc_timeout")]
    rpc_timeout: String,
    #[serde(default = "default_discovery_timeout")]
    discovery_timeout: String,
    #[serde(default = "default_retry_min")]
    retry_backoff_min: String,
    #[serde(default = "default_retry_max")]
    retry_backoff_max: String,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_reenroll_limit")]
    reenroll_limit: u32,
    #[serde(default = "default_reenroll_window")]
    reenroll_window: String,
    #[serde(default = "default_failed_retention")]
    failed_retention: String,
    #[serde(default = "default_max_waiting")]
    max_waiting: usize,
    #[serde(default = "default_data_dir_min_free_mb")]
    data_dir_min_free_mb: u64,
    #[serde(default = "default_monitor_listen")]
    monitor_listen: String,
    #[serde(default)]
    cluster: Option<ClusterSection>,
    #[serde(default)]
    admin: Option<AdminSection>,
    /// Inventory facts kept in the ledger for reprovision filters; default: every top-level
    /// fact with a scalar value, up to 2 KiB per server.
    #[serde(default)]
    ledger_facts: Option<Vec<String>>,
}

fn default_interval() -> String {
    "1m".into()
}
fn default_loglevel() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "text".into()
}
fn default_helper_timeout() -> String {
    "10s".into()
}
fn default_helper_max_output() -> usize {
    1024 * 1024
}
fn default_rpc_timeout() -> String {
    "10s".into()
}
fn default_discovery_timeout() -> String {
    "2s".into()
}
fn default_retry_min() -> String {
    "5s".into()
}
fn default_retry_max() -> String {
    "5m".into()
}
fn default_max_attempts() -> u32 {
    10
}
fn default_reenroll_limit() -> u32 {
    3
}
fn default_reenroll_window() -> String {
    "1h".into()
}
fn default_failed_retention() -> String {
    "7d".into()
}
fn default_max_waiting() -> usize {
    100_000
}
fn default_data_dir_min_free_mb() -> u64 {
    128
}
fn default_monitor_listen() -> String {
    "0.0.0.0".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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

    /// The checks; a bad value is reported to `p` and a stand-in is used, so the checks after
    /// it still run.
    fn check(raw: RawConfig, path: &Path, p: &mut Problems) -> Config {
        let mut warnings = Vec::new();

        let interval = match parse_duration(&raw.interval) {
            Ok(d) if d < Duration::from_secs(60) => {
                p.add(invalid(
                    "interval",
                    "is too small, the minimum is 1 minute (for example 10m or 1h)",
                ));
                d
            }
            Ok(d) => d,
            Err(e) => {
                p.add(invalid("interval", e));
                Duration::from_secs(60)
            }
        };

        let lifecycle_component = if raw.lifecycle_component.is_empty() {
            proto::lifecycle::PROVISION_MODE_COMPONENT.to_string()
        } else {
            raw.lifecycle_component
        };
        if !proto::subject::is_valid_token(&lifecycle_component) {
            p.add(invalid(
                "lifecycle_component",
                format!("{lifecycle_component:?} may not contain '.', '*', '>' or spaces"),
            ));
        }

        let mut features = raw.features;
        if features.pki && features.ed25519 {
            p.add(invalid(
                "features",
                "only one of pki or ed25519 can be enabled",
            ));
        }
        if features.ed25519 {
            features.jwt = true;
            if raw.jwt_signing_key.is_empty() {
                p.add(invalid(
                    "jwt_signing_key",
                    "is required with the ed25519 feature (the hex seed of the Organization Issuer, or of the chain issuer named by jwt_signing_token)",
                ));
            }
        }
        if features.jwt && raw.jwt_verify_cert.is_empty() {
            p.add(invalid(
                "jwt_verify_cert",
                "is required when the jwt feature is enabled",
            ));
        }

        let deny = if raw.cert_deny_list.is_empty() {
            DEFAULT_DENY_LIST.iter().map(|s| s.to_string()).collect()
        } else {
            raw.cert_deny_list
        };
        let cert_deny_list = deny
            .iter()
            .filter_map(|d| p.ok(compile_deny_pattern(d)))
            .collect();

        let server_jwt_validity = if raw.server_jwt_validity.is_empty() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            duration(p, "server_jwt_validity", &raw.server_jwt_validity)
        };

        // an empty helper is allowed here: user logic may be compiled in instead, and the
        // service refuses to start with neither
        let helper = p
            .ok(shell_words::split(&raw.helper)
                .map_err(|e| invalid("helper", format!("cannot parse command: {e}"))))
            .unwrap_or_default();
        if let Some(b) = &raw.builtin_helper {
            if !helper.is_empty() {
                p.add(invalid(
                    "builtin_helper",
                    "set either helper or builtin_helper, not both",
                ));
            }
            p.ok(b.check().map_err(|e| invalid("builtin_helper", e)));
        }

        let nats = match raw.nats {
            Some(n) => n,
            None => {
                p.add(invalid(
                    "nats",
                    "section is required (servers: [nats://...])",
                ));
                NatsSection {
                    servers: vec![String::new()],
                    user: default_nats_user(),
                    tls: None,
                }
            }
        };
        if nats.servers.is_empty() {
            p.add(invalid("nats.servers", "needs at least one broker URL"));
        }
        if let Some(tls) = &nats.tls {
            p.ok(tls.check("nats.tls"));
        }
        if raw.broker_provisioning_password.is_empty() {
            p.add(invalid(
                "broker_provisioning_password",
                "is required: the provisioner logs in to the provisioning account with it",
            ));
        }

        let cert_validity = match &raw.ca {
            Some(ca) => duration(p, "ca.validity", &ca.validity),
            None => Duration::from_secs(365 * 24 * 3600),
        };
        if raw.ca.is_some() && !features.pki {
            warnings.push(
                "a ca section is configured but the pki feature is off; it is not used".into(),
            );
        }

        let log_format = match raw.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                p.add(invalid(
                    "log_format",
                    format!("{other:?} is not text or json"),
                ));
                LogFormat::Text
            }
        };
        match raw.loglevel.as_str() {
            "trace" | "debug" | "info" | "warn" | "warning" | "error" => {}
            other => p.add(invalid("loglevel", format!("{other:?} is not a log level"))),
        }

        if raw.leader_election {
            warnings.push(
                "leader_election is ignored: every cluster member is active and work is sharded"
                    .into(),
            );
        }
        if raw.leader_election_name.is_some() {
            warnings.push(
                "leader_election_name is ignored: every cluster member is active and work is sharded"
                    .into(),
            );
        }
        if raw.cluster.is_none() && raw.data_dir.is_none() {
            warnings.push(
                "no data_dir: the ledger is kept in memory only, and a restart forgets every enrollment and revocation"
                    .into(),
            );
        }
        if raw.choria_insecure.is_some() {
            warnings.push("choria_insecure is ignored".into());
        }
        if raw.broker_port.is_some() {
            warnings.push("broker_port is ignored: set nats.servers".into());
        }
        if raw.rego_policy.is_some() {
            warnings.push("rego_policy is not supported and is ignored".into());
        }
        if features.upgrades && raw.upgrades_repository.is_empty() && !raw.upgrades_optional {
            p.add(invalid(
                "upgrades_repository",
                "is required when the upgrades feature is on and upgrades are not optional",
            ));
        }
        if raw.max_attempts == 0 {
            p.add(invalid("max_attempts", "must be at least 1"));
        }
        if raw.max_waiting == 0 {
            p.add(invalid("max_waiting", "must be at least 1"));
        }

        let retry_backoff_min = duration(p, "retry_backoff_min", &raw.retry_backoff_min);
        let retry_backoff_max = duration(p, "retry_backoff_max", &raw.retry_backoff_max);
        if retry_backoff_max < retry_backoff_min {
            p.add(invalid(
                "retry_backoff_max",
                "must not be smaller than retry_backoff_min",
            ));
        }

        // a member without cluster.id finds itself by identity (the host name by default)
        let given_identity = raw.identity.clone();
        let host_identity = if raw.identity.is_empty() {
            hostname()
        } else {
            raw.identity
        };
        let had_cluster = raw.cluster.is_some();
        let cluster = raw
            .cluster
            .and_then(|c| check_cluster(c, raw.data_dir.is_some(), &host_identity, p));
        // an admin section leans on its cluster section: checked once that one is right
        let cluster_broken = cluster.is_none() && had_cluster;
        let admin = raw
            .admin
            .filter(|_| !cluster_broken)
            .and_then(|a| check_admin(a, cluster.as_ref(), p));

        // a cluster member is known by its member name everywhere
        let identity = match &cluster {
            Some(c) => {
                let name = c
                    .members
                    .iter()
                    .find(|m| m.id == c.id)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                if !given_identity.is_empty() && given_identity != name {
                    p.add(invalid(
                        "identity",
                        format!(
                            "is {given_identity:?} but cluster member {} is named {name:?}",
                            c.id
                        ),
                    ));
                }
                name
            }
            None => host_identity,
        };
        if !proto::subject::is_valid_identity(&identity) {
            p.add(invalid(
                "identity",
                format!("{identity:?} is not a valid identity"),
            ));
        }

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
            identity,
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
            cluster,
            admin,
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

/// Upstream's deny list entries are Go regular expressions, optionally wrapped in `/.../`.
fn compile_deny_pattern(p: &str) -> Result<Regex, ConfigError> {
    let inner = if p.len() >= 2 && p.starts_with('/') && p.ends_with('/') {
        &p[1..p.len() - 1]
    } else {
        p
    };
    Regex::new(inner).map_err(|e| invalid("cert_deny_list", format!("{p:?}: {e}")))
}

/// The host name from the kernel (uname), not from /proc: the systemd unit hides /proc/sys.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if rc != 0 || name.is_empty() {
        return "provisioner".into();
    }
    name
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
        assert_eq!(hostname(), proc.trim());
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
