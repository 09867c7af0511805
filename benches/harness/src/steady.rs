//! The steady part of a run: the rate between the fleet's 10th and 90th percentile
//! deliveries, and each member's CPU over those same seconds.
//!
//! A whole run's rate includes filling the members' flows at the start and draining them at
//! the end, a fixed second or two that weighs more in a 25-second cluster run than in a
//! 75-second one-member run; and a capped member that waits on its peers uses less than its
//! cap without the whole run's numbers showing when. A [`Trace`] samples every member's CPU
//! time while the run goes, and [`window`] reads both off the fleet's timeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// How often the trace reads the members' CPU time; `/proc` counts it in 10 ms ticks, so a
/// window of a few seconds is read to within a few per cent of a 0.05-core cap.
const EVERY: Duration = Duration::from_millis(250);

/// One reading: when (Unix ms) and each member's CPU seconds so far (`None`: not readable).
type Sample = (u64, Vec<Option<f64>>);

/// Every member's CPU time, sampled on a thread of its own until dropped.
pub struct Trace {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trace {
    /// Starts sampling the processes `pids`.
    pub fn start(pids: Vec<u32>) -> Trace {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let cpu = pids
                        .iter()
                        .map(|p| fleet::usage::of(*p).map(|u| u.cpu_s))
                        .collect();
                    if let Ok(mut s) = samples.lock() {
                        s.push((now_ms(), cpu));
                    }
                    std::thread::sleep(EVERY);
                }
            })
        };
        Trace {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling and hands over what was read.
    pub fn finish(mut self) -> Vec<Sample> {
        self.halt();
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        self.halt();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `steady_servers_per_minute` (deliveries between the 10th and 90th percentile of
/// `timeline`, ms after `start_unix_ms`, over the time between them), `steady_s` and
/// `members_steady_cores` (each member's CPU over those seconds, in cores, from the
/// samples nearest their ends). Nulls where the timeline or trace is too short.
pub fn window(start_unix_ms: u64, timeline: &[u64], samples: &[Sample]) -> Value {
    let n = timeline.len();
    let (Some(&a), Some(&b)) = (timeline.get(n / 10), timeline.get(n * 9 / 10)) else {
        return json!({"steady_servers_per_minute": null, "steady_s": null, "members_steady_cores": null});
    };
    let delivered = n * 9 / 10 - n / 10;
    let rate = (b > a).then(|| delivered as f64 * 60_000.0 / (b - a) as f64);
    let nearest = |at: u64| samples.iter().min_by_key(|(t, _)| t.abs_diff(at));
    let cores: Option<Vec<Option<f64>>> =
        match (nearest(start_unix_ms + a), nearest(start_unix_ms + b)) {
            (Some((ta, ca)), Some((tb, cb))) if tb > ta => Some(
                ca.iter()
                    .zip(cb)
                    .map(|(x, y)| match (x, y) {
                        (Some(x), Some(y)) => Some(
                            ((y - x) * 1000.0 / (tb - ta) as f64 * 10_000.0).round() / 10_000.0,
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        };
    json!({
        "steady_servers_per_minute": rate,
        "steady_s": (b > a).then(|| (b - a) as f64 / 1000.0),
        "members_steady_cores": cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_runs_from_the_tenth_to_the_ninetieth_percentile() {
        // 100 deliveries, one every 100 ms from 1 s: the 10th at 2 s, the 90th at 10 s
        let timeline: Vec<u64> = (0..100).map(|i| 1_000 + i * 100).collect();
        let start = 1_000_000;
        // one member used 0.05 core all along, the other nothing from 2 s on
        let samples: Vec<Sample> = (0..=60)
            .map(|i| {
                let t = i * 250;
                let busy = t as f64 / 1000.0 * 0.05;
                let idle = (t.min(2_000)) as f64 / 1000.0 * 0.05;
                (start + t, vec![Some(busy), Some(idle)])
            })
            .collect();
        let w = window(start, &timeline, &samples);
        assert_eq!(w["steady_s"], 8.0);
        // 80 deliveries in 8 s
        assert_eq!(w["steady_servers_per_minute"], 600.0);
        assert_eq!(w["members_steady_cores"], json!([0.05, 0.0]));
    }

    #[test]
    fn too_little_to_read_gives_nulls() {
        let w = window(0, &[], &[]);
        assert!(w["steady_servers_per_minute"].is_null());
        let w = window(0, &[5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5], &[]);
        assert!(w["steady_servers_per_minute"].is_null());
        assert!(w["members_steady_cores"].is_null());
    }
}
