//! What operators ask of the group itself: each member's own view of it (for status), and
//! membership changes, which only the leader carries out and which are refused when the
//! voters left healthy afterwards could not form a quorum.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::{Network, Raft};
use crate::store::Store;
use crate::types::{Member, NodeId};

/// How long a member gets to answer a peek; no answer means unhealthy.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long adding a learner waits for it to catch up before answering.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// What the provisioner adds to a member's view (its work, version, pause); JSON.
pub type ExtraFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A member's own view of itself and the group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub id: NodeId,
    pub name: String,
    /// leader, follower, learner or candidate.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub digest: String,
    /// The newest ledger rules this member's build applies (0 from builds before rules).
    #[serde(default)]
    pub rules: u32,
    pub extra: serde_json::Value,
}

/// A change of the group's membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    AddLearner { id: NodeId, member: Member },
    Promote { id: NodeId },
    Remove { id: NodeId, force: bool },
}

/// The group after a change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipOutcome {
    pub message: String,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Why a change was not made.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeError {
    /// The request makes no sense for this group (unknown id, already a voter...).
    #[error("{0}")]
    Invalid(String),
    /// The change would leave too few healthy voters for a quorum.
    #[error("{0}")]
    Quorum(String),
    /// No leader, or Raft failed.
    #[error("{0}")]
    Unavailable(String),
}

/// Why a membership change run on its own task did not complete.
#[derive(Debug, thiserror::Error)]
enum DetachedError<E: std::error::Error + 'static> {
    #[error("{0}")]
    Change(#[source] E),
    #[error("membership change task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Runs a membership change to its end on its own task: an operator's call that times out or
/// is cancelled must not leave the group in the joint configuration half way.
async fn detached<F, E>(change: F) -> Result<(), DetachedError<E>>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    match tokio::spawn(change).await {
        Ok(r) => r.map_err(DetachedError::Change),
        Err(e) => Err(DetachedError::Task(e)),
    }
}

/// Told of every call refused on the Raft port: the call and the refusal's reason.
pub type RefusedFn = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Everything a member's gRPC service needs beyond Raft itself.
pub struct PeerContext {
    pub id: NodeId,
    pub me: Member,
    pub raft: Raft,
    pub store: Arc<Store>,
    pub network: Network,
    /// This member's queue of commands to commit; forwarded commands join it on the leader.
    pub proposer: crate::replicated::Proposer,
    pub extra: OnceLock<ExtraFn>,
    /// The members the configuration lists (empty: no list, anyone the CA certified).
    pub configured: std::collections::BTreeMap<NodeId, Member>,
    /// Callers have a certificate (mutual TLS); without, only loopback callers are served.
    pub tls: bool,
    pub on_refused: OnceLock<RefusedFn>,
    /// Takes the leader's discovery offers (unset: refused as unavailable).
    pub on_offer: OnceLock<crate::offer::OfferFn>,
    /// Answers borrow requests (unset: refused as unavailable).
    pub on_borrow: OnceLock<crate::borrow::BorrowFn>,
    /// Most milliseconds a forwarding member's clock may be off this one's (0: not checked).
    pub max_clock_skew_ms: u64,
    /// When each kind of refusal was last logged, so a removed member that keeps calling
    /// does not flood the log.
    /// Names of the certificates members called with lately.
    pub names: crate::authz::Names,
    pub refusals_logged: std::sync::Mutex<
        std::collections::HashMap<(&'static str, &'static str), std::time::Instant>,
    >,
}

impl PeerContext {
    /// This member's view.
    pub async fn view(&self) -> PeerView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voter = membership.voter_ids().any(|v| v == self.id);
        let role = if m.current_leader == Some(self.id) {
            "leader"
        } else if !voter {
            "learner"
        } else if matches!(m.state, openraft::ServerState::Candidate) {
            "candidate"
        } else {
            "follower"
        };
        PeerView {
            id: self.id,
            name: self.me.name.clone(),
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            digest: self.store.state().await.ledger.digest(),
            rules: crate::state::LEDGER_RULES,
            extra: self.extra.get().map(|f| f()).unwrap_or_default(),
        }
    }

    /// Carries out `change`; must run on the leader.
    pub async fn change(&self, change: MembershipChange) -> Result<MembershipOutcome, ChangeError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return Err(ChangeError::Unavailable(format!(
                "not the leader (the leader is {:?})",
                m.current_leader
            )));
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        // a change error crosses the wire as its text (see `ChangeError`)
        let raft_err = |e: &dyn std::error::Error| ChangeError::Unavailable(e.to_string());
        let message = match change {
            MembershipChange::AddLearner { id, member } => {
                if membership.get_node(&id).is_some() {
                    return Err(ChangeError::Invalid(format!("{id} is a member already")));
                }
                if let Some((other, _)) = membership.nodes().find(|(_, n)| n.name == member.name) {
                    return Err(ChangeError::Invalid(format!(
                        "member {other} already has the name {}",
                        member.name
                    )));
                }
                self.raft
                    .add_learner(id, member, false)
                    .await
                    .map_err(|e| raft_err(&e))?;
                if self.caught_up(id).await {
                    format!("{id} added as a learner and caught up")
                } else {
                    format!("{id} added as a learner; still catching up")
                }
            }
            MembershipChange::Promote { id } => {
                if membership.get_node(&id).is_none() {
                    return Err(ChangeError::Invalid(format!("{id} is not a member")));
                }
                if voters.contains(&id) {
                    return Err(ChangeError::Invalid(format!("{id} is a voter already")));
                }
                let mut after = voters.clone();
                after.insert(id);
                self.check_quorum(&voters, &after, false).await?;
                let raft = self.raft.clone();
                detached(async move { raft.change_membership(after, false).await.map(|_| ()) })
                    .await
                    .map_err(|e| raft_err(&e))?;
                format!("{id} is a voter")
            }
            MembershipChange::Remove { id, force } => {
                if membership.get_node(&id).is_none() {
                    return Err(ChangeError::Invalid(format!("{id} is not a member")));
                }
                let mut after = voters.clone();
                let voter = after.remove(&id);
                if voter {
                    if after.is_empty() {
                        return Err(ChangeError::Invalid("cannot remove the last voter".into()));
                    }
                    self.check_quorum(&voters, &after, force).await?;
                }
                let raft = self.raft.clone();
                detached(async move {
                    if voter {
                        raft.change_membership(after, false).await?;
                    }
                    // once not a voter, dropping it from the nodes removes the learner too
                    raft.change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false)
                        .await
                        .map(|_| ())
                })
                .await
                .map_err(|e| raft_err(&e))?;
                format!("{id} removed")
            }
        };
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        Ok(MembershipOutcome {
            message,
            learners: membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| !voters.contains(id))
                .collect(),
            voters: voters.into_iter().collect(),
        })
    }

    /// Refuses to go from voters `before` to `after` unless a majority of each answers a peek
    /// now: the joint configuration in between commits only with both majorities, and until
    /// it does the group takes no writes. With `force` the check is skipped and the change
    /// waits for the majorities to come back.
    async fn check_quorum(
        &self,
        before: &BTreeSet<NodeId>,
        after: &BTreeSet<NodeId>,
        force: bool,
    ) -> Result<(), ChangeError> {
        if force {
            tracing::warn!(
                ?before,
                ?after,
                "membership change forced: quorum check skipped"
            );
            return Ok(());
        }
        let nodes = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let mut down = BTreeSet::new();
        for id in before.union(after) {
            if *id == self.id {
                continue;
            }
            let ok = match nodes.get_node(id) {
                Some(node) => tokio::time::timeout(PEEK_TIMEOUT, self.network.peek(node))
                    .await
                    .is_ok_and(|r| r.is_ok()),
                None => false,
            };
            if !ok {
                down.insert(*id);
            }
        }
        for (when, set) in [("now", before), ("after the change", after)] {
            let healthy = set.iter().filter(|id| !down.contains(id)).count();
            let quorum = set.len() / 2 + 1;
            if healthy < quorum {
                return Err(ChangeError::Quorum(format!(
                    "{when} {healthy} of {} voters are healthy (unreachable: {down:?}); \
                     the change commits only with a quorum of {quorum} there; \
                     use force to wait for it",
                    set.len()
                )));
            }
        }
        Ok(())
    }

    /// Waits (bounded) until learner `id` has replicated the leader's log.
    async fn caught_up(&self, id: NodeId) -> bool {
        let mut metrics = self.raft.metrics();
        tokio::time::timeout(CATCH_UP_WAIT, async {
            loop {
                let done = {
                    let m = metrics.borrow();
                    let last = m.last_log_index.unwrap_or(0);
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|l| l.index >= last)
                };
                if done || metrics.changed().await.is_err() {
                    return done;
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}
