//! How many flows this member runs at once: up to `workers`, fewer while its ledger writes are
//! slow.
//!
//! A member on a small machine, or behind a busy leader, that starts every worker's flow at once
//! only lengthens the queues its ledger writes wait in: the cluster commits no more per second,
//! but each write (its heartbeat too) waits longer. Once a heartbeat takes longer than the fence
//! allows ([`crate::flows::FENCE_MS`]), the member is fenced and every flow it has in progress
//! fails. So the limit follows the commit time of this member's own writes, additive increase
//! and multiplicative decrease as TCP does with its window:
//!
//! - a write slower than [`TARGET`] cuts the limit by `TARGET / took` (at least 20 %, at most
//!   half), once per `TARGET` so one slow batch counts once;
//! - a write within half of [`TARGET`], while the flows fill at least half the limit, raises it
//!   by one per limit's worth of such writes (about one per round of flows). An idle member keeps
//!   its limit where it was, so a burst does not start with a limit nobody tested.
//! - A member starts at its least limit and, until its first write that is not quick, adds one
//!   for each quick write (doubling per round, TCP's slow start): five members that each started every worker at once
//!   put so many writes in the leader's queue that it missed its Raft heartbeats and lost office
//!   before the first cut could act.
//!
//! The limit never goes under a quarter of `workers` (at least one): fewer flows make smaller
//! batches, each entry carrying fewer servers, so a member cut too far spends more CPU per server
//! and falls further behind (measured in `benches/BENCHMARKS.md`, "Flows paced by commit time").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The commit time this member's writes should stay within: two fifths of the fence, so a
/// heartbeat (sent every 2 s) committed at half as long again still keeps the fence open.
pub const TARGET: Duration = Duration::from_millis(crate::flows::FENCE_MS * 2 / 5);

/// The flow limit, and the flows running under it.
#[derive(Debug)]
pub struct Pace {
    max: usize,
    min: usize,
    state: Mutex<State>,
    freed: Notify,
    /// Cuts so far (for the metric).
    cuts: AtomicU64,
}

#[derive(Debug)]
struct State {
    limit: f64,
    running: usize,
    last_cut: Option<Instant>,
    /// Until the first write that is not quick, each quick write adds a place, doubling the
    /// limit per round.
    slow_start: bool,
}

/// One running flow's place under the limit; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    pace: Arc<Pace>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.pace.lock();
        s.running = s.running.saturating_sub(1);
        drop(s);
        self.pace.freed.notify_one();
    }
}

impl Pace {
    /// A pace for `workers` flows at most, starting at the least it allows.
    pub fn new(workers: usize) -> Arc<Pace> {
        let max = workers.max(1);
        Pace::starting_at(max, max.div_ceil(4))
    }

    fn starting_at(max: usize, limit: usize) -> Arc<Pace> {
        Arc::new(Pace {
            max,
            min: max.div_ceil(4),
            state: Mutex::new(State {
                limit: limit.clamp(1, max) as f64,
                running: 0,
                last_cut: None,
                slow_start: true,
            }),
            freed: Notify::new(),
            cuts: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many flows may run now.
    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    /// Whether the limit was cut within `within` before `now`: this member's writes were slow
    /// lately.
    pub fn cut_within(&self, within: Duration, now: Instant) -> bool {
        self.lock()
            .last_cut
            .is_some_and(|at| now.saturating_duration_since(at) < within)
    }

    /// How many times the limit was cut.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    /// Waits for a place under the limit.
    pub async fn slot(self: &Arc<Self>) -> Slot {
        loop {
            // registered before looking, so a place freed in between is not missed
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.running < s.limit as usize {
                    s.running += 1;
                    return Slot { pace: self.clone() };
                }
            }
            freed.await;
        }
    }

    /// Takes one of this member's ledger writes into account: it took `took` to commit (or to
    /// fail), seen at `now`.
    pub fn observe(&self, took: Duration, now: Instant) {
        let mut s = self.lock();
        let before = s.limit as usize;
        if took > TARGET {
            if s.last_cut.is_some_and(|at| now.duration_since(at) < TARGET) {
                return;
            }
            let factor = (TARGET.as_secs_f64() / took.as_secs_f64()).clamp(0.5, 0.8);
            s.limit = (s.limit * factor).max(self.min as f64);
            s.last_cut = Some(now);
            s.slow_start = false;
            self.cuts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                took_ms = took.as_millis() as u64,
                limit = s.limit as usize,
                "ledger writes slow; fewer flows at once"
            );
        } else if took <= TARGET / 2 && s.running as f64 * 2.0 >= s.limit {
            let step = if s.slow_start { 1.0 } else { 1.0 / s.limit };
            s.limit = (s.limit + step).min(self.max as f64);
        } else if took > TARGET / 2 {
            // the queue is building: stop doubling before a cut is needed (TCP's HyStart)
            s.slow_start = false;
        }
        let grew = s.limit as usize > before;
        drop(s);
        if grew {
            self.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three times the target.
    const SLOW: Duration = Duration::from_millis(crate::flows::FENCE_MS * 6 / 5);
    const FAST: Duration = Duration::from_millis(10);

    /// Takes `n` more places, held in `held`.
    async fn take(p: &Arc<Pace>, n: usize, held: &mut Vec<Slot>) {
        for _ in 0..n {
            held.push(p.slot().await);
        }
    }

    /// `n` writes that each took `took`, all seen at `at`.
    fn writes(p: &Pace, n: usize, took: Duration, at: Instant) {
        for _ in 0..n {
            p.observe(took, at);
        }
    }

    #[test]
    fn a_slow_write_cuts_by_how_slow_it_was() {
        let p = Pace::starting_at(100, 100);
        let t0 = Instant::now();
        // three times the target: cut by half at most
        p.observe(SLOW, t0);
        assert_eq!(p.limit(), 50);
        // just over the target: cut by a fifth at least
        p.observe(TARGET + Duration::from_millis(100), t0 + TARGET);
        assert_eq!(p.limit(), 40);
        assert_eq!(p.cuts(), 2);
        assert!(p.cut_within(
            Duration::from_secs(10),
            t0 + TARGET + Duration::from_secs(9)
        ));
        assert!(!p.cut_within(
            Duration::from_secs(10),
            t0 + TARGET + Duration::from_secs(10)
        ));
        assert!(!Pace::new(100).cut_within(Duration::from_secs(10), t0));
    }

    #[test]
    fn slow_writes_of_one_moment_cut_once() {
        let p = Pace::starting_at(100, 100);
        let t0 = Instant::now();
        for i in 0..10 {
            p.observe(SLOW, t0 + Duration::from_millis(i * 50));
        }
        assert_eq!(p.limit(), 50);
        assert_eq!(p.cuts(), 1);
    }

    #[test]
    fn the_limit_stays_between_a_quarter_and_all_workers() {
        let p = Pace::starting_at(64, 64);
        let mut now = Instant::now();
        for _ in 0..20 {
            p.observe(SLOW, now);
            now += TARGET;
        }
        assert_eq!(p.limit(), 16);
        let one = Pace::new(1);
        one.observe(SLOW, now);
        assert_eq!(one.limit(), 1);
    }

    #[tokio::test]
    async fn fast_writes_raise_the_limit_only_while_it_is_used() {
        let p = Pace::starting_at(256, 256);
        let t0 = Instant::now();
        p.observe(SLOW, t0);
        p.observe(SLOW, t0 + TARGET);
        assert_eq!(p.limit(), 64);
        // idle: fast writes (the heartbeat's) leave the limit alone
        writes(&p, 300, FAST, t0);
        assert_eq!(p.limit(), 64);
        // over half the places taken: a limit's worth of fast writes adds one
        let mut held = Vec::new();
        take(&p, 33, &mut held).await;
        writes(&p, 65, FAST, t0);
        assert_eq!(p.limit(), 65);
        // writes neither fast nor slow change nothing
        writes(&p, 300, TARGET, t0);
        assert_eq!(p.limit(), 65);
    }

    #[tokio::test]
    async fn slow_start_doubles_per_round_until_the_first_cut() {
        let p = Pace::new(400);
        assert_eq!(
            p.limit(),
            100,
            "a member starts at a quarter of its workers"
        );
        let t0 = Instant::now();
        let mut held = Vec::new();
        take(&p, 100, &mut held).await;
        // a round of quick writes doubles it
        writes(&p, 100, FAST, t0);
        assert_eq!(p.limit(), 200);
        // never past the workers
        take(&p, 100, &mut held).await;
        writes(&p, 300, FAST, t0);
        assert_eq!(p.limit(), 400);
        // after a cut, a round of quick writes adds one
        p.observe(SLOW, t0);
        assert_eq!(p.limit(), 200);
        writes(&p, 210, FAST, t0);
        assert_eq!(p.limit(), 201);
    }

    #[tokio::test]
    async fn a_write_neither_quick_nor_slow_ends_slow_start_without_a_cut() {
        let p = Pace::new(400);
        let t0 = Instant::now();
        let mut held = Vec::new();
        take(&p, 100, &mut held).await;
        writes(&p, 100, FAST, t0);
        assert_eq!(p.limit(), 200);
        // the queue is building: the limit stays, and grows by one a round from here
        p.observe(TARGET, t0);
        assert_eq!(p.limit(), 200);
        assert_eq!(p.cuts(), 0);
        take(&p, 100, &mut held).await;
        writes(&p, 210, FAST, t0);
        assert_eq!(p.limit(), 201);
    }

    #[tokio::test]
    async fn slots_wait_for_a_place_and_a_freed_one_lets_the_next_in() {
        let p = Pace::starting_at(2, 2);
        let a = p.slot().await;
        let _b = p.slot().await;
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.slot().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a third flow started over the limit"
        );
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(third, Ok(Ok(_))), "the freed place was not taken");
    }

    #[tokio::test]
    async fn after_a_cut_running_flows_finish_before_new_ones_start() {
        let p = Pace::starting_at(32, 32);
        let mut held = Vec::new();
        take(&p, 32, &mut held).await;
        p.observe(SLOW, Instant::now());
        assert_eq!(p.limit(), 16);
        // 16 of the 32 end: still at the limit, nothing new starts
        held.truncate(16);
        let next = tokio::time::timeout(Duration::from_millis(50), p.slot()).await;
        assert!(next.is_err(), "a flow started while at the cut limit");
        held.pop();
        let next = tokio::time::timeout(Duration::from_secs(5), p.slot()).await;
        assert!(next.is_ok(), "a place under the cut limit was not given");
    }
}
