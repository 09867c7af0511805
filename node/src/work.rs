//! The work queue: servers waiting to be provisioned, the workers that provision them, and
//! retries.
//!
//! A server is known here at most once (queued, in flight, or waiting for a retry), so
//! discovery and lifecycle events finding the same server never start two flows for it.
//! Failed and deferred servers are retried with exponential backoff up to `max_attempts`;
//! after that they are forgotten until discovery finds them again. As upstream, a server that
//! waited in the queue longer than twice the discovery interval without being seen again is
//! dropped as stale (a sighting renews it, so a member with a long queue keeps its tail). At most
//! `max_waiting` servers are known at once; further sightings are dropped and counted
//! (`choria_provisioner_waiting_dropped`) until some finish. Queued servers this member lends
//! to another ([`crate::lending`]) leave the queue, and sightings of them are passed over
//! until the loan has ended; servers lent to this member start before its own ([`jobs`]). A
//! fenced member starts nothing, and a flow its fence stopped counts no attempt: its server
//! starts again before the member's own queue ([`Outcome::Interrupted`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::context::Services;
use crate::pipeline::{self, Outcome};

mod jobs;
mod known;
mod lock;

use jobs::{JobReceiver, JobSender, Lane};
use known::{Entry, Known, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Discovery,
    Event,
    Retry,
    /// A flow this member interrupted (see [`Outcome::Interrupted`]), started again before
    /// the servers queued since.
    Resume,
    /// Lent to this member by another.
    Loan,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Discovery => "discovery",
            Source::Event => "event",
            Source::Retry => "retry",
            Source::Resume => "resume",
            Source::Loan => "loan",
        }
    }

    /// A server this queue knows already, waiting to run again.
    fn again(self) -> bool {
        matches!(self, Source::Retry | Source::Resume)
    }
}

/// Servers known to this member's work queue.
pub struct WorkQueue {
    entries: Mutex<Known>,
    /// Servers this member lent away, and until when (Unix ms) it leaves them alone: known
    /// here before this member's replica shows the loan.
    lent: Mutex<HashMap<String, u64>>,
    /// Servers newly queued since the start (retries not counted).
    queued_total: AtomicU64,
    jobs: JobSender,
    svc: Arc<Services>,
}

impl WorkQueue {
    /// Creates the queue and starts its dispatcher with `config.workers` workers.
    pub fn start(svc: Arc<Services>) -> Arc<WorkQueue> {
        let (jobs, rx) = jobs::channel();
        let q = Arc::new(WorkQueue {
            entries: Mutex::new(Known::default()),
            lent: Mutex::new(HashMap::new()),
            queued_total: AtomicU64::new(0),
            jobs,
            svc,
        });
        tokio::spawn(dispatch(q.clone(), rx));
        q
    }

    /// Offers a server for provisioning; true when it was queued, false when it is known
    /// already.
    pub fn offer(&self, identity: &str, source: Source) -> bool {
        self.offer_seen(identity, source, now_ms())
    }

    /// [`WorkQueue::offer`], the server last seen at `seen_ms` (Unix ms).
    pub fn offer_seen(&self, identity: &str, source: Source, seen_ms: u64) -> bool {
        if self.lent_away(identity) {
            return false;
        }
        if !self.svc.owns(identity) {
            // a retry of a server that moved to another member is forgotten here
            if source.again() {
                let mut entries = self.entries();
                if entries
                    .get(identity)
                    .is_some_and(|e| e.state() == State::Waiting)
                {
                    entries.remove(identity);
                    self.update_gauges(&entries);
                }
            }
            return false;
        }
        let mut entries = self.entries();
        let seen = (!source.again()).then_some(seen_ms);
        if !entries.contains(identity) && entries.len() >= self.svc.config.max_waiting {
            // bounded: a flood of sightings (real or forged) cannot grow this without end;
            // the servers left out are found again by the next discovery
            let m = &self.svc.metrics;
            m.waiting_dropped
                .with_label_values(&[m.site(), source.name()])
                .inc();
            return false;
        }
        let borrowed = match entries.get_mut(identity) {
            Some(e) if source.again() && e.state() == State::Waiting => {
                e.queued_at = Instant::now();
                let borrowed = e.borrowed;
                entries.set_state(identity, State::Queued);
                borrowed
            }
            Some(e) => {
                // known already; the sighting is fresh evidence it is waiting
                if let Some(now) = seen {
                    e.sighted(now, Instant::now());
                }
                return false;
            }
            None => {
                let mut e = Entry::queued(Instant::now(), seen.unwrap_or(0));
                e.borrowed = source == Source::Loan;
                entries.insert(identity.to_string(), e);
                self.queued_total.fetch_add(1, Ordering::Relaxed);
                source == Source::Loan
            }
        };
        self.update_gauges(&entries);
        drop(entries);
        if !source.again() {
            tracing::debug!(identity, ?source, "queued");
        }
        let lane = if borrowed {
            Lane::Lent
        } else if source == Source::Resume {
            Lane::Resumed
        } else {
            Lane::Own
        };
        self.jobs.send(identity.to_string(), lane)
    }

    /// Servers this queue knows of, by state: (queued, in flight, waiting for retry).
    pub fn counts(&self) -> (usize, usize, usize) {
        let entries = self.entries();
        (
            entries.count(State::Queued),
            entries.count(State::InFlight),
            entries.count(State::Waiting),
        )
    }

    /// Takes up to `n` queued servers out of the queue to lend them, each one `may_lend`
    /// picks; they stay away until `until_ms` (or [`WorkQueue::restore`]).
    pub fn take_for_loan(
        &self,
        n: usize,
        until_ms: u64,
        may_lend: impl Fn(&str) -> bool,
    ) -> Vec<(String, u64)> {
        let mut entries = self.entries();
        let mut lent = self.lent();
        let now = now_ms();
        lent.retain(|_, until| *until > now);
        let taken = entries.take_queued(n, may_lend);
        for (id, _) in &taken {
            lent.insert(id.clone(), until_ms);
        }
        self.update_gauges(&entries);
        taken.into_iter().map(|(id, e)| (id, e.seen_ms)).collect()
    }

    /// Puts back servers taken to lend that were not lent after all.
    pub fn restore(&self, taken: &[(String, u64)]) {
        {
            let mut lent = self.lent();
            for (id, _) in taken {
                lent.remove(id);
            }
        }
        for (id, seen_ms) in taken {
            self.offer_seen(id, Source::Discovery, *seen_ms);
        }
    }

    /// Servers newly queued since the start: whether any came since a given moment.
    pub fn queued_total(&self) -> u64 {
        self.queued_total.load(Ordering::Relaxed)
    }

    /// True while `identity` is lent away by this member.
    fn lent_away(&self, identity: &str) -> bool {
        self.lent()
            .get(identity)
            .is_some_and(|until| *until > now_ms())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Known> {
        lock::lock(&self.entries, "entries", &self.svc.metrics)
    }

    fn lent(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        lock::lock(&self.lent, "lent", &self.svc.metrics)
    }

    fn update_gauges(&self, entries: &Known) {
        let m = &self.svc.metrics;
        m.set(&m.work_queue_entries, entries.count(State::Queued) as i64);
        m.set(&m.waiting_nodes, entries.len() as i64);
    }

    /// Marks a job in flight and returns when the server was last seen; `None` when it
    /// should not run (stale or gone).
    fn begin(&self, identity: &str) -> Option<u64> {
        let mut entries = self.entries();
        let stale_after = self.svc.config.interval * 2;
        let run = match entries.get_mut(identity) {
            Some(e) if e.stale(Instant::now(), stale_after) => {
                tracing::warn!(identity, waited = ?e.queued_at.elapsed(), "skipping server that waited too long");
                entries.remove(identity);
                None
            }
            Some(e) if e.state() == State::Queued && !self.svc.owns(identity) => {
                if e.borrowed {
                    // its lender queues it again once the loan has ended
                    tracing::warn!(identity, "lent server not started by its start-by time");
                    let m = &self.svc.metrics;
                    m.loans.with_label_values(&[m.site(), "expired"]).inc();
                } else {
                    tracing::debug!(identity, "no longer ours after a membership change");
                }
                entries.remove(identity);
                None
            }
            Some(e) if e.state() == State::Queued => {
                let seen_ms = e.seen_ms;
                entries.set_state(identity, State::InFlight);
                Some(seen_ms)
            }
            _ => None,
        };
        self.update_gauges(&entries);
        run
    }

    /// Records how a job ended; returns the retry delay when it should run again.
    fn finish(&self, identity: &str, outcome: &Outcome) -> Option<Duration> {
        let mut entries = self.entries();
        let cfg = &self.svc.config;
        let retry = match outcome {
            Outcome::Deferred(_) | Outcome::Failed(_) => {
                let e = entries.get_mut(identity)?;
                e.attempts += 1;
                if e.attempts >= cfg.max_attempts {
                    tracing::warn!(
                        identity,
                        attempts = e.attempts,
                        "giving up until the server is discovered again"
                    );
                    entries.remove(identity);
                    None
                } else {
                    let attempts = e.attempts;
                    entries.set_state(identity, State::Waiting);
                    Some(retry_delay(
                        attempts,
                        cfg.retry_backoff_min,
                        cfg.retry_backoff_max,
                    ))
                }
            }
            // the member's own doing: no attempt counted, started again first
            Outcome::Interrupted(_) => {
                if !entries.set_state(identity, State::Waiting) {
                    return None;
                }
                Some(Duration::ZERO)
            }
            Outcome::Busy(until_ms) => {
                // another member holds it; look again when its claim lapses
                if !entries.set_state(identity, State::Waiting) {
                    return None;
                }
                let wait = until_ms.saturating_sub(now_ms()) + 500;
                Some(Duration::from_millis(
                    wait.min(cfg.retry_backoff_max.as_millis() as u64),
                ))
            }
            // an upgrading server announces itself again when it is back with its new version
            Outcome::Provisioned
            | Outcome::Skipped(_)
            | Outcome::Shutdown
            | Outcome::Upgrading(_) => {
                entries.remove(identity);
                None
            }
        };
        self.update_gauges(&entries);
        retry
    }
}

async fn dispatch(q: Arc<WorkQueue>, mut rx: JobReceiver) {
    loop {
        // a worker first, then the job: a server lent while every worker is busy goes to the
        // next free worker, not behind a job taken out already; how many workers there are
        // follows the ledger's write times (see `crate::pace`)
        let permit = q.svc.pace.slot().await;
        let Some(identity) = rx.recv().await else {
            return;
        };
        // paused, or fenced: a flow started now would stop at its first step that needs the
        // fence, after an RPC to the server for nothing
        while q.svc.is_paused() || q.svc.flows.fenced(now_ms()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(seen_ms) = q.begin(&identity) else {
            continue;
        };
        let q = q.clone();
        tokio::spawn(async move {
            let m = &q.svc.metrics;
            m.add(&m.busy_workers, 1);
            let outcome = pipeline::provision(&q.svc, &identity, seen_ms).await;
            m.add(&m.busy_workers, -1);
            drop(permit);
            report(&q.svc, &identity, &outcome);
            if let Some(delay) = q.finish(&identity, &outcome) {
                let source = match outcome {
                    Outcome::Interrupted(_) => Source::Resume,
                    _ => Source::Retry,
                };
                let q = q.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    q.offer(&identity, source);
                });
            }
        });
    }
}

fn report(svc: &Services, identity: &str, outcome: &Outcome) {
    let m = &svc.metrics;
    match outcome {
        Outcome::Provisioned => {
            m.inc(&m.provisioned);
            tracing::info!(identity, "provisioned");
        }
        Outcome::Skipped(why) => tracing::debug!(identity, why, "skipped"),
        Outcome::Busy(until) => tracing::debug!(identity, until, "claimed by another member"),
        Outcome::Deferred(why) => {
            m.inc(&m.deferred);
            tracing::info!(identity, why, "deferred");
        }
        Outcome::Failed(why) => {
            m.inc(&m.provision_errors);
            tracing::error!(identity, error = why, "could not provision");
        }
        Outcome::Interrupted(why) => {
            m.inc(&m.flows_interrupted);
            tracing::warn!(identity, why, "flow interrupted; started again first");
        }
        Outcome::Shutdown => tracing::warn!(identity, "shut down"),
        Outcome::Upgrading(to) => tracing::info!(
            identity,
            to,
            "upgrading; it is provisioned when it comes back"
        ),
    }
}

/// `min` doubling per attempt up to `max`, with up to 25% jitter so retries spread out.
pub fn retry_delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = exp.min(max);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
    base + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_caps() {
        let min = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        let d1 = retry_delay(1, min, max);
        assert!(d1 >= min && d1 <= min.mul_f64(1.25));
        let d3 = retry_delay(3, min, max);
        assert!(d3 >= Duration::from_secs(20));
        let d30 = retry_delay(30, min, max);
        assert!(d30 >= max && d30 <= max.mul_f64(1.25));
    }
}
