//! The provisioner's broker connection: connecting (with one plain attempt first, to log why
//! a broker cannot be used), the RPC client on it, announcing this provisioner, and
//! listening for servers that start in provisioning mode.

use std::sync::Arc;

use crate::caller::CallerSigner;
use crate::config::Config;
use crate::context::Services;
use crate::metrics::Metrics;
use crate::rpc::RpcClient;
use crate::work::WorkQueue;
use crate::{discover, VERSION};

use super::ServiceError;

/// Connects to the configured brokers, retrying in the background until one answers.
pub(super) async fn connect(
    config: &Arc<Config>,
    caller: Option<Arc<CallerSigner>>,
) -> Result<async_nats::Client, ServiceError> {
    let make_opts = {
        let config = config.clone();
        move || crate::broker::connect_options(&config, caller.clone())
    };
    // the client retries on its own but only says "IO error"; one plain attempt first
    // says why the broker cannot be used (refused, TLS, credentials)
    tokio::spawn(probe_broker(make_opts(), config.nats.servers.clone()));
    make_opts()
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
        .map_err(|source| ServiceError::Connect {
            servers: config.nats.servers.clone(),
            source,
        })
}

/// The client provisioning requests go out on, as `sender`; protocol v2 with a caller JWT
/// when there is a `caller`.
pub(super) async fn rpc_client(
    nats: &async_nats::Client,
    sender: &str,
    identity: &str,
    caller: Option<Arc<CallerSigner>>,
    metrics: &Arc<Metrics>,
) -> Result<RpcClient, ServiceError> {
    let rpc = RpcClient::start(
        nats.clone(),
        sender,
        identity,
        proto::subject::PROVISIONING_COLLECTIVE,
        metrics.clone(),
    )
    .await?;
    Ok(match caller {
        Some(signer) => rpc.with_protocol(crate::rpc::Protocol::V2(signer)),
        None => rpc,
    })
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

/// Announces this provisioner as upstream does (component `provisioner`).
pub(super) async fn publish_startup(nats: &async_nats::Client, identity: &str) {
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

/// Offers every server that announces its start in provisioning mode to the work queue.
/// Subscribed before the first discovery, so no startup event falls in between.
pub(super) async fn listen_for_startups(
    nats: &async_nats::Client,
    services: &Arc<Services>,
    queue: &Arc<WorkQueue>,
) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
    let subject = discover::startup_subject(&services.config.lifecycle_component);
    let sub = nats
        .subscribe(subject.clone())
        .await
        .map_err(ServiceError::Events)?;
    tracing::info!(subject, "listening for lifecycle events");
    Ok(tokio::spawn(discover::run_events(
        services.clone(),
        queue.clone(),
        sub,
    )))
}
