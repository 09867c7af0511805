//! openraft's side of the members' port: [`PeerClient`] sends appends, votes and snapshot
//! chunks to one peer and turns what goes wrong into the errors openraft acts on (a timeout
//! is retried at once, an unreachable peer is left alone a while).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::grpc::raft::raft_client::RaftClient;
use proto::grpc::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::Network;
use crate::append_cache::AppendCache;
use crate::codec::{self, WireFormat};
use crate::types::{Member, NodeId, TypeConfig};

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
