//! A fleet of simulated servers: starts them, follows what happens to each, and sums it up.
//!
//! A fleet either waits in full when the provisioner starts (timing starts at the first
//! provisioning request any server receives, so provisioner start-up is not counted), or
//! arrives at a fixed rate (timing starts at the first arrival, and each server's latency
//! counts from its own startup event).
//!
//! A server is done, for timing, when it accepts `restart` into a configuration with
//! provisioning off: the provisioner's work is over then. Its restart delay (2 s or more,
//! as upstream's agent) is the server's own and is reported apart (`ready_*`); the run ends
//! when the last healthy server has restarted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::faults::{Fault, FaultShares};
use crate::keys::{KeySource, KeyType};
use crate::server::{Counters, Report, ServerSpec, SimServer};
use crate::signer::JwtSigner;

pub struct FleetConfig {
    pub servers: usize,
    pub nats_url: String,
    pub user: String,
    pub password: String,
    /// Provisioning token servers are built with ("" for none).
    pub token: String,
    pub key_type: KeyType,
    pub key_pool: usize,
    pub faults: FaultShares,
    /// Identities are `<prefix>-<index>.<domain>`.
    pub prefix: String,
    pub domain: String,
    pub version: String,
    /// Connections opened at once while starting.
    pub connect_concurrency: usize,
    /// When set, servers accept only this CA (PEM) in `configure`.
    pub expect_ca: Option<String>,
    /// Servers keep running after provisioning, answering in their main collective.
    pub stay: bool,
    /// JSON lines of what happens to each server (provisioned, reprovisioning).
    pub events: Option<std::path::PathBuf>,
    /// Credentials provisioned servers use on the broker (user, password); `None` keeps the
    /// provisioning connection.
    pub production: Option<(String, String)>,
    /// Share of servers (the first ones) that fall back to provisioning mode on their own
    /// `fall_back_after` after their first provisioning; needs `stay`.
    pub fall_back: f64,
    pub fall_back_after: Duration,
    /// Organization Issuer public key servers check server JWTs against.
    pub expect_issuer: Option<[u8; 32]>,
    /// Servers speak protocol v2 (their provisioning JWT says `v2`), as in Organization
    /// Issuer networks.
    pub protocol_v2: bool,
    /// Share of servers that may update their version while provisioning.
    pub upgradable: f64,
    /// The release repository upgradable servers can update from.
    pub upgrade_repository: Option<String>,
    /// Servers arrive (connect, subscribe, announce) at this many per second instead of
    /// all waiting from the start.
    pub arrival_rate: Option<f64>,
    /// Arrivals begin once this file exists (the harness writes it when the provisioners
    /// are ready), so no server arrives before anyone listens.
    pub arrive_after: Option<std::path::PathBuf>,
    /// The broker's CA: provisioning JWTs say `chs: true`, and servers whose JWT says so
    /// connect over TLS checked against it.
    pub nats_ca: Option<std::path::PathBuf>,
}

/// The `chs` claim of a provisioning JWT: whether the server provisions over TLS. Read as a
/// server reads its own token, without checking the signature.
pub fn jwt_secure(jwt: &str) -> bool {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c["chs"].as_bool())
        .unwrap_or(false)
}

impl FleetConfig {
    /// The protocol the servers speak.
    pub fn protocol(&self) -> proto::wire::Version {
        if self.protocol_v2 {
            proto::wire::Version::V2
        } else {
            proto::wire::Version::V1
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            servers: 10,
            nats_url: "nats://127.0.0.1:4222".into(),
            user: "server".into(),
            password: String::new(),
            token: String::new(),
            key_type: KeyType::P256,
            key_pool: 0,
            faults: FaultShares::default(),
            prefix: "sim".into(),
            domain: "example.net".into(),
            version: "0.29.4".into(),
            connect_concurrency: 32,
            expect_ca: None,
            stay: false,
            events: None,
            production: None,
            fall_back: 0.0,
            fall_back_after: Duration::from_secs(10),
            expect_issuer: None,
            protocol_v2: false,
            upgradable: 0.0,
            upgrade_repository: None,
            arrival_rate: None,
            nats_ca: None,
            arrive_after: None,
        }
    }
}

/// How the run went.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub servers: usize,
    /// Servers without an injected fault.
    pub healthy: usize,
    pub faults: HashMap<String, usize>,
    /// Healthy servers that restarted out of provisioning mode.
    pub provisioned: usize,
    /// ... of which verified their certificate against the CA and their key.
    pub verified: usize,
    /// Faulty servers that got provisioned anyway (must be 0).
    pub faulty_provisioned: usize,
    /// Servers configured more than once before their restart (a provisioner redoing an
    /// unfinished flow, e.g. after it was killed between configure and restart).
    pub reconfigured: usize,
    /// Servers that restarted out of provisioning mode more than once (provisioned twice).
    pub provisioned_twice: usize,
    /// Serials delivered to more than one server.
    pub duplicate_serials: usize,
    pub shutdowns: usize,
    pub seconds: f64,
    pub rate_per_minute: f64,
    pub latency_p50_ms: u64,
    pub latency_p90_ms: u64,
    pub latency_p95_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
    /// From the same start to the server back up out of provisioning mode (its restart
    /// delay included).
    pub ready_p50_ms: u64,
    pub ready_p99_ms: u64,
    /// Wall-clock time (Unix ms) timing started at.
    pub start_unix_ms: u64,
    /// When each server was done, in ms since the start, sorted (the run's timeline).
    pub timeline_ms: Vec<u64>,
    /// Servers arrived at this rate per second (`None`: all waited from the start).
    pub arrival_rate: Option<f64>,
    pub key_type: KeyType,
    pub key_pool: usize,
    pub requests: u64,
    pub bad_requests: u64,
    pub expired_requests: u64,
    pub ddl_violations: u64,
    pub lock_conflicts: u64,
    pub bad_tokens: u64,
    pub configure_refused: u64,
    /// Delivered certificates that were CA certificates (refused): must stay 0.
    pub ca_certificates: u64,
    /// Requests in the protocol version the servers do not speak.
    pub wrong_protocol: u64,
    /// v2 requests whose caller JWT or signature did not verify.
    pub bad_signatures: u64,
    /// Servers that updated their version while provisioning, and the versions they got.
    pub upgraded: usize,
    pub upgraded_to: Vec<String>,
    /// Configurations that came with policies, which the servers stored.
    pub policies_stored: u64,
    /// Private keys delivered encrypted, decrypted and matching the certificate.
    pub keys_delivered: u64,
    /// The protocol the servers speak.
    pub protocol: &'static str,
    pub timed_out: bool,
    /// The simulator's own CPU and peak memory (filled in by the binary at the end).
    pub sim_usage: Option<crate::usage::Usage>,
}

impl Summary {
    /// The demo's closing line.
    pub fn line(&self) -> String {
        format!(
            "provisioned {}/{} servers in {:.1} s ({:.0}/min)",
            self.provisioned, self.servers, self.seconds, self.rate_per_minute
        )
    }
}

pub struct Fleet {
    /// Servers connected but not yet started, in arrival order (arrival-rate mode).
    pending: Vec<(ServerSpec, async_nats::Client)>,
    arrival_rate: Option<f64>,
    arrive_after: Option<std::path::PathBuf>,
    /// Handles of servers started by the arrival task.
    arrived: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    counters: Arc<Counters>,
    reports: mpsc::UnboundedReceiver<Report>,
    faults: Vec<Option<Fault>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    key_type: KeyType,
    key_pool: usize,
    protocol: proto::wire::Version,
    identities: Vec<String>,
    events: Option<std::io::BufWriter<std::fs::File>>,
    stay: bool,
    /// Kept for servers that arrive later.
    tx: mpsc::UnboundedSender<Report>,
}

/// Progress while waiting: (provisioned, healthy, seconds since the first request).
pub type Progress = (usize, usize, f64);

impl Fleet {
    /// Connects and starts every server; returns once all are subscribed and announced.
    pub async fn start(cfg: &FleetConfig, signer: &JwtSigner) -> Result<Fleet, String> {
        let keys = KeySource::new(cfg.key_type, cfg.key_pool)?;
        let secure = cfg.nats_ca.is_some();
        let good_jwt =
            signer.provisioning_jwt(&cfg.token, &cfg.nats_url, cfg.protocol_v2, secure)?;
        let tls_ca = cfg.nats_ca.clone().filter(|_| jwt_secure(&good_jwt));
        let faults: Vec<Option<Fault>> = (0..cfg.servers)
            .map(|i| cfg.faults.assign(i, cfg.servers))
            .collect();
        let bad_jwt = if faults.contains(&Some(Fault::BadJwt)) {
            Some(JwtSigner::generate()?.provisioning_jwt(
                &cfg.token,
                &cfg.nats_url,
                cfg.protocol_v2,
                secure,
            )?)
        } else {
            None
        };
        let expect_ca = cfg.expect_ca.clone().map(Arc::new);
        let expect_issuer = cfg.expect_issuer.map(Arc::new);
        let upgrade_repository = cfg.upgrade_repository.clone().map(Arc::new);
        let production = cfg.production.as_ref().map(|(user, password)| {
            Arc::new(crate::server::Production {
                url: cfg.nats_url.clone(),
                user: user.clone(),
                password: password.clone(),
                tls_ca: cfg.nats_ca.clone(),
            })
        });
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel();

        let specs: Vec<ServerSpec> = (0..cfg.servers)
            .map(|index| ServerSpec {
                index,
                identity: format!("{}-{:05}.{}", cfg.prefix, index, cfg.domain),
                token: cfg.token.clone(),
                jwt: match (&faults[index], &bad_jwt) {
                    (Some(Fault::BadJwt), Some(bad)) => bad.clone(),
                    _ => good_jwt.clone(),
                },
                keys: keys.clone(),
                fault: faults[index],
                version: cfg.version.clone(),
                expect_ca: expect_ca.clone(),
                stay: cfg.stay,
                production: production.clone(),
                fall_back_after: ((index as f64) < cfg.fall_back * cfg.servers as f64)
                    .then_some(cfg.fall_back_after),
                expect_issuer: expect_issuer.clone(),
                protocol: cfg.protocol(),
                upgradable: (index as f64) < cfg.upgradable * cfg.servers as f64,
                upgrade_repository: upgrade_repository.clone(),
            })
            .collect();
        let identities: Vec<String> = specs.iter().map(|s| s.identity.clone()).collect();
        let events = match &cfg.events {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
            )),
            None => None,
        };

        let connected: Vec<Result<(ServerSpec, async_nats::Client), String>> =
            futures::stream::iter(specs.into_iter().map(|spec| {
                let mut opts = async_nats::ConnectOptions::with_user_and_password(
                    cfg.user.clone(),
                    cfg.password.clone(),
                )
                .name(spec.identity.clone());
                if let Some(ca) = &tls_ca {
                    opts = opts.require_tls(true).add_root_certificates(ca.clone());
                }
                let url = cfg.nats_url.clone();
                async move {
                    let nats = opts
                        .connect(url)
                        .await
                        .map_err(|e| format!("{}: connect: {e}", spec.identity))?;
                    Ok((spec, nats))
                }
            }))
            .buffered(cfg.connect_concurrency.max(1))
            .collect()
            .await;
        let connected = connected.into_iter().collect::<Result<Vec<_>, _>>()?;
        let (tasks, pending) = if cfg.arrival_rate.is_some() {
            (Vec::new(), connected)
        } else {
            let started: Vec<Result<tokio::task::JoinHandle<()>, String>> =
                futures::stream::iter(connected.into_iter().map(|(spec, nats)| {
                    SimServer::start(spec, nats, counters.clone(), tx.clone())
                }))
                .buffer_unordered(cfg.connect_concurrency.max(1))
                .collect()
                .await;
            (
                started.into_iter().collect::<Result<Vec<_>, _>>()?,
                Vec::new(),
            )
        };
        Ok(Fleet {
            pending,
            arrival_rate: cfg.arrival_rate,
            arrive_after: cfg.arrive_after.clone(),
            arrived: Arc::default(),
            tx,
            counters,
            reports: rx,
            faults,
            tasks,
            key_type: cfg.key_type,
            key_pool: cfg.key_pool,
            protocol: cfg.protocol(),
            identities,
            events,
            stay: cfg.stay,
        })
    }

    /// Starts the pending servers at the arrival rate, in the background.
    fn start_arrivals(&mut self) {
        let (Some(rate), false) = (self.arrival_rate, self.pending.is_empty()) else {
            return;
        };
        let pending = std::mem::take(&mut self.pending);
        let (counters, tx, arrived) =
            (self.counters.clone(), self.tx.clone(), self.arrived.clone());
        let go = self.arrive_after.clone();
        tokio::spawn(async move {
            if let Some(go) = go {
                while !go.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let t0 = tokio::time::Instant::now();
            for (i, (spec, nats)) in pending.into_iter().enumerate() {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate.max(0.001));
                tokio::time::sleep_until(at).await;
                let identity = spec.identity.clone();
                match SimServer::start(spec, nats, counters.clone(), tx.clone()).await {
                    Ok(h) => {
                        if let Ok(mut a) = arrived.lock() {
                            a.push(h);
                        }
                    }
                    Err(e) => tracing::warn!(%identity, error = %e, "server failed to start"),
                }
            }
        });
    }

    /// Appends one event line for server `index` to the events file, if any.
    fn event(&mut self, index: usize, event: &str, serial: Option<&str>) {
        self.event_with(index, event, "serial", serial);
    }

    /// An event line that names the action it is about.
    fn action_event(&mut self, index: usize, event: &str, action: &str) {
        self.event_with(index, event, "action", Some(action));
    }

    fn event_with(&mut self, index: usize, event: &str, key: &str, value: Option<&str>) {
        use std::io::Write;
        let Some(out) = &mut self.events else { return };
        let mut line = serde_json::json!({
            "event": event,
            "identity": self.identities.get(index),
            "at_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        });
        line[key] = serde_json::json!(value);
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// After [`Fleet::wait`], for a fleet that stays: records what happens to servers (they
    /// may be reprovisioned and provisioned again) until the process ends.
    pub async fn watch(mut self) {
        while let Some(r) = self.reports.recv().await {
            match r {
                Report::Provisioned { index, serial, .. } => {
                    self.event(index, "provisioned", serial.as_deref())
                }
                Report::Reprovisioning { index } => self.event(index, "reprovisioning", None),
                Report::FellBack { index } => self.event(index, "fell_back", None),
                Report::Shutdown { index } => self.event(index, "shutdown", None),
                Report::Upgraded { index, .. } => self.event(index, "upgraded", None),
                Report::Delivered { index, serial } => {
                    self.event(index, "delivered", Some(&serial))
                }
                Report::Repeated { index, action } => self.action_event(index, "repeated", &action),
                Report::Arrived { .. }
                | Report::FirstRequest { .. }
                | Report::Configured { .. }
                | Report::Reconfigured { .. } => {}
            }
        }
    }

    /// Waits until every healthy server is provisioned (or shut down), or `timeout` after
    /// the first provisioning request, calling `progress` about once a second.
    pub async fn wait(&mut self, timeout: Duration, mut progress: impl FnMut(Progress)) -> Summary {
        let healthy = self.faults.iter().filter(|f| f.is_none()).count();
        let arrivals = self.arrival_rate.is_some();
        self.start_arrivals();
        let mut first: Option<Instant> = None;
        let mut last_done: Option<Instant> = None;
        let mut started_at: HashMap<usize, Instant> = HashMap::new();
        let mut configured_at: HashMap<usize, Instant> = HashMap::new();
        let mut latencies = Vec::new();
        let mut ready = Vec::new();
        let (mut provisioned, mut verified, mut faulty_provisioned) = (0, 0, 0);
        let (mut reconfigured, mut shutdowns) = (HashSet::new(), 0);
        let (mut restarted, mut provisioned_twice) = (HashSet::new(), HashSet::new());
        // servers provisioned at least once: the run waits for every healthy one
        let mut done_once: HashSet<usize> = HashSet::new();
        let mut upgraded: Vec<(usize, String)> = Vec::new();
        let mut serials: HashMap<String, usize> = HashMap::new();
        let wall = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut timed_out = false;

        while done_once.len() + shutdowns < healthy {
            let deadline = first.unwrap_or(wall) + timeout;
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            tokio::select! {
                r = self.reports.recv() => {
                    let Some(r) = r else { break };
                    match r {
                        Report::Arrived { index, at } if arrivals => {
                            first.get_or_insert(at);
                            started_at.insert(index, at);
                        }
                        Report::FirstRequest { index, at } if !arrivals => {
                            first.get_or_insert(at);
                            started_at.entry(index).or_insert(at);
                            self.event(index, "first_request", None);
                        }
                        Report::Repeated { index, action } => {
                            self.action_event(index, "repeated", &action);
                        }
                        Report::Arrived { .. } | Report::FirstRequest { .. } => {}
                        Report::Delivered { index, serial } => {
                            self.event(index, "delivered", Some(&serial));
                        }
                        Report::Configured { index, at } => {
                            if self.faults[index].is_none() && !configured_at.contains_key(&index) {
                                configured_at.insert(index, at);
                                self.event(index, "configured", None);
                                if let Some(t) = started_at.get(&index) {
                                    latencies.push(at.duration_since(*t).as_millis() as u64);
                                }
                            }
                        }
                        Report::Provisioned { index, at, verified: v, serial } => {
                            if self.faults[index].is_some() {
                                faulty_provisioned += 1;
                                continue;
                            }
                            if !restarted.insert(index) {
                                // again: a fallen-back or reprovisioned server, or a duplicate
                                self.event(index, "provisioned", serial.as_deref());
                                provisioned_twice.insert(index);
                                continue;
                            }
                            provisioned += 1;
                            if v {
                                verified += 1;
                            }
                            self.event(index, "provisioned", serial.as_deref());
                            if let Some(s) = serial {
                                *serials.entry(s).or_default() += 1;
                            }
                            // timed from its first arrival: only its first provisioning
                            if let (true, Some(t)) = (done_once.insert(index), started_at.get(&index)) {
                                ready.push(at.duration_since(*t).as_millis() as u64);
                            }
                            last_done = Some(at);
                        }
                        Report::Reconfigured { index } => {
                            reconfigured.insert(index);
                        }
                        Report::Shutdown { index } => {
                            self.event(index, "shutdown", None);
                            shutdowns += 1;
                        }
                        Report::Reprovisioning { index } => {
                            // asked to provision again: its next restart is no duplicate
                            restarted.remove(&index);
                            self.event(index, "reprovisioning", None);
                        }
                        Report::Upgraded { index, version } => {
                            self.event(index, "upgraded", None);
                            upgraded.push((index, version));
                        }
                        Report::FellBack { index } => {
                            restarted.remove(&index);
                            self.event(index, "fell_back", None);
                        }
                    }
                }
                _ = tick.tick() => {
                    let since = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
                    progress((provisioned, healthy, since));
                }
            }
        }
        let _ = last_done;
        let mut timeline: Vec<u64> = match first {
            Some(f) => configured_at
                .values()
                .map(|t| t.saturating_duration_since(f).as_millis() as u64)
                .collect(),
            None => Vec::new(),
        };
        timeline.sort_unstable();
        let done = timeline.len();
        let seconds = timeline.last().map(|ms| *ms as f64 / 1000.0).unwrap_or(0.0);
        progress((
            provisioned,
            healthy,
            first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0),
        ));
        latencies.sort_unstable();
        ready.sort_unstable();
        let pct = |p: f64| percentile(&latencies, p);
        let mut fault_counts = HashMap::new();
        for f in self.faults.iter().flatten() {
            let name = serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *fault_counts.entry(name).or_insert(0) += 1;
        }
        let c = &self.counters;
        let summary = Summary {
            servers: self.faults.len(),
            healthy,
            faults: fault_counts,
            provisioned,
            verified,
            faulty_provisioned,
            reconfigured: reconfigured.len(),
            provisioned_twice: provisioned_twice.len(),
            duplicate_serials: serials.values().filter(|n| **n > 1).count(),
            shutdowns,
            seconds,
            rate_per_minute: if seconds > 0.0 {
                done as f64 / seconds * 60.0
            } else {
                0.0
            },
            latency_p50_ms: pct(0.5),
            latency_p90_ms: pct(0.9),
            latency_p95_ms: pct(0.95),
            latency_p99_ms: pct(0.99),
            latency_max_ms: latencies.last().copied().unwrap_or(0),
            ready_p50_ms: percentile(&ready, 0.5),
            ready_p99_ms: percentile(&ready, 0.99),
            start_unix_ms: first.map(unix_ms).unwrap_or(0),
            timeline_ms: timeline,
            arrival_rate: self.arrival_rate,
            key_type: self.key_type,
            key_pool: self.key_pool,
            requests: c.requests.load(Ordering::Relaxed),
            bad_requests: c.bad_requests.load(Ordering::Relaxed),
            expired_requests: c.expired.load(Ordering::Relaxed),
            ddl_violations: c.ddl_violations.load(Ordering::Relaxed),
            lock_conflicts: c.lock_conflicts.load(Ordering::Relaxed),
            bad_tokens: c.bad_tokens.load(Ordering::Relaxed),
            configure_refused: c.configure_refused.load(Ordering::Relaxed),
            ca_certificates: c.ca_certificates.load(Ordering::Relaxed),
            wrong_protocol: c.wrong_protocol.load(Ordering::Relaxed),
            bad_signatures: c.bad_signatures.load(Ordering::Relaxed),
            upgraded: upgraded.len(),
            upgraded_to: {
                let mut v: Vec<String> = upgraded.into_iter().map(|(_, v)| v).collect();
                v.sort();
                v.dedup();
                v
            },
            policies_stored: c.policies_stored.load(Ordering::Relaxed),
            keys_delivered: c.keys_delivered.load(Ordering::Relaxed),
            protocol: self.protocol.name(),
            timed_out,
            sim_usage: None,
        };
        if !self.stay {
            for t in &self.tasks {
                t.abort();
            }
            if let Ok(a) = self.arrived.lock() {
                a.iter().for_each(|t| t.abort());
            }
        }
        summary
    }
}

/// The `p` quantile of sorted values (nearest rank), 0 for none.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Wall-clock milliseconds of a monotonic instant (for lining up with other processes).
fn unix_ms(at: Instant) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(at.elapsed()).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::jwt_secure;
    use crate::signer::JwtSigner;

    #[test]
    fn the_chs_claim_is_read_and_garbage_means_plaintext() {
        let signer = JwtSigner::from_ed25519_seed(&[5u8; 32]).unwrap();
        let secure = signer
            .provisioning_jwt("t", "nats://b:4222", false, true)
            .unwrap();
        let plain = signer
            .provisioning_jwt("t", "nats://b:4222", false, false)
            .unwrap();
        assert!(jwt_secure(&secure));
        assert!(!jwt_secure(&plain));
        for garbage in ["", "a", "a.%%%.c", "a.e30.c", "a.bnVsbA.c"] {
            assert!(!jwt_secure(garbage), "{garbage}");
        }
    }
}
