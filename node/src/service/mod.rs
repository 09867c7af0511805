//! Starting and stopping a provisioner: load its keys, open its ledger (joining the Raft group
//! when clustered), connect to the broker, then start metrics, lifecycle listening, the admin
//! API, the periodic jobs, discovery and the workers. Each step is a module of its own; this
//! one reads top-down in the order they start.

mod admin;
mod error;
mod housekeeping;
mod keys;
mod member;
mod nats;
mod restart;
mod settings;
mod status;
mod storage;

use std::sync::Arc;

use raft::member::RaftMember;
use raft::Ledger;
use tokio::sync::Notify;

use crate::config::Config;
use crate::context::{Parts, Services};
use crate::enrollment::Enrollment;
use crate::helper::{ExternalHelper, UserLogic};
use crate::metrics::Metrics;
use crate::work::WorkQueue;
use crate::{discover, VERSION};

pub use error::{ClusterError, LedgerOpenError, ServiceError};

/// A member is live while its last heartbeat is younger than this.
pub(crate) const LIVE_WINDOW_MS: u64 = 7_000;

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
        let logic = user_logic(&config, logic)?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(&config.site));
        let mut tasks = Vec::new();

        let keys = keys::Keys::load(&config)?;
        let storage = storage::open(&config, ledger).await?;
        let (member, alone) = (storage.member, storage.alone);
        let pace = crate::pace::Pace::new(config.workers);
        let ledger = crate::timed::TimedLedger::wrap(storage.ledger, metrics.clone(), pace.clone());
        if let Some(member) = &member {
            tasks.push(tokio::spawn(housekeeping::raft_metrics::watch_leader(
                member.clone(),
                metrics.clone(),
            )));
        }

        // a cluster's members all speak as the cluster, so a server's provisioning lock is not
        // tied to one member
        let sender = config
            .cluster
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| config.identity.clone());
        let caller = keys.caller(&sender)?;
        let nats = nats::connect(&config, caller.clone()).await?;
        let rpc = nats::rpc_client(&nats, &sender, &config.identity, caller, &metrics).await?;

        let services = Arc::new(services(
            config.clone(),
            keys,
            &rpc,
            ledger,
            logic,
            metrics,
            pace,
        ));
        let queue = WorkQueue::start(services.clone());

        tasks.extend(status::serve(&services, &queue, member.clone()).await?);
        nats::publish_startup(&nats, &config.identity).await;
        // before the first discovery, so no startup event falls in between
        tasks.push(nats::listen_for_startups(&nats, &services, &queue).await?);

        let extra = status::extra_fn(services.clone(), queue.clone());
        let inbox = Arc::new(crate::offers::Inbox::default());
        if let Some(m) = &member {
            tasks.push(member::connect(m, &services, &queue, &inbox, extra.clone()));
        }
        if let Some(admin) = &config.admin {
            let protocol = rpc.protocol();
            let admin_tasks = admin::start(
                admin,
                &services,
                &nats,
                protocol,
                &sender,
                member.clone(),
                extra,
            )
            .await?;
            tasks.extend(admin_tasks);
        }

        let rediscover = Arc::new(Notify::new());
        tasks.extend(periodic(&services, &member, &alone, &rediscover, &inbox));
        let shared = member.as_ref().map(|m| discover::Shared {
            member: m.clone(),
            outbox: crate::offers::Outbox::through(m.clone(), services.metrics.clone()),
            inbox,
        });
        tasks.push(tokio::spawn(discover::run_discovery(
            services.clone(),
            rpc,
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
            _raft_runtime: storage.runtime,
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

/// `logic` when given, else the configuration's `builtin_helper`, else its helper program;
/// an error when there is none of them.
fn user_logic(
    config: &Config,
    logic: Option<Arc<dyn UserLogic>>,
) -> Result<Arc<dyn UserLogic>, ServiceError> {
    let logic = logic.or_else(|| {
        config
            .builtin_helper
            .clone()
            .map(|b| Arc::new(b) as Arc<dyn UserLogic>)
    });
    if logic.is_none() && config.helper.is_empty() {
        return Err(ServiceError::NoHelper);
    }
    Ok(logic.unwrap_or_else(|| {
        Arc::new(ExternalHelper::new(
            config.helper.clone(),
            config.helper_timeout,
            config.helper_max_output,
        ))
    }))
}

/// The jobs that run for as long as the provisioner does: housekeeping, following the
/// replicated settings, the ledger's upkeep, and after a restart one early rediscovery.
fn periodic(
    services: &Arc<Services>,
    member: &Option<Arc<RaftMember>>,
    alone: &Option<Arc<RaftMember>>,
    rediscover: &Arc<Notify>,
    inbox: &Arc<crate::offers::Inbox>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(housekeeping::run(
            services.clone(),
            member.clone(),
            alone.clone(),
            rediscover.clone(),
        )),
        tokio::spawn(settings::follow_settings(
            services.clone(),
            rediscover.clone(),
        )),
        tokio::spawn(crate::upkeep::run(
            services.clone(),
            member.clone().or_else(|| alone.clone()),
        )),
    ];
    let restarted = member
        .as_ref()
        .or(alone.as_ref())
        .is_some_and(|m| m.restarted);
    if restarted {
        tasks.push(tokio::spawn(restart::rediscover_after_settling(
            services.clone(),
            rediscover.clone(),
            inbox.clone(),
        )));
    }
    tasks
}

/// What every flow works with: this member's configuration, keys, agent calls (through `rpc`)
/// and ledger.
fn services(
    config: Arc<Config>,
    keys: keys::Keys,
    rpc: &crate::rpc::RpcClient,
    ledger: Arc<dyn Ledger>,
    logic: Arc<dyn UserLogic>,
    metrics: Arc<Metrics>,
    pace: Arc<crate::pace::Pace>,
) -> Services {
    // config check lets only one of pki and ed25519 be on; the issuer is loaded with ed25519
    let enrollment = match (keys.issuer, config.features.pki) {
        (Some(issuer), _) => Enrollment::Ed25519 { issuer },
        (None, true) => Enrollment::X509 {
            ca: keys.ca.map(Box::new),
        },
        (None, false) => Enrollment::None,
    };
    Services::new(Parts {
        transport: Arc::new(rpc.clone()),
        ledger,
        logic,
        enrollment,
        jwt: keys.jwt,
        metrics,
        pace,
        config,
    })
}
