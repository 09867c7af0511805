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
//! - a quick write (within [`QUICK`], three quarters of [`TARGET`]), while the flows fill at
//!   least half the limit, raises it by a quarter of a place ([`AVOIDANCE_STEP`]). An idle
//!   member keeps its limit where it was, so a burst does not start with a limit nobody tested.
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

/// A write this quick lets the limit grow. A follower's writes wait for the leader's next entry
/// and for its own batch before, about a second on capped members however many flows it runs;
/// with half the target here its limit stayed where slow start first met that second, the
/// flows all busy and its CPU cap not used up (`benches/BENCHMARKS.md`, "Followers that stopped
/// growing").
pub const QUICK: Duration = Duration::from_millis(crate::flows::FENCE_MS * 3 / 10);

/// What a quick write adds once slow start is over. One place per round of flows (TCP's one per
/// round trip) was too slow here: a round takes seconds, and a member whose first writes were
/// slow (the cluster forming, an election) stayed near a quarter of its workers through a whole
/// burst while its queue held thousands (`benches/BENCHMARKS.md`, "Followers that stopped
/// growing"). A quarter a write goes from a quarter of 384 workers to all of them in about 1,150
/// quick writes, some 13 s at the 90 a second a member capped at 0.05 core writes; a cut stops
/// an overshoot within the 2 s a write may take.
const AVOIDANCE_STEP: f64 = 1.0 / 4.0;

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
        } else if took <= QUICK && s.running as f64 * 2.0 >= s.limit {
            let step = if s.slow_start { 1.0 } else { AVOIDANCE_STEP };
            s.limit = (s.limit + step).min(self.max as f64);
        } else if took > QUICK {
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

    /// A member of 400 workers whose first round of writes, each taking `took`, doubled its
    /// limit from 100 to 200 in slow start; the places held and when the writes were seen.
    async fn doubled_once(took: Duration) -> (Arc<Pace>, Vec<Slot>, Instant) {
        let p = Pace::new(400);
        let t0 = Instant::now();
        let mut held = Vec::new();
        take(&p, 100, &mut held).await;
        writes(&p, 100, took, t0);
        assert_eq!(p.limit(), 200);
        (p, held, t0)
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
        // over half the places taken: four fast writes add one
        let mut held = Vec::new();
        take(&p, 33, &mut held).await;
        writes(&p, 4, FAST, t0);
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
        // after a cut, four quick writes add one
        p.observe(SLOW, t0);
        assert_eq!(p.limit(), 200);
        writes(&p, 4, FAST, t0);
        assert_eq!(p.limit(), 201);
    }

    #[tokio::test]
    async fn a_write_neither_quick_nor_slow_ends_slow_start_without_a_cut() {
        let (p, mut held, t0) = doubled_once(FAST).await;
        // the queue is building: the limit stays, and grows by a quarter a write from here
        p.observe(TARGET, t0);
        assert_eq!(p.limit(), 200);
        assert_eq!(p.cuts(), 0);
        take(&p, 100, &mut held).await;
        writes(&p, 4, FAST, t0);
        assert_eq!(p.limit(), 201);
    }

    #[tokio::test]
    async fn a_follower_s_second_long_writes_still_let_slow_start_double() {
        // a follower's writes wait on the leader's next entry: about a second however few
        // flows it runs, and that alone must not stop the limit where it starts
        let second = Duration::from_millis(1_200);
        assert!(second > TARGET / 2 && second <= QUICK);
        let (p, mut held, t0) = doubled_once(second).await;
        // past three quarters of the target the queue counts as building
        p.observe(QUICK + Duration::from_millis(1), t0);
        take(&p, 100, &mut held).await;
        writes(&p, 100, second, t0);
        assert_eq!(
            p.limit(),
            225,
            "not a quarter a write after a write that was not quick"
        );
        assert_eq!(p.cuts(), 0);
    }

    #[tokio::test]
    async fn a_member_whose_first_write_was_slow_still_reaches_all_its_workers() {
        // the cluster forming made the first write slow: slow start ends at a quarter, and a
        // burst must still get every worker going, not one more per round of flows
        let p = Pace::new(384);
        let t0 = Instant::now();
        p.observe(QUICK + Duration::from_millis(100), t0);
        assert_eq!(p.limit(), 96);
        let mut held = Vec::new();
        let mut quick = 0;
        while p.limit() < 384 && quick < 10_000 {
            let free = p.limit() - held.len();
            take(&p, free, &mut held).await;
            writes(&p, 4, FAST, t0);
            quick += 4;
        }
        assert_eq!(p.limit(), 384);
        assert!(quick <= 1_200, "{quick} quick writes to reach all workers");
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
