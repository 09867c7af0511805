//! A member's Raft state as metrics: term, leader, log and voters each tick, leader changes
//! as they happen, and whether its ledger has caught up (a member that is behind must not
//! write the CRL from an older ledger).

use std::sync::Arc;

use raft::member::RaftMember;

use crate::metrics::Metrics;

/// Sets the Raft gauges from the member's status.
pub(super) fn export(m: &Metrics, member: &RaftMember) {
    let s = member.status();
    m.set(&m.raft_term, s.term as i64);
    m.set(&m.raft_leader, s.leader.unwrap_or(0) as i64);
    m.set(&m.raft_last_log_index, s.last_log_index.unwrap_or(0) as i64);
    m.set(&m.raft_last_applied, s.last_applied.unwrap_or(0) as i64);
    m.set(&m.raft_voters, s.voters.len() as i64);
}

/// Counts each new leader this member sees, from its leader watch, so elections
/// between two housekeeping ticks are counted too. Those change with the role, vote, leader
/// or membership only; the full metrics change with every turn of Raft's core (every entry,
/// reply and tick), and each change would wake this task on the flows' runtime.
pub(in crate::service) async fn watch_leader(member: Arc<RaftMember>, m: Arc<Metrics>) {
    let mut leaders = member.leader_watch();
    // the first leader seen counts too, even one elected before this task ran
    let mut last = None;
    while let Some(now) = leaders.next().await {
        if now != last {
            if now.is_some() {
                m.inc(&m.raft_leader_changes);
            }
            last = now;
        }
    }
}

/// Whether this member's ledger has applied every entry it holds and it knows a leader: a
/// member that is behind (just restarted, or cut off) would write a CRL from an older ledger.
pub(super) fn caught_up(m: &RaftMember) -> bool {
    m.status().caught_up()
}
