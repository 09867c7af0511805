//! Three members in one process, talking gRPC over loopback: commands proposed on any member
//! are committed once and applied identically everywhere, and the ledger survives a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{free_addr, start, wait_leader, Pki};
use raft::replicated::{advance_rules, RaftLedger};
use raft::state::LEDGER_RULES;
use raft::types::Member;
use raft::{Applied, Command, Ledger, Rejection};

fn claim(id: &str, member: &str) -> Command {
    Command::Claim {
        identity: id.into(),
        member: member.into(),
        lease_until_ms: u64::MAX / 2,
        seen_ms: 1,
        at_ms: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_agree_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|id| {
            (
                id,
                Member {
                    name: format!("m{id}"),
                    raft_addr: free_addr().to_string(),
                    admin_addr: String::new(),
                },
            )
        })
        .collect();
    let mut members = Vec::new();
    for (id, me) in &nodes {
        members.push(start(*id, me, dir.path(), &pki).await);
    }
    // a first start: nothing on disk yet
    assert!(members.iter().all(|m| !m.restarted));
    for m in &members {
        m.bootstrap(nodes.clone()).await.unwrap();
    }
    wait_leader(&members).await;

    // a client without a certificate from the cluster CA is refused
    let other = Pki::new();
    let stranger = raft::network::Network::new(Some(other.tls("m1")));
    let probe = raft::types::Batch::default();
    assert!(stranger
        .forward(&nodes[&1], &probe, Duration::from_secs(5))
        .await
        .is_err());
    let plain = raft::network::Network::new(None);
    assert!(plain
        .forward(&nodes[&1], &probe, Duration::from_secs(5))
        .await
        .is_err());
    // and one with a certificate for the wrong name cannot pose as a member
    let misnamed = Member {
        name: "m9".into(),
        ..nodes[&1].clone()
    };
    let member_net = raft::network::Network::new(Some(pki.tls("m2")));
    assert!(member_net
        .forward(&misnamed, &probe, Duration::from_secs(5))
        .await
        .is_err());
    assert!(member_net
        .forward(&nodes[&1], &probe, Duration::from_secs(5))
        .await
        .is_ok());

    // proposals from every member, concurrently, so followers forward and batches form
    let ledgers: Vec<_> = members.iter().map(|m| RaftLedger::new(m.clone())).collect();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let l = ledgers[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            l.propose(claim(&format!("n{i}"), &format!("m{}", i % 3 + 1)))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Applied::Ok);
    }
    // a conflicting claim is rejected by the rules, on whichever member proposes it
    let r = ledgers[2].propose(claim("n0", "m3")).await.unwrap();
    assert!(matches!(r, Applied::Rejected(Rejection::ClaimedBy { .. })));
    // a command larger than a log entry may be is refused before anything is written
    let huge = Command::Enrolled {
        identity: "n0".into(),
        member: "m1".into(),
        config_digest: "d".into(),
        facts: [("blob".to_string(), "x".repeat(2 * 1024 * 1024))].into(),
        at_ms: 2,
    };
    assert!(matches!(
        ledgers[0].propose(huge).await,
        Err(raft::LedgerError::Unavailable(_))
    ));

    // every member applies the same ledger
    for _ in 0..50 {
        let counts: Vec<usize> = futures_counts(&ledgers).await;
        if counts.iter().all(|c| *c == 300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = ledgers[0].records().await;
    for l in &ledgers[1..] {
        assert_eq!(l.records().await, a);
    }

    // the ledger rules: a new group applies the first ones; a follower cannot raise them, the
    // leader does once every voter reports it applies the newest, and every replica follows
    for m in &members {
        assert_eq!(m.store().state().await.ledger.rules(), 1);
    }
    let leader_id = wait_leader(&members).await;
    let li = members.iter().position(|m| m.id == leader_id).unwrap();
    let fi = (li + 1) % 3;
    assert_eq!(
        advance_rules(&members[fi], ledgers[fi].as_ref())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        advance_rules(&members[li], ledgers[li].as_ref())
            .await
            .unwrap(),
        Some(LEDGER_RULES)
    );
    assert_eq!(
        advance_rules(&members[li], ledgers[li].as_ref())
            .await
            .unwrap(),
        None,
        "raised twice"
    );
    for _ in 0..50 {
        let mut all = true;
        for m in &members {
            all &= m.store().state().await.ledger.rules() == LEDGER_RULES;
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &members {
        assert_eq!(m.store().state().await.ledger.rules(), LEDGER_RULES);
    }

    // a new member joins as a learner after the log was compacted: it can only catch up
    // through a snapshot, sent in 4 KiB chunks
    let leader_id = wait_leader(&members).await;
    let leader = members.iter().find(|m| m.id == leader_id).unwrap().clone();
    leader.openraft().trigger().snapshot().await.unwrap();
    for _ in 0..50 {
        let purged = leader
            .openraft()
            .metrics()
            .borrow()
            .purged
            .map(|p| p.index)
            .unwrap_or(0);
        if purged > 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        leader.openraft().metrics().borrow().purged.is_some(),
        "log was not purged"
    );
    let me4 = Member {
        name: "m4".into(),
        raft_addr: free_addr().to_string(),
        admin_addr: String::new(),
    };
    let m4 = start(4, &me4, dir.path(), &pki).await;
    leader.add_learner(4, me4.clone()).await.unwrap();
    for _ in 0..50 {
        if m4.store().state().await.ledger.len() == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let learned: Vec<_> = m4.store().state().await.ledger.all_records();
    assert_eq!(learned, a);

    // the learner becomes a voter, then leaves again
    leader.promote(4).await.unwrap();
    assert_eq!(leader.voters(), [1, 2, 3, 4].into());
    leader.remove(4).await.unwrap();
    assert_eq!(leader.voters(), [1, 2, 3].into());
    let nodes_left: Vec<u64> = leader
        .openraft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(nodes_left, vec![1, 2, 3]);
    m4.shutdown().await;
    drop((m4, leader));

    // restart every member from disk: same ledger
    drop(ledgers);
    for m in members.drain(..) {
        m.shutdown().await;
        // the store closes once Raft's tasks and the gRPC server let go of it
        let weak = Arc::downgrade(m.store());
        drop(m);
        for _ in 0..50 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(weak.strong_count(), 0, "store still open after shutdown");
    }
    let mut again = Vec::new();
    for (id, me) in &nodes {
        again.push(start(*id, me, dir.path(), &pki).await);
    }
    assert!(again.iter().all(|m| m.restarted));
    wait_leader(&again).await;
    for m in &again {
        let recs: Vec<_> = m.store().state().await.ledger.all_records();
        assert_eq!(recs, a);
    }
}

async fn futures_counts(ledgers: &[Arc<RaftLedger>]) -> Vec<usize> {
    let mut out = Vec::new();
    for l in ledgers {
        out.push(l.records().await.len());
    }
    out
}
