//! The admin gRPC service every member serves: status, membership, drain and rebalance,
//! pause, reprovisioning, ledger queries and imports, and revocation.
//!
//! Reads come from this member's replica of the ledger. Writes are ledger commands, which go
//! through the Raft log (forwarded to the leader by the ledger); membership changes are
//! carried out by the leader, forwarded over the members' own mTLS channel.

use std::sync::Arc;

use futures::StreamExt;
use proto::grpc::admin as pb;
use proto::grpc::admin::admin_server::{Admin, AdminServer};
use raft::admin::{ChangeError, ExtraFn, MembershipChange, MembershipOutcome};
use raft::member::RaftMember;
use raft::types::Member;
use raft::{Applied, Command, EnrollState, Rejection};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::select::{self, Selector};
use super::tls::{AdminTls, TlsError};
use crate::config::Admin as AdminConfig;
use crate::pipeline::{now_ms, Services};
use crate::rpc::RpcClient;
use crate::service::LIVE_WINDOW_MS;
use crate::VERSION;

/// A member is healthy while it has applied the log to within this many entries of the
/// leader's last index.
const HEALTHY_LAG: u64 = 1_000;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;
/// Records an export reads from the ledger at a time.
const EXPORT_PAGE: usize = 1_000;

/// Everything the admin service works with.
pub struct AdminContext {
    pub svc: Arc<Services>,
    pub member: Option<Arc<RaftMember>>,
    /// Sends reprovision requests in the collective provisioned servers answer in.
    pub reprovision: RpcClient,
    /// This member's work counts, version and pause (the same document peers get).
    pub extra: ExtraFn,
    /// Cluster name (or this provisioner's identity when alone).
    pub cluster: String,
}

/// Who called: the common name of the operator's certificate.
#[derive(Debug, Clone)]
struct Operator(String);

pub struct AdminApi {
    ctx: Arc<AdminContext>,
}

/// Starts the admin server on `cfg.listen`; the task runs until aborted.
pub async fn serve(
    ctx: Arc<AdminContext>,
    cfg: &AdminConfig,
) -> Result<tokio::task::JoinHandle<()>, TlsError> {
    let tls = Arc::new(AdminTls::load(&cfg.client_ca, &cfg.cert, &cfg.key)?);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| TlsError::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let metrics = ctx.svc.metrics.clone();
    let m2 = metrics.clone();
    let incoming = tls.incoming(listener, move || {
        m2.admin_requests
            .with_label_values(&[m2.site(), "handshake", "failed"])
            .inc();
    });
    let check = tls.clone();
    let interceptor = move |mut req: Request<()>| {
        let certs = req.peer_certs();
        match check.check(certs.as_deref().map(|c| c.as_slice())) {
            Ok(name) => {
                req.extensions_mut().insert(Operator(name));
                Ok(req)
            }
            Err(status) => {
                metrics
                    .admin_requests
                    .with_label_values(&[metrics.site(), "any", "unauthenticated"])
                    .inc();
                tracing::warn!(
                    peer = ?req.remote_addr(),
                    reason = status.message(),
                    "admin call refused"
                );
                Err(status)
            }
        }
    };
    let service = AdminServer::with_interceptor(AdminApi { ctx }, interceptor);
    tracing::info!(listen = %cfg.listen, "admin API listening (mTLS)");
    Ok(tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server stopped");
        }
    }))
}

fn operator<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Operator>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| "unknown".into())
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("ledger: {e}"))
}

fn change_status(e: ChangeError) -> Status {
    match e {
        ChangeError::Invalid(m) | ChangeError::Quorum(m) => Status::failed_precondition(m),
        ChangeError::Unavailable(m) => Status::unavailable(m),
    }
}

fn membership_reply(o: MembershipOutcome) -> pb::MembershipReply {
    pb::MembershipReply {
        message: o.message,
        voters: o.voters,
        learners: o.learners,
    }
}

impl AdminApi {
    fn svc(&self) -> &Services {
        &self.ctx.svc
    }

    /// Who did it, as history lines name it: member/operator.
    fn actor(&self, operator: &str) -> String {
        format!("{}/{operator}", self.svc().member)
    }

    /// Counts the call by method and status code.
    fn observe<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        let m = &self.svc().metrics;
        let code = match &r {
            Ok(_) => "ok".to_string(),
            Err(s) => super::code_name(s.code()).to_lowercase(),
        };
        m.admin_requests
            .with_label_values(&[m.site(), method, &code])
            .inc();
        if let Err(s) = &r {
            tracing::warn!(method, code, message = s.message(), "admin call failed");
        }
        r
    }

    fn member(&self) -> Result<&Arc<RaftMember>, Status> {
        self.ctx
            .member
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this provisioner is not a cluster member"))
    }

    async fn propose(&self, cmd: Command) -> Result<Applied, Status> {
        self.svc().ledger.propose(cmd).await.map_err(unavailable)
    }

    async fn status(&self) -> Result<pb::StatusReply, Status> {
        let ledger = &self.svc().ledger;
        let settings = ledger.settings().await;
        let counts = ledger.counts(&self.svc().member).await;
        let heartbeats = ledger.heartbeats().await;
        let now = now_ms();
        let extra_u64 = |extra: &serde_json::Value, key: &str| {
            extra.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
        };
        let base = |name: &str| {
            let draining = settings.draining.contains(name);
            let claimed = counts.claimed_by.get(name).copied().unwrap_or(0);
            pb::MemberStatus {
                name: name.to_string(),
                live: heartbeats
                    .get(name)
                    .is_some_and(|at| now.saturating_sub(*at) <= LIVE_WINDOW_MS),
                last_heartbeat_ms: heartbeats.get(name).copied().unwrap_or(0),
                draining,
                owned: claimed as u64,
                // under ownership epochs there are no claims to count: the epoch in force
                // leaving it out, acknowledged, says it holds nothing
                drained: draining
                    && if settings.rules >= raft::state::OWNED_RULES {
                        settings.ownership.left_out_and_acked(name)
                    } else {
                        claimed == 0
                    },
                ..Default::default()
            }
        };
        let mut reply = pb::StatusReply {
            cluster: self.ctx.cluster.clone(),
            answered_by: self.svc().member.clone(),
            version: VERSION.into(),
            paused: settings.paused,
            ledger_records: counts.by_state.values().sum::<usize>() as u64,
            ledger_by_state: counts
                .by_state
                .iter()
                .map(|(s, n)| (s.name().to_string(), *n as u64))
                .collect(),
            revoked_credentials: counts.revoked as u64,
            clustered: self.ctx.member.is_some(),
            ..Default::default()
        };
        let Some(member) = &self.ctx.member else {
            let extra = (self.ctx.extra)();
            let mut me = base(&self.svc().member);
            me.role = "standalone".into();
            me.healthy = true;
            me.live = true;
            me.queued = extra_u64(&extra, "queued");
            me.in_flight = extra_u64(&extra, "in_flight");
            me.owned += extra_u64(&extra, "flows");
            // alone there are no epochs: drained once nothing runs
            me.drained = me.draining && me.owned == 0;
            me.waiting_retry = extra_u64(&extra, "waiting_retry");
            me.version = VERSION.into();
            me.paused = self.svc().is_paused();
            me.ledger_digest = ledger.digest().await;
            reply.members.push(me);
            return Ok(reply);
        };
        let voters = member.voters();
        let views = member.views().await;
        let leader_index = views
            .iter()
            .filter_map(|(_, _, v)| v.as_ref().ok())
            .find(|v| v.role == "leader")
            .map(|v| v.last_log_index);
        if let Some((id, node)) = member.leader() {
            reply.leader_id = id;
            reply.leader = node.name;
        }
        reply.term = member.raft.metrics().borrow().current_term;
        for (id, node, view) in views {
            let mut s = base(&node.name);
            s.id = id;
            s.raft_addr = node.raft_addr.clone();
            s.admin_addr = node.admin_addr.clone();
            s.voter = voters.contains(&id);
            match view {
                Ok(v) => {
                    s.role = v.role.clone();
                    s.term = v.term;
                    s.last_log_index = v.last_log_index;
                    s.last_applied = v.last_applied;
                    s.healthy = leader_index
                        .is_some_and(|li| li.saturating_sub(v.last_applied) <= HEALTHY_LAG);
                    s.ledger_digest = v.digest.clone();
                    s.queued = extra_u64(&v.extra, "queued");
                    s.in_flight = extra_u64(&v.extra, "in_flight");
                    s.owned += extra_u64(&v.extra, "flows");
                    s.waiting_retry = extra_u64(&v.extra, "waiting_retry");
                    s.paused = v
                        .extra
                        .get("paused")
                        .and_then(|p| p.as_bool())
                        .unwrap_or(false);
                    s.version = v
                        .extra
                        .get("version")
                        .and_then(|p| p.as_str())
                        .unwrap_or_default()
                        .to_string();
                }
                Err(e) => {
                    s.role = "unreachable".into();
                    s.error = e;
                }
            }
            reply.members.push(s);
        }
        Ok(reply)
    }

    async fn drain(&self, req: pb::DrainRequest) -> Result<pb::DrainReply, Status> {
        if req.member.is_empty() {
            return Err(Status::invalid_argument("member is required"));
        }
        let known = match &self.ctx.member {
            Some(m) => m
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .any(|(_, n)| n.name == req.member),
            None => req.member == self.svc().member,
        };
        if !known {
            return Err(Status::not_found(format!(
                "{} is not a member of this cluster",
                req.member
            )));
        }
        self.propose(Command::SetDraining {
            member: req.member.clone(),
            draining: req.drain,
            at_ms: now_ms(),
        })
        .await?;
        tracing::warn!(member = %req.member, drain = req.drain, "drain changed by operator");
        // committed; this member's replica may apply it a moment later
        let mut draining = self.svc().ledger.settings().await.draining;
        if req.drain {
            draining.insert(req.member);
        } else {
            draining.remove(&req.member);
        }
        Ok(pb::DrainReply {
            draining: draining.into_iter().collect(),
        })
    }

    async fn rebalance(&self, operator: &str) -> Result<pb::RebalanceReply, Status> {
        let ledger = &self.svc().ledger;
        let live = ledger.live_members(now_ms(), LIVE_WINDOW_MS).await;
        let mut released = 0u64;
        // claims of members that are not live, found in one pass without copying the ledger
        let mut stranded = Vec::new();
        ledger
            .scan(&mut |r| {
                if let (EnrollState::Claimed, Some(owner)) = (r.state, &r.owner) {
                    if !live.contains(owner) {
                        stranded.push((r.identity.clone(), owner.clone()));
                    }
                }
            })
            .await;
        for (identity, owner) in stranded {
            let cmd = Command::Reassign {
                identity,
                from: owner.clone(),
                member: self.actor(operator),
                reason: format!("rebalanced: {owner} is not live or is draining"),
                at_ms: now_ms(),
            };
            if self.propose(cmd).await? == Applied::Ok {
                released += 1;
            }
        }
        self.propose(Command::Rebalance { at_ms: now_ms() }).await?;
        tracing::warn!(released, ?live, "rebalance requested by operator");
        Ok(pb::RebalanceReply {
            released,
            live_members: live,
        })
    }

    async fn backup_member(
        &self,
        req: pb::BackupRequest,
        operator: &str,
    ) -> Result<pb::BackupReply, Status> {
        let member = self.member()?.clone();
        let data_dir = self
            .svc()
            .config
            .data_dir
            .clone()
            .ok_or_else(|| Status::failed_precondition("this member has no data_dir"))?;
        let (path, m) = super::backup::make(member, data_dir, req.name).await?;
        tracing::info!(path = %path.display(), last_applied = m.last_applied, records = m.records, operator, "backup made");
        Ok(pb::BackupReply {
            path: path.display().to_string(),
            member: m.member,
            last_applied: m.last_applied,
            records: m.records,
            bytes: m.bytes,
        })
    }

    async fn revoke(&self, req: pb::RevokeRequest, operator: &str) -> Result<String, Status> {
        if !proto::subject::is_valid_identity(&req.identity) {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a valid identity",
                req.identity
            )));
        }
        let rec = self
            .svc()
            .ledger
            .record(&req.identity)
            .await
            .ok_or_else(|| Status::not_found(format!("{} is not in the ledger", req.identity)))?;
        let serial = rec
            .credential
            .map(|c| c.serial)
            .ok_or_else(|| Status::failed_precondition("the server has no credential"))?;
        let reason = if req.reason.is_empty() {
            format!("revoked by {operator}")
        } else {
            req.reason
        };
        match self
            .propose(Command::Revoke {
                identity: req.identity.clone(),
                member: self.actor(operator),
                reason,
                at_ms: now_ms(),
            })
            .await?
        {
            Applied::Ok => {
                tracing::warn!(identity = %req.identity, %serial, operator, "credential revoked");
                Ok(serial)
            }
            Applied::Rejected(Rejection::NoCredential) => {
                Err(Status::failed_precondition("the server has no credential"))
            }
            Applied::Rejected(r) => Err(Status::failed_precondition(r.to_string())),
        }
    }

    async fn list(&self, req: pb::ListLedgerRequest) -> Result<pb::ListLedgerReply, Status> {
        let sel = Selector::parse(req.selector, false)?;
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size is at most {MAX_PAGE}"
                )))
            }
            n => n,
        } as usize;
        let owner = req.owner.as_str();
        let keep = |r: &raft::Record| {
            sel.matches(r) && (owner.is_empty() || r.owner.as_deref() == Some(owner))
        };
        // one page copied out of the replica, however large the ledger
        let filter = raft::state::Filter {
            states: sel.states(),
            by_state_only: sel.by_state_only() && owner.is_empty(),
            keep: &keep,
        };
        let page = self
            .svc()
            .ledger
            .page(&req.page_token, size, true, filter)
            .await;
        let next = match page.more {
            true => page
                .records
                .last()
                .map(|r| r.identity.clone())
                .unwrap_or_default(),
            false => String::new(),
        };
        Ok(pb::ListLedgerReply {
            records: page.records.iter().map(select::record).collect(),
            next_page_token: next,
            matched: page.matched as u64,
        })
    }
}

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.observe("status", AdminApi::status(self).await)
            .map(Response::new)
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = operator(&req);
        let r = async {
            let a = req.into_inner();
            if a.id == 0 {
                return Err(Status::invalid_argument("id must be a positive number"));
            }
            if !proto::subject::is_valid_identity(&a.name) {
                return Err(Status::invalid_argument(format!(
                    "name {:?} is not a valid member name",
                    a.name
                )));
            }
            let addr_ok = |s: &str| {
                s.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            };
            if !addr_ok(&a.raft_addr) {
                return Err(Status::invalid_argument(format!(
                    "raft_addr {:?} is not host:port",
                    a.raft_addr
                )));
            }
            if !a.admin_addr.is_empty() && !addr_ok(&a.admin_addr) {
                return Err(Status::invalid_argument(format!(
                    "admin_addr {:?} is not host:port",
                    a.admin_addr
                )));
            }
            let member = self.member()?;
            tracing::warn!(id = a.id, name = %a.name, operator = %who, "adding learner");
            member
                .change_membership(MembershipChange::AddLearner {
                    id: a.id,
                    member: Member {
                        name: a.name,
                        raft_addr: a.raft_addr,
                        admin_addr: a.admin_addr,
                    },
                })
                .await
                .map(membership_reply)
                .map_err(change_status)
        }
        .await;
        self.observe("add_member", r).map(Response::new)
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = operator(&req);
        let id = req.into_inner().id;
        let r = async {
            let member = self.member()?;
            tracing::warn!(id, operator = %who, "promoting learner");
            member
                .change_membership(MembershipChange::Promote { id })
                .await
                .map(membership_reply)
                .map_err(change_status)
        }
        .await;
        self.observe("promote", r).map(Response::new)
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = operator(&req);
        let a = req.into_inner();
        let r = async {
            let member = self.member()?;
            tracing::warn!(id = a.id, force = a.force, operator = %who, "removing member");
            member
                .change_membership(MembershipChange::Remove {
                    id: a.id,
                    force: a.force,
                })
                .await
                .map(membership_reply)
                .map_err(change_status)
        }
        .await;
        self.observe("remove_member", r).map(Response::new)
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        let r = AdminApi::drain(self, req.into_inner()).await;
        self.observe("drain", r).map(Response::new)
    }

    async fn rebalance(
        &self,
        req: Request<pb::RebalanceRequest>,
    ) -> Result<Response<pb::RebalanceReply>, Status> {
        let who = operator(&req);
        let r = AdminApi::rebalance(self, &who).await;
        self.observe("rebalance", r).map(Response::new)
    }

    async fn set_paused(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseReply>, Status> {
        let who = operator(&req);
        let paused = req.into_inner().paused;
        let r = async {
            self.propose(Command::SetPaused {
                paused,
                at_ms: now_ms(),
            })
            .await?;
            tracing::warn!(paused, operator = %who, "provisioning pause changed by operator");
            // committed; this member's replica may apply it a moment later
            Ok(pb::PauseReply { paused })
        }
        .await;
        self.observe("set_paused", r).map(Response::new)
    }

    type ReprovisionStream = Stream<pb::ReprovisionProgress>;

    async fn reprovision(
        &self,
        req: Request<pb::ReprovisionRequest>,
    ) -> Result<Response<Self::ReprovisionStream>, Status> {
        let who = operator(&req);
        let r = super::reprovision::start(self.ctx.clone(), req.into_inner(), self.actor(&who))
            .await
            .map(|rx| Box::pin(ReceiverStream::new(rx).map(Ok)) as Self::ReprovisionStream);
        self.observe("reprovision", r).map(Response::new)
    }

    async fn list_ledger(
        &self,
        req: Request<pb::ListLedgerRequest>,
    ) -> Result<Response<pb::ListLedgerReply>, Status> {
        let r = self.list(req.into_inner()).await;
        self.observe("list_ledger", r).map(Response::new)
    }

    async fn get_record(
        &self,
        req: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::Record>, Status> {
        let identity = req.into_inner().identity;
        let r = async {
            if !proto::subject::is_valid_identity(&identity) {
                return Err(Status::invalid_argument(format!(
                    "{identity:?} is not a valid identity"
                )));
            }
            self.svc()
                .ledger
                .record(&identity)
                .await
                .map(|r| select::record(&r))
                .ok_or_else(|| Status::not_found(format!("{identity} is not in the ledger")))
        }
        .await;
        self.observe("get_record", r).map(Response::new)
    }

    type ExportLedgerStream = Stream<pb::ExportLine>;

    async fn export_ledger(
        &self,
        req: Request<pb::ExportLedgerRequest>,
    ) -> Result<Response<Self::ExportLedgerStream>, Status> {
        let r = async {
            let sel = Selector::parse(req.into_inner().selector, false)?;
            // a page at a time, as the client reads: memory stays bounded however large the
            // ledger
            let ledger = self.svc().ledger.clone();
            let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_PAGE);
            tokio::spawn(async move {
                let mut after = String::new();
                loop {
                    let keep = |r: &raft::Record| sel.matches(r);
                    let filter = raft::state::Filter {
                        states: sel.states(),
                        by_state_only: false,
                        keep: &keep,
                    };
                    let page = ledger.page(&after, EXPORT_PAGE, false, filter).await;
                    for r in &page.records {
                        let line = serde_json::to_string(r)
                            .map(|json| pb::ExportLine { json })
                            .map_err(|e| Status::internal(e.to_string()));
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                    match page.records.last() {
                        Some(last) if page.more => after = last.identity.clone(),
                        _ => return,
                    }
                }
            });
            Ok(Box::pin(ReceiverStream::new(rx)) as Self::ExportLedgerStream)
        }
        .await;
        self.observe("export_ledger", r).map(Response::new)
    }

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupReply>, Status> {
        let who = operator(&req);
        let r = self.backup_member(req.into_inner(), &who).await;
        self.observe("backup", r).map(Response::new)
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let who = operator(&req);
        let r = async {
            let member = self.member()?;
            let s = member
                .snapshot_now(std::time::Duration::from_secs(600))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            tracing::info!(
                operator = who,
                index = s.index,
                took_ms = s.took_ms,
                "snapshot built on request"
            );
            Ok(pb::SnapshotReply {
                member: member.me.name.clone(),
                index: s.index,
                took_ms: s.took_ms,
                bytes: s.bytes,
                records: s.records,
            })
        }
        .await;
        self.observe("snapshot", r).map(Response::new)
    }

    async fn import_ledger(
        &self,
        req: Request<pb::ImportLedgerRequest>,
    ) -> Result<Response<pb::ImportLedgerReply>, Status> {
        let who = operator(&req);
        let servers = req.into_inner().servers;
        let r = if servers.len() > super::import::MAX_SERVERS {
            Err(Status::invalid_argument(format!(
                "{} servers in one call; at most {}",
                servers.len(),
                super::import::MAX_SERVERS
            )))
        } else {
            let actor = self.actor(&who);
            let reply = super::import::import(self.svc(), &actor, servers).await;
            tracing::info!(
                operator = who,
                imported = reply.imported,
                skipped = reply.skipped,
                refused = reply.refused,
                "ledger import"
            );
            Ok(reply)
        };
        self.observe("import_ledger", r).map(Response::new)
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeReply>, Status> {
        let who = operator(&req);
        let r = AdminApi::revoke(self, req.into_inner(), &who)
            .await
            .map(|serial| pb::RevokeReply { serial });
        self.observe("revoke", r).map(Response::new)
    }
}
