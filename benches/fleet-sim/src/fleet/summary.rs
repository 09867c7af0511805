//! What a run comes to: [`Fleet::wait`] follows the servers' reports until every healthy
//! one is done (or the deadline), writes their event lines, and sums it all up into a
//! [`Summary`] with latency percentiles, the run's timeline and the fleet's counters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Fleet, Progress};
use crate::keys::KeyType;
use crate::server::Report;

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
impl Fleet {
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
                                // apart from the healthy ones, but in the events: the
                                // checker follows every server in and out of provisioning
                                faulty_provisioned += 1;
                                self.event(index, "provisioned", serial.as_deref());
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
