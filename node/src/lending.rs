//! Lending at the end of a fleet (ledger rules 7): a member that ran out of servers borrows
//! queued ones from a member that still has many, so the fleet ends when the cluster's work
//! does, not when the slowest member's share does.
//!
//! Shares come from the ownership epoch and do not follow load: with a fleet waiting, the
//! member with the largest share or the least CPU finishes last while the others idle (in a
//! capped 5-member run of 15,000 servers the leader finished its share 13 s before the
//! followers, a quarter of the run). Here the member that ran dry asks ([`borrow_when_dry`]);
//! the asked member ([`lend`]) takes out of its queue servers it owns and has not started,
//! commits a `Lend` naming the asker and answers with them; the asker queues them once its
//! own replica shows the loan. The rules that keep two members from driving one server are in
//! [`raft::ownership::Loan`] and [`crate::flows`].

use std::sync::Arc;
use std::time::Duration;

use raft::borrow::BorrowReply;
use raft::member::RaftMember;
use raft::ownership::MAX_LEND;
use raft::{Applied, Command};

use crate::clock::now_ms;
use crate::context::Services;
use crate::work::{Source, WorkQueue};

/// How often a member with work looks whether it ran dry.
const DRY_EVERY: Duration = Duration::from_millis(250);
/// How often a member without work looks whether it has some (it does not ask until then).
const IDLE_EVERY: Duration = Duration::from_secs(1);
/// A lent server is started within this long of its loan, or not at all by the borrower.
const START_WITHIN_MS: u64 = 10_000;
/// How long the borrower may drive a lent server (from the loan).
const LOAN_MS: u64 = 60_000;
/// Fewer than this is not worth a loan.
const MIN_LEND: usize = 8;
/// How long after a loan's end (and grace) its lender looks for servers left undone.
const TAKE_BACK_MARGIN_MS: u64 = 500;
/// How long a borrower waits for its replica to show a loan.
const SHOW_WITHIN: Duration = Duration::from_secs(5);
/// A member whose flow limit was cut within this long does not borrow.
const STRAINED: Duration = Duration::from_secs(10);

/// Answers `to`'s request for up to `want` servers: lends half of what this member has
/// queued (its flows in progress are its own), at most `want`, and only servers it owns and
/// has not started.
pub async fn lend(svc: Arc<Services>, queue: Arc<WorkQueue>, to: String, want: u32) -> BorrowReply {
    let m = &svc.metrics;
    let (queued, _, _) = queue.counts();
    let nothing = BorrowReply {
        lent: Vec::new(),
        queued: queued as u32,
    };
    let Some(epoch) = svc.flows.epoch().filter(|_| svc.flows.lending()) else {
        return nothing;
    };
    if to == svc.member || !epoch.members.contains(&to) || svc.is_paused() {
        m.loans.with_label_values(&[m.site(), "refused"]).inc();
        return nothing;
    }
    let n = lendable(queued, want as usize);
    if n < MIN_LEND {
        return nothing;
    }
    let now = now_ms();
    let (start_by_ms, until_ms) = (now + START_WITHIN_MS, now + LOAN_MS);
    let guard_until = until_ms + raft::ownership::LOAN_GRACE_MS;
    let taken = queue.take_for_loan(n, guard_until, |id| svc.flows.may_lend(id, now));
    if taken.len() < MIN_LEND {
        queue.restore(&taken);
        return nothing;
    }
    let cmd = Command::Lend {
        member: svc.member.clone(),
        to: to.clone(),
        epoch: epoch.epoch,
        identities: taken.iter().map(|(id, _)| id.clone()).collect(),
        start_by_ms,
        until_ms,
        at_ms: now,
    };
    let failed = |why: String| {
        tracing::info!(to, reason = %why, "servers not lent");
        m.loans.with_label_values(&[m.site(), "failed"]).inc();
        queue.restore(&taken);
        nothing.clone()
    };
    match svc.ledger.propose(cmd).await {
        Ok(Applied::Ok) => {
            tracing::info!(to, servers = taken.len(), "servers lent");
            m.loans
                .with_label_values(&[m.site(), "lent"])
                .inc_by(taken.len() as u64);
            tokio::spawn(take_back(
                svc.clone(),
                queue.clone(),
                to.clone(),
                taken.clone(),
                now,
                guard_until,
            ));
            BorrowReply {
                lent: taken,
                queued: queue.counts().0 as u32,
            }
        }
        Ok(Applied::Rejected(r)) => failed(r.to_string()),
        Err(e) => failed(e.to_string()),
    }
}

/// Once a loan has ended (`guard_until`, its end and the ledger's grace), queues again the
/// lent servers the ledger has heard nothing of since `lent_ms`: the borrower never got the
/// answer (its call timed out while the `Lend` committed), its replica did not show the loan
/// in time, or it did not start them. Without this they waited for the next discovery, a
/// minute and more, and a fleet's last servers with them.
async fn take_back(
    svc: Arc<Services>,
    queue: Arc<WorkQueue>,
    to: String,
    lent: Vec<(String, u64)>,
    lent_ms: u64,
    guard_until: u64,
) {
    // a moment past the end, so this member's clock is past the ledger's grace too
    let wait = guard_until.saturating_sub(now_ms()) + TAKE_BACK_MARGIN_MS;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut updated = Vec::with_capacity(lent.len());
    for (identity, _) in &lent {
        updated.push(svc.ledger.record(identity).await.map(|r| r.updated_ms));
    }
    let mut back = 0u64;
    for (identity, seen_ms) in undone(&lent, &updated, lent_ms) {
        if queue.offer_seen(identity, Source::Loan, seen_ms) {
            back += 1;
        }
    }
    if back > 0 {
        tracing::warn!(
            to,
            servers = back,
            "lent servers the borrower did not do queued again"
        );
        let m = &svc.metrics;
        m.loans
            .with_label_values(&[m.site(), "taken_back"])
            .inc_by(back);
    }
}

/// The lent servers (with when each was last seen) whose record was not changed since
/// `lent_ms`: `updated` holds each one's last change, `None` without a record.
fn undone<'a>(
    lent: &'a [(String, u64)],
    updated: &'a [Option<u64>],
    lent_ms: u64,
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    lent.iter()
        .zip(updated)
        .filter(move |(_, u)| !u.is_some_and(|at| at >= lent_ms))
        .map(|((id, seen), _)| (id.as_str(), *seen))
}

/// How many of `queued` servers to lend a member that wants `want`: half, so the two are
/// left with as many to start (a lender that kept a round of its own workers' worth ended
/// the fleet seconds after everyone else).
fn lendable(queued: usize, want: usize) -> usize {
    (queued / 2).min(want).min(MAX_LEND)
}

/// Once this member's queue ran dry with workers to spare, asks its peers in turn to lend it
/// servers, until one does; asks again when it runs dry again. A member that has had nothing
/// queued since it last asked does not ask: an idle cluster sends nothing.
pub async fn borrow_when_dry(svc: Arc<Services>, queue: Arc<WorkQueue>, member: Arc<RaftMember>) {
    let workers = svc.config.workers.max(1);
    let mut had_work = false;
    let mut seen_total = 0;
    let mut turn = 0usize;
    loop {
        tokio::time::sleep(if had_work { DRY_EVERY } else { IDLE_EVERY }).await;
        // servers queued since the last look, even ones already worked, count as work had
        let total = queue.queued_total();
        had_work |= total != seen_total;
        seen_total = total;
        if svc.is_paused() || !svc.flows.lending() {
            continue;
        }
        let (queued, in_flight, _) = queue.counts();
        if queued > 0 {
            continue;
        }
        let free = workers.saturating_sub(in_flight);
        if !had_work || free < workers / 2 {
            continue;
        }
        // a member whose writes were slow lately has no room for more (see `crate::pace`): a
        // capped leader that borrowed anyway did so every 2 s while its followers, whose
        // writes waited on it, were held at their least flow limit
        if svc.pace.cut_within(STRAINED, std::time::Instant::now()) {
            continue;
        }
        let Some(epoch) = svc.flows.epoch() else {
            continue;
        };
        let peers: Vec<&String> = epoch.members.iter().filter(|m| **m != svc.member).collect();
        let mut borrowed = false;
        for i in 0..peers.len() {
            let peer = peers[(turn + i) % peers.len()];
            let want = free.min(MAX_LEND) as u32;
            match member.borrow(peer, want).await {
                Ok(reply) if !reply.lent.is_empty() => {
                    take_up(&svc, &queue, peer, reply).await;
                    borrowed = true;
                    turn = turn.wrapping_add(i);
                    break;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(peer, error = %e, "could not ask to borrow"),
            }
        }
        if !borrowed {
            had_work = false;
            turn = turn.wrapping_add(1);
        }
    }
}

/// Queues the servers `from` lent this member once its replica shows the loan (the settings
/// follower takes it up within a fraction of a second).
async fn take_up(svc: &Arc<Services>, queue: &WorkQueue, from: &str, reply: BorrowReply) {
    let m = &svc.metrics;
    let Some((first, _)) = reply.lent.first() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + SHOW_WITHIN;
    while svc.flows.lent(first, now_ms()) != Some(true) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(from, "a loan did not show in this member's ledger in time");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut queued = 0u64;
    for (identity, seen_ms) in &reply.lent {
        if queue.offer_seen(identity, Source::Loan, *seen_ms) {
            queued += 1;
        }
    }
    tracing::info!(from, servers = queued, "servers borrowed");
    m.loans
        .with_label_values(&[m.site(), "borrowed"])
        .inc_by(queued);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_loan_only_servers_the_ledger_heard_nothing_of_go_back() {
        let lent: Vec<(String, u64)> = ["done", "never", "stale", "deferred"]
            .iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), i as u64))
            .collect();
        // enrolled by the borrower; no record at all; a record from before the loan; a
        // deferral the borrower recorded at the loan's very moment
        let updated = [Some(1_500), None, Some(999), Some(1_000)];
        let back: Vec<(&str, u64)> = undone(&lent, &updated, 1_000).collect();
        assert_eq!(back, vec![("never", 1), ("stale", 2)]);
    }

    #[test]
    fn a_member_lends_half_of_its_queue_at_most_what_was_asked() {
        assert_eq!(lendable(1000, 128), 128);
        assert_eq!(lendable(300, 512), 150);
        // no more than one command lends
        assert_eq!(lendable(100_000, 100_000), MAX_LEND);
        assert_eq!(lendable(1, 64), 0);
    }
}
