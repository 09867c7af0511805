//! The group as a member sees and changes it: its membership (learners, voters, removals,
//! carried out on the leader wherever it is) and every member's own view of it.

use std::collections::BTreeSet;

use super::{leader_of, MemberError, RaftMember};
use crate::admin::{ChangeError, ExtraFn, MembershipChange, MembershipOutcome, PeerView};
use crate::network::PeerError;
use crate::types::{Member, NodeId};

impl RaftMember {
    /// Adds `member` as a learner and waits until it has caught up with the log (through a
    /// snapshot when the log was compacted). Must be called on the leader.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), MemberError> {
        self.raft
            .add_learner(id, member, true)
            .await
            .map(|_| ())
            .map_err(MemberError::change)
    }

    /// Makes learner `id` a voter. Must be called on the leader.
    pub async fn promote(&self, id: NodeId) -> Result<(), MemberError> {
        let mut voters = self.voters();
        voters.insert(id);
        self.set_voters(voters).await
    }

    /// Removes `id` from the group (voter or learner). Must be called on the leader.
    pub async fn remove(&self, id: NodeId) -> Result<(), MemberError> {
        let mut voters = self.voters();
        if voters.remove(&id) {
            self.set_voters(voters).await?;
        }
        // once not a voter, dropping it from the nodes removes the learner too
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false)
            .await
            .map(|_| ())
            .map_err(MemberError::change)
    }

    /// Voter ids of the committed membership.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    async fn set_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), MemberError> {
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(MemberError::change)
    }

    /// Sets what this member adds to its view for peers and operators (once).
    pub fn set_extra(&self, extra: ExtraFn) {
        let _ = self.ctx.extra.set(extra);
    }

    /// This member's own view.
    pub async fn view(&self) -> PeerView {
        self.ctx.view().await
    }

    /// Every member's view, asked concurrently; `Err` for members that did not answer.
    pub async fn views(&self) -> Vec<(NodeId, Member, Result<PeerView, PeerError>)> {
        let nodes: Vec<(NodeId, Member)> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let asks = nodes.into_iter().map(|(id, node)| async move {
            let view = if id == self.id {
                Ok(self.view().await)
            } else {
                match tokio::time::timeout(crate::admin::PEEK_TIMEOUT, self.network.peek(&node))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::NoAnswer),
                }
            };
            (id, node, view)
        });
        futures::future::join_all(asks).await
    }

    /// Carries out a membership change on the leader, wherever it is.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipOutcome, ChangeError> {
        match self.leader() {
            Some((id, _)) if id == self.id => self.ctx.change(change).await,
            Some((_, node)) => self
                .network
                .membership(&node, &change)
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?,
            None => Err(ChangeError::Unavailable("no leader".into())),
        }
    }

    /// The current leader, as this member knows it.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        leader_of(&self.raft)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }
}
