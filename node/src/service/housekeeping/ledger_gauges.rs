//! The ledger as gauges: servers this member owns (recorded, or in a flow right now), the
//! revocations, and records by enrollment state.

use std::collections::BTreeMap;

use raft::EnrollState;

use crate::context::Services;

/// Sets the gauges from this tick's `counts`.
pub(super) fn export(svc: &Services, counts: &raft::LedgerCounts) {
    let m = &svc.metrics;
    m.set(
        &m.owned,
        (counts.owned_by_member + svc.flows.in_progress()) as i64,
    );
    m.set(&m.revoked, counts.revoked as i64);
    let by_state: BTreeMap<&str, i64> = counts
        .by_state
        .iter()
        .map(|(s, n)| (s.name(), *n as i64))
        .collect();
    for s in EnrollState::ALL {
        m.ledger_records
            .with_label_values(&[m.site(), s.name()])
            .set(by_state.get(s.name()).copied().unwrap_or(0));
    }
}
