//! Which servers are whose in a cluster: the shard follows the live members (those with a
//! recent heartbeat) and the leader, which takes a smaller share; as leader, a member also
//! makes a new ownership epoch when those change (ledger rules 6, see [`crate::flows`]).

use std::sync::Arc;

use raft::member::RaftMember;
use raft::{Applied, Command};
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::context::Services;
use crate::service::LIVE_WINDOW_MS;
use crate::shard::Shard;

/// Refreshes the live members and the leader; a change notifies `rediscover`, so moved
/// servers are found at once.
pub(super) async fn follow(
    svc: &Arc<Services>,
    shard: &Shard,
    member: Option<&RaftMember>,
    rediscover: &Notify,
) {
    let m = &svc.metrics;
    let live = svc.ledger.live_members(now_ms(), LIVE_WINDOW_MS).await;
    m.set(&m.live_members, live.len() as i64);
    if shard.set_live(live.clone()) {
        tracing::info!(?live, "live members changed");
        rediscover.notify_one();
    }
    // the leader takes a smaller share; a new one moves servers, found at once
    let leader = member.and_then(|m| m.leader()).map(|(_, n)| n.name);
    if shard.set_leader(leader.clone()) {
        tracing::info!(?leader, "leader changed; shares follow");
        rediscover.notify_one();
    }
    if member.is_some_and(|m| m.is_leader()) {
        make_epoch(svc, shard, &live).await;
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
