//! The Raft port authorizes, not only authenticates: a certificate from the cluster CA that
//! names no member, or names a member that was removed, gets nothing; a member acts only as
//! itself. Real members over gRPC with mutual TLS on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_addr, start_listed, wait_leader, Pki};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use proto::grpc::raft::RaftPayload;
use raft::admin::MembershipChange;
use raft::member::RaftMember;
use raft::network::{JoinRequest, Network};
use raft::types::{Batch, Member, TypeConfig};
use raft::Command;

fn member(id: u64) -> Member {
    Member {
        name: format!("m{id}"),
        raft_addr: free_addr().to_string(),
        admin_addr: String::new(),
    }
}

fn heartbeat(name: &str) -> Command {
    Command::Heartbeat {
        member: name.into(),
        at_ms: 1,
    }
}

fn batch(commands: Vec<Command>) -> Batch {
    Batch::new(commands)
}

/// A refusal as the caller sees it: the call failed with a permission or authentication
/// status.
fn refused<T: std::fmt::Debug, E: std::fmt::Debug>(r: Result<T, E>, what: &str) {
    let text = format!("{r:?}");
    assert!(
        text.starts_with("Err(Refused(")
            || text.contains("PermissionDenied")
            || text.contains("Unauthenticated"),
        "{what}: expected a refusal, got {text}"
    );
}

async fn raw_vote(net: &Network, to: &Member, term: u64, candidate: u64) -> Result<(), String> {
    let req = VoteRequest::<u64>::new(Vote::new(term, candidate), None);
    let payload = serde_json::to_vec(&req).unwrap();
    let mut client = net.client(to).map_err(|e| e.to_string())?;
    client
        .vote(RaftPayload { payload })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn raw_append(net: &Network, to: &Member, term: u64, leader: u64) -> Result<(), String> {
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let payload = serde_json::to_vec(&req).unwrap();
    let mut client = net.client(to).map_err(|e| e.to_string())?;
    client
        .append_entries(RaftPayload { payload })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

struct Group {
    _dir: tempfile::TempDir,
    pki: Pki,
    nodes: BTreeMap<u64, Member>,
    members: Vec<Arc<RaftMember>>,
    refusals: Arc<Mutex<Vec<(String, String)>>>,
}

impl Group {
    /// Members 1 to `running` started and bootstrapped; the configuration lists 1 to 4.
    async fn start(running: u64) -> Group {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let nodes: BTreeMap<u64, Member> = (1..=4).map(|id| (id, member(id))).collect();
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let mut members = Vec::new();
        for id in 1..=running {
            let m = start_listed(id, &nodes[&id], dir.path(), &pki, &nodes).await;
            let seen = refusals.clone();
            m.on_refused(Arc::new(move |rpc, reason| {
                seen.lock()
                    .unwrap()
                    .push((rpc.to_string(), reason.to_string()))
            }));
            members.push(m);
        }
        let first: BTreeMap<u64, Member> =
            nodes.range(1..=3).map(|(k, v)| (*k, v.clone())).collect();
        members[0].bootstrap(first).await.unwrap();
        wait_leader(&members[..3]).await;
        Group {
            _dir: dir,
            pki,
            nodes,
            members,
            refusals,
        }
    }

    fn leader(&self) -> (u64, Member, &Arc<RaftMember>) {
        let (id, m) = self.members[0].leader().unwrap();
        (id, m, &self.members[(id - 1) as usize])
    }

    fn as_(&self, name: &str) -> Network {
        Network::new(Some(self.pki.tls(name)))
    }

    fn saw(&self, rpc: &str, reason: &str) -> bool {
        self.refusals
            .lock()
            .unwrap()
            .iter()
            .any(|(c, r)| c == rpc && r == reason)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_cluster_ca_that_names_no_member_gets_nothing() {
    let g = Group::start(3).await;
    let (lid, leader, lm) = g.leader();
    let term = lm.openraft().metrics().borrow().current_term;
    let voters = lm.voters();
    let outsider = g.as_("m9");
    let t = Duration::from_secs(5);

    refused(
        outsider
            .forward(&leader, &batch(vec![heartbeat("m1")]), t)
            .await,
        "forward as m1",
    );
    refused(
        outsider
            .forward(&leader, &batch(vec![heartbeat("m9")]), t)
            .await,
        "forward as itself",
    );
    refused(
        outsider
            .join(
                &leader,
                &JoinRequest {
                    id: 9,
                    member: member(9),
                },
            )
            .await,
        "join",
    );
    refused(
        outsider
            .membership(&leader, &MembershipChange::Remove { id: 1, force: true })
            .await,
        "forced removal",
    );
    refused(outsider.peek(&leader).await, "peek");
    refused(raw_vote(&outsider, &leader, term + 50, 9).await, "vote");
    refused(
        raw_append(&outsider, &leader, term + 50, lid).await,
        "append as the leader",
    );

    // nothing changed: same term, same voters, and the refusals were counted
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lm.openraft().metrics().borrow().current_term, term);
    assert_eq!(lm.voters(), voters);
    assert!(g.saw("forward", "unknown") && g.saw("vote", "unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_act_only_as_themselves() {
    let g = Group::start(3).await;
    let (lid, leader, lm) = g.leader();
    let term = lm.openraft().metrics().borrow().current_term;
    let other = if lid == 2 { 3 } else { 2 };
    let name = format!("m{other}");
    let net = g.as_(&name);
    let t = Duration::from_secs(5);

    // a member forwards its own commands, and operators' settings; not another member's
    let own = net
        .forward(&leader, &batch(vec![heartbeat(&name)]), t)
        .await
        .unwrap();
    assert!(own.is_ok(), "{own:?}");
    refused(
        net.forward(&leader, &batch(vec![heartbeat(&name), heartbeat("m1")]), t)
            .await,
        "forward under another name",
    );
    // it cannot campaign or lead as someone else, nor join under another id
    refused(
        raw_vote(&net, &leader, term + 50, lid).await,
        "vote as the leader",
    );
    refused(
        raw_append(&net, &leader, term + 50, lid).await,
        "append as the leader",
    );
    refused(
        net.join(
            &leader,
            &JoinRequest {
                id: 4,
                member: g.nodes[&4].clone(),
            },
        )
        .await,
        "join as m4",
    );
    // a configured member that has not joined may look, not write, and joins only under its id
    let m4 = g.as_("m4");
    assert!(m4.peek(&leader).await.is_ok());
    refused(
        m4.forward(&leader, &batch(vec![heartbeat("m4")]), t).await,
        "forward before joining",
    );
    refused(
        m4.join(
            &leader,
            &JoinRequest {
                id: 5,
                member: g.nodes[&4].clone(),
            },
        )
        .await,
        "join under another id",
    );
    assert_eq!(lm.openraft().metrics().borrow().current_term, term);
    assert!(g.saw("forward", "impersonation") && g.saw("join", "not_configured"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_refused_until_an_operator_adds_it_again() {
    let g = Group::start(4).await;
    let (_, leader, lm) = g.leader();
    // m4 joins by itself (the configuration lists it), then an operator removes it
    let m4 = &g.members[3];
    m4.network()
        .join(
            &leader,
            &JoinRequest {
                id: 4,
                member: g.nodes[&4].clone(),
            },
        )
        .await
        .unwrap();
    assert!(lm.voters().contains(&4));
    lm.remove(4).await.unwrap();
    assert!(!lm.voters().contains(&4));

    let term = lm.openraft().metrics().borrow().current_term;
    let net = g.as_("m4");
    let t = Duration::from_secs(5);
    refused(
        net.forward(&leader, &batch(vec![heartbeat("m4")]), t).await,
        "forward",
    );
    refused(raw_vote(&net, &leader, term + 50, 4).await, "vote");
    refused(net.peek(&leader).await, "peek");
    refused(
        net.join(
            &leader,
            &JoinRequest {
                id: 4,
                member: g.nodes[&4].clone(),
            },
        )
        .await,
        "join again by itself",
    );
    // the removed member keeps running and campaigning; the group does not notice
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lm.openraft().metrics().borrow().current_term, term);
    assert!(g.saw("join", "departed"));
    for m in &g.members[..3] {
        let departed = m.store().state().await.ledger.settings().departed.clone();
        assert!(departed.contains("m4"), "{departed:?}");
    }

    // an operator adds it back: it is a member again
    lm.add_learner(4, g.nodes[&4].clone()).await.unwrap();
    assert!(net.peek(&leader).await.is_ok());
    assert!(!lm
        .store()
        .state()
        .await
        .ledger
        .settings()
        .departed
        .contains("m4"));
}

/// A forward as `from` to `to`, sent with the sender's clock at `sent_ms`.
async fn forward_sent_at(
    net: &Network,
    to: &Member,
    commands: Vec<Command>,
    sent_ms: u64,
) -> Result<(), String> {
    let payload = serde_json::to_vec(&batch(commands)).unwrap();
    let mut req = tonic::Request::new(RaftPayload { payload });
    req.metadata_mut()
        .insert(raft::network::SENT_MS, sent_ms.to_string().parse().unwrap());
    let mut client = net.client(to).map_err(|e| e.to_string())?;
    client
        .forward(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A member whose clock is further off the leader's than `max_clock_skew_ms` (2 s here) gets
/// none of its commands taken: their times, and the leases its claims end at, would be as
/// far off. Within the skew they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_clock_is_off_gets_no_commands_taken() {
    let g = Group::start(3).await;
    let (lid, leader, _) = g.leader();
    let other = g
        .nodes
        .keys()
        .find(|id| **id != lid && **id <= 3)
        .copied()
        .unwrap();
    let name = g.nodes[&other].name.clone();
    let net = g.as_(&name);
    let now = raft::now_ms();

    for off in [-30_000i64, 30_000] {
        let sent = now.saturating_add_signed(off);
        let r = forward_sent_at(&net, &leader, vec![heartbeat(&name)], sent).await;
        let text = format!("{r:?}");
        assert!(
            text.contains("PermissionDenied") && text.contains("clock"),
            "{off} ms: {text}"
        );
    }
    assert!(g.saw("forward", "clock_skew"));
    forward_sent_at(&net, &leader, vec![heartbeat(&name)], now + 500)
        .await
        .unwrap();
}

/// The leader's discovery offers reach a member from its peers only, bounded, through the
/// hook the member set; the hook hears who sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_come_from_members_only() {
    use raft::offer::{OfferBatch, OfferTaken, MAX_OFFER_IDENTITIES};
    let g = Group::start(3).await;
    type Seen = Arc<Mutex<Vec<(Option<u64>, OfferBatch)>>>;
    let seen: Seen = Arc::default();
    let hook_seen = seen.clone();
    g.members[0].on_offer(Arc::new(move |from, batch: OfferBatch| {
        let queued = batch.identities.len() as u32;
        hook_seen.lock().unwrap().push((from, batch));
        OfferTaken { queued, refused: 0 }
    }));
    let m1 = g.nodes[&1].clone();
    let batch = OfferBatch {
        round: 1,
        identities: vec!["a.example".into(), "b.example".into()],
        done: false,
    };

    // a member's offer, by its network and by name through the group's membership
    let taken = g.as_("m2").offer(&m1, &batch).await.unwrap();
    assert_eq!(taken.queued, 2);
    let taken = g.members[2].offer("m1", &batch).await.unwrap();
    assert_eq!(taken.queued, 2);
    assert!(g.members[2].offer("m9", &batch).await.is_err());
    {
        let seen = seen.lock().unwrap();
        let from: Vec<_> = seen.iter().map(|(f, _)| *f).collect();
        assert_eq!(from, vec![Some(2), Some(3)]);
        assert_eq!(seen[0].1, batch);
    }

    // an outsider, and a configured member that has not joined, get nothing taken
    refused(g.as_("m9").offer(&m1, &batch).await, "offer from outside");
    refused(g.as_("m4").offer(&m1, &batch).await, "offer before joining");
    // a batch over the bound is refused whole
    let big = OfferBatch {
        identities: vec!["n.example".into(); MAX_OFFER_IDENTITIES + 1],
        ..batch.clone()
    };
    let e = g.as_("m2").offer(&m1, &big).await.unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    // a member that set no hook says so
    let m2 = g.nodes[&2].clone();
    let e = g.as_("m3").offer(&m2, &batch).await.unwrap_err();
    assert!(e.to_string().contains("no offers"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(g.saw("offer", "unknown"));
}

/// Borrow requests reach a member from its peers only, bounded, and name the asker by its
/// certificate whatever the request says; garbage is refused before the hook hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrow_requests_come_from_members_only_as_themselves() {
    use raft::borrow::{BorrowReply, BorrowRequest};
    let g = Group::start(3).await;
    let seen: Arc<Mutex<Vec<(String, BorrowRequest)>>> = Arc::default();
    let hook_seen = seen.clone();
    g.members[0].on_borrow(Arc::new(move |asker, ask: BorrowRequest| {
        hook_seen.lock().unwrap().push((asker, ask.clone()));
        Box::pin(async move {
            BorrowReply {
                lent: vec![("a.example".into(), 7)],
                queued: ask.want,
            }
        })
    }));
    let m1 = g.nodes[&1].clone();

    // a member asks by name through the group's membership; the reply comes back whole
    let reply = g.members[1].borrow("m1", 16).await.unwrap();
    assert_eq!(reply.lent, vec![("a.example".to_string(), 7)]);
    assert_eq!(reply.queued, 16);
    assert!(g.members[1].borrow("m9", 16).await.is_err());
    // a request naming another member is taken as from the certificate's member
    let forged = BorrowRequest {
        member: "m3".into(),
        want: 8,
    };
    g.as_("m2").borrow(&m1, &forged).await.unwrap();
    {
        let seen = seen.lock().unwrap();
        let askers: Vec<_> = seen.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(askers, ["m2", "m2"]);
    }

    // an outsider, and a configured member that has not joined, are refused
    refused(
        g.as_("m9").borrow(&m1, &forged).await,
        "borrow from outside",
    );
    refused(
        g.as_("m4").borrow(&m1, &forged).await,
        "borrow before joining",
    );
    // out of bounds, or not a request at all: refused before the hook
    for want in [0, raft::ownership::MAX_LEND as u32 + 1] {
        let ask = BorrowRequest {
            want,
            ..forged.clone()
        };
        let e = g.as_("m2").borrow(&m1, &ask).await.unwrap_err();
        assert!(e.to_string().contains("asks for"), "{e}");
    }
    let mut client = g.as_("m2").client(&m1).unwrap();
    for payload in [b"not a request".to_vec(), vec![0xff; 64], Vec::new()] {
        let status = client.borrow(RaftPayload { payload }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    // a member that set no hook says so
    let m2 = g.nodes[&2].clone();
    let e = g.as_("m3").borrow(&m2, &forged).await.unwrap_err();
    assert!(e.to_string().contains("lends nothing"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(g.saw("borrow", "unknown"));
}
