//! The admin gRPC service every member serves: status, membership, drain and rebalance,
//! pause, reprovisioning, ledger queries and imports, and revocation.
//!
//! Reads come from this member's replica of the ledger. Writes are ledger commands, which go
//! through the Raft log (forwarded to the leader by the ledger); membership changes are
//! carried out by the leader, forwarded over the members' own mTLS channel.
//!
//! Each idea in its module: [`status`], membership changes ([`membership`]), drain, rebalance
//! and pause ([`work`]), the ledger read and written ([`ledger`]), snapshots and backups
//! ([`store`]). Here: the service itself, its mTLS listener and the counting of each call.

use std::sync::Arc;

use futures::StreamExt;
use proto::grpc::admin as pb;
use proto::grpc::admin::admin_server::{Admin, AdminServer};
use raft::admin::ExtraFn;
use raft::member::RaftMember;
use raft::{Applied, Command};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::tls::{AdminTls, TlsError};
use crate::config::Admin as AdminConfig;
use crate::context::Services;
use crate::rpc::RpcClient;

mod ledger;
mod membership;
mod status;
mod store;
mod work;

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

impl AdminApi {
    pub(super) fn svc(&self) -> &Services {
        &self.ctx.svc
    }

    /// Who did it, as history lines name it: member/operator.
    pub(super) fn actor(&self, operator: &str) -> String {
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

    pub(super) fn member(&self) -> Result<&Arc<RaftMember>, Status> {
        self.ctx
            .member
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this provisioner is not a cluster member"))
    }

    pub(super) async fn propose(&self, cmd: Command) -> Result<Applied, Status> {
        self.svc().ledger.propose(cmd).await.map_err(unavailable)
    }
}

/// A server-streaming reply.
type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Each call: who made it, the work (in this module's children), the call counted.
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
        let r = self.add_learner(req.into_inner(), &who).await;
        self.observe("add_member", r).map(Response::new)
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = operator(&req);
        let r = self.promote_learner(req.into_inner().id, &who).await;
        self.observe("promote", r).map(Response::new)
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let who = operator(&req);
        let r = self.remove(req.into_inner(), &who).await;
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
        let r = AdminApi::set_paused(self, req.into_inner().paused, &who).await;
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
        let r = self.record(req.into_inner().identity).await;
        self.observe("get_record", r).map(Response::new)
    }

    type ExportLedgerStream = Stream<pb::ExportLine>;

    async fn export_ledger(
        &self,
        req: Request<pb::ExportLedgerRequest>,
    ) -> Result<Response<Self::ExportLedgerStream>, Status> {
        let r = self.export(req.into_inner().selector);
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
        let r = self.snapshot_now(&who).await;
        self.observe("snapshot", r).map(Response::new)
    }

    async fn import_ledger(
        &self,
        req: Request<pb::ImportLedgerRequest>,
    ) -> Result<Response<pb::ImportLedgerReply>, Status> {
        let who = operator(&req);
        let r = self.import(req.into_inner().servers, &who).await;
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
