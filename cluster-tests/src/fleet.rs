//! The simulated fleet: a `fleet-sim` process of servers waiting in provisioning mode, its
//! summary, and the events it records.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::Nats;
use crate::paths::bin;
use crate::process::{log_file, poll, Proc};

/// Settings of one `fleet-sim` run.
pub struct FleetOptions {
    pub servers: usize,
    pub key_type: String,
    pub token: String,
    pub extra: Vec<String>,
    pub timeout_secs: u64,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            servers: 10,
            key_type: "p256".into(),
            token: String::new(),
            extra: vec![],
            timeout_secs: 300,
        }
    }
}

/// A running `fleet-sim`.
pub struct FleetProcess {
    pub proc: Proc,
    pub summary: PathBuf,
    pub signer_pub: PathBuf,
}

impl FleetProcess {
    /// Starts the fleet and returns once every server is connected and waiting.
    /// `inherit_output` shows its progress and result on this terminal (the demo).
    pub fn start(
        dir: &Path,
        nats: &Nats,
        ca_cert: &Path,
        opts: &FleetOptions,
        inherit_output: bool,
    ) -> FleetProcess {
        let summary = dir.join("fleet-summary.json");
        let signer_pub = dir.join("jwt-signer.pem");
        let ready = dir.join("fleet.ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin("fleet-sim"));
        cmd.arg("--servers")
            .arg(opts.servers.to_string())
            .arg("--nats")
            .arg(&nats.url)
            .arg("--user")
            .arg("server")
            .env("FLEET_NATS_PASSWORD", &nats.creds.server)
            .arg("--token")
            .arg(&opts.token)
            .arg("--key-type")
            .arg(&opts.key_type)
            .arg("--write-signer-pub")
            .arg(&signer_pub)
            .arg("--expect-ca")
            .arg(ca_cert)
            .arg("--summary")
            .arg(&summary)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--timeout")
            .arg(opts.timeout_secs.to_string())
            .args(&opts.extra);
        if inherit_output {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(log_file(dir, "fleet.out"))
                .stderr(log_file(dir, "fleet.log"));
        }
        let child = cmd.spawn().expect("start fleet-sim");
        let mut proc = Proc {
            child,
            name: "fleet-sim".into(),
        };
        let start = Instant::now();
        while !ready.exists() {
            if let Some(status) = proc.wait_timeout(Duration::from_millis(100)) {
                panic!(
                    "fleet-sim exited before it was ready ({status}); see {}",
                    dir.join("fleet.log").display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "fleet-sim not ready after 300 s"
            );
        }
        FleetProcess {
            proc,
            summary,
            signer_pub,
        }
    }

    /// Waits for the summary of a fleet that keeps running (`--stay`) and returns it.
    pub fn wait_summary(&mut self, timeout: Duration) -> serde_json::Value {
        let summary = poll(timeout, Duration::from_millis(200), || {
            if let Some(v) = std::fs::read_to_string(&self.summary)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                return Some(v);
            }
            assert!(self.proc.is_running(), "fleet-sim exited");
            None
        });
        summary.unwrap_or_else(|| panic!("no fleet summary within {timeout:?}"))
    }

    /// Waits for the fleet to finish and returns its summary.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        let status = self.proc.wait_timeout(timeout);
        assert!(
            status.is_some(),
            "fleet-sim did not finish within {timeout:?}"
        );
        let text = std::fs::read_to_string(&self.summary).expect("fleet summary");
        serde_json::from_str(&text).expect("fleet summary is JSON")
    }
}

/// (identity, event, serial) lines a fleet wrote with `--events`.
pub fn fleet_events(path: &Path) -> Vec<(String, String, Option<String>)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["identity"].as_str().unwrap_or_default().to_string(),
                v["event"].as_str().unwrap_or_default().to_string(),
                v["serial"].as_str().map(String::from),
            )
        })
        .collect()
}
