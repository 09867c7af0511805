//! The ledger a cluster member uses: commands go through the Raft log.
//!
//! Proposals are group-committed by each member's [`Proposer`]: commands that arrive while
//! earlier batches are being written are collected into one log entry (up to [`MAX_BATCH`]),
//! one batch in flight per member. A member that is not the leader forwards its batch to
//! the leader over gRPC, and the leader puts forwarded commands into its own proposer's queue,
//! so the commands of every member share entries: every entry costs each member a synced log
//! write, and fewer, fuller entries are what lets the cluster grow without the leader's disk
//! and CPU capping it. A proposal returns once the leader has committed and applied it; if no
//! leader can be reached within the timeout the result is `Unavailable` and the caller must
//! not act on it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::Command;
use crate::ledger::{Applied, Ledger, LedgerError, Unavailable};
use crate::member::RaftMember;
use crate::network::{Network, PeerError, Raft};
use crate::records::ReadError;
use crate::state::{ClusterSettings, EnrollState, LedgerCounts, Record, LEDGER_RULES};
use crate::types::{Batch, BatchResult, NodeId};

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 512;
/// Most bytes of commands (as `Command::approx_bytes` counts them) in one log entry. With
/// [`MAX_ENTRIES_PER_APPEND`] entries in one append, a message stays well under the gRPC limit
/// (`network::GRPC_MAX_MESSAGE`).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most log entries openraft sends in one append.
pub const MAX_ENTRIES_PER_APPEND: u64 = 24;
const _: () = assert!(
    (MAX_BATCH_BYTES as u64) * 2 * MAX_ENTRIES_PER_APPEND < crate::network::GRPC_MAX_MESSAGE as u64
);
/// Batches written at the same time.
const IN_FLIGHT: usize = 1;
/// A member whose last entry carried at least this many commands is busy: its next entry
/// lingers (see [`Proposer::start`]).
const LINGER_FROM: usize = 8;
/// How long a proposal may wait for a leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// One try at forwarding to the leader; shorter than an election, so a batch sent to a leader
/// that has just been cut off is tried again at the next one.
const FORWARD_ATTEMPT: Duration = Duration::from_secs(3);

type Reply = oneshot::Sender<Result<Applied, LedgerError>>;

/// What a batch needs to reach the leader: this member's Raft and its peers.
#[derive(Clone)]
struct Route {
    id: NodeId,
    raft: Raft,
    network: Network,
}

/// A member's queue of commands to commit; cloned handles share the queue.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the member's batcher. While the member is busy (its last entry carried
    /// [`LINGER_FROM`] commands or more) it waits `linger` after each entry is committed
    /// before it starts the next, so what queues meanwhile shares one: every entry costs
    /// each member a synced append, an append message, openraft's bookkeeping and (from a
    /// follower) a forward, whatever it carries. That trades latency for CPU: it pays on
    /// members short of CPU and costs throughput where flows wait on commits instead
    /// (measured in `benches/BENCHMARKS.md`). Zero, or a quiet member, writes at once.
    pub fn start(id: NodeId, raft: Raft, network: Network, linger: Duration) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(Route { id, raft, network }, rx, linger));
        Proposer { tx }
    }

    /// Queues `cmd`; the receiver resolves once it is committed and applied (or cannot be).
    fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<Applied, LedgerError>> {
        let (tx, rx) = oneshot::channel();
        // a closed queue drops `tx`, which the receiver reports as a stopped ledger
        let _ = self.tx.send((cmd.bounded(), tx));
        rx
    }

    pub async fn propose(&self, cmd: Command) -> Result<Applied, LedgerError> {
        self.submit(cmd).await.map_err(|_| Unavailable::Stopped)?
    }

    /// Commits `commands` in their order, sharing entries with whatever else is queued
    /// (the leader, for a follower's forwarded batch); one result per command.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Result<BatchResult, LedgerError> {
        // queued all at once, in order, before waiting for any
        let pending: Vec<_> = commands.into_iter().map(|c| self.submit(c)).collect();
        let mut results = Vec::with_capacity(pending.len());
        for rx in pending {
            let applied = rx.await.map_err(|_| Unavailable::Stopped)??;
            results.push(applied);
        }
        Ok(BatchResult { results })
    }
}

pub struct RaftLedger {
    member: Arc<RaftMember>,
}

impl RaftLedger {
    pub fn new(member: Arc<RaftMember>) -> Arc<RaftLedger> {
        Arc::new(RaftLedger { member })
    }

    pub fn member(&self) -> &Arc<RaftMember> {
        &self.member
    }
}

/// On the leader: raises the cluster's ledger rules to this build's newest once every member
/// answers that it applies them (a member that does not say, an older build, holds it back),
/// proposing through `ledger`. Returns the rules set, if it set any.
pub async fn advance_rules(
    member: &RaftMember,
    ledger: &dyn Ledger,
) -> Result<Option<u32>, LedgerError> {
    let current = member.store.state().await.ledger.rules();
    if current >= LEDGER_RULES || !member.is_leader() {
        return Ok(None);
    }
    let views = member.views().await;
    if views
        .iter()
        .any(|(_, _, v)| v.as_ref().map_or(true, |v| v.rules < LEDGER_RULES))
    {
        return Ok(None);
    }
    let cmd = Command::SetRules {
        rules: LEDGER_RULES,
        at_ms: crate::now_ms(),
    };
    match ledger.propose(cmd).await? {
        Applied::Ok => Ok(Some(LEDGER_RULES)),
        Applied::Rejected(_) => Ok(None),
    }
}

async fn batcher(
    route: Route,
    mut rx: mpsc::UnboundedReceiver<(Command, Reply)>,
    linger: Duration,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // commands in the last entry
    let mut last_len = 0;
    // a command taken off the queue that did not fit the last entry goes first in the next
    let mut carry: Option<(Command, Reply)> = None;
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        let size = first.0.approx_bytes();
        if size > MAX_BATCH_BYTES {
            let _ = first
                .1
                .send(Err(Unavailable::TooLarge { bytes: size }.into()));
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        if last_len >= LINGER_FROM && !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
        // everything that queued up while we waited for a slot goes into this entry, up to
        // its byte budget
        let mut bytes = size;
        let mut pending = vec![first];
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    let size = p.0.approx_bytes();
                    if bytes + size > MAX_BATCH_BYTES {
                        carry = Some(p);
                        break;
                    }
                    bytes += size;
                    pending.push(p);
                }
                Err(_) => break,
            }
        }
        last_len = pending.len();
        let route = route.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            let result = write(&route, Batch::new(commands)).await;
            match result {
                Ok(r) if r.results.len() == replies.len() => {
                    for (reply, applied) in replies.into_iter().zip(r.results) {
                        let _ = reply.send(Ok(applied));
                    }
                }
                Ok(r) => {
                    let e = Unavailable::Results {
                        got: r.results.len(),
                        sent: replies.len(),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(e.clone().into()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Commits `batch` through the leader, wherever it is.
async fn write(route: &Route, batch: Batch) -> Result<BatchResult, LedgerError> {
    let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
    let mut last_error = Unavailable::NoLeader;
    while tokio::time::Instant::now() < deadline {
        let leader = crate::member::leader_of(&route.raft);
        // every attempt is bounded: a leader cut off from the others never answers
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = match &leader {
            Some((id, _)) if *id == route.id => {
                match tokio::time::timeout(left, route.raft.client_write(batch.clone())).await {
                    Ok(r) => r.map(|r| r.data),
                    Err(_) => {
                        last_error = Unavailable::NotCommitted(PROPOSE_TIMEOUT);
                        break;
                    }
                }
            }
            Some((_, node)) => match route
                .network
                .forward(node, &batch, left.min(FORWARD_ATTEMPT))
                .await
            {
                Ok(r) => r,
                // the leader will not take this member's commands; asking again does not help
                Err(PeerError::Refused { status }) => {
                    return Err(LedgerError::Refused(Arc::from(status)))
                }
                Err(e) => {
                    last_error = Unavailable::Forward(Arc::new(e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            None => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match outcome {
            Ok(r) => return Ok(r),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                last_error = Unavailable::LeaderMoved(f.leader_id);
                wait_for_leader_change(route, leader.map(|(id, _)| id)).await;
            }
            Err(e) => {
                last_error = Unavailable::Raft(Arc::new(e));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last_error.into())
}

async fn wait_for_leader_change(route: &Route, old: Option<NodeId>) {
    let mut metrics = route.raft.metrics();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while metrics.borrow().current_leader == old {
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// Reads records after `after` (in the states given, any when empty) until the visitor
/// returns false.
type ReadFn<'g> = dyn FnOnce(&str, &BTreeSet<EnrollState>, &mut dyn FnMut(&Record) -> bool) -> Result<(), ReadError>
    + 'g;

impl RaftLedger {
    /// Runs `body` with the ledger's kept counts and a way to read its records once. A
    /// ledger kept in the store is read from one consistent view of it, and the state
    /// machine's lock is let go as soon as that view is taken, so a sweep over a million
    /// records does not hold up apply.
    async fn read(
        &self,
        body: impl FnOnce(LedgerCounts, Box<ReadFn<'_>>) -> Result<(), ReadError>,
    ) {
        let guard = self.member.store.state().await;
        let counts = guard.ledger.counts("");
        let source = guard.ledger.source().cloned();
        let result = match source {
            None => body(
                counts,
                Box::new(|after, states, visit| guard.ledger.for_each(after, states, visit)),
            ),
            Some(src) => body(
                counts,
                Box::new(move |after, states, visit| {
                    src.scan(Box::new(move || drop(guard)), after, states, &mut |r| {
                        visit(&r)
                    })
                }),
            ),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot read the ledger");
        }
    }
}

#[async_trait]
impl Ledger for RaftLedger {
    async fn propose(&self, cmd: Command) -> Result<Applied, LedgerError> {
        self.member.proposer().propose(cmd).await
    }

    async fn record(&self, identity: &str) -> Option<Record> {
        self.member.store.state().await.ledger.record(identity)
    }

    async fn records(&self) -> Vec<Record> {
        self.member.store.state().await.ledger.all_records()
    }

    async fn scan(&self, visit: &mut (dyn for<'r> FnMut(&'r Record) + Send)) {
        self.read(|_, read| {
            read("", &BTreeSet::new(), &mut |r| {
                visit(r);
                true
            })
        })
        .await;
    }

    async fn page(
        &self,
        after: &str,
        limit: usize,
        count: bool,
        filter: crate::state::Filter<'_>,
    ) -> crate::state::Page {
        let mut page = crate::state::Page::default();
        self.read(|counts, read| {
            crate::state::page_into(&mut page, after, limit, count, filter, counts, read)
        })
        .await;
        page
    }

    async fn digest(&self) -> String {
        self.member.store.state().await.ledger.digest()
    }

    async fn live_members(&self, now_ms: u64, window_ms: u64) -> Vec<String> {
        self.member
            .store
            .state()
            .await
            .ledger
            .live_members(now_ms, window_ms)
    }

    async fn counts(&self, member: &str) -> LedgerCounts {
        self.member.store.state().await.ledger.counts(member)
    }

    async fn settings(&self) -> ClusterSettings {
        self.member.store.state().await.ledger.settings().clone()
    }

    async fn heartbeats(&self) -> std::collections::BTreeMap<String, u64> {
        self.member.store.state().await.ledger.heartbeats().clone()
    }

    async fn forgettable(&self, before_ms: u64, limit: usize) -> Vec<String> {
        self.member
            .store
            .state()
            .await
            .ledger
            .forgettable(before_ms, limit)
    }
}
