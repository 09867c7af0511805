//! The benchmark harness itself, run small: each scenario it reports on must produce the
//! numbers BENCHMARKS.md is built from. These check what the runs report, not how fast.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = dir.join("runs.json");
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run bench");
    assert!(status.success(), "bench {args:?}: {status}");
    assert!(
        out.with_extension("svg").exists(),
        "no plot for bench {args:?}"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("results"))
        .expect("results are JSON");
    doc["runs"].as_array().expect("runs").clone()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

const KEYS: &[&str] = &[
    "scenario",
    "members",
    "servers",
    "provisioned",
    "duplicates",
    "lost",
    "elapsed_s",
    "servers_per_minute",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "stall_ms",
    "helper_delay_ms",
    "member_cpu_s",
    "sim_cpu_s",
    "peak_rss_mb",
    "key_type",
    "enrollment",
];

#[test]
fn throughput_with_the_shell_helper_reports_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(
        dir.path(),
        &[
            "throughput",
            "--servers",
            "40",
            "--members",
            "1",
            "--logic",
            "shell",
        ],
    );
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    for k in KEYS {
        assert!(r.get(k).is_some(), "no {k} in {r}");
    }
    assert_eq!(n(r, "provisioned"), 40, "{r}");
    assert_eq!(n(r, "verified"), 40, "{r}");
    assert_eq!(n(r, "lost"), 0, "{r}");
    assert_eq!(n(r, "duplicates"), 0, "{r}");
    assert_eq!(r["timeline_ms"].as_array().map(Vec::len), Some(40), "{r}");
    assert!(r["servers_per_minute"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(n(r, "p50_ms") <= n(r, "p99_ms"), "{r}");
    assert!(
        r["helper_cpu_s"].as_f64().unwrap_or(0.0) > 0.0,
        "helpers ran: {r}"
    );
    assert_eq!(r["ledger"]["enrolled"], serde_json::json!([40]), "{r}");
    // uncapped, a member runs its flows on the box's CPUs, as many as it may use
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert_eq!(r["members_flow_threads"], serde_json::json!([cpus]), "{r}");
}

#[test]
fn failover_kills_the_leader_then_a_follower_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(dir.path(), &["failover", "--servers", "300"]);
    let r = &runs[0];
    assert_eq!(n(r, "members"), 3);
    let kills = r["kills"].as_array().expect("kills");
    assert_eq!(kills.len(), 2, "{r}");
    assert_eq!(kills[0]["role"], "leader", "{r}");
    assert_eq!(kills[1]["role"], "follower", "{r}");
    assert_ne!(kills[0]["killed"], kills[1]["killed"], "{r}");
    assert!(r["stall_ms"].is_u64(), "{r}");
    assert_eq!(n(r, "provisioned"), 300, "{r}");
    assert_eq!(n(r, "lost"), 0, "{r}");
    assert_eq!(n(r, "duplicates"), 0, "{r}");
    // a member that ended on its own says how (and its log's end is on stderr)
    assert_eq!(r["exited"], serde_json::json!([]), "{r}");
    assert_eq!(r["ledger"]["digests_agree"], true, "{r}");
    assert_eq!(
        r["ledger"]["enrolled"],
        serde_json::json!([300, 300, 300]),
        "{r}"
    );
}

/// Each member in its own CPU-capped cgroup (needs root, as CI and the bench machines run):
/// the run says the cap, each member's CPU, throttled time and threads, and who led.
#[test]
fn capped_members_report_their_cpu_throttling_and_leader() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(
        dir.path(),
        &[
            "throughput",
            "--servers",
            "60",
            "--members",
            "3",
            "--member-cpu",
            "0.2",
        ],
    );
    let r = &runs[0];
    assert_eq!(r["member_cpu"].as_f64(), Some(0.2), "{r}");
    assert_eq!(n(r, "provisioned"), 60, "{r}");
    let cpu = r["members_cpu_s"].as_array().expect("members_cpu_s");
    let throttled = r["members_throttled_s"]
        .as_array()
        .expect("members_throttled_s");
    assert_eq!(cpu.len(), 3, "{r}");
    assert_eq!(throttled.len(), 3, "{r}");
    assert!(cpu.iter().all(|c| c.as_f64().unwrap_or(0.0) > 0.0), "{r}");
    assert!(throttled.iter().all(Value::is_f64), "{r}");
    // in its group from before it ran, each member sized its flows' runtime by the cap (0.2
    // core: one thread), not by the box's two cores
    assert_eq!(
        r["members_flow_threads"],
        serde_json::json!([1, 1, 1]),
        "{r}"
    );
    // and the CPU each member spent, by thread: every member of a cluster runs Raft's
    let by_thread = r["members_cpu_by_thread_s"].as_array().expect("by thread");
    assert_eq!(by_thread.len(), 3, "{r}");
    for m in by_thread {
        assert!(m["raft"].as_f64().unwrap_or(0.0) > 0.0, "{m}");
        assert!(m["tokio-rt-worker"].as_f64().unwrap_or(0.0) > 0.0, "{m}");
    }
    assert!(
        ["prov1", "prov2", "prov3"].contains(&r["leader"].as_str().unwrap_or("")),
        "{r}"
    );
    assert!(r["coordination_ms_per_server"].is_f64(), "{r}");
    // from the ledger: who enrolled what, all 60 between them
    let own = r["own_servers"].as_array().expect("own_servers");
    assert_eq!(own.len(), 3, "{r}");
    assert_eq!(own.iter().filter_map(Value::as_u64).sum::<u64>(), 60, "{r}");
    assert_eq!(r["own_server_cost_from"], "followers", "{r}");
    assert_eq!(r["stopped_by"], "every server done", "{r}");
}

/// `groups`: a member alone, then 3 capped machines holding three 3-member clusters in a
/// ring; every group provisions its share, its ledgers agree, and each machine's CPU is the
/// sum over its three processes.
#[test]
fn groups_place_three_clusters_on_three_capped_machines() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(
        dir.path(),
        &[
            "groups",
            "--servers",
            "60",
            "--members",
            "3",
            "--member-cpu",
            "0.3",
        ],
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(n(&runs[0], "members"), 1);
    let r = &runs[1];
    assert_eq!(r["scenario"], "groups", "{r}");
    assert_eq!(n(r, "provisioned"), 60, "{r}");
    assert_eq!(n(r, "duplicates"), 0, "{r}");
    let groups = r["group_runs"].as_array().expect("group_runs");
    assert_eq!(groups.len(), 3, "{r}");
    for g in groups {
        assert_eq!(n(g, "provisioned"), 20, "{g}");
        assert_eq!(g["ledger"]["digests_agree"], true, "{g}");
        assert_eq!(g["machines"].as_array().map(Vec::len), Some(3), "{g}");
    }
    let cpu = r["members_cpu_s"].as_array().expect("members_cpu_s");
    assert_eq!(cpu.len(), 3, "{r}");
    assert!(cpu.iter().all(|c| c.as_f64().unwrap_or(0.0) > 0.0), "{r}");
    assert!(r["ratio_to_one_member"].is_f64(), "{r}");
}

/// `groups --replicas 1`: provisioners alone on their machines, sharing nothing but the box;
/// each provisions its share with a ledger of its own.
#[test]
fn groups_of_one_are_provisioners_that_share_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(
        dir.path(),
        &[
            "groups",
            "--servers",
            "40",
            "--members",
            "2",
            "--replicas",
            "1",
            "--member-cpu",
            "0.3",
        ],
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
    let r = &runs[1];
    assert_eq!(n(r, "replicas"), 1, "{r}");
    assert_eq!(n(r, "provisioned"), 40, "{r}");
    let groups = r["group_runs"].as_array().expect("group_runs");
    assert_eq!(groups.len(), 2, "{r}");
    for (i, g) in groups.iter().enumerate() {
        assert_eq!(n(g, "provisioned"), 20, "{g}");
        // one machine each, and no Raft to lead
        assert_eq!(g["machines"], serde_json::json!([i + 1]), "{g}");
        assert!(g["leader_machine"].is_null(), "{g}");
        assert_eq!(g["ledger"]["enrolled"], serde_json::json!([20]), "{g}");
    }
}

/// A run that cannot finish in time ends at its deadline and says so, with what it did.
#[test]
fn a_run_past_its_deadline_stops_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(
        dir.path(),
        &[
            "throughput",
            "--servers",
            "400",
            "--members",
            "1",
            "--member-cpu",
            "0.01",
            "--deadline-s",
            "3",
        ],
    );
    let r = &runs[0];
    assert_eq!(r["stopped_by"], "deadline of 3 s", "{r}");
    assert!(n(r, "lost") > 0, "{r}");
    assert!(r["elapsed_s"].as_f64().unwrap_or(0.0) < 30.0, "{r}");
}

#[test]
fn latency_runs_servers_arriving_at_a_fixed_rate() {
    let dir = tempfile::tempdir().unwrap();
    let runs = bench(
        dir.path(),
        &[
            "latency",
            "--servers",
            "60",
            "--members",
            "1",
            "--arrival-rate",
            "30",
        ],
    );
    assert_eq!(runs.len(), 1, "an explicit rate skips the capacity run");
    let r = &runs[0];
    assert_eq!(r["arrival_rate"].as_f64(), Some(30.0), "{r}");
    assert_eq!(n(r, "provisioned"), 60, "{r}");
    // 60 servers arriving at 30/s take about two seconds to arrive
    assert!(r["elapsed_s"].as_f64().unwrap_or(0.0) >= 1.9, "{r}");
}
