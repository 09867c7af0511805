//! The benchmark harness: sets everything up on loopback (nats-server, a CA, provisioner
//! members as processes, the fleet simulator), runs a scenario, tears it down, and reports
//! each run as a row of a table, an object of `{"runs": [...]}` in a JSON file, and a line
//! of an SVG plot of servers provisioned over time.
//!
//! Member CPU and peak memory are read from `/proc` while the members still run; the
//! simulator reports its own. A server counts as provisioned, for timing, when it accepts
//! `restart` into its new configuration (see `fleet::fleet`).

mod cgroup;
mod cost;
mod failover;
mod groups;
mod ledger;
mod plot;
mod scaling;
mod steady;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use cluster_tests::{init_ca, start_members, FleetOptions, FleetProcess, Nats, ProvisionerOptions};
use serde_json::{json, Value};

/// Who decides each server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Logic {
    /// `builtin_helper`: compiled-in, no process per server
    Builtin,
    /// `deploy/examples/helper.py`, a Python process per server
    Python,
    /// `deploy/examples/helper.sh`, a POSIX shell process per server (builtins only)
    Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Scenario {
    /// The fleet waiting when the members start, `--members` members
    Throughput,
    /// The same fleet with 1, 3 and 5 members
    Scaling,
    /// kill -9 the Raft leader at 30 % and a follower at 60 % (each started again 2 s later)
    Failover,
    /// A throughput run to find capacity, then servers arriving at half of it
    Latency,
    /// An external helper forked per server (Python, or the shell one with `--logic shell`),
    /// then again with `--helper-delay-ms` (default 100) added to each run (a slow CA or CMDB)
    Helper,
    /// A ledger of `--records` servers (imported through the admin API): memory, status and
    /// list answers, a snapshot while `--servers` arrive at `--arrival-rate` (default 20/s),
    /// a restart, a new member catching up
    Ledger,
    /// Rounds of one member and of `--members` capped machines hosting as many 3-member
    /// clusters, each with its own broker and share of the fleet (what a Raft group per shard
    /// would give; see `groups.rs`); needs `--member-cpu`
    Groups,
}

#[derive(Parser)]
#[command(about = "Measures provisioning: servers/minute, latency, failover, CPU and memory")]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Simulated servers
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    /// Members for `throughput`, `failover`, `latency` and `helper`
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
    /// Delay added to each helper run: the second run of `helper`, and every run of the
    /// other scenarios with `--logic python`
    #[arg(long)]
    helper_delay_ms: Option<u64>,
    /// `latency`: servers arrive at this many per second instead of half the measured
    /// capacity
    #[arg(long)]
    arrival_rate: Option<f64>,
    /// `ledger`: records the ledger holds
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Where to write `{"runs": [...]}`
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Where to draw this invocation's runs, servers provisioned over time (SVG); default:
    /// `--out` with `.svg`
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Add this invocation's runs to those already in `--out` instead of replacing them
    #[arg(long)]
    append: bool,
    /// Keep each run's work directory (configs, logs, data) and print where it is
    #[arg(long)]
    keep: bool,
    /// Run each member in a cgroup of its own capped at this many cores, as if each had a
    /// small machine (the broker and the simulator stay uncapped); needs root
    #[arg(long)]
    member_cpu: Option<f64>,
    /// The scheduler period of that cap: each member gets its share of every period (at 0.05
    /// core and the kernel's 100 ms, 5 ms at full speed and then 95 ms stopped; the quota must
    /// be at least 1 ms, so 0.05 core allows 20 ms and up)
    #[arg(long, default_value_t = cgroup::DEFAULT_PERIOD_MS)]
    member_cpu_period_ms: u64,
    /// Give up on a run after this many seconds of provisioning (default: 120 s plus 60 ms
    /// per server); the run object says what stopped it (`stopped_by`)
    #[arg(long)]
    deadline_s: Option<u64>,
    /// Members' `cluster.commit_linger` in milliseconds (default: the provisioner's own)
    #[arg(long)]
    commit_linger_ms: Option<u64>,
    /// Members' `cluster.leader_share` (default: the provisioner's own)
    #[arg(long)]
    leader_share: Option<f64>,
    /// Members' `cluster.heartbeat` in milliseconds, with `cluster.election_timeout` four
    /// times it (default: the provisioner's own). openraft gives up on an append after one
    /// heartbeat interval, so members short of CPU need a longer one
    #[arg(long)]
    raft_heartbeat_ms: Option<u64>,
    /// `scaling`: rounds of 1, 3 and 5 members (`groups`: of 1 member and the groups),
    /// interleaved; ratios use each size's median
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// `groups`: members of each group (the design's 3). 1 runs that many provisioners that
    /// share nothing but the box, each with its own broker and share of the fleet: what any
    /// design could reach on this box at that cap
    #[arg(long, default_value_t = groups::REPLICAS)]
    replicas: u64,
}

impl Args {
    fn deadline(&self) -> Duration {
        Duration::from_secs(
            self.deadline_s
                .unwrap_or(120 + (self.servers as u64 * 60).div_ceil(1000)),
        )
    }
}

/// Every simulated server holds a connection to the broker, which holds one back: the
/// simulator and the broker each need a descriptor per server. The limit is per process, so
/// each needs it raised that far, not twice as far. Raised for this process and so for
/// everything it starts.
fn raise_open_files(servers: usize) -> Result<(), String> {
    let want = servers as u64 + 4096;
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .map_err(|e| format!("open files limit: {e}"))?;
    if soft >= want {
        return Ok(());
    }
    rlimit::Resource::NOFILE
        .set(want, hard.max(want))
        .map_err(|e| {
            format!(
                "{servers} servers need about {want} open files; the limit is {soft} (hard \
                 {hard}) and cannot be raised here ({e}): raise it (ulimit -n) or run fewer"
            )
        })
}

/// What one run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    members: u64,
    logic: Logic,
    delay_ms: u64,
    arrival_rate: Option<f64>,
    kill: bool,
    /// `groups`: the members are machines hosting a 3-member cluster per machine
    groups: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = raise_open_files(args.servers) {
        eprintln!("bench: {e}");
        return ExitCode::from(2);
    }
    if args.members == 0 || (args.scenario == Scenario::Failover && args.members < 3) {
        eprintln!("bench: --members must be at least 1 (3 for failover)");
        return ExitCode::from(2);
    }
    if args.scenario == Scenario::Ledger {
        return ledger_main(&args);
    }
    let one = Plan {
        members: args.members,
        logic: args.logic,
        delay_ms: args.helper_delay_ms.unwrap_or(0),
        arrival_rate: None,
        kill: false,
        groups: false,
    };
    // the helper scenario runs an external helper: Python unless `--logic shell`
    let external = match args.logic {
        Logic::Builtin => Logic::Python,
        other => other,
    };
    let mut plan: Vec<Plan> = match args.scenario {
        Scenario::Throughput | Scenario::Latency | Scenario::Ledger => vec![one],
        Scenario::Scaling => (0..args.rounds.max(1))
            .flat_map(|_| [1, 3, 5].map(|m| Plan { members: m, ..one }))
            .collect(),
        Scenario::Groups => (0..args.rounds.max(1))
            .flat_map(|_| {
                [
                    Plan { members: 1, ..one },
                    Plan {
                        groups: true,
                        ..one
                    },
                ]
            })
            .collect(),
        Scenario::Failover => vec![Plan { kill: true, ..one }],
        Scenario::Helper => vec![
            Plan {
                logic: external,
                delay_ms: 0,
                ..one
            },
            Plan {
                logic: external,
                delay_ms: args.helper_delay_ms.unwrap_or(100),
                ..one
            },
        ],
    };
    if let (Scenario::Latency, Some(rate)) = (args.scenario, args.arrival_rate) {
        plan = vec![Plan {
            arrival_rate: Some(rate),
            ..one
        }];
    }
    let mut runs = Vec::new();
    let mut i = 0;
    while i < plan.len() {
        let p = plan[i];
        eprintln!(
            "bench: {:?} with {} member(s){}, {} servers, {:?} logic, helper delay {} ms{}",
            args.scenario,
            p.members,
            args.member_cpu
                .map(|c| format!(" capped at {c} core each"))
                .unwrap_or_default(),
            args.servers,
            p.logic,
            p.delay_ms,
            p.arrival_rate
                .map(|r| format!(", arriving at {r:.1}/s"))
                .unwrap_or_default()
        );
        let result = if p.groups {
            groups::run(&args, p.members)
        } else {
            run(&args, p)
        };
        match result {
            Ok(r) => {
                // the latency scenario's second run: half the capacity just measured
                if args.scenario == Scenario::Latency && p.arrival_rate.is_none() {
                    let per_s = r["servers_per_minute"].as_f64().unwrap_or(0.0) / 60.0;
                    if per_s > 0.0 {
                        plan.push(Plan {
                            arrival_rate: Some(per_s / 2.0),
                            ..p
                        });
                    }
                }
                runs.push(r)
            }
            Err(e) => {
                eprintln!("bench: run failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        i += 1;
    }
    print_table(&runs);
    if matches!(args.scenario, Scenario::Scaling | Scenario::Groups) {
        cost::against_one_member(&mut runs);
        for line in scaling::summarize(&mut runs) {
            let ratio = line["ratio_to_one_member"]
                .as_f64()
                .map(|r| format!(", {r:.2}x one member"))
                .unwrap_or_default();
            let steady = match (
                line["steady_median_per_minute"].as_f64(),
                line["steady_ratio_to_one_member"].as_f64(),
            ) {
                (Some(s), Some(r)) => format!("; steady part {s:.0}/min, {r:.2}x"),
                (Some(s), None) => format!("; steady part {s:.0}/min"),
                _ => String::new(),
            };
            println!(
                "scaling: {} member(s), median of {} run(s): {:.0}/min{ratio}{steady}",
                line["members"],
                line["runs"],
                line["median_per_minute"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Err(e) = write_runs(&args.out, args.append, runs.clone()) {
        eprintln!("bench: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("bench: wrote {}", args.out.display());
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| args.out.with_extension("svg"));
    let title = format!("{} servers, {:?}", args.servers, args.scenario).to_lowercase();
    match plot::draw(&runs, &title, &plot) {
        Ok(()) => eprintln!("bench: drew {}", plot.display()),
        Err(e) => {
            eprintln!("bench: cannot draw {}: {e}", plot.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `bench ledger`: one run, added to `--out` as the other scenarios' runs are.
fn ledger_main(args: &Args) -> ExitCode {
    let la = ledger::LedgerArgs {
        records: args.records,
        members: args.members,
        servers: args.servers,
        arrival_rate: args.arrival_rate.unwrap_or(20.0),
        base: options(args, Logic::Builtin, 0),
        keep: args.keep,
    };
    eprintln!(
        "bench: ledger of {} records, {} members, {} servers arriving at {}/s",
        la.records, la.members, la.servers, la.arrival_rate
    );
    let run = match ledger::run(&la) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
    if let Err(e) = write_runs(&args.out, args.append, vec![run]) {
        eprintln!("bench: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("bench: wrote {}", args.out.display());
    ExitCode::SUCCESS
}

/// Writes `{"runs": [...]}` to `out`, after the runs already there when `append`, one run per
/// line: a results file that collects hundreds of runs with their timelines stays a third of
/// its pretty-printed size, and a new run is one added line in a diff.
fn write_runs(out: &std::path::Path, append: bool, runs: Vec<Value>) -> std::io::Result<()> {
    let earlier: Vec<Value> = match append {
        true => std::fs::read_to_string(out)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["runs"].as_array().cloned())
            .unwrap_or_default(),
        false => Vec::new(),
    };
    let lines: Vec<String> = earlier
        .iter()
        .chain(&runs)
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .collect();
    std::fs::write(out, format!("{{\"runs\": [\n{}\n]}}\n", lines.join(",\n")))
}

/// The provisioner options for a run's user logic.
fn options(args: &Args, logic: Logic, delay_ms: u64) -> ProvisionerOptions {
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

fn run(args: &Args, plan: Plan) -> Result<Value, String> {
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

/// Members whose process ended during the run (none is killed without being started again),
/// each with how it ended; the end of its log goes to stderr, so a run that lost a member
/// says why.
fn exited(members: &mut [cluster_tests::ProvisionerProcess]) -> Value {
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
fn ledger_check(members: &[cluster_tests::ProvisionerProcess]) -> Value {
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

fn print_table(runs: &[Value]) {
    println!(
        "{:<11} {:>7} {:>7} {:>11} {:>5} {:>5} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>7} {:>7} {:>7}",
        "scenario",
        "members",
        "servers",
        "provisioned",
        "lost",
        "dupes",
        "per min",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "stall ms",
        "cpu s",
        "helper s",
        "sim s",
        "nats s",
        "rss MB"
    );
    for r in runs {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let u = |k: &str| r[k].as_u64().unwrap_or(0);
        println!(
            "{:<11} {:>7} {:>7} {:>11} {:>5} {:>5} {:>9.0} {:>7} {:>7} {:>7} {:>8} {:>7.1} {:>9.1} {:>7.1} {:>7.1} {:>7.0}",
            r["scenario"].as_str().unwrap_or("?"),
            u("members"),
            u("servers"),
            u("provisioned"),
            u("lost"),
            u("duplicates"),
            f("servers_per_minute"),
            u("p50_ms"),
            u("p90_ms"),
            u("p99_ms"),
            r["stall_ms"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            f("member_cpu_s"),
            f("helper_cpu_s"),
            f("sim_cpu_s"),
            f("nats_cpu_s"),
            f("peak_rss_mb"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs appended to a results file read back in order, each on its own line.
    #[test]
    fn runs_are_appended_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs.json");
        write_runs(&out, true, vec![json!({"a": 1, "t": [1, 2]})]).unwrap();
        write_runs(&out, true, vec![json!({"a": 2}), json!({"a": 3})]).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let a: Vec<i64> = doc["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["a"].as_i64().unwrap())
            .collect();
        assert_eq!(a, [1, 2, 3]);
        assert_eq!(text.lines().count(), 5, "{text}");
        write_runs(&out, false, vec![]).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(doc["runs"].as_array().map(Vec::len), Some(0));
    }
}
