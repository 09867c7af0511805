//! Following the replicated settings a few times a second: a pause stops new work on every
//! member within a fraction of a second, a rebalance makes this member rediscover, and a new
//! ownership epoch moves servers and is acknowledged once this member's older flows ended.

use std::sync::Arc;
use std::time::Duration;

use raft::{Applied, Command};
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::context::Services;

/// How often a member looks at the replicated settings (pause, rebalance).
const SETTINGS_EVERY: Duration = Duration::from_millis(200);

/// Follows the settings for as long as the provisioner runs.
pub(super) async fn follow_settings(svc: Arc<Services>, rediscover: Arc<Notify>) {
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
