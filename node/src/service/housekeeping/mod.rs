//! The once-a-second jobs of a running provisioner, one module each, run in turn on one tick:
//! the flow limit's gauges ([`flow_limit`]), the heartbeat ([`heartbeat`]) and the shares
//! that follow the live members and the leader ([`shares`]) in a cluster, the Raft gauges
//! ([`raft_metrics`]), the ledger's gauges ([`ledger_gauges`]) and the CRL ([`crate::crl`]).

mod flow_limit;
mod heartbeat;
mod ledger_gauges;
pub(super) mod raft_metrics;
mod shares;

use std::sync::Arc;
use std::time::Duration;

use raft::member::RaftMember;
use tokio::sync::Notify;

use crate::context::Services;

/// Runs the jobs for as long as the provisioner runs. A change of live members or leader
/// notifies `rediscover`, so moved servers are picked up at once.
pub(super) async fn run(
    svc: Arc<Services>,
    member: Option<Arc<RaftMember>>,
    alone: Option<Arc<RaftMember>>,
    rediscover: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut flow_limit = flow_limit::FlowLimit::new(svc.config.workers);
    let mut heartbeat = heartbeat::Heartbeat::default();
    let mut crl = crate::crl::CrlState::default();
    loop {
        tick.tick().await;
        flow_limit.export(&svc);
        if let Some(shard) = &svc.shard {
            heartbeat.beat_when_due(&svc);
            shares::follow(&svc, shard, member.as_deref(), &rediscover).await;
        }
        if let Some(member) = &member {
            raft_metrics::export(&svc.metrics, member);
        }
        let counts = svc.ledger.counts(&svc.member).await;
        ledger_gauges::export(&svc, &counts);
        let caught_up = member
            .as_ref()
            .or(alone.as_ref())
            .is_none_or(|m| raft_metrics::caught_up(m));
        crl.refresh(&svc, counts.revoked, caught_up).await;
    }
}
