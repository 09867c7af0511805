//! Member-to-member transport over gRPC (tonic): the client side openraft uses to reach its
//! peers, and the server side that hands their requests to the local Raft.
//!
//! With [`Tls`] every connection is mutual TLS: a member presents its certificate from the
//! cluster CA, checks the peer's against the same CA and the peer's member name, and the
//! server refuses clients without such a certificate. Every call is then authorized: the
//! server side knows which member called from its certificate and lets it do only what that
//! member may ([`authz`](crate::authz)). Plaintext is for development, on loopback only.
//!
//! openraft's request and response types travel JSON-encoded inside a protobuf `RaftPayload`
//! (see `proto/protos/raft.proto`). A remote Raft error comes back as `Err` inside the payload
//! and is returned as a remote error; a transport failure is reported as unreachable, which makes
//! openraft back off from that peer.

// tonic's `Status` and openraft's errors are the trait-mandated error types here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::grpc::raft::raft_client::RaftClient;
use proto::grpc::raft::raft_server::{Raft as RaftService, RaftServer};
use proto::grpc::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

use crate::admin::{ChangeError, MembershipChange, MembershipOutcome, PeerContext, PeerView};
use crate::append_cache::AppendCache;
use crate::authz::{self, Caller, Refusal, Roster};
use crate::codec::{self, WireFormat};
use crate::types::{Batch, BatchResult, Member, NodeId, TypeConfig};

pub type Raft = openraft::Raft<TypeConfig>;

/// Result of a forwarded write, as it travels back to the member that forwarded it.
pub type ForwardResult = Result<BatchResult, RaftError<NodeId, ClientWriteError<NodeId, Member>>>;

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

/// A join request: the new member's id and how to reach it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub member: Member,
}

/// A member's TLS material: the cluster CA and its own certificate and key (PEM).
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Tls {
    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }

    /// Server side: present our certificate, require a client certificate from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
    }

    /// Client side: present our certificate, accept a server that has one from the CA for
    /// `peer_name`.
    pub fn client(&self, peer_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
            .domain_name(peer_name)
    }
}

/// How long a joining member waits for a peer's answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a membership change forwarded to the leader may take (adding a learner waits for
/// it to catch up).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// A peer's refusal as it travels between members: the `Err` of a join, offer or borrow
/// reply. Serialized as the bare string earlier builds sent (their replies were
/// `Result<T, String>`), in JSON and binary alike, so members of two builds side by side (a
/// rolling upgrade) read each other's replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct PeerRefusal(String);

impl PeerRefusal {
    /// The refusal `why` says, for the wire.
    pub fn of(why: &(dyn std::error::Error + '_)) -> PeerRefusal {
        PeerRefusal(why.to_string())
    }

    /// The peer's reason, as it gave it.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer refused this member the call (see [`authz`](crate::authz)): trying again does
    /// not help until an operator changes the membership.
    #[error("refused: {}", .status.message())]
    Refused {
        #[source]
        status: Box<Status>,
    },
    /// The peer answered, declining (not the leader, takes no offers yet...): worth another
    /// try, maybe elsewhere.
    #[error("{0}")]
    Declined(#[source] PeerRefusal),
    /// A transport failure or an error status: worth another try.
    #[error("{status}")]
    Unavailable {
        #[source]
        status: Box<Status>,
    },
    /// The peer is not reachable at its address (the channel could not be set up).
    #[error("{0}")]
    Connect(#[source] tonic::transport::Error),
    /// No answer within `limit`: a peer behind a partition never answers, not even with an
    /// error.
    #[error("no answer within {limit:?}")]
    Timeout { limit: Duration },
    /// No answer in time to a status query.
    #[error("no answer")]
    NoAnswer,
    /// The request could not be encoded.
    #[error("encode: {0}")]
    Encode(#[source] codec::CodecError),
    /// The answer does not decode.
    #[error("decode: {0}")]
    Decode(#[source] codec::CodecError),
    /// The member asked for is not in the group's membership.
    #[error("{name} is not a member of the group")]
    NotAMember { name: String },
}

impl From<Status> for PeerError {
    fn from(s: Status) -> Self {
        match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => PeerError::Refused {
                status: Box::new(s),
            },
            _ => PeerError::Unavailable {
                status: Box::new(s),
            },
        }
    }
}

impl From<PeerRefusal> for PeerError {
    fn from(r: PeerRefusal) -> Self {
        PeerError::Declined(r)
    }
}

/// A call to a peer, bounded: a peer behind a partition never answers, not even with an error.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(PeerError::from),
        Err(_) => Err(PeerError::Timeout { limit }),
    }
}

/// `v` as a request payload to a peer.
fn request<T: Serialize>(v: &T, binary: bool) -> Result<RaftPayload, PeerError> {
    codec::encode(v, binary)
        .map(|payload| RaftPayload { payload })
        .map_err(PeerError::Encode)
}

/// A peer's answer.
fn answer<T: DeserializeOwned>(p: &Response<RaftPayload>) -> Result<T, PeerError> {
    codec::decode(&p.get_ref().payload).map_err(PeerError::Decode)
}

/// Builds gRPC clients to peers; channels are shared per address and reconnect lazily.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<Tls>,
    source_ip: Option<std::net::IpAddr>,
    wire: WireFormat,
    /// This member's id, as a timed-out call names its sender.
    id: NodeId,
    /// Entries encoded for one follower, reused for the others (see [`AppendCache`]).
    appends: AppendCache,
}

impl Network {
    /// `tls: None` is plaintext, for development only.
    pub fn new(tls: Option<Tls>) -> Self {
        Network {
            channels: Arc::default(),
            tls,
            source_ip: None,
            wire: WireFormat::default(),
            id: 0,
            appends: AppendCache::default(),
        }
    }

    /// The member these calls come from.
    pub fn with_id(mut self, id: NodeId) -> Self {
        self.id = id;
        self
    }

    /// What this member sends its peers in: its store follows the cluster's ledger rules.
    pub fn with_wire(mut self, wire: WireFormat) -> Self {
        self.wire = wire;
        self
    }

    /// Connections to peers leave from `ip` (a multi-homed host, or firewall rules that
    /// know members by address).
    pub fn with_source_ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.source_ip = ip;
        self
    }

    /// A client for `peer` (its member name is checked against its certificate).
    pub fn client(&self, peer: &Member) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let addr = &peer.raft_addr;
        // the name is part of the key: it is what the peer's certificate is checked against
        let key = format!("{}@{addr}", peer.name);
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(&key) {
            return Ok(RaftClient::new(c.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        // keep-alive pings find a connection whose packets vanish (a partition sends no
        // reset), so the channel reconnects instead of waiting on it for ever
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client(&peer.name))?;
        }
        let channel = match self.source_ip {
            None => endpoint.connect_lazy(),
            Some(ip) => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(Duration::from_secs(2)));
                http.set_local_address(Some(ip));
                endpoint.connect_with_connector_lazy(http)
            }
        };
        channels.insert(key, channel.clone());
        Ok(RaftClient::new(channel))
    }

    /// Asks `peer` to add this member to the group; [`PeerError::Declined`] is the peer's
    /// refusal (for example, it is not the leader).
    pub async fn join(&self, peer: &Member, req: &JoinRequest) -> Result<(), PeerError> {
        let mut client = self.client(peer).map_err(PeerError::Connect)?;
        // control calls stay JSON: their messages carry free-form JSON (`PeerView::extra`)
        // that only a self-describing format can hold; only the hot calls go binary
        let payload = request(req, false)?;
        let reply = within(JOIN_TIMEOUT, client.join(payload)).await?;
        let joined: Result<(), PeerRefusal> = answer(&reply)?;
        Ok(joined?)
    }

    /// Asks `peer` for its own view of itself and the group.
    pub async fn peek(&self, peer: &Member) -> Result<PeerView, PeerError> {
        let mut client = self.client(peer).map_err(PeerError::Connect)?;
        let mut req = Request::new(request(&(), false)?);
        req.set_timeout(crate::admin::PEEK_TIMEOUT);
        let reply = within(crate::admin::PEEK_TIMEOUT, client.peek(req)).await?;
        answer(&reply)
    }

    /// Asks `leader` to carry out a membership change.
    pub async fn membership(
        &self,
        leader: &Member,
        change: &MembershipChange,
    ) -> Result<Result<MembershipOutcome, ChangeError>, PeerError> {
        let mut client = self.client(leader).map_err(PeerError::Connect)?;
        let req = request(change, false)?;
        let reply = within(MEMBERSHIP_TIMEOUT, client.membership(req)).await?;
        answer(&reply)
    }

    /// Offers `peer` the waiting servers the leader's discovery found for it.
    pub async fn offer(
        &self,
        peer: &Member,
        batch: &crate::offer::OfferBatch,
    ) -> Result<crate::offer::OfferTaken, PeerError> {
        let mut client = self.client(peer).map_err(PeerError::Connect)?;
        let req = request(batch, self.wire.binary())?;
        let reply = within(crate::offer::OFFER_TIMEOUT, client.offer(req)).await?;
        let taken: Result<crate::offer::OfferTaken, PeerRefusal> = answer(&reply)?;
        Ok(taken?)
    }

    /// Asks `peer` to lend this member servers.
    pub async fn borrow(
        &self,
        peer: &Member,
        req: &crate::borrow::BorrowRequest,
    ) -> Result<crate::borrow::BorrowReply, PeerError> {
        let mut client = self.client(peer).map_err(PeerError::Connect)?;
        let req = request(req, self.wire.binary())?;
        let reply = within(crate::borrow::BORROW_TIMEOUT, client.borrow(req)).await?;
        let lent: Result<crate::borrow::BorrowReply, PeerRefusal> = answer(&reply)?;
        Ok(lent?)
    }

    /// Sends a batch of commands to `leader` to commit, waiting at most `limit`. A batch
    /// whose answer was lost may still commit; the ledger answers a replay as a success.
    pub async fn forward(
        &self,
        leader: &Member,
        batch: &Batch,
        limit: Duration,
    ) -> Result<ForwardResult, PeerError> {
        let mut client = self.client(leader).map_err(PeerError::Connect)?;
        let mut req = Request::new(request(batch, self.wire.binary())?);
        // the leader compares it with its own clock (see `max_clock_skew_ms`)
        if let Ok(v) = crate::now_ms().to_string().parse() {
            req.metadata_mut().insert(SENT_MS, v);
        }
        let reply = within(limit, client.forward(req)).await?;
        answer(&reply)
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    /// The channel to it, or why there is none (openraft asks for a client whatever the
    /// address holds; every call reports the peer unreachable).
    client: Result<RaftClient<Channel>, tonic::transport::Error>,
    wire: WireFormat,
    appends: AppendCache,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            client: self.client(node),
            wire: self.wire.clone(),
            appends: self.appends.clone(),
        }
    }
}

/// Whether a call failed by running out of its time (the peer gave up on it, or we did)
/// rather than by not reaching the peer. openraft sends a timed-out append again at once
/// but sends an unreachable peer nothing for a while (500 ms): a follower short of CPU that
/// answered late was left without entries, and its flows without commits, for that long.
fn timed_out(s: &Status) -> bool {
    s.code() == tonic::Code::DeadlineExceeded
        // what tonic's server answers when the request's `grpc-timeout` passed
        || (s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired")
}

/// Why a call openraft made did not get an answer from the peer.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("{kind}: {status}")]
    Call {
        kind: &'static str,
        #[source]
        status: Box<Status>,
    },
    #[error("encode: {0}")]
    Encode(#[source] codec::CodecError),
    #[error("decode: {0}")]
    Decode(#[source] codec::CodecError),
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode(req, self.wire.binary())
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Encode(e))))?;
        self.send(kind, RaftPayload { payload }, timeout).await
    }

    /// Sends an encoded request and decodes the reply.
    async fn send<Resp, E>(
        &mut self,
        kind: &'static str,
        payload: RaftPayload,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self
            .client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&*e)))?;
        let mut request = Request::new(payload);
        request.set_timeout(timeout);
        let (reply, action) = match kind {
            "append" => (
                client.append_entries(request).await,
                RPCTypes::AppendEntries,
            ),
            "vote" => (client.vote(request).await, RPCTypes::Vote),
            _ => (
                client.install_snapshot(request).await,
                RPCTypes::InstallSnapshot,
            ),
        };
        let reply = reply.map_err(|s| {
            if timed_out(&s) {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout,
                })
            } else {
                RPCError::Unreachable(Unreachable::new(&TransportError::Call {
                    kind,
                    status: Box::new(s),
                }))
            }
        })?;
        let result: Result<Resp, E> = codec::decode(&reply.get_ref().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Decode(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let payload = self
            .appends
            .encode(&rpc, self.wire.binary())
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Encode(e))))?;
        self.send("append", RaftPayload { payload }, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// The gRPC service a member serves to its peers.
pub struct RaftGrpc {
    raft: Raft,
    ctx: Arc<PeerContext>,
}

/// Largest message members exchange (an append with many entries, a snapshot chunk).
pub const GRPC_MAX_MESSAGE: usize = 64 * 1024 * 1024;

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
/// Metadata a forwarded batch carries: the sender's clock when it sent it, Unix ms.
pub const SENT_MS: &str = "x-sent-ms";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::borrow::BorrowReply;
    use crate::offer::OfferTaken;

    /// What earlier builds sent and read: `Result<T, String>`. The replies of this build must
    /// be the same bytes, in both wire formats, and earlier builds' bytes must read as ours.
    fn same_on_the_wire<T>(ok: T)
    where
        T: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug,
    {
        let why = "not the leader; the leader is Some(2)";
        let olds: [Result<T, String>; 2] = [Ok(ok.clone()), Err(why.to_string())];
        let news: [Result<T, PeerRefusal>; 2] = [Ok(ok), Err(PeerRefusal(why.to_string()))];
        for (old, new) in olds.iter().zip(&news) {
            for binary in [false, true] {
                let old_bytes = codec::encode(old, binary).unwrap();
                let new_bytes = codec::encode(new, binary).unwrap();
                assert_eq!(old_bytes, new_bytes, "binary: {binary}");
                let read: Result<T, PeerRefusal> = codec::decode(&old_bytes).unwrap();
                assert_eq!(&read, new);
                let back: Result<T, String> = codec::decode(&new_bytes).unwrap();
                assert_eq!(&back, old);
            }
        }
    }

    #[test]
    fn refusals_travel_as_the_strings_earlier_builds_sent() {
        same_on_the_wire(());
        same_on_the_wire(OfferTaken {
            queued: 3,
            refused: 1,
        });
        same_on_the_wire(BorrowReply {
            lent: vec![("n1.example.net".into(), 7)],
            queued: 2,
        });
        let refusal = PeerRefusal::of(&crate::borrow::BorrowRefusal::NotLending);
        assert_eq!(refusal.reason(), "this member lends nothing yet");
        let e = PeerError::from(refusal);
        assert_eq!(e.to_string(), "this member lends nothing yet");
    }

    #[test]
    fn peer_errors_keep_their_status_and_say_what_happened() {
        use std::error::Error as _;
        let e = PeerError::from(Status::permission_denied(
            "raft join: prov9 is not a member",
        ));
        assert!(matches!(e, PeerError::Refused { .. }));
        assert_eq!(e.to_string(), "refused: raft join: prov9 is not a member");
        assert!(e.source().is_some());
        let e = PeerError::from(Status::unavailable("connection refused"));
        assert!(matches!(e, PeerError::Unavailable { .. }));
        assert!(e.to_string().contains("connection refused"), "{e}");
        let e = PeerError::Timeout {
            limit: Duration::from_secs(2),
        };
        assert_eq!(e.to_string(), "no answer within 2s");
    }
}
