//! The `groups` scenario: what a Raft group per shard with three replicas
//! (`docs/design-partial-replication.md`) would give, measured before it is built.
//!
//! `--members` capped machines host as many independent 3-member clusters (a group each), each
//! with its own broker and its own share of the fleet, the members of group `g` on machines
//! `g`, `g + 1` and `g + 2` (mod the machines), one cgroup per machine holding every process on
//! it. So every server is applied by three machines whatever their number, and every machine
//! leads about one group, which is what the design changes; what it would share in one process
//! (a broker connection, a gRPC server, discovery, start-up) is paid once per group here, so
//! this rate is a floor for the design, not its promise. Interleaved with one member at the
//! same cap for the ratio.
//!
//! With `--replicas 1` each group is a provisioner alone on its machine: nothing is
//! replicated or coordinated, and what the machines reach together against one member alone is
//! what the box lets N capped members reach (its broker, simulator and caches shared), the
//! yardstick for a cluster's ratio on it.

use std::time::Duration;

use cluster_tests::{init_ca, start_members, FleetOptions, FleetProcess, Nats, ProvisionerOptions};
use serde_json::{json, Value};

use crate::cli::Args;
use crate::members::{ledger_check, options};
use crate::{cgroup, steady};

/// Replicas of every server: the design's three.
pub const REPLICAS: u64 = 3;

/// Machine that member `i` of group `g` runs on.
pub fn machine_of(g: u64, i: u64, machines: u64) -> u64 {
    (g + i) % machines
}

/// `servers` split over `groups` as evenly as whole servers go.
pub fn split(servers: usize, groups: u64) -> Vec<usize> {
    let g = groups.max(1) as usize;
    (0..g)
        .map(|i| servers / g + usize::from(i < servers % g))
        .collect()
}

/// Timelines of several fleets (ms after each one's `start_unix_ms`) as one: ms after the
/// earliest start, sorted; and that start.
pub fn merge(fleets: &[(u64, Vec<u64>)]) -> (u64, Vec<u64>) {
    let start = fleets
        .iter()
        .filter(|(s, t)| *s > 0 && !t.is_empty())
        .map(|(s, _)| *s)
        .min()
        .unwrap_or(0);
    let mut all: Vec<u64> = fleets
        .iter()
        .filter(|(s, _)| *s > 0)
        .flat_map(|(s, t)| t.iter().map(move |ms| s + ms - start))
        .collect();
    all.sort_unstable();
    (start, all)
}

pub fn run(args: &Args, machines: u64) -> Result<Value, String> {
    let Some(cores) = args.member_cpu else {
        return Err("groups: --member-cpu is needed (a cap per machine)".into());
    };
    let replicas = args.replicas;
    if replicas == 0 || machines < replicas {
        return Err(format!(
            "groups: --members must be at least --replicas ({replicas}), and --replicas at least 1"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("provisioner-bench-groups-")
        .tempdir()
        .map_err(|e| format!("work directory: {e}"))?;
    let caps = (0..machines)
        .map(|m| {
            cgroup::CpuCap::create(
                &format!("provisioner-bench-{}-machine{}", std::process::id(), m + 1),
                cores,
                args.member_cpu_period_ms,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let opts = options(args, args.logic, args.helper_delay_ms.unwrap_or(0));
    let shares = split(args.servers, machines);
    // every group's broker and fleet first, then every member at once, so the groups start
    // together
    let (mut brokers, mut fleets, mut members) = (Vec::new(), Vec::new(), Vec::new());
    for (g, servers) in shares.iter().enumerate() {
        let gdir = dir.path().join(format!("group{}", g + 1));
        std::fs::create_dir_all(&gdir).map_err(|e| format!("{}: {e}", gdir.display()))?;
        let nats = Nats::start(&gdir);
        let ca = init_ca(&gdir);
        let fleet = FleetProcess::start(
            &gdir,
            &nats,
            &ca.0,
            &FleetOptions {
                servers: *servers,
                key_type: args.key_type.clone(),
                token: "bench-token".into(),
                timeout_secs: args.deadline().as_secs(),
                extra: Vec::new(),
            },
            false,
        );
        brokers.push((gdir, nats, ca));
        fleets.push(fleet);
    }
    for (g, ((gdir, nats, ca), fleet)) in brokers.iter().zip(&fleets).enumerate() {
        // each replica on its machine from before it runs
        let placed = ProvisionerOptions {
            cgroups: (0..replicas)
                .map(|i| caps[machine_of(g as u64, i, machines) as usize].procs_file())
                .collect(),
            ..opts.clone()
        };
        let procs = start_members(gdir, nats, ca, &fleet.signer_pub, replicas, &placed, None);
        members.push(procs);
    }
    let pids: Vec<u32> = members
        .iter()
        .flatten()
        .map(|p| p.proc.child.id())
        .collect();
    let trace = steady::Trace::start(pids);
    let summaries: Vec<Value> = fleets
        .into_iter()
        .map(|f| f.finish(args.deadline() + Duration::from_secs(120)))
        .collect();
    let samples = trace.finish();
    let mut machine_cpu = vec![0.0f64; machines as usize];
    let mut group_lines = Vec::new();
    let mut peak_rss: f64 = 0.0;
    for (g, procs) in members.iter().enumerate() {
        let leader = procs
            .iter()
            .find_map(|m| m.status()["raft"]["leader"].as_u64());
        for (i, p) in procs.iter().enumerate() {
            let u = fleet::usage::of(p.proc.child.id()).unwrap_or_default();
            machine_cpu[machine_of(g as u64, i as u64, machines) as usize] += u.cpu_s;
            peak_rss = peak_rss.max(u.peak_rss_mb);
        }
        let s = &summaries[g];
        group_lines.push(json!({
            "group": g + 1,
            "machines": (0..replicas).map(|i| machine_of(g as u64, i, machines) + 1).collect::<Vec<_>>(),
            "leader_machine": leader.map(|id| machine_of(g as u64, id.saturating_sub(1), machines) + 1),
            "servers": s["servers"],
            "provisioned": s["provisioned"],
            "elapsed_s": s["seconds"],
            "start_unix_ms": s["start_unix_ms"],
            "servers_per_minute": s["rate_per_minute"],
            "p50_ms": s["latency_p50_ms"],
            "p99_ms": s["latency_p99_ms"],
            "ledger": ledger_check(procs),
        }));
    }
    let (throttled, saturated) = cgroup::held_back(&caps);
    let nats_cpu: f64 = brokers
        .iter()
        .filter_map(|(_, n, _)| fleet::usage::of(n.pid()).map(|u| u.cpu_s))
        .sum();
    let mut exited = Vec::new();
    for procs in members.iter_mut() {
        if let Value::Array(a) = crate::members::exited(procs) {
            exited.extend(a);
        }
    }
    drop(members);
    drop(brokers);
    if args.keep {
        eprintln!("bench: work directory kept: {}", dir.path().display());
        let _ = dir.keep();
    }
    let sum = |k: &str| -> u64 { summaries.iter().map(|s| s[k].as_u64().unwrap_or(0)).sum() };
    let (start, timeline) = merge(
        &summaries
            .iter()
            .map(|s| {
                (
                    s["start_unix_ms"].as_u64().unwrap_or(0),
                    s["timeline_ms"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>(),
    );
    let seconds = timeline.last().map(|ms| *ms as f64 / 1000.0).unwrap_or(0.0);
    let (servers, provisioned) = (sum("servers"), sum("provisioned"));
    let timed_out = summaries
        .iter()
        .any(|s| s["timed_out"].as_bool() == Some(true));
    let mut run = json!({
        "scenario": "groups",
        "members": machines,
        "groups": machines,
        "replicas": replicas,
        "servers": servers,
        "provisioned": provisioned,
        "duplicates": sum("provisioned_twice") + sum("duplicate_serials"),
        "reconfigured": sum("reconfigured"),
        "lost": servers.saturating_sub(provisioned + sum("shutdowns")),
        "elapsed_s": seconds,
        "servers_per_minute": if seconds > 0.0 { timeline.len() as f64 / seconds * 60.0 } else { 0.0 },
        "member_cpu": cores,
        "member_cpu_period_ms": args.member_cpu_period_ms,
        "workers": args.workers,
        "commit_linger_ms": args.commit_linger_ms,
        "raft_heartbeat_ms": args.raft_heartbeat_ms,
        "member_cpu_s": machine_cpu.iter().sum::<f64>(),
        // per machine: the three processes on it
        "members_cpu_s": machine_cpu,
        "members_throttled_s": throttled,
        "members_saturated": saturated,
        "group_runs": group_lines,
        "sim_cpu_s": summaries.iter().filter_map(|s| s["sim_usage"]["cpu_s"].as_f64()).sum::<f64>(),
        "nats_cpu_s": nats_cpu,
        "peak_rss_mb": peak_rss,
        "key_type": args.key_type,
        "enrollment": "x509",
        "exited": exited,
        "timed_out": timed_out,
        "stopped_by": if timed_out { format!("deadline of {} s", args.deadline().as_secs()) } else { "every server done".into() },
        "start_unix_ms": start,
        "timeline_ms": timeline,
    });
    let steady = steady::window(start, &timeline, &samples);
    if let (Value::Object(w), Some(r)) = (steady, run.as_object_mut()) {
        r.extend(w);
    }
    crate::cost::annotate(&mut run, None);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_machine_holds_three_members_of_different_groups() {
        for machines in [3u64, 5] {
            let mut per_machine = vec![Vec::new(); machines as usize];
            for g in 0..machines {
                for i in 0..REPLICAS {
                    per_machine[machine_of(g, i, machines) as usize].push(g);
                }
            }
            for groups in per_machine {
                let mut distinct = groups.clone();
                distinct.dedup();
                assert_eq!(groups.len(), 3);
                assert_eq!(distinct.len(), 3, "{groups:?}");
            }
        }
    }

    #[test]
    fn the_fleet_splits_whole_and_timelines_merge_on_the_earliest_start() {
        assert_eq!(split(7502, 5), vec![1501, 1501, 1500, 1500, 1500]);
        assert_eq!(split(7502, 5).iter().sum::<usize>(), 7502);
        let (start, t) = merge(&[(1000, vec![5, 10]), (1003, vec![1]), (0, vec![7])]);
        assert_eq!(start, 1000);
        assert_eq!(t, vec![4, 5, 10]);
    }
}
