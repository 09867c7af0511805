//! The configuration file as written: every key it may hold, upstream's and ours, with its
//! default. [`super::Config::check`] turns it into the checked [`super::Config`].

use std::path::PathBuf;

use serde::Deserialize;

use super::{AdminSection, CaSection, ClusterSection, Features, NatsSection};

/// The file as written; see [`Config`] for the checked form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    // upstream keys
    #[serde(default)]
    pub(super) workers: usize,
    #[serde(default = "default_interval")]
    pub(super) interval: String,
    #[serde(default)]
    pub(super) logfile: String,
    #[serde(default = "default_loglevel")]
    pub(super) loglevel: String,
    #[serde(default)]
    pub(super) helper: String,
    #[serde(default)]
    pub(super) builtin_helper: Option<crate::template::BuiltinHelper>,
    #[serde(default)]
    pub(super) token: String,
    #[serde(default)]
    pub(super) site: String,
    #[serde(default)]
    pub(super) monitor_port: u16,
    #[serde(default)]
    pub(super) broker_provisioning_password: String,
    #[serde(default)]
    pub(super) cert_deny_list: Vec<String>,
    #[serde(default)]
    pub(super) jwt_verify_cert: String,
    #[serde(default)]
    pub(super) jwt_signing_key: String,
    #[serde(default)]
    pub(super) jwt_signing_token: String,
    #[serde(default)]
    pub(super) server_jwt_validity: String,
    #[serde(default)]
    pub(super) lifecycle_component: String,
    #[serde(default)]
    pub(super) leader_election: bool,
    /// Upstream's helm chart names the election; there is none to name here.
    #[serde(default)]
    pub(super) leader_election_name: Option<String>,
    #[serde(default)]
    pub(super) upgrades_repository: String,
    #[serde(default)]
    pub(super) upgrades_optional: bool,
    #[serde(default)]
    pub(super) features: Features,
    // upstream keys we accept and do not use
    #[serde(default)]
    pub(super) choria_insecure: Option<bool>,
    #[serde(default)]
    pub(super) broker_port: Option<u16>,
    #[serde(default)]
    pub(super) rego_policy: Option<String>,

    // our keys
    #[serde(default)]
    pub(super) identity: String,
    pub(super) nats: Option<NatsSection>,
    pub(super) ca: Option<CaSection>,
    #[serde(default)]
    pub(super) data_dir: Option<PathBuf>,
    #[serde(default = "default_log_format")]
    pub(super) log_format: String,
    #[serde(default = "default_helper_timeout")]
    pub(super) helper_timeout: String,
    #[serde(default = "default_helper_max_output")]
    pub(super) helper_max_output: usize,
    #[serde(default = "default_rpc_timeout")]
    pub(super) rpc_timeout: String,
    #[serde(default = "default_discovery_timeout")]
    pub(super) discovery_timeout: String,
    #[serde(default = "default_retry_min")]
    pub(super) retry_backoff_min: String,
    #[serde(default = "default_retry_max")]
    pub(super) retry_backoff_max: String,
    #[serde(default = "default_max_attempts")]
    pub(super) max_attempts: u32,
    #[serde(default = "default_reenroll_limit")]
    pub(super) reenroll_limit: u32,
    #[serde(default = "default_reenroll_window")]
    pub(super) reenroll_window: String,
    #[serde(default = "default_failed_retention")]
    pub(super) failed_retention: String,
    #[serde(default = "default_max_waiting")]
    pub(super) max_waiting: usize,
    #[serde(default = "default_data_dir_min_free_mb")]
    pub(super) data_dir_min_free_mb: u64,
    #[serde(default = "default_monitor_listen")]
    pub(super) monitor_listen: String,
    #[serde(default)]
    pub(super) cluster: Option<ClusterSection>,
    #[serde(default)]
    pub(super) admin: Option<AdminSection>,
    /// Inventory facts kept in the ledger for reprovision filters; default: every top-level
    /// fact with a scalar value, up to 2 KiB per server.
    #[serde(default)]
    pub(super) ledger_facts: Option<Vec<String>>,
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
