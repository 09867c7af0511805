//! Renewing credentials before they run out (`admin.reprovision.renew_before`): each member
//! looks through the ledger now and then for enrolled servers whose current certificate or
//! JWT ends within the window, takes the ones the shard gives it (so the members spread the
//! work and never ask a server twice), and reprovisions them as `admin reprovision` would, at
//! most `renew_rate` a second. A server asked is `reprovisioning` in the ledger until it comes
//! back and is enrolled again with a new credential, so the next sweep leaves it alone.

use std::sync::Arc;
use std::time::Duration;

use raft::EnrollState;

use crate::admin::server::AdminContext;
use crate::clock::now_ms;

/// When and how fast servers are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewPolicy {
    /// Renew a server whose credential ends within this long.
    pub before: Duration,
    /// Requests per second at most, per member.
    pub rate: u32,
}

/// How long a server is given to answer a renewal request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Sweeps at most this far apart, and at least a second apart (an eighth of the window in
/// between): a short window is looked at often enough to renew in time.
const SWEEP_AT_MOST: Duration = Duration::from_secs(300);
const SWEEP_AT_LEAST: Duration = Duration::from_secs(1);

impl RenewPolicy {
    fn sweep_every(&self) -> Duration {
        (self.before / 8).clamp(SWEEP_AT_LEAST, SWEEP_AT_MOST)
    }

    /// Most servers one sweep asks: what the rate allows until the next sweep.
    fn per_sweep(&self) -> usize {
        (self.sweep_every().as_secs_f64() * f64::from(self.rate)).ceil() as usize
    }
}

/// Renews servers for as long as the provisioner runs.
pub async fn run(ctx: Arc<AdminContext>, policy: RenewPolicy) {
    tracing::info!(before = ?policy.before, rate = policy.rate, "renewing credentials before they end");
    let mut sweeps = tokio::time::interval(policy.sweep_every());
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sweeps.tick().await;
        if ctx.svc.is_paused() {
            continue;
        }
        let due = due(&ctx, &policy).await;
        if !due.is_empty() {
            renew(&ctx, &policy, due).await;
        }
    }
}

/// The servers this member renews in this sweep.
async fn due(ctx: &AdminContext, policy: &RenewPolicy) -> Vec<String> {
    let by = (now_ms() / 1000).saturating_add(policy.before.as_secs()) as i64;
    let limit = policy.per_sweep();
    let mine = |id: &str| ctx.svc.shard.as_ref().is_none_or(|s| s.owns(id));
    let mut due = Vec::new();
    ctx.svc
        .ledger
        .scan(&mut |r| {
            let ending = r.credential.as_ref().is_some_and(|c| c.not_after <= by);
            if due.len() < limit && r.state == EnrollState::Enrolled && ending && mine(&r.identity)
            {
                due.push(r.identity.clone());
            }
        })
        .await;
    due
}

async fn renew(ctx: &AdminContext, policy: &RenewPolicy, due: Vec<String>) {
    let actor = format!("{}/renew", ctx.svc.member);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(policy.rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &ctx.svc.metrics;
    for identity in due {
        ticks.tick().await;
        let (result, message) =
            crate::admin::reprovision::one(ctx, &identity, &actor, ANSWER_WITHIN).await;
        m.renewals.with_label_values(&[m.site(), result]).inc();
        if result == "ok" {
            tracing::info!(%identity, "asked to renew its credential");
        } else {
            tracing::warn!(%identity, result, %message, "renewal request did not go through");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_follow_the_window_and_the_rate() {
        let p = RenewPolicy {
            before: Duration::from_secs(30 * 86400),
            rate: 5,
        };
        assert_eq!(p.sweep_every(), SWEEP_AT_MOST);
        assert_eq!(p.per_sweep(), 1500);
        let short = RenewPolicy {
            before: Duration::from_secs(40),
            rate: 2,
        };
        assert_eq!(short.sweep_every(), Duration::from_secs(5));
        assert_eq!(short.per_sweep(), 10);
        let tiny = RenewPolicy {
            before: Duration::from_secs(2),
            rate: 1,
        };
        assert_eq!(tiny.sweep_every(), SWEEP_AT_LEAST);
    }
}
