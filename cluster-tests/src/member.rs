//! Provisioner processes under test: one `provisioner run` from its written configuration
//! (optionally on a tmpfs data directory, in a control group), and a whole local cluster of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::broker::Nats;
use crate::config::{ClusterOptions, ProvisionerOptions, WrittenConfig};
use crate::paths::bin;
use crate::pki::cluster_pki;
use crate::process::{append_log, log_file, poll, Proc};
use crate::scrape::{http_get, metric_sum, metric_value};

/// A running `provisioner run`.
pub struct ProvisionerProcess {
    pub monitor_port: u16,
    pub proc: Proc,
    pub config: PathBuf,
    /// Its data directory (for a member, or a provisioner alone with a ledger on disk).
    pub data_dir: PathBuf,
    data_tmpfs: Option<String>,
    /// The `cgroup.procs` file it joins before it runs, at every start.
    cgroup: Option<PathBuf>,
}

impl ProvisionerProcess {
    pub fn start(
        dir: &Path,
        nats: &Nats,
        ca: &(PathBuf, PathBuf),
        jwt_signer_pub: &Path,
        opts: &ProvisionerOptions,
    ) -> ProvisionerProcess {
        let WrittenConfig {
            config,
            data_dir,
            monitor_port,
        } = WrittenConfig::write(dir, nats, ca, jwt_signer_pub, opts);
        if opts.data_tmpfs.is_some() {
            std::fs::create_dir_all(&data_dir).expect("data dir");
        }
        let cgroup = opts.cgroups.first().cloned();
        let child = run_command(
            &config,
            &data_dir,
            opts.data_tmpfs.as_deref(),
            cgroup.as_deref(),
        )
        .stdout(log_file(dir, &format!("{}.out", opts.identity)))
        .stderr(log_file(dir, &format!("{}.log", opts.identity)))
        .spawn()
        .expect("start provisioner");
        let proc = Proc {
            child,
            name: opts.identity.clone(),
        };
        ProvisionerProcess {
            monitor_port,
            proc,
            config,
            data_dir,
            data_tmpfs: opts.data_tmpfs.clone(),
            cgroup,
        }
    }

    /// Its log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    /// Waits until the provisioner listens for events and has run its first discovery (or, in
    /// a cluster, left it to the leader's, which covers it).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let ready = poll(timeout, Duration::from_millis(100), || {
            if !self.proc.is_running() {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "provisioner exited during start-up; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let text = self.metrics();
            let rounds = metric_sum(&text, "choria_provisioner_discover_cycles", "")
                + metric_sum(&text, "choria_provisioner_discover_deferred", "");
            (rounds >= 1.0).then_some(())
        });
        if ready.is_none() {
            panic!("provisioner not ready after {timeout:?}");
        }
    }

    /// The `/status` document, or `Null` when it cannot be read.
    pub fn status(&self) -> serde_json::Value {
        http_get(self.monitor_port, "/status")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the (killed) member again with the same configuration and data directory, as
    /// systemd's restart would; its log continues in the same file.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.proc.child = run_command(
            &self.config,
            &self.data_dir,
            self.data_tmpfs.as_deref(),
            self.cgroup.as_deref(),
        )
        .stdout(append_log(&self.config.with_extension("out")))
        .stderr(append_log(&self.config.with_extension("log")))
        .spawn()?;
        Ok(())
    }

    /// The Prometheus text from `/metrics`, or "" when it cannot be read.
    pub fn metrics(&self) -> String {
        http_get(self.monitor_port, "/metrics").unwrap_or_default()
    }

    /// The Prometheus text from `/metrics` of a member that must answer: tries for 10 s, then
    /// fails the test, so a scrape that failed cannot read as counters that stayed at zero.
    pub fn scrape(&self) -> String {
        poll(Duration::from_secs(10), Duration::from_millis(200), || {
            http_get(self.monitor_port, "/metrics")
        })
        .unwrap_or_else(|| panic!("/metrics on port {} did not answer", self.monitor_port))
    }

    /// The value of one metric series (exact name with labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }
}

/// `provisioner run --config <config>`, with `data_dir` a fresh tmpfs of `tmpfs` size in a
/// mount namespace of its own when asked (the process keeps its pid: `unshare` and `sh` exec),
/// in the control group whose `cgroup.procs` file is `cgroup` from before it runs.
fn run_command(
    config: &Path,
    data_dir: &Path,
    tmpfs: Option<&str>,
    cgroup: Option<&Path>,
) -> Command {
    let command = match tmpfs {
        None => {
            let mut c = Command::new(bin("provisioner"));
            c.arg("run").arg("--config").arg(config);
            c
        }
        Some(size) => {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount -t tmpfs -o size={size},mode=0700 tmpfs \"$1\" && exec \"$2\" run --config \"$3\""
                ))
                .arg("sh")
                .arg(data_dir)
                .arg(bin("provisioner"))
                .arg(config);
            c
        }
    };
    match cgroup {
        Some(procs) => in_cgroup(&command, procs),
        None => command,
    }
}

/// `command`, run by a shell that first moves itself into the control group whose
/// `cgroup.procs` file is `procs` and then execs it (same pid). Moving the process in after it
/// started races its start-up: a provisioner that has already counted its CPUs keeps the
/// uncapped machine's worker threads, one that has not gets the cap's.
pub fn in_cgroup(command: &Command, procs: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(procs)
        .arg(command.get_program())
        .args(command.get_args());
    c
}

/// A local cluster of `members` provisioner processes (one without Raft when `members` is 1),
/// mutual TLS between members; each member gets `base` with its identity and cluster section.
/// `admin` is the admin CA and extra `admin` keys, to serve the admin API.
pub fn start_members(
    dir: &Path,
    nats: &Nats,
    ca: &(PathBuf, PathBuf),
    jwt_signer_pub: &Path,
    members: u64,
    base: &ProvisionerOptions,
    admin: Option<(PathBuf, String)>,
) -> Vec<ProvisionerProcess> {
    let specs = ClusterOptions::members(members);
    let tls_dir = (members > 1).then(|| cluster_pki(dir, &specs));
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let opts = ProvisionerOptions {
                identity: spec.name.clone(),
                cluster: (members > 1).then(|| ClusterOptions {
                    id: spec.id,
                    members: specs.clone(),
                    claim_lease: "30s".into(),
                    tls_dir: tls_dir.clone(),
                    admin_ca: admin.as_ref().map(|a| a.0.clone()),
                    auto_join: true,
                    admin_extra: admin.as_ref().map(|a| a.1.clone()).unwrap_or_default(),
                    cluster_extra: base.cluster_extra.clone(),
                }),
                cgroups: base.cgroups.get(i).cloned().into_iter().collect(),
                ..base.clone()
            };
            ProvisionerProcess::start(dir, nats, ca, jwt_signer_pub, &opts)
        })
        .collect()
}
