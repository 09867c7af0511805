//! End-to-end provisioning over a real `nats-server`: the `provisioner` binary against
//! `fleet-sim` processes. Build the binaries first: `cargo build --workspace --bins`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use cluster_tests::{
    bin, init_ca, metric_sum, FleetOptions, FleetProcess, Nats, ProvisionerOptions,
    ProvisionerProcess,
};
use serde_json::Value;

/// The machine has two cores: run one fleet at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no {key}: {v}"))
}

/// Ledger records in state enrolled, from a member's metrics text.
fn enrolled(metrics: &str) -> f64 {
    metric_sum(
        metrics,
        "choria_provisioner_ledger_records",
        "state=\"enrolled\"",
    )
}

fn run_fleet(
    dir: &Path,
    fleet_opts: FleetOptions,
    prov_opts: ProvisionerOptions,
) -> (Value, ProvisionerProcess, Nats) {
    let nats = Nats::start(dir);
    let ca = init_ca(dir);
    let fleet = FleetProcess::start(dir, &nats, &ca.0, &fleet_opts, false);
    let mut prov = ProvisionerProcess::start(dir, &nats, &ca, &fleet.signer_pub, &prov_opts);
    let summary = fleet.finish(Duration::from_secs(fleet_opts.timeout_secs + 60));
    assert!(
        prov.proc.is_running(),
        "provisioner died; see {}",
        dir.display()
    );
    (summary, prov, nats)
}

#[test]
fn two_hundred_servers_are_provisioned_once_with_verified_certificates() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (summary, prov, _nats) = run_fleet(
        dir.path(),
        FleetOptions {
            servers: 200,
            token: "t0ken".into(),
            timeout_secs: 240,
            ..Default::default()
        },
        ProvisionerOptions {
            token: "t0ken".into(),
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "servers"), 200, "{summary}");
    assert_eq!(n(&summary, "provisioned"), 200, "{summary}");
    // verified: chains to the pinned test CA, names the server, matches its gencsr key
    assert_eq!(n(&summary, "verified"), 200, "{summary}");
    assert_eq!(n(&summary, "reconfigured"), 0, "{summary}");
    assert_eq!(n(&summary, "duplicate_serials"), 0, "{summary}");
    assert_eq!(n(&summary, "ddl_violations"), 0, "{summary}");
    assert_eq!(n(&summary, "bad_requests"), 0, "{summary}");
    assert_eq!(n(&summary, "bad_tokens"), 0, "{summary}");
    assert_eq!(n(&summary, "configure_refused"), 0, "{summary}");
    let m = prov.metrics();
    assert_eq!(
        metric_sum(&m, "choria_provisioner_provisioned", "site=\"test\""),
        200.0,
        "{m}"
    );
    assert!(metric_sum(&m, "choria_provisioner_discover_cycles", "") >= 1.0);
}

#[test]
fn rsa_keys_as_upstream_servers_make_them() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (summary, _prov, _nats) = run_fleet(
        dir.path(),
        FleetOptions {
            servers: 6,
            key_type: "rsa2048".into(),
            timeout_secs: 120,
            ..Default::default()
        },
        ProvisionerOptions::default(),
    );
    assert_eq!(n(&summary, "provisioned"), 6, "{summary}");
    assert_eq!(n(&summary, "verified"), 6, "{summary}");
}

/// A helper that fails (exit 1, then garbage) the first times it sees some servers, then
/// answers as the example helper does: those servers are deferred and retried.
fn flaky_helper(dir: &Path) -> String {
    let marks = dir.join("helper-marks");
    std::fs::create_dir_all(&marks).unwrap();
    let example = cluster_tests::repo_root().join("deploy/examples/helper.py");
    let script = dir.join("flaky-helper.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
input=$(cat)
id=$(printf '%s' "$input" | sed -e 's/.*"identity":"\([^"]*\)".*/\1/')
case "$id" in
  *1.example.net)
    if [ ! -e "{marks}/$id.1" ]; then touch "{marks}/$id.1"; echo "first try fails" >&2; exit 1; fi
    if [ ! -e "{marks}/$id.2" ]; then touch "{marks}/$id.2"; echo "garbage, not json"; exit 0; fi
    ;;
esac
printf '%s' "$input" | exec {python} {example}
"#,
            marks = marks.display(),
            example = example.display(),
            python = cluster_tests::python()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

/// The external-CA helper example makes each server's key and certificate with openssl; the
/// key reaches the server only encrypted for it (X25519 + AES-256-CBC), and the server
/// decrypts it, finds it matches its certificate, and stores the helper's action policy.
#[test]
fn keys_from_the_helper_travel_encrypted_and_policies_reach_the_servers() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // run_fleet makes the CA here; the helper signs with the same one the servers trust
    let (ca_cert, ca_key) = (d.join("ca/ca.pem"), d.join("ca/ca.key"));
    let policy = d.join("default.policy");
    std::fs::write(&policy, "policy default deny\nallow * * * *\n").unwrap();
    let helper = format!(
        "/usr/bin/env EXTERNAL_CA_CERT={} EXTERNAL_CA_KEY={} EXTERNAL_CA_MAKE_KEYS=1 ACTION_POLICY_FILE={} {} {}",
        ca_cert.display(),
        ca_key.display(),
        policy.display(),
        cluster_tests::python(),
        cluster_tests::repo_root()
            .join("deploy/examples/helper-external-ca.py")
            .display()
    );
    let (summary, _prov, _nats) = run_fleet(
        d,
        FleetOptions {
            servers: 12,
            token: "t0ken".into(),
            timeout_secs: 120,
            ..Default::default()
        },
        ProvisionerOptions {
            token: "t0ken".into(),
            helper,
            workers: 4,
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "provisioned"), 12, "{summary}");
    // the certificate chains to the CA, names the server and matches the delivered key
    assert_eq!(n(&summary, "verified"), 12, "{summary}");
    assert_eq!(n(&summary, "keys_delivered"), 12, "{summary}");
    assert_eq!(n(&summary, "policies_stored"), 12, "{summary}");
    assert_eq!(n(&summary, "configure_refused"), 0, "{summary}");
    assert_eq!(n(&summary, "ddl_violations"), 0, "{summary}");
    // no private key in clear in the provisioner's log
    let log = std::fs::read_to_string(d.join("prov1.example.net.log")).unwrap();
    assert!(!log.contains("PRIVATE KEY"), "a private key was logged");
}

/// Servers whose CSRs ask to be a CA, for denied or other names, or carry a broken signature
/// get nothing, even from the external-CA helper that signs whatever reaches it; every
/// certificate the others get is strict DER, accepted by a TLS peer (the simulator checks both)
/// and not a CA.
#[test]
fn hostile_csrs_get_no_certificate_and_every_certificate_is_strict_der() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca_cert, ca_key) = (d.join("ca/ca.pem"), d.join("ca/ca.key"));
    let helper = format!(
        "/usr/bin/env EXTERNAL_CA_CERT={} EXTERNAL_CA_KEY={} {} {}",
        ca_cert.display(),
        ca_key.display(),
        cluster_tests::python(),
        cluster_tests::repo_root()
            .join("deploy/examples/helper-external-ca.py")
            .display()
    );
    let (summary, mut prov, _nats) = run_fleet(
        d,
        FleetOptions {
            servers: 16,
            token: "t0ken".into(),
            timeout_secs: 120,
            extra: vec!["--fail-bad-csr".into(), "0.25".into()],
            ..Default::default()
        },
        ProvisionerOptions {
            token: "t0ken".into(),
            helper,
            max_attempts: 4,
            retry_backoff_min: "1s".into(),
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "healthy"), 12, "{summary}");
    assert_eq!(n(&summary, "provisioned"), 12, "{summary}");
    assert_eq!(n(&summary, "verified"), 12, "{summary}");
    assert_eq!(n(&summary, "faulty_provisioned"), 0, "{summary}");
    assert_eq!(n(&summary, "ca_certificates"), 0, "{summary}");
    assert_eq!(n(&summary, "configure_refused"), 0, "{summary}");
    // each hostile server goes through every bad CSR in turn; the CA request is among them
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = prov.metrics();
        let refused = |r: &str| {
            metric_sum(
                &m,
                "choria_provisioner_rejected",
                &format!("reason=\"{r}\""),
            )
        };
        if refused("csr_extension") >= 1.0
            && refused("csr_cn") >= 1.0
            && refused("csr_denied") >= 1.0
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(prov.proc.is_running(), "provisioner died\n{m}");
}

/// The helper asks for version 0.30.0: upgradable servers get `release_update` from the
/// repository, restart into provisioning mode at the new version and are provisioned then;
/// the others fail to update and, upgrades being optional, are provisioned as they are.
#[test]
fn upgradable_servers_are_updated_then_provisioned_and_the_rest_as_they_are() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let repo = "https://releases.example.net/choria";
    let helper = format!(
        "/usr/bin/env UPGRADE_TO=0.30.0 {} {}",
        cluster_tests::python(),
        cluster_tests::repo_root()
            .join("deploy/examples/helper.py")
            .display()
    );
    let (summary, prov, _nats) = run_fleet(
        dir.path(),
        FleetOptions {
            servers: 10,
            token: "t0ken".into(),
            timeout_secs: 120,
            extra: vec![
                "--upgradable".into(),
                "0.6".into(),
                "--upgrade-repository".into(),
                repo.into(),
            ],
            ..Default::default()
        },
        ProvisionerOptions {
            token: "t0ken".into(),
            helper,
            upgrades: true,
            extra_yaml: format!("upgrades_repository: {repo}\nupgrades_optional: true\n"),
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "provisioned"), 10, "{summary}");
    assert_eq!(n(&summary, "verified"), 10, "{summary}");
    assert_eq!(n(&summary, "upgraded"), 6, "{summary}");
    assert_eq!(
        summary["upgraded_to"],
        serde_json::json!(["0.30.0"]),
        "{summary}"
    );
    assert_eq!(n(&summary, "reconfigured"), 0, "{summary}");
    let m = prov.metrics();
    let upgrades = |result: &str| {
        metric_sum(
            &m,
            "choria_provisioner_upgrades",
            &format!("result=\"{result}\""),
        )
    };
    // six updates started; each of those servers came back at 0.30.0 and needed no more
    assert_eq!(upgrades("started"), 6.0, "{m}");
    assert_eq!(upgrades("current"), 6.0, "{m}");
    // the four that cannot update were provisioned as they are
    assert_eq!(upgrades("skipped"), 4.0, "{m}");
    assert_eq!(upgrades("failed"), 0.0, "{m}");
    assert_eq!(enrolled(&m), 10.0, "{m}");
}

/// `builtin_helper` instead of a helper program: every server gets the configured template
/// with its identity and ssl directory filled in.
#[test]
fn the_builtin_helper_configures_servers_without_a_helper_process() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (summary, prov, _nats) = run_fleet(
        dir.path(),
        FleetOptions {
            servers: 30,
            token: "t0ken".into(),
            timeout_secs: 120,
            ..Default::default()
        },
        ProvisionerOptions {
            token: "t0ken".into(),
            helper: String::new(),
            extra_yaml: cluster_tests::BUILTIN_HELPER_YAML.into(),
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "provisioned"), 30, "{summary}");
    assert_eq!(n(&summary, "verified"), 30, "{summary}");
    assert_eq!(n(&summary, "configure_refused"), 0, "{summary}");
    let m = prov.metrics();
    assert_eq!(metric_sum(&m, "choria_provisioner_helper_errors", ""), 0.0);
    assert_eq!(enrolled(&m), 30.0, "{m}");
}

#[test]
fn misbehaving_servers_and_helpers_do_not_affect_the_rest() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let ca = init_ca(dir.path());
    let fleet = FleetProcess::start(
        dir.path(),
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 60,
            timeout_secs: 120,
            extra: [
                "--fail-timeout",
                "0.05",
                "--fail-garbage",
                "0.05",
                "--fail-bad-csr",
                "0.1",
                "--fail-bad-jwt",
                "0.1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..Default::default()
        },
        false,
    );
    let mut prov = ProvisionerProcess::start(
        dir.path(),
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions {
            helper: flaky_helper(dir.path()),
            rpc_timeout: "2s".into(),
            max_attempts: 4,
            retry_backoff_min: "1s".into(),
            // records of servers that failed for good go soon after
            extra_yaml: "failed_retention: 4s\n".into(),
            ..Default::default()
        },
    );

    prov.wait_ready(Duration::from_secs(30));
    // garbage on the subjects the provisioner listens to, from inside its own account
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = async_nats::ConnectOptions::with_user_and_password(
            "provisioner".into(),
            nats.creds.provisioner.clone(),
        )
        .connect(&nats.url)
        .await
        .unwrap();
        let caller = md5_of("choria=prov1.example.net");
        for junk in [
            &b"\x00\xff garbage"[..],
            b"{}",
            b"[1,2",
            b"{\"protocol\":\"io.choria.lifecycle.v1.startup\"}",
        ] {
            c.publish(
                "choria.lifecycle.event.startup.provision_mode_server",
                junk.to_vec().into(),
            )
            .await
            .unwrap();
            c.publish(
                format!("provisioning.reply.{caller}.abc"),
                junk.to_vec().into(),
            )
            .await
            .unwrap();
        }
        c.flush().await.unwrap();
    });

    let summary = fleet.finish(Duration::from_secs(200));
    assert!(prov.proc.is_running(), "provisioner died");
    assert_eq!(n(&summary, "healthy"), 42, "{summary}");
    assert_eq!(n(&summary, "provisioned"), 42, "{summary}");
    assert_eq!(n(&summary, "verified"), 42, "{summary}");
    assert_eq!(n(&summary, "faulty_provisioned"), 0, "{summary}");
    assert_eq!(n(&summary, "ddl_violations"), 0, "{summary}");
    assert_eq!(n(&summary, "reconfigured"), 0, "{summary}");

    let m = prov.metrics();
    let site = "site=\"test\"";
    assert!(
        metric_sum(&m, "choria_provisioner_rejected", "reason=\"jwt\"") >= 6.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "choria_provisioner_rejected", "reason=\"csr_") >= 6.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "choria_provisioner_bad_messages", "kind=\"reply\"") >= 3.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "choria_provisioner_bad_messages", "kind=\"event\"") >= 4.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "choria_provisioner_helper_errors", site) >= 2.0,
        "{m}"
    );
    // servers that never answer run out of tries after the healthy ones are done
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rpc_errors = loop {
        let m = prov.metrics();
        let v = metric_sum(&m, "choria_provisioner_rpc_errors", "choria_provision#jwt");
        if v >= 6.0 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        rpc_errors >= 6.0,
        "timeouts and garbage count as rpc errors: {rpc_errors}"
    );
    assert!(prov.proc.is_running(), "provisioner died");
    assert!(
        metric_sum(&m, "choria_provisioner_provision_errors", site) >= 10.0,
        "{m}"
    );
    // servers with bad CSRs failed for good; their records go after `failed_retention`, the
    // enrolled ones (some failed once on the flaky helper) stay
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = prov.metrics();
        let done = records(&m, "failed") == 0.0
            && metric_sum(&m, "choria_provisioner_ledger_forgotten", site) >= 6.0;
        if done || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(records(&m, "failed"), 0.0, "{m}");
    assert!(
        metric_sum(&m, "choria_provisioner_ledger_forgotten", site) >= 6.0,
        "{m}"
    );
    assert_eq!(records(&m, "enrolled"), 42.0, "{m}");
    assert!(prov.proc.is_running(), "provisioner died");
}

#[test]
fn replies_from_another_identity_and_replayed_replies_are_dropped_and_counted() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    // The fleet stays up after the healthy servers are done, so the impostors are still there
    // to answer the provisioner's second attempt (a fleet that exits with the healthy ones
    // raced it).
    let mut fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 30,
            timeout_secs: 90,
            extra: [
                "--fail-wrong-sender",
                "0.1",
                "--fail-replay",
                "0.1",
                "--stay",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..Default::default()
        },
        false,
    );
    let prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions {
            rpc_timeout: "2s".into(),
            max_attempts: 2,
            retry_backoff_min: "1s".into(),
            ..Default::default()
        },
    );
    let summary = fleet.wait_summary(Duration::from_secs(150));
    assert_eq!(n(&summary, "healthy"), 24, "{summary}");
    assert_eq!(n(&summary, "provisioned"), 24, "{summary}");
    assert_eq!(n(&summary, "verified"), 24, "{summary}");
    assert_eq!(n(&summary, "duplicate_serials"), 0, "{summary}");
    // the impostors' requests time out (twice each) after the healthy servers are done
    let sender = |m: &str| {
        metric_sum(
            m,
            "choria_provisioner_bad_messages",
            "kind=\"reply_sender\"",
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = prov.metrics();
        if sender(&m) >= 6.0 || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(sender(&m) >= 6.0, "{m}");
    // every replay after a replaying server's first request names an old request
    assert!(
        metric_sum(
            &m,
            "choria_provisioner_bad_messages",
            "kind=\"reply_subject\""
        ) >= 9.0,
        "{m}"
    );
    // the replaying servers were enrolled from their real replies; the impostors never were
    assert_eq!(enrolled(&m), 27.0, "{m}");
}

/// Publishes a provisioning-mode server's startup event for `identity` as any waiting server
/// could (user `server`), built by hand so the test shares no code with the provisioner.
fn forge_startup(nats: &Nats, identities: &[&str]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = async_nats::ConnectOptions::with_user_and_password(
            "server".into(),
            nats.creds.server.clone(),
        )
        .connect(&nats.url)
        .await
        .unwrap();
        for (i, identity) in identities.iter().enumerate() {
            let event = serde_json::json!({
                "protocol": "io.choria.lifecycle.v1.startup",
                "id": format!("forged-{i}-{}", std::process::id()),
                "identity": identity,
                "component": "provision_mode_server",
                "timestamp": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                "version": "0.29.4",
            });
            c.publish(
                "choria.lifecycle.event.startup.provision_mode_server",
                event.to_string().into(),
            )
            .await
            .unwrap();
        }
        c.flush().await.unwrap();
    });
}

/// Ledger records per state, from a member's metrics text.
fn records(metrics: &str, state: &str) -> f64 {
    metric_sum(
        metrics,
        "choria_provisioner_ledger_records",
        &format!("state=\"{state}\""),
    )
}

/// Startup events name servers that are enrolled and gone (nobody answers for them) and
/// servers that never existed: none of them can show a provisioning JWT, so the ledger does
/// not change. Before, every forged name became a record and an enrolled one was claimed
/// and left failed.
#[test]
fn forged_startup_events_leave_enrolled_records_enrolled_and_write_nothing() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (summary, mut prov, nats) = run_fleet(
        dir.path(),
        FleetOptions {
            servers: 6,
            timeout_secs: 60,
            ..Default::default()
        },
        ProvisionerOptions {
            rpc_timeout: "1s".into(),
            max_attempts: 2,
            retry_backoff_min: "1s".into(),
            extra_yaml: "max_waiting: 10\n".into(),
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "provisioned"), 6, "{summary}");
    let m = prov.metrics();
    assert_eq!(records(&m, "enrolled"), 6.0, "{m}");
    let jwt_errors =
        |m: &str| metric_sum(m, "choria_provisioner_rpc_errors", "choria_provision#jwt");
    let before = jwt_errors(&m);
    // past the 15 s in which a second sighting of a server just enrolled is ignored anyway
    std::thread::sleep(Duration::from_secs(16));

    // twice, so the second round finds whatever the first one left
    for _ in 0..2 {
        forge_startup(
            &nats,
            &[
                "sim-00001.example.net",
                "sim-00004.example.net",
                "forged-1.example.net",
                "forged-2.example.net",
            ],
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    // every forged sighting was tried (its JWT request timed out, twice) and given up
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = prov.metrics();
        if jwt_errors(&m) - before >= 8.0 || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(jwt_errors(&m) - before >= 8.0, "{m}");
    assert!(prov.proc.is_running(), "provisioner died");
    assert_eq!(records(&m, "enrolled"), 6.0, "{m}");
    for state in ["failed", "claimed", "deferred"] {
        assert_eq!(records(&m, state), 0.0, "{state}: {m}");
    }
    assert_eq!(
        metric_sum(&m, "choria_provisioner_ledger_records", ""),
        6.0,
        "forged names were recorded: {m}"
    );
    assert_eq!(
        metric_sum(&m, "choria_provisioner_revoked_credentials", ""),
        0.0,
        "{m}"
    );

    // a flood of names: at most `max_waiting` wait, the rest are dropped and counted
    let flood: Vec<String> = (0..40).map(|i| format!("flood-{i}.example.net")).collect();
    forge_startup(&nats, &flood.iter().map(String::as_str).collect::<Vec<_>>());
    let dropped = |m: &str| metric_sum(m, "choria_provisioner_waiting_dropped", "source=\"event\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = prov.metrics();
        if dropped(&m) >= 30.0 || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(dropped(&m) >= 30.0, "{m}");
    assert!(
        metric_sum(&m, "choria_provisioner_waiting_nodes", "") <= 10.0,
        "{m}"
    );
    assert!(prov.proc.is_running(), "provisioner died");
}

#[test]
fn a_wrong_token_is_refused_by_the_servers_and_nothing_is_provisioned() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (summary, prov, _nats) = run_fleet(
        dir.path(),
        FleetOptions {
            servers: 5,
            token: "the-right-token".into(),
            timeout_secs: 20,
            ..Default::default()
        },
        ProvisionerOptions {
            token: "a-wrong-token".into(),
            rpc_timeout: "2s".into(),
            max_attempts: 1,
            ..Default::default()
        },
    );
    assert_eq!(n(&summary, "provisioned"), 0, "{summary}");
    assert!(n(&summary, "bad_tokens") >= 5, "{summary}");
    let m = prov.metrics();
    assert!(
        metric_sum(&m, "choria_provisioner_provision_errors", "site=\"test\"") >= 5.0,
        "{m}"
    );
    let log = std::fs::read_to_string(dir.path().join("prov1.example.net.log")).unwrap_or_default();
    assert!(
        log.contains("Incorrect provision token"),
        "the reason is not logged"
    );
}

fn md5_of(s: &str) -> String {
    // the reply subject hash, computed the long way so the test shares no code with proto
    let out = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    hex.split_whitespace().next().unwrap().to_string()
}

#[test]
fn broker_keeps_waiting_servers_away_from_anonymous_and_other_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        // no credentials: refused
        let anon = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(&nats.url)
            .await;
        assert!(anon.is_err(), "anonymous connection was accepted");

        let connect = |user: &str, pass: &str| {
            async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
                .connect(nats.url.clone())
        };
        let outsider = connect("choria", &nats.creds.choria).await.unwrap();
        let provisioner = connect("provisioner", &nats.creds.provisioner)
            .await
            .unwrap();
        let server = connect("server", &nats.creds.server).await.unwrap();

        let mut outside = outsider.subscribe("provisioning.>").await.unwrap();
        let mut inside = provisioner.subscribe("provisioning.reply.>").await.unwrap();
        // async-nats' flush does not wait for the broker to process the SUB, so publish
        // until the subscriber sees one: the broker registers each connection's SUB on
        // its own schedule
        let mut got = None;
        for _ in 0..50 {
            server
                .publish("provisioning.reply.x.y", "hello".into())
                .await
                .unwrap();
            server.flush().await.unwrap();
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), inside.next()).await
            {
                got = Some(m);
                break;
            }
        }
        assert!(
            got.is_some(),
            "provisioner did not see the reply within 10 s"
        );
        // the outsider's SUB is live once its own publish comes back (one connection is
        // processed in order); from then on a leak would deliver the server's messages
        outsider
            .publish("provisioning.self", "mine".into())
            .await
            .unwrap();
        let own = tokio::time::timeout(Duration::from_secs(10), outside.next()).await;
        assert!(
            matches!(&own, Ok(Some(m)) if m.subject.as_str() == "provisioning.self"),
            "the outsider's own subscription did not work: {own:?}"
        );
        for _ in 0..5 {
            server
                .publish("provisioning.reply.x.y", "again".into())
                .await
                .unwrap();
        }
        server.flush().await.unwrap();
        let leaked = tokio::time::timeout(Duration::from_millis(500), outside.next()).await;
        assert!(leaked.is_err(), "another account saw provisioning traffic");
    });
}

#[test]
fn bad_configuration_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "helper: /bin/true\nbroker_provisioning_password: x\nnats: {servers: [nats://127.0.0.1:1]}\ninterval: 10s\n",
    )
    .unwrap();
    let out = Command::new(bin("provisioner"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interval"), "{err}");

    std::fs::write(&cfg, "helper: [unclosed\n").unwrap();
    let out = Command::new(bin("provisioner"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A helper that keeps every request it is given (one file each) and answers as the example.
fn recording_helper(dir: &Path) -> (String, std::path::PathBuf) {
    let requests = dir.join("helper-requests");
    std::fs::create_dir_all(&requests).unwrap();
    let example = cluster_tests::repo_root().join("deploy/examples/helper.py");
    let script = dir.join("recording-helper.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s' \"$input\" > {requests}/$$.json\nprintf '%s' \"$input\" | exec {python} {example}\n",
            requests = requests.display(),
            example = example.display(),
            python = cluster_tests::python()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script.display().to_string(), requests)
}

fn same_serial(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.replace(':', "")
            .to_ascii_lowercase()
            .trim_start_matches('0')
            .to_string()
    };
    norm(a) == norm(b)
}

/// A quarter of a 20-server fleet comes back to provisioning mode 18 s after being
/// provisioned, as servers with a broken configuration or expired credentials do. With
/// `reenroll_limit` above 1 they are enrolled again, the helper told of their first
/// credential; at 1 they are refused (deferred) and keep the credential they have. With
/// `silent_restarts` those servers restart when asked but never answer `restart`.
fn fall_back(reenroll_limit: u32, silent_restarts: bool) {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let events = d.join("events.jsonl");
    let mut extra: Vec<String> = vec![
        "--stay".into(),
        "--events".into(),
        events.display().to_string(),
        "--fall-back".into(),
        "0.25".into(),
        "--fall-back-after".into(),
        "18".into(),
    ];
    if silent_restarts {
        // the same first quarter
        extra.extend(["--fail-silent-restart".into(), "0.25".into()]);
    }
    let mut fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 20,
            token: "t0ken".into(),
            timeout_secs: 120,
            extra,
            ..Default::default()
        },
        false,
    );
    let (helper, requests) = recording_helper(d);
    let mut prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions {
            token: "t0ken".into(),
            helper,
            retry_backoff_min: "1s".into(),
            extra_yaml: format!("reenroll_limit: {reenroll_limit}\nreenroll_window: 1h\n"),
            ..Default::default()
        },
    );
    let summary = fleet.wait_summary(Duration::from_secs(180));
    // the summary waits for the healthy servers only (those with a fault are counted apart,
    // as far as they got by then); the events below follow every server
    let faulty = if silent_restarts { 5 } else { 0 };
    assert_eq!(n(&summary, "provisioned"), 20 - faulty, "{summary}");
    let provisioned = |ev: &[(String, String, Option<String>)]| {
        ev.iter().filter(|(_, e, _)| e == "provisioned").count()
    };
    let fell_back = |ev: &[(String, String, Option<String>)]| {
        ev.iter()
            .filter(|(_, e, _)| e == "fell_back")
            .map(|(i, _, _)| i.clone())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let start = std::time::Instant::now();
    if reenroll_limit > 1 {
        while provisioned(&cluster_tests::fleet_events(&events)) < 25 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "fallen-back servers not provisioned again: {:?}\nthe provisioner's log:\n{}",
                cluster_tests::fleet_events(&events),
                prov.log()
            );
            assert!(prov.proc.is_running(), "provisioner died");
            std::thread::sleep(Duration::from_millis(500));
        }
    } else {
        // each fallen-back server is refused, once per attempt
        loop {
            let fell = fell_back(&cluster_tests::fleet_events(&events)).len();
            let refused = metric_sum(
                &prov.metrics(),
                "choria_provisioner_rejected",
                "reason=\"reenroll_limit\"",
            );
            if fell == 5 && refused >= 10.0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "fell back {fell}, refused {refused}"
            );
            assert!(prov.proc.is_running(), "provisioner died");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let ev = cluster_tests::fleet_events(&events);
    let fell = fell_back(&ev);
    assert_eq!(fell.len(), 5, "{ev:?}");
    let want_reenrolled = if reenroll_limit > 1 { 5 } else { 0 };
    let mut first_serial = std::collections::BTreeMap::new();
    for i in 0..20 {
        let id = format!("sim-{i:05}.example.net");
        let serials: Vec<&Option<String>> = ev
            .iter()
            .filter(|(who, e, _)| who == &id && e == "provisioned")
            .map(|(_, _, s)| s)
            .collect();
        let want = if fell.contains(&id) && reenroll_limit > 1 {
            2
        } else {
            1
        };
        assert_eq!(serials.len(), want, "{id}: {serials:?}");
        assert!(serials.iter().all(|s| s.is_some()), "{id}: {serials:?}");
        if want == 2 {
            assert_ne!(serials[0], serials[1], "{id} got its old serial again");
        }
        first_serial.insert(id, serials[0].clone().unwrap_or_default());
    }
    // the helper heard of each re-enrollment: the credential the server had, and who issued it
    let mut told = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&requests).unwrap() {
        let req: Value =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        let id = req["identity"].as_str().unwrap().to_string();
        let Some(before) = req.get("enrolled_before") else {
            continue;
        };
        assert!(fell.contains(&id), "{id} was never enrolled before: {req}");
        assert!(
            same_serial(before["serial"].as_str().unwrap(), &first_serial[&id]),
            "{id}: {before} vs {}",
            first_serial[&id]
        );
        assert_eq!(before["issued_by"], "prov1.example.net", "{before}");
        assert_eq!(before["issued_in_window"], 1, "{before}");
        told.insert(id);
    }
    if reenroll_limit > 1 {
        assert_eq!(told, fell, "the helper was not told of every re-enrollment");
    } else {
        assert!(told.is_empty(), "refused before the helper: {told:?}");
    }
    // the ledger: one record per server, all enrolled, the replaced credentials revoked
    // (a restart without an answer is followed by a ping 5 s later: some 10 s more)
    let start = std::time::Instant::now();
    loop {
        let m = prov.metrics();
        let enrolled = records(&m, "enrolled");
        let revoked = metric_sum(&m, "choria_provisioner_revoked_credentials", "");
        let reenrolled = metric_sum(&m, "choria_provisioner_reenrolled", "");
        if enrolled == 20.0 && revoked == want_reenrolled as f64 && reenrolled == revoked {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ledger: enrolled {enrolled}, revoked {revoked}, reenrolled {reenrolled}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // only re-enrolled servers are pinged after a restart without an answer; each had left
    let m = prov.scrape();
    let unanswered = |result: &str| {
        metric_sum(
            &m,
            "choria_provisioner_restart_unanswered",
            &format!("result=\"{result}\""),
        )
    };
    let want_left = if silent_restarts { want_reenrolled } else { 0 };
    assert_eq!(unanswered("left"), want_left as f64, "{m}");
    assert_eq!(unanswered("waiting") + unanswered("unknown"), 0.0);
}

#[test]
fn servers_that_fall_back_by_themselves_are_provisioned_again() {
    fall_back(3, false);
}

/// The re-enrolled servers restart without answering: each is pinged where it waited, does
/// not answer there either, and the credential it replaced is revoked all the same.
#[test]
fn a_re_enrolled_server_that_restarts_without_answering_has_its_old_credential_revoked() {
    fall_back(3, true);
}

#[test]
fn re_enrollment_stops_at_the_limit_and_the_old_credential_stays() {
    fall_back(1, false);
}

/// A chain issuer's client JWT as `choria jwt client ... --issuer` makes it: signed by the
/// Organization Issuer, with `tcs` = its signature of `<jti>.<public key>`. Built by hand here
/// so the test shares no code with the provisioner.
fn chain_issuer_token(
    org: &ed25519_dalek::SigningKey,
    chain: &ed25519_dalek::SigningKey,
) -> String {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jti = "2a1f0c9d7e3b4a5f8e6d1c2b3a4f5e6d";
    let pk = hex::encode(chain.verifying_key().as_bytes());
    let tcs = hex::encode(org.sign(format!("{jti}.{pk}").as_bytes()).to_bytes());
    let claims = serde_json::json!({
        "callerid": "choria=provisioner_signer", "purpose": "choria_client_id",
        "public_key": pk, "tcs": tcs, "jti": jti, "ou": "choria",
        "iss": format!("I-{}", hex::encode(org.verifying_key().as_bytes())),
        "iat": now, "nbf": now, "exp": now + 30 * 86400,
        "permissions": {"provisioner": true, "fleet_management": true},
    });
    let signing_input = format!(
        "{}.{}",
        b64(br#"{"alg":"EdDSA","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let sig = org.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig.to_bytes()))
}

/// An Organization Issuer fleet speaking protocol v2: signed by the issuer's own seed, or by
/// a chain issuer (`jwt_signing_token`) when `chained`.
fn ed25519_fleet(chained: bool) {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // the issuer's seed, hex in a file, as upstream keeps it; its public key for the servers
    let org = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let seed_file = d.join("signer.seed");
    let mut extra_yaml = String::new();
    if chained {
        let chain = ed25519_dalek::SigningKey::from_bytes(&[43u8; 32]);
        std::fs::write(&seed_file, hex::encode(chain.to_bytes())).unwrap();
        let token = d.join("signer.jwt");
        std::fs::write(&token, chain_issuer_token(&org, &chain)).unwrap();
        extra_yaml = format!("jwt_signing_token: {}\n", token.display());
    } else {
        std::fs::write(&seed_file, hex::encode(org.to_bytes())).unwrap();
    }
    let (summary, prov, _nats) = run_fleet(
        d,
        FleetOptions {
            servers: 40,
            token: "t0ken".into(),
            timeout_secs: 120,
            // provisioning JWTs signed by the Organization Issuer too (EdDSA), as there
            extra: vec![
                "--protocol-v2".into(),
                "--expect-issuer".into(),
                hex::encode(org.verifying_key().as_bytes()),
                "--jwt-signer-seed".into(),
                hex::encode(org.to_bytes()),
            ],
            ..Default::default()
        },
        ProvisionerOptions {
            token: "t0ken".into(),
            ed25519_issuer: Some(seed_file),
            extra_yaml,
            // the documented example helper for these networks
            helper: format!(
                "/usr/bin/env ISSUER_PUBLIC={} {} {}",
                hex::encode(org.verifying_key().as_bytes()),
                cluster_tests::python(),
                cluster_tests::repo_root()
                    .join("deploy/examples/helper-ed25519.py")
                    .display()
            ),
            ..Default::default()
        },
    );
    // every server verified its JWT: the issuer's signature (through the chain when chained),
    // purpose, its identity, its own key
    assert_eq!(n(&summary, "provisioned"), 40, "{summary}");
    assert_eq!(n(&summary, "verified"), 40, "{summary}");
    assert_eq!(summary["protocol"], "v2", "{summary}");
    // every request came in v2 with a caller JWT from the issuer and a valid signature
    assert_eq!(n(&summary, "wrong_protocol"), 0, "{summary}");
    assert_eq!(n(&summary, "bad_signatures"), 0, "{summary}");
    assert_eq!(n(&summary, "bad_requests"), 0, "{summary}");
    assert!(n(&summary, "requests") >= 40 * 4, "{summary}");
    assert_eq!(n(&summary, "duplicate_serials"), 0, "{summary}");
    assert_eq!(n(&summary, "configure_refused"), 0, "{summary}");
    assert_eq!(n(&summary, "ddl_violations"), 0, "{summary}");
    let m = prov.metrics();
    assert_eq!(enrolled(&m), 40.0, "{m}");
}

#[test]
fn an_ed25519_fleet_speaks_v2_and_gets_server_jwts_from_the_organization_issuer() {
    ed25519_fleet(false);
}

#[test]
fn a_chain_issuer_signs_server_jwts_that_verify_with_the_organization_key() {
    ed25519_fleet(true);
}
