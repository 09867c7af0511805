//! Membership changes: a learner added, promoted to voter, a member removed. The leader
//! carries them out; this member forwards them to it.

use proto::grpc::admin as pb;
use raft::admin::{ChangeError, MembershipChange, MembershipOutcome};
use raft::types::Member;
use tonic::Status;

use super::AdminApi;

impl AdminApi {
    pub(super) async fn add_learner(
        &self,
        a: pb::AddMemberRequest,
        who: &str,
    ) -> Result<pb::MembershipReply, Status> {
        if a.id == 0 {
            return Err(Status::invalid_argument("id must be a positive number"));
        }
        if !proto::subject::is_valid_identity(&a.name) {
            return Err(Status::invalid_argument(format!(
                "name {:?} is not a valid member name",
                a.name
            )));
        }
        let addr_ok = |s: &str| {
            s.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        };
        if !addr_ok(&a.raft_addr) {
            return Err(Status::invalid_argument(format!(
                "raft_addr {:?} is not host:port",
                a.raft_addr
            )));
        }
        if !a.admin_addr.is_empty() && !addr_ok(&a.admin_addr) {
            return Err(Status::invalid_argument(format!(
                "admin_addr {:?} is not host:port",
                a.admin_addr
            )));
        }
        let member = self.member()?;
        tracing::warn!(id = a.id, name = %a.name, operator = %who, "adding learner");
        member
            .change_membership(MembershipChange::AddLearner {
                id: a.id,
                member: Member {
                    name: a.name,
                    raft_addr: a.raft_addr,
                    admin_addr: a.admin_addr,
                },
            })
            .await
            .map(membership_reply)
            .map_err(change_status)
    }

    pub(super) async fn promote_learner(
        &self,
        id: u64,
        who: &str,
    ) -> Result<pb::MembershipReply, Status> {
        let member = self.member()?;
        tracing::warn!(id, operator = %who, "promoting learner");
        member
            .change_membership(MembershipChange::Promote { id })
            .await
            .map(membership_reply)
            .map_err(change_status)
    }

    pub(super) async fn remove(
        &self,
        a: pb::RemoveMemberRequest,
        who: &str,
    ) -> Result<pb::MembershipReply, Status> {
        let member = self.member()?;
        tracing::warn!(id = a.id, force = a.force, operator = %who, "removing member");
        member
            .change_membership(MembershipChange::Remove {
                id: a.id,
                force: a.force,
            })
            .await
            .map(membership_reply)
            .map_err(change_status)
    }
}

fn change_status(e: ChangeError) -> Status {
    match e {
        ChangeError::Invalid(m) | ChangeError::Quorum(m) => Status::failed_precondition(m),
        ChangeError::Unavailable(m) => Status::unavailable(m),
    }
}

fn membership_reply(o: MembershipOutcome) -> pb::MembershipReply {
    pb::MembershipReply {
        message: o.message,
        voters: o.voters,
        learners: o.learners,
    }
}
