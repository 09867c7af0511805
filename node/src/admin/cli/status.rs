//! `status` (the cluster and each member's work) and `members` (how to reach each member).

use std::collections::BTreeSet;

use proto::grpc::admin as pb;

use super::render::{pretty, table, yes, Outcome, Render};
use super::{Client, Failure};

/// The status reply, shown whole (`status`) or as the members only (`members`).
pub(super) struct Status {
    pub(super) reply: pb::StatusReply,
    pub(super) members_only: bool,
}

pub(super) async fn status(client: &mut Client, members_only: bool) -> Result<Outcome, Failure> {
    let reply = client.status(pb::StatusRequest {}).await?.into_inner();
    Ok(Outcome::reply(Status {
        reply,
        members_only,
    }))
}

impl Render for Status {
    fn table(&self) -> String {
        let s = &self.reply;
        let mut out = Vec::new();
        if !self.members_only {
            out.push(format!(
                "cluster {}  leader {} (id {})  term {}  paused {}  answered by {} (v{})",
                s.cluster,
                if s.leader.is_empty() { "-" } else { &s.leader },
                s.leader_id,
                s.term,
                s.paused,
                s.answered_by,
                s.version
            ));
        }
        out.push(if self.members_only {
            members_table(s)
        } else {
            work_table(s)
        });
        if !self.members_only {
            out.extend(ledger_lines(s));
        }
        out.join("\n")
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(&self.reply)
    }
}

/// Where each member is reached and how far it has applied the log.
fn members_table(s: &pb::StatusReply) -> String {
    let mut t = table(&[
        "ID",
        "NAME",
        "ROLE",
        "VOTER",
        "HEALTHY",
        "TERM",
        "APPLIED",
        "RAFT ADDR",
        "ADMIN ADDR",
        "ERROR",
    ]);
    for m in &s.members {
        t.add_row(vec![
            m.id.to_string(),
            m.name.clone(),
            m.role.clone(),
            yes(m.voter),
            yes(m.healthy),
            m.term.to_string(),
            m.last_applied.to_string(),
            m.raft_addr.clone(),
            m.admin_addr.clone(),
            m.error.clone(),
        ]);
    }
    t.to_string()
}

/// What each member does: live, draining, paused, and the servers it works on.
fn work_table(s: &pb::StatusReply) -> String {
    let mut t = table(&[
        "ID",
        "NAME",
        "ROLE",
        "VOTER",
        "HEALTHY",
        "LIVE",
        "DRAINING",
        "PAUSED",
        "APPLIED",
        "OWNED",
        "QUEUED",
        "IN FLIGHT",
        "RETRY",
    ]);
    for m in &s.members {
        t.add_row(vec![
            m.id.to_string(),
            m.name.clone(),
            m.role.clone(),
            yes(m.voter),
            yes(m.healthy),
            yes(m.live),
            if m.drained {
                "done".to_string()
            } else {
                yes(m.draining)
            },
            yes(m.paused),
            m.last_applied.to_string(),
            m.owned.to_string(),
            m.queued.to_string(),
            m.in_flight.to_string(),
            m.waiting_retry.to_string(),
        ]);
    }
    t.to_string()
}

/// The ledger's counts, and a note when the members' ledgers differ.
fn ledger_lines(s: &pb::StatusReply) -> Vec<String> {
    let mut states: Vec<_> = s.ledger_by_state.iter().collect();
    states.sort();
    let line: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let mut out = vec![format!(
        "ledger: {} records ({}); {} revoked credentials",
        s.ledger_records,
        line.join(", "),
        s.revoked_credentials
    )];
    let digests: BTreeSet<&str> = s
        .members
        .iter()
        .filter(|m| !m.ledger_digest.is_empty())
        .map(|m| m.ledger_digest.as_str())
        .collect();
    if digests.len() > 1 {
        out.push(
            "note: members' ledgers differ right now (replication in progress or a member behind)"
                .into(),
        );
    }
    out
}
