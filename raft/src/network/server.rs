//! The serving side of the members' port: [`RaftGrpc`] authorizes every call by its
//! caller's certificate (see [`authz`]) and hands it to the local Raft, or to
//! the hooks the application set (offers, borrowing), answering in the form the request came
//! in.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proto::grpc::raft::raft_server::{Raft as RaftService, RaftServer};
use proto::grpc::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::{ForwardResult, JoinRequest, PeerRefusal, Raft, GRPC_MAX_MESSAGE, SENT_MS};
use crate::admin::{MembershipChange, PeerContext};
use crate::authz::{self, Caller, Refusal, Roster};
use crate::codec;
use crate::types::{Batch, Member, NodeId, TypeConfig};

/// `v` as a payload, binary or JSON (see [`crate::codec`]).
fn encode<T: Serialize>(v: &T, binary: bool) -> Result<RaftPayload, Status> {
    codec::encode(v, binary)
        .map(|payload| RaftPayload { payload })
        .map_err(|e| Status::internal(format!("encode: {e}")))
}

/// A reply, in the form its request came in.
fn reply<T: Serialize>(req: &Request<RaftPayload>, v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v, codec::is_binary(&req.get_ref().payload)).map(Response::new)
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    codec::decode(&p.payload).map_err(|e| Status::invalid_argument(format!("decode: {e}")))
}

/// The gRPC service a member serves to its peers.
pub struct RaftGrpc {
    raft: Raft,
    ctx: Arc<PeerContext>,
}

impl RaftGrpc {
    pub fn server(ctx: Arc<PeerContext>) -> RaftServer<RaftGrpc> {
        RaftServer::new(RaftGrpc {
            raft: ctx.raft.clone(),
            ctx,
        })
        .max_decoding_message_size(GRPC_MAX_MESSAGE)
        .max_encoding_message_size(GRPC_MAX_MESSAGE)
    }
}

/// How often one kind of refused call is logged; the metric counts every one.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

impl RaftGrpc {
    /// What this member knows of the group now.
    async fn roster(&self) -> Roster {
        let (members, voters) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership
                    .nodes()
                    .map(|(id, n)| (*id, n.name.clone()))
                    .collect(),
                membership.voter_ids().collect(),
            )
        };
        let departed = self
            .ctx
            .store
            .state()
            .await
            .ledger
            .settings()
            .departed
            .clone();
        Roster {
            members,
            voters,
            configured: self
                .ctx
                .configured
                .iter()
                .map(|(id, m)| (*id, m.name.clone()))
                .collect(),
            departed,
        }
    }

    /// Who made the call, with the roster it was judged against.
    async fn caller(
        &self,
        req: &Request<RaftPayload>,
        rpc: &'static str,
    ) -> Result<(Caller, Roster), Status> {
        let roster = self.roster().await;
        let caller = if self.ctx.tls {
            match req.peer_certs().as_deref().and_then(|c| c.first()) {
                Some(cert) => self.ctx.names.of(cert).and_then(|n| roster.identify(&n)),
                None => Err(Refusal::NoCertificate),
            }
        } else {
            authz::loopback(req.remote_addr())
        };
        match caller {
            Ok(c) => Ok((c, roster)),
            Err(e) => Err(self.refused(rpc, e, req.remote_addr())),
        }
    }

    /// Counts and (now and then) logs a refusal; the status to answer with.
    fn refused(&self, rpc: &'static str, e: Refusal, from: Option<std::net::SocketAddr>) -> Status {
        if let Some(f) = self.ctx.on_refused.get() {
            f(rpc, e.reason());
        }
        let log = self
            .ctx
            .refusals_logged
            .lock()
            .map(|mut last| {
                let now = std::time::Instant::now();
                let due = last
                    .get(&(rpc, e.reason()))
                    .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_EVERY);
                if due {
                    last.insert((rpc, e.reason()), now);
                }
                due
            })
            .unwrap_or(true);
        if log {
            tracing::warn!(rpc, reason = e.reason(), error = %e, from = ?from, "raft call refused");
        }
        e.status(rpc)
    }

    /// Refuses a forwarding member whose clock (as it sent the call) is further off this
    /// member's than allowed: the times in its commands would be as far off, and its claims
    /// would lapse at times the others do not expect. A call without the header (an older
    /// member) is not checked.
    fn check_clock(&self, req: &Request<RaftPayload>, caller: &Caller) -> Result<(), Status> {
        let max_ms = self.ctx.max_clock_skew_ms;
        let sent = req
            .metadata()
            .get(SENT_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (Some(sent), true) = (sent, max_ms > 0) else {
            return Ok(());
        };
        let off_ms = sent.abs_diff(crate::now_ms());
        if off_ms <= max_ms {
            return Ok(());
        }
        let name = match caller {
            Caller::Member { name, .. } => name.clone(),
            Caller::Plaintext => "a plaintext caller".into(),
        };
        Err(self.refused(
            "forward",
            Refusal::ClockSkew {
                name,
                off_ms,
                max_ms,
            },
            req.remote_addr(),
        ))
    }

    /// `check` on the call's caller, or the refusal as a status.
    async fn authorize(
        &self,
        req: &Request<RaftPayload>,
        rpc: &'static str,
        check: impl FnOnce(&Roster, &Caller) -> Result<(), Refusal>,
    ) -> Result<Caller, Status> {
        let (caller, roster) = self.caller(req, rpc).await?;
        check(&roster, &caller).map_err(|e| self.refused(rpc, e, req.remote_addr()))?;
        Ok(caller)
    }

    /// Adds a joining member: learner first (it catches up), then voter.
    async fn admit(&self, join: JoinRequest) -> Result<(), JoinRefusal> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Err(JoinRefusal::NotLeader {
                leader: metrics.current_leader,
            });
        }
        if metrics
            .membership_config
            .membership()
            .get_node(&join.id)
            .is_some()
        {
            // it asks because its log is empty; if it held entries before, its data is gone
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&join.id).cloned().flatten())
                .map(|l| l.index);
            if let Some(index) = matched.filter(|i| *i > 0) {
                tracing::error!(
                    id = join.id,
                    member = %join.member,
                    had_up_to = index,
                    "a member came back with an empty log: its data is lost; remove it \
                     (provisioner admin remove-member) and it rejoins as a learner"
                );
                return Err(JoinRefusal::LostLog { index });
            }
            return Ok(());
        }
        tracing::info!(id = join.id, member = %join.member, "member joining");
        self.raft
            .add_learner(join.id, join.member, true)
            .await
            .map_err(|e| JoinRefusal::Raft(Box::new(e)))?;
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.insert(join.id) {
            self.raft
                .change_membership(voters, false)
                .await
                .map_err(|e| JoinRefusal::Raft(Box::new(e)))?;
        }
        Ok(())
    }
}

/// Why the leader did not add a member that asked to join.
#[derive(Debug, thiserror::Error)]
enum JoinRefusal {
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<NodeId> },
    #[error(
        "this member held the log up to {index} and lost it; an operator must remove it from \
         the group before it can join again"
    )]
    LostLog { index: u64 },
    #[error("{0}")]
    Raft(#[source] Box<RaftError<NodeId, ClientWriteError<NodeId, Member>>>),
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        let leader = rpc.vote.leader_id().voted_for();
        self.authorize(&req, "append", |r, c| r.acts_as(c, leader))
            .await?;
        reply(&req, &self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        let candidate = rpc.vote.leader_id().voted_for();
        self.authorize(&req, "vote", |r, c| r.may_campaign(c, candidate))
            .await?;
        reply(&req, &self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        let leader = rpc.vote.leader_id().voted_for();
        self.authorize(&req, "snapshot", |r, c| r.acts_as(c, leader))
            .await?;
        reply(&req, &self.raft.install_snapshot(rpc).await)
    }

    async fn join(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let mut join: JoinRequest = decode(req.get_ref())?;
        let (id, name) = (join.id, join.member.name.clone());
        self.authorize(&req, "join", |r, c| r.may_join(c, id, &name))
            .await?;
        // the configured addresses, not the ones the request brings
        if let Some(member) = self.ctx.configured.get(&join.id) {
            join.member = member.clone();
        }
        let result = self.admit(join).await.map_err(|e| PeerRefusal::of(&e));
        reply(&req, &result)
    }

    async fn peek(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "peek", |_, _| Ok(())).await?;
        reply(&req, &self.ctx.view().await)
    }

    async fn membership(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let change: MembershipChange = decode(req.get_ref())?;
        let caller = self
            .authorize(&req, "membership", |r, c| r.member(c))
            .await?;
        tracing::warn!(?change, ?caller, "membership change requested by a peer");
        reply(&req, &self.ctx.change(change).await)
    }

    async fn offer(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = self.authorize(&req, "offer", |r, c| r.member(c)).await?;
        let from = match caller {
            Caller::Member { id, .. } => Some(id),
            Caller::Plaintext => None,
        };
        let batch: crate::offer::OfferBatch = decode(req.get_ref())?;
        let taken = crate::offer::check(&batch)
            .and_then(|()| match self.ctx.on_offer.get() {
                Some(take) => Ok(take(from, batch)),
                None => Err(crate::offer::OfferRefusal::NotTaking),
            })
            .map_err(|e| PeerRefusal::of(&e));
        reply(&req, &taken)
    }

    async fn borrow(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = self.authorize(&req, "borrow", |r, c| r.member(c)).await?;
        let mut ask: crate::borrow::BorrowRequest = decode(req.get_ref())?;
        if let Caller::Member { name, .. } = &caller {
            // the asker is who its certificate says, whatever the request names
            ask.member = name.clone();
        }
        let lent = match (crate::borrow::check(&ask), self.ctx.on_borrow.get()) {
            (Err(e), _) => Err(PeerRefusal::of(&e)),
            (Ok(()), None) => Err(PeerRefusal::of(&crate::borrow::BorrowRefusal::NotLending)),
            (Ok(()), Some(lend)) => Ok(lend(ask.member.clone(), ask).await),
        };
        reply(&req, &lent)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let batch: Batch = decode(req.get_ref())?;
        let caller = self
            .authorize(&req, "forward", |r, c| r.may_forward(c, &batch.commands))
            .await?;
        self.check_clock(&req, &caller)?;
        if self.raft.metrics().borrow().current_leader != Some(self.ctx.id) {
            // not the leader (any more): openraft's answer names the one to ask instead
            let result: ForwardResult = self.raft.client_write(batch).await.map(|r| r.data);
            return reply(&req, &result);
        }
        // the leader commits forwarded commands with its own, in shared entries
        let result: ForwardResult = match self
            .ctx
            .proposer
            .propose_all(std::sync::Arc::unwrap_or_clone(batch.commands))
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(error = %e, "could not commit a forwarded batch");
                // the forwarding member asks again, here or at whoever leads by then
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                    openraft::error::ForwardToLeader::empty(),
                )))
            }
        };
        reply(&req, &result)
    }
}
