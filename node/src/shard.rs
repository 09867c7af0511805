//! Sharing the waiting servers between live cluster members.
//!
//! Every member hears every discovery reply and lifecycle event; each works only the servers
//! it owns. The owner of a server is chosen by rendezvous hashing over the live members (those
//! with a recent heartbeat in the replicated ledger): every member computes the same owner from
//! the same committed state, and when a member dies only its servers move. Two members that
//! briefly disagree about who is live are kept apart by the ledger, which lets only one of them
//! claim a server.

use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// The owner of `identity` among `members`, or `None` when nobody is live.
pub fn owner<'a>(identity: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| score(m, identity))
        .map(String::as_str)
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

/// This member's view of who is live.
pub struct Shard {
    pub me: String,
    live: RwLock<Vec<String>>,
}

impl Shard {
    /// A member that owns nothing until it has seen itself live in the ledger.
    pub fn new(me: &str) -> Self {
        Shard {
            me: me.to_string(),
            live: RwLock::new(Vec::new()),
        }
    }

    /// True once this member's own heartbeat is committed.
    pub fn am_live(&self) -> bool {
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
        let live = self.live();
        owner(identity, &live) == Some(self.me.as_str())
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

    #[test]
    fn shard_tracks_live_members() {
        let s = Shard::new("prov1");
        assert!(!s.owns("anything"));
        assert!(s.set_live(vec!["prov1".into()]));
        assert!(s.am_live() && s.owns("anything"));
        assert!(s.set_live(members(3)));
        assert!(!s.set_live(members(3)));
        let owned = (0..300).filter(|i| s.owns(&format!("n{i}"))).count();
        assert!(owned > 50 && owned < 150, "{owned}");
    }
}
