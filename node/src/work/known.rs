//! The servers a member's work queue knows, and how many are in each state.
//!
//! The counts are kept as entries change state, so the queue's gauges and `counts()` cost the
//! same with fifty servers waiting as with fifty thousand. They used to be counted over the
//! whole map on every offer, start and end: work per server that grew with the queue, a
//! lone member with 15,000 servers queued paying for it 45,000 times.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Queued,
    InFlight,
    Waiting,
}

impl State {
    fn slot(self) -> usize {
        self as usize
    }
}

/// One known server. Its state changes only through [`Known::set_state`], which keeps the
/// counts.
pub(super) struct Entry {
    state: State,
    pub attempts: u32,
    /// When it was queued, or last seen again while queued: a server that discovery keeps
    /// finding is still waiting however long this member's queue is.
    pub queued_at: Instant,
    /// Unix ms when the server was last seen in provisioning mode (discovery or event).
    pub seen_ms: u64,
    /// Lent to this member by another: it starts before this member's own servers and only
    /// until its loan's start-by time.
    pub borrowed: bool,
}

impl Entry {
    /// A server queued at `at`, last seen at `seen_ms` (0: not seen, a retry).
    pub fn queued(at: Instant, seen_ms: u64) -> Entry {
        Entry {
            state: State::Queued,
            attempts: 0,
            queued_at: at,
            seen_ms,
            borrowed: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Records a fresh sighting (discovery or event) of a server already known.
    pub fn sighted(&mut self, now_ms: u64, now: Instant) {
        self.seen_ms = now_ms;
        if self.state == State::Queued {
            self.queued_at = now;
        }
    }

    /// Queued and neither run nor seen for longer than `after`.
    pub fn stale(&self, now: Instant, after: Duration) -> bool {
        self.state == State::Queued && now.saturating_duration_since(self.queued_at) > after
    }
}

/// Known servers by identity, with their number in each state.
#[derive(Default)]
pub(super) struct Known {
    entries: HashMap<String, Entry>,
    by_state: [usize; 3],
}

impl Known {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, identity: &str) -> bool {
        self.entries.contains_key(identity)
    }

    pub fn get(&self, identity: &str) -> Option<&Entry> {
        self.entries.get(identity)
    }

    /// The entry to change; its state cannot be changed through it.
    pub fn get_mut(&mut self, identity: &str) -> Option<&mut Entry> {
        self.entries.get_mut(identity)
    }

    /// Adds (or replaces) `identity`'s entry.
    pub fn insert(&mut self, identity: String, entry: Entry) {
        self.by_state[entry.state.slot()] += 1;
        if let Some(old) = self.entries.insert(identity, entry) {
            self.by_state[old.state.slot()] -= 1;
        }
    }

    /// Moves a known server to `state`; false when it is not known.
    pub fn set_state(&mut self, identity: &str, state: State) -> bool {
        let Some(e) = self.entries.get_mut(identity) else {
            return false;
        };
        self.by_state[e.state.slot()] -= 1;
        self.by_state[state.slot()] += 1;
        e.state = state;
        true
    }

    pub fn remove(&mut self, identity: &str) -> Option<Entry> {
        let e = self.entries.remove(identity)?;
        self.by_state[e.state.slot()] -= 1;
        Some(e)
    }

    /// Known servers in `state`.
    pub fn count(&self, state: State) -> usize {
        self.by_state[state.slot()]
    }

    /// Takes out up to `n` queued servers that `keep` picks.
    pub fn take_queued(&mut self, n: usize, keep: impl Fn(&str) -> bool) -> Vec<(String, Entry)> {
        let picked: Vec<String> = self
            .entries
            .iter()
            .filter(|(id, e)| e.state == State::Queued && keep(id))
            .map(|(id, _)| id.clone())
            .take(n)
            .collect();
        picked
            .into_iter()
            .filter_map(|id| self.remove(&id).map(|e| (id, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 3] = [State::Queued, State::InFlight, State::Waiting];

    fn recount(k: &Known) -> [usize; 3] {
        let mut c = [0; 3];
        for e in k.entries.values() {
            c[e.state.slot()] += 1;
        }
        c
    }

    #[test]
    fn counts_follow_every_change() {
        let mut k = Known::default();
        let now = Instant::now();
        // a fixed pseudo-random walk over 50 identities: inserts (new and again), state
        // changes (known and unknown) and removals, checked against a full recount each step
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for step in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = format!("s{}", x % 50);
            match (x >> 8) % 4 {
                0 => k.insert(id, Entry::queued(now, step)),
                1 | 2 => {
                    let state = ALL[((x >> 16) % 3) as usize];
                    let known = k.contains(&id);
                    assert_eq!(k.set_state(&id, state), known);
                    if known {
                        assert_eq!(k.get(&id).map(Entry::state), Some(state));
                    }
                }
                _ => {
                    let known = k.contains(&id);
                    assert_eq!(k.remove(&id).is_some(), known);
                }
            }
            let want = recount(&k);
            for s in ALL {
                assert_eq!(k.count(s), want[s.slot()], "step {step}, {s:?}");
            }
            assert_eq!(want.iter().sum::<usize>(), k.len());
        }
        assert!(k.len() > 0, "the walk left some entries");
    }

    #[test]
    fn only_queued_servers_are_taken_to_lend_and_the_counts_follow() {
        let mut k = Known::default();
        let now = Instant::now();
        for i in 0..10 {
            k.insert(format!("s{i}"), Entry::queued(now, i));
        }
        k.set_state("s0", State::InFlight);
        k.set_state("s1", State::Waiting);
        // at most 5, never s0 (in flight), s1 (waiting) or s2 (turned away)
        let taken = k.take_queued(5, |id| id != "s2");
        assert_eq!(taken.len(), 5);
        for (id, e) in &taken {
            assert!(!["s0", "s1", "s2"].contains(&id.as_str()), "{id}");
            assert_eq!(e.seen_ms, id[1..].parse::<u64>().unwrap());
            assert!(!k.contains(id));
        }
        assert_eq!(k.count(State::Queued), 3);
        assert_eq!(recount(&k), [3, 1, 1]);
        assert_eq!(k.take_queued(10, |_| true).len(), 3);
        assert_eq!(k.count(State::Queued), 0);
    }

    #[test]
    fn a_queued_server_goes_stale_unless_seen_again() {
        let interval = Duration::from_secs(60);
        let after = interval * 2;
        let t0 = Instant::now();
        let unseen = Entry::queued(t0, 1);
        assert!(!unseen.stale(t0 + interval, after));
        assert!(unseen.stale(t0 + interval * 3, after));

        // discovery found it again after 90 s: it waits 2 intervals from then
        let mut seen = Entry::queued(t0, 1);
        seen.sighted(2, t0 + Duration::from_secs(90));
        assert_eq!(seen.seen_ms, 2);
        assert!(!seen.stale(t0 + interval * 3, after));
        assert!(seen.stale(t0 + Duration::from_secs(90) + after + interval, after));
    }

    #[test]
    fn only_queued_servers_go_stale_and_a_sighting_keeps_their_retry_time() {
        let after = Duration::from_secs(120);
        let t0 = Instant::now();
        for state in [State::InFlight, State::Waiting] {
            let mut k = Known::default();
            k.insert("s".into(), Entry::queued(t0, 1));
            assert!(k.set_state("s", state));
            let Some(e) = k.get_mut("s") else {
                panic!("inserted");
            };
            e.sighted(5, t0 + after * 2);
            assert_eq!(e.queued_at, t0, "{state:?}: not renewed outside the queue");
            assert_eq!(e.seen_ms, 5);
            assert!(!e.stale(t0 + after * 10, after), "{state:?}");
        }
    }
}
