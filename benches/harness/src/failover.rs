//! The failover scenario's faults: kill -9 the Raft leader when 30 % of the fleet is done and a
//! follower at 60 %, each started again (same config, same data) after a pause, as systemd
//! would; and how long provisioning stalled after each kill.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_tests::{FleetProcess, ProvisionerProcess};
use serde_json::{json, Value};

/// When a killed member is started again.
const RESTART_AFTER: Duration = Duration::from_secs(2);

/// One kill: which member, what it was, and when (Unix ms).
pub struct Kill {
    pub member: String,
    pub role: &'static str,
    pub at_unix_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Servers the simulator has seen done so far (its `configured` event lines).
fn done(events: &Path) -> usize {
    std::fs::read_to_string(events)
        .map(|t| t.matches("\"event\":\"configured\"").count())
        .unwrap_or(0)
}

/// The Raft leader's id as the first live member that knows one reports it.
fn leader(members: &[ProvisionerProcess], alive: &[bool]) -> Option<u64> {
    members
        .iter()
        .zip(alive)
        .filter(|(_, a)| **a)
        .find_map(|(m, _)| m.status()["raft"]["leader"].as_u64())
}

/// Member `i` has Raft id `i + 1` and name `prov<id>` (the harness's numbering).
fn name(i: usize) -> String {
    format!("prov{}", i + 1)
}

/// Watches the fleet's progress and kills as described above, until the fleet exits.
pub fn drive(
    events: &Path,
    servers: usize,
    members: &mut [ProvisionerProcess],
    fleet: &mut FleetProcess,
) -> Vec<Kill> {
    let mut kills = Vec::new();
    let mut alive = vec![true; members.len()];
    let mut restart_at: Vec<(usize, Instant)> = Vec::new();
    let thresholds = [(0.3, "leader"), (0.6, "follower")];
    let mut next = 0;
    while fleet.proc.is_running() {
        let now = Instant::now();
        restart_at.retain(|(i, at)| {
            if now < *at {
                return true;
            }
            match members[*i].restart() {
                Ok(()) => {
                    // (back on its own small machine: a restart joins the member's group
                    // before it runs, as the first start did)
                    alive[*i] = true;
                    eprintln!("bench: {} started again", name(*i));
                }
                Err(e) => eprintln!("bench: cannot start {} again: {e}", name(*i)),
            }
            false
        });
        if let Some((share, role)) = thresholds.get(next) {
            if done(events) as f64 >= share * servers as f64 {
                let leader = leader(members, &alive);
                let victim = match (*role, leader) {
                    ("leader", Some(l)) => (l as usize).checked_sub(1),
                    ("follower", Some(l)) => (0..members.len())
                        .find(|i| alive[*i] && *i as u64 + 1 != l && members.len() > 1),
                    _ => None,
                };
                if let Some(i) = victim.filter(|i| *i < members.len()) {
                    members[i].kill();
                    alive[i] = false;
                    let k = Kill {
                        member: name(i),
                        role,
                        at_unix_ms: unix_ms(),
                    };
                    eprintln!(
                        "bench: kill -9 {} ({role}) at {:.0} % done",
                        k.member,
                        share * 100.0
                    );
                    kills.push(k);
                    restart_at.push((i, Instant::now() + RESTART_AFTER));
                    next += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kills
}

/// The longest time without a server done after each kill: from the kill to the first
/// server done after it, and between servers done, until the next kill or until 95 % of the
/// fleet is done (past that the tail is stragglers, not a stall). Times are ms since
/// `start_unix_ms`; `timeline` is sorted.
pub fn stalls(kills: &[Kill], start_unix_ms: u64, timeline: &[u64]) -> Vec<Value> {
    let tail = timeline
        .get((timeline.len() as f64 * 0.95) as usize)
        .or(timeline.last())
        .copied()
        .unwrap_or(0);
    kills
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let at = k.at_unix_ms.saturating_sub(start_unix_ms);
            let end = kills
                .get(i + 1)
                .map(|n| n.at_unix_ms.saturating_sub(start_unix_ms))
                .unwrap_or(tail)
                .max(at);
            let mut last = at;
            let mut stall = 0;
            for t in timeline.iter().copied().filter(|t| *t > at && *t <= end) {
                stall = stall.max(t - last);
                last = t;
            }
            if last == at || i + 1 < kills.len() {
                // nothing done in the window at all, or nothing from the last one to the next
                // kill (the window ends there, not at a server done)
                stall = stall.max(end - last);
            }
            json!({"killed": k.member, "role": k.role, "at_ms": at, "stall_ms": stall})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(at: u64) -> Kill {
        Kill {
            member: "prov1".into(),
            role: "leader",
            at_unix_ms: 1_000 + at,
        }
    }

    #[test]
    fn a_stall_is_the_longest_gap_after_a_kill_until_the_next() {
        // done every 10 ms, except nothing between 300 and 2,300 ms
        let mut timeline: Vec<u64> = (1..=30).map(|i| i * 10).collect();
        timeline.extend((0..200).map(|i| 2_300 + i * 10));
        let s = stalls(&[kill(295), kill(3_000)], 1_000, &timeline);
        assert_eq!(s[0]["stall_ms"], 2_000);
        assert_eq!(s[0]["at_ms"], 295);
        // the second window ends at 95 % of the fleet: even spacing only
        assert_eq!(s[1]["stall_ms"], 10);
    }

    #[test]
    fn nothing_done_after_a_kill_stalls_the_whole_window() {
        let timeline: Vec<u64> = (1..=100).map(|i| i * 10).collect();
        let s = stalls(&[kill(2_000)], 1_000, &timeline);
        assert_eq!(
            s[0]["stall_ms"], 0,
            "window is empty: the kill came after 95 %"
        );
        let s = stalls(&[kill(100), kill(600)], 1_000, &[50, 700]);
        assert_eq!(s[0]["stall_ms"], 500);
        // one server done just after the kill, then nothing until the next kill
        let s = stalls(&[kill(100), kill(600)], 1_000, &[50, 110, 700, 710]);
        assert_eq!(s[0]["stall_ms"], 490);
    }
}
