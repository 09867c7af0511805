//! Finding servers that wait in provisioning mode, two ways, as upstream:
//!
//! - periodic broadcast discovery in the `provisioning` collective with an agent filter on
//!   `choria_provision`, at start and every `interval`;
//! - lifecycle `startup` events of the configured component, so new servers are picked up
//!   between discovery runs.
//!
//! Both offer what they find to the work queue, which ignores servers it knows already. In a
//! cluster the leader's discovery covers every member ([`crate::offers`]): the others leave
//! their rounds to it while its offers keep coming.
//! Nothing is discovered while provisioning is paused. An identity that is not a host name
//! (`proto::subject::is_valid_identity`) never gets here: discovery replies from one are
//! dropped and counted as `bad_messages{kind="discovery_sender"}`, startup events naming one
//! as `bad_messages{kind="event"}`; so it never reaches the queue, the helper, a certificate
//! or the ledger.

use std::sync::Arc;

use futures::StreamExt;
use proto::lifecycle::{Event, EventType};
use tokio::sync::Notify;

use crate::context::Services;
use crate::rpc::RpcClient;
use crate::work::{Source, WorkQueue};

/// A cluster member's share in the group's one discovery.
pub struct Shared {
    pub member: Arc<raft::member::RaftMember>,
    /// Where the leader's rounds send other members' servers.
    pub outbox: crate::offers::Outbox,
    /// What this member heard from the leader.
    pub inbox: Arc<crate::offers::Inbox>,
}

/// Runs broadcast discovery now and then every `interval`, and whenever `now` is notified
/// (cluster membership changed), until the task is dropped. A cluster member first waits
/// until its own heartbeat is committed and then until the ownership epoch in force names it
/// (ledger rules 6), or its peers had [`PEERS_SHOW_UP`] to, so the first discovery already
/// shares the work. A restarted member finds its epoch at once: its servers, which nobody
/// else may take meanwhile, wait no longer than its start, and it runs its first round
/// itself. A member on its first start that is not the leader gives the leader's first round
/// a discovery window to reach it.
pub async fn run_discovery(
    svc: Arc<Services>,
    rpc: RpcClient,
    queue: Arc<WorkQueue>,
    now: Arc<Notify>,
    shared: Option<Shared>,
) {
    if let Some(shard) = &svc.shard {
        let step = std::time::Duration::from_millis(100);
        while !shard.am_live() {
            tokio::time::sleep(step).await;
        }
        let until = tokio::time::Instant::now() + PEERS_SHOW_UP;
        while !svc.flows.in_force(crate::clock::now_ms()) && tokio::time::Instant::now() < until {
            tokio::time::sleep(step).await;
        }
        // a restarted member's servers are its own again at once, and the leader, which saw
        // nothing change, runs no round for them: its first round is its own
        if let Some(s) = shared.as_ref().filter(|s| s.member.restarted) {
            s.inbox.force_own_round();
        } else if let Some(s) = &shared {
            let until = tokio::time::Instant::now()
                + svc.config.discovery_timeout
                + crate::offers::LEADER_GRACE;
            while !s.member.is_leader()
                && !s.inbox.leader_discovers(svc.config.discovery_timeout)
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(step).await;
            }
        }
    }
    let round = || async {
        match &shared {
            None => discover_once(&svc, &rpc, &queue, None).await,
            Some(s) if s.member.is_leader() => discover_once(&svc, &rpc, &queue, Some(s)).await,
            Some(s) => {
                let quiet = svc.config.interval
                    + svc.config.discovery_timeout
                    + crate::offers::LEADER_GRACE;
                if !s.inbox.take_forced() && s.inbox.leader_discovers(quiet) {
                    svc.metrics.inc(&svc.metrics.discover_deferred);
                    tracing::debug!("the leader's discovery covers this member");
                } else {
                    discover_once(&svc, &rpc, &queue, None).await
                }
            }
        }
    };
    rounds(svc.config.interval, &now, round).await
}

/// How long a member that is live but named by no epoch yet (a new cluster, or one below
/// ledger rules 6) waits for its peers' heartbeats before its first discovery.
const PEERS_SHOW_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `round` now, then every `interval` and whenever `now` is notified, until dropped.
/// Every member parses every waiting server's reply, so one wake-up is one round: requests
/// made before the first round, or a tick and a request due together, make one round, not
/// two back to back.
async fn rounds<F, Fut>(interval: std::time::Duration, now: &Notify, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _ = futures::FutureExt::now_or_never(now.notified());
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        round().await;
        tokio::select! {
            biased;
            _ = now.notified() => {}
            _ = ticker.tick() => {}
        }
        // the next tick is a whole interval after this round
        ticker.reset();
    }
}

/// One discovery cycle; `shared` when this member is the leader and discovers for all.
pub async fn discover_once(
    svc: &Services,
    rpc: &RpcClient,
    queue: &Arc<WorkQueue>,
    shared: Option<&Shared>,
) {
    let m = &svc.metrics;
    if svc.is_paused() {
        tracing::warn!("skipping discovery while paused");
        return;
    }
    m.inc(&m.discover_cycles);
    let added = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hand_on = shared.zip(svc.shard.clone()).map(|(s, shard)| {
        // the other members are told of the round: they leave theirs to it while they hear
        let others: Vec<String> = shard
            .members()
            .into_iter()
            .filter(|n| *n != shard.me)
            .collect();
        let round = s.outbox.start_round(others.clone());
        Arc::new(HandOn {
            most: svc.config.max_waiting.saturating_mul(others.len()),
            outbox: s.outbox.clone(),
            shard,
            offered: Default::default(),
            round,
            others,
        })
    });
    // a reply routed after the window closed still gets its server queued
    let found = {
        let (queue, added, m) = (queue.clone(), added.clone(), svc.metrics.clone());
        let hand_on = hand_on.clone();
        move |identity: &str| {
            if hand_on.as_ref().is_some_and(|h| !h.keep(identity)) {
                return;
            }
            if queue.offer(identity, Source::Discovery) {
                m.inc(&m.discovered);
                added.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    // in a cluster most replies are other members' servers: only counted (their sender read
    // from the header, the reply left undecoded), and handed to their owners when this member
    // discovers for all
    let wanted = match (svc.shard.clone(), hand_on.clone()) {
        (_, Some(h)) => crate::rpc::Wanted::new(move |identity: &str| h.keep(identity)),
        (Some(shard), None) => crate::rpc::Wanted::new(move |identity: &str| shard.owns(identity)),
        (None, None) => crate::rpc::Wanted::new(|_: &str| true),
    };
    let result = rpc
        .discover(
            proto::agents::PROVISION_AGENT,
            svc.config.discovery_timeout,
            svc.config.max_waiting,
            wanted.clone(),
            found,
        )
        .await;
    if let Some(h) = &hand_on {
        h.outbox.end_round(h.round, h.others.clone());
    }
    match result {
        Ok(found) => {
            let added = added.load(std::sync::atomic::Ordering::Relaxed);
            let offered = hand_on.as_ref().map_or(0, |h| h.offered());
            let others = wanted.passed();
            tracing::info!(found, others, added, offered, "discovery finished");
        }
        Err(e) => {
            m.inc(&m.discovery_errors);
            tracing::error!(error = %e, "discovery failed");
        }
    }
}

/// The leader's round: the servers it finds that are other members' go to their owners.
struct HandOn {
    outbox: crate::offers::Outbox,
    shard: Arc<crate::shard::Shard>,
    round: u64,
    others: Vec<String>,
    offered: std::sync::atomic::AtomicUsize,
    /// Most names handed on in a round: `max_waiting` a member, as a flood of forged replies
    /// would otherwise be.
    most: usize,
}

impl HandOn {
    /// True when `identity` is this member's own; another member's is handed on (a name
    /// from a reply's header is checked first: it is what the server says of itself).
    fn keep(&self, identity: &str) -> bool {
        match self.shard.owner(identity) {
            Some(owner) if owner == self.shard.me => true,
            Some(owner) => {
                if proto::subject::is_valid_identity(identity)
                    && self
                        .offered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        < self.most
                {
                    self.outbox.found(&owner, identity);
                }
                false
            }
            None => false,
        }
    }

    fn offered(&self) -> usize {
        self.offered
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(self.most)
    }
}

/// Handles `startup` events from `sub` (subscribed by the caller before the first discovery,
/// so nothing falls in between) until the subscription ends.
pub async fn run_events(
    svc: Arc<Services>,
    queue: Arc<WorkQueue>,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        handle_event(&svc, &queue, &msg.payload);
    }
    tracing::warn!("lifecycle subscription ended");
}

/// The subject startup events of provisioning-mode servers arrive on.
pub fn startup_subject(component: &str) -> String {
    proto::subject::lifecycle_event(EventType::Startup.as_str(), component)
}

/// Offers the server named by a startup event; anything else is counted and dropped.
pub fn handle_event(svc: &Services, queue: &WorkQueue, payload: &[u8]) {
    let m = &svc.metrics;
    if svc.is_paused() {
        return;
    }
    let event = match Event::from_json(payload) {
        Ok(e) => e,
        Err(e) => {
            m.bad_message("event");
            tracing::warn!(error = %e, "dropping a lifecycle event that does not decode");
            return;
        }
    };
    if !matches!(event.kind(), Ok(EventType::Startup)) {
        return;
    }
    if queue.offer(&event.identity, Source::Event) {
        m.inc(&m.event_discovered);
        tracing::info!(identity = %event.identity, "found through a startup event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Rounds started by `rounds` after each step of virtual time.
    #[tokio::test(start_paused = true)]
    async fn one_wake_up_is_one_round() {
        let now = Arc::new(Notify::new());
        let count = Arc::new(AtomicUsize::new(0));
        // asked for twice while the member got ready: the first round answers both
        now.notify_one();
        now.notify_one();
        let task = {
            let (now, count) = (now.clone(), count.clone());
            tokio::spawn(async move {
                rounds(Duration::from_secs(60), &now, || {
                    let count = count.clone();
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        // a round takes a while; a request made meanwhile gets its own
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                })
                .await
            })
        };
        let settle = |secs| tokio::time::sleep(Duration::from_secs(secs));
        settle(10).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "the first round only");

        now.notify_one();
        settle(10).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "a request makes one round");

        // during a round: one more after it
        now.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
        now.notify_one();
        settle(10).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            4,
            "one for the request made meanwhile"
        );

        // the interval counts from the last wake-up: 60 s after round 4 began (at 22 s)
        settle(40).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            4,
            "no tick before a whole interval"
        );
        settle(30).await;
        assert_eq!(count.load(Ordering::SeqCst), 5, "the tick");
        task.abort();
    }
}
