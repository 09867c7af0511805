//! The operator API of a member with an `admin` section: the connection its reprovision
//! requests go out on (the provisioning one, or an account of their own), the renewal of
//! credentials before they expire, and the API's server.

use std::sync::Arc;

use raft::member::RaftMember;

use crate::admin::server::AdminContext;
use crate::config::Admin;
use crate::context::Services;
use crate::rpc::{Protocol, RpcClient};

use super::ServiceError;

/// Starts the API (and renewal, when configured); the tasks to stop with the provisioner.
/// `sender` is who the cluster speaks as.
pub(super) async fn start(
    admin: &Admin,
    services: &Arc<Services>,
    nats: &async_nats::Client,
    protocol: Protocol,
    sender: &str,
    member: Option<Arc<RaftMember>>,
    extra: raft::admin::ExtraFn,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServiceError> {
    let config = &services.config;
    let r = &admin.reprovision;
    let reprovision_nats = if r.servers.is_empty() {
        nats.clone()
    } else {
        let mut opts =
            async_nats::ConnectOptions::with_user_and_password(r.user.clone(), r.password.clone())
                .name(format!("provisioner {} (reprovision)", config.identity))
                .retry_on_initial_connect();
        if let Some(tls) = &r.tls {
            opts = tls.apply(opts);
        }
        opts.connect(r.servers.clone())
            .await
            .map_err(|source| ServiceError::Connect {
                servers: r.servers.clone(),
                source,
            })?
    };
    let reprovision = RpcClient::start(
        reprovision_nats,
        sender,
        &config.identity,
        &r.collective,
        services.metrics.clone(),
    )
    .await?
    .with_protocol(protocol);
    let ctx = Arc::new(AdminContext {
        svc: services.clone(),
        member,
        reprovision,
        extra,
        cluster: sender.to_string(),
    });
    let mut tasks = Vec::new();
    if let Some(policy) = admin.renew {
        tasks.push(tokio::spawn(crate::renew::run(ctx.clone(), policy)));
    }
    tasks.push(crate::admin::server::serve(ctx, admin).await?);
    Ok(tasks)
}
