//! A ledger wrapper that measures how long each proposal takes to commit and apply, by
//! command kind: the cluster's write latency as the pipeline sees it. The same times set how
//! many flows this member runs at once ([`crate::pace`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use raft::command::Command;
use raft::ledger::{Applied, Ledger, LedgerError};
use raft::state::{ClusterSettings, LedgerCounts, Record};

use crate::metrics::Metrics;
use crate::pace::Pace;

pub struct TimedLedger {
    inner: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
    pace: Arc<Pace>,
}

impl TimedLedger {
    pub fn wrap(inner: Arc<dyn Ledger>, metrics: Arc<Metrics>, pace: Arc<Pace>) -> Arc<dyn Ledger> {
        Arc::new(TimedLedger {
            inner,
            metrics,
            pace,
        })
    }
}

#[async_trait]
impl Ledger for TimedLedger {
    async fn propose(&self, cmd: Command) -> Result<Applied, LedgerError> {
        let kind = cmd.kind();
        let start = Instant::now();
        let r = self.inner.propose(cmd).await;
        let took = start.elapsed();
        // a failure after a long wait is as much a sign of strain as a slow commit
        self.pace.observe(took, Instant::now());
        // failed proposals are counted apart: their time is a timeout, not a commit
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .ledger_commit_time
            .with_label_values(&[self.metrics.site(), kind, result])
            .observe(took.as_secs_f64());
        r
    }
    async fn record(&self, identity: &str) -> Option<Record> {
        self.inner.record(identity).await
    }
    async fn records(&self) -> Vec<Record> {
        self.inner.records().await
    }
    async fn scan(&self, visit: &mut (dyn for<'r> FnMut(&'r Record) + Send)) {
        self.inner.scan(visit).await
    }
    async fn page(
        &self,
        after: &str,
        limit: usize,
        count: bool,
        filter: raft::state::Filter<'_>,
    ) -> raft::state::Page {
        self.inner.page(after, limit, count, filter).await
    }
    async fn digest(&self) -> String {
        self.inner.digest().await
    }
    async fn live_members(&self, now_ms: u64, window_ms: u64) -> Vec<String> {
        self.inner.live_members(now_ms, window_ms).await
    }
    async fn counts(&self, member: &str) -> LedgerCounts {
        self.inner.counts(member).await
    }
    async fn settings(&self) -> ClusterSettings {
        self.inner.settings().await
    }
    async fn heartbeats(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner.heartbeats().await
    }
    async fn forgettable(&self, before_ms: u64, limit: usize) -> Vec<String> {
        self.inner.forgettable(before_ms, limit).await
    }
}
