//! What the harness sets on and asks of provisioner members: their options for a run's user
//! logic and cluster settings, which of them ended during a run, and what their ledgers say
//! at the end.

use std::time::Duration;

use cluster_tests::ProvisionerOptions;
use serde_json::{json, Value};

use crate::cli::{Args, Logic};

/// The provisioner options for a run's user logic.
pub(crate) fn options(args: &Args, logic: Logic, delay_ms: u64) -> ProvisionerOptions {
    let cluster_extra = [
        args.commit_linger_ms
            .map(|ms| format!("  commit_linger: {ms}ms\n")),
        args.leader_share
            .map(|share| format!("  leader_share: {share}\n")),
        args.raft_heartbeat_ms
            .map(|ms| format!("  heartbeat: {ms}ms\n  election_timeout: {}ms\n", ms * 4)),
    ]
    .into_iter()
    .flatten()
    .collect::<String>();
    let opts = match logic {
        Logic::Builtin => ProvisionerOptions {
            token: "bench-token".into(),
            workers: args.workers,
            helper: String::new(),
            extra_yaml: cluster_tests::BUILTIN_HELPER_YAML.into(),
            ..Default::default()
        },
        Logic::Python | Logic::Shell => {
            let base = ProvisionerOptions::default();
            let program = match logic {
                Logic::Shell => cluster_tests::repo_root()
                    .join("deploy/examples/helper.sh")
                    .display()
                    .to_string(),
                _ => base.helper.clone(),
            };
            // the delay runs inside the helper's own process, as a slow lookup would
            let helper = if delay_ms > 0 {
                format!(
                    "/bin/sh -c 'sleep {}; exec {}'",
                    delay_ms as f64 / 1000.0,
                    program
                )
            } else {
                program
            };
            ProvisionerOptions {
                token: "bench-token".into(),
                workers: args.workers,
                helper,
                ..base
            }
        }
    };
    ProvisionerOptions {
        cluster_extra,
        ..opts
    }
}

/// Members whose process ended during the run (none is killed without being started again),
/// each with how it ended; the end of its log goes to stderr, so a run that lost a member
/// says why.
pub(crate) fn exited(members: &mut [cluster_tests::ProvisionerProcess]) -> Value {
    let mut out = Vec::new();
    for m in members.iter_mut() {
        let Ok(Some(status)) = m.proc.child.try_wait() else {
            continue;
        };
        let log = m.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "bench: {} exited during the run ({status}); the end of its log:\n{}",
            m.proc.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        out.push(json!({ "member": m.proc.name, "status": status.to_string() }));
    }
    Value::Array(out)
}

/// What the members' ledgers say at the end: enrolled records per live member, whether
/// their digests agree (`null` where a member did not answer), and how many each member
/// enrolled.
/// Followers may be a moment behind, so this asks again for up to 10 s.
pub(crate) fn ledger_check(members: &[cluster_tests::ProvisionerProcess]) -> Value {
    let start = std::time::Instant::now();
    loop {
        let statuses: Vec<Value> = members.iter().map(|m| m.status()).collect();
        let enrolled: Vec<Value> = statuses
            .iter()
            .map(|s| s["ledger"]["by_state"]["enrolled"].clone())
            .collect();
        let digests: Vec<&Value> = statuses.iter().map(|s| &s["ledger"]["digest"]).collect();
        let agree =
            digests.windows(2).all(|w| w[0] == w[1]) && !digests.iter().any(|d| d.is_null());
        if agree || start.elapsed() > Duration::from_secs(10) {
            // who enrolled what (every replica says the same once the digests agree)
            let enrolled_by = statuses
                .iter()
                .map(|s| s["ledger"]["enrolled_by"].clone())
                .find(|b| b.is_object())
                .unwrap_or(Value::Null);
            return json!({ "enrolled": enrolled, "digests_agree": agree, "enrolled_by": enrolled_by });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
