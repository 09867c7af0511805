//! A ledger kept in one process: the state machine behind a mutex, for a provisioner that runs
//! alone and for tests of the pipeline.

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::command::Command;
use crate::ledger::{Applied, Ledger, LedgerError};
use crate::state::{ClusterSettings, LedgerCounts, LedgerState, Record};

pub struct LocalLedger {
    state: Mutex<LedgerState>,
}

impl Default for LocalLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLedger {
    /// An empty ledger applying this build's newest rules: nobody else applies it.
    pub fn new() -> Self {
        let mut state = LedgerState::default();
        let _ = state.apply(&Command::SetRules {
            rules: crate::state::LEDGER_RULES,
            at_ms: 0,
        });
        LocalLedger {
            state: Mutex::new(state),
        }
    }
}

#[async_trait]
impl Ledger for LocalLedger {
    async fn propose(&self, cmd: Command) -> Result<Applied, LedgerError> {
        Ok(match self.state.lock().await.apply(&cmd.bounded()) {
            Ok(()) => Applied::Ok,
            Err(r) => Applied::Rejected(r),
        })
    }

    async fn record(&self, identity: &str) -> Option<Record> {
        self.state.lock().await.record(identity)
    }

    async fn records(&self) -> Vec<Record> {
        self.state.lock().await.all_records()
    }

    async fn scan(&self, visit: &mut (dyn for<'r> FnMut(&'r Record) + Send)) {
        let state = self.state.lock().await;
        let read = state.for_each("", &Default::default(), &mut |r| {
            visit(r);
            true
        });
        if let Err(e) = read {
            tracing::error!(error = %e, "cannot read the ledger");
        }
    }

    async fn page(
        &self,
        after: &str,
        limit: usize,
        count: bool,
        filter: crate::state::Filter<'_>,
    ) -> crate::state::Page {
        self.state.lock().await.page(after, limit, count, filter)
    }

    async fn digest(&self) -> String {
        self.state.lock().await.digest()
    }

    async fn live_members(&self, now_ms: u64, window_ms: u64) -> Vec<String> {
        self.state.lock().await.live_members(now_ms, window_ms)
    }

    async fn counts(&self, member: &str) -> LedgerCounts {
        self.state.lock().await.counts(member)
    }

    async fn settings(&self) -> ClusterSettings {
        self.state.lock().await.settings().clone()
    }

    async fn heartbeats(&self) -> std::collections::BTreeMap<String, u64> {
        self.state.lock().await.heartbeats().clone()
    }

    async fn forgettable(&self, before_ms: u64, limit: usize) -> Vec<String> {
        self.state.lock().await.forgettable(before_ms, limit)
    }
}
