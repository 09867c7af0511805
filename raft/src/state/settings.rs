//! The cluster's replicated settings (pause, draining, rules, ownership) and what the ledger
//! keeps of its members: their heartbeats and who departed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::LedgerState;

fn rules_v1() -> u32 {
    1
}

/// Replicated switches operators flip for the whole cluster.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub paused: bool,
    pub draining: std::collections::BTreeSet<String>,
    /// Bumped by every rebalance request; members rediscover when it changes.
    #[serde(default)]
    pub rebalance_epoch: u64,
    /// Members removed from the group and not added back since: their certificates are
    /// refused on the Raft port, joining included (see `authz`).
    #[serde(default)]
    pub departed: std::collections::BTreeSet<String>,
    /// The ledger rules every replica applies (see [`LEDGER_RULES`](super::LEDGER_RULES)); ledgers written before
    /// the setting existed apply rules 1.
    #[serde(default = "rules_v1")]
    pub rules: u32,
    /// Ownership epochs (rules 6).
    #[serde(default, skip_serializing_if = "is_default")]
    pub ownership: crate::ownership::Ownership,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl LedgerState {
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The rules this ledger applies now.
    pub fn rules(&self) -> u32 {
        self.settings.rules.max(1)
    }

    /// Last heartbeat of every member that ever sent one.
    pub fn heartbeats(&self) -> &BTreeMap<String, u64> {
        &self.heartbeats
    }

    /// Forgets the heartbeats of members not in `names` (they left the group), so nobody counts
    /// them live until their window runs out.
    pub fn retain_heartbeats(&mut self, names: &BTreeSet<String>) -> bool {
        let before = self.heartbeats.len();
        self.heartbeats.retain(|m, _| names.contains(m));
        self.heartbeats.len() != before
    }

    /// Notes a membership change from member names `before` to `after`: who left is
    /// departed, who is (back) in is not. True when that changed anything.
    pub fn note_membership(&mut self, before: &BTreeSet<String>, after: &BTreeSet<String>) -> bool {
        let acks = self.settings.ownership.acked.len();
        self.settings.ownership.retain(after);
        let departed = &mut self.settings.departed;
        let was = departed.clone();
        departed.extend(before.difference(after).cloned());
        departed.retain(|n| !after.contains(n));
        *departed != was || self.settings.ownership.acked.len() != acks
    }

    /// Members that take work: a heartbeat within `window_ms` of `now_ms` and not draining;
    /// sorted.
    pub fn live_members(&self, now_ms: u64, window_ms: u64) -> Vec<String> {
        self.heartbeats
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) <= window_ms)
            .filter(|(m, _)| !self.settings.draining.contains(*m))
            .map(|(m, _)| m.clone())
            .collect()
    }
}
