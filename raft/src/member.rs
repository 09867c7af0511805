//! One running member of the Raft group: its RocksDB store, the openraft instance and the gRPC
//! server its peers talk to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, ConfigError, SnapshotPolicy, StorageError};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::admin::{
    ChangeError, ExtraFn, MembershipChange, MembershipOutcome, PeerContext, PeerView,
};
use crate::network::{Network, PeerError, Raft, RaftGrpc, Tls};
use crate::replicated::Proposer;
use crate::store::Store;
use crate::types::{Member, NodeId};

/// Why a member did not start, or a change to its group was not made.
#[derive(Debug, Error)]
pub enum MemberError {
    #[error("storage: {0}")]
    Storage(#[source] Box<StorageError<NodeId>>),
    #[error("raft configuration: {0}")]
    Config(#[source] ConfigError),
    #[error(
        "raft configuration: without TLS the Raft port may only listen on a loopback address, \
         not {0}"
    )]
    PlaintextNotLoopback(SocketAddr),
    #[error("raft configuration: tls: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// Raft stopped (or did not start) on an error of its own.
    #[error("raft: {0}")]
    Fatal(#[source] Box<Fatal<NodeId>>),
    #[error("raft: {0}")]
    Initialize(#[source] Box<RaftError<NodeId, InitializeError<NodeId, Member>>>),
    /// A membership change did not commit.
    #[error("raft: {0}")]
    Change(#[source] Box<RaftError<NodeId, ClientWriteError<NodeId, Member>>>),
    #[error("raft: a group of one elected no leader")]
    NoLeader,
    #[error("raft: no snapshot of index {index} within {timeout:?}")]
    SnapshotTimeout {
        index: u64,
        timeout: std::time::Duration,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl MemberError {
    fn storage(e: StorageError<NodeId>) -> MemberError {
        MemberError::Storage(Box::new(e))
    }

    fn change(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> MemberError {
        MemberError::Change(Box::new(e))
    }
}

/// How long one snapshot chunk may take to be sent and stored before the send starts over.
const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// Timing and snapshot settings of the group.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Largest snapshot chunk sent to a follower in one message.
    pub snapshot_chunk_bytes: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little.
    pub keep_logs: u64,
    /// Pause a busy member makes after each log entry (see `Proposer::start`).
    pub commit_linger_ms: u64,
}

/// A busy member waits 20 ms after each entry by default: on a shared or busy machine an entry
/// costs every member more than the servers in it (an uncapped 5-member cluster on two
/// cores went from ~900 entries and 8.3 s of CPU for 7,500 servers to ~230 and 5.9 s, and
/// from 0.78x to about one member's rate); a command waits at most that much longer (p99 at
/// half capacity 94 ms against 88). 100 ms cost throughput where flows wait on commits
/// (measured in `benches/BENCHMARKS.md`).
pub const DEFAULT_COMMIT_LINGER_MS: u64 = 20;

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_every: 10_000,
            // a million-record snapshot is ~850 MB: 8 MiB chunks keep it to ~100 round trips
            snapshot_chunk_bytes: 8 * 1024 * 1024,
            keep_logs: 1000,
            commit_linger_ms: DEFAULT_COMMIT_LINGER_MS,
        }
    }
}

pub struct MemberConfig {
    pub id: NodeId,
    pub me: Member,
    /// Where the Raft gRPC server binds (may differ from the advertised `me.raft_addr`);
    /// `None` for a member that is a group of one and never talks to peers (a provisioner
    /// without a `cluster` section keeps its ledger in a group of one).
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub settings: RaftSettings,
    /// Mutual TLS between members; `None` is plaintext, for development only.
    pub tls: Option<Tls>,
    /// Address connections to peers leave from; the system picks when `None`.
    pub source_ip: Option<std::net::IpAddr>,
    /// The members the configuration lists, the only ones that may join by themselves (see
    /// [`authz`](crate::authz)); empty when there is no such list.
    pub configured: BTreeMap<NodeId, Member>,
    /// Most milliseconds another member's clock may be off this one's for the commands it
    /// forwards to be taken while this member leads (0: not checked).
    pub max_clock_skew_ms: u64,
}

impl MemberConfig {
    /// A group of one named `name`, stored in `data_dir`: no port, no peers, elections at
    /// once (nobody to hear from). What a provisioner without a cluster runs.
    pub fn alone(name: &str, data_dir: PathBuf) -> MemberConfig {
        MemberConfig {
            id: 1,
            me: Member {
                name: name.to_string(),
                raft_addr: String::new(),
                admin_addr: String::new(),
            },
            listen: None,
            data_dir,
            settings: RaftSettings {
                heartbeat_ms: 50,
                election_min_ms: 150,
                election_max_ms: 300,
                // an entry costs a group of one a synced append only: no reason to wait
                commit_linger_ms: 0,
                ..Default::default()
            },
            tls: None,
            source_ip: None,
            configured: BTreeMap::new(),
            max_clock_skew_ms: 0,
        }
    }
}

/// The leader as `raft` knows it, with how to reach it.
pub fn leader_of(raft: &Raft) -> Option<(NodeId, Member)> {
    let m = raft.metrics().borrow().clone();
    let id = m.current_leader?;
    let node = m.membership_config.membership().get_node(&id)?.clone();
    Some((id, node))
}

/// A running member.
pub struct RaftMember {
    pub id: NodeId,
    pub me: Member,
    pub raft: Raft,
    pub store: Arc<Store>,
    pub network: Network,
    /// The store held a log when this process started: a restart, not a first start.
    pub restarted: bool,
    ctx: Arc<PeerContext>,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl RaftMember {
    /// Opens the store in `data_dir/raft`, starts Raft and serves it on `listen`.
    pub async fn start(cfg: MemberConfig) -> Result<RaftMember, MemberError> {
        if let Some(listen) = cfg
            .listen
            .filter(|l| cfg.tls.is_none() && !l.ip().is_loopback())
        {
            return Err(MemberError::PlaintextNotLoopback(listen));
        }
        let store = Store::open(&cfg.data_dir.join("raft")).map_err(MemberError::storage)?;
        let s = &cfg.settings;
        let config = Config {
            cluster_name: "choria-provisioner".into(),
            heartbeat_interval: s.heartbeat_ms,
            election_timeout_min: s.election_min_ms,
            election_timeout_max: s.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_every),
            snapshot_max_chunk_size: s.snapshot_chunk_bytes,
            // per chunk; openraft's 200 ms default made a large snapshot start over from its
            // first chunk whenever one chunk was slow (45 times for a million records)
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            max_in_snapshot_log_to_keep: s.keep_logs,
            // each entry stays under its byte budget; this many keep an append under the
            // gRPC message limit
            max_payload_entries: crate::replicated::MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        }
        .validate()
        .map_err(MemberError::Config)?;
        let network = Network::new(cfg.tls.clone())
            .with_id(cfg.id)
            .with_source_ip(cfg.source_ip)
            .with_wire(store.wire());
        // a log on disk before anything (a bootstrap, a join) appends to it: a restart
        let restarted = store
            .get_log_state()
            .map_err(MemberError::storage)?
            .last_log_id
            .is_some();
        let (log, sm) = crate::storage::split(store.clone());
        let raft = Raft::new(cfg.id, Arc::new(config), network.clone(), log, sm)
            .await
            .map_err(|e| MemberError::Fatal(Box::new(e)))?;

        let listener = match cfg.listen {
            Some(listen) => Some(tokio::net::TcpListener::bind(listen).await.map_err(
                |source| MemberError::Listen {
                    addr: listen,
                    source,
                },
            )?),
            None => None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let proposer = Proposer::start(
            cfg.id,
            raft.clone(),
            network.clone(),
            std::time::Duration::from_millis(cfg.settings.commit_linger_ms),
        );
        let ctx = Arc::new(PeerContext {
            proposer,
            id: cfg.id,
            me: cfg.me.clone(),
            raft: raft.clone(),
            store: store.clone(),
            network: network.clone(),
            extra: Default::default(),
            configured: cfg.configured.clone(),
            tls: cfg.tls.is_some(),
            on_refused: Default::default(),
            on_offer: Default::default(),
            on_borrow: Default::default(),
            max_clock_skew_ms: cfg.max_clock_skew_ms,
            names: Default::default(),
            refusals_logged: Default::default(),
        });
        let service = RaftGrpc::server(ctx.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &cfg.tls {
            builder = builder.tls_config(tls.server()).map_err(MemberError::Tls)?;
        }
        if let Some(listener) = listener {
            Self::serve(listener, builder, service, stopped);
        }
        Ok(RaftMember {
            id: cfg.id,
            me: cfg.me,
            raft,
            store,
            network,
            restarted,
            ctx,
            stop: std::sync::Mutex::new(Some(stop)),
        })
    }

    fn serve(
        listener: tokio::net::TcpListener,
        mut builder: tonic::transport::Server,
        service: proto::grpc::raft::raft_server::RaftServer<RaftGrpc>,
        stopped: oneshot::Receiver<()>,
    ) {
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let result = builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "raft gRPC server stopped");
            }
        });
    }

    /// Resolves, with the reason, once Raft has stopped for good on an error (a storage write
    /// that failed, such as a full disk): the member can no longer commit anything and its
    /// process should end, so that it is restarted or an operator looks.
    pub async fn failed(&self) -> String {
        // waits on the server metrics, which change with the role or leader only, not on the
        // full ones, which change with every entry and would wake the caller as often; both
        // end when Raft's core ends, after it recorded why in the full ones
        let mut rx = self.raft.server_metrics();
        loop {
            if let Err(fatal) = &self.raft.metrics().borrow().running_state {
                return fatal.to_string();
            }
            if rx.changed().await.is_err() {
                return match &self.raft.metrics().borrow().running_state {
                    Err(fatal) => fatal.to_string(),
                    Ok(()) => "raft stopped".to_string(),
                };
            }
        }
    }

    /// Makes a new group of `members` (ids and addresses). Only has an effect on a member
    /// that never held any log; on any other it does nothing, so it is safe on every restart.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, Member>) -> Result<(), MemberError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(MemberError::Initialize(Box::new(e))),
        }
    }

    /// For a group of one (a provisioner without a cluster): makes it, or once it has a
    /// leader, renames its only member to `me` when the configuration's identity changed, so
    /// commands under the new name are accepted.
    pub async fn start_alone(&self) -> Result<(), MemberError> {
        self.bootstrap(BTreeMap::from([(self.id, self.me.clone())]))
            .await?;
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if rx.borrow().current_leader == Some(self.id) {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(MemberError::NoLeader),
            }
        }
        let (voters, named) = {
            let m = rx.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().collect::<Vec<_>>(),
                membership.get_node(&self.id).cloned(),
            )
        };
        if voters != [self.id] || named.as_ref() == Some(&self.me) {
            return Ok(());
        }
        tracing::info!(from = ?named.map(|m| m.name), to = %self.me.name, "renaming the provisioner in its ledger");
        self.raft
            .change_membership(
                openraft::ChangeMembers::SetNodes(BTreeMap::from([(self.id, self.me.clone())])),
                false,
            )
            .await
            .map_err(MemberError::change)?;
        Ok(())
    }

    /// Until this member is part of a group, asks `peers` in turn to add it (the leader
    /// accepts). For a new member joining a running group; a member that already belongs to a
    /// group (after bootstrap or on restart) asks nobody.
    pub fn join_in_background(self: &Arc<Self>, peers: Vec<Member>) {
        let me = self.clone();
        tokio::spawn(async move {
            let req = crate::network::JoinRequest {
                id: me.id,
                member: me.me.clone(),
            };
            // a refusal is worth a warning (an operator must act); say each one once
            let mut last_refusal: Option<String> = None;
            loop {
                let known = me
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .nodes()
                    .count();
                if known > 0 {
                    return;
                }
                for peer in &peers {
                    match me.network.join(peer, &req).await {
                        Ok(()) => {
                            tracing::info!(via = %peer, "joined the group");
                            return;
                        }
                        Err(PeerError::Declined(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "join refused")
                        }
                        Err(PeerError::Refused { status }) => {
                            if last_refusal.as_deref() != Some(status.message()) {
                                tracing::warn!(peer = %peer, error = %status.message(), "join refused");
                                last_refusal = Some(status.message().to_string());
                            }
                        }
                        Err(e) => tracing::debug!(peer = %peer, error = %e, "join failed"),
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Adds `member` as a learner and waits until it has caught up with the log (through a
    /// snapshot when the log was compacted). Must be called on the leader.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), MemberError> {
        self.raft
            .add_learner(id, member, true)
            .await
            .map(|_| ())
            .map_err(MemberError::change)
    }

    /// Makes learner `id` a voter. Must be called on the leader.
    pub async fn promote(&self, id: NodeId) -> Result<(), MemberError> {
        let mut voters = self.voters();
        voters.insert(id);
        self.set_voters(voters).await
    }

    /// Removes `id` from the group (voter or learner). Must be called on the leader.
    pub async fn remove(&self, id: NodeId) -> Result<(), MemberError> {
        let mut voters = self.voters();
        if voters.remove(&id) {
            self.set_voters(voters).await?;
        }
        // once not a voter, dropping it from the nodes removes the learner too
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false)
            .await
            .map(|_| ())
            .map_err(MemberError::change)
    }

    /// Voter ids of the committed membership.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    async fn set_voters(
        &self,
        voters: std::collections::BTreeSet<NodeId>,
    ) -> Result<(), MemberError> {
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(MemberError::change)
    }

    /// Sets what is told of calls refused on the Raft port (once): a metric.
    pub fn on_refused(&self, f: crate::admin::RefusedFn) {
        let _ = self.ctx.on_refused.set(f);
    }

    /// Sets what takes the leader's discovery offers (once).
    pub fn on_offer(&self, f: crate::offer::OfferFn) {
        let _ = self.ctx.on_offer.set(f);
    }

    /// Sets what answers other members' borrow requests (once).
    pub fn on_borrow(&self, f: crate::borrow::BorrowFn) {
        let _ = self.ctx.on_borrow.set(f);
    }

    /// Asks the member named `name` to lend this one up to `want` servers.
    pub async fn borrow(
        &self,
        name: &str,
        want: u32,
    ) -> Result<crate::borrow::BorrowReply, PeerError> {
        let peer = self
            .peer_named(name)
            .ok_or_else(|| PeerError::NotAMember { name: name.into() })?;
        let req = crate::borrow::BorrowRequest {
            member: self.ctx.me.name.clone(),
            want,
        };
        self.ctx.network.borrow(&peer, &req).await
    }

    /// The member named `name` in the group's membership.
    fn peer_named(&self, name: &str) -> Option<crate::types::Member> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let found = m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n)
            .find(|n| n.name == name)
            .cloned();
        found
    }

    /// Sends `batch` to the member named `name` (by the group's membership); its answer says
    /// what it queued.
    pub async fn offer(
        &self,
        name: &str,
        batch: &crate::offer::OfferBatch,
    ) -> Result<crate::offer::OfferTaken, PeerError> {
        let Some(peer) = self.peer_named(name) else {
            return Err(PeerError::NotAMember { name: name.into() });
        };
        self.ctx.network.offer(&peer, batch).await
    }

    /// Sets what this member adds to its view for peers and operators (once).
    pub fn set_extra(&self, extra: ExtraFn) {
        let _ = self.ctx.extra.set(extra);
    }

    /// This member's own view.
    pub async fn view(&self) -> PeerView {
        self.ctx.view().await
    }

    /// Every member's view, asked concurrently; `Err` for members that did not answer.
    pub async fn views(&self) -> Vec<(NodeId, Member, Result<PeerView, PeerError>)> {
        let nodes: Vec<(NodeId, Member)> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let asks = nodes.into_iter().map(|(id, node)| async move {
            let view = if id == self.id {
                Ok(self.view().await)
            } else {
                match tokio::time::timeout(crate::admin::PEEK_TIMEOUT, self.network.peek(&node))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::NoAnswer),
                }
            };
            (id, node, view)
        });
        futures::future::join_all(asks).await
    }

    /// Carries out a membership change on the leader, wherever it is.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipOutcome, ChangeError> {
        match self.leader() {
            Some((id, _)) if id == self.id => self.ctx.change(change).await,
            Some((_, node)) => self
                .network
                .membership(&node, &change)
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?,
            None => Err(ChangeError::Unavailable("no leader".into())),
        }
    }

    /// The current leader, as this member knows it.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        leader_of(&self.raft)
    }

    /// Where this member's commands (and, on the leader, forwarded ones) are queued.
    pub fn proposer(&self) -> &Proposer {
        &self.ctx.proposer
    }

    /// Builds a snapshot of this member's state machine now (an operator compacting the log,
    /// or measuring) and waits up to `timeout` for it.
    pub async fn snapshot_now(
        &self,
        timeout: std::time::Duration,
    ) -> Result<crate::store::SnapshotStats, MemberError> {
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| MemberError::Fatal(Box::new(e)))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.store.last_snapshot() {
                Some(s) if s.index >= applied => return Ok(s),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(MemberError::SnapshotTimeout {
                        index: applied,
                        timeout,
                    })
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Stops serving peers and shuts Raft down; the store closes when the last handle to
    /// this member is dropped.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    /// A storage write that fails (a full disk) stops Raft, and [`RaftMember::failed`] says
    /// so, which is what makes the provisioner exit instead of claiming with a dead log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_stops_raft_and_failed_reports_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let member = RaftMember::start(MemberConfig::alone("alone", dir.path().to_path_buf()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        member.start_alone().await.unwrap_or_else(|e| panic!("{e}"));
        let member = Arc::new(member);
        let ledger = crate::replicated::RaftLedger::new(member.clone());
        let claim = |id: &str| crate::Command::Claim {
            identity: id.into(),
            member: "alone".into(),
            lease_until_ms: u64::MAX / 2,
            seen_ms: 1,
            at_ms: 1,
        };
        assert!(ledger.propose(claim("n1")).await.is_ok());

        member
            .store
            .fail_next_write
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(ledger.propose(claim("n2")).await.is_err());
        let reason = tokio::time::timeout(std::time::Duration::from_secs(10), member.failed())
            .await
            .unwrap_or_else(|_| panic!("failed() did not resolve"));
        assert!(reason.contains("No space left"), "{reason}");
        // what readers see is what the disk holds
        let state = member.store.state().await;
        assert!(state.ledger.record("n1").is_some());
        assert!(state.ledger.record("n2").is_none());
    }
}
