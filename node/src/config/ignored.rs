//! Keys that are accepted and change nothing (upstream's, for an existing file to keep
//! working), and a setup that works but costs something: each a warning, logged once logging
//! is up.

use super::raw::RawConfig;

/// One warning each, in the order the keys are documented.
pub(super) fn ignored_keys(raw: &RawConfig, warnings: &mut Vec<String>) {
    if raw.leader_election {
        warnings.push(
            "leader_election is ignored: every cluster member is active and work is sharded".into(),
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
}
