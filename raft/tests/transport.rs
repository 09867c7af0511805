//! How the Raft transport reports a peer that answers too late (a timeout, which openraft
//! retries at once) apart from one it cannot reach (which openraft leaves alone for a while).

use std::time::Duration;

use openraft::error::RPCError;
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Vote};
use proto::grpc::raft::raft_server::{Raft as RaftService, RaftServer};
use proto::grpc::raft::RaftPayload;
use raft::network::Network;
use raft::types::{Member, TypeConfig};
use tonic::{Request, Response, Status};

/// A peer that takes every call and answers none in time.
struct Stuck;

#[tonic::async_trait]
impl RaftService for Stuck {
    async fn append_entries(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn install_snapshot(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn forward(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn join(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn peek(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn membership(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn offer(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
    async fn borrow(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        stuck().await
    }
}

async fn stuck() -> Result<Response<RaftPayload>, Status> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    Err(Status::unavailable("too late"))
}

fn peer(addr: std::net::SocketAddr) -> Member {
    Member {
        name: "m2".into(),
        raft_addr: addr.to_string(),
        admin_addr: String::new(),
    }
}

fn append() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), 1)),
        leader_commit: None,
        entries: Vec::new(),
    }
}

/// A peer that answers too late timed out (openraft sends to it again at once); one
/// that cannot be reached is unreachable (openraft waits before it tries again).
#[tokio::test]
async fn a_late_answer_is_a_timeout_not_an_unreachable_peer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(Stuck))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut net = Network::new(None).with_id(1);
    let mut client = net.new_client(2, &peer(addr)).await;
    let option = RPCOption::new(Duration::from_millis(200));
    match client.append_entries(append(), option).await {
        Err(RPCError::Timeout(t)) => {
            assert_eq!((t.id, t.target), (1, 2));
            assert_eq!(t.action, RPCTypes::AppendEntries);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    server.abort();

    // a port nothing listens on
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut client = Network::new(None)
        .with_id(1)
        .new_client(3, &peer(closed))
        .await;
    let option = RPCOption::new(Duration::from_millis(200));
    match client.append_entries(append(), option).await {
        Err(RPCError::Unreachable(_)) => {}
        other => panic!("expected an unreachable peer, got {other:?}"),
    }
}
