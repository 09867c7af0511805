//! The early look after a restart. A server this member enrolled just before it stopped may
//! not have been configured or restarted: it waits in provisioning mode, and counts as fallen
//! back only after the settle time; look again then rather than a whole interval later.
//! Only after a restart (a first start has no such server), and only if the ledger, caught up
//! by then (a member killed with -9 replays its log at start), shows credentials this member
//! issued: a fleet-wide discovery costs every member a reply from each waiting server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::context::Services;
use crate::offers::Inbox;

/// Once the settle time has passed, rediscovers if this member has issued credentials.
pub(super) async fn rediscover_after_settling(
    svc: Arc<Services>,
    again: Arc<Notify>,
    inbox: Arc<Inbox>,
) {
    tokio::time::sleep(Duration::from_millis(
        raft::state::REENROLL_SETTLE_MS + 1_000,
    ))
    .await;
    let issued = svc
        .ledger
        .counts(&svc.member)
        .await
        .enrolled_by
        .get(&svc.member)
        .is_some_and(|n| *n > 0);
    if issued {
        // this member's own round: the leader knows nothing of its restart
        inbox.force_own_round();
        again.notify_one();
    }
}
