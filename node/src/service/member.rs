//! What a cluster member does for its peers and asks of them: lends servers to a member that
//! has run dry and borrows when this one has, takes the servers the leader's discovery offers
//! it, and reports its work and the Raft requests it refused.

use std::sync::Arc;

use raft::member::RaftMember;

use crate::context::Services;
use crate::offers::Inbox;
use crate::work::WorkQueue;

/// Hooks this member's callbacks up; the task returned borrows servers while this member has
/// nothing to do.
pub(super) fn connect(
    m: &Arc<RaftMember>,
    services: &Arc<Services>,
    queue: &Arc<WorkQueue>,
    inbox: &Arc<Inbox>,
    extra: raft::admin::ExtraFn,
) -> tokio::task::JoinHandle<()> {
    // lending runs on this runtime, not on the Raft thread that takes the call
    let (lender, lent_from, main) = (
        services.clone(),
        queue.clone(),
        tokio::runtime::Handle::current(),
    );
    m.on_borrow(Arc::new(move |to, ask| {
        let lent = main.spawn(crate::lending::lend(
            lender.clone(),
            lent_from.clone(),
            to,
            ask.want,
        ));
        Box::pin(async move { lent.await.unwrap_or_default() })
    }));
    let borrowing = tokio::spawn(crate::lending::borrow_when_dry(
        services.clone(),
        queue.clone(),
        m.clone(),
    ));
    let (svc, queue, inbox, leaders) = (
        services.clone(),
        queue.clone(),
        inbox.clone(),
        m.leader_watch(),
    );
    m.on_offer(Arc::new(move |from, batch| {
        // only the leader's offers say that its discovery covers this member
        let leader = leaders.current();
        let from_leader = from.is_none() || from == leader;
        inbox.take(&svc, &queue, from_leader, &batch)
    }));
    m.set_extra(extra);
    let metrics = services.metrics.clone();
    m.on_refused(Arc::new(move |rpc, reason| {
        metrics
            .raft_refused
            .with_label_values(&[metrics.site(), rpc, reason])
            .inc();
    }));
    borrowing
}
