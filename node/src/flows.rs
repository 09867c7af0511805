//! Which flows this member runs under which ownership epoch, whether a server may be started
//! without a claim, and the fence that stops a member cut off from the cluster (ledger rules
//! 6; the protocol is in [`raft::ownership`]).
//!
//! Every flow holds a [`Ticket`] for the epoch it started under (a flow that claims its
//! server, before the first epoch, under 0). The member acknowledges an epoch once no ticket
//! of an older one is left, and the leader makes a new epoch when the live members, the
//! leader or its share change. Outside a cluster there are no epochs: the member is alone and
//! every flow runs under 0 without a claim. A server lent to this member (rules 7, see
//! [`raft::ownership::Loan`]) starts as one it owns, with the loan's end on its ticket; one lent
//! away is another member's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::ownership::{Epoch, Ownership};
use raft::state::{LEND_RULES, OWNED_RULES, REENROLL_SETTLE_MS};

use crate::shard::weighted_owner;

/// How long after its last committed heartbeat was proposed a member still starts or drives
/// servers under an epoch. Heartbeats go every 2 s; the live window is 7 s.
pub const FENCE_MS: u64 = 5_000;
/// Clocks of two members are assumed no further apart than this.
pub const SKEW_MS: u64 = 1_000;

/// How a flow may start on a server.
#[derive(Debug)]
pub enum Start {
    /// Claim it in the ledger first (before ledger rules 6 or the first epoch).
    Claim(Ticket),
    /// Work it without a claim under the ticket's epoch.
    Owned(Ticket),
    /// Not yet: the epoch is not settled for it.
    Wait,
    /// Not while this member is fenced (no heartbeat committed lately): nothing of the
    /// server's doing, so it starts again as soon as the fence opens.
    Fenced,
    /// This member enrolled it moments ago (it is restarting into its configuration); its
    /// own ledger may not show that yet.
    JustEnrolled,
    /// Another member owns it now.
    NotMine,
}

/// A flow in progress under `epoch`; dropping it ends the flow.
#[derive(Debug)]
pub struct Ticket {
    flows: Arc<Flows>,
    pub epoch: u64,
    /// A lent server's: the loan's end (Unix ms), after which nothing is sent to it.
    pub loan_until_ms: Option<u64>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.flows.lock();
        if let Some(n) = inner.running.get_mut(&self.epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.running.remove(&self.epoch);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    rules: u32,
    view: Ownership,
    /// epoch -> flows running under it.
    running: BTreeMap<u64, usize>,
    /// An epoch this member proposed (to make, as leader) and when (Unix ms).
    proposing: Option<(u64, u64)>,
    /// An acknowledgement in flight, and when it was sent.
    acking: Option<(u64, u64)>,
    /// Servers this member enrolled within the settle time, and when: a second sighting of
    /// one (its restart) must not start a flow before this member's replica applied the
    /// enrollment, which a claim used to check at apply time.
    enrolled: HashMap<String, u64>,
    /// `enrolled` holds at most about twice this before expired entries are dropped.
    enrolled_kept: usize,
}

/// This member's flows and its view of the ownership epochs.
#[derive(Debug)]
pub struct Flows {
    me: String,
    clustered: bool,
    inner: Mutex<Inner>,
    /// Unix ms until which this member may drive servers without a claim.
    fence_until_ms: AtomicU64,
}

/// A proposal not committed within this long may be made again.
const RETRY_MS: u64 = 5_000;

impl Flows {
    pub fn new(me: &str, clustered: bool) -> Arc<Flows> {
        Arc::new(Flows {
            me: me.to_string(),
            clustered,
            inner: Mutex::new(Inner::default()),
            fence_until_ms: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes up the ledger's rules and ownership as applied; true when the epoch changed.
    pub fn follow(&self, rules: u32, ownership: &Ownership) -> bool {
        let mut inner = self.lock();
        let changed = inner.view.epoch() != ownership.epoch();
        inner.rules = rules;
        if inner.view != *ownership {
            inner.view = ownership.clone();
        }
        if inner.proposing.is_some_and(|(e, _)| e <= ownership.epoch()) {
            inner.proposing = None;
        }
        if inner
            .acking
            .is_some_and(|(e, _)| e <= ownership.acked_by(&self.me))
        {
            inner.acking = None;
        }
        changed
    }

    /// The current epoch, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        self.lock().view.current.clone()
    }

    /// Notes a heartbeat of this member, proposed at `at_ms`, as committed.
    pub fn heartbeat_committed(&self, at_ms: u64) {
        self.fence_until_ms
            .fetch_max(at_ms.saturating_add(FENCE_MS), Ordering::Relaxed);
    }

    /// Unix ms until which this member may drive servers without a claim (forever alone).
    pub fn fence_until(&self) -> u64 {
        if self.clustered {
            self.fence_until_ms.load(Ordering::Relaxed)
        } else {
            u64::MAX
        }
    }

    /// Whether this member may drive a server without a claim at `now_ms`.
    pub fn unfenced(&self, now_ms: u64) -> bool {
        now_ms < self.fence_until()
    }

    /// Whether this member, in a cluster that works without claims (rules 6 and an epoch),
    /// is fenced at `now_ms`: it starts no flow until a heartbeat of its own is committed
    /// again. Flows that claim first do not need the fence.
    pub fn fenced(&self, now_ms: u64) -> bool {
        if !self.clustered || self.unfenced(now_ms) {
            return false;
        }
        let inner = self.lock();
        inner.rules >= OWNED_RULES && inner.view.current.is_some()
    }

    /// Whether this member works under an ownership epoch that names it, with its fence open:
    /// then who owns what is settled, whoever else is live. What a restarted member finds
    /// once its first heartbeat is committed.
    pub fn in_force(&self, now_ms: u64) -> bool {
        let named = self
            .lock()
            .view
            .current
            .as_ref()
            .is_some_and(|e| e.members.contains(&self.me));
        named && self.unfenced(now_ms)
    }

    /// How a flow on `identity` may start at `now_ms`; a ticket is held from here.
    pub fn start(self: &Arc<Self>, identity: &str, now_ms: u64) -> Start {
        let mut inner = self.lock();
        if inner
            .enrolled
            .get(identity)
            .is_some_and(|at| now_ms < at.saturating_add(REENROLL_SETTLE_MS))
        {
            return Start::JustEnrolled;
        }
        let (epoch, loan_until_ms) =
            match decide(&self.me, self.clustered, &inner, identity, now_ms) {
                Decision::Claim => {
                    let epoch = inner.view.epoch();
                    *inner.running.entry(epoch).or_default() += 1;
                    return Start::Claim(self.ticket(epoch, None));
                }
                Decision::Owned(epoch) => (epoch, None),
                Decision::Borrowed { epoch, until_ms } => (epoch, Some(until_ms)),
                Decision::Wait => return Start::Wait,
                Decision::NotMine => return Start::NotMine,
            };
        if self.clustered && !self.unfenced(now_ms) {
            return Start::Fenced;
        }
        *inner.running.entry(epoch).or_default() += 1;
        Start::Owned(self.ticket(epoch, loan_until_ms))
    }

    /// Whether loans apply (rules 7, in a cluster, under an epoch).
    pub fn lending(&self) -> bool {
        let inner = self.lock();
        self.clustered && inner.rules >= LEND_RULES && inner.view.current.is_some()
    }

    /// For a server with a loan in force at `now_ms`: whether this member may start it (lent
    /// to it, under the current epoch, before the loan's start-by time). `None`: no loan.
    pub fn lent(&self, identity: &str, now_ms: u64) -> Option<bool> {
        let inner = self.lock();
        if inner.view.loans.is_empty() {
            return None;
        }
        let loan = inner.view.loan(identity, now_ms)?;
        Some(borrowable(&self.me, &inner.view, loan, now_ms))
    }

    /// Whether this member may lend `identity` at `now_ms`: it would start it under the
    /// current epoch as its owner, not as a borrower.
    pub fn may_lend(&self, identity: &str, now_ms: u64) -> bool {
        let inner = self.lock();
        inner.rules >= LEND_RULES
            && matches!(
                decide(&self.me, self.clustered, &inner, identity, now_ms),
                Decision::Owned(e) if e == inner.view.epoch() && e > 0
            )
    }

    /// Notes that this member's ledger command enrolling `identity` at `at_ms` was applied.
    pub fn enrolled(&self, identity: &str, at_ms: u64) {
        let mut inner = self.lock();
        inner.enrolled.insert(identity.to_string(), at_ms);
        if inner.enrolled.len() > 2 * inner.enrolled_kept.max(512) {
            let cutoff = at_ms.saturating_sub(REENROLL_SETTLE_MS);
            inner.enrolled.retain(|_, at| *at >= cutoff);
            inner.enrolled_kept = inner.enrolled.len();
        }
    }

    fn ticket(self: &Arc<Self>, epoch: u64, loan_until_ms: Option<u64>) -> Ticket {
        Ticket {
            flows: self.clone(),
            epoch,
            loan_until_ms,
        }
    }

    /// Flows running, by the epoch they started under.
    pub fn running(&self) -> BTreeMap<u64, usize> {
        self.lock().running.clone()
    }

    /// Flows running: the servers this member holds (under epochs it holds no claims).
    pub fn in_progress(&self) -> usize {
        self.lock().running.values().sum()
    }

    /// The epoch this member should acknowledge now: the current one, once no flow of an
    /// older one is left, unless acknowledged (or being acknowledged) already. Marks it as
    /// being acknowledged.
    pub fn ack_due(&self, now_ms: u64) -> Option<u64> {
        let mut inner = self.lock();
        if inner.rules < OWNED_RULES {
            return None;
        }
        let e = inner.view.epoch();
        let older_running = inner
            .running
            .keys()
            .next()
            .is_some_and(|oldest| *oldest < e);
        let sent = inner
            .acking
            .is_some_and(|(a, at)| a >= e && now_ms < at + RETRY_MS);
        if e == 0 || inner.view.acked_by(&self.me) >= e || older_running || sent {
            return None;
        }
        inner.acking = Some((e, now_ms));
        Some(e)
    }

    /// The epoch the leader should make now from the members it sees live (`live`, sorted),
    /// itself as leader with `leader_share_milli`, every member's last heartbeat and the
    /// settle time (`grace_ms`: the fence, a server call's timeout and the clock skew);
    /// `None` when the current one says the same (or one is being made). Marks it as being
    /// made.
    pub fn next_epoch(
        &self,
        live: &[String],
        leader_share_milli: u32,
        heartbeats: &BTreeMap<String, u64>,
        window_ms: u64,
        grace_ms: u64,
        now_ms: u64,
    ) -> Option<Epoch> {
        let mut inner = self.lock();
        if inner.rules < OWNED_RULES || live.is_empty() {
            return None;
        }
        let current = inner.view.current.as_ref();
        let leader = Some(self.me.clone());
        if current.is_some_and(|c| {
            c.members == live && c.leader == leader && c.leader_share_milli == leader_share_milli
        }) {
            return None;
        }
        let number = inner.view.epoch() + 1;
        if inner
            .proposing
            .is_some_and(|(e, at)| e >= number && now_ms < at + RETRY_MS)
        {
            return None;
        }
        let recent = |m: &String| {
            heartbeats
                .get(m)
                .is_some_and(|at| now_ms.saturating_sub(*at) <= window_ms)
        };
        // the first epoch needs nobody's word: flows before it claimed their servers
        let owners: BTreeSet<String> = current
            .map(|c| c.members.iter().cloned().collect())
            .unwrap_or_default();
        let must_ack: BTreeSet<String> = owners.iter().filter(|m| recent(m)).cloned().collect();
        let not_before_ms = owners
            .iter()
            .filter(|m| !must_ack.contains(*m))
            .map(|m| {
                heartbeats
                    .get(m)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(grace_ms)
            })
            .max()
            .unwrap_or(0);
        inner.proposing = Some((number, now_ms));
        Some(Epoch {
            epoch: number,
            members: live.to_vec(),
            leader,
            leader_share_milli,
            must_ack,
            settle_by_ms: now_ms.saturating_add(grace_ms),
            not_before_ms,
            at_ms: now_ms,
        })
    }

    /// Forgets a proposal that failed, so the next tick makes it again.
    pub fn proposal_failed(&self) {
        self.lock().proposing = None;
    }

    /// Forgets an acknowledgement that failed.
    pub fn ack_failed(&self) {
        self.lock().acking = None;
    }
}

enum Decision {
    Claim,
    Owned(u64),
    /// Lent to this member under `epoch` until `until_ms`.
    Borrowed {
        epoch: u64,
        until_ms: u64,
    },
    Wait,
    NotMine,
}

/// Whether `me` may start a server under `loan` at `now`: lent to it, under the epoch in
/// force, before the start-by time.
fn borrowable(me: &str, own: &Ownership, loan: &raft::ownership::Loan, now: u64) -> bool {
    loan.to == me && loan.epoch == own.epoch() && now < loan.start_by_ms
}

fn owner<'a>(e: &'a Epoch, identity: &str) -> Option<&'a str> {
    weighted_owner(identity, &e.members, e.leader.as_deref(), e.leader_share())
}

/// The start rule (see [`raft::ownership`]): `me` may work `identity` under the current epoch
/// when it owns it there and either no epoch came before, or the previous one is settled and
/// the server's owner in it (when not `me`) acknowledged the current one, had stopped by
/// `not_before_ms`, or the current one is settled.
fn decide(me: &str, clustered: bool, inner: &Inner, identity: &str, now: u64) -> Decision {
    if inner.rules < OWNED_RULES {
        return Decision::Claim;
    }
    if !clustered {
        return Decision::Owned(0);
    }
    let own = &inner.view;
    let Some(e) = own.current.as_ref() else {
        return Decision::Claim;
    };
    if let Some(loan) = own.loan(identity, now) {
        // while a loan is in force only its borrower works the server, and only as lent
        return if borrowable(me, own, loan, now) {
            Decision::Borrowed {
                epoch: loan.epoch,
                until_ms: loan.until_ms,
            }
        } else {
            Decision::NotMine
        };
    }
    if owner(e, identity) != Some(me) {
        return Decision::NotMine;
    }
    let Some(p) = own.previous.as_ref() else {
        return Decision::Owned(e.epoch);
    };
    if !own.settled(p, now) {
        return Decision::Wait;
    }
    let free = match owner(p, identity) {
        None => true,
        Some(o) if o == me => true,
        Some(o) => {
            own.acked_by(o) >= e.epoch
                || (!e.must_ack.contains(o) && now >= e.not_before_ms)
                || own.settled(e, now)
        }
    };
    if free {
        Decision::Owned(e.epoch)
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Epoch `epoch` of `members`, led by `a` with even shares.
    fn led_by_a(epoch: u64, members: &[&str]) -> Epoch {
        Epoch {
            epoch,
            members: names(members),
            leader: Some("a".into()),
            leader_share_milli: 1000,
            ..Default::default()
        }
    }

    fn at_rules(me: &str, rules: u32) -> Arc<Flows> {
        let f = Flows::new(me, true);
        f.follow(rules, &Ownership::default());
        f.heartbeat_committed(1_000_000);
        f
    }

    /// The first identity `who` owns in `e` and `prev_owner` owned in `p`.
    fn server(e: &Epoch, who: &str, p: Option<&Epoch>, prev_owner: &str) -> String {
        (0..10_000)
            .map(|i| format!("n{i}"))
            .find(|id| {
                owner(e, id) == Some(who) && p.is_none_or(|p| owner(p, id) == Some(prev_owner))
            })
            .unwrap()
    }

    #[test]
    fn before_rules_6_or_the_first_epoch_flows_claim_and_alone_they_never_do() {
        let f = at_rules("a", OWNED_RULES - 1);
        assert!(matches!(f.start("n1", 0), Start::Claim(t) if t.epoch == 0));
        let f = at_rules("a", OWNED_RULES);
        assert!(matches!(f.start("n1", 0), Start::Claim(_)));
        let alone = Flows::new("a", false);
        alone.follow(OWNED_RULES, &Ownership::default());
        assert!(matches!(alone.start("n1", 0), Start::Owned(t) if t.epoch == 0));
        assert!(alone.unfenced(u64::MAX - 1));
    }

    #[test]
    fn the_leader_makes_epochs_as_the_live_set_changes_and_members_ack_them() {
        let a = at_rules("a", OWNED_RULES);
        let hb = BTreeMap::from([("a".to_string(), 10_000), ("b".to_string(), 10_000)]);
        let e1 = a
            .next_epoch(&names(&["a", "b"]), 1000, &hb, 7_000, 16_000, 10_000)
            .unwrap();
        assert_eq!((e1.epoch, e1.must_ack.len()), (1, 0));
        // not again while it is being made
        assert!(a
            .next_epoch(&names(&["a", "b"]), 1000, &hb, 7_000, 16_000, 10_001)
            .is_none());
        // a claim flow running when epoch 1 comes holds back a's acknowledgement
        let claim = match a.start("n1", 10_000) {
            Start::Claim(t) => t,
            s => panic!("{s:?}"),
        };
        let own = Ownership {
            current: Some(e1.clone()),
            ..Default::default()
        };
        assert!(a.follow(OWNED_RULES, &own));
        assert!(a
            .next_epoch(&names(&["a", "b"]), 1000, &hb, 7_000, 16_000, 10_002)
            .is_none());
        assert_eq!(a.ack_due(10_003), None);
        assert_eq!(a.in_progress(), 1, "the claim flow is what a holds");
        drop(claim);
        assert_eq!(a.in_progress(), 0);
        assert_eq!(a.ack_due(10_004), Some(1));
        assert_eq!(a.ack_due(10_005), None, "sent already");
        // b stopped beating: epoch 2 without it; b need not acknowledge, but its servers wait
        // until its last call could have ended
        let hb = BTreeMap::from([("a".to_string(), 20_000), ("b".to_string(), 11_000)]);
        let e2 = a
            .next_epoch(&names(&["a"]), 1000, &hb, 7_000, 16_000, 20_000)
            .unwrap();
        assert_eq!(e2.epoch, 2);
        assert_eq!(e2.must_ack, BTreeSet::from(["a".to_string()]));
        assert_eq!(e2.not_before_ms, 27_000);
        assert_eq!(e2.settle_by_ms, 36_000);
    }

    #[test]
    fn an_epoch_is_in_force_for_a_member_it_names_while_its_fence_is_open() {
        let e1 = Epoch {
            at_ms: 10_000,
            ..led_by_a(1, &["a", "b"])
        };
        let own = Ownership {
            current: Some(e1),
            ..Default::default()
        };
        // restarted: the replayed epoch names it, but no heartbeat of this process is committed
        let b = Flows::new("b", true);
        b.follow(OWNED_RULES, &own);
        assert!(
            !b.in_force(20_000),
            "fenced until its heartbeat is committed"
        );
        b.heartbeat_committed(20_000);
        assert!(b.in_force(20_001));
        assert!(!b.in_force(20_000 + FENCE_MS), "the fence closed again");
        // not named by the epoch, or no epoch at all
        let c = Flows::new("c", true);
        c.follow(OWNED_RULES, &own);
        c.heartbeat_committed(20_000);
        assert!(!c.in_force(20_001));
        let d = Flows::new("d", true);
        d.follow(OWNED_RULES, &Ownership::default());
        d.heartbeat_committed(20_000);
        assert!(!d.in_force(20_001));
    }

    #[test]
    fn a_moved_server_starts_once_its_old_owner_let_go() {
        let e1 = led_by_a(1, &["a", "b"]);
        // epoch 2: c joins, a still leads
        let e2 = Epoch {
            must_ack: BTreeSet::from(["a".into(), "b".into()]),
            settle_by_ms: 50_000,
            at_ms: 10_000,
            ..led_by_a(2, &["a", "b", "c"])
        };
        let c = at_rules("c", OWNED_RULES);
        let mut own = Ownership::default();
        own.advance(e1.clone()).unwrap();
        own.advance(e2.clone()).unwrap();
        c.follow(OWNED_RULES, &own);
        let from_b = server(&e2, "c", Some(&e1), "b");
        let from_a = server(&e2, "c", Some(&e1), "a");
        let not_c = server(&e2, "a", None, "");
        assert!(matches!(c.start(&not_c, 20_000), Start::NotMine));
        assert!(matches!(c.start(&from_b, 20_000), Start::Wait));
        // b acknowledged: what was b's is c's now; a's still waits
        own.ack("b", 2).unwrap();
        c.follow(OWNED_RULES, &own);
        assert!(matches!(c.start(&from_b, 20_000), Start::Owned(t) if t.epoch == 2));
        assert!(matches!(c.start(&from_a, 20_000), Start::Wait));
        // or the settle time passed
        assert!(matches!(c.start(&from_a, 50_000), Start::Owned(_)));
        // a server that stays with its owner starts at once
        let a = at_rules("a", OWNED_RULES);
        a.follow(OWNED_RULES, &own);
        let stays = server(&e2, "a", Some(&e1), "a");
        assert!(matches!(a.start(&stays, 20_000), Start::Owned(_)));
        // a fenced member starts nothing
        let late = Flows::new("a", true);
        late.follow(OWNED_RULES, &own);
        assert!(matches!(late.start(&stays, 20_000), Start::Fenced));
        assert!(late.fenced(20_000));
        late.heartbeat_committed(19_000);
        assert!(!late.fenced(20_000));
        assert!(matches!(late.start(&stays, 20_000), Start::Owned(_)));
        assert!(matches!(late.start(&stays, 24_000), Start::Fenced));
        assert!(late.fenced(24_000));
        // a member alone is never fenced, nor one whose flows claim first
        assert!(!Flows::new("a", false).fenced(u64::MAX - 1));
        let claims = Flows::new("a", true);
        claims.follow(OWNED_RULES - 1, &own);
        assert!(!claims.fenced(20_000));
        assert!(matches!(claims.start(&stays, 20_000), Start::Claim(_)));
    }

    #[test]
    fn a_server_this_member_just_enrolled_is_not_started_again_within_the_settle_time() {
        let alone = Flows::new("a", false);
        alone.follow(OWNED_RULES, &Ownership::default());
        alone.enrolled("n1", 10_000);
        assert!(matches!(alone.start("n1", 10_001), Start::JustEnrolled));
        assert!(matches!(alone.start("n2", 10_001), Start::Owned(_)));
        assert!(matches!(
            alone.start("n1", 10_000 + REENROLL_SETTLE_MS),
            Start::Owned(_)
        ));
        // bounded: expired entries go once many were added
        for i in 0..2_000u64 {
            alone.enrolled(&format!("m{i}"), 100_000 + i * 100);
        }
        assert!(
            alone.lock().enrolled.len() < 1_100,
            "{}",
            alone.lock().enrolled.len()
        );
    }

    #[test]
    fn a_member_that_stopped_beating_lets_go_of_its_servers_at_not_before() {
        let e1 = led_by_a(1, &["a", "b"]);
        let e2 = Epoch {
            must_ack: BTreeSet::from(["a".into()]),
            settle_by_ms: 60_000,
            not_before_ms: 30_000,
            at_ms: 20_000,
            ..led_by_a(2, &["a"])
        };
        let mut own = Ownership::default();
        own.advance(e1.clone()).unwrap();
        own.advance(e2.clone()).unwrap();
        own.ack("a", 2).unwrap();
        let a = at_rules("a", OWNED_RULES);
        a.follow(OWNED_RULES, &own);
        let from_b = server(&e2, "a", Some(&e1), "b");
        assert!(matches!(a.start(&from_b, 29_999), Start::Wait));
        assert!(matches!(a.start(&from_b, 30_000), Start::Owned(_)));
    }

    #[test]
    fn a_lent_server_is_the_borrowers_to_start_before_its_start_by_and_nobody_elses() {
        let e1 = led_by_a(1, &["a", "b", "c"]);
        let mut own = Ownership {
            current: Some(e1.clone()),
            ..Default::default()
        };
        let (a, b, c) = (
            at_rules("a", LEND_RULES),
            at_rules("b", LEND_RULES),
            at_rules("c", LEND_RULES),
        );
        for f in [&a, &b, &c] {
            f.follow(LEND_RULES, &own);
        }
        let x = server(&e1, "a", None, "");
        assert!(a.lending() && a.may_lend(&x, 10_000));
        assert!(!b.may_lend(&x, 10_000), "b does not own it");
        assert_eq!(a.lent(&x, 10_000), None, "no loans yet");
        // a lends x to b at 10 s: start by 20 s, drive until 70 s
        own.lend(
            "a",
            "b",
            1,
            std::slice::from_ref(&x),
            20_000,
            70_000,
            10_000,
        )
        .unwrap();
        for f in [&a, &b, &c] {
            f.follow(LEND_RULES, &own);
        }
        assert_eq!(a.lent(&x, 10_000), Some(false));
        assert_eq!(b.lent(&x, 10_000), Some(true));
        assert_eq!(c.lent(&x, 10_000), Some(false));
        assert!(!a.may_lend(&x, 10_000), "lent already");
        assert!(matches!(a.start(&x, 10_000), Start::NotMine));
        assert!(matches!(c.start(&x, 10_000), Start::NotMine));
        match b.start(&x, 19_999) {
            Start::Owned(t) => assert_eq!((t.epoch, t.loan_until_ms), (1, Some(70_000))),
            s => panic!("{s:?}"),
        }
        // not after its start-by time; the owner waits for the loan's end and grace
        assert!(matches!(b.start(&x, 20_000), Start::NotMine));
        let over = 70_000 + raft::ownership::LOAN_GRACE_MS;
        assert!(matches!(a.start(&x, over - 1), Start::NotMine));
        assert!(matches!(a.start(&x, over), Start::Owned(t) if t.loan_until_ms.is_none()));
        assert_eq!(a.lent(&x, over), None);
        // under a newer epoch the borrower starts nothing it was lent before
        let y = format!("{x}.second");
        own.lend(
            "a",
            "b",
            1,
            std::slice::from_ref(&y),
            20_000,
            70_000,
            10_000,
        )
        .unwrap();
        own.advance(led_by_a(2, &["a", "b", "c"])).unwrap();
        b.follow(LEND_RULES, &own);
        assert_eq!(b.lent(&y, 11_000), Some(false));
        assert!(matches!(b.start(&y, 11_000), Start::NotMine));
        // before rules 7 nothing is lent
        let old = at_rules("a", OWNED_RULES);
        old.follow(
            OWNED_RULES,
            &Ownership {
                current: Some(e1.clone()),
                ..Default::default()
            },
        );
        assert!(!old.lending() && !old.may_lend(&x, 10_000));
    }
}
