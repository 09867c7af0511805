//! Starting and stopping a provisioner: connect to the broker, load the CA and JWT key, start
//! metrics, the reply router, lifecycle listening, discovery and the workers.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use raft::{Ledger, LocalLedger};
use thiserror::Error;

use crate::ca::{Ca, CaError};
use crate::config::Config;
use crate::helper::{ExternalHelper, UserLogic};
use crate::jwt::{JwtError, JwtVerifier};
use crate::metrics::{self, Metrics};
use crate::pipeline::Services;
use crate::rpc::{RpcClient, RpcError};
use crate::work::WorkQueue;
use crate::{discover, VERSION};

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
}

/// A running provisioner.
pub struct Provisioner {
    pub services: Arc<Services>,
    pub queue: Arc<WorkQueue>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Provisioner {
    /// Starts everything with the configured helper program (or `logic`, when given) and a
    /// ledger (a local one when `None`).
    pub async fn start(
        config: Config,
        logic: Option<Arc<dyn UserLogic>>,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Provisioner, ServiceError> {
        if logic.is_none() && config.helper.is_empty() {
            return Err(ServiceError::NoHelper);
        }
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(&config.site));
        let mut tasks = Vec::new();

        if config.monitor_port > 0 {
            let addr = format!("{}:{}", config.monitor_listen, config.monitor_port);
            let sock: SocketAddr = addr.parse().map_err(|e| ServiceError::Metrics {
                addr: addr.clone(),
                reason: format!("{e}"),
            })?;
            let handle =
                metrics::serve(metrics.clone(), sock)
                    .await
                    .map_err(|e| ServiceError::Metrics {
                        addr,
                        reason: e.to_string(),
                    })?;
            tasks.push(handle);
        }

        let ca = match (&config.ca, config.features.pki) {
            (Some(c), true) => Some(Ca::load(&c.cert, &c.key, config.cert_validity)?),
            _ => None,
        };
        let jwt = if config.features.jwt {
            Some(JwtVerifier::from_config(&config.jwt_verify_cert)?)
        } else {
            None
        };

        let nats = async_nats::ConnectOptions::with_user_and_password(
            config.nats.user.clone(),
            config.broker_provisioning_password.clone(),
        )
        .name(format!("provisioner {}", config.identity))
        .retry_on_initial_connect()
        .connect(config.nats.servers.clone())
        .await
        .map_err(|e| ServiceError::Connect {
            servers: config.nats.servers.clone(),
            reason: e.to_string(),
        })?;

        let rpc = RpcClient::start(
            nats.clone(),
            &config.identity,
            proto::subject::PROVISIONING_COLLECTIVE,
            metrics.clone(),
        )
        .await?;

        let logic = logic.unwrap_or_else(|| {
            Arc::new(ExternalHelper::new(
                config.helper.clone(),
                config.helper_timeout,
                config.helper_max_output,
            ))
        });
        let services = Arc::new(Services {
            member: config.identity.clone(),
            config: config.clone(),
            rpc,
            ledger: ledger.unwrap_or_else(|| Arc::new(LocalLedger::new())),
            logic,
            ca,
            jwt,
            metrics,
            paused: AtomicBool::new(false),
        });
        let queue = WorkQueue::start(services.clone());

        publish_startup(&nats, &config.identity).await;

        // subscribe before the first discovery so no startup event falls in between
        let subject = discover::startup_subject(&config.lifecycle_component);
        let sub = nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| ServiceError::Events(e.to_string()))?;
        tracing::info!(subject, "listening for lifecycle events");
        let events = tokio::spawn(discover::run_events(services.clone(), queue.clone(), sub));
        tasks.push(events);
        tasks.push(tokio::spawn(discover::run_discovery(
            services.clone(),
            queue.clone(),
        )));

        tracing::info!(
            identity = %config.identity,
            workers = config.workers,
            interval = ?config.interval,
            pki = config.features.pki,
            jwt = config.features.jwt,
            version = VERSION,
            "provisioner started"
        );
        Ok(Provisioner {
            services,
            queue,
            tasks,
        })
    }

    /// Stops discovery and listening; flows in progress end when the runtime stops.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
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
