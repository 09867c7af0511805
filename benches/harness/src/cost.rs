//! What the members' CPU says about the cost of a server and of the cluster around it.
//!
//! A member's CPU is about `fixed + own × F + fleet × L`, plus, on the leader, `fleet × C`:
//! `F` its own servers' flows, `L` what every member spends per server of the fleet (the
//! replicated ledger, discovery replies), `C` the leader's coordination (forwarded commands,
//! appends to every follower). The leader usually owns fewer servers than a follower
//! (`cluster.leader_share`), so its coordination is its CPU minus a follower's, put back by
//! the servers it owns fewer: `C = cpu(leader) - mean cpu(follower) + F × (mean own(follower)
//! - own(leader))`, per server provisioned. `F` comes from a one-member run at the same cap
//! when there is one (`scaling`), else from the followers (their CPU per own server, which
//! also holds their `L` and start-up: an upper bound, so `C` comes out high).

use serde_json::{json, Value};

/// Members' CPU per server provisioned, and the leader's coordination per server.
#[derive(Debug, Default, PartialEq)]
pub struct Cost {
    pub server_ms: Option<f64>,
    pub coordination_ms: Option<f64>,
    /// `F` as used (ms per own server) and where it came from.
    pub own_server_ms: Option<f64>,
    pub own_server_from: Option<&'static str>,
}

/// `cpu_s` and `own` per member in the same order, `leader` its index; `per_own_ms` a
/// one-member run's CPU per server at the same cap, if known.
pub fn cost(
    cpu_s: &[f64],
    own: &[u64],
    leader: Option<usize>,
    provisioned: u64,
    per_own_ms: Option<f64>,
) -> Cost {
    if provisioned == 0 {
        return Cost::default();
    }
    let per_server = |s: f64| s * 1000.0 / provisioned as f64;
    let mut c = Cost {
        server_ms: Some(per_server(cpu_s.iter().sum())),
        ..Cost::default()
    };
    let Some(l) =
        leader.filter(|l| *l < cpu_s.len() && cpu_s.len() > 1 && own.len() == cpu_s.len())
    else {
        return c;
    };
    let followers: Vec<usize> = (0..cpu_s.len()).filter(|i| *i != l).collect();
    let mean = |f: &dyn Fn(usize) -> f64| {
        followers.iter().map(|i| f(*i)).sum::<f64>() / followers.len() as f64
    };
    let (f_ms, from) = match per_own_ms {
        Some(f) => (f, "one member"),
        None => {
            if followers.iter().any(|i| own[*i] == 0) {
                return c;
            }
            (mean(&|i| cpu_s[i] * 1000.0 / own[i] as f64), "followers")
        }
    };
    let cpu_f = mean(&|i| cpu_s[i]);
    let own_f = mean(&|i| own[i] as f64);
    let coordination_s = cpu_s[l] - cpu_f + f_ms / 1000.0 * (own_f - own[l] as f64);
    c.coordination_ms = Some(per_server(coordination_s));
    c.own_server_ms = Some(f_ms);
    c.own_server_from = Some(from);
    c
}

/// Fills in a run's cost keys from its own numbers (`members_cpu_s`, `own_servers`,
/// `leader`, `provisioned`) and `per_own_ms`.
pub fn annotate(run: &mut Value, per_own_ms: Option<f64>) {
    let cpu: Vec<f64> = run["members_cpu_s"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let own: Vec<u64> = run["own_servers"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let leader = run["leader"]
        .as_str()
        .and_then(|s| s.strip_prefix("prov"))
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1));
    let provisioned = run["provisioned"].as_u64().unwrap_or(0);
    let c = cost(&cpu, &own, leader, provisioned, per_own_ms);
    run["server_cost_ms"] = json!(c.server_ms);
    run["coordination_ms_per_server"] = json!(c.coordination_ms);
    run["own_server_cost_ms"] = json!(c.own_server_ms);
    run["own_server_cost_from"] = json!(c.own_server_from);
    // the target: at most 5 % of one server's provisioning cost
    run["coordination_share"] = json!(match (c.coordination_ms, c.own_server_ms) {
        (Some(x), Some(f)) if f > 0.0 => Some(x / f),
        _ => None,
    });
}

/// For `scaling`: each cluster run's coordination against the median one-member run's CPU
/// per server (the same cap and fleet).
pub fn against_one_member(runs: &mut [Value]) {
    let mut one: Vec<f64> = runs
        .iter()
        .filter(|r| r["members"].as_u64() == Some(1))
        .filter_map(|r| r["server_cost_ms"].as_f64())
        .collect();
    let Some(f) = crate::scaling::median(&mut one) else {
        return;
    };
    for r in runs.iter_mut().filter(|r| r["members"].as_u64() > Some(1)) {
        annotate(r, Some(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaders_smaller_share_is_put_back_before_its_coordination_is_counted() {
        // F = 0.6 ms; the leader owns 600, followers 1,200 each, L = 0.03 ms for 3,000
        // servers, and the leader spends C = 0.08 ms per server on top
        let f = 0.6e-3;
        let base = 0.1 + 3000.0 * 0.03e-3;
        let cpu = [
            base + 600.0 * f + 3000.0 * 0.08e-3,
            base + 1200.0 * f,
            base + 1200.0 * f,
        ];
        let c = cost(&cpu, &[600, 1200, 1200], Some(0), 3000, Some(0.6));
        let got = c.coordination_ms.unwrap();
        assert!((got - 0.08).abs() < 1e-9, "{got}");
        assert_eq!(c.own_server_from, Some("one member"));
        // without a one-member run, followers' CPU per own server (with L and start-up in
        // it) stands in for F: higher, so C comes out higher too
        let c = cost(&cpu, &[600, 1200, 1200], Some(0), 3000, None);
        assert!(c.coordination_ms.unwrap() > 0.08);
        assert_eq!(c.own_server_from, Some("followers"));
    }

    #[test]
    fn one_member_or_no_leader_has_no_coordination() {
        assert_eq!(
            cost(&[1.0], &[100], Some(0), 100, None).coordination_ms,
            None
        );
        assert_eq!(
            cost(&[1.0, 1.0], &[50, 50], None, 100, None).coordination_ms,
            None
        );
        assert_eq!(
            cost(&[1.0, 1.0], &[50, 50], Some(0), 0, None),
            Cost::default()
        );
    }

    #[test]
    fn a_scaling_run_is_measured_against_one_member() {
        let mut runs = vec![
            json!({"members": 1, "provisioned": 100, "members_cpu_s": [0.06], "server_cost_ms": 0.6}),
            json!({"members": 3, "provisioned": 100, "leader": "prov2",
                   "members_cpu_s": [0.03, 0.02, 0.03], "own_servers": [40, 20, 40]}),
        ];
        against_one_member(&mut runs);
        // 0.02 - 0.03 + 0.6 ms × 20 = 0.002 s over 100 servers
        let c = runs[1]["coordination_ms_per_server"].as_f64().unwrap();
        assert!((c - 0.02).abs() < 1e-9, "{c}");
        assert!((runs[1]["coordination_share"].as_f64().unwrap() - 0.02 / 0.6).abs() < 1e-9);
    }
}
