//! One run of a member cluster (every scenario but `groups` and `ledger`): a broker, a CA,
//! the simulator and the members on loopback, the failover kills when asked, and the run's
//! object of results from what the simulator, `/proc` and the members say at its end.

use std::time::Duration;

use cluster_tests::{init_ca, start_members, FleetOptions, FleetProcess, Nats, ProvisionerOptions};
use serde_json::{json, Value};

use crate::cli::{Args, Logic};
use crate::members::{exited, ledger_check, options};
use crate::{cgroup, cost, failover, steady, Plan};

pub(crate) fn run(args: &Args, plan: Plan) -> Result<Value, String> {
    let dir = tempfile::Builder::new()
        .prefix("provisioner-bench-")
        .tempdir()
        .map_err(|e| format!("work directory: {e}"))?;
    let nats = Nats::start(dir.path());
    let ca = init_ca(dir.path());
    let events = dir.path().join("fleet-events.jsonl");
    let mut extra = vec!["--events".to_string(), events.display().to_string()];
    let go = dir.path().join("arrive");
    if let Some(rate) = plan.arrival_rate {
        extra.extend(["--arrival-rate".to_string(), rate.to_string()]);
        extra.extend(["--arrive-after".to_string(), go.display().to_string()]);
    }
    let mut fleet = FleetProcess::start(
        dir.path(),
        &nats,
        &ca.0,
        &FleetOptions {
            servers: args.servers,
            key_type: args.key_type.clone(),
            token: "bench-token".into(),
            timeout_secs: args.deadline().as_secs(),
            extra,
        },
        true,
    );
    // each member in its own capped group from before it runs (its runtime sizes its
    // threads by the cap)
    let caps = match args.member_cpu {
        Some(cores) => (0..plan.members)
            .map(|i| {
                cgroup::CpuCap::create(
                    &format!("provisioner-bench-{}-prov{}", std::process::id(), i + 1),
                    cores,
                    args.member_cpu_period_ms,
                )
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let mut provisioners = start_members(
        dir.path(),
        &nats,
        &ca,
        &fleet.signer_pub,
        plan.members,
        &ProvisionerOptions {
            cgroups: caps.iter().map(cgroup::CpuCap::procs_file).collect(),
            ..options(args, plan.logic, plan.delay_ms)
        },
        None,
    );
    if plan.arrival_rate.is_some() {
        // servers arrive once every member listens, as into a running cluster
        for p in &mut provisioners {
            p.wait_ready(Duration::from_secs(120));
        }
        std::fs::write(&go, "go\n").map_err(|e| format!("{}: {e}", go.display()))?;
    }
    let trace = steady::Trace::start(provisioners.iter().map(|p| p.proc.child.id()).collect());
    let kills = if plan.kill {
        failover::drive(&events, args.servers, &mut provisioners, &mut fleet)
    } else {
        Vec::new()
    };
    // the simulator stops itself at the deadline; this only guards against a hung one
    let summary = fleet.finish(args.deadline() + Duration::from_secs(120));
    let samples = trace.finish();
    if args.keep {
        eprintln!("bench: work directory kept: {}", dir.path().display());
    }
    // read the members while they run: /proc forgets a process once it is reaped
    let usage: Vec<fleet::usage::Usage> = provisioners
        .iter()
        .map(|p| fleet::usage::of(p.proc.child.id()).unwrap_or_default())
        .collect();
    // where each member's CPU went: its flows' threads, Raft's, RocksDB's
    let by_thread: Vec<Value> = provisioners
        .iter()
        .map(|p| json!(fleet::usage::by_thread(p.proc.child.id()).unwrap_or_default()))
        .collect();
    let (throttled, saturated) = cgroup::held_back(&caps);
    let leader = provisioners
        .iter()
        .find_map(|m| m.status()["raft"]["leader"].as_u64());
    // each member's flows' runtime threads, as it sized them by the CPUs it may use
    let flow_threads: Vec<Option<u64>> = provisioners
        .iter()
        .map(|m| m.status()["work"]["threads"].as_u64())
        .collect();
    // Raft log entries written over the whole run (start-up and heartbeats included)
    let log_entries = provisioners
        .iter()
        .filter_map(|m| m.status()["raft"]["last_log_index"].as_u64())
        .max();
    let ledger = ledger_check(&provisioners);
    // servers each member enrolled, as the ledger says
    let own_servers: Vec<u64> = provisioners
        .iter()
        .map(|p| {
            ledger["enrolled_by"][p.proc.name.as_str()]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    let exited = exited(&mut provisioners);
    drop(provisioners);
    if args.keep {
        let _ = dir.keep();
    }
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    let servers = n("servers");
    let provisioned = n("provisioned");
    let timeline: Vec<u64> = summary["timeline_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let kills = failover::stalls(&kills, n("start_unix_ms"), &timeline);
    let steady = steady::window(n("start_unix_ms"), &timeline, &samples);
    let stall = kills.iter().filter_map(|k| k["stall_ms"].as_u64()).max();
    let members_cpu_s: Vec<f64> = usage.iter().map(|u| u.cpu_s).collect();
    let stopped_by = if summary["timed_out"].as_bool().unwrap_or(false) {
        format!("deadline of {} s", args.deadline().as_secs())
    } else {
        "every server done".to_string()
    };
    let mut run = json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "members": plan.members,
        "servers": servers,
        "provisioned": provisioned,
        // provisioned twice, or one serial delivered to two servers
        "duplicates": n("provisioned_twice") + n("duplicate_serials"),
        // configured again before the restart: a flow redone after a kill
        "reconfigured": n("reconfigured"),
        "lost": servers.saturating_sub(provisioned + n("shutdowns")),
        "elapsed_s": summary["seconds"],
        "servers_per_minute": summary["rate_per_minute"],
        "p50_ms": n("latency_p50_ms"),
        "p90_ms": n("latency_p90_ms"),
        "p99_ms": n("latency_p99_ms"),
        "ready_p50_ms": n("ready_p50_ms"),
        "ready_p99_ms": n("ready_p99_ms"),
        "stall_ms": stall,
        "kills": kills,
        "arrival_rate": plan.arrival_rate,
        "helper_delay_ms": plan.delay_ms,
        "helper": match plan.logic {
            Logic::Builtin => "builtin",
            Logic::Python => "deploy/examples/helper.py",
            Logic::Shell => "deploy/examples/helper.sh",
        },
        "member_cpu_s": members_cpu_s.iter().sum::<f64>(),
        "member_cpu": args.member_cpu,
        "member_cpu_period_ms": args.member_cpu.map(|_| args.member_cpu_period_ms),
        "commit_linger_ms": args.commit_linger_ms,
        "workers": args.workers,
        "members_cpu_s": members_cpu_s,
        "members_throttled_s": throttled,
        "leader": leader.map(|id| format!("prov{id}")),
        "log_entries": log_entries,
        "own_servers": own_servers,
        "stopped_by": stopped_by,
        "helper_cpu_s": usage.iter().map(|u| u.children_cpu_s).sum::<f64>(),
        "sim_cpu_s": summary["sim_usage"]["cpu_s"],
        "nats_cpu_s": fleet::usage::of(nats.pid()).map(|u| u.cpu_s),
        "peak_rss_mb": usage.iter().map(|u| u.peak_rss_mb).fold(0.0, f64::max),
        "key_type": args.key_type,
        "enrollment": "x509",
        "verified": n("verified"),
        "ledger": ledger,
        "exited": exited,
        "timed_out": summary["timed_out"],
        "timeline_ms": timeline,
    });
    run["leader_share"] = json!(args.leader_share);
    run["raft_heartbeat_ms"] = json!(args.raft_heartbeat_ms);
    run["members_saturated"] = json!(saturated);
    run["members_flow_threads"] = json!(flow_threads);
    run["members_cpu_by_thread_s"] = json!(by_thread);
    if let (Value::Object(w), Some(r)) = (steady, run.as_object_mut()) {
        r.extend(w);
    }
    cost::annotate(&mut run, None);
    Ok(run)
}
