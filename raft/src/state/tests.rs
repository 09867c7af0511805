//! Tests of the ledger's rules, one rule or property each.

use super::*;
use crate::command::{Command, FlowEnd, ReleaseOutcome};

fn claim(id: &str, m: &str, at: u64) -> Command {
    Command::Claim {
        identity: id.into(),
        member: m.into(),
        lease_until_ms: at + 1000,
        seen_ms: at,
        at_ms: at,
    }
}

fn issue(id: &str, m: &str, serial: &str, at: u64) -> Command {
    Command::IssueCredential {
        identity: id.into(),
        member: m.into(),
        serial: serial.into(),
        fingerprint: "f".into(),
        not_after: 1,
        at_ms: at,
    }
}

fn enrolled(id: &str, m: &str, at: u64) -> Command {
    Command::Enrolled {
        identity: id.into(),
        member: m.into(),
        config_digest: "d".into(),
        facts: BTreeMap::new(),
        at_ms: at,
    }
}

fn enroll(id: &str, m: &str, serial: &str, at: u64) -> Command {
    Command::Enroll {
        identity: id.into(),
        member: m.into(),
        serial: serial.into(),
        fingerprint: "f".into(),
        not_after: 1,
        config_digest: "d".into(),
        facts: BTreeMap::from([("role".into(), "web".into())]),
        at_ms: at,
    }
}

fn at_rules(rules: u32) -> LedgerState {
    let mut s = LedgerState::default();
    s.apply(&Command::SetRules { rules, at_ms: 0 }).unwrap();
    s
}

#[test]
fn enroll_is_the_credential_and_the_enrollment_in_one_command() {
    // not before rules 5: a member of an earlier build would not know it
    let mut old = at_rules(ENROLL_RULES - 1);
    old.apply(&claim("n1", "a", 0)).unwrap();
    assert_eq!(
        old.apply(&enroll("n1", "a", "01", 10)),
        Err(Rejection::NotEnabled {
            rules: ENROLL_RULES
        })
    );
    // the same record, serial index and digest as the two commands it stands for
    let (mut one, mut two) = (at_rules(ENROLL_RULES), at_rules(ENROLL_RULES));
    one.apply(&claim("n1", "a", 0)).unwrap();
    two.apply(&claim("n1", "a", 0)).unwrap();
    one.apply(&enroll("n1", "a", "01", 10)).unwrap();
    two.apply(&issue("n1", "a", "01", 10)).unwrap();
    two.apply(&Command::Enrolled {
        identity: "n1".into(),
        member: "a".into(),
        config_digest: "d".into(),
        facts: BTreeMap::from([("role".into(), "web".into())]),
        at_ms: 10,
    })
    .unwrap();
    let r = one.record("n1").unwrap();
    assert_eq!(Some(&r), two.record("n1").as_ref());
    assert_eq!(one.digest(), two.digest());
    assert_eq!((r.state, r.owner.as_deref()), (EnrollState::Enrolled, None));
    assert_eq!(r.credential.as_ref().map(|c| c.serial.as_str()), Some("01"));
    let events: Vec<_> = r.history.iter().map(|h| h.event.to_string()).collect();
    assert_eq!(
        events,
        ["claimed", "credential issued, serial 01", "enrolled"]
    );
    // sent again (a forward retried after it committed): nothing changes
    one.apply(&enroll("n1", "a", "01", 10)).unwrap();
    assert_eq!(one.record("n1").unwrap(), r);
    // the serial is nobody else's, and a credential needs the claim
    one.apply(&claim("n2", "a", 0)).unwrap();
    assert!(matches!(
        one.apply(&enroll("n2", "a", "01", 11)),
        Err(Rejection::SerialInUse { .. })
    ));
    assert!(matches!(
        one.apply(&enroll("n2", "b", "02", 11)),
        Err(Rejection::NotOwner { .. })
    ));
    // another member that sees it waiting within the settle time leaves it alone: it is
    // being configured and restarted
    assert_eq!(
        one.apply(&claim("n1", "b", 20)),
        Err(Rejection::AlreadyEnrolled)
    );
}

fn finish(id: &str, m: &str, epoch: u64, serial: Option<&str>, at: u64) -> Command {
    Command::Finish {
        identity: id.into(),
        member: m.into(),
        epoch,
        seen_ms: at,
        end: FlowEnd::Enrolled {
            credential: serial.map(|s| crate::command::Issued {
                serial: s.into(),
                fingerprint: "f".into(),
                not_after: 1,
            }),
            config_digest: "d".into(),
            facts: BTreeMap::from([("role".into(), "web".into())]),
        },
        at_ms: at,
    }
}

fn failed(id: &str, m: &str, epoch: u64, at: u64) -> Command {
    failed_after(id, m, epoch, at, None)
}

/// A flow's failure; `enrolled_at`: after its own enrollment then.
fn failed_after(id: &str, m: &str, epoch: u64, at: u64, enrolled_at: Option<u64>) -> Command {
    Command::Finish {
        identity: id.into(),
        member: m.into(),
        epoch,
        seen_ms: at,
        end: FlowEnd::Released {
            outcome: ReleaseOutcome::Failed {
                reason: "no csr".into(),
            },
            enrolled_at_ms: enrolled_at,
        },
        at_ms: at,
    }
}

fn new_epoch(n: u64, must_ack: &[&str], settle_by_ms: u64) -> Command {
    Command::NewEpoch(crate::ownership::Epoch {
        epoch: n,
        members: vec!["a".into(), "b".into()],
        leader: Some("a".into()),
        leader_share_milli: 500,
        must_ack: must_ack.iter().map(|m| m.to_string()).collect(),
        settle_by_ms,
        not_before_ms: 0,
        at_ms: 0,
    })
}

#[test]
fn a_flow_under_an_epoch_enrolls_its_server_with_one_command() {
    let mut old = at_rules(OWNED_RULES - 1);
    assert_eq!(
        old.apply(&finish("n1", "a", 0, Some("01"), 10)),
        Err(Rejection::NotEnabled { rules: OWNED_RULES })
    );
    assert_eq!(
        old.apply(&new_epoch(1, &[], 0)),
        Err(Rejection::NotEnabled { rules: OWNED_RULES })
    );

    let mut s = at_rules(OWNED_RULES);
    // one member alone makes no epochs: its flows carry 0
    s.apply(&finish("n1", "a", 0, Some("01"), 10)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Enrolled);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.owner, None);
    assert_eq!(r.credential.as_ref().map(|c| c.serial.as_str()), Some("01"));
    assert_eq!(r.facts["role"], "web");
    let events: Vec<_> = r.history.iter().map(|h| h.event.to_string()).collect();
    assert_eq!(events, ["credential issued, serial 01", "enrolled"]);
    // the same command again (a forward sent twice) changes nothing
    let digest = s.digest();
    s.apply(&finish("n1", "a", 0, Some("01"), 10)).unwrap();
    assert_eq!(s.digest(), digest);
    // a serial is never recorded twice; without a credential it is Enrolled's record
    assert_eq!(
        s.apply(&finish("n2", "a", 0, Some("01"), 11)),
        Err(Rejection::SerialInUse {
            identity: "n1".into()
        })
    );
    s.apply(&finish("n3", "a", 0, None, 12)).unwrap();
    assert_eq!(s.record("n3").unwrap().state, EnrollState::Enrolled);
    assert!(s.record("n3").unwrap().credential.is_none());
    // the server that just enrolled is the enroller's until the settle time ends
    assert_eq!(
        s.apply(&finish("n1", "b", 0, Some("02"), 20)),
        Err(Rejection::ClaimedBy {
            member: "a".into(),
            until_ms: 10 + REENROLL_SETTLE_MS
        })
    );
}

fn lend(ids: &[&str], from: &str, to: &str, epoch: u64, at: u64) -> Command {
    Command::Lend {
        member: from.into(),
        to: to.into(),
        epoch,
        identities: ids.iter().map(|i| i.to_string()).collect(),
        start_by_ms: at + 10_000,
        until_ms: at + 60_000,
        at_ms: at,
    }
}

#[test]
fn a_lent_server_ends_only_with_its_borrower_while_the_loan_is_in_force() {
    let mut old = at_rules(OWNED_RULES);
    old.apply(&new_epoch(1, &[], 0)).unwrap();
    assert_eq!(
        old.apply(&lend(&["n1"], "a", "b", 1, 10)),
        Err(Rejection::NotEnabled { rules: LEND_RULES })
    );

    let mut s = at_rules(LEND_RULES);
    s.apply(&new_epoch(1, &[], 0)).unwrap();
    // a loan that breaks a rule is refused whole, saying why
    let r = s.apply(&lend(&["n1"], "a", "c", 1, 10)).unwrap_err();
    assert!(r.to_string().starts_with("not lent: "), "{r}");
    s.apply(&lend(&["n1", "n2"], "a", "b", 1, 10)).unwrap();
    assert_eq!(
        s.settings().ownership.loan("n1", 10).map(|l| l.to.as_str()),
        Some("b")
    );
    // the lender (or anyone but the borrower) cannot end a flow on it
    assert_eq!(
        s.apply(&finish("n1", "a", 1, Some("01"), 20)),
        Err(Rejection::Lent {
            to: "b".into(),
            why: String::new()
        })
    );
    assert!(s.record("n1").is_none(), "a refused end leaves no record");
    // the borrower can, even after its loan's end (its last call ended by then)
    s.apply(&finish("n1", "b", 1, Some("01"), 30)).unwrap();
    assert_eq!(s.record("n1").unwrap().state, EnrollState::Enrolled);
    s.apply(&finish("n2", "b", 1, None, 60_010)).unwrap();
    // once the loan and its grace are over, the owner works it again
    let after = 10 + 60_000 + crate::ownership::LOAN_GRACE_MS;
    s.apply(&finish("n3", "a", 1, None, after)).unwrap();
    assert!(s.settings().ownership.loan("n2", after).is_none());
    // a new epoch drops the loans that ended
    let mut e2 = new_epoch(2, &[], 0);
    if let Command::NewEpoch(e) = &mut e2 {
        e.at_ms = after;
    }
    s.apply(&e2).unwrap();
    assert!(s.settings().ownership.loans.is_empty());
}

#[test]
fn under_epochs_nobody_claims_and_a_flow_ends_only_under_an_epoch_not_left_behind() {
    let mut s = at_rules(OWNED_RULES);
    // a claim from before the first epoch is still renewed and may end as it began
    s.apply(&claim("old", "b", 1)).unwrap();
    s.apply(&new_epoch(1, &["a", "b"], 100_000)).unwrap();
    assert_eq!(s.apply(&claim("n1", "a", 2)), Err(Rejection::NoClaims));
    s.apply(&claim("old", "b", 3)).unwrap();
    // a flow that ends while another member holds the claim is refused
    assert!(matches!(
        s.apply(&finish("old", "a", 1, Some("09"), 4)),
        Err(Rejection::ClaimedBy { .. })
    ));
    // with epochs a flow must name one, and not one yet to come
    assert_eq!(
        s.apply(&finish("n1", "a", 0, Some("01"), 5)),
        Err(Rejection::StaleEpoch { epoch: 1 })
    );
    assert_eq!(
        s.apply(&finish("n1", "a", 2, Some("01"), 5)),
        Err(Rejection::StaleEpoch { epoch: 1 })
    );
    s.apply(&finish("n1", "a", 1, Some("01"), 5)).unwrap();
    // epochs follow one another
    assert_eq!(
        s.apply(&new_epoch(3, &[], 0)),
        Err(Rejection::StaleEpoch { epoch: 1 })
    );
    assert_eq!(
        s.apply(&Command::EpochAck {
            member: "a".into(),
            epoch: 2,
            at_ms: 6
        }),
        Err(Rejection::StaleEpoch { epoch: 1 })
    );
    s.apply(&new_epoch(2, &["a", "b"], 100_000)).unwrap();
    // a flow of epoch 1 ends until its member says it has none left
    s.apply(&finish("n2", "a", 1, Some("02"), 7)).unwrap();
    s.apply(&Command::EpochAck {
        member: "a".into(),
        epoch: 2,
        at_ms: 8,
    })
    .unwrap();
    assert_eq!(
        s.apply(&finish("n3", "a", 1, Some("03"), 9)),
        Err(Rejection::StaleEpoch { epoch: 2 })
    );
    assert!(s.record("n3").is_none());
    s.apply(&finish("n3", "b", 1, Some("03"), 9)).unwrap();
    s.apply(&finish("n4", "a", 2, Some("04"), 9)).unwrap();
    let own = &s.settings().ownership;
    assert_eq!(own.epoch(), 2);
    assert_eq!(own.previous.as_ref().map(|e| e.epoch), Some(1));
    // settled by a's and b's acks, or by the settle time; b acknowledged neither yet
    assert_eq!(own.newest_settled(10).map(|e| e.epoch), None);
    assert_eq!(own.newest_settled(100_000).map(|e| e.epoch), Some(2));
    s.apply(&Command::EpochAck {
        member: "b".into(),
        epoch: 2,
        at_ms: 10,
    })
    .unwrap();
    assert_eq!(
        s.settings().ownership.newest_settled(10).map(|e| e.epoch),
        Some(2)
    );
}

#[test]
fn a_flow_that_ends_without_enrolling_keeps_an_enrolled_server_enrolled() {
    let mut s = at_rules(OWNED_RULES);
    // the first the ledger hears of a server may be its failure
    s.apply(&failed("n1", "a", 0, 10)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!((r.state, r.attempts), (EnrollState::Failed, 1));
    assert_eq!(r.last_error.as_deref(), Some("no csr"));
    // the flow that enrolled it may record that it could not configure it, within the
    // settle time; another flow of the same member (a second sighting) may not
    s.apply(&finish("n1", "a", 0, Some("01"), 20)).unwrap();
    assert!(matches!(
        s.apply(&failed("n1", "a", 0, 25)),
        Err(Rejection::ClaimedBy { .. })
    ));
    assert!(matches!(
        s.apply(&failed_after("n1", "a", 0, 25, Some(19))),
        Err(Rejection::ClaimedBy { .. })
    ));
    s.apply(&failed_after("n1", "a", 0, 30, Some(20))).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!((r.state, r.attempts), (EnrollState::Failed, 2));
    // a server that enrolled and fell back later stays enrolled when a flow fails
    s.apply(&finish("n2", "a", 0, Some("02"), 40)).unwrap();
    let later = 40 + REENROLL_SETTLE_MS + 1;
    s.apply(&failed("n2", "b", 0, later)).unwrap();
    let r = s.record("n2").unwrap();
    assert_eq!(r.state, EnrollState::Enrolled);
    assert_eq!(r.last_error.as_deref(), Some("no csr"));
    // but within the settle time another member's flow is refused
    s.apply(&finish("n3", "a", 0, Some("03"), 50)).unwrap();
    assert!(matches!(
        s.apply(&failed("n3", "b", 0, 60)),
        Err(Rejection::ClaimedBy { .. })
    ));
}

#[test]
fn the_flow_that_enrolled_a_server_may_record_its_failure_within_the_settle_time() {
    let failed = |m: &str, at: u64| Command::Release {
        identity: "n1".into(),
        member: m.into(),
        outcome: ReleaseOutcome::Failed {
            reason: "configure: no reply".into(),
        },
        at_ms: at,
    };
    let mut s = at_rules(ENROLL_RULES);
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&enroll("n1", "a", "01", 10)).unwrap();
    // not another member, and not the enroller once the settle time is over
    assert!(matches!(
        s.apply(&failed("b", 20)),
        Err(Rejection::NotOwner { .. })
    ));
    let mut late = s.clone();
    assert!(matches!(
        late.apply(&failed("a", 10 + REENROLL_SETTLE_MS)),
        Err(Rejection::NotOwner { .. })
    ));
    s.apply(&failed("a", 20)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Failed);
    assert_eq!(r.last_error.as_deref(), Some("configure: no reply"));
    // the same release again is a no-op; any other is refused: the record moved on
    s.apply(&failed("a", 20)).unwrap();
    assert_eq!(s.record("n1").unwrap(), r);
    assert!(matches!(
        s.apply(&failed("a", 21)),
        Err(Rejection::NotOwner { .. })
    ));
    // an operator's reprovision waits for the flow as for a claim, then goes through
    let mut r = at_rules(ENROLL_RULES);
    r.apply(&claim("n1", "a", 0)).unwrap();
    r.apply(&enroll("n1", "a", "01", 10)).unwrap();
    let reprovision = |at: u64| Command::RequestReprovision {
        identity: "n1".into(),
        member: "a/op".into(),
        at_ms: at,
    };
    assert_eq!(
        r.apply(&reprovision(20)),
        Err(Rejection::ClaimedBy {
            member: "a".into(),
            until_ms: 10 + REENROLL_SETTLE_MS
        })
    );
    r.apply(&reprovision(10 + REENROLL_SETTLE_MS)).unwrap();
    assert_eq!(r.record("n1").unwrap().state, EnrollState::Reprovisioning);
    // an enrollment recorded by `Enrolled` after the configure is final, as before
    let mut two = at_rules(ENROLL_RULES);
    two.apply(&claim("n1", "a", 0)).unwrap();
    two.apply(&issue("n1", "a", "01", 10)).unwrap();
    two.apply(&enrolled("n1", "a", 20)).unwrap();
    assert!(matches!(
        two.apply(&failed("a", 30)),
        Err(Rejection::NotOwner { .. })
    ));
}

#[test]
fn pages_follow_identity_order_and_count_what_matches() {
    let mut s = LedgerState::default();
    for i in 1..=5 {
        s.apply(&claim(&format!("n{i}"), "a", 0)).unwrap();
    }
    let ids = |p: &Page| {
        p.records
            .iter()
            .map(|r| r.identity.clone())
            .collect::<Vec<_>>()
    };
    let first = s.page("", 2, true, Filter::keep(&|_| true));
    assert_eq!(
        (ids(&first), first.matched, first.more),
        (vec!["n1".into(), "n2".into()], 5, true)
    );
    let rest = s.page("n2", 10, true, Filter::keep(&|_| true));
    assert_eq!(
        (ids(&rest), rest.more),
        (vec!["n3".into(), "n4".into(), "n5".into()], false)
    );
    let odd = |r: &Record| r.identity.ends_with(['1', '3', '5']);
    let p = s.page("n1", 1, true, Filter::keep(&odd));
    assert_eq!((ids(&p), p.matched, p.more), (vec!["n3".into()], 3, true));
    assert_eq!(
        s.page("n1", 1, false, Filter::keep(&odd)).matched,
        0,
        "not counted when not asked"
    );
    assert!(s
        .page("n5", 10, true, Filter::keep(&|_| true))
        .records
        .is_empty());
}

#[test]
fn a_command_sent_again_after_it_committed_changes_nothing_and_succeeds() {
    let mut s = LedgerState::default();
    for cmd in [claim("n1", "a", 0), issue("n1", "a", "01", 10)] {
        s.apply(&cmd).unwrap();
        s.apply(&cmd).unwrap();
    }
    let before = s.record("n1").unwrap();
    s.apply(&issue("n1", "a", "01", 10)).unwrap();
    assert_eq!(s.record("n1").unwrap(), before);
    // the serial is still refused to anyone else, and again later
    assert!(matches!(
        s.apply(&issue("n2", "a", "01", 11)),
        Err(Rejection::SerialInUse { .. })
    ));
    assert!(matches!(
        s.apply(&issue("n1", "a", "01", 12)),
        Err(Rejection::SerialInUse { .. })
    ));
    s.apply(&enrolled("n1", "a", 20)).unwrap();
    let done = s.record("n1").unwrap();
    s.apply(&enrolled("n1", "a", 20)).unwrap();
    assert_eq!(s.record("n1").unwrap(), done);
    // a new enrollment without a claim is still refused
    assert!(matches!(
        s.apply(&enrolled("n1", "a", 21)),
        Err(Rejection::NotOwner { .. })
    ));
    // a release sent twice
    s.apply(&claim("n3", "a", 0)).unwrap();
    let release = Command::Release {
        identity: "n3".into(),
        member: "a".into(),
        outcome: ReleaseOutcome::Deferred {
            reason: "later".into(),
        },
        at_ms: 5,
    };
    s.apply(&release).unwrap();
    let released = s.record("n3").unwrap();
    s.apply(&release).unwrap();
    assert_eq!(s.record("n3").unwrap(), released);
    assert_eq!(released.state, EnrollState::Deferred);
}

#[test]
fn one_owner_at_a_time_until_the_lease_ends() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    assert!(matches!(
        s.apply(&claim("n1", "b", 10)),
        Err(Rejection::ClaimedBy { .. })
    ));
    // the owner renews without counting a new attempt
    s.apply(&claim("n1", "a", 20)).unwrap();
    assert_eq!(s.record("n1").unwrap().attempts, 1);
    // after the lease another member may take it over
    s.apply(&claim("n1", "b", 5000)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.owner.as_deref(), Some("b"));
    assert_eq!(r.attempts, 2);
    // and the old owner can no longer act on it
    assert!(matches!(
        s.apply(&issue("n1", "a", "01", 5001)),
        Err(Rejection::NotOwner { .. })
    ));
}

#[test]
fn serials_are_never_recorded_twice() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&claim("n2", "a", 0)).unwrap();
    s.apply(&issue("n1", "a", "abc", 1)).unwrap();
    assert_eq!(
        s.apply(&issue("n2", "a", "abc", 2)),
        Err(Rejection::SerialInUse {
            identity: "n1".into()
        })
    );
    assert!(s.record("n2").unwrap().credential.is_none());
}

#[test]
fn enrolled_servers_are_not_claimed_again() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&issue("n1", "a", "01", 1)).unwrap();
    s.apply(&enrolled("n1", "a", 2)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Enrolled);
    assert_eq!(r.owner, None);
    assert_eq!(
        s.apply(&claim("n1", "b", 3)),
        Err(Rejection::AlreadyEnrolled)
    );
    // a repeated completion is rejected and changes nothing
    assert!(s.apply(&enrolled("n1", "a", 4)).is_err());
    assert_eq!(s.record("n1").unwrap().updated_ms, 2);
}

#[test]
fn an_upgrading_server_is_recorded_and_can_be_claimed_when_it_is_back() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&Command::Release {
        identity: "n1".into(),
        member: "a".into(),
        outcome: ReleaseOutcome::Upgrading {
            from: "0.29.4".into(),
            to: "0.30.0".into(),
        },
        at_ms: 1,
    })
    .unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Upgrading);
    assert_eq!(r.owner, None);
    assert!(r.history.iter().any(|h| h
        .event
        .to_string()
        .contains("upgrading from 0.29.4 to 0.30.0")));
    assert_eq!(
        EnrollState::from_name("upgrading"),
        Some(EnrollState::Upgrading)
    );
    // back at the new version, any member may take it
    s.apply(&claim("n1", "b", 2)).unwrap();
    assert_eq!(s.record("n1").unwrap().owner.as_deref(), Some("b"));
}

#[test]
fn release_needs_the_owner_and_allows_a_new_claim() {
    let mut s = LedgerState::default();
    assert_eq!(
        s.apply(&Command::Release {
            identity: "n1".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Abandoned,
            at_ms: 0
        }),
        Err(Rejection::UnknownServer)
    );
    s.apply(&claim("n1", "a", 0)).unwrap();
    let defer = |member: &str| Command::Release {
        identity: "n1".into(),
        member: member.into(),
        outcome: ReleaseOutcome::Deferred {
            reason: "later".into(),
        },
        at_ms: 1,
    };
    assert!(s.apply(&defer("b")).is_err());
    s.apply(&defer("a")).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Deferred);
    assert_eq!(r.last_error.as_deref(), Some("later"));
    s.apply(&claim("n1", "b", 2)).unwrap();
    assert_eq!(s.record("n1").unwrap().attempts, 2);
}

#[test]
fn heartbeats_make_members_live_and_never_go_back() {
    let mut s = LedgerState::default();
    let hb = |m: &str, at| Command::Heartbeat {
        member: m.into(),
        at_ms: at,
    };
    s.apply(&hb("a", 10_000)).unwrap();
    s.apply(&hb("b", 1_000)).unwrap();
    s.apply(&hb("a", 5_000)).unwrap();
    assert_eq!(s.heartbeats()["a"], 10_000);
    assert_eq!(s.live_members(11_000, 2_000), vec!["a".to_string()]);
    assert_eq!(
        s.live_members(11_000, 20_000),
        vec!["a".to_string(), "b".to_string()]
    );
    // a draining member is alive but takes no work
    s.apply(&Command::SetDraining {
        member: "a".into(),
        draining: true,
        at_ms: 0,
    })
    .unwrap();
    assert!(s.live_members(11_000, 20_000) == vec!["b".to_string()]);
    s.apply(&Command::SetDraining {
        member: "a".into(),
        draining: false,
        at_ms: 0,
    })
    .unwrap();
    s.apply(&Command::SetPaused {
        paused: true,
        at_ms: 0,
    })
    .unwrap();
    assert!(s.settings().paused);
    // heartbeats do not change the digest; records do
    let d = s.digest();
    s.apply(&hb("a", 20_000)).unwrap();
    assert_eq!(s.digest(), d);
    s.apply(&claim("n1", "a", 0)).unwrap();
    assert_ne!(s.digest(), d);
}

#[test]
fn from_rules_8_history_lines_are_typed_and_a_replay_is_still_known() {
    let mut s = at_rules(TYPED_HISTORY_RULES - 1);
    s.apply(&claim("n1", "a", 1)).unwrap();
    s.apply(&Command::SetRules {
        rules: TYPED_HISTORY_RULES,
        at_ms: 2,
    })
    .unwrap();
    let release = Command::Release {
        identity: "n1".into(),
        member: "a".into(),
        outcome: crate::command::ReleaseOutcome::Failed { reason: "x".into() },
        at_ms: 3,
    };
    s.apply(&release).unwrap();
    let r = s.record("n1").unwrap();
    // written before the rules changed: the sentence, as it was
    assert_eq!(r.history[0].event, Logged::Text("claimed".into()));
    assert_eq!(
        r.history[1].event,
        Logged::Event(Event::Failed { reason: "x".into() })
    );
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(r#"{"failed":{"reason":"x"}}"#), "{json}");
    // a copy of the release sent again changes nothing, the digest included
    let digest = s.digest();
    s.apply(&release).unwrap();
    assert_eq!(s.digest(), digest);
    assert_eq!(s.record("n1").unwrap().history.len(), 2);
}

#[test]
fn history_is_bounded() {
    let mut s = LedgerState::default();
    for i in 0..100u64 {
        s.apply(&claim("n1", if i % 2 == 0 { "a" } else { "b" }, i * 10_000))
            .unwrap();
    }
    assert_eq!(s.record("n1").unwrap().history.len(), HISTORY_LIMIT);
}

#[test]
fn reprovisioning_supersedes_and_revokes_the_old_credential() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&issue("n1", "a", "01", 1)).unwrap();
    s.apply(&enrolled("n1", "a", 2)).unwrap();
    let req = |at| Command::RequestReprovision {
        identity: "n1".into(),
        member: "b".into(),
        at_ms: at,
    };
    s.apply(&req(3)).unwrap();
    assert_eq!(s.record("n1").unwrap().state, EnrollState::Reprovisioning);
    // claimable again, by anyone
    s.apply(&claim("n1", "b", 4)).unwrap();
    // not while someone holds a live claim
    assert!(matches!(s.apply(&req(5)), Err(Rejection::ClaimedBy { .. })));
    s.apply(&issue("n1", "b", "02", 6)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.credential.as_ref().unwrap().serial, "02");
    assert_eq!(r.revoked.len(), 1);
    assert_eq!(r.revoked[0].serial, "01");
    assert!(r.revoked[0].reason.contains("superseded"));
    assert_eq!(s.counts("b").revoked, 1);
    assert_eq!(s.counts("b").claimed_by.get("b"), Some(&1));
    // the old serial stays used
    s.apply(&claim("n2", "b", 7)).unwrap();
    assert!(s.apply(&issue("n2", "b", "01", 8)).is_err());
}

#[test]
fn revoke_marks_the_record_and_needs_a_credential() {
    let mut s = LedgerState::default();
    let revoke = |at| Command::Revoke {
        identity: "n1".into(),
        member: "admin".into(),
        reason: "key leaked".into(),
        at_ms: at,
    };
    assert_eq!(s.apply(&revoke(0)), Err(Rejection::UnknownServer));
    s.apply(&claim("n1", "a", 0)).unwrap();
    assert_eq!(s.apply(&revoke(1)), Err(Rejection::NoCredential));
    s.apply(&issue("n1", "a", "01", 2)).unwrap();
    s.apply(&enrolled("n1", "a", 3)).unwrap();
    s.apply(&revoke(4)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Revoked);
    assert!(r.credential.is_none());
    assert_eq!(r.revoked[0].reason, "key leaked");
    // a revoked server may be provisioned again
    s.apply(&claim("n1", "b", 5)).unwrap();
}

#[test]
fn reassign_takes_a_claim_from_its_owner_only() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    let reassign = |from: &str| Command::Reassign {
        identity: "n1".into(),
        from: from.into(),
        member: "c".into(),
        reason: "member gone".into(),
        at_ms: 10,
    };
    assert!(matches!(
        s.apply(&reassign("b")),
        Err(Rejection::NotOwner { .. })
    ));
    s.apply(&reassign("a")).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Deferred);
    assert_eq!(r.owner, None);
    s.apply(&claim("n1", "b", 11)).unwrap();
    for st in EnrollState::ALL {
        assert_eq!(EnrollState::from_name(st.name()), Some(st));
    }
}

#[test]
fn an_enrolled_server_seen_waiting_well_after_enrollment_is_claimed_again() {
    let mut s = LedgerState::default();
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&issue("n1", "a", "01", 1)).unwrap();
    s.apply(&enrolled("n1", "a", 2)).unwrap();
    let claim_seen = |seen: u64, at: u64| Command::Claim {
        identity: "n1".into(),
        member: "b".into(),
        lease_until_ms: at + 1000,
        seen_ms: seen,
        at_ms: at,
    };
    // seen while it was restarting into its configuration: not again
    assert_eq!(
        s.apply(&claim_seen(5_000, 60_000)),
        Err(Rejection::AlreadyEnrolled)
    );
    // seen waiting long after: it fell back on its own
    s.apply(&claim_seen(2 + REENROLL_SETTLE_MS, 60_000))
        .unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.state, EnrollState::Claimed);
    assert_eq!(r.attempts, 2);
    assert!(r
        .history
        .last()
        .unwrap()
        .event
        .to_string()
        .contains("back in provisioning"));
    // the new credential supersedes the old one
    s.apply(&issue("n1", "b", "02", 60_001)).unwrap();
    assert_eq!(s.record("n1").unwrap().revoked[0].serial, "01");
}

fn rules2() -> LedgerState {
    let mut s = LedgerState::default();
    s.apply(&Command::SetRules { rules: 2, at_ms: 0 }).unwrap();
    s
}

/// An enrolled n1 (serial 01 by a) seen waiting again long after, and claimed by b.
fn enrolled_then_reclaimed(s: &mut LedgerState) {
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&issue("n1", "a", "01", 1)).unwrap();
    s.apply(&enrolled("n1", "a", 2)).unwrap();
    s.apply(&Command::Claim {
        identity: "n1".into(),
        member: "b".into(),
        lease_until_ms: 200_000,
        seen_ms: 100_000,
        at_ms: 100_000,
    })
    .unwrap();
}

#[test]
fn rules_are_raised_by_command_never_lowered_and_default_to_1() {
    let mut s = LedgerState::default();
    assert_eq!(s.rules(), 1);
    // a restart reported before the rules allow it is refused and changes nothing
    assert_eq!(
        s.apply(&Command::Restarted {
            identity: "n1".into(),
            member: "a".into(),
            at_ms: 1
        }),
        Err(Rejection::NotEnabled { rules: 2 })
    );
    s.apply(&Command::SetRules { rules: 2, at_ms: 1 }).unwrap();
    s.apply(&Command::SetRules { rules: 1, at_ms: 2 }).unwrap();
    assert_eq!(s.rules(), 2);
    // settings stored before the field existed read as rules 1
    let old: ClusterSettings = serde_json::from_str(r#"{"paused":false,"draining":[]}"#).unwrap();
    assert_eq!(old.rules, 1);
}

#[test]
fn a_reenrollment_keeps_the_old_credential_until_the_server_restarted() {
    let mut s = rules2();
    enrolled_then_reclaimed(&mut s);
    assert!(s.record("n1").unwrap().claimed_while_enrolled);
    s.apply(&issue("n1", "b", "02", 100_001)).unwrap();
    let r = s.record("n1").unwrap();
    assert_eq!(r.superseded.as_ref().unwrap().serial, "01");
    assert!(
        r.revoked.is_empty(),
        "revoked before the new one was in use"
    );
    assert_eq!(s.counts("b").revoked, 0);
    s.apply(&enrolled("n1", "b", 100_002)).unwrap();
    // only the member that issued the new credential reports the restart
    let restarted = |m: &str, at| Command::Restarted {
        identity: "n1".into(),
        member: m.into(),
        at_ms: at,
    };
    assert!(s.apply(&restarted("a", 100_003)).is_err());
    s.apply(&restarted("b", 100_003)).unwrap();
    let r = s.record("n1").unwrap();
    assert!(r.superseded.is_none());
    assert_eq!(r.revoked.len(), 1);
    assert_eq!(r.revoked[0].serial, "01");
    assert_eq!(r.revoked[0].reason, "superseded by 02");
    assert_eq!(r.issued_at_ms, vec![1, 100_001]);
    assert_eq!(r.issued_since(50_000), 1);
    // sent again: nothing left to do
    let before = r.clone();
    s.apply(&restarted("b", 100_004)).unwrap();
    assert_eq!(s.record("n1").unwrap(), before);
}

#[test]
fn a_second_reissue_before_the_restart_revokes_the_unused_one() {
    let mut s = rules2();
    enrolled_then_reclaimed(&mut s);
    s.apply(&issue("n1", "b", "02", 100_001)).unwrap();
    s.apply(&issue("n1", "b", "03", 100_002)).unwrap();
    let r = s.record("n1").unwrap();
    // 01 is what the server may still run with; 02 was never used
    assert_eq!(r.superseded.as_ref().unwrap().serial, "01");
    assert_eq!(r.revoked.len(), 1);
    assert_eq!(r.revoked[0].serial, "02");
    // an operator's revocation takes both
    s.apply(&Command::Revoke {
        identity: "n1".into(),
        member: "b/ops".into(),
        reason: "lost".into(),
        at_ms: 100_003,
    })
    .unwrap();
    let r = s.record("n1").unwrap();
    let revoked: Vec<&str> = r.revoked.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(revoked, ["02", "03", "01"]);
    assert!(r.superseded.is_none() && r.credential.is_none());
}

#[test]
fn a_claim_on_an_enrolled_server_that_issues_nothing_leaves_it_enrolled() {
    for outcome in [
        ReleaseOutcome::Failed {
            reason: "no jwt".into(),
        },
        ReleaseOutcome::Deferred {
            reason: "helper says later".into(),
        },
        ReleaseOutcome::Abandoned,
    ] {
        let mut s = rules2();
        enrolled_then_reclaimed(&mut s);
        s.apply(&Command::Release {
            identity: "n1".into(),
            member: "b".into(),
            outcome: outcome.clone(),
            at_ms: 100_001,
        })
        .unwrap();
        let r = s.record("n1").unwrap();
        assert_eq!(r.state, EnrollState::Enrolled, "{outcome:?}");
        assert_eq!(r.credential.as_ref().unwrap().serial, "01");
        assert!(!r.claimed_while_enrolled);
    }
    // the same under rules 1: it fails, as before
    let mut s = LedgerState::default();
    enrolled_then_reclaimed(&mut s);
    s.apply(&Command::Release {
        identity: "n1".into(),
        member: "b".into(),
        outcome: ReleaseOutcome::Failed { reason: "x".into() },
        at_ms: 100_001,
    })
    .unwrap();
    assert_eq!(s.record("n1").unwrap().state, EnrollState::Failed);
    // a claim taken from a dead member also leaves it enrolled
    let mut s = rules2();
    enrolled_then_reclaimed(&mut s);
    s.apply(&Command::Reassign {
        identity: "n1".into(),
        from: "b".into(),
        member: "a".into(),
        reason: "b is gone".into(),
        at_ms: 100_001,
    })
    .unwrap();
    assert_eq!(s.record("n1").unwrap().state, EnrollState::Enrolled);
    // once a new credential was issued, a failure is a failure
    let mut s = rules2();
    enrolled_then_reclaimed(&mut s);
    s.apply(&issue("n1", "b", "02", 100_001)).unwrap();
    s.apply(&Command::Release {
        identity: "n1".into(),
        member: "b".into(),
        outcome: ReleaseOutcome::Failed {
            reason: "configure".into(),
        },
        at_ms: 100_002,
    })
    .unwrap();
    assert_eq!(s.record("n1").unwrap().state, EnrollState::Failed);
}

#[test]
fn failed_records_that_never_held_a_credential_are_forgotten_when_old_enough() {
    let mut s = rules2();
    s.apply(&claim("n1", "a", 0)).unwrap();
    s.apply(&Command::Release {
        identity: "n1".into(),
        member: "a".into(),
        outcome: ReleaseOutcome::Failed { reason: "x".into() },
        at_ms: 10,
    })
    .unwrap();
    s.apply(&claim("n2", "a", 0)).unwrap();
    s.apply(&issue("n2", "a", "02", 1)).unwrap();
    s.apply(&Command::Release {
        identity: "n2".into(),
        member: "a".into(),
        outcome: ReleaseOutcome::Failed { reason: "x".into() },
        at_ms: 10,
    })
    .unwrap();
    s.apply(&claim("n3", "a", 0)).unwrap();
    let forget = |id: &str, at| Command::Forget {
        identity: id.into(),
        member: "a".into(),
        older_than_ms: 1000,
        at_ms: at,
    };
    assert_eq!(s.forgettable(2000, 10), vec!["n1".to_string()]);
    assert_eq!(s.apply(&forget("n1", 500)), Err(Rejection::NotForgettable));
    assert_eq!(s.apply(&forget("n2", 5000)), Err(Rejection::NotForgettable));
    assert_eq!(s.apply(&forget("n3", 5000)), Err(Rejection::NotForgettable));
    s.apply(&forget("n1", 5000)).unwrap();
    assert!(s.record("n1").is_none());
    assert_eq!(s.apply(&forget("n1", 5000)), Err(Rejection::UnknownServer));
    // the serial of a failed record with a credential stays taken
    let mut serials = Vec::new();
    s.for_each_serial(&mut |serial, _| serials.push(serial.to_string()))
        .unwrap();
    assert!(serials.contains(&"02".to_string()));
}

/// The digest kept as commands apply is the one computed over the whole ledger, after
/// every kind of change (rejected commands included), and after a restart from records.
#[test]
fn the_kept_digest_and_counts_are_those_computed_over_the_whole_ledger() {
    let mut s = rules2();
    let empty = s.digest();
    assert_eq!(s.counts("a"), LedgerCounts::default());
    let mut seen = vec![empty.clone()];
    let cmds = vec![
        claim("n1", "a", 0),
        issue("n1", "a", "01", 1),
        // the same serial again: rejected, nothing changes
        issue("n1", "a", "01", 1),
        enrolled("n1", "a", 2),
        claim("n2", "a", 3),
        Command::Release {
            identity: "n2".into(),
            member: "a".into(),
            outcome: ReleaseOutcome::Failed { reason: "x".into() },
            at_ms: 10,
        },
        Command::Heartbeat {
            member: "a".into(),
            at_ms: 11,
        },
        Command::Forget {
            identity: "n2".into(),
            member: "a".into(),
            older_than_ms: 1,
            at_ms: 5000,
        },
        Command::Revoke {
            identity: "n1".into(),
            member: "a".into(),
            reason: "lost".into(),
            at_ms: 5001,
        },
    ];
    for cmd in &cmds {
        let _ = s.apply(cmd);
        assert_eq!(s.digest(), s.full_digest().unwrap().hex(), "after {cmd:?}");
        let mut full = s.full_counts().unwrap();
        full.owned_by_member = full.claimed_by.get("a").copied().unwrap_or(0);
        assert_eq!(s.counts("a"), full, "after {cmd:?}");
        seen.push(s.digest());
    }
    // changes change it; a record forgotten leaves it as before that record came
    assert_ne!(seen[1], seen[0]);
    assert_eq!(seen[3], seen[2]);
    assert_eq!(seen[8], seen[4]);
    assert_eq!(s.counts("a").revoked, 1);
    let mut serials = HashMap::new();
    s.for_each_serial(&mut |a, b| {
        serials.insert(a.to_string(), b.to_string());
    })
    .unwrap();
    let restored = LedgerState::restore(
        s.all_records(),
        serials,
        BTreeMap::new(),
        s.settings().clone(),
    );
    assert_eq!(restored.digest(), s.digest());
}

#[test]
fn free_text_is_bounded_before_it_reaches_the_ledger() {
    let long = "é".repeat(1000);
    let cmd = Command::Release {
        identity: "n1".into(),
        member: "a".into(),
        outcome: ReleaseOutcome::Failed { reason: long },
        at_ms: 1,
    }
    .bounded();
    let Command::Release {
        outcome: ReleaseOutcome::Failed { reason },
        ..
    } = cmd
    else {
        panic!("not a release");
    };
    assert!(reason.len() <= crate::command::MAX_TEXT, "{}", reason.len());
    assert!(reason.ends_with("..."));
}
