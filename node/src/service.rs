//! Starting and stopping a provisioner: connect to the broker, load the CA and JWT key, join
//! the Raft group (when clustered), start metrics, the reply router, lifecycle listening,
//! discovery and the workers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use raft::member::{MemberConfig, RaftMember, RaftSettings};
use raft::replicated::RaftLedger;
use raft::types::Member;
use raft::{Applied, Command, EnrollState, Ledger, LedgerError, LocalLedger};
use thiserror::Error;
use tokio::sync::Notify;

use crate::admin::server::AdminContext;
use crate::ca::{Ca, CaError};
use crate::call::Agents;
use crate::config::{Cluster, Config};
use crate::enrollment::Enrollment;
use crate::helper::{ExternalHelper, UserLogic};
use crate::jwt::{JwtError, JwtVerifier};
use crate::metrics::{self, Metrics, StatusFn};
use crate::pipeline::{now_ms, Services, CLAIM_LEASE_MS};
use crate::rpc::{RpcClient, RpcError};
use crate::shard::Shard;
use crate::work::WorkQueue;
use crate::{discover, VERSION};

/// How often a member says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A member is live while its last heartbeat is younger than this.
pub(crate) const LIVE_WINDOW_MS: u64 = 7_000;
/// How often a member looks at the replicated settings (pause, rebalance).
const SETTINGS_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("cannot connect to NATS {servers:?}: {reason}")]
    Connect {
        servers: Vec<String>,
        reason: String,
    },
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    Jwt(#[from] JwtError),
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("metrics endpoint {addr}: {reason}")]
    Metrics { addr: String, reason: String },
    #[error("lifecycle subscription: {0}")]
    Events(String),
    #[error("helper: no helper program is configured and no user logic is compiled in")]
    NoHelper,
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("ledger in {dir}: {reason}")]
    Ledger { dir: String, reason: String },
    #[error("admin API: {0}")]
    Admin(#[from] crate::admin::tls::TlsError),
    #[error("{0}")]
    Issuer(#[from] crate::orgissuer::IssuerError),
    #[error("cannot start the Raft thread: {0}")]
    RaftThread(#[source] std::io::Error),
}

/// A running provisioner.
pub struct Provisioner {
    pub services: Arc<Services>,
    pub queue: Arc<WorkQueue>,
    pub member: Option<Arc<RaftMember>>,
    /// Without a cluster, the group of one that keeps the ledger on disk.
    alone: Option<Arc<RaftMember>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// A cluster member's Raft tasks run here (see [`crate::raft_runtime`]); kept last, so
    /// it stops after everything that calls into it.
    _raft_runtime: Option<crate::raft_runtime::RaftRuntime>,
}

impl Provisioner {
    /// Starts everything with the configured helper program (or `logic`, when given) and a
    /// ledger: `ledger` when given, else the Raft group's when clustered, else a local one.
    pub async fn start(
        config: Config,
        logic: Option<Arc<dyn UserLogic>>,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Provisioner, ServiceError> {
        let logic = logic.or_else(|| {
            config
                .builtin_helper
                .clone()
                .map(|b| Arc::new(b) as Arc<dyn UserLogic>)
        });
        if logic.is_none() && config.helper.is_empty() {
            return Err(ServiceError::NoHelper);
        }
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(&config.site));
        let mut tasks = Vec::new();

        let ca = match (&config.ca, config.features.pki) {
            (Some(c), true) => Some(Ca::load(&c.cert, &c.key, config.cert_validity)?),
            _ => None,
        };
        let issuer = if config.features.ed25519 {
            let token = (!config.jwt_signing_token.is_empty())
                .then(|| std::path::Path::new(&config.jwt_signing_token));
            let issuer = crate::orgissuer::OrgIssuer::load_with_chain(
                std::path::Path::new(&config.jwt_signing_key),
                token,
            )?;
            match issuer.chain() {
                Some(ci) => {
                    tracing::info!(chain_issuer = %ci.jti, key = %issuer.public_hex(), "signing server JWTs as a chain issuer")
                }
                None => {
                    tracing::info!(issuer = %issuer.public_hex(), "signing server JWTs as Organization Issuer")
                }
            }
            Some(Arc::new(issuer))
        } else {
            None
        };
        let jwt = if config.features.jwt {
            Some(JwtVerifier::from_config(&config.jwt_verify_cert)?)
        } else {
            None
        };

        if let (None, Some(dir)) = (&ledger, &config.data_dir) {
            crate::diskguard::check(dir, config.data_dir_min_free).map_err(|e| {
                ServiceError::Ledger {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
        }
        let mut alone = None;
        let mut raft_runtime = None;
        let (ledger, member): (Arc<dyn Ledger>, Option<Arc<RaftMember>>) =
            match (ledger, &config.cluster, &config.data_dir) {
                (Some(l), _, _) => (l, None),
                (None, Some(cluster), _) => {
                    // Raft's tasks on a thread of their own (see `crate::raft_runtime`)
                    let rt = crate::raft_runtime::RaftRuntime::start()
                        .map_err(ServiceError::RaftThread)?;
                    let (cfg, cl) = (config.clone(), cluster.clone());
                    let member = rt
                        .spawn(async move { join_cluster(&cfg, &cl).await })
                        .await
                        .map_err(|e| ServiceError::Cluster(format!("Raft runtime: {e}")))??;
                    raft_runtime = Some(rt);
                    (RaftLedger::new(member.clone()), Some(member))
                }
                (None, None, Some(dir)) => {
                    let m = start_alone(&config, dir).await?;
                    alone = Some(m.clone());
                    (RaftLedger::new(m), None)
                }
                // a warning of the configuration says what this costs
                (None, None, None) => (Arc::new(LocalLedger::new()), None),
            };
        let pace = crate::pace::Pace::new(config.workers);
        let ledger = crate::timed::TimedLedger::wrap(ledger, metrics.clone(), pace.clone());
        if let Some(member) = &member {
            tasks.push(tokio::spawn(watch_leader(member.clone(), metrics.clone())));
        }

        // a cluster's members all speak as the cluster, so a server's provisioning lock is not
        // tied to one member
        let sender = config
            .cluster
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| config.identity.clone());
        // Organization Issuer networks speak protocol v2, as upstream's do, and log in to the
        // broker with the same caller JWT
        let caller = match &issuer {
            Some(issuer) => {
                let signer =
                    crate::caller::CallerSigner::new(issuer.clone(), &format!("choria={sender}"))?;
                tracing::info!(
                    caller = signer.callerid(),
                    "speaking protocol v2 with a signed caller JWT"
                );
                Some(Arc::new(signer))
            }
            None => None,
        };
        let make_opts = {
            let config = config.clone();
            let caller = caller.clone();
            move || crate::broker::connect_options(&config, caller.clone())
        };
        // the client retries on its own but only says "IO error"; one plain attempt first
        // says why the broker cannot be used (refused, TLS, credentials)
        tokio::spawn(probe_broker(make_opts(), config.nats.servers.clone()));
        let nats = make_opts()
            .retry_on_initial_connect()
            .event_callback(|e| async move {
                match e {
                    async_nats::Event::Disconnected => tracing::warn!("broker connection lost"),
                    async_nats::Event::Connected => tracing::info!("broker connected"),
                    async_nats::Event::ClientError(e) => {
                        tracing::warn!(error = %e, "broker connection failed")
                    }
                    other => tracing::info!(event = %other, "broker"),
                }
            })
            .connect(config.nats.servers.clone())
            .await
            .map_err(|e| ServiceError::Connect {
                servers: config.nats.servers.clone(),
                reason: e.to_string(),
            })?;

        let rpc = RpcClient::start(
            nats.clone(),
            &sender,
            &config.identity,
            proto::subject::PROVISIONING_COLLECTIVE,
            metrics.clone(),
        )
        .await?;
        let rpc = match &caller {
            Some(signer) => rpc.with_protocol(crate::rpc::Protocol::V2(signer.clone())),
            None => rpc,
        };

        let logic = logic.unwrap_or_else(|| {
            Arc::new(ExternalHelper::new(
                config.helper.clone(),
                config.helper_timeout,
                config.helper_max_output,
            ))
        });
        let enrollment = match (issuer, config.features.pki) {
            (Some(issuer), _) => Enrollment::Ed25519 { issuer },
            (None, true) => Enrollment::X509 {
                ca: ca.map(Box::new),
            },
            (None, false) => Enrollment::None,
        };
        let agents = Agents::new(
            Arc::new(rpc.clone()),
            metrics.clone(),
            config.rpc_timeout,
            config.token.clone(),
        );
        let services = Arc::new(Services {
            member: config.identity.clone(),
            config: config.clone(),
            rpc,
            agents,
            ledger,
            logic,
            enrollment,
            jwt,
            metrics: metrics.clone(),
            paused: AtomicBool::new(false),
            shard: config
                .cluster
                .as_ref()
                .map(|c| Arc::new(Shard::new(&config.identity, c.leader_share))),
            claim_lease_ms: config
                .cluster
                .as_ref()
                .map(|c| c.claim_lease.as_millis() as u64)
                .unwrap_or(CLAIM_LEASE_MS),
            flows: crate::flows::Flows::new(&config.identity, config.cluster.is_some()),
            pace,
        });
        let queue = WorkQueue::start(services.clone());

        if config.monitor_port > 0 {
            let addr = format!("{}:{}", config.monitor_listen, config.monitor_port);
            let sock: SocketAddr = addr.parse().map_err(|e| ServiceError::Metrics {
                addr: addr.clone(),
                reason: format!("{e}"),
            })?;
            let handle = metrics::serve(
                metrics.clone(),
                sock,
                status_fn(services.clone(), queue.clone(), member.clone()),
            )
            .await
            .map_err(|e| ServiceError::Metrics {
                addr,
                reason: e.to_string(),
            })?;
            tasks.push(handle);
        }

        publish_startup(&nats, &config.identity).await;

        // subscribe before the first discovery so no startup event falls in between
        let subject = discover::startup_subject(&config.lifecycle_component);
        let sub = nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| ServiceError::Events(e.to_string()))?;
        tracing::info!(subject, "listening for lifecycle events");
        tasks.push(tokio::spawn(discover::run_events(
            services.clone(),
            queue.clone(),
            sub,
        )));

        let extra = extra_fn(services.clone(), queue.clone());
        let inbox = Arc::new(crate::offers::Inbox::default());
        if let Some(m) = &member {
            // lending runs on this runtime, not on the Raft thread that takes the call
            let (lender, lent_from, main) = (
                services.clone(),
                queue.clone(),
                tokio::runtime::Handle::current(),
            );
            m.on_borrow(Arc::new(move |to, ask| {
                let lent = main.spawn(crate::lending::lend(
                    lender.clone(),
                    lent_from.clone(),
                    to,
                    ask.want,
                ));
                Box::pin(async move { lent.await.unwrap_or_default() })
            }));
            tasks.push(tokio::spawn(crate::lending::borrow_when_dry(
                services.clone(),
                queue.clone(),
                m.clone(),
            )));
            let (svc, queue, inbox, raft) = (
                services.clone(),
                queue.clone(),
                inbox.clone(),
                m.raft.clone(),
            );
            m.on_offer(Arc::new(move |from, batch| {
                // only the leader's offers say that its discovery covers this member
                let leader = raft::member::leader_of(&raft).map(|(id, _)| id);
                let from_leader = from.is_none() || from == leader;
                inbox.take(&svc, &queue, from_leader, &batch)
            }));
            m.set_extra(extra.clone());
            let metrics = services.metrics.clone();
            m.on_refused(Arc::new(move |rpc, reason| {
                metrics
                    .raft_refused
                    .with_label_values(&[metrics.site(), rpc, reason])
                    .inc();
            }));
        }
        if let Some(admin) = &config.admin {
            let r = &admin.reprovision;
            let reprovision_nats = if r.servers.is_empty() {
                nats.clone()
            } else {
                let mut opts = async_nats::ConnectOptions::with_user_and_password(
                    r.user.clone(),
                    r.password.clone(),
                )
                .name(format!("provisioner {} (reprovision)", config.identity))
                .retry_on_initial_connect();
                if let Some(tls) = &r.tls {
                    opts = tls.apply(opts);
                }
                opts.connect(r.servers.clone())
                    .await
                    .map_err(|e| ServiceError::Connect {
                        servers: r.servers.clone(),
                        reason: e.to_string(),
                    })?
            };
            let reprovision = RpcClient::start(
                reprovision_nats,
                &sender,
                &config.identity,
                &r.collective,
                metrics.clone(),
            )
            .await?
            .with_protocol(services.rpc.protocol());
            let ctx = Arc::new(AdminContext {
                svc: services.clone(),
                member: member.clone(),
                reprovision,
                extra,
                cluster: sender.clone(),
            });
            if let Some(policy) = admin.renew {
                tasks.push(tokio::spawn(crate::renew::run(ctx.clone(), policy)));
            }
            tasks.push(crate::admin::server::serve(ctx, admin).await?);
        }

        let rediscover = Arc::new(Notify::new());
        tasks.push(tokio::spawn(housekeeping(
            services.clone(),
            member.clone(),
            alone.clone(),
            rediscover.clone(),
        )));
        tasks.push(tokio::spawn(follow_settings(
            services.clone(),
            rediscover.clone(),
        )));
        tasks.push(tokio::spawn(crate::upkeep::run(
            services.clone(),
            member.clone().or_else(|| alone.clone()),
        )));
        // a server this member enrolled just before it stopped may not have been configured
        // or restarted: it waits in provisioning mode, and counts as fallen back only after
        // the settle time; look again then rather than a whole interval later. Only after a
        // restart (a first start has no such server), and only if the ledger, caught up by
        // then (a member killed with -9 replays its log at start), shows credentials this
        // member issued: a fleet-wide discovery costs every member a reply from each
        // waiting server.
        let restarted = member
            .as_ref()
            .or(alone.as_ref())
            .is_some_and(|m| m.restarted);
        if restarted {
            let (svc, again, inbox) = (services.clone(), rediscover.clone(), inbox.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(
                    raft::state::REENROLL_SETTLE_MS + 1_000,
                ))
                .await;
                let issued = svc
                    .ledger
                    .counts(&svc.member)
                    .await
                    .enrolled_by
                    .get(&svc.member)
                    .is_some_and(|n| *n > 0);
                if issued {
                    // this member's own round: the leader knows nothing of its restart
                    inbox.force_own_round();
                    again.notify_one();
                }
            }));
        }
        let shared = member.as_ref().map(|m| discover::Shared {
            member: m.clone(),
            outbox: crate::offers::Outbox::through(m.clone(), services.metrics.clone()),
            inbox,
        });
        tasks.push(tokio::spawn(discover::run_discovery(
            services.clone(),
            queue.clone(),
            rediscover,
            shared,
        )));

        tracing::info!(
            identity = %config.identity,
            workers = config.workers,
            interval = ?config.interval,
            pki = config.features.pki,
            jwt = config.features.jwt,
            clustered = config.cluster.is_some(),
            version = VERSION,
            "provisioner started"
        );
        Ok(Provisioner {
            services,
            queue,
            member,
            alone,
            tasks,
            _raft_runtime: raft_runtime,
        })
    }

    /// Resolves, with the reason, once the ledger can no longer be written (Raft stopped on
    /// a storage error, such as a full disk); never with an in-memory ledger. The process
    /// should end then: a member that cannot record anything must not go on claiming.
    pub async fn failed(&self) -> String {
        let Some(member) = self.member.as_ref().or(self.alone.as_ref()) else {
            return std::future::pending().await;
        };
        let config = &self.services.config;
        let disk = async {
            match &config.data_dir {
                Some(dir) => crate::diskguard::watch(dir.clone(), config.data_dir_min_free)
                    .await
                    .to_string(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            reason = member.failed() => reason,
            reason = disk => reason,
        }
    }

    /// Stops discovery and listening, and leaves the Raft group's gRPC service; flows in
    /// progress end when the runtime stops.
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        if let Some(m) = self.member.or(self.alone) {
            m.shutdown().await;
        }
    }
}

/// The ledger of a provisioner without a cluster: a Raft group of one in `data_dir/raft`,
/// stored as a member's is, with no port and no peers.
async fn start_alone(
    config: &Config,
    dir: &std::path::Path,
) -> Result<Arc<RaftMember>, ServiceError> {
    let fail = |reason: String| ServiceError::Ledger {
        dir: dir.display().to_string(),
        reason,
    };
    let member = RaftMember::start(MemberConfig::alone(&config.identity, dir.to_path_buf()))
        .await
        .map_err(|e| fail(e.to_string()))?;
    member
        .start_alone()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(Arc::new(member))
}

/// Starts this member of the Raft group; the member with the lowest id makes a new group
/// from the configured members if none exists yet.
async fn join_cluster(config: &Config, c: &Cluster) -> Result<Arc<RaftMember>, ServiceError> {
    let data_dir = config
        .data_dir
        .clone()
        .ok_or_else(|| ServiceError::Cluster("data_dir is required".into()))?;
    let members: BTreeMap<u64, Member> = c
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                Member {
                    name: m.name.clone(),
                    raft_addr: m.raft_addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                },
            )
        })
        .collect();
    let me = members
        .get(&c.id)
        .cloned()
        .ok_or_else(|| ServiceError::Cluster(format!("id {} is not a member", c.id)))?;
    let tls = match &c.tls {
        Some(t) => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| ServiceError::Cluster(format!("tls {}: {e}", p.display())))
            };
            Some(raft::network::Tls {
                ca_pem: read(&t.ca)?,
                cert_pem: read(&t.cert)?,
                key_pem: read(&t.key)?,
            })
        }
        None => {
            tracing::warn!("cluster traffic is not encrypted (insecure_plaintext)");
            None
        }
    };
    let heartbeat = c.heartbeat.as_millis() as u64;
    let election = c.election_timeout.as_millis() as u64;
    let member = RaftMember::start(MemberConfig {
        id: c.id,
        me,
        listen: Some(c.raft_listen),
        data_dir,
        settings: RaftSettings {
            heartbeat_ms: heartbeat,
            election_min_ms: election,
            election_max_ms: election * 2,
            snapshot_every: c.snapshot_every,
            keep_logs: c.snapshot_keep_logs,
            commit_linger_ms: c.commit_linger.as_millis() as u64,
            ..Default::default()
        },
        tls,
        source_ip: c.source_ip,
        configured: members.clone(),
        max_clock_skew_ms: c.max_clock_skew.as_millis() as u64,
    })
    .await
    .map_err(|e| ServiceError::Cluster(e.to_string()))?;
    let member = Arc::new(member);
    if members.keys().next() == Some(&c.id) {
        member
            .bootstrap(members)
            .await
            .map_err(|e| ServiceError::Cluster(e.to_string()))?;
    } else if !c.auto_join {
        tracing::info!("waiting to be added by an operator (auto_join is off)");
    } else {
        // a member that belongs to no group yet asks the others to add it; this is how a new
        // member joins a running group, and a no-op for members of the first configuration
        let peers = members
            .into_iter()
            .filter(|(id, _)| *id != c.id)
            .map(|(_, m)| m)
            .collect();
        member.join_in_background(peers);
    }
    Ok(member)
}

/// One connection attempt without retries, to log why the broker cannot be reached.
async fn probe_broker(opts: async_nats::ConnectOptions, servers: Vec<String>) {
    match opts.connect(servers.clone()).await {
        Ok(c) => drop(c),
        Err(e) => tracing::error!(
            ?servers,
            error = %e,
            "cannot connect to the broker; retrying in the background"
        ),
    }
}

/// Counts each new leader this member sees, from openraft's server metrics, so elections
/// between two housekeeping ticks are counted too. Those change with the role, vote, leader
/// or membership only; the full metrics change with every turn of Raft's core (every entry,
/// reply and tick), and each change would wake this task on the flows' runtime.
async fn watch_leader(member: Arc<RaftMember>, m: Arc<Metrics>) {
    let mut rx = member.raft.server_metrics();
    // the first leader seen counts too, even one elected before this task ran
    let mut last = None;
    loop {
        let now = rx.borrow_and_update().current_leader;
        if now != last {
            if now.is_some() {
                m.inc(&m.raft_leader_changes);
            }
            last = now;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Once a second: heartbeat (clustered), refresh the live members and every gauge; a change of
/// live members triggers a discovery so moved servers are picked up at once.
async fn housekeeping(
    svc: Arc<Services>,
    member: Option<Arc<RaftMember>>,
    alone: Option<Arc<RaftMember>>,
    rediscover: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_beat = None::<tokio::time::Instant>;
    let mut crl = crate::crl::CrlState::default();
    let mut cuts_seen = 0;
    let mut limit_said = svc.config.workers;
    loop {
        tick.tick().await;
        let m = &svc.metrics;
        let limit = svc.pace.limit();
        m.set(&m.flow_limit, limit as i64);
        // said when it moved by a tenth or more: the log shows strain without a line a tick
        if limit.abs_diff(limit_said) * 10 >= limit_said.max(1) {
            tracing::info!(limit, workers = svc.config.workers, "flow limit");
            limit_said = limit;
        }
        let cuts = svc.pace.cuts();
        m.flow_limit_cuts
            .with_label_values(&[m.site()])
            .inc_by(cuts.saturating_sub(cuts_seen));
        cuts_seen = cuts;
        if let Some(shard) = &svc.shard {
            if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
                let ledger = svc.ledger.clone();
                let beat_at = now_ms();
                let cmd = Command::Heartbeat {
                    member: svc.member.clone(),
                    at_ms: beat_at,
                };
                let flows = svc.flows.clone();
                // in the background: a heartbeat must not hold up the live-set refresh
                tokio::spawn(async move {
                    match ledger.propose(cmd).await {
                        // committed: this member still drives servers for a while (the fence)
                        Ok(Applied::Ok) => flows.heartbeat_committed(beat_at),
                        Ok(Applied::Rejected(r)) => {
                            // removed from the group: its peers stop counting it live and
                            // take its servers; it keeps running for an operator to stop
                            tracing::warn!(reason = %r, "heartbeat refused; taking no servers");
                        }
                        // the leader refuses a removed member's commands outright
                        Err(LedgerError::Refused(r)) => {
                            tracing::warn!(reason = %r, "heartbeat refused; taking no servers");
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat not committed"),
                    }
                });
                last_beat = Some(tokio::time::Instant::now());
            }
            let live = svc.ledger.live_members(now_ms(), LIVE_WINDOW_MS).await;
            m.set(&m.live_members, live.len() as i64);
            if shard.set_live(live.clone()) {
                tracing::info!(?live, "live members changed");
                rediscover.notify_one();
            }
            // the leader takes a smaller share; a new one moves servers, found at once
            let leader = member
                .as_ref()
                .and_then(|m| m.leader())
                .map(|(_, n)| n.name);
            if shard.set_leader(leader.clone()) {
                tracing::info!(?leader, "leader changed; shares follow");
                rediscover.notify_one();
            }
            if member.as_ref().is_some_and(|m| m.is_leader()) {
                make_epoch(&svc, shard, &live).await;
            }
        }
        if let Some(member) = &member {
            let rm = member.raft.metrics().borrow().clone();
            m.set(&m.raft_term, rm.current_term as i64);
            m.set(&m.raft_leader, rm.current_leader.unwrap_or(0) as i64);
            m.set(
                &m.raft_last_log_index,
                rm.last_log_index.unwrap_or(0) as i64,
            );
            m.set(
                &m.raft_last_applied,
                rm.last_applied.map(|l| l.index).unwrap_or(0) as i64,
            );
            m.set(
                &m.raft_voters,
                rm.membership_config.membership().voter_ids().count() as i64,
            );
        }
        let counts = svc.ledger.counts(&svc.member).await;
        m.set(
            &m.owned,
            (counts.owned_by_member + svc.flows.in_progress()) as i64,
        );
        m.set(&m.revoked, counts.revoked as i64);
        let caught_up = member
            .as_ref()
            .or(alone.as_ref())
            .is_none_or(|m| caught_up(m));
        crl.refresh(&svc, counts.revoked, caught_up).await;
        let by_state: BTreeMap<&str, i64> = counts
            .by_state
            .iter()
            .map(|(s, n)| (s.name(), *n as i64))
            .collect();
        for s in EnrollState::ALL {
            m.ledger_records
                .with_label_values(&[m.site(), s.name()])
                .set(by_state.get(s.name()).copied().unwrap_or(0));
        }
    }
}

/// As leader (ledger rules 6): makes a new ownership epoch when the live members, the leader
/// or its share differ from the one in force (see [`crate::flows`]).
async fn make_epoch(svc: &Arc<Services>, shard: &Shard, live: &[String]) {
    let heartbeats = svc.ledger.heartbeats().await;
    let grace =
        crate::flows::FENCE_MS + svc.config.rpc_timeout.as_millis() as u64 + crate::flows::SKEW_MS;
    let Some(epoch) = svc.flows.next_epoch(
        live,
        shard.leader_share_milli(live.len()),
        &heartbeats,
        LIVE_WINDOW_MS,
        grace,
        now_ms(),
    ) else {
        return;
    };
    let number = epoch.epoch;
    let svc = svc.clone();
    tokio::spawn(async move {
        match svc.ledger.propose(Command::NewEpoch(epoch)).await {
            Ok(Applied::Ok) => tracing::info!(epoch = number, "ownership epoch made"),
            Ok(Applied::Rejected(r)) => {
                tracing::info!(epoch = number, reason = %r, "ownership epoch not made");
                svc.flows.proposal_failed();
            }
            Err(e) => {
                tracing::warn!(epoch = number, error = %e, "ownership epoch not committed");
                svc.flows.proposal_failed();
            }
        }
    });
}

/// Acknowledges the ownership epoch in force once no flow of an older one is left.
fn ack_epoch(svc: &Arc<Services>) {
    let Some(epoch) = svc.flows.ack_due(now_ms()) else {
        return;
    };
    let svc = svc.clone();
    tokio::spawn(async move {
        let cmd = Command::EpochAck {
            member: svc.member.clone(),
            epoch,
            at_ms: now_ms(),
        };
        match svc.ledger.propose(cmd).await {
            Ok(Applied::Ok) => tracing::debug!(epoch, "ownership epoch acknowledged"),
            Ok(Applied::Rejected(r)) => {
                tracing::info!(epoch, reason = %r, "acknowledgement refused");
                svc.flows.ack_failed();
            }
            Err(e) => {
                tracing::warn!(epoch, error = %e, "acknowledgement not committed");
                svc.flows.ack_failed();
            }
        }
    });
}

/// Follows the replicated settings closely: a pause stops new work on every member within a
/// fraction of a second, a rebalance makes this member rediscover, and a new ownership epoch
/// moves servers (and is acknowledged once this member's older flows ended).
async fn follow_settings(svc: Arc<Services>, rediscover: Arc<Notify>) {
    let mut tick = tokio::time::interval(SETTINGS_EVERY);
    let mut epoch = None;
    loop {
        tick.tick().await;
        let settings = svc.ledger.settings().await;
        svc.flows.follow(settings.rules, &settings.ownership);
        if let Some(shard) = &svc.shard {
            if shard.set_epoch(settings.ownership.current.clone()) {
                tracing::info!(
                    epoch = settings.ownership.epoch(),
                    "ownership epoch changed; shares follow"
                );
                rediscover.notify_one();
            }
            ack_epoch(&svc);
        }
        if settings.paused != svc.is_paused() {
            tracing::warn!(paused = settings.paused, "provisioning pause changed");
            svc.set_paused(settings.paused);
        }
        if epoch.is_some_and(|e| e != settings.rebalance_epoch) {
            tracing::info!("rebalance requested; rediscovering");
            rediscover.notify_one();
        }
        epoch = Some(settings.rebalance_epoch);
    }
}

/// Whether this member's ledger has applied every entry it holds and it knows a leader: a
/// member that is behind (just restarted, or cut off) would write a CRL from an older ledger.
fn caught_up(m: &RaftMember) -> bool {
    let metrics = m.raft.metrics().borrow().clone();
    metrics.current_leader.is_some()
        && metrics.last_applied.map(|l| l.index) >= metrics.last_log_index
}

/// What this member tells peers and operators about its own work.
fn extra_fn(svc: Arc<Services>, queue: Arc<WorkQueue>) -> raft::admin::ExtraFn {
    Arc::new(move || {
        let (queued, in_flight, waiting) = queue.counts();
        serde_json::json!({
            "version": VERSION,
            "paused": svc.is_paused(),
            "queued": queued,
            "in_flight": in_flight,
            "waiting_retry": waiting,
            "flows": svc.flows.in_progress(),
        })
    })
}

/// The `/status` document: this member, the group as it sees it, its work and its ledger.
fn status_fn(
    svc: Arc<Services>,
    queue: Arc<WorkQueue>,
    member: Option<Arc<RaftMember>>,
) -> StatusFn {
    Arc::new(move || {
        let (svc, queue, member) = (svc.clone(), queue.clone(), member.clone());
        Box::pin(async move {
            // counted in place and a digest kept as the ledger changes: no copy of the
            // ledger per request
            let counts = svc.ledger.counts(&svc.member).await;
            let records: usize = counts.by_state.values().sum();
            let by_state: BTreeMap<&str, usize> = counts
                .by_state
                .iter()
                .map(|(s, n)| (s.name(), *n))
                .collect();
            let enrolled_by = counts.enrolled_by;
            let (queued, in_flight, waiting) = queue.counts();
            let raft = member.as_ref().map(|m| {
                let rm = m.raft.metrics().borrow().clone();
                serde_json::json!({
                    "id": m.id,
                    "term": rm.current_term,
                    "leader": rm.current_leader,
                    "last_log_index": rm.last_log_index,
                    "last_applied": rm.last_applied.map(|l| l.index),
                    "voters": rm.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                    "snapshot": m.store.last_snapshot(),
                })
            });
            serde_json::json!({
                "member": svc.member,
                "version": VERSION,
                "paused": svc.is_paused(),
                "live_members": svc.shard.as_ref().map(|s| s.live()),
                "raft": raft,
                "lending": svc.flows.lending(),
                "ownership": svc.flows.epoch().map(|e| serde_json::json!({
                    "epoch": e.epoch,
                    "members": e.members,
                    "leader": e.leader,
                    "leader_share_milli": e.leader_share_milli,
                })),
                "work": {
                    "queued": queued,
                    "in_flight": in_flight,
                    "waiting_retry": waiting,
                    "flows_by_epoch": svc.flows.running(),
                    // the flows' runtime's threads: as many as the CPUs the process may use
                    // when it started, a cgroup's cap included
                    "threads": tokio::runtime::Handle::current().metrics().num_workers(),
                },
                "ledger": {
                    "records": records,
                    "by_state": by_state,
                    "enrolled_by": enrolled_by,
                    "digest": svc.ledger.digest().await,
                },
            })
            .to_string()
        })
    })
}

/// Announces this provisioner as upstream does (component `provisioner`).
async fn publish_startup(nats: &async_nats::Client, identity: &str) {
    let event = proto::lifecycle::Event::new(
        proto::lifecycle::EventType::Startup,
        identity,
        "provisioner",
        Some(VERSION),
    );
    let (Ok(subject), Ok(body)) = (event.subject(), event.to_json()) else {
        return;
    };
    if let Err(e) = nats.publish(subject, body.into()).await {
        tracing::warn!(error = %e, "could not publish startup event");
    }
}
