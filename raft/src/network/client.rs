//! The calling side of the members' port, as the application uses it: joining, peeking,
//! membership changes, offers, borrowing and forwarded writes, each bounded in time, over
//! channels shared per peer (see [`Network`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::grpc::raft::raft_client::RaftClient;
use proto::grpc::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{ForwardResult, JoinRequest, PeerError, PeerRefusal, Tls, SENT_MS};
use crate::admin::{ChangeError, MembershipChange, MembershipOutcome, PeerView};
use crate::append_cache::AppendCache;
use crate::codec::{self, WireFormat};
use crate::types::{Batch, Member, NodeId};

/// How long a joining member waits for a peer's answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a membership change forwarded to the leader may take (adding a learner waits for
/// it to catch up).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

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
    pub(super) wire: WireFormat,
    /// This member's id, as a timed-out call names its sender.
    pub(super) id: NodeId,
    /// Entries encoded for one follower, reused for the others (see [`AppendCache`]).
    pub(super) appends: AppendCache,
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
