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
//!
//! `config` is what a fleet is made of, and `summary` follows a run to its [`Summary`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::faults::Fault;
use crate::keys::{KeySource, KeyType};
use crate::server::{Counters, Report, ServerSpec, SimServer};
use crate::signer::JwtSigner;

mod config;
mod summary;
pub use config::{jwt_secure, FleetConfig};
pub use summary::Summary;

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
}
