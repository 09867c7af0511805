//! What a member tells about itself: the `/status` document and metrics it serves on
//! `monitor_port`, and the summary of its work it hands its Raft peers and operators.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use raft::member::RaftMember;

use crate::context::Services;
use crate::metrics::{self, StatusFn};
use crate::work::WorkQueue;
use crate::VERSION;

use super::ServiceError;

/// Serves metrics and `/status` on `monitor_listen:monitor_port`; nothing when the port is 0.
pub(super) async fn serve(
    svc: &Arc<Services>,
    queue: &Arc<WorkQueue>,
    member: Option<Arc<RaftMember>>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServiceError> {
    let config = &svc.config;
    if config.monitor_port == 0 {
        return Ok(None);
    }
    let addr = format!("{}:{}", config.monitor_listen, config.monitor_port);
    let sock: SocketAddr = addr.parse().map_err(|source| ServiceError::MetricsAddr {
        addr: addr.clone(),
        source,
    })?;
    let handle = metrics::serve(
        svc.metrics.clone(),
        sock,
        status_fn(svc.clone(), queue.clone(), member),
    )
    .await
    .map_err(|source| ServiceError::Metrics { addr, source })?;
    Ok(Some(handle))
}

/// What this member tells peers and operators about its own work.
pub(super) fn extra_fn(svc: Arc<Services>, queue: Arc<WorkQueue>) -> raft::admin::ExtraFn {
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
                let s = m.status();
                serde_json::json!({
                    "id": m.id,
                    "term": s.term,
                    "leader": s.leader,
                    "last_log_index": s.last_log_index,
                    "last_applied": s.last_applied,
                    "voters": s.voters,
                    "snapshot": s.snapshot,
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
