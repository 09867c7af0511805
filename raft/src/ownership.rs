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
//! acknowledgement. As a check behind the members' own, a flow's end (`Finish`) is refused
//! when it names an epoch older than one its member acknowledged (that member promised it had
//! no such flow left) or newer than the current one.

use std::collections::{BTreeMap, BTreeSet};

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
