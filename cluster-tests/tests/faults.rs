//! Faults during a burst of simulated servers, each followed by the exactly-once checker:
//! repeated kill -9 of the leader and of followers with restarts, the leader cut off from
//! the other members by dropping its traffic (and healed), the whole cluster stopped and
//! started, the broker killed and started again, and a member that lost its data directory
//! removed by the operator and rejoining from a snapshot. Real processes, real TCP, a real nats-server.
//!
//! `FAULT_SOAK_SECS` (opt-in) runs random faults for that long; `FAULT_SEED` replays one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cluster_tests::checker::{self, MemberLedger};
use cluster_tests::netfault::{source_ip, Partitioner};
use cluster_tests::{
    admin_pki, cluster_pki, init_ca, ClusterMemberSpec, ClusterOptions, FleetOptions, FleetProcess,
    Nats, Operator, ProvisionerOptions, ProvisionerProcess, BUILTIN_HELPER_YAML,
};
use serde_json::Value;

/// Each scenario runs a cluster and a fleet; one at a time on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default, Clone, Copy)]
struct Setup {
    servers: usize,
    /// Servers arrive at this rate (per second), once every member is up, so that the
    /// burst lasts long enough for faults to land in it.
    arrival_rate: f64,
    members: u64,
    /// Put a partitioning proxy on every member-to-member link.
    partitions: bool,
    /// `cluster.snapshot_every` (small, so the log is compacted during the run).
    snapshot_every: Option<u64>,
}

impl Setup {
    /// The common scenario: 1,500 servers arriving at 60/s at 3 members.
    fn burst() -> Setup {
        Setup {
            servers: 1500,
            arrival_rate: 60.0,
            members: 3,
            ..Default::default()
        }
    }
}

/// A broker, CA, fleet and cluster under test, with an operator to ask the members.
struct Site {
    /// Kept (not deleted) when the test fails, for its logs.
    dir: Option<tempfile::TempDir>,
    nats: Nats,
    fleet: Option<FleetProcess>,
    events: PathBuf,
    specs: Vec<ClusterMemberSpec>,
    members: Vec<ProvisionerProcess>,
    op: Operator,
    net: Option<Partitioner>,
    servers: usize,
}

fn start(setup: Setup) -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let nats = Nats::start(&d);
    let ca = init_ca(&d);
    let events = d.join("fleet-events.jsonl");
    let go = d.join("arrivals.go");
    let fleet = FleetProcess::start(
        &d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: setup.servers,
            token: "t0ken".into(),
            // from the first arrival: the whole arrival span plus time to finish
            timeout_secs: (setup.servers as f64 / setup.arrival_rate) as u64 + 300,
            extra: vec![
                "--events".into(),
                events.display().to_string(),
                "--arrival-rate".into(),
                setup.arrival_rate.to_string(),
                "--arrive-after".into(),
                go.display().to_string(),
            ],
            ..Default::default()
        },
        false,
    );
    let ids: Vec<u64> = (1..=setup.members).collect();
    let net = setup.partitions.then(|| Partitioner::start(&ids));
    let specs: Vec<ClusterMemberSpec> = ids
        .iter()
        .map(|id| {
            let mut s = ClusterMemberSpec::new(*id);
            if let Some(net) = &net {
                // peers reach it through its proxy
                s.raft_port = net.ports(*id).0;
            }
            s
        })
        .collect();
    let pki = cluster_pki(&d, &specs);
    let op = admin_pki(&d, &pki, "ops-faults");
    let mut members: Vec<ProvisionerProcess> = specs
        .iter()
        .map(|spec| {
            let mut cluster_extra = String::new();
            if let Some(net) = &net {
                cluster_extra += &format!(
                    "  raft_listen: \"127.0.0.1:{}\"\n  source_ip: {}\n",
                    net.ports(spec.id).1,
                    source_ip(spec.id)
                );
            }
            if let Some(n) = setup.snapshot_every {
                cluster_extra += &format!("  snapshot_every: {n}\n  snapshot_keep_logs: 5\n");
            }
            ProvisionerProcess::start(
                &d,
                &nats,
                &ca,
                &fleet.signer_pub,
                &ProvisionerOptions {
                    identity: spec.name.clone(),
                    token: "t0ken".into(),
                    workers: 16,
                    helper: String::new(),
                    extra_yaml: BUILTIN_HELPER_YAML.into(),
                    cluster: Some(ClusterOptions {
                        id: spec.id,
                        members: specs.clone(),
                        claim_lease: "5s".into(),
                        tls_dir: Some(pki.clone()),
                        admin_ca: Some(op.admin_ca.clone()),
                        auto_join: true,
                        admin_extra: String::new(),
                        cluster_extra,
                    }),
                    ..Default::default()
                },
            )
        })
        .collect();
    for m in &mut members {
        m.wait_ready(Duration::from_secs(60));
    }
    std::fs::write(&go, b"go").expect("start the arrivals");
    Site {
        dir: Some(dir),
        nats,
        fleet: Some(fleet),
        events,
        specs,
        members,
        op,
        net,
        servers: setup.servers,
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: not within {timeout:?}");
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("run kept in {}", d.keep().display());
            }
        }
    }
}

impl Site {
    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// `admin --json ARGS` on member `i`, or `None` when it does not answer.
    fn ask(&self, i: usize, args: &[&str]) -> Option<Value> {
        let mut all = vec!["--json", "--timeout", "5"];
        all.extend_from_slice(args);
        let out = self.op.cli(&self.specs[i], &all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The leader's index as member `asked` sees it, when it answers and knows one.
    fn leader_seen_by(&self, asked: usize) -> Option<usize> {
        let id = self.ask(asked, &["status"])?["leader_id"].as_u64()?;
        self.specs.iter().position(|s| s.id == id)
    }

    /// The leader's index, from any live member.
    fn leader(&mut self) -> usize {
        let mut found = None;
        wait_for("a leader", Duration::from_secs(60), || {
            for i in 0..self.specs.len() {
                if self.members[i].proc.is_running() {
                    found = found.or_else(|| self.leader_seen_by(i));
                }
            }
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// Servers the provisioner is done with so far: they accepted `restart` (from the fleet's
    /// events file; the servers' own restart follows seconds later).
    fn configured(&self) -> usize {
        checker::read_events(&self.events)
            .iter()
            .filter(|e| e.event == "configured")
            .count()
    }

    fn wait_configured(&self, n: usize) {
        wait_for(
            &format!("{n} servers configured"),
            Duration::from_secs(300),
            || self.configured() >= n,
        );
        eprintln!("{} servers configured", self.configured());
    }

    /// kill -9 of every member, then all started again 2 s later.
    fn restart_all(&mut self) {
        for i in 0..self.specs.len() {
            self.kill(i);
        }
        std::thread::sleep(Duration::from_secs(2));
        for i in 0..self.specs.len() {
            self.restart(i);
        }
    }

    fn kill(&mut self, i: usize) {
        eprintln!("kill -9 {}", self.specs[i].name);
        self.members[i].kill();
    }

    fn restart(&mut self, i: usize) {
        eprintln!("restart {}", self.specs[i].name);
        self.members[i].restart().expect("start the member again");
    }

    /// Waits for the fleet, then for every member to hold the same ledger, and runs the
    /// checker over all of them.
    fn finish_and_check(mut self) -> checker::CheckSummary {
        let fleet = self.fleet.take().expect("a fleet");
        let summary = fleet.finish(Duration::from_secs(400));
        eprintln!("fleet: {summary}");
        let mut ledgers = Vec::new();
        wait_for(
            "every member answers with the same ledger digest",
            Duration::from_secs(60),
            || {
                ledgers = (0..self.specs.len())
                    .filter_map(|i| self.member_ledger(i))
                    .collect();
                ledgers.len() == self.specs.len()
                    && ledgers
                        .iter()
                        .all(|l| l.digest.is_some() && l.digest == ledgers[0].digest)
            },
        );
        let events = checker::read_events(&self.events);
        match checker::check(&ledgers, &events, self.servers) {
            Ok(s) => {
                eprintln!("checker: {s:?}");
                assert_eq!(summary["duplicate_serials"], 0, "{summary}");
                assert_eq!(summary["provisioned_twice"], 0, "{summary}");
                s
            }
            Err(violations) => panic!(
                "the checker found {} violations (run in {}):\n{}",
                violations.len(),
                self.path().display(),
                violations.join("\n")
            ),
        }
    }

    /// Member `i`'s ledger export and its own digest.
    fn member_ledger(&self, i: usize) -> Option<MemberLedger> {
        let spec = &self.specs[i];
        let export = self.op.cli(spec, &["--timeout", "10", "ledger", "export"]);
        let status = self.ask(i, &["status"])?;
        MemberLedger::from_admin(&spec.name, spec.id, &export, &status)
    }
}

#[test]
fn repeated_kills_of_leader_and_followers_lose_and_repeat_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut site = start(Setup {
        servers: 2000,
        arrival_rate: 80.0,
        members: 3,
        ..Default::default()
    });
    // leader, a follower, the (new) leader again: each killed, then started 2 s later
    for (at, leader) in [(300, true), (900, false), (1500, true)] {
        site.wait_configured(at);
        let l = site.leader();
        let victim = if leader {
            l
        } else {
            (l + 1) % site.specs.len()
        };
        site.kill(victim);
        std::thread::sleep(Duration::from_secs(2));
        site.restart(victim);
    }
    let s = site.finish_and_check();
    assert_eq!(s.servers, 2000);
}

#[test]
fn an_isolated_leader_is_replaced_and_healing_loses_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut site = start(Setup {
        partitions: true,
        ..Setup::burst()
    });
    site.wait_configured(300);
    let old = site.leader();
    let others: Vec<usize> = (0..site.specs.len()).filter(|i| *i != old).collect();
    let net = site.net.as_ref().expect("partitioning proxies");
    net.isolate(site.specs[old].id);
    eprintln!("isolated {}", site.specs[old].name);
    let cut_at = site.configured();
    // the others elect a new leader among themselves and carry on without the old one
    wait_for(
        "a new leader on the majority side",
        Duration::from_secs(30),
        || {
            others
                .iter()
                .all(|i| site.leader_seen_by(*i).is_some_and(|l| l != old))
        },
    );
    wait_for(
        "provisioning goes on without the isolated leader",
        Duration::from_secs(60),
        || site.configured() >= cut_at + 300,
    );
    net.heal();
    eprintln!("healed");
    // the old leader learns of the new term and follows
    wait_for("the old leader follows", Duration::from_secs(30), || {
        site.leader_seen_by(old).is_some_and(|l| l != old)
    });
    site.finish_and_check();
}

#[test]
fn the_whole_cluster_stopped_and_started_carries_on() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut site = start(Setup::burst());
    site.wait_configured(500);
    site.restart_all();
    site.finish_and_check();
}

#[test]
fn a_broker_outage_mid_run_is_survived() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut site = start(Setup::burst());
    site.wait_configured(500);
    eprintln!("kill -9 nats-server");
    site.nats.kill();
    std::thread::sleep(Duration::from_secs(3));
    site.nats.restart();
    eprintln!("nats-server started again");
    site.finish_and_check();
}

/// Servers imported into the ledger of `a_member_that_lost_its_data_rejoins_from_a_snapshot`.
const IMPORTED: usize = 30_000;

#[test]
fn a_member_that_lost_its_data_rejoins_from_a_snapshot() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut site = start(Setup {
        snapshot_every: Some(40),
        ..Setup::burst()
    });
    // a ledger far larger than the burst, imported while the burst runs: the snapshot the
    // member installs mid-burst carries all of it
    let import = site.path().join("import.jsonl");
    cluster_tests::write_import(&import, "imported", IMPORTED).expect("write the import file");
    let out = site.op.cli(
        &site.specs[0],
        &[
            "--json",
            "--timeout",
            "300",
            "ledger",
            "import",
            import.to_str().expect("utf-8 path"),
        ],
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(summary["imported"], IMPORTED, "{out:?}");
    site.wait_configured(300);
    let l = site.leader();
    let victim = (l + 1) % site.specs.len();
    site.kill(victim);
    let data = site
        .path()
        .join(format!("{}-data", site.specs[victim].name));
    std::fs::remove_dir_all(&data).expect("delete the member's data directory");
    eprintln!("deleted {}", data.display());
    // what an operator does for a member that lost its disk: remove it (a voter that forgot
    // its votes must not vote again), then add it back as a new learner and promote it
    let spec = site.specs[victim].clone();
    let id = spec.id.to_string();
    let removed = site.ask(l, &["remove-member", &id]);
    assert!(removed.is_some(), "remove-member {id} failed");
    // more entries than the leader keeps, so the log alone cannot bring it back
    let at = site.configured();
    site.wait_configured(at + 300);
    let log = site.members[victim].config.with_extension("log");
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    site.restart(victim);
    // a removed member cannot rejoin by itself: its join is refused until an operator adds it
    wait_for(
        "the removed member's join is refused",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .get(before..)
                .is_some_and(|after| after.contains("was removed from the group"))
        },
    );
    let raft_addr = format!("127.0.0.1:{}", spec.raft_port);
    let admin_addr = format!("127.0.0.1:{}", spec.admin_port);
    // add-member waits for the learner to catch up, here from a snapshot of the whole
    // imported ledger: longer than `ask` waits
    let out = site.op.cli(
        &site.specs[l],
        &[
            "--json",
            "--timeout",
            "120",
            "add-member",
            "--id",
            &id,
            "--name",
            &spec.name,
            "--raft-addr",
            &raft_addr,
            "--admin-addr",
            &admin_addr,
        ],
    );
    assert!(out.status.success(), "add-member {id} failed: {out:?}");
    wait_for(
        "the member installs a snapshot",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .get(before..)
                .is_some_and(|after| after.contains("installed a snapshot from the leader"))
        },
    );
    let installed = site.members[victim].status()["raft"]["snapshot"].clone();
    assert_eq!(installed["kind"], "installed", "{installed}");
    assert!(
        installed["records"].as_u64().unwrap_or(0) > IMPORTED as u64,
        "the snapshot holds the imported ledger: {installed}"
    );
    assert!(
        site.ask(l, &["promote", &id]).is_some(),
        "promote {id} failed"
    );
    wait_for(
        "the member is a voter again",
        Duration::from_secs(60),
        || {
            site.ask(l, &["status"]).is_some_and(|s| {
                s["members"].as_array().is_some_and(|ms| {
                    ms.len() == 3
                        && ms
                            .iter()
                            .all(|m| m["voter"] == true && m["healthy"] == true)
                })
            })
        },
    );
    site.finish_and_check();
}

/// Random faults for `FAULT_SOAK_SECS` while servers keep arriving; `FAULT_SEED` replays a run.
/// Opt-in: `FAULT_SOAK_SECS=1800 cargo test -p cluster-tests --test faults -- --ignored soak`.
#[test]
#[ignore = "long soak; set FAULT_SOAK_SECS and run with --ignored"]
fn soak_random_faults() {
    use rand::{RngExt, SeedableRng};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("FAULT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("soak: {secs} s, FAULT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rate = 5.0;
    let mut site = start(Setup {
        servers: (secs as f64 * rate) as usize,
        arrival_rate: rate,
        members: 3,
        partitions: true,
        snapshot_every: Some(500),
    });
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(rng.random_range(5..20)));
        n += 1;
        let l = site.leader();
        match rng.random_range(0..5) {
            0 | 1 => {
                let victim = if rng.random_bool(0.5) {
                    l
                } else {
                    (l + 1) % site.specs.len()
                };
                site.kill(victim);
                std::thread::sleep(Duration::from_secs(rng.random_range(1..6)));
                site.restart(victim);
            }
            2 => {
                let net = site.net.as_ref().expect("proxies");
                eprintln!("fault {n}: isolate {}", site.specs[l].name);
                net.isolate(site.specs[l].id);
                std::thread::sleep(Duration::from_secs(rng.random_range(2..10)));
                net.heal();
            }
            3 => {
                eprintln!("fault {n}: broker outage");
                site.nats.kill();
                std::thread::sleep(Duration::from_secs(rng.random_range(1..5)));
                site.nats.restart();
            }
            _ => {
                eprintln!("fault {n}: whole cluster restart");
                site.restart_all();
            }
        }
    }
    eprintln!("soak: {n} faults with FAULT_SEED={seed}; checking");
    site.finish_and_check();
}
