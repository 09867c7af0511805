//! The admin API and CLI against a real three-member cluster (mTLS between members and for
//! operators), a real nats-server and a simulated fleet whose servers stay up after
//! provisioning, so they can be reprovisioned: authentication, pause/resume, drain/undrain,
//! reprovision by regex and by fact, ledger queries, revocation with the CRL, rebalance,
//! membership changes with the quorum check, a forced removal that waits for its quorum
//! and leaves the removed (still running) member unable to write, and certificates renewed by
//! the cluster before they end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_tests::{
    admin_pki, cluster_pki, init_ca, ClusterMemberSpec, ClusterOptions, FleetOptions, FleetProcess,
    Nats, Operator, ProvisionerOptions, ProvisionerProcess,
};
use serde_json::Value;
use x509_parser::prelude::FromDer;

const SERVERS: usize = 120;

/// The tests here each run a cluster with forked helpers; one at a time on two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// The DDL of `choria_provision#reprovision` needs a non-empty token.
const TOKEN: &str = "t0ken";

/// What every member of the cluster under test shares.
struct Site<'a> {
    dir: &'a Path,
    nats: &'a Nats,
    ca: &'a (PathBuf, PathBuf),
    signer: &'a Path,
    admin_ca: &'a Path,
}

impl<'a> Site<'a> {
    fn new(
        dir: &'a Path,
        nats: &'a Nats,
        ca: &'a (PathBuf, PathBuf),
        fleet: &'a FleetProcess,
        op: &'a Operator,
    ) -> Site<'a> {
        Site {
            dir,
            nats,
            ca,
            signer: &fleet.signer_pub,
            admin_ca: &op.admin_ca,
        }
    }
}

fn start_member(
    site: &Site,
    spec: &ClusterMemberSpec,
    all: &[ClusterMemberSpec],
    auto_join: bool,
) -> ProvisionerProcess {
    let opts = member_options(site, spec, all, auto_join);
    ProvisionerProcess::start(site.dir, site.nats, site.ca, site.signer, &opts)
}

fn member_options(
    site: &Site,
    spec: &ClusterMemberSpec,
    all: &[ClusterMemberSpec],
    auto_join: bool,
) -> ProvisionerOptions {
    let Site {
        dir,
        nats,
        admin_ca,
        ..
    } = *site;
    // provisioned servers live in the broker's choria account, as on a production broker
    let admin_extra = format!(
        "  reprovision:\n    servers: [\"{}\"]\n    user: choria\n    password: \"{}\"\n",
        nats.url, nats.creds.choria
    );
    let tls_dir = cluster_pki(dir, all);
    ProvisionerOptions {
        identity: spec.name.clone(),
        token: TOKEN.into(),
        // a slow helper and few workers keep the run long enough to pause and drain it
        workers: 2,
        helper: format!(
            "sh -c 'sleep 0.5; exec {} {}'",
            cluster_tests::python(),
            cluster_tests::repo_root()
                .join("deploy/examples/helper.py")
                .display()
        ),
        cluster: Some(ClusterOptions {
            id: spec.id,
            members: all.to_vec(),
            claim_lease: "5s".into(),
            tls_dir: Some(tls_dir),
            admin_ca: Some(admin_ca.to_path_buf()),
            auto_join,
            admin_extra,
            cluster_extra: String::new(),
        }),
        ..Default::default()
    }
}

/// A fleet of `servers` whose servers stay up after provisioning and answer on the broker's
/// choria account, so they can be reprovisioned; `events` records what each server was given.
fn staying_fleet(
    d: &Path,
    nats: &Nats,
    ca: &Path,
    servers: usize,
    events: Option<&Path>,
) -> FleetProcess {
    let mut extra = vec![
        "--stay".to_string(),
        "--production-user".into(),
        "choria".into(),
        "--production-password".into(),
        nats.creds.choria.clone(),
    ];
    if let Some(e) = events {
        extra.extend(["--events".to_string(), e.display().to_string()]);
    }
    FleetProcess::start(
        d,
        nats,
        ca,
        &FleetOptions {
            servers,
            token: TOKEN.into(),
            timeout_secs: 600,
            extra,
            ..Default::default()
        },
        false,
    )
}

/// Three member specs, their cluster PKI's directory, and an operator named `name` of its
/// admin CA.
fn three_members(d: &Path, name: &str) -> (Vec<ClusterMemberSpec>, PathBuf, Operator) {
    let specs = ClusterOptions::members(3);
    let pki = cluster_pki(d, &specs);
    let op = admin_pki(d, &pki, name);
    (specs, pki, op)
}

/// Every record of the ledger as `member` holds it (`admin ledger export`).
fn ledger(op: &Operator, member: &ClusterMemberSpec) -> Vec<Value> {
    let out = op.cli(member, &["ledger", "export"]);
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("export line is JSON"))
        .collect()
}

fn serial(r: &Value) -> Option<String> {
    r["credential"]["serial"].as_str().map(String::from)
}

fn issued(records: &[Value]) -> usize {
    records.iter().filter(|r| serial(r).is_some()).count()
}

fn issued_by(records: &[Value], member: &str) -> usize {
    records
        .iter()
        .filter(|r| r["credential"]["issued_by"] == member)
        .count()
}

fn enrolled(records: &[Value]) -> usize {
    records.iter().filter(|r| r["state"] == "Enrolled").count()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    wait_for_detail(what, timeout, || ok().then_some(()).ok_or_else(String::new));
}

/// As `wait_for`; the panic shows what the last look found wrong.
fn wait_for_detail(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match ok() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: not within {timeout:?} {last}");
}

fn crl_serials(path: &Path) -> BTreeSet<String> {
    let Ok(pem) = std::fs::read(path) else {
        return BTreeSet::new();
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return BTreeSet::new();
    };
    let Ok((_, crl)) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
    else {
        return BTreeSet::new();
    };
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

#[test]
fn admin_api_drives_a_three_member_cluster() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let events = d.join("fleet-events.jsonl");
    let fleet = staying_fleet(d, &nats, &ca.0, SERVERS, Some(&events));
    let (mut specs, pki, op) = three_members(d, "ops-alice");
    let site = Site::new(d, &nats, &ca, &fleet, &op);
    let mut members: Vec<ProvisionerProcess> = specs
        .iter()
        .map(|s| start_member(&site, s, &specs, true))
        .collect();
    let (m1, m2) = (specs[0].clone(), specs[1].clone());

    // --- authentication: no certificate, or one from another CA, is UNAUTHENTICATED
    wait_for("admin API up", Duration::from_secs(60), || {
        op.cli(&m1, &["status"]).status.success()
    });
    let no_cert = std::process::Command::new(cluster_tests::bin("provisioner"))
        .args(["admin", "--endpoint"])
        .arg(format!("127.0.0.1:{}", m1.admin_port))
        .args(["--server-name", &m1.name, "--ca"])
        .arg(&op.cluster_ca)
        .arg("status")
        .env_remove("PROVISIONER_ADMIN_CONFIG")
        .output()
        .expect("run admin");
    assert_eq!(no_cert.status.code(), Some(4));
    let err = String::from_utf8_lossy(&no_cert.stderr);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let other = tempfile::tempdir().expect("tempdir");
    let stranger = admin_pki(other.path(), &pki, "mallory");
    let wrong_ca = stranger.cli(&m1, &["pause"]);
    assert_eq!(wrong_ca.status.code(), Some(4));
    let err = String::from_utf8_lossy(&wrong_ca.stderr);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    // and the refused pause did nothing, but was counted
    assert_eq!(op.json(&m1, &["status"])["paused"], false);
    assert!(
        cluster_tests::metric_sum(
            &members[0].metrics(),
            "choria_provisioner_admin_requests",
            "unauthenticated"
        ) >= 2.0
    );

    // --- invalid arguments are INVALID_ARGUMENT with a reason, exit 2
    for args in [
        &["ledger", "list", "--regex", "("][..],
        &["ledger", "list", "--state", "nonsense"][..],
        &["reprovision"][..],
        &["ledger", "show", "not a name"][..],
    ] {
        let out = op.cli(&m1, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("INVALID_ARGUMENT"), "{args:?}: {err}");
    }

    // --- pause: every member stops issuing within a second; resume continues
    wait_for("first enrollments", Duration::from_secs(120), || {
        issued(&ledger(&op, &m1)) >= 10
    });
    let paused = op.json(&m2, &["pause"]);
    assert_eq!(paused["paused"], true);
    std::thread::sleep(Duration::from_secs(1));
    let status = op.json(&m1, &["status"]);
    for m in status["members"].as_array().expect("members") {
        assert_eq!(m["paused"], true, "{m}");
    }
    let at_pause = issued(&ledger(&op, &m1));
    std::thread::sleep(Duration::from_secs(4));
    let later = issued(&ledger(&op, &m1));
    assert_eq!(at_pause, later, "credentials were issued while paused");
    assert!(
        later < SERVERS,
        "the fleet finished before the pause took hold"
    );
    let resumed = op.json(&m1, &["resume"]);
    assert_eq!(resumed["paused"], false);

    // --- drain prov2 while provisioning continues: it issues nothing new, the others finish
    wait_for("provisioning resumed", Duration::from_secs(60), || {
        issued(&ledger(&op, &m1)) > later
    });
    // returns once the flows prov2 had in flight finished: from then on its count stays put
    let drained = op.json(&m1, &["drain", &m2.name, "--wait", "30s"]);
    assert_eq!(drained["draining"], serde_json::json!([m2.name]));
    let records = ledger(&op, &m1);
    let by_m2 = issued_by(&records, &m2.name);
    let at_drain = issued(&records);
    assert!(at_drain < SERVERS, "nothing left to move after the drain");
    wait_for("fleet provisioned", Duration::from_secs(300), || {
        enrolled(&ledger(&op, &m1)) == SERVERS
    });
    let records = ledger(&op, &m1);
    assert_eq!(
        issued_by(&records, &m2.name),
        by_m2,
        "drained member kept issuing"
    );
    let status = op.json(&m1, &["status"]);
    let m2_status = status["members"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == m2.name.as_str()).cloned())
        .expect("prov2 in status");
    assert_eq!(m2_status["draining"], true);
    assert_eq!(m2_status["drained"], true, "{m2_status}");
    assert_eq!(m2_status["owned"], 0, "a drained member holds no server");
    let undrained = op.json(&m1, &["undrain", &m2.name]);
    assert_eq!(undrained["draining"], serde_json::json!([]));

    // --- ledger queries: list with paging and filters, show with history
    let page = op.json(&m1, &["ledger", "list", "--page-size", "50"]);
    assert_eq!(page["records"].as_array().map(Vec::len), Some(50));
    assert_eq!(page["matched"], SERVERS as u64);
    let token = page["next_page_token"]
        .as_str()
        .expect("next page")
        .to_string();
    let page2 = op.json(
        &m1,
        &[
            "ledger",
            "list",
            "--page-size",
            "50",
            "--page-token",
            &token,
        ],
    );
    assert!(page2["records"][0]["identity"].as_str() > Some(token.as_str()));
    let one = op.json(&m1, &["ledger", "list", "--fact", "index=7"]);
    assert_eq!(one["matched"], 1);
    // by expiry: the test CA issues certificates for 30 days
    let soon = op.json(&m1, &["ledger", "list", "--expiring-within", "31d"]);
    assert_eq!(soon["matched"], SERVERS as u64, "{soon}");
    let none = op.json(&m1, &["ledger", "list", "--expiring-within", "29d"]);
    assert_eq!(none["matched"], 0, "{none}");
    let renew = op.json(
        &m1,
        &["reprovision", "--expiring-within", "1M", "--dry-run"],
    );
    assert_eq!(
        renew["counts"],
        serde_json::json!({"planned": SERVERS as u64}),
        "{renew}"
    );
    assert_eq!(one["records"][0]["identity"], "sim-00007.example.net");
    let shown = op.json(&m2, &["ledger", "show", "sim-00003.example.net"]);
    assert_eq!(shown["state"], "enrolled");
    assert!(shown["history"]
        .as_array()
        .is_some_and(|h| h.iter().any(|e| e["event"] == "enrolled")));
    let missing = op.cli(&m1, &["ledger", "show", "nobody.example.net"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));

    // --- reprovision a regex: exactly those servers come back and get new certificates
    let before_records = ledger(&op, &m1);
    let before: BTreeMap<String, String> = before_records
        .iter()
        .map(|r| {
            (
                r["identity"].as_str().unwrap_or_default().to_string(),
                serial(r).unwrap_or_default(),
            )
        })
        .collect();
    let dry = op.json(&m1, &["reprovision", "--fact", "index=7", "--dry-run"]);
    assert_eq!(dry["counts"], serde_json::json!({"planned": 1}));
    let targets: BTreeSet<String> = (0..5).map(|i| format!("sim-{i:05}.example.net")).collect();
    // discovery offers servers as they answer: the targets may be among the last enrolled
    let settle_ms = raft::state::REENROLL_SETTLE_MS;
    cluster_tests::wait_out_settle_time(&before_records, &targets, settle_ms);
    let run = op.json(
        &m2,
        &[
            "reprovision",
            "--regex",
            r"^sim-0000[0-4]\.",
            "--batch",
            "2",
            "--rate",
            "20",
        ],
    );
    assert_eq!(run["counts"], serde_json::json!({"ok": 5}), "{run}");
    let asked: BTreeSet<String> = run["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["identity"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(asked, targets);
    // the old credential is revoked only once the server restarted with the new one, a
    // moment after the ledger shows it enrolled again
    wait_for_detail(
        "reprovisioned servers enrolled again, their old credentials retired",
        Duration::from_secs(120),
        || {
            let recs = ledger(&op, &m1);
            let pending: Vec<String> = recs
                .iter()
                .filter(|r| targets.contains(r["identity"].as_str().unwrap_or_default()))
                .filter(|r| {
                    let old = before.get(r["identity"].as_str().unwrap_or_default());
                    r["state"] != "Enrolled"
                        || serial(r).as_ref() == old
                        || !r["superseded"].is_null()
                })
                .map(|r| r.to_string())
                .collect();
            if pending.is_empty() {
                Ok(())
            } else {
                Err(format!("still pending: {}", pending.join("\n")))
            }
        },
    );
    let after = ledger(&op, &m1);
    let mut superseded = BTreeSet::new();
    for r in &after {
        let id = r["identity"].as_str().unwrap_or_default();
        let old = &before[id];
        if targets.contains(id) {
            assert_ne!(
                serial(r).as_deref(),
                Some(old.as_str()),
                "{id} kept its serial"
            );
            let revoked = r["revoked"].as_array().expect("revoked list");
            assert!(
                revoked.iter().any(|v| v["serial"] == old.as_str()
                    && v["reason"]
                        .as_str()
                        .is_some_and(|s| s.contains("superseded"))),
                "{id}: old serial not revoked: {r}"
            );
            superseded.insert(old.clone());
        } else {
            assert_eq!(serial(r).as_deref(), Some(old.as_str()), "{id} changed");
            assert_eq!(r["revoked"], serde_json::json!([]), "{id}");
        }
    }
    // the simulator's own view: only the targets went back and were provisioned twice (a
    // server reports itself provisioned after its restart, a moment after the ledger)
    wait_for(
        "servers restarted after reprovisioning",
        Duration::from_secs(30),
        || {
            cluster_tests::fleet_events(&events)
                .iter()
                .filter(|(i, e, _)| e == "provisioned" && targets.contains(i))
                .count()
                == 2 * targets.len()
        },
    );
    let ev = cluster_tests::fleet_events(&events);
    let back: BTreeSet<String> = ev
        .iter()
        .filter(|(_, e, _)| e == "reprovisioning")
        .map(|(i, _, _)| i.clone())
        .collect();
    assert_eq!(back, targets);
    let mut provisioned: BTreeMap<&str, Vec<&Option<String>>> = BTreeMap::new();
    for (i, e, s) in &ev {
        if e == "provisioned" {
            provisioned.entry(i).or_default().push(s);
        }
    }
    assert_eq!(provisioned.len(), SERVERS);
    for (id, serials) in &provisioned {
        let expect = if targets.contains(*id) { 2 } else { 1 };
        assert_eq!(serials.len(), expect, "{id}: {serials:?}");
        let distinct: BTreeSet<_> = serials.iter().collect();
        assert_eq!(distinct.len(), serials.len(), "{id} got a serial twice");
    }

    // --- revoke one server: ledger state, and the CRL every member writes lists it
    let victim = "sim-00010.example.net";
    let victim_serial = serial(
        after
            .iter()
            .find(|r| r["identity"] == victim)
            .expect("victim in ledger"),
    )
    .expect("victim serial");
    let revoked = op.json(&m1, &["revoke", victim, "--reason", "key leaked"]);
    assert_eq!(revoked["serial"], victim_serial.as_str());
    let shown = op.json(&m1, &["ledger", "show", victim]);
    assert_eq!(shown["state"], "revoked");
    assert_eq!(shown["revoked"][0]["reason"], "key leaked");
    let again = op.cli(&m1, &["revoke", victim]);
    assert_eq!(again.status.code(), Some(1), "revoking twice must fail");
    let mut want = superseded.clone();
    want.insert(victim_serial.clone());
    for s in &specs {
        let crl = d.join(format!("{}-data", s.name)).join("crl.pem");
        wait_for(
            &format!("CRL of {}", s.name),
            Duration::from_secs(10),
            || want.is_subset(&crl_serials(&crl)),
        );
    }

    // --- import: servers enrolled elsewhere become enrolled records; the ledger's rules
    // refuse a serial recorded before, bad lines are refused, records there are left alone
    let m3 = specs[2].clone();
    let fp = "ab".repeat(32);
    let import = d.join("import.jsonl");
    let lines = [
        format!(r#"{{"identity":"old-1.example.net","credential":{{"serial":"AB01","fingerprint":"{fp}","not_after":1900000000}},"facts":{{"site":"old"}}}}"#),
        format!(r#"{{"identity":"old-2.example.net","credential":{{"serial":"ab01","fingerprint":"{fp}","not_after":1900000000}}}}"#),
        r#"{"identity":"old-3.example.net","credential":{"serial":"ab03","fingerprint":"nothex","not_after":1900000000}}"#.to_string(),
        r#"{"identity":"old-4.example.net","state":"failed","credential":null}"#.to_string(),
        format!(r#"{{"identity":"{victim}","credential":{{"serial":"ab05","fingerprint":"{fp}","not_after":1900000000}}}}"#),
        "{garbage".to_string(),
    ];
    std::fs::write(&import, lines.join("\n")).expect("write import file");
    let out = op.cli(
        &m2,
        &[
            "--json",
            "ledger",
            "import",
            import.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "refusals make the import fail");
    let sum: Value = serde_json::from_slice(&out.stdout).expect("import summary");
    assert_eq!(
        (
            &sum["imported"],
            &sum["skipped"],
            &sum["not_enrolled"],
            &sum["refused"],
            &sum["unreadable"]
        ),
        (&1.into(), &1.into(), &1.into(), &2.into(), &1.into()),
        "{sum}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("old-2.example.net") && stderr.contains("serial already issued"),
        "{stderr}"
    );
    assert!(stderr.contains("fingerprint"), "{stderr}");
    wait_for(
        "the import on every member",
        Duration::from_secs(10),
        || {
            ledger(&op, &m3)
                .iter()
                .any(|r| r["identity"] == "old-1.example.net")
        },
    );
    let old = op.json(&m3, &["ledger", "show", "old-1.example.net"]);
    assert_eq!(old["state"], "enrolled");
    assert_eq!(old["credential"]["serial"], "ab01");
    assert_eq!(old["facts"]["site"], "old");
    assert_eq!(
        op.json(&m1, &["ledger", "show", victim])["state"],
        "revoked"
    );
    // a cluster's export imports back as it is: everything is there already
    let export = d.join("export.jsonl");
    let exported = op.cli(
        &m1,
        &[
            "ledger",
            "export",
            "--out",
            export.to_str().expect("utf-8 path"),
        ],
    );
    assert!(exported.status.success(), "{exported:?}");
    let again = op.json(
        &m1,
        &["ledger", "import", export.to_str().expect("utf-8 path")],
    );
    assert_eq!(
        (&again["imported"], &again["refused"]),
        (&0.into(), &0.into()),
        "{again}"
    );

    // --- rebalance with everyone live releases nothing and names the live members
    let rb = op.json(&m1, &["rebalance"]);
    assert_eq!(rb["live_members"].as_array().map(Vec::len), Some(3), "{rb}");

    // --- membership: a change that would lose the quorum is refused
    let status = op.json(&m1, &["status"]);
    let leader_id = status["leader_id"].as_u64().expect("leader");
    let victim_member = specs
        .iter()
        .position(|s| s.id != leader_id)
        .expect("a follower");
    let dead = specs[victim_member].clone();
    members[victim_member].kill();
    let survivor = specs
        .iter()
        .find(|s| s.id != leader_id && s.id != dead.id)
        .cloned()
        .expect("another follower");
    let refused = op.cli(&survivor, &["remove-member", &survivor.id.to_string()]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("quorum"),
        "{err}"
    );
    // removing the dead member keeps a healthy quorum of two
    let removed = op.json(&survivor, &["remove-member", &dead.id.to_string()]);
    assert_eq!(
        removed["voters"].as_array().map(Vec::len),
        Some(2),
        "{removed}"
    );

    // a new member that waits for an operator: add as learner, then promote
    let four = ClusterMemberSpec::new(4);
    specs.push(four.clone());
    let _ = cluster_pki(d, &specs);
    members.push(start_member(&site, &four, &specs, false));
    let added = op.json(
        &survivor,
        &[
            "add-member",
            "--id",
            "4",
            "--name",
            &four.name,
            "--raft-addr",
            &format!("127.0.0.1:{}", four.raft_port),
            "--admin-addr",
            &format!("127.0.0.1:{}", four.admin_port),
        ],
    );
    assert_eq!(added["learners"], serde_json::json!([4]), "{added}");
    let promoted = op.json(&survivor, &["promote", "4"]);
    assert_eq!(
        promoted["voters"].as_array().map(Vec::len),
        Some(3),
        "{promoted}"
    );
    wait_for(
        "prov4 healthy with the same ledger",
        Duration::from_secs(60),
        || {
            let s = op.json(&four, &["status"]);
            let ms = s["members"].as_array().cloned().unwrap_or_default();
            let digests: BTreeSet<String> = ms
                .iter()
                .filter_map(|m| m["ledger_digest"].as_str().map(String::from))
                .collect();
            ms.len() == 3
                && ms
                    .iter()
                    .all(|m| m["healthy"] == true && m["voter"] == true)
                && digests.len() == 1
        },
    );
    // human output works too
    let table = op.cli(&four, &["members"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("prov4") && text.contains("leader"), "{text}");

    drop(fleet);
}

#[test]
fn a_forced_removal_waits_for_the_quorum_and_the_removed_member_writes_nothing() {
    const FLEET: usize = 200;
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: FLEET,
            token: TOKEN.into(),
            timeout_secs: 600,
            ..Default::default()
        },
        false,
    );
    let (specs, _, op) = three_members(d, "ops-bob");
    let site = Site::new(d, &nats, &ca, &fleet, &op);
    let mut members: Vec<ProvisionerProcess> = specs
        .iter()
        .map(|s| start_member(&site, s, &specs, true))
        .collect();
    let m1 = specs[0].clone();
    wait_for("some servers enrolled", Duration::from_secs(90), || {
        op.cli(&m1, &["--json", "status"]).status.success() && enrolled(&ledger(&op, &m1)) >= 20
    });

    // the leader stays; one follower dies, the other is removed by force
    let leader_id = op.json(&m1, &["status"])["leader_id"]
        .as_u64()
        .expect("leader");
    let leader = specs
        .iter()
        .find(|s| s.id == leader_id)
        .cloned()
        .expect("leader spec");
    let followers: Vec<usize> = (0..specs.len())
        .filter(|i| specs[*i].id != leader_id)
        .collect();
    let (dead_i, gone_i) = (followers[0], followers[1]);
    let gone = specs[gone_i].clone();
    members[dead_i].kill();

    // without force: the voters left would have no quorum now (prov-dead is down)
    let refused = op.cli(&leader, &["remove-member", &gone.id.to_string()]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    eprintln!("remove-member {} (not forced): {err}", gone.id);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("quorum"),
        "{err}"
    );
    assert_eq!(voters(&op.json(&leader, &["status"])).len(), 3);

    // with force the change is made, but it cannot commit until the dead member is back: the
    // call gives up, the change does not
    let forced = op.cli(
        &leader,
        &[
            "--timeout",
            "5",
            "remove-member",
            "--force",
            &gone.id.to_string(),
        ],
    );
    assert!(String::from_utf8_lossy(&forced.stderr).contains("DEADLINE_EXCEEDED"));
    assert_eq!(
        forced.status.code(),
        Some(5),
        "a forced removal without a quorum must wait: {}",
        String::from_utf8_lossy(&forced.stderr)
    );
    eprintln!(
        "remove-member --force {}: {}",
        gone.id,
        String::from_utf8_lossy(&forced.stderr)
    );
    members[dead_i].restart().expect("restart the dead member");
    let mut removed_at_ms = 0;
    wait_for(
        "the forced removal committed",
        Duration::from_secs(60),
        || {
            let out = op.cli(&leader, &["--json", "status"]);
            let Ok(s) = serde_json::from_slice::<Value>(&out.stdout) else {
                return false;
            };
            removed_at_ms = unix_ms();
            voters(&s) == BTreeSet::from([leader_id, specs[dead_i].id])
        },
    );

    // the fleet is finished by the two members left; the removed one keeps running
    let summary = fleet.finish(Duration::from_secs(300));
    assert_eq!(summary["provisioned"], FLEET as u64, "{summary}");
    assert_eq!(summary["duplicate_serials"], 0, "{summary}");
    assert!(
        members[gone_i].proc.is_running(),
        "the removed member crashed"
    );
    let records = ledger(&op, &leader);
    assert_eq!(records.len(), FLEET);
    let late: BTreeSet<&str> = records
        .iter()
        .filter(|r| {
            r["history"].as_array().is_some_and(|h| {
                h.iter().any(|h| {
                    h["member"] == gone.name.as_str() && h["at_ms"].as_u64() > Some(removed_at_ms)
                })
            })
        })
        .filter_map(|r| r["identity"].as_str())
        .collect();
    assert!(
        late.is_empty(),
        "the removed member wrote about these servers after its removal: {late:?}"
    );
    assert!(
        issued_by(&records, &gone.name) < FLEET,
        "the removed member issued everything"
    );
    let log =
        std::fs::read_to_string(members[gone_i].config.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("heartbeat refused"),
        "the removed member never noticed"
    );
    // the two members agree
    wait_for("the members agree", Duration::from_secs(30), || {
        ledger(&op, &leader) == ledger(&op, &specs[dead_i])
    });
}

/// Ids of the voters in a `status` reply.
fn voters(status: &Value) -> BTreeSet<u64> {
    status["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// With `renew_before`, the members reprovision servers whose certificates end within it, each
/// the servers its shard gives it, and the servers come back with new certificates.
#[test]
fn the_cluster_renews_certificates_before_they_end() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const FLEET: usize = 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let fleet = staying_fleet(d, &nats, &ca.0, FLEET, None);
    let (specs, _, op) = three_members(d, "ops-alice");
    let site = Site::new(d, &nats, &ca, &fleet, &op);
    // certificates of 100 s, renewed once less than 70 s are left: 30 s after they are issued
    let members: Vec<ProvisionerProcess> = specs
        .iter()
        .map(|s| {
            let mut o = member_options(&site, s, &specs, true);
            o.ca_validity = "100s".into();
            if let Some(c) = o.cluster.as_mut() {
                c.admin_extra
                    .push_str("    renew_before: 70s\n    renew_rate: 5\n");
            }
            ProvisionerProcess::start(d, &nats, &ca, &fleet.signer_pub, &o)
        })
        .collect();
    let m1 = specs[0].clone();
    wait_for("admin API up", Duration::from_secs(60), || {
        op.cli(&m1, &["status"]).status.success()
    });
    wait_for("fleet provisioned", Duration::from_secs(120), || {
        enrolled(&ledger(&op, &m1)) == FLEET
    });
    let first: BTreeMap<String, String> = ledger(&op, &m1)
        .iter()
        .map(|r| {
            (
                r["identity"].as_str().unwrap_or_default().to_string(),
                serial(r).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(first.len(), FLEET);
    // every server comes back with a certificate other than its first (at any moment some are
    // away being renewed, again: servers renewed are counted as they are seen)
    let renewals = |members: &[ProvisionerProcess]| -> Vec<f64> {
        members
            .iter()
            .map(|m| {
                cluster_tests::metric_sum(
                    &m.metrics(),
                    "choria_provisioner_renewals",
                    "result=\"ok\"",
                )
            })
            .collect()
    };
    let mut renewed_ids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while renewed_ids.len() < FLEET {
        let now = ledger(&op, &m1);
        for r in &now {
            let id = r["identity"].as_str().unwrap_or_default();
            if serial(r).is_some_and(|s| Some(&s) != first.get(id)) {
                renewed_ids.insert(id.to_string());
            }
        }
        if Instant::now() > deadline {
            let states: BTreeMap<String, usize> = now.iter().fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r["state"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
                m
            });
            panic!(
                "renewed {} of {FLEET}; states {states:?}; renewals per member {:?}; a log: {}",
                renewed_ids.len(),
                renewals(&members),
                members[0]
                    .log()
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let records = ledger(&op, &m1);
    for r in &records {
        let asked_by_renewal = r["history"].as_array().is_some_and(|h| {
            h.iter().any(|e| {
                e["member"].as_str().is_some_and(|m| m.ends_with("/renew"))
                    && e["event"]
                        .as_str()
                        .is_some_and(|ev| ev.starts_with("reprovision request: ok"))
            })
        });
        assert!(asked_by_renewal, "not renewed by the cluster: {r}");
    }
    // spread over the members: more than one asked, and together at least once per server
    let renewed = renewals(&members);
    assert!(
        renewed.iter().sum::<f64>() >= FLEET as f64,
        "renewals per member: {renewed:?}"
    );
    assert!(
        renewed.iter().filter(|n| **n > 0.0).count() >= 2,
        "renewals per member: {renewed:?}"
    );
}
