//! The command line: the scenarios, who decides each server's configuration, and every flag,
//! with the defaults that derive from them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::{cgroup, groups};

/// Who decides each server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum Logic {
    /// `builtin_helper`: compiled-in, no process per server
    Builtin,
    /// `deploy/examples/helper.py`, a Python process per server
    Python,
    /// `deploy/examples/helper.sh`, a POSIX shell process per server (builtins only)
    Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum Scenario {
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
pub(crate) struct Args {
    #[arg(value_enum)]
    pub(crate) scenario: Scenario,
    /// Simulated servers
    #[arg(long, default_value_t = 1000)]
    pub(crate) servers: usize,
    /// Members for `throughput`, `failover`, `latency` and `helper`
    #[arg(long, default_value_t = 3)]
    pub(crate) members: u64,
    /// Key type the servers make (p256, rsa2048...)
    #[arg(long, default_value = "p256")]
    pub(crate) key_type: String,
    /// Concurrent provisioning flows per member
    #[arg(long, default_value_t = 64)]
    pub(crate) workers: usize,
    /// User logic
    #[arg(long, value_enum, default_value = "builtin")]
    pub(crate) logic: Logic,
    /// Delay added to each helper run: the second run of `helper`, and every run of the
    /// other scenarios with `--logic python`
    #[arg(long)]
    pub(crate) helper_delay_ms: Option<u64>,
    /// `latency`: servers arrive at this many per second instead of half the measured
    /// capacity
    #[arg(long)]
    pub(crate) arrival_rate: Option<f64>,
    /// `ledger`: records the ledger holds
    #[arg(long, default_value_t = 100_000)]
    pub(crate) records: usize,
    /// Where to write `{"runs": [...]}`
    #[arg(long, default_value = "bench-results.json")]
    pub(crate) out: PathBuf,
    /// Where to draw this invocation's runs, servers provisioned over time (SVG); default:
    /// `--out` with `.svg`
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Add this invocation's runs to those already in `--out` instead of replacing them
    #[arg(long)]
    pub(crate) append: bool,
    /// Keep each run's work directory (configs, logs, data) and print where it is
    #[arg(long)]
    pub(crate) keep: bool,
    /// Run each member in a cgroup of its own capped at this many cores, as if each had a
    /// small machine (the broker and the simulator stay uncapped); needs root
    #[arg(long)]
    pub(crate) member_cpu: Option<f64>,
    /// The scheduler period of that cap: each member gets its share of every period (at 0.05
    /// core and the kernel's 100 ms, 5 ms at full speed and then 95 ms stopped; the quota must
    /// be at least 1 ms, so 0.05 core allows 20 ms and up)
    #[arg(long, default_value_t = cgroup::DEFAULT_PERIOD_MS)]
    pub(crate) member_cpu_period_ms: u64,
    /// Give up on a run after this many seconds of provisioning (default: 120 s plus 60 ms
    /// per server); the run object says what stopped it (`stopped_by`)
    #[arg(long)]
    pub(crate) deadline_s: Option<u64>,
    /// Members' `cluster.commit_linger` in milliseconds (default: the provisioner's own)
    #[arg(long)]
    pub(crate) commit_linger_ms: Option<u64>,
    /// Members' `cluster.leader_share` (default: the provisioner's own)
    #[arg(long)]
    pub(crate) leader_share: Option<f64>,
    /// Members' `cluster.heartbeat` in milliseconds, with `cluster.election_timeout` four
    /// times it (default: the provisioner's own). openraft gives up on an append after one
    /// heartbeat interval, so members short of CPU need a longer one
    #[arg(long)]
    pub(crate) raft_heartbeat_ms: Option<u64>,
    /// `scaling`: rounds of 1, 3 and 5 members (`groups`: of 1 member and the groups),
    /// interleaved; ratios use each size's median
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: usize,
    /// `groups`: members of each group (the design's 3). 1 runs that many provisioners that
    /// share nothing but the box, each with its own broker and share of the fleet: what any
    /// design could reach on this box at that cap
    #[arg(long, default_value_t = groups::REPLICAS)]
    pub(crate) replicas: u64,
}

impl Args {
    pub(crate) fn deadline(&self) -> Duration {
        Duration::from_secs(
            self.deadline_s
                .unwrap_or(120 + (self.servers as u64 * 60).div_ceil(1000)),
        )
    }
}
