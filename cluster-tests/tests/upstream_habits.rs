//! What an operator coming from upstream choria-provisioner writes and expects: its helm
//! chart's keys and duration units, `logfile: /dev/stdout` under a journal, `run --pid`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::{bin, init_ca, Nats, ProvisionerOptions, WrittenConfig};

fn config_check(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin("provisioner"))
        .args(["config", "check", "--no-files"])
        .arg(file)
        .output()
        .expect("run provisioner config check");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn an_upstream_helm_chart_configuration_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("choria-provisioner.yaml");
    // the keys and spellings of upstream's helm chart and docs
    std::fs::write(
        &file,
        "helper: /etc/choria-provisioner/helper.rb\n\
         broker_provisioning_password: s3cret\n\
         nats: {servers: [nats://broker.example.net:4222]}\n\
         logfile: /dev/stdout\n\
         loglevel: info\n\
         leader_election: true\n\
         leader_election_name: choria-provisioner\n\
         interval: 1m\n\
         server_jwt_validity: 1Y\n\
         site: lon\n\
         monitor_port: 8080\n\
         data_dir: /var/lib/choria-provisioner\n\
         ca: {cert: /etc/ca.pem, key: /etc/ca.key, validity: 6M}\n",
    )
    .expect("write");
    let (code, out) = config_check(&file);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("leader_election_name is ignored"), "{out}");
    // a unit that is not one is still refused, by name
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace("validity: 6M", "validity: 6Q")).expect("write");
    let (code, out) = config_check(&file);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("ca.validity"), "{out}");
}

/// A member's configuration (memory ledger, `extra_yaml` added) against a broker of its own,
/// for a run that no fleet comes to.
fn fleetless_config(d: &std::path::Path, extra_yaml: &str) -> (Nats, WrittenConfig) {
    let nats = Nats::start(d);
    let ca = init_ca(d);
    let opts = ProvisionerOptions {
        memory_ledger: true,
        extra_yaml: extra_yaml.into(),
        ..Default::default()
    };
    // no fleet comes: any ed25519 key will do as the provisioning JWT signer's
    let (issuer, _) = node::orgissuer::init_issuer(&d.join("signer")).expect("a key");
    let signer_pub = d.join("jwt-signer.pem");
    std::fs::write(&signer_pub, issuer.public_pem().expect("pem")).expect("write the signer key");
    let written = WrittenConfig::write(d, &nats, &ca, &signer_pub, &opts);
    (nats, written)
}

/// `provisioner run --pid PID_FILE` on `written`, stdout to `stdout`, stderr kept.
fn run_with_pid(
    written: &WrittenConfig,
    pid_file: &std::path::Path,
    stdout: Stdio,
) -> std::process::Child {
    Command::new(bin("provisioner"))
        .arg("run")
        .arg("--config")
        .arg(&written.config)
        .arg("--pid")
        .arg(pid_file)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start provisioner")
}

/// Waits (30 s at most) for a signalled provisioner to end: its status and stderr.
fn stopped(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    (status, stderr)
}

/// A supervisor may stop the service as soon as it is up (the pid file is there): that is a
/// clean stop, not death by the default action of SIGTERM, even while it is still starting.
#[test]
fn a_sigterm_as_soon_as_the_pid_file_is_there_is_a_clean_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_nats, written) = fleetless_config(d, "");
    let pid_file = d.join("choria-provisioner.pid");
    let mut child = run_with_pid(&written, &pid_file, Stdio::null());
    let start = Instant::now();
    // polled without a pause and signalled directly, so the signal lands while it starts
    while !pid_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no pid file after 30 s"
        );
        std::hint::spin_loop();
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) with the pid of our own child and a signal number; no memory is shared
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "kill -TERM");
    let (status, stderr) = stopped(&mut child);
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!pid_file.exists(), "the pid file outlived the process");
}

/// Under systemd stdout is a socket to the journal, which cannot be opened by its path: the
/// provisioner must write to the stream it was given.
#[test]
fn run_logs_to_a_stdout_socket_and_keeps_its_pid_file_while_it_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_nats, written) = fleetless_config(
        d,
        "\nlogfile: /dev/stdout\nleader_election_name: choria-provisioner\n",
    );
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let pid_file = d.join("choria-provisioner.pid");
    let mut child = run_with_pid(&written, &pid_file, Stdio::from(OwnedFd::from(theirs)));

    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut lines = BufReader::new(ours.try_clone().expect("clone")).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let warned = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("leader_election_name is ignored") => break true,
            Some(Ok(line)) => seen.push(line),
            _ => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    if !warned {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!(
            "no warning on the stdout socket; it had {seen:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let held = std::fs::read_to_string(&pid_file).expect("pid file while running");
    assert_eq!(held.trim(), child.id().to_string());

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let (status, stderr) = stopped(&mut child);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{status:?}: {stderr} {rest:?}");
    assert!(!pid_file.exists(), "the pid file outlived the process");
    // the shutdown was logged to the same stream
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

#[test]
fn no_subcommand_prints_help_and_exits_2() {
    let out = Command::new(bin("provisioner"))
        .output()
        .expect("run provisioner");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage: provisioner <COMMAND>"), "{err}");
    assert!(err.contains("run "), "{err}");
}

/// The pages in deploy/man (which the package installs) are what this build's `provisioner man`
/// writes: a changed option shows up here until they are made again.
#[test]
fn the_packaged_man_pages_are_the_binarys_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin("provisioner"))
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run provisioner man");
    assert!(out.status.success(), "{out:?}");
    let read = |d: &std::path::Path| -> std::collections::BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "1"))
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().to_string();
                (name, std::fs::read(&p).expect("read page"))
            })
            .collect()
    };
    let made = read(dir.path());
    let committed = read(&cluster_tests::repo_root().join("deploy/man"));
    assert!(made.contains_key("provisioner-run.1"), "{:?}", made.keys());
    assert_eq!(
        made.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "run: provisioner man --dir deploy/man"
    );
    for (name, page) in &made {
        assert!(
            committed.get(name) == Some(page),
            "{name} differs; run: provisioner man --dir deploy/man"
        );
    }
}
