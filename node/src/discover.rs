//! Finding servers that wait in provisioning mode, two ways, as upstream:
//!
//! - periodic broadcast discovery in the `provisioning` collective with an agent filter on
//!   `choria_provision`, at start and every `interval`;
//! - lifecycle `startup` events of the configured component, so new servers are picked up
//!   between discovery runs.
//!
//! Both offer what they find to the work queue, which ignores servers it knows already.
//! Nothing is discovered while provisioning is paused. An identity that is not a host name
//! (see [`valid_identity`]) is refused here and counted as `rejected{reason="identity"}`:
//! it never reaches the queue, the helper, a certificate or the ledger.

use std::sync::Arc;

use futures::StreamExt;
use proto::lifecycle::{Event, EventType};
use tokio::sync::Notify;

use crate::pipeline::Services;
use crate::work::{Source, WorkQueue};

/// Runs broadcast discovery now and then every `interval`, and whenever `now` is notified
/// (cluster membership changed), until the task is dropped. A cluster member first waits
/// until its own heartbeat is committed and its peers had a heartbeat's time to show up, so
/// the first discovery already shares the work.
pub async fn run_discovery(svc: Arc<Services>, queue: Arc<WorkQueue>, now: Arc<Notify>) {
    if let Some(shard) = &svc.shard {
        while !shard.am_live() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    let mut ticker = tokio::time::interval(svc.config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = now.notified() => {}
        }
        discover_once(&svc, &queue).await;
    }
}

/// One discovery cycle.
pub async fn discover_once(svc: &Services, queue: &WorkQueue) {
    let m = &svc.metrics;
    if svc.is_paused() {
        tracing::warn!("skipping discovery while paused");
        return;
    }
    m.inc(&m.discover_cycles);
    match svc
        .rpc
        .discover(proto::agents::PROVISION_AGENT, svc.config.discovery_timeout)
        .await
    {
        Ok(found) => {
            let mut added = 0;
            for identity in &found {
                if !accept(svc, identity) {
                    continue;
                }
                if queue.offer(identity, Source::Discovery) {
                    m.inc(&m.discovered);
                    added += 1;
                }
            }
            tracing::info!(found = found.len(), added, "discovery finished");
        }
        Err(e) => {
            m.inc(&m.discovery_errors);
            tracing::error!(error = %e, "discovery failed");
        }
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
    if !accept(svc, &event.identity) {
        return;
    }
    if queue.offer(&event.identity, Source::Event) {
        m.inc(&m.event_discovered);
        tracing::info!(identity = %event.identity, "found through a startup event");
    }
}

/// Longest identity accepted: a DNS name's limit.
const MAX_IDENTITY: usize = 253;

/// Whether `identity` is a host name, as Choria identities are: labels of letters, digits,
/// `-` and `_`, joined by single dots, 253 bytes at most. This keeps every name we put in a
/// certificate subject, a log line, a helper's input or the ledger free of separators,
/// spaces, control characters and look-alikes.
pub fn valid_identity(identity: &str) -> bool {
    identity.len() <= MAX_IDENTITY
        && !identity.is_empty()
        && identity.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Counts and logs an identity that is not a host name; true when it may be offered.
fn accept(svc: &Services, identity: &str) -> bool {
    if valid_identity(identity) {
        return true;
    }
    svc.metrics.rejected("identity");
    let shown: String = identity.chars().take(64).collect();
    tracing::warn!(identity = ?shown, len = identity.len(), "refusing a server whose identity is not a host name");
    false
}

#[cfg(test)]
mod tests {
    use super::valid_identity;

    #[test]
    fn identities_are_host_names() {
        for ok in [
            "n1",
            "n1.example.net",
            "web-01.dc_2.example.net",
            &"a".repeat(253),
        ] {
            assert!(valid_identity(ok), "{ok}");
        }
        for bad in [
            "",
            &"a".repeat(254),
            "n1.example.net/O=admins",
            "n1 example",
            "n1..example",
            ".n1",
            "n1.",
            "n1\n",
            "n1\u{0}",
            "admin,O=x",
            "n1.exämple.net",
            "*.example.net",
        ] {
            assert!(!valid_identity(bad), "{bad:?}");
        }
    }
}
