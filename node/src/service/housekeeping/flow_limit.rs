//! The flow limit ([`crate::pace`]) as gauges and counters, and in the log when it moved by a
//! tenth or more: the log shows strain without a line a tick.

use crate::context::Services;

/// What was last exported and said.
pub(super) struct FlowLimit {
    cuts_seen: u64,
    limit_said: usize,
}

impl FlowLimit {
    /// Starts from the configured workers, which the limit starts at too.
    pub fn new(workers: usize) -> FlowLimit {
        FlowLimit {
            cuts_seen: 0,
            limit_said: workers,
        }
    }

    pub fn export(&mut self, svc: &Services) {
        let m = &svc.metrics;
        let limit = svc.pace.limit();
        m.set(&m.flow_limit, limit as i64);
        if limit.abs_diff(self.limit_said) * 10 >= self.limit_said.max(1) {
            tracing::info!(limit, workers = svc.config.workers, "flow limit");
            self.limit_said = limit;
        }
        let cuts = svc.pace.cuts();
        m.flow_limit_cuts
            .with_label_values(&[m.site()])
            .inc_by(cuts.saturating_sub(self.cuts_seen));
        self.cuts_seen = cuts;
    }
}
