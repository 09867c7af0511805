//! Ownership epochs: who works which waiting servers, decided once per change of the live
//! set instead of once per server (ledger rules 6).
//!
//! Before rules 6 a member claimed every server in the ledger before asking it anything, so
//! two members that briefly disagreed about who is live could not both drive one server
//! (each `gencsr` makes the server a new key: two flows at once would leave it a certificate
//! for a key it no longer has). That cost a replicated command per server. Now the leader
//! commits an [`Epoch`]: the live members (and who leads, and its share), from which every
//! member computes the same owner of each server by rendezvous hashing. A member works a
//! server without claiming it when it owns it in the current epoch and the epoch is settled
//! for it:
//! - every member of the previous epoch that was still live acknowledges the new epoch
//!   (`EpochAck`) once no flow it started under an older epoch is running, so after the acks
//!   nobody drives a server under an old owner;
//! - a member that never acknowledges (it died, or is cut off) stops by itself: it works only
//!   while its own last committed heartbeat is recent (the fence, held on the member), and
//!   the epoch counts as settled anyway once its `settle_by_ms` has passed, which the leader
//!   puts beyond that fence plus a server call's timeout;
//! - a server whose owner did not change between the newest settled epoch and the current
//!   one may be worked at once: nobody else owned it in between.
//!
//! The state machine holds the current and previous epoch and each member's newest
//! acknowledgement, and the servers lent out ([`Loan`], rules 7): near the end of a fleet an
//! owner whose queue is still long lends servers it has not started to a member that ran out
//! of its own. The lender chooses what it lends (only it knows what it has not started), the
//! loan is committed before the borrower hears of it, the borrower starts a lent server only
//! under the epoch it was lent in and drives it only until the loan ends, and the lender (or a
//! restart of it, which reads the loans from its replica) leaves it alone until then. As a check behind the members' own, a flow's end (`Finish`) is refused
//! when it names an epoch older than one its member acknowledged (that member promised it had
//! no such flow left) or newer than the current one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One ownership epoch, as the leader committed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: u64,
    /// The members that take servers, sorted.
    pub members: Vec<String>,
    /// Who led when it was made: it takes `leader_share_milli` / 1000 of a follower's share.
    pub leader: Option<String>,
    pub leader_share_milli: u32,
    /// Members of the previous epoch, still live, that must acknowledge this one.
    pub must_ack: BTreeSet<String>,
    /// Settled from then on (Unix ms) even without every acknowledgement.
    pub settle_by_ms: u64,
    /// Not settled before then (Unix ms): members of the previous epoch that were no longer
    /// live when this one was made (so they need not acknowledge it) have stopped by then,
    /// their last server call included.
    pub not_before_ms: u64,
    pub at_ms: u64,
}

impl Epoch {
    /// The leader's share of a follower's (1.0: even shares).
    pub fn leader_share(&self) -> f64 {
        f64::from(self.leader_share_milli) / 1000.0
    }
}

/// The replicated ownership state (in the cluster settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub current: Option<Epoch>,
    pub previous: Option<Epoch>,
    /// member -> the newest epoch it acknowledged.
    pub acked: BTreeMap<String, u64>,
    /// identity -> the loan on it (rules 7); a loan is dropped once it has ended. Shared:
    /// the settings are read for every flow and every 200 ms, and near the end of a fleet
    /// there are thousands of loans, which a copy of the settings copied each time (a tenth
    /// of a capped follower's CPU). A change copies the map only while a reader holds it.
    #[serde(default, skip_serializing_if = "no_loans")]
    pub loans: Arc<BTreeMap<String, Loan>>,
}

fn no_loans(loans: &Arc<BTreeMap<String, Loan>>) -> bool {
    loans.is_empty()
}

/// A waiting server its owner lent to another member (rules 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loan {
    pub from: String,
    pub to: String,
    /// The epoch it was lent under: the borrower starts it only while that is current.
    pub epoch: u64,
    /// The borrower starts it only before then (Unix ms).
    pub start_by_ms: u64,
    /// The borrower sends it nothing after then (Unix ms); the lender leaves it alone until
    /// [`LOAN_GRACE_MS`] later.
    pub until_ms: u64,
}

impl Loan {
    /// Whether the loan still keeps everyone but the borrower off the server at `now_ms`.
    pub fn in_force(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms.saturating_add(LOAN_GRACE_MS)
    }
}

/// Most servers one `Lend` command lends.
pub const MAX_LEND: usize = 512;
/// Most loans in force at once: the loans live in the cluster settings, written whole when
/// they change.
pub const MAX_LOANS: usize = 16_384;
/// Longest loan (from its command's time to its end).
pub const MAX_LOAN_MS: u64 = 10 * 60_000;
/// How long past a loan's end the lender still leaves the server alone: clock skew between
/// the two members (the borrower's last call is sent to end by the loan's end).
pub const LOAN_GRACE_MS: u64 = 2_000;

/// Why a `Lend` command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LendRefusal {
    /// Not under the current epoch (`current`).
    StaleEpoch { current: u64 },
    /// Lender or borrower is not a member of the current epoch, or they are the same.
    NotMembers,
    /// Nothing lent, too many at once, or times out of order or too far ahead.
    OutOfBounds(String),
    /// This server is lent already.
    Lent(String),
}

impl std::fmt::Display for LendRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LendRefusal::StaleEpoch { current } => {
                write!(f, "not under the current ownership epoch ({current})")
            }
            LendRefusal::NotMembers => {
                f.write_str("lender and borrower must be two members of the current epoch")
            }
            LendRefusal::OutOfBounds(why) => f.write_str(why),
            LendRefusal::Lent(identity) => write!(f, "{identity} is lent already"),
        }
    }
}

impl Ownership {
    /// The current epoch's number; 0 before the first.
    pub fn epoch(&self) -> u64 {
        self.current.as_ref().map_or(0, |e| e.epoch)
    }

    /// True when every member that had to acknowledge `e` did, or its settle time passed,
    /// and the members that did not have to have stopped (`not_before_ms`).
    pub fn settled(&self, e: &Epoch, now_ms: u64) -> bool {
        now_ms >= e.not_before_ms && (now_ms >= e.settle_by_ms || self.all_acked(e))
    }

    /// True when every member that had to acknowledge `e` did.
    pub fn all_acked(&self, e: &Epoch) -> bool {
        e.must_ack.iter().all(|m| self.acked_by(m) >= e.epoch)
    }

    /// The newest epoch `member` acknowledged (0: none).
    pub fn acked_by(&self, member: &str) -> u64 {
        self.acked.get(member).copied().unwrap_or(0)
    }

    /// The newest epoch it holds that is settled at `now_ms`: the current one, else the
    /// previous one. `None` when neither is (or there is none): work waits.
    pub fn newest_settled(&self, now_ms: u64) -> Option<&Epoch> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|e| self.settled(e, now_ms))
    }

    /// Whether `member` holds no server: the current epoch leaves it out and it acknowledged
    /// that epoch (so no flow it started under an older one runs, and it starts none).
    pub fn left_out_and_acked(&self, member: &str) -> bool {
        self.current.as_ref().is_some_and(|e| {
            !e.members.iter().any(|m| m == member) && self.acked_by(member) >= e.epoch
        })
    }

    /// Takes up `next` if it follows the current epoch.
    pub fn advance(&mut self, next: Epoch) -> Result<(), u64> {
        let expected = self.epoch() + 1;
        if next.epoch != expected {
            return Err(self.epoch());
        }
        self.previous = self.current.take();
        self.current = Some(next);
        Ok(())
    }

    /// Notes that `member` has no flow left from before `epoch`.
    pub fn ack(&mut self, member: &str, epoch: u64) -> Result<(), u64> {
        if epoch > self.epoch() {
            return Err(self.epoch());
        }
        let a = self.acked.entry(member.to_string()).or_insert(0);
        *a = (*a).max(epoch);
        Ok(())
    }

    /// Whether a flow of `member` started under `epoch` may still end: not after the member
    /// acknowledged a newer epoch (it said it had no such flow), not under an epoch not yet
    /// made, and in a cluster with epochs never without one.
    pub(crate) fn flow_may_end(&self, member: &str, epoch: u64) -> bool {
        let acked = self.acked_by(member);
        epoch <= self.epoch() && epoch >= acked && (epoch > 0 || self.current.is_none())
    }

    /// The loan on `identity` still in force at `now_ms`.
    pub fn loan(&self, identity: &str, now_ms: u64) -> Option<&Loan> {
        self.loans.get(identity).filter(|l| l.in_force(now_ms))
    }

    /// Records that `from` lent `identities` to `to` under `epoch` at `at_ms`: all of them, or
    /// none when the command breaks a rule. Loans that ended are dropped first.
    #[allow(clippy::too_many_arguments)]
    pub fn lend(
        &mut self,
        from: &str,
        to: &str,
        epoch: u64,
        identities: &[String],
        start_by_ms: u64,
        until_ms: u64,
        at_ms: u64,
    ) -> Result<(), LendRefusal> {
        let Some(current) = self.current.as_ref().filter(|e| e.epoch == epoch) else {
            return Err(LendRefusal::StaleEpoch {
                current: self.epoch(),
            });
        };
        let named = |m: &str| current.members.iter().any(|x| x == m);
        if from == to || !named(from) || !named(to) {
            return Err(LendRefusal::NotMembers);
        }
        if identities.is_empty() || identities.len() > MAX_LEND {
            return Err(LendRefusal::OutOfBounds(format!(
                "lends {} servers (1 to {MAX_LEND})",
                identities.len()
            )));
        }
        if !(at_ms <= start_by_ms
            && start_by_ms <= until_ms
            && until_ms <= at_ms.saturating_add(MAX_LOAN_MS))
        {
            return Err(LendRefusal::OutOfBounds(format!(
                "times out of order or too far ahead: at {at_ms}, start by {start_by_ms}, until {until_ms}"
            )));
        }
        self.drop_ended_loans(at_ms);
        if let Some(lent) = identities.iter().find(|i| self.loans.contains_key(*i)) {
            return Err(LendRefusal::Lent(lent.clone()));
        }
        let distinct: BTreeSet<&String> = identities.iter().collect();
        if self.loans.len() + distinct.len() > MAX_LOANS {
            return Err(LendRefusal::OutOfBounds(format!(
                "{} loans in force already (at most {MAX_LOANS})",
                self.loans.len()
            )));
        }
        let loans = Arc::make_mut(&mut self.loans);
        for identity in distinct {
            loans.insert(
                identity.clone(),
                Loan {
                    from: from.to_string(),
                    to: to.to_string(),
                    epoch,
                    start_by_ms,
                    until_ms,
                },
            );
        }
        Ok(())
    }

    /// Drops the loans that no longer keep anyone off their server at `now_ms`.
    pub fn drop_ended_loans(&mut self, now_ms: u64) {
        // looked at first: `make_mut` copies a map a reader holds, even to change nothing
        if self.loans.values().any(|l| !l.in_force(now_ms)) {
            Arc::make_mut(&mut self.loans).retain(|_, l| l.in_force(now_ms));
        }
    }

    /// Forgets the acknowledgements of members not in `names` (they left the group).
    pub(crate) fn retain(&mut self, names: &BTreeSet<String>) {
        self.acked.retain(|m, _| names.contains(m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u64, must_ack: &[&str], settle_by_ms: u64) -> Epoch {
        Epoch {
            epoch: n,
            members: vec!["a".into(), "b".into()],
            leader: Some("a".into()),
            leader_share_milli: 500,
            must_ack: must_ack.iter().map(|s| s.to_string()).collect(),
            settle_by_ms,
            not_before_ms: 0,
            at_ms: 0,
        }
    }

    #[test]
    fn a_member_holds_nothing_once_an_epoch_leaves_it_out_and_it_acknowledged() {
        let mut o = Ownership::default();
        assert!(!o.left_out_and_acked("c"), "no epoch yet");
        let mut with_c = epoch(1, &[], 0);
        with_c.members.push("c".into());
        o.advance(with_c).unwrap();
        o.ack("c", 1).unwrap();
        assert!(!o.left_out_and_acked("c"), "named by the epoch in force");
        // drained: the next epoch leaves c out, and c may still run flows of epoch 1
        o.advance(epoch(2, &["a", "b", "c"], 0)).unwrap();
        assert!(!o.left_out_and_acked("c"), "not acknowledged yet");
        o.ack("c", 2).unwrap();
        assert!(o.left_out_and_acked("c"));
        assert!(!o.left_out_and_acked("a"), "a is in it");
    }

    #[test]
    fn an_epoch_settles_by_every_ack_or_by_its_time() {
        let mut o = Ownership::default();
        assert!(o.newest_settled(0).is_none());
        o.advance(epoch(1, &[], 10_000)).unwrap();
        assert_eq!(o.newest_settled(0).map(|e| e.epoch), Some(1));
        o.advance(epoch(2, &["a", "b"], 10_000)).unwrap();
        // the new one waits for a and b; the previous one is still settled
        assert_eq!(o.newest_settled(5_000).map(|e| e.epoch), Some(1));
        o.ack("a", 2).unwrap();
        assert_eq!(o.newest_settled(5_000).map(|e| e.epoch), Some(1));
        o.ack("b", 2).unwrap();
        assert_eq!(o.newest_settled(5_000).map(|e| e.epoch), Some(2));
        // or its time passes without b
        let mut t = Ownership::default();
        t.advance(epoch(1, &[], 0)).unwrap();
        t.advance(epoch(2, &["b"], 10_000)).unwrap();
        assert_eq!(t.newest_settled(9_999).map(|e| e.epoch), Some(1));
        assert_eq!(t.newest_settled(10_000).map(|e| e.epoch), Some(2));
        // never before the members that left stopped, acks or not
        let mut n = Ownership::default();
        n.advance(Epoch {
            not_before_ms: 5_000,
            ..epoch(1, &[], 0)
        })
        .unwrap();
        assert!(!n.settled(n.current.as_ref().unwrap(), 4_999));
        assert!(n.settled(n.current.as_ref().unwrap(), 5_000));
    }

    fn ids(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_loan_is_made_whole_under_the_current_epoch_between_two_of_its_members() {
        let mut o = Ownership::default();
        let lend = |o: &mut Ownership, from: &str, to: &str, epoch: u64, what: &[&str], at: u64| {
            o.lend(from, to, epoch, &ids(what), at + 10_000, at + 60_000, at)
        };
        assert_eq!(
            lend(&mut o, "a", "b", 0, &["n1"], 0),
            Err(LendRefusal::StaleEpoch { current: 0 }),
            "no epoch yet"
        );
        o.advance(epoch(1, &[], 0)).unwrap();
        o.advance(epoch(2, &[], 0)).unwrap();
        assert_eq!(
            lend(&mut o, "a", "b", 1, &["n1"], 0),
            Err(LendRefusal::StaleEpoch { current: 2 })
        );
        for (from, to) in [("a", "a"), ("a", "c"), ("c", "b")] {
            assert_eq!(
                lend(&mut o, from, to, 2, &["n1"], 0),
                Err(LendRefusal::NotMembers),
                "{from} -> {to}"
            );
        }
        assert!(matches!(
            lend(&mut o, "a", "b", 2, &[], 0),
            Err(LendRefusal::OutOfBounds(_))
        ));
        let many: Vec<String> = (0..=MAX_LEND).map(|i| format!("n{i}")).collect();
        assert!(matches!(
            o.lend("a", "b", 2, &many, 10, 20, 0),
            Err(LendRefusal::OutOfBounds(_))
        ));
        // start-by before the command, end before start-by, or too far ahead
        for (start_by, until) in [(5, 100), (200, 100), (10, 10 + MAX_LOAN_MS + 1)] {
            assert!(matches!(
                o.lend("a", "b", 2, &ids(&["n1"]), start_by, until, 10),
                Err(LendRefusal::OutOfBounds(_))
            ));
        }
        assert!(o.loans.is_empty(), "nothing of a refused command stays");

        lend(&mut o, "a", "b", 2, &["n1", "n2"], 1_000).unwrap();
        let l = o.loan("n1", 1_000).unwrap();
        assert_eq!((l.from.as_str(), l.to.as_str(), l.epoch), ("a", "b", 2));
        assert_eq!((l.start_by_ms, l.until_ms), (11_000, 61_000));
        // all or nothing: n2 is lent already, so n3 is not lent either
        assert_eq!(
            lend(&mut o, "b", "a", 2, &["n3", "n2"], 2_000),
            Err(LendRefusal::Lent("n2".into()))
        );
        assert!(o.loan("n3", 2_000).is_none());
        // in force until its end and the grace after it, then dropped by the next loan
        assert!(o.loan("n1", 61_000 + LOAN_GRACE_MS - 1).is_some());
        assert!(o.loan("n1", 61_000 + LOAN_GRACE_MS).is_none());
        lend(&mut o, "a", "b", 2, &["n2"], 61_000 + LOAN_GRACE_MS).unwrap();
        assert_eq!(o.loans.len(), 1);
    }

    #[test]
    fn loans_in_force_are_bounded() {
        let mut o = Ownership::default();
        o.advance(epoch(1, &[], 0)).unwrap();
        for batch in 0..MAX_LOANS / MAX_LEND {
            let what: Vec<String> = (0..MAX_LEND).map(|i| format!("n{batch}-{i}")).collect();
            o.lend("a", "b", 1, &what, 0, 60_000, 0).unwrap();
        }
        assert_eq!(o.loans.len(), MAX_LOANS);
        assert!(matches!(
            o.lend("a", "b", 1, &ids(&["one.more"]), 0, 60_000, 0),
            Err(LendRefusal::OutOfBounds(_))
        ));
        // once they ended there is room again
        o.lend("a", "b", 1, &ids(&["one.more"]), 70_000, 70_000, 70_000)
            .unwrap();
        assert_eq!(o.loans.len(), 1);
    }

    #[test]
    fn a_reader_shares_the_loans_and_keeps_what_it_read() {
        let mut o = Ownership::default();
        o.advance(epoch(1, &[], 0)).unwrap();
        o.lend("a", "b", 1, &ids(&["n1"]), 0, 60_000, 0).unwrap();
        let read = o.clone();
        assert!(
            Arc::ptr_eq(&read.loans, &o.loans),
            "a copy does not copy the map"
        );
        // nothing ended: the map stays shared
        o.drop_ended_loans(1_000);
        assert!(Arc::ptr_eq(&read.loans, &o.loans));
        o.lend("a", "b", 1, &ids(&["n2"]), 1_000, 60_000, 1_000)
            .unwrap();
        assert_eq!(read.loans.len(), 1, "the reader's copy is what it read");
        assert_eq!(o.loans.len(), 2);
        o.drop_ended_loans(60_000 + LOAN_GRACE_MS);
        assert!(o.loans.is_empty());
        assert_eq!(read.loans.len(), 1);
    }

    #[test]
    fn epochs_follow_one_another_and_acks_are_not_ahead() {
        let mut o = Ownership::default();
        assert_eq!(o.advance(epoch(2, &[], 0)), Err(0));
        o.advance(epoch(1, &[], 0)).unwrap();
        // a second leader's proposal of the same number comes too late
        assert_eq!(o.advance(epoch(1, &[], 0)), Err(1));
        assert_eq!(o.ack("a", 2), Err(1));
        o.ack("a", 1).unwrap();
        o.ack("a", 0).unwrap();
        assert_eq!(o.acked["a"], 1);
    }

    #[test]
    fn a_flow_ends_only_under_an_epoch_its_member_has_not_left_behind() {
        let mut o = Ownership::default();
        // no epochs (one member alone): flows carry 0
        assert!(o.flow_may_end("a", 0));
        assert!(!o.flow_may_end("a", 1));
        o.advance(epoch(1, &[], 0)).unwrap();
        assert!(!o.flow_may_end("a", 0), "a cluster with epochs needs one");
        assert!(o.flow_may_end("a", 1));
        o.advance(epoch(2, &["a"], 0)).unwrap();
        assert!(o.flow_may_end("a", 1), "not acknowledged yet");
        o.ack("a", 2).unwrap();
        assert!(!o.flow_may_end("a", 1));
        assert!(o.flow_may_end("a", 2));
        assert!(o.flow_may_end("b", 1), "b acknowledged nothing");
    }
}
