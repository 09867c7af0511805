//! The interface between the provisioning pipeline and the replicated state.
//!
//! The pipeline proposes a [`Command`] and gets back whether it applied; it never writes the
//! state directly. A single process uses [`crate::LocalLedger`]; a cluster member submits the
//! same commands to the Raft log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::command::Command;
use crate::network::PeerError;
use crate::state::{ClusterSettings, LedgerCounts, Record, Rejection};
use crate::types::NodeId;

/// The result of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Applied {
    Ok,
    Rejected(Rejection),
}

/// Why a proposal has no result. Cloned to every command of a batch that failed together,
/// so sources are shared.
#[derive(Debug, Clone, Error)]
pub enum LedgerError {
    /// The command could not be made durable (storage or replication failure). Whether it
    /// applied is unknown; the caller must not deliver anything that depends on it.
    #[error("ledger unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    /// The leader refuses this member's commands (it was removed from the group); nothing
    /// applied, and nothing will until an operator adds it again.
    #[error("refused by the leader: {}", .0.message())]
    Refused(#[source] Arc<tonic::Status>),
}

/// Why a command could not be made durable.
#[derive(Debug, Clone, Error)]
pub enum Unavailable {
    /// This member's ledger stopped (it is shutting down, or Raft ended on an error).
    #[error("ledger stopped")]
    Stopped,
    /// The command alone is larger than a log entry may be.
    #[error("command of about {bytes} bytes is larger than a log entry may be")]
    TooLarge { bytes: usize },
    /// The leader answered a batch with a different number of results.
    #[error("{got} results for {sent} commands")]
    Results { got: usize, sent: usize },
    /// No leader was known until the proposal's time ran out.
    #[error("no leader")]
    NoLeader,
    /// This member leads, and the entry was not committed in time.
    #[error("not committed within {0:?}")]
    NotCommitted(Duration),
    /// The leader changed under the proposal, and no new one took it in time.
    #[error("leader moved to {}", .0.map_or("none".to_string(), |id| id.to_string()))]
    LeaderMoved(Option<NodeId>),
    /// The leader could not be reached, or did not answer.
    #[error("forwarding to the leader: {0}")]
    Forward(#[source] Arc<PeerError>),
    /// Raft could not write the entry.
    #[error("raft: {0}")]
    Raft(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Proposes `cmd`; returns once it is applied (and durable, for durable ledgers).
    async fn propose(&self, cmd: Command) -> Result<Applied, LedgerError>;

    /// The record of one server, as last applied on this member.
    async fn record(&self, identity: &str) -> Option<Record>;

    /// A copy of every record, as last applied on this member (tests, small ledgers; a sweep
    /// over a large one uses [`Ledger::scan`] or [`Ledger::page`]).
    async fn records(&self) -> Vec<Record>;

    /// Shows `visit` every record in identity order, under this member's read of the
    /// ledger, without copying any: what a sweep over a large ledger (the CRL, a reprovision
    /// selection) uses to keep only what it needs.
    async fn scan(&self, visit: &mut (dyn for<'r> FnMut(&'r Record) + Send));

    /// A page of the records `filter` keeps after identity `after`, with how many match in
    /// all when `count` (see `LedgerState::page`).
    async fn page(
        &self,
        after: &str,
        limit: usize,
        count: bool,
        filter: crate::state::Filter<'_>,
    ) -> crate::state::Page;

    /// Digest of the ledger as last applied on this member (see `LedgerState::digest`).
    async fn digest(&self) -> String;

    /// Members that take work: a heartbeat within `window_ms` of `now_ms`, not draining.
    async fn live_members(&self, now_ms: u64, window_ms: u64) -> Vec<String>;

    /// Records by state and the number `member` holds a claim on.
    async fn counts(&self, member: &str) -> LedgerCounts;

    /// The replicated cluster settings (paused, draining members).
    async fn settings(&self) -> ClusterSettings;

    /// Last heartbeat (Unix ms) of every member that ever sent one.
    async fn heartbeats(&self) -> std::collections::BTreeMap<String, u64>;

    /// Failed records that never held a credential, unchanged since `before_ms` (at most
    /// `limit`): candidates for `Forget`.
    async fn forgettable(&self, before_ms: u64, limit: usize) -> Vec<String>;
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn errors_say_why_and_keep_their_source() {
        let refused = LedgerError::Refused(Arc::new(tonic::Status::permission_denied(
            "prov9 is not a member",
        )));
        assert_eq!(
            refused.to_string(),
            "refused by the leader: prov9 is not a member"
        );
        assert!(refused.source().is_some());

        let peer = PeerError::from(tonic::Status::unavailable("connection refused"));
        let e = LedgerError::from(Unavailable::Forward(Arc::new(peer)));
        assert!(e
            .to_string()
            .starts_with("ledger unavailable: forwarding to the leader: "));
        // ledger error -> unavailable -> peer error -> the gRPC status
        let mut chain = Vec::new();
        let mut next = e.source();
        while let Some(s) = next {
            chain.push(s.to_string());
            next = s.source();
        }
        assert_eq!(chain.len(), 3, "{chain:?}");
        assert!(chain[2].contains("connection refused"), "{chain:?}");

        assert_eq!(
            LedgerError::from(Unavailable::LeaderMoved(Some(2))).to_string(),
            "ledger unavailable: leader moved to 2"
        );
        assert_eq!(
            LedgerError::from(Unavailable::TooLarge { bytes: 9 }).to_string(),
            "ledger unavailable: command of about 9 bytes is larger than a log entry may be"
        );
    }
}
