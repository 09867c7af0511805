//! Sharing the waiting servers between live cluster members.
//!
//! Every member hears every lifecycle event and the leader's discovery finds every waiting
//! server (`crate::offers` gives each member its own); each works only the servers
//! it owns. The owner of a server is chosen by rendezvous hashing over the live members (those
//! with a recent heartbeat in the replicated ledger): every member computes the same owner from
//! the same committed state, and when a member dies only its servers move. Two members that
//! briefly disagree about who is live are kept apart by the ledger, which lets only one of them
//! claim a server.
//!
//! The Raft leader does every member's coordination besides its own servers (it receives every
//! forwarded command, appends every entry and sends it to each follower), so it takes a
//! smaller share: weighted rendezvous hashing gives it `cluster.leader_share` of a follower's
//! share (default `3 / followers`, at most three quarters: three quarters with 3 and 5
//! members).
//! Members that disagree for a moment about who leads are kept apart by the ledger as above.

use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// The leader's share of a follower's, by default, however few the followers.
const DEFAULT_MOST_LEADER_SHARE: f64 = 0.75;

/// The owner of `identity` among `members`, or `None` when nobody is live.
pub fn owner<'a>(identity: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| score(m, identity))
        .map(String::as_str)
}

/// The owner of `identity` when `leader` (if live) counts `leader_weight` and every other
/// member 1: each member's share of servers is its weight over the sum of weights. With every
/// weight 1 this is [`owner`], server for server.
pub fn weighted_owner<'a>(
    identity: &str,
    members: &'a [String],
    leader: Option<&str>,
    leader_weight: f64,
) -> Option<&'a str> {
    let Some(leader) = leader.filter(|l| members.len() > 1 && members.iter().any(|m| m == l))
    else {
        return owner(identity, members);
    };
    if leader_weight >= 1.0 {
        return owner(identity, members);
    }
    let weighted = |m: &String| {
        let w = if m == leader { leader_weight } else { 1.0 };
        // a uniform draw in (0, 1]; w / -ln(u) is largest for the owner, and with equal
        // weights orders members as the draw itself does
        let u =
            (u64::from_be_bytes(score(m, identity)) as f64 + 1.0) / 18_446_744_073_709_551_616.0;
        if w <= 0.0 {
            f64::NEG_INFINITY
        } else {
            w / -u.ln()
        }
    };
    members
        .iter()
        .map(|m| (weighted(m), m))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, m)| m.as_str())
}

fn score(member: &str, identity: &str) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0]);
    h.update(identity.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// This member's view of who is live and who leads.
pub struct Shard {
    pub me: String,
    live: RwLock<Vec<String>>,
    leader: RwLock<Option<String>>,
    /// `cluster.leader_share`; `None`: three over the number of followers.
    leader_share: Option<f64>,
    /// The ownership epoch in force (ledger rules 6): owners come from it, not from this
    /// member's own view of who is live.
    epoch: RwLock<Option<raft::ownership::Epoch>>,
}

impl Shard {
    /// A member that owns nothing until it has seen itself live in the ledger.
    pub fn new(me: &str, leader_share: Option<f64>) -> Self {
        Shard {
            me: me.to_string(),
            live: RwLock::new(Vec::new()),
            leader: RwLock::new(None),
            leader_share,
            epoch: RwLock::new(None),
        }
    }

    /// Takes up the epoch in force; true when that changed who owns what (the first epoch
    /// usually says what this member's own view of the live members said already).
    pub fn set_epoch(&self, epoch: Option<raft::ownership::Epoch>) -> bool {
        let owners = |e: &raft::ownership::Epoch| {
            (e.members.clone(), e.leader.clone(), e.leader_share_milli)
        };
        let before = match self.epoch.read().as_deref() {
            Ok(Some(e)) => owners(e),
            _ => {
                let live = self.live();
                let share = self.leader_share_milli(live.len());
                (live, self.leader(), share)
            }
        };
        let changed = epoch.as_ref().map(owners).is_some_and(|now| now != before);
        if let Ok(mut e) = self.epoch.write() {
            *e = epoch;
        }
        changed
    }

    /// The leader's share of a follower's, per mille, among `members` members: what an epoch
    /// this member makes as leader says.
    pub fn leader_share_milli(&self, members: usize) -> u32 {
        (self.leader_share(members) * 1000.0).round() as u32
    }

    /// `cluster.leader_share`, else three over the followers and at most three quarters (three
    /// quarters with 3 and 5 members, 3/7 with 8): what the leader does beyond a follower grows
    /// with the followers it sends every entry to. Since a member that runs dry borrows
    /// servers (`crate::lending`), a leader with fewer of its own no longer idles at the end:
    /// measured with 3 members, three quarters beat a whole share in four interleaved pairs
    /// (1-5 %, the followers no longer waiting on a saturated leader), and with 5, three
    /// quarters beat half (`benches/BENCHMARKS.md`).
    fn leader_share(&self, members: usize) -> f64 {
        let followers = members.saturating_sub(1).max(1);
        let share = self
            .leader_share
            .unwrap_or((3.0 / followers as f64).min(DEFAULT_MOST_LEADER_SHARE));
        share.clamp(0.0, 1.0)
    }

    /// Replaces who leads; true when it changed.
    pub fn set_leader(&self, leader: Option<String>) -> bool {
        let Ok(mut l) = self.leader.write() else {
            return false;
        };
        if *l == leader {
            return false;
        }
        *l = leader;
        true
    }

    fn leader(&self) -> Option<String> {
        self.leader.read().ok().and_then(|l| l.clone())
    }

    /// True once this member's own heartbeat is committed (under epochs: once it is in the
    /// one in force).
    pub fn am_live(&self) -> bool {
        if let Ok(Some(e)) = self.epoch.read().as_deref() {
            return e.members.contains(&self.me);
        }
        self.live().contains(&self.me)
    }

    /// Replaces the live set; true when it changed.
    pub fn set_live(&self, mut members: Vec<String>) -> bool {
        members.sort();
        let Ok(mut live) = self.live.write() else {
            return false;
        };
        if *live == members {
            return false;
        }
        *live = members;
        true
    }

    pub fn live(&self) -> Vec<String> {
        self.live.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// True when this member should work on `identity`.
    pub fn owns(&self, identity: &str) -> bool {
        self.with_owner(identity, |o| o == Some(self.me.as_str()))
    }

    /// Who works on `identity`.
    pub fn owner(&self, identity: &str) -> Option<String> {
        self.with_owner(identity, |o| o.map(str::to_string))
    }

    /// `f` of the owner of `identity`: from the epoch in force, else from this member's own
    /// view of who is live and who leads.
    fn with_owner<R>(&self, identity: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        if let Ok(Some(e)) = self.epoch.read().as_deref() {
            return f(weighted_owner(
                identity,
                &e.members,
                e.leader.as_deref(),
                e.leader_share(),
            ));
        }
        let live = self.live();
        let share = self.leader_share(live.len());
        f(weighted_owner(
            identity,
            &live,
            self.leader().as_deref(),
            share,
        ))
    }

    /// The members servers are shared between: the epoch's, else the live ones.
    pub fn members(&self) -> Vec<String> {
        if let Ok(Some(e)) = self.epoch.read().as_deref() {
            return e.members.clone();
        }
        self.live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("prov{i}")).collect()
    }

    #[test]
    fn shares_are_spread_and_stable() {
        let three = members(3);
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts
                .entry(owner(&format!("n{i}"), &three).unwrap())
                .or_insert(0) += 1;
        }
        for m in &three {
            let c = counts[m.as_str()];
            assert!((800..1200).contains(&c), "{m}: {c}");
        }
        // removing a member moves only its servers
        let two = vec![three[0].clone(), three[2].clone()];
        for i in 0..3000 {
            let id = format!("n{i}");
            let before = owner(&id, &three).unwrap();
            let after = owner(&id, &two).unwrap();
            if before != "prov2" {
                assert_eq!(before, after);
            }
        }
        assert_eq!(owner("x", &[]), None);
    }

    fn shares(
        n: usize,
        leader: Option<&str>,
        weight: f64,
    ) -> std::collections::HashMap<String, usize> {
        let live = members(n);
        let mut counts = std::collections::HashMap::new();
        for i in 0..20_000 {
            let o = weighted_owner(&format!("n{i}"), &live, leader, weight).unwrap();
            *counts.entry(o.to_string()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn the_leader_takes_its_weight_of_a_share() {
        // weight 1, or no leader: exactly the unweighted owners
        let five = members(5);
        for i in 0..2000 {
            let id = format!("n{i}");
            let plain = owner(&id, &five);
            assert_eq!(weighted_owner(&id, &five, Some("prov2"), 1.0), plain);
            assert_eq!(weighted_owner(&id, &five, None, 0.25), plain);
            assert_eq!(weighted_owner(&id, &five, Some("gone"), 0.25), plain);
        }
        // a quarter of a follower's share: 0.25 / 4.25 of 20,000 is about 1,176
        let c = shares(5, Some("prov3"), 0.25);
        assert!((1000..1400).contains(&c["prov3"]), "{c:?}");
        for f in ["prov1", "prov2", "prov4", "prov5"] {
            assert!((4300..5100).contains(&c[f]), "{f}: {c:?}");
        }
        // weight 0: nothing, unless it is alone
        let c = shares(3, Some("prov1"), 0.0);
        assert_eq!(c.get("prov1"), None, "{c:?}");
        assert_eq!(
            weighted_owner("x", &members(1), Some("prov1"), 0.0),
            Some("prov1")
        );
        // only the leader's servers move when it starts leading
        let live = members(3);
        for i in 0..3000 {
            let id = format!("n{i}");
            let before = owner(&id, &live).unwrap();
            let after = weighted_owner(&id, &live, Some("prov1"), 0.5).unwrap();
            if before != after {
                assert_eq!(before, "prov1", "{id}");
            }
        }
    }

    #[test]
    fn shard_tracks_live_members_and_the_leader() {
        let s = Shard::new("prov1", None);
        assert!(!s.owns("anything"));
        assert!(s.set_live(vec!["prov1".into()]));
        assert!(s.am_live() && s.owns("anything"));
        assert!(s.set_live(members(3)));
        assert!(!s.set_live(members(3)));
        let owned = (0..300).filter(|i| s.owns(&format!("n{i}"))).count();
        assert!(owned > 50 && owned < 150, "{owned}");
        // leading three, three quarters of a follower's share (default): 0.75 / 2.75 of the
        // servers, about 818
        assert!(s.set_leader(Some("prov1".into())));
        assert!(!s.set_leader(Some("prov1".into())));
        let owned = (0..3000).filter(|i| s.owns(&format!("n{i}"))).count();
        assert!((730..910).contains(&owned), "{owned}");
        // leading five, three quarters of a follower's share (default): 0.75 / 4.75 of the
        // servers, about 474
        assert!(s.set_live(members(5)));
        let owned = (0..3000).filter(|i| s.owns(&format!("n{i}"))).count();
        assert!((400..550).contains(&owned), "{owned}");
        let small = Shard::new("prov1", Some(0.25));
        small.set_live(members(3));
        small.set_leader(Some("prov1".into()));
        // a quarter of a follower's share with three: 0.25 / 2.25 of the servers
        let owned = (0..3000).filter(|i| small.owns(&format!("n{i}"))).count();
        assert!((250..420).contains(&owned), "{owned}");
    }

    #[test]
    fn under_an_epoch_owners_come_from_it_and_only_a_change_of_owners_counts() {
        let s = Shard::new("prov1", None);
        s.set_live(members(3));
        s.set_leader(Some("prov1".into()));
        let mine: Vec<bool> = (0..300).map(|i| s.owns(&format!("n{i}"))).collect();
        // the first epoch says what the member's own view said: nothing moves
        let e1 = raft::ownership::Epoch {
            epoch: 1,
            members: members(3),
            leader: Some("prov1".into()),
            leader_share_milli: s.leader_share_milli(3),
            ..Default::default()
        };
        assert_eq!(e1.leader_share_milli, 750);
        assert!(!s.set_epoch(Some(e1.clone())));
        let same: Vec<bool> = (0..300).map(|i| s.owns(&format!("n{i}"))).collect();
        assert_eq!(mine, same);
        // the member's own view no longer decides; the next epoch does
        s.set_live(vec!["prov1".into()]);
        assert_eq!(
            mine,
            (0..300)
                .map(|i| s.owns(&format!("n{i}")))
                .collect::<Vec<_>>()
        );
        let e2 = raft::ownership::Epoch {
            epoch: 2,
            members: vec!["prov2".into(), "prov3".into()],
            leader: Some("prov2".into()),
            leader_share_milli: 500,
            ..e1
        };
        assert!(s.set_epoch(Some(e2)));
        assert!(!s.am_live());
        assert!((0..300).all(|i| !s.owns(&format!("n{i}"))));
    }
}
