//! Which members provision, and whether any does: drain, rebalance and pause.

use proto::grpc::admin as pb;
use raft::{Applied, Command, EnrollState};
use tonic::Status;

use super::AdminApi;
use crate::clock::now_ms;
use crate::service::LIVE_WINDOW_MS;

impl AdminApi {
    pub(super) async fn drain(&self, req: pb::DrainRequest) -> Result<pb::DrainReply, Status> {
        if req.member.is_empty() {
            return Err(Status::invalid_argument("member is required"));
        }
        let known = match &self.ctx.member {
            Some(m) => m.status().member_named(&req.member).is_some(),
            None => req.member == self.svc().member,
        };
        if !known {
            return Err(Status::not_found(format!(
                "{} is not a member of this cluster",
                req.member
            )));
        }
        self.propose(Command::SetDraining {
            member: req.member.clone(),
            draining: req.drain,
            at_ms: now_ms(),
        })
        .await?;
        tracing::warn!(member = %req.member, drain = req.drain, "drain changed by operator");
        // committed; this member's replica may apply it a moment later
        let mut draining = self.svc().ledger.settings().await.draining;
        if req.drain {
            draining.insert(req.member);
        } else {
            draining.remove(&req.member);
        }
        Ok(pb::DrainReply {
            draining: draining.into_iter().collect(),
        })
    }

    pub(super) async fn rebalance(&self, operator: &str) -> Result<pb::RebalanceReply, Status> {
        let ledger = &self.svc().ledger;
        let live = ledger.live_members(now_ms(), LIVE_WINDOW_MS).await;
        let mut released = 0u64;
        // claims of members that are not live, found in one pass without copying the ledger
        let mut stranded = Vec::new();
        ledger
            .scan(&mut |r| {
                if let (EnrollState::Claimed, Some(owner)) = (r.state, &r.owner) {
                    if !live.contains(owner) {
                        stranded.push((r.identity.clone(), owner.clone()));
                    }
                }
            })
            .await;
        for (identity, owner) in stranded {
            let cmd = Command::Reassign {
                identity,
                from: owner.clone(),
                member: self.actor(operator),
                reason: format!("rebalanced: {owner} is not live or is draining"),
                at_ms: now_ms(),
            };
            if self.propose(cmd).await? == Applied::Ok {
                released += 1;
            }
        }
        self.propose(Command::Rebalance { at_ms: now_ms() }).await?;
        tracing::warn!(released, ?live, "rebalance requested by operator");
        Ok(pb::RebalanceReply {
            released,
            live_members: live,
        })
    }

    pub(super) async fn set_paused(
        &self,
        paused: bool,
        who: &str,
    ) -> Result<pb::PauseReply, Status> {
        self.propose(Command::SetPaused {
            paused,
            at_ms: now_ms(),
        })
        .await?;
        tracing::warn!(paused, operator = %who, "provisioning pause changed by operator");
        // committed; this member's replica may apply it a moment later
        Ok(pb::PauseReply { paused })
    }
}
