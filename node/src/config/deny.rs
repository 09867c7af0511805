//! `cert_deny_list`: names no server may be provisioned as, upstream's Go regular expressions
//! (optionally wrapped in `/.../`); upstream's list when none is given.

use regex::Regex;

use super::{invalid, ConfigError, Problems};

/// Upstream's default certificate deny list: names that would pose as privileged clients.
pub const DEFAULT_DENY_LIST: &[&str] = &[
    r"\.privileged.mcollective$",
    r"\.privileged.choria$",
    r"\.mcollective$",
    r"\.choria$",
];

/// The patterns that compile; each that does not is a problem.
pub(super) fn check_deny_list(given: &[String], p: &mut Problems) -> Vec<Regex> {
    let deny: Vec<String> = if given.is_empty() {
        DEFAULT_DENY_LIST.iter().map(|s| s.to_string()).collect()
    } else {
        given.to_vec()
    };
    deny.iter()
        .filter_map(|d| p.ok(compile_deny_pattern(d)))
        .collect()
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
