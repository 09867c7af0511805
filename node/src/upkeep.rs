//! What the ledger's keeper does without being asked: the leader (or a provisioner alone) raises
//! the ledger rules once every member applies them, and forgets the records of servers that
//! failed and never held a credential once `failed_retention` has passed, so sightings that
//! came to nothing do not pile up in the ledger for ever.

use std::sync::Arc;
use std::time::Duration;

use raft::member::RaftMember;
use raft::{Applied, Command};

use crate::clock::now_ms;
use crate::context::Services;

/// How often the rules are looked at while a raise is pending. Often: a new cluster starts
/// at rules 1 and works under them (JSON on the wire, two commands per credential) until the
/// raise, which asks each member once and is free once done.
const RULES_EVERY: Duration = Duration::from_secs(2);
/// How often failed records past their retention are looked for, at most: a short retention
/// is looked at four times per retention period.
const FORGET_EVERY: Duration = Duration::from_secs(600);
/// Most records forgotten in one sweep.
const FORGET_BATCH: usize = 1000;

pub async fn run(svc: Arc<Services>, member: Option<Arc<RaftMember>>) {
    let mut rules = tokio::time::interval(RULES_EVERY);
    let every = match svc.config.failed_retention / 4 {
        d if d.is_zero() => FORGET_EVERY,
        d => d.clamp(Duration::from_secs(1), FORGET_EVERY),
    };
    let mut forget = tokio::time::interval(every);
    rules.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rules.tick() => {
                if let Some(m) = &member {
                    match raft::replicated::advance_rules(m, svc.ledger.as_ref()).await {
                        Ok(Some(r)) => tracing::info!(rules = r, "every member applies the new ledger rules; the ledger uses them from now on"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "could not raise the ledger rules"),
                    }
                }
            }
            _ = forget.tick() => {
                if member.as_ref().is_none_or(|m| m.is_leader()) {
                    forget_failed(&svc).await;
                }
            }
        }
    }
}

/// Proposes `Forget` for failed records past their retention; returns how many went.
pub async fn forget_failed(svc: &Services) -> usize {
    let retention = svc.config.failed_retention;
    if retention.is_zero() || svc.ledger.settings().await.rules < 2 {
        return 0;
    }
    let older_than_ms = retention.as_millis() as u64;
    let now = now_ms();
    let candidates = svc
        .ledger
        .forgettable(now.saturating_sub(older_than_ms), FORGET_BATCH)
        .await;
    let mut forgotten = 0;
    for identity in candidates {
        let cmd = Command::Forget {
            identity: identity.clone(),
            member: svc.member.clone(),
            older_than_ms,
            at_ms: now,
        };
        match svc.ledger.propose(cmd).await {
            Ok(Applied::Ok) => forgotten += 1,
            // changed since it was listed: kept
            Ok(Applied::Rejected(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not forget failed records; trying again later");
                break;
            }
        }
    }
    if forgotten > 0 {
        let m = &svc.metrics;
        m.ledger_forgotten
            .with_label_values(&[m.site()])
            .inc_by(forgotten as u64);
        tracing::info!(forgotten, retention = ?retention, "forgot failed servers that never held a credential");
    }
    forgotten
}
