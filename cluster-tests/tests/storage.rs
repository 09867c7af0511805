//! The ledger on disk: a provisioner without a cluster keeps it across a restart, a disk that
//! fills up stops the process with a clear error (exit status 74) instead of leaving it
//! claiming with a dead log, and a data directory it cannot write is an error at start.
//! The full and read-only disks are tmpfs mounts in a mount namespace of the provisioner's
//! own (`unshare -m`), so these tests need root, as the cgroup benches do.
//! Build the binaries first: `cargo build --workspace --bins`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cluster_tests::{
    init_ca, metric_sum, FleetOptions, FleetProcess, Nats, ProvisionerOptions, ProvisionerProcess,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn records(metrics: &str, state: &str) -> f64 {
    metric_sum(
        metrics,
        "choria_provisioner_ledger_records",
        &format!("state=\"{state}\""),
    )
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_provisioner_alone_keeps_its_ledger_across_a_restart() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 12,
            timeout_secs: 60,
            ..Default::default()
        },
        false,
    );
    let mut prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions::default(),
    );
    let summary = fleet.finish(Duration::from_secs(120));
    assert_eq!(summary["provisioned"], 12, "{summary}");
    wait_for("12 enrolled", Duration::from_secs(10), || {
        records(&prov.metrics(), "enrolled") == 12.0
    });
    assert!(prov.data_dir.join("raft").is_dir());

    // a crash, then systemd's restart: the ledger is read back from data_dir
    prov.kill();
    prov.restart().unwrap();
    wait_for("the restarted provisioner", Duration::from_secs(30), || {
        records(&prov.metrics(), "enrolled") == 12.0
    });
    assert!(prov.proc.is_running(), "provisioner died");
}

/// Bytes available on the file system holding `path` (`stat -f`: statfs on the path itself,
/// which `df` is not, as it looks the mount up in its own namespace).
fn available(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(blocks), Some(size)) => blocks * size,
        _ => panic!("stat -f {}: {text}", path.display()),
    }
}

/// Writes zeros into `path` until `leave` bytes are left free on its file system.
fn fill_leaving(path: &std::path::Path, leave: u64) {
    let dir = path.parent().unwrap();
    let mut todo = available(dir).saturating_sub(leave);
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    while todo > 0 {
        let n = todo.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        todo -= n as u64;
    }
    f.sync_all().unwrap();
}

const MIB: u64 = 1024 * 1024;

/// The disk under `data_dir` fills up while servers keep arriving: the provisioner stops with
/// status 74 and says why, while RocksDB still has room to write (Debian's librocksdb is
/// built with assertions and aborts the process on a write after a failed one).
#[test]
fn a_filling_disk_stops_the_provisioner_with_status_74_and_a_clear_error() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    // servers keep arriving (3 a second) while the disk fills up
    let fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 90,
            timeout_secs: 90,
            extra: vec!["--arrival-rate".into(), "3".into()],
            ..Default::default()
        },
        false,
    );
    let mut prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions {
            data_tmpfs: Some("48m".into()),
            extra_yaml: "data_dir_min_free_mb: 16\n".into(),
            ..Default::default()
        },
    );
    let provisioned =
        |p: &ProvisionerProcess| metric_sum(&p.metrics(), "choria_provisioner_provisioned", "");
    wait_for("the first servers", Duration::from_secs(60), || {
        provisioned(&prov) >= 5.0
    });

    // the data directory as the provisioner sees it, in its own mount namespace
    let pid = prov.proc.child.id();
    let inside = std::path::PathBuf::from(format!("/proc/{pid}/root"))
        .join(prov.data_dir.strip_prefix("/").unwrap());
    fill_leaving(&inside.join("filler"), 8 * MIB);

    let status = prov
        .proc
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "still running with a full disk; provisioned {}\n{}",
                provisioned(&prov),
                prov.log()
            )
        });
    let log = prov.log();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    assert_eq!(status.code(), Some(74), "{status:?} {tail:#?}");
    assert!(
        log.contains("the ledger can no longer be written")
            && log.contains("less than data_dir_min_free_mb (16 MiB)"),
        "no clear error in the log: {tail:#?}"
    );
    drop(fleet);
}

/// A provisioner (alone) whose data directory is a tmpfs mounted with `tmpfs` options, run
/// with `yaml` added to its configuration, which must stop at start: its exit status, its
/// log and its data directory.
fn stops_at_start(tmpfs: &str, yaml: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let signer = throwaway_signer(d);
    let mut prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &signer,
        &ProvisionerOptions {
            data_tmpfs: Some(tmpfs.into()),
            extra_yaml: yaml.into(),
            ..Default::default()
        },
    );
    let status = prov
        .proc
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running:\n{}", prov.log()));
    (
        status.code(),
        prov.log(),
        prov.data_dir.display().to_string(),
    )
}

/// systemd restarts a provisioner that stopped on a full disk; while the disk is still full
/// it does not start, with the same clear reason and status.
#[test]
fn a_disk_too_full_to_start_on_is_status_74_at_start() {
    let _g = serial();
    let (code, log, _) = stops_at_start("4m", "data_dir_min_free_mb: 16\n");
    assert_eq!(code, Some(74), "{log}");
    assert!(
        log.contains("cannot start") && log.contains("less than data_dir_min_free_mb (16 MiB)"),
        "{log}"
    );
}

#[test]
fn a_data_dir_that_cannot_be_written_is_an_error_at_start() {
    let _g = serial();
    // no free-space check: it is the read-only store that stops it
    let (code, log, data_dir) = stops_at_start("1m,ro", "data_dir_min_free_mb: 0\n");
    assert!(code.is_some_and(|c| c != 0), "{code:?} {log}");
    assert!(
        log.contains("cannot start") && log.contains(&data_dir),
        "{log}"
    );
}

/// Any RSA public key will do as the JWT signer of a provisioner that stops before it
/// verifies a JWT.
fn throwaway_signer(d: &std::path::Path) -> std::path::PathBuf {
    let key = d.join("signer.key");
    let signer = d.join("signer.pub");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    std::fs::write(&key, &out.stdout).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    std::fs::write(&signer, &out.stdout).unwrap();
    signer
}
