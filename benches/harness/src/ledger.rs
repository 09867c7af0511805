//! The `ledger` scenario: a cluster whose ledger holds `--records` servers, seeded through
//! the admin API's import (real ledger commands through Raft, not writes to the database),
//! then measured as an operator would meet it: memory, `admin status` and `ledger list`
//! answer times, a snapshot built while servers keep arriving (and how long provisioning
//! stalled meanwhile), a member restarted after kill -9, and a new empty member catching up.

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_tests::{
    admin_pki, cluster_pki, init_ca, ClusterMemberSpec, ClusterOptions, FleetOptions, FleetProcess,
    Nats, Operator, ProvisionerOptions, ProvisionerProcess,
};
use serde_json::{json, Value};

/// What the scenario is asked for.
pub struct LedgerArgs {
    pub records: usize,
    pub members: u64,
    /// Servers that arrive while the snapshot is built.
    pub servers: usize,
    pub arrival_rate: f64,
    pub base: ProvisionerOptions,
    pub keep: bool,
}

/// What every member of the run shares.
struct Site<'a> {
    dir: &'a Path,
    nats: &'a Nats,
    ca: &'a (std::path::PathBuf, std::path::PathBuf),
    signer: std::path::PathBuf,
    op: &'a Operator,
    base: &'a ProvisionerOptions,
}

/// Starts a member; one that is not `founding` waits for an operator to add it.
fn start(
    site: &Site,
    spec: &ClusterMemberSpec,
    all: &[ClusterMemberSpec],
    founding: bool,
) -> ProvisionerProcess {
    let tls_dir = cluster_pki(site.dir, all);
    ProvisionerProcess::start(
        site.dir,
        site.nats,
        site.ca,
        &site.signer,
        &ProvisionerOptions {
            identity: spec.name.clone(),
            cluster: Some(ClusterOptions {
                id: spec.id,
                members: all.to_vec(),
                claim_lease: "30s".into(),
                tls_dir: Some(tls_dir),
                admin_ca: Some(site.op.admin_ca.clone()),
                auto_join: founding,
                admin_extra: String::new(),
                // a short log behind each snapshot: a new member installs the snapshot
                cluster_extra: "  snapshot_keep_logs: 100\n".into(),
            }),
            ..site.base.clone()
        },
    )
}

/// `admin --json ARGS` against `spec`: the reply and how long the command took.
fn admin(op: &Operator, spec: &ClusterMemberSpec, args: &[&str]) -> Result<(Value, f64), String> {
    let started = Instant::now();
    let mut all = vec!["--timeout", "3600", "--json"];
    all.extend_from_slice(args);
    let out = op.cli(spec, &all);
    let took = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "admin {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("admin {args:?} printed no JSON: {e}"))?;
    Ok((v, took))
}

fn records_of(p: &ProvisionerProcess) -> u64 {
    p.status()["ledger"]["records"].as_u64().unwrap_or(0)
}

/// Waits until `p` holds at least `n` records and answers; the time it took.
fn wait_records(p: &ProvisionerProcess, n: u64, timeout: Duration) -> Result<f64, String> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if records_of(p) >= n {
            return Ok(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} holds {} records, not {n}, after {timeout:?}",
        p.proc.name,
        records_of(p)
    ))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rss_mb(pid: u32) -> f64 {
    fleet::usage::of(pid).map(|u| u.peak_rss_mb).unwrap_or(0.0)
}

/// Resident memory now (`VmRSS`), MB.
fn rss_now_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The longest gap between servers done (ms since the fleet started) that overlaps
/// `[from, to]`.
pub fn stall_within(timeline: &[u64], from: u64, to: u64) -> u64 {
    let mut worst = 0;
    for w in timeline.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b >= from && a <= to {
            worst = worst.max(b - a);
        }
    }
    worst
}

pub fn run(a: &LedgerArgs) -> Result<Value, String> {
    let dir = tempfile::Builder::new()
        .prefix("provisioner-bench-ledger-")
        .tempdir()
        .map_err(|e| format!("work directory: {e}"))?;
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let go = d.join("arrive");
    let fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: a.servers,
            key_type: "p256".into(),
            token: a.base.token.clone(),
            timeout_secs: 3600,
            extra: vec![
                "--arrival-rate".into(),
                a.arrival_rate.to_string(),
                "--arrive-after".into(),
                go.display().to_string(),
            ],
        },
        true,
    );
    let mut specs = ClusterOptions::members(a.members);
    let pki = cluster_pki(d, &specs);
    let op = admin_pki(d, &pki, "bench-operator");
    let site = Site {
        dir: d,
        nats: &nats,
        ca: &ca,
        signer: fleet.signer_pub.clone(),
        op: &op,
        base: &a.base,
    };
    let mut members: Vec<ProvisionerProcess> = specs
        .iter()
        .map(|s| start(&site, s, &specs, true))
        .collect();
    for m in &mut members {
        m.wait_ready(Duration::from_secs(120));
    }

    // --- seed through the admin API
    let file = d.join("import.jsonl");
    cluster_tests::write_import(&file, "led", a.records)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("bench: importing {} records", a.records);
    let (summary, import_s) = admin(
        &op,
        &specs[0],
        &["ledger", "import", &file.display().to_string()],
    )?;
    if summary["imported"].as_u64() != Some(a.records as u64) {
        return Err(format!("import: {summary}"));
    }
    let _ = std::fs::remove_file(&file);
    let n = a.records as u64;
    for m in &members {
        wait_records(m, n, Duration::from_secs(600))?;
    }
    eprintln!("bench: imported in {import_s:.1} s");
    let leader_id = members[0].status()["raft"]["leader"]
        .as_u64()
        .ok_or("no leader")?;
    let leader = specs
        .iter()
        .position(|s| s.id == leader_id)
        .ok_or("leader is not a member")?;
    let follower = (leader + 1) % specs.len();

    let seeded_rss_mb: Vec<f64> = members
        .iter()
        .map(|m| rss_now_mb(m.proc.child.id()))
        .collect();
    let seeded_peak_mb: Vec<f64> = members.iter().map(|m| rss_mb(m.proc.child.id())).collect();

    // --- answers an operator waits for
    let mut status_s = Vec::new();
    for _ in 0..5 {
        status_s.push(admin(&op, &specs[follower], &["status"])?.1);
    }
    status_s.sort_by(f64::total_cmp);
    let mid = format!("led-{:07}.example.net", a.records / 2);
    let page = |after: &str| {
        let mut args = vec![
            "ledger",
            "list",
            "--state",
            "enrolled",
            "--page-size",
            "1000",
        ];
        if !after.is_empty() {
            args.extend(["--page-token", after]);
        }
        admin(&op, &specs[follower], &args)
    };
    let (first, first_s) = page("")?;
    let (_, middle_s) = page(&mid)?;
    let matched = first["matched"].as_u64().unwrap_or(0);

    // --- a snapshot built while servers arrive
    std::fs::write(&go, "go\n").map_err(|e| format!("{}: {e}", go.display()))?;
    std::thread::sleep(Duration::from_secs(3));
    let t0 = unix_ms();
    let (snap, _) = admin(&op, &specs[leader], &["snapshot"])?;
    let t1 = unix_ms();
    eprintln!("bench: snapshot {snap}");
    let sim = fleet.finish(Duration::from_secs(3600));
    let timeline: Vec<u64> = sim["timeline_ms"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let start_ms = sim["start_unix_ms"].as_u64().unwrap_or(0);
    let max_stall_ms = stall_within(
        &timeline,
        t0.saturating_sub(start_ms),
        t1.saturating_sub(start_ms),
    );
    let peak_rss_mb = members
        .iter()
        .map(|m| rss_mb(m.proc.child.id()))
        .fold(0.0, f64::max);

    // --- kill -9 a follower and start it again
    members[follower].kill();
    let restarted = Instant::now();
    members[follower]
        .restart()
        .map_err(|e| format!("restart: {e}"))?;
    // serving: its ledger loaded and answering (it listens for startup events from then on)
    wait_records(&members[follower], n, Duration::from_secs(600))?;
    let restart_s = restarted.elapsed().as_secs_f64();
    // and its first broadcast discovery done, which waits out the servers' replies
    members[follower].wait_ready(Duration::from_secs(600));
    let restart_discovered_s = restarted.elapsed().as_secs_f64();
    eprintln!("bench: restart in {restart_s:.1} s");

    // --- a new, empty member joins and catches up (from the leader's snapshot)
    let new = ClusterMemberSpec::new(a.members + 1);
    specs.push(new.clone());
    let joined = Instant::now();
    members.push(start(&site, &new, &specs, false));
    admin(
        &op,
        &specs[leader],
        &[
            "add-member",
            "--id",
            &new.id.to_string(),
            "--name",
            &new.name,
            "--raft-addr",
            &format!("127.0.0.1:{}", new.raft_port),
            "--admin-addr",
            &format!("127.0.0.1:{}", new.admin_port),
        ],
    )?;
    let newest = members.len() - 1;
    wait_records(&members[newest], n, Duration::from_secs(1800))?;
    let catch_up_s = joined.elapsed().as_secs_f64();
    eprintln!("bench: catch-up in {catch_up_s:.1} s");
    let peak_rss_mb = members
        .iter()
        .map(|m| rss_mb(m.proc.child.id()))
        .fold(peak_rss_mb, f64::max);
    let snapshot_of_new = members[newest].status()["raft"]["snapshot"].clone();

    if a.keep {
        eprintln!("bench: work directory kept: {}", d.display());
        let _ = dir.keep();
    }
    Ok(json!({
        "scenario": "ledger",
        "members": a.members,
        "records": a.records,
        "import_s": import_s,
        "import_per_s": a.records as f64 / import_s.max(1e-9),
        "peak_rss_mb": peak_rss_mb,
        // each member once seeded: resident now, and its peak so far
        "seeded_rss_mb": seeded_rss_mb,
        "seeded_peak_rss_mb": seeded_peak_mb,
        "final_rss_mb": members.iter().map(|m| rss_now_mb(m.proc.child.id())).collect::<Vec<_>>(),
        "admin_status_ms": status_s[status_s.len() / 2] * 1000.0,
        "list_first_page_ms": first_s * 1000.0,
        "list_middle_page_ms": middle_s * 1000.0,
        "list_matched": matched,
        "snapshot_build_s": snap["took_ms"].as_f64().map(|ms| ms / 1000.0),
        "snapshot_bytes": snap["bytes"],
        "max_stall_ms": max_stall_ms,
        "arrival_rate": a.arrival_rate,
        "servers": a.servers,
        "provisioned": sim["provisioned"],
        "catch_up_s": catch_up_s,
        "catch_up_snapshot": snapshot_of_new,
        "restart_s": restart_s,
        "restart_discovered_s": restart_discovered_s,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stall_is_the_longest_gap_that_overlaps_the_window() {
        let t = [0, 100, 200, 900, 1000, 1100];
        assert_eq!(super::stall_within(&t, 250, 300), 700);
        assert_eq!(super::stall_within(&t, 1000, 1100), 100);
        assert_eq!(super::stall_within(&t, 0, 1100), 700);
        assert_eq!(super::stall_within(&[], 0, 10), 0);
    }
}
