//! The interface between the provisioning pipeline and the replicated state.
//!
//! The pipeline proposes a [`Command`] and gets back whether it applied; it never writes the
//! state directly. A single process uses [`crate::LocalLedger`]; a cluster member submits the
//! same commands to the Raft log.

use async_trait::async_trait;
use thiserror::Error;

use crate::command::Command;
use crate::state::{ClusterSettings, LedgerCounts, Record, Rejection};

/// The result of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Applied {
    Ok,
    Rejected(Rejection),
}

#[derive(Debug, Clone, Error)]
pub enum LedgerError {
    /// The command could not be made durable (storage or replication failure). Whether it
    /// applied is unknown; the caller must not deliver anything that depends on it.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// The leader refuses this member's commands (it was removed from the group); nothing
    /// applied, and nothing will until an operator adds it again.
    #[error("refused by the leader: {0}")]
    Refused(String),
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
