//! A member's status for metrics and operators, read without reaching into openraft: a
//! [`RaftStatus`] snapshot of what Raft reports, a [`LeaderWatch`] that follows the leader,
//! and the store's copies ([`RaftMember::checkpoint`]) and snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use openraft::{RaftMetrics, ServerState, StorageError};
use serde::Serialize;
use tokio::sync::watch;

use super::{MemberError, RaftMember};
use crate::network::{Network, Raft};
use crate::store::{SnapshotStats, Store};
use crate::types::{Member, NodeId};

/// What a member is in its group now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// Raft has stopped.
    Shutdown,
}

impl Role {
    fn of(state: ServerState) -> Role {
        match state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// One reading of a member's Raft state, for metrics, `/status` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    /// The leader as this member knows it.
    pub leader: Option<NodeId>,
    /// The last entry in this member's log (`None` before the first).
    pub last_log_index: Option<u64>,
    /// The last entry applied to its ledger.
    pub last_applied: Option<u64>,
    /// The last entry its current snapshot holds.
    pub snapshot_index: Option<u64>,
    /// The last entry purged from its log (a snapshot holds it).
    pub purged_index: Option<u64>,
    /// The membership's voters and learners, and every member's addresses.
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub members: BTreeMap<NodeId, Member>,
    /// On the leader only: how many entries each member's log is behind the leader's last one
    /// (`None`: nothing replicated to it yet). Empty elsewhere.
    pub lags: BTreeMap<NodeId, Option<u64>>,
    /// The last snapshot built or installed since this member started.
    pub snapshot: Option<SnapshotStats>,
}

impl RaftStatus {
    fn of(m: &RaftMetrics<NodeId, Member>, snapshot: Option<SnapshotStats>) -> RaftStatus {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        RaftStatus {
            id: m.id,
            role: Role::of(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            learners: membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| !voters.contains(id))
                .collect(),
            voters,
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            lags: m
                .replication
                .iter()
                .flatten()
                .map(|(id, matched)| (*id, matched.map(|l| last.saturating_sub(l.index))))
                .collect(),
            snapshot,
        }
    }

    /// Whether this member knows a leader and has applied every entry it holds: a member that
    /// is behind (just restarted, or cut off) reads an older ledger.
    pub fn caught_up(&self) -> bool {
        self.leader.is_some() && self.last_applied >= self.last_log_index
    }

    /// The member named `name`, by the membership.
    pub fn member_named(&self, name: &str) -> Option<(NodeId, &Member)> {
        self.members
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, m)| (*id, m))
    }
}

/// Follows who leads the group, as a member knows it; cheap to clone and to hold in a hook.
/// It changes with the role, vote, leader or membership only, not with every entry.
#[derive(Clone)]
pub struct LeaderWatch {
    rx: watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, Member>>,
    /// `next` has not answered yet: its first answer is the leader now.
    first: bool,
}

impl LeaderWatch {
    /// The leader now.
    pub fn current(&self) -> Option<NodeId> {
        self.rx.borrow().current_leader
    }

    /// The leader now on the first call, then each time the member's role, vote, leader or
    /// membership changed (the leader may be the same); `None` once Raft has stopped.
    pub async fn next(&mut self) -> Option<Option<NodeId>> {
        if !std::mem::take(&mut self.first) && self.rx.changed().await.is_err() {
            return None;
        }
        Some(self.rx.borrow_and_update().current_leader)
    }
}

/// Why a copy of the store could not be made.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CheckpointError(Box<StorageError<NodeId>>);

impl RaftMember {
    /// The member's store (its ledger, log and snapshots).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Its client side of the group's transport.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// openraft itself, for this crate's own group tests (terms, snapshots, purges); other
    /// crates read [`RaftMember::status`] and [`RaftMember::leader_watch`], and the workspace
    /// test checks `node` never names openraft.
    #[doc(hidden)]
    pub fn openraft(&self) -> &Raft {
        &self.raft
    }

    /// What Raft reports now, with the last snapshot.
    pub fn status(&self) -> RaftStatus {
        let snapshot = self.store.last_snapshot();
        RaftStatus::of(&self.raft.metrics().borrow(), snapshot)
    }

    /// Follows the leader (see [`LeaderWatch`]).
    pub fn leader_watch(&self) -> LeaderWatch {
        LeaderWatch {
            rx: self.raft.server_metrics(),
            first: true,
        }
    }

    /// A consistent copy of this member's whole store in `dest`, which must not exist yet
    /// (see [`Store::checkpoint`](crate::store::Store::checkpoint)). Blocking: it flushes
    /// and links files.
    pub fn checkpoint(&self, dest: &Path) -> Result<(), CheckpointError> {
        self.store
            .checkpoint(dest)
            .map_err(|e| CheckpointError(Box::new(e)))
    }

    /// Builds a snapshot of this member's state machine now (an operator compacting the log,
    /// or measuring) and waits up to `timeout` for it.
    pub async fn snapshot_now(
        &self,
        timeout: std::time::Duration,
    ) -> Result<crate::store::SnapshotStats, MemberError> {
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| MemberError::Fatal(Box::new(e)))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.store.last_snapshot() {
                Some(s) if s.index >= applied => return Ok(s),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(MemberError::SnapshotTimeout {
                        index: applied,
                        timeout,
                    })
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_of_one_reports_itself_leader_caught_up_and_copies_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let member = RaftMember::start(MemberConfig::alone("alone", dir.path().to_path_buf()))
            .await
            .unwrap();
        member.start_alone().await.unwrap();
        let mut leaders = member.leader_watch();
        assert_eq!(leaders.current(), Some(1));
        assert_eq!(leaders.next().await, Some(Some(1)));

        // the leader's first entry applies a moment after it is elected
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !member.status().caught_up() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let s = member.status();
        assert_eq!((s.id, s.role, s.leader), (1, Role::Leader, Some(1)));
        assert!(s.term >= 1 && s.caught_up(), "{s:?}");
        assert_eq!(s.voters, BTreeSet::from([1]));
        assert!(s.learners.is_empty());
        assert_eq!(s.member_named("alone").map(|(id, _)| id), Some(1));
        assert!(s.member_named("other").is_none());
        assert_eq!(s.lags.get(&1), Some(&Some(0)), "{s:?}");
        assert!(s.snapshot.is_none());

        let built = member
            .snapshot_now(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(member.status().snapshot, Some(built));

        let copy = dir.path().join("copy");
        member.checkpoint(&copy).unwrap();
        assert!(member.checkpoint(&copy).is_err(), "the destination exists");
        member.shutdown().await;
        let opened = crate::store::Store::open(&copy).unwrap();
        assert_eq!(
            opened.state().await.last_applied.map(|l| l.index),
            s.last_applied
        );
    }
}
