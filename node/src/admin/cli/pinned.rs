//! The output operators and scripts read, pinned: each reply rendered as a table and as JSON
//! against `testdata/`, which holds what the CLI printed before its commands were split into
//! modules.

use proto::grpc::admin as pb;

use super::control::Drain;
use super::ledger::Revoked;
use super::render::{printed, Outcome};
use super::reprovision::Results;
use super::status::Status;
use super::Exit;

macro_rules! golden {
    ($name:literal) => {
        include_str!(concat!("testdata/", $name, ".txt"))
    };
}

fn fx_member(id: u64, name: &str) -> pb::MemberStatus {
    pb::MemberStatus {
        id,
        name: name.into(),
        raft_addr: format!("10.0.0.{id}:7100"),
        admin_addr: format!("10.0.0.{id}:7101"),
        role: "follower".into(),
        voter: true,
        term: 3,
        last_log_index: 120,
        last_applied: 118,
        healthy: true,
        live: true,
        owned: 4,
        queued: 2,
        in_flight: 1,
        waiting_retry: 0,
        version: "1.2.3".into(),
        ledger_digest: "d1".into(),
        ..Default::default()
    }
}

fn fx_status(differ: bool, leader: bool) -> pb::StatusReply {
    let mut m1 = fx_member(1, "prov1");
    m1.role = "leader".into();
    let mut m2 = fx_member(2, "prov2");
    m2.draining = true;
    m2.drained = true;
    m2.paused = true;
    if differ {
        m2.ledger_digest = "d2".into();
    }
    let mut m3 = fx_member(3, "prov3");
    m3.role = "unreachable".into();
    m3.voter = false;
    m3.healthy = false;
    m3.live = false;
    m3.draining = true;
    m3.ledger_digest = String::new();
    m3.error = "connection refused".into();
    pb::StatusReply {
        cluster: "prod".into(),
        answered_by: "prov2".into(),
        version: "1.2.3".into(),
        leader_id: if leader { 1 } else { 0 },
        leader: if leader {
            "prov1".into()
        } else {
            String::new()
        },
        term: 3,
        paused: false,
        members: vec![m1, m2, m3],
        ledger_records: 9,
        ledger_by_state: [("failed".to_string(), 2u64), ("enrolled".to_string(), 7u64)].into(),
        revoked_credentials: 1,
        clustered: true,
    }
}

fn fx_membership() -> pb::MembershipReply {
    pb::MembershipReply {
        message: "prov4 added as a learner".into(),
        voters: vec![1, 2, 3],
        learners: vec![4],
    }
}

fn fx_credential() -> pb::Credential {
    pb::Credential {
        serial: "0a1b".into(),
        fingerprint: "ab".repeat(32),
        not_after: 1_900_000_000,
        issued_by: "prov1".into(),
        issued_at_ms: 1_700_000_000_123,
    }
}

fn fx_record(full: bool) -> pb::Record {
    let mut r = pb::Record {
        identity: "n1.example.net".into(),
        state: "enrolled".into(),
        attempts: 1,
        first_seen_ms: 1_699_999_000_000,
        updated_ms: 1_700_000_000_500,
        history: vec![
            pb::HistoryEntry {
                at_ms: 1_699_999_000_000,
                member: "prov1".into(),
                event: "claimed".into(),
            },
            pb::HistoryEntry {
                at_ms: 1_700_000_000_500,
                member: "prov1".into(),
                event: "enrolled".into(),
            },
        ],
        ..Default::default()
    };
    if full {
        r.owner = "prov2".into();
        r.lease_until_ms = 1_700_000_060_000;
        r.credential = Some(fx_credential());
        r.last_error = "helper said no".into();
        r.facts = [
            ("role".to_string(), "web".to_string()),
            ("dc".to_string(), "ams".to_string()),
        ]
        .into();
        r.revoked = vec![pb::Revocation {
            serial: "09".into(),
            fingerprint: "cd".repeat(32),
            not_after: 1_800_000_000,
            revoked_at_ms: 1_699_999_500_000,
            revoked_by: "prov1/alice".into(),
            reason: "key leaked".into(),
        }];
        r.history.clear();
    }
    r
}

fn fx_list(more: bool) -> pb::ListLedgerReply {
    let mut bare = fx_record(false);
    bare.identity = "n2.example.net".into();
    bare.state = "failed".into();
    bare.attempts = 3;
    bare.last_error = "timeout".into();
    bare.updated_ms = 0;
    let mut with = fx_record(false);
    with.credential = Some(fx_credential());
    with.owner = "prov1".into();
    pb::ListLedgerReply {
        records: vec![with, bare],
        next_page_token: if more {
            "n2.example.net".into()
        } else {
            String::new()
        },
        matched: 40,
    }
}

fn fx_progress() -> Vec<pb::ReprovisionProgress> {
    let p = |identity: &str, result: &str, message: &str, done: u64| pb::ReprovisionProgress {
        identity: identity.into(),
        result: result.into(),
        message: message.into(),
        done,
        total: 3,
    };
    vec![
        p("n3.example.net", "ok", "", 1),
        p("n1.example.net", "no_answer", "no reply within 10s", 2),
        p("n2.example.net", "ok", "", 3),
    ]
}

#[test]
fn status_and_members_print_as_before() {
    for (differ, leader, table, members) in [
        (
            true,
            true,
            golden!("status_differ_table"),
            golden!("status_differ_members"),
        ),
        (
            false,
            false,
            golden!("status_same_table"),
            golden!("status_same_members"),
        ),
    ] {
        let status = |members_only| Status {
            reply: fx_status(differ, leader),
            members_only,
        };
        assert_eq!(printed(status(false), false), table);
        assert_eq!(printed(status(true), false), members);
    }
    let mut one_state = fx_status(false, true);
    one_state.ledger_by_state = [("enrolled".to_string(), 7u64)].into();
    for members_only in [false, true] {
        let s = Status {
            reply: one_state.clone(),
            members_only,
        };
        assert_eq!(printed(s, true), golden!("status_json"));
    }
}

#[test]
fn membership_drain_rebalance_and_pause_print_as_before() {
    assert_eq!(printed(fx_membership(), false), golden!("membership_table"));
    assert_eq!(printed(fx_membership(), true), golden!("membership_json"));
    let drain = |drain, draining: Vec<String>| Drain {
        member: "prov2".into(),
        drain,
        reply: pb::DrainReply { draining },
    };
    let both = vec!["prov2".to_string(), "prov3".to_string()];
    assert_eq!(
        printed(drain(true, both.clone()), false),
        golden!("drain_table")
    );
    assert_eq!(printed(drain(true, both), true), golden!("drain_json"));
    assert_eq!(
        printed(drain(false, vec![]), false),
        golden!("undrain_table")
    );
    let rb = pb::RebalanceReply {
        released: 3,
        live_members: vec!["prov1".into(), "prov2".into()],
    };
    assert_eq!(printed(rb.clone(), false), golden!("rebalance_table"));
    assert_eq!(printed(rb, true), golden!("rebalance_json"));
    let pause = |paused| pb::PauseReply { paused };
    assert_eq!(printed(pause(true), false), golden!("pause_true_table"));
    assert_eq!(printed(pause(true), true), golden!("pause_true_json"));
    assert_eq!(printed(pause(false), false), golden!("pause_false_table"));
    assert_eq!(printed(pause(false), true), golden!("pause_false_json"));
}

#[test]
fn ledger_pages_and_records_print_as_before() {
    assert_eq!(printed(fx_list(true), false), golden!("list_true_table"));
    assert_eq!(printed(fx_list(false), false), golden!("list_false_table"));
    assert_eq!(printed(fx_list(true), true), golden!("list_json"));
    assert_eq!(printed(fx_record(true), false), golden!("show_true_table"));
    assert_eq!(
        printed(fx_record(false), false),
        golden!("show_false_table")
    );
    let mut one_fact = fx_record(true);
    one_fact.facts = [("role".to_string(), "web".to_string())].into();
    assert_eq!(printed(one_fact, true), golden!("show_json"));
    let revoked = || Revoked {
        identity: "n1.example.net".into(),
        reply: pb::RevokeReply {
            serial: "0a1b".into(),
        },
    };
    assert_eq!(printed(revoked(), false), golden!("revoke_table"));
    assert_eq!(printed(revoked(), true), golden!("revoke_json"));
}

#[test]
fn snapshots_and_backups_print_as_before() {
    let snap = pb::SnapshotReply {
        member: "prov2".into(),
        index: 1234,
        took_ms: 56,
        bytes: 7890,
        records: 12,
    };
    assert_eq!(printed(snap.clone(), false), golden!("snapshot_table"));
    assert_eq!(printed(snap, true), golden!("snapshot_json"));
    let backup = pb::BackupReply {
        path: "/var/lib/p/backups/b1".into(),
        member: "prov2".into(),
        last_applied: 99,
        records: 12,
        bytes: 4096,
    };
    assert_eq!(printed(backup.clone(), false), golden!("backup_table"));
    assert_eq!(printed(backup, true), golden!("backup_json"));
}

#[test]
fn reprovision_results_print_as_before_and_exit_partial_on_a_failure() {
    let r = Results::new(fx_progress());
    assert!(r.failed());
    assert_eq!(printed(r, false), golden!("reprovision_table"));
    assert_eq!(
        printed(Results::new(fx_progress()), true),
        golden!("reprovision_json")
    );
    let mut ok = fx_progress();
    ok.retain(|p| p.result == "ok");
    ok[0].result = "planned".into();
    assert!(!Results::new(ok).failed());
}

#[test]
fn a_note_is_for_people_and_json_prints_nothing_more() {
    let note = || Outcome::note("prov2 drained: it holds no server".into());
    assert_eq!(
        note().text(false).ok().flatten().as_deref(),
        Some("prov2 drained: it holds no server")
    );
    assert_eq!(note().text(true).ok().flatten(), None);
    assert_eq!(Outcome::nothing().text(false).ok().flatten(), None);
    let partial = Outcome::reply(pb::PauseReply { paused: true }).exit(Exit::Partial);
    assert_eq!(partial.print(false).ok(), Some(Exit::Partial));
}
