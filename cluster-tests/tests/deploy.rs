//! The deployment files as an operator uses them: `deploy/local-cluster` brings a cluster up
//! from an example configuration in `deploy/config` and the built binaries, a simulated fleet
//! is provisioned through it, and then the exactly-once checker runs over every member's ledger
//! and the Grafana dashboard's and alert rules' metric names are held against a member's
//! `/metrics`. The operations of docs/operations.md run the same way: a rolling restart of every
//! member (drain, stop, start, undrain) while servers arrive, and an online backup restored onto
//! every member after the whole cluster is stopped. Also: every example configuration passes
//! `provisioner config check` for each of its members, and a broken one gets every problem at
//! once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use cluster_tests::checker::{self, MemberLedger};
use cluster_tests::{bin, bin_dir, free_port_block, http_get, metric_value, repo_root};
use serde_json::Value;

/// One cluster at a time: two on 2 cores would only slow each other down.
static SERIAL: Mutex<()> = Mutex::new(());

/// A cluster brought up by the deploy script; brought down on drop.
struct Deployed {
    dir: tempfile::TempDir,
    base: u16,
    members: Vec<(u16, String)>,
    env: HashMap<String, String>,
}

fn script(args: &[&str]) -> Output {
    Command::new(repo_root().join("deploy/local-cluster"))
        .args(args)
        .output()
        .expect("run deploy/local-cluster")
}

impl Deployed {
    fn up(config: &str, members: u16) -> Deployed {
        let mut dir = tempfile::Builder::new()
            .prefix("deploy-test-")
            .tempdir()
            .expect("tempdir");
        // members' logs and data, to read after a run that went wrong
        if std::env::var_os("DEPLOY_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let base = free_port_block(members);
        let config = repo_root().join("deploy/config").join(config);
        let out = script(&[
            "up",
            "--dir",
            &dir.path().display().to_string(),
            "--config",
            &config.display().to_string(),
            "--bin-dir",
            &bin_dir().display().to_string(),
            "--base-port",
            &base.to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let deployed = Deployed {
            env: read_env(&dir.path().join("cluster.env")),
            members: (1..=members).map(|i| (i, format!("prov{i}"))).collect(),
            dir,
            base,
        };
        assert!(out.status.success(), "deploy/local-cluster up failed");
        assert!(stdout.contains(&format!("== ready: {members} members")));
        deployed
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `provisioner admin ARGS` against member `id`, with the script's operator settings.
    fn admin(&self, id: u16, args: &[&str]) -> Output {
        let name = &self.members[usize::from(id - 1)].1;
        Command::new(bin("provisioner"))
            .arg("admin")
            .arg("--endpoint")
            .arg(format!("127.0.0.1:{}", self.base + id * 10 + 2))
            .arg("--server-name")
            .arg(name)
            .args(args)
            .env(
                "PROVISIONER_ADMIN_CONFIG",
                &self.env["PROVISIONER_ADMIN_CONFIG"],
            )
            .output()
            .expect("run provisioner admin")
    }

    fn ledger(&self, id: u16) -> Option<MemberLedger> {
        let export = self.admin(id, &["--timeout", "10", "ledger", "export"]);
        let status = self.status(id);
        MemberLedger::from_admin(&format!("prov{id}"), u64::from(id), &export, &status)
    }

    /// Every member's ledger once they all agree.
    fn ledgers(&self) -> Vec<MemberLedger> {
        for _ in 0..60 {
            let all: Vec<MemberLedger> = self
                .members
                .iter()
                .filter_map(|(id, _)| self.ledger(*id))
                .collect();
            if all.len() == self.members.len()
                && all
                    .iter()
                    .all(|l| l.digest.is_some() && l.digest == all[0].digest)
            {
                return all;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("the members' ledgers did not agree within 60 s");
    }

    fn status(&self, id: u16) -> Value {
        let out = self.admin(id, &["--json", "status"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn script(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let dir = self.path().display().to_string();
        let bins = bin_dir().display().to_string();
        all.extend(["--dir", &dir, "--bin-dir", &bins]);
        let out = script(&all);
        eprintln!(
            "local-cluster {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "local-cluster {args:?} failed");
        out
    }

    /// docs/operations.md's upgrade of one member: drain it and wait until it holds no server
    /// (`drain --wait`), stop it, (put the new binary in place,) start it, undrain it.
    fn restart_drained(&self, id: u16) {
        let name = self.members[usize::from(id - 1)].1.clone();
        let other = if id == 1 { 2 } else { 1 };
        // returns once its flows ended and it starts none (under ownership epochs there are
        // no claims to count down)
        let out = self.admin(other, &["drain", &name, "--wait", "60s"]);
        assert!(out.status.success(), "{name} did not drain: {out:?}");
        assert_eq!(
            self.status(other)["members"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["name"] == name.as_str()))
                .map(|m| m["drained"].clone()),
            Some(serde_json::json!(true))
        );
        self.script(&["down", "--member", &name]);
        self.script(&["start", "--member", &name]);
        assert!(self.admin(other, &["undrain", &name]).status.success());
    }

    fn pids(&self) -> Vec<u32> {
        let mut files: Vec<PathBuf> = self
            .members
            .iter()
            .map(|(_, n)| self.path().join(n).join("pid"))
            .collect();
        files.push(self.path().join("nats/pid"));
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    fn down(&self) -> Output {
        script(&["down", "--dir", &self.path().display().to_string()])
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// `export KEY=VALUE` lines.
fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `fleet-sim` against the deployed broker to the end; returns its summary and the
/// events file.
fn run_fleet(d: &Deployed, servers: usize, extra: &[String]) -> (Value, PathBuf) {
    let summary = d.path().join("fleet-summary.json");
    let events = d.path().join("fleet-events.jsonl");
    let out = Command::new(bin("fleet-sim"))
        .args(["--servers", &servers.to_string()])
        .args(["--nats", &d.env["NATS_URL"]])
        .args(["--token", &d.env["PROVISIONING_TOKEN"]])
        .args(["--key-type", "p256", "--timeout", "240"])
        .arg("--summary")
        .arg(&summary)
        .arg("--events")
        .arg(&events)
        .args(extra)
        .env("FLEET_NATS_PASSWORD", &d.env["FLEET_NATS_PASSWORD"])
        .output()
        .expect("run fleet-sim");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let summary: Value = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no fleet summary: {}", String::from_utf8_lossy(&out.stderr)));
    (summary, events)
}

/// The checker over every member's ledger and what the servers saw.
fn check_exactly_once(d: &Deployed, events: &Path, servers: usize) {
    let ledgers = d.ledgers();
    let events = checker::read_events(events);
    match checker::check(&ledgers, &events, servers) {
        Ok(s) => eprintln!("checker: {s:?}"),
        Err(v) => panic!(
            "the checker found {} violations:\n{}",
            v.len(),
            v.join("\n")
        ),
    }
}

/// The dashboard and the alert rules name only metrics a member exports.
fn check_dashboard_metrics(d: &Deployed) {
    let scrape = d.path().join("prov1.prom");
    let text = http_get(d.base + 13, "/metrics").unwrap_or_default();
    assert!(text.contains("choria_provisioner_provisioned"), "{text}");
    // the cluster metrics move: a leader was seen, and ledger commits were timed
    let changes = metric_value(
        &text,
        "choria_provisioner_raft_leader_changes{site=\"lon1\"}",
    );
    assert!(
        changes.is_some_and(|n| n >= 1.0),
        "leader changes {changes:?}"
    );
    // credentials are recorded with `finish_enrolled` once the cluster applies rules 6 and
    // made an ownership epoch, with `enroll` (rules 5) or `issue_credential` before that
    assert!(
        ["finish_enrolled", "enroll", "issue_credential"].iter().any(|c| text.contains(&format!(
            "choria_provisioner_ledger_commit_time_count{{command=\"{c}\",result=\"ok\",site=\"lon1\"}}"
        ))),
        "{text}"
    );
    std::fs::write(&scrape, text).expect("write the scrape");
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("deploy/monitoring/check-metrics.py"))
        .arg("--metrics")
        .arg(&scrape)
        .arg("--dashboard")
        .arg(root.join("deploy/monitoring/grafana-dashboard.json"))
        .arg("--alerts")
        .arg(root.join("deploy/monitoring/alerts.yml"))
        .arg("--source")
        .arg(root.join("node/src/metrics.rs"))
        .output()
        .expect("run check-metrics.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "dashboard names unknown metrics");
}

fn assert_down(d: &Deployed) {
    let pids = d.pids();
    assert_eq!(pids.len(), d.members.len() + 1, "a pid file per process");
    let out = d.down();
    assert!(out.status.success());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs after down"
        );
    }
}

#[test]
fn the_deploy_script_runs_the_3_member_x509_example_and_provisions_a_fleet() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Deployed::up("cluster-3-x509.yaml", 3);
    let servers = 300;
    let (summary, events) = run_fleet(
        &d,
        servers,
        &[
            "--jwt-signer-key".into(),
            d.env["JWT_SIGNER_KEY"].clone(),
            "--expect-ca".into(),
            d.env["CA_CERT"].clone(),
        ],
    );
    eprintln!("fleet: {summary}");
    assert_eq!(summary["provisioned"], servers, "{summary}");
    assert_eq!(summary["verified"], servers, "{summary}");
    assert_eq!(summary["duplicate_serials"], 0);
    check_exactly_once(&d, &events, servers);

    // work was shared: every member issued credentials
    let ledger = d.ledgers().remove(0);
    for (_, name) in &d.members {
        let issued_by = ledger
            .records
            .iter()
            .filter(|r| r["credential"]["issued_by"].as_str() == Some(name))
            .count();
        assert!(issued_by > 0, "{name} provisioned nothing");
    }
    check_dashboard_metrics(&d);
    assert_down(&d);
}

#[test]
fn the_deploy_script_runs_the_5_member_ed25519_example_and_provisions_a_fleet() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Deployed::up("cluster-5-ed25519.yaml", 5);
    let servers = 150;
    let seed = std::fs::read_to_string(&d.env["ISSUER_SEED"]).expect("issuer seed");
    let (summary, events) = run_fleet(
        &d,
        servers,
        &[
            "--protocol-v2".into(),
            "--jwt-signer-seed".into(),
            seed.trim().to_string(),
            "--expect-issuer".into(),
            d.env["ISSUER_PUBLIC"].clone(),
        ],
    );
    eprintln!("fleet: {summary}");
    assert_eq!(summary["provisioned"], servers, "{summary}");
    assert_eq!(summary["protocol"], "v2");
    assert_eq!(summary["bad_signatures"], 0);
    check_exactly_once(&d, &events, servers);
    let status: Value =
        serde_json::from_slice(&d.admin(3, &["--json", "status"]).stdout).expect("status as JSON");
    let voters = status["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["voter"] == true).count());
    assert_eq!(voters, Some(5), "{status}");
    assert_down(&d);
}

#[test]
fn a_rolling_restart_and_a_backup_restored_on_every_member_lose_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Deployed::up("cluster-3-x509.yaml", 3);
    let events = d.path().join("rolling-events.jsonl");
    let summary = d.path().join("rolling-summary.json");
    // 300 servers arriving at 15/s while every member is restarted in turn, the leader last
    let mut fleet = Command::new(bin("fleet-sim"))
        .args([
            "--servers",
            "300",
            "--arrival-rate",
            "15",
            "--prefix",
            "roll",
        ])
        .args([
            "--nats",
            &d.env["NATS_URL"],
            "--token",
            &d.env["PROVISIONING_TOKEN"],
        ])
        .args(["--key-type", "p256", "--timeout", "300"])
        .args([
            "--jwt-signer-key",
            &d.env["JWT_SIGNER_KEY"],
            "--expect-ca",
            &d.env["CA_CERT"],
        ])
        .arg("--events")
        .arg(&events)
        .arg("--summary")
        .arg(&summary)
        .env("FLEET_NATS_PASSWORD", &d.env["FLEET_NATS_PASSWORD"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start fleet-sim");
    std::thread::sleep(Duration::from_secs(3));
    let leader = d.status(1)["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut order: Vec<u16> = d
        .members
        .iter()
        .filter(|(_, n)| *n != leader)
        .map(|(id, _)| *id)
        .collect();
    order.extend(
        d.members
            .iter()
            .filter(|(_, n)| *n == leader)
            .map(|(id, _)| *id),
    );
    assert_eq!(order.len(), 3, "leader {leader:?}");
    for id in order {
        d.restart_drained(id);
    }
    let status = fleet.wait().expect("fleet-sim ends");
    let summary: Value = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    eprintln!("fleet ({status}): {summary}");
    assert_eq!(summary["provisioned"], 300, "{summary}");
    assert_eq!(summary["duplicate_serials"], 0);
    check_exactly_once(&d, &events, 300);

    // an online backup of one member, the whole cluster lost and restored from it on every
    // member: the ledger is the backup's, and provisioning goes on from there
    let out = d.admin(2, &["--json", "backup", "--name", "before-loss"]);
    let backup: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(backup["records"], 300, "{backup}");
    let saved = d.path().join("before-loss");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(backup["path"].as_str().unwrap_or_default())
        .arg(&saved)
        .status();
    assert!(copied.is_ok_and(|s| s.success()));
    let digest_before = d.ledgers().remove(0).digest;
    d.script(&["down"]);
    for (_, name) in &d.members {
        let data = d.path().join(name).join("data/raft");
        std::fs::remove_dir_all(&data).expect("lose the data");
        let restored = Command::new("cp")
            .arg("-a")
            .arg(saved.join("raft"))
            .arg(&data)
            .status();
        assert!(restored.is_ok_and(|s| s.success()));
    }
    d.script(&["start"]);
    let after = d.ledgers();
    assert_eq!(after[0].records.len(), 300);
    assert_eq!(
        after[0].digest, digest_before,
        "the restored ledger is the backup's"
    );

    let (summary, more) = run_fleet(
        &d,
        60,
        &[
            "--prefix".into(),
            "restored".into(),
            "--jwt-signer-key".into(),
            d.env["JWT_SIGNER_KEY"].clone(),
            "--expect-ca".into(),
            d.env["CA_CERT"].clone(),
        ],
    );
    assert_eq!(summary["provisioned"], 60, "{summary}");
    let mut all = checker::read_events(&events);
    all.extend(checker::read_events(&more));
    let ledgers = d.ledgers();
    if let Err(v) = checker::check(&ledgers, &all, 360) {
        panic!(
            "the checker found {} violations:\n{}",
            v.len(),
            v.join("\n")
        );
    }
    assert_down(&d);
}

fn config_check(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("provisioner"))
        .args(["config", "check"])
        .args(args)
        .output()
        .expect("run provisioner config check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn every_example_configuration_checks_for_each_of_its_members() {
    let dir = repo_root().join("deploy/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/config") {
        let path = entry.expect("entry").path();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        let names: Vec<String> = text
            .lines()
            .filter(|l| l.contains("{id: "))
            .filter_map(|l| l.split_once("name: ")?.1.split(',').next())
            .map(|n| n.trim().to_string())
            .collect();
        let as_hosts: Vec<Option<&str>> = if names.is_empty() {
            vec![None]
        } else {
            names.iter().map(|n| Some(n.as_str())).collect()
        };
        for host in as_hosts {
            let mut args = vec!["--no-files"];
            if let Some(h) = host {
                args.extend(["--identity", h]);
            }
            args.push(&file);
            let (code, out) = config_check(&args);
            assert_eq!(code, Some(0), "{file} as {host:?}: {out}");
            if let Some(h) = host {
                assert!(out.contains(&format!("ok (member {h} ")), "{out}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} example configurations");
}

#[test]
fn config_check_prints_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "helper: /nonexistent/helper\nbroker_provisioning_password: x\nnats: {servers: [nats://127.0.0.1:4222]}\nworkres: 4\ninterval: 10s\nlog_format: xml\n",
    )
    .expect("write");
    let (code, out) = config_check(&[&file.display().to_string()]);
    assert_eq!(code, Some(2), "{out}");
    for want in [
        "error: workres: unknown key; did you mean `workers`?",
        "error: interval: is too small",
        "error: log_format: \"xml\" is not text or json",
        "bad.yaml: 3 problems",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // once the file itself is right, the files it names are checked
    std::fs::write(
        &file,
        "helper: /nonexistent/helper\nbroker_provisioning_password: x\nnats: {servers: [nats://127.0.0.1:4222]}\n",
    )
    .expect("write");
    let (code, out) = config_check(&[&file.display().to_string()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("error: helper: /nonexistent/helper: no such file"),
        "{out}"
    );
    let (code, out) = config_check(&["--no-files", &file.display().to_string()]);
    assert_eq!(code, Some(0), "{out}");
}
