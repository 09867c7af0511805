//! The status call: the cluster's leader and term, each member's Raft progress and work,
//! and the ledger's counts.

use proto::grpc::admin as pb;
use tonic::Status;

use super::AdminApi;
use crate::clock::now_ms;
use crate::service::LIVE_WINDOW_MS;
use crate::VERSION;

/// A member is healthy while it has applied the log to within this many entries of the
/// leader's last index.
const HEALTHY_LAG: u64 = 1_000;

impl AdminApi {
    pub(super) async fn status(&self) -> Result<pb::StatusReply, Status> {
        let ledger = &self.svc().ledger;
        let settings = ledger.settings().await;
        let counts = ledger.counts(&self.svc().member).await;
        let heartbeats = ledger.heartbeats().await;
        let now = now_ms();
        let extra_u64 = |extra: &serde_json::Value, key: &str| {
            extra.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
        };
        let base = |name: &str| {
            let draining = settings.draining.contains(name);
            let claimed = counts.claimed_by.get(name).copied().unwrap_or(0);
            pb::MemberStatus {
                name: name.to_string(),
                live: heartbeats
                    .get(name)
                    .is_some_and(|at| now.saturating_sub(*at) <= LIVE_WINDOW_MS),
                last_heartbeat_ms: heartbeats.get(name).copied().unwrap_or(0),
                draining,
                owned: claimed as u64,
                // under ownership epochs there are no claims to count: the epoch in force
                // leaving it out, acknowledged, says it holds nothing
                drained: draining
                    && if settings.rules >= raft::state::OWNED_RULES {
                        settings.ownership.left_out_and_acked(name)
                    } else {
                        claimed == 0
                    },
                ..Default::default()
            }
        };
        let mut reply = pb::StatusReply {
            cluster: self.ctx.cluster.clone(),
            answered_by: self.svc().member.clone(),
            version: VERSION.into(),
            paused: settings.paused,
            ledger_records: counts.by_state.values().sum::<usize>() as u64,
            ledger_by_state: counts
                .by_state
                .iter()
                .map(|(s, n)| (s.name().to_string(), *n as u64))
                .collect(),
            revoked_credentials: counts.revoked as u64,
            clustered: self.ctx.member.is_some(),
            ..Default::default()
        };
        let Some(member) = &self.ctx.member else {
            let extra = (self.ctx.extra)();
            let mut me = base(&self.svc().member);
            me.role = "standalone".into();
            me.healthy = true;
            me.live = true;
            me.queued = extra_u64(&extra, "queued");
            me.in_flight = extra_u64(&extra, "in_flight");
            me.owned += extra_u64(&extra, "flows");
            // alone there are no epochs: drained once nothing runs
            me.drained = me.draining && me.owned == 0;
            me.waiting_retry = extra_u64(&extra, "waiting_retry");
            me.version = VERSION.into();
            me.paused = self.svc().is_paused();
            me.ledger_digest = ledger.digest().await;
            reply.members.push(me);
            return Ok(reply);
        };
        let voters = member.voters();
        let views = member.views().await;
        let leader_index = views
            .iter()
            .filter_map(|(_, _, v)| v.as_ref().ok())
            .find(|v| v.role == "leader")
            .map(|v| v.last_log_index);
        if let Some((id, node)) = member.leader() {
            reply.leader_id = id;
            reply.leader = node.name;
        }
        reply.term = member.status().term;
        for (id, node, view) in views {
            let mut s = base(&node.name);
            s.id = id;
            s.raft_addr = node.raft_addr.clone();
            s.admin_addr = node.admin_addr.clone();
            s.voter = voters.contains(&id);
            match view {
                Ok(v) => {
                    s.role = v.role.clone();
                    s.term = v.term;
                    s.last_log_index = v.last_log_index;
                    s.last_applied = v.last_applied;
                    s.healthy = leader_index
                        .is_some_and(|li| li.saturating_sub(v.last_applied) <= HEALTHY_LAG);
                    s.ledger_digest = v.digest.clone();
                    s.queued = extra_u64(&v.extra, "queued");
                    s.in_flight = extra_u64(&v.extra, "in_flight");
                    s.owned += extra_u64(&v.extra, "flows");
                    s.waiting_retry = extra_u64(&v.extra, "waiting_retry");
                    s.paused = v
                        .extra
                        .get("paused")
                        .and_then(|p| p.as_bool())
                        .unwrap_or(false);
                    s.version = v
                        .extra
                        .get("version")
                        .and_then(|p| p.as_str())
                        .unwrap_or_default()
                        .to_string();
                }
                Err(e) => {
                    s.role = "unreachable".into();
                    s.error = e.to_string();
                }
            }
            reply.members.push(s);
        }
        Ok(reply)
    }
}
