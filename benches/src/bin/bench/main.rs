//! The benchmark harness: sets everything up on loopback (nats-server, a CA, provisioner
//! members as processes, the fleet simulator), runs a scenario, tears it down, and reports
//! each run as a row of a table and an object of `{"runs": [...]}` in a JSON file.
//!
//! Scenarios so far: `throughput` (a fleet waiting, `--members` members active) and `scaling`
//! (the same fleet with 1, 3 and 5 members). Member CPU and peak memory are read from
//! `/proc` while the members still run; the simulator reports its own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use cluster_tests::{init_ca, start_members, FleetOptions, FleetProcess, Nats, ProvisionerOptions};
use serde_json::{json, Value};

/// Who decides each server's configuration.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Logic {
    /// `builtin_helper`: compiled-in, no process per server
    Builtin,
    /// `deploy/examples/helper.py`, a Python process per server
    Python,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Throughput,
    Scaling,
    /// The Python helper forked per server, then again with `--helper-delay-ms` added to
    /// each run (a slow CA or CMDB)
    Helper,
}

#[derive(Parser)]
#[command(about = "Measures provisioning: servers/minute, latency, CPU and memory")]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Simulated servers waiting in provisioning mode
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    /// Members for `throughput`
    #[arg(long, default_value_t = 3)]
    members: u64,
    /// Key type the servers make (p256, rsa2048...)
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Concurrent provisioning flows per member
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// User logic
    #[arg(long, value_enum, default_value = "builtin")]
    logic: Logic,
    /// Delay added to each helper run in the `helper` scenario
    #[arg(long, default_value_t = 100)]
    helper_delay_ms: u64,
    /// Where to write `{"runs": [...]}`
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // (members, logic, helper delay) of each run
    let plan: Vec<(u64, Logic, u64)> = match args.scenario {
        Scenario::Throughput => vec![(args.members, args.logic, 0)],
        Scenario::Scaling => [1, 3, 5].map(|m| (m, args.logic, 0)).to_vec(),
        Scenario::Helper => vec![
            (args.members, Logic::Python, 0),
            (args.members, Logic::Python, args.helper_delay_ms),
        ],
    };
    let mut runs = Vec::new();
    for (m, logic, delay) in plan {
        eprintln!(
            "bench: {:?} with {m} member(s), {} servers, {logic:?} logic, helper delay {delay} ms",
            args.scenario, args.servers
        );
        match run(&args, m, logic, delay) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("bench: run failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print_table(&runs);
    let doc = json!({ "runs": runs });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Err(e) = std::fs::write(&args.out, text + "\n") {
        eprintln!("bench: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("bench: wrote {}", args.out.display());
    ExitCode::SUCCESS
}

fn run(args: &Args, members: u64, logic: Logic, delay_ms: u64) -> Result<Value, String> {
    let dir = tempfile::Builder::new()
        .prefix("provisioner-bench-")
        .tempdir()
        .map_err(|e| format!("work directory: {e}"))?;
    let nats = Nats::start(dir.path());
    let ca = init_ca(dir.path());
    let fleet = FleetProcess::start(
        dir.path(),
        &nats,
        &ca.0,
        &FleetOptions {
            servers: args.servers,
            key_type: args.key_type.clone(),
            token: "bench-token".into(),
            timeout_secs: 900,
            ..Default::default()
        },
        true,
    );
    let provisioners = start_members(
        dir.path(),
        &nats,
        &ca,
        &fleet.signer_pub,
        members,
        &match logic {
            Logic::Builtin => ProvisionerOptions {
                token: "bench-token".into(),
                workers: args.workers,
                helper: String::new(),
                extra_yaml: cluster_tests::BUILTIN_HELPER_YAML.into(),
                ..Default::default()
            },
            Logic::Python => {
                let base = ProvisionerOptions::default();
                // the delay runs inside the helper's own process, as a slow lookup would
                let helper = if delay_ms > 0 {
                    format!(
                        "/bin/sh -c 'sleep {}; exec {}'",
                        delay_ms as f64 / 1000.0,
                        base.helper
                    )
                } else {
                    base.helper.clone()
                };
                ProvisionerOptions {
                    token: "bench-token".into(),
                    workers: args.workers,
                    helper,
                    ..base
                }
            }
        },
        None,
    );
    let summary = fleet.finish(Duration::from_secs(960));
    // read the members while they run: /proc forgets a process once it is reaped
    let usage: Vec<fleet::usage::Usage> = provisioners
        .iter()
        .filter_map(|p| fleet::usage::of(p.proc.child.id()))
        .collect();
    drop(provisioners);
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    let servers = n("servers");
    let provisioned = n("provisioned");
    Ok(json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "members": members,
        "servers": servers,
        "provisioned": provisioned,
        "duplicates": n("reconfigured") + n("duplicate_serials"),
        "lost": servers.saturating_sub(provisioned + n("shutdowns")),
        "elapsed_s": summary["seconds"],
        "servers_per_minute": summary["rate_per_minute"],
        "p50_ms": n("latency_p50_ms"),
        "p90_ms": n("latency_p90_ms"),
        "p99_ms": n("latency_p99_ms"),
        "stall_ms": Value::Null,
        "helper_delay_ms": delay_ms,
        "helper": match logic {
            Logic::Builtin => "builtin",
            Logic::Python => "deploy/examples/helper.py",
        },
        "member_cpu_s": usage.iter().map(|u| u.cpu_s).sum::<f64>(),
        "helper_cpu_s": usage.iter().map(|u| u.children_cpu_s).sum::<f64>(),
        "sim_cpu_s": summary["sim_usage"]["cpu_s"],
        "peak_rss_mb": usage.iter().map(|u| u.peak_rss_mb).fold(0.0, f64::max),
        "key_type": args.key_type,
        "enrollment": "x509",
        "timed_out": summary["timed_out"],
    }))
}

fn print_table(runs: &[Value]) {
    println!(
        "{:<11} {:>7} {:>7} {:>11} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8} {:>7}",
        "scenario",
        "members",
        "servers",
        "provisioned",
        "per min",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "cpu s",
        "helper s",
        "sim s",
        "rss MB"
    );
    for r in runs {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let u = |k: &str| r[k].as_u64().unwrap_or(0);
        println!(
            "{:<11} {:>7} {:>7} {:>11} {:>9.0} {:>7} {:>7} {:>7} {:>7.1} {:>9.1} {:>8.1} {:>7.0}",
            r["scenario"].as_str().unwrap_or("?"),
            u("members"),
            u("servers"),
            u("provisioned"),
            f("servers_per_minute"),
            u("p50_ms"),
            u("p90_ms"),
            u("p99_ms"),
            f("member_cpu_s"),
            f("helper_cpu_s"),
            f("sim_cpu_s"),
            f("peak_rss_mb"),
        );
    }
}
