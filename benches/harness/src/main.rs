//! The benchmark harness: sets everything up on loopback (nats-server, a CA, provisioner
//! members as processes, the fleet simulator), runs a scenario, tears it down, and reports
//! each run as a row of a table, an object of `{"runs": [...]}` in a JSON file, and a line
//! of an SVG plot of servers provisioned over time.
//!
//! Member CPU and peak memory are read from `/proc` while the members still run; the
//! simulator reports its own. A server counts as provisioned, for timing, when it accepts
//! `restart` into its new configuration (see `fleet::fleet`).
//!
//! `cli` is the command line, `run` one run of a member cluster, `members` what the harness
//! sets on and asks of the members, and `results` the table and the results file; each other
//! scenario's own work has its module.

mod cgroup;
mod cli;
mod cost;
mod failover;
mod groups;
mod ledger;
mod members;
mod plot;
mod results;
mod run;
mod scaling;
mod steady;

use std::process::ExitCode;

use clap::Parser;

use cli::{Args, Logic, Scenario};
use members::options;
use results::{print_table, write_runs};
use run::run;

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
