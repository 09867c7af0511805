//! One running member of the Raft group: its RocksDB store, the openraft instance and the gRPC
//! server its peers talk to.
//!
//! [`RaftMember::start`] opens the store and starts Raft and the server; what is asked of a
//! running member is grouped by who asks: the group's membership and views (`group`), its
//! peers' offers and loans (`peers`), and its status for metrics and operators (`status`).
//! Its settings are in `config`.

mod config;
mod group;
mod peers;
mod status;

use config::SNAPSHOT_CHUNK_TIMEOUT_MS;
pub use config::{MemberConfig, RaftSettings, DEFAULT_COMMIT_LINGER_MS};
pub use status::{CheckpointError, LeaderWatch, RaftStatus, Role};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, ConfigError, SnapshotPolicy, StorageError};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::admin::PeerContext;
use crate::network::{Network, PeerError, Raft, RaftGrpc};
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
    /// openraft itself; other crates read [`RaftMember::status`] and
    /// [`RaftMember::leader_watch`].
    pub(crate) raft: Raft,
    pub(crate) store: Arc<Store>,
    pub(crate) network: Network,
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

    /// Where this member's commands (and, on the leader, forwarded ones) are queued.
    pub fn proposer(&self) -> &Proposer {
        &self.ctx.proposer
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
