//! How the Raft transport reports a peer that answers too late (a timeout, which openraft
//! retries at once) apart from one it cannot reach (which openraft leaves alone for a while),
//! and how appends travel: on one stream per peer, opened again after a failure, or as calls
//! of their own to a peer that serves no stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
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
    type AppendStreamStream = tokio_stream::wrappers::ReceiverStream<Result<RaftPayload, Status>>;
    async fn append_stream(
        &self,
        _: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        stuck().await?;
        Err(Status::unavailable("too late"))
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

/// What a scripted peer's stream does.
#[derive(Clone, Copy, PartialEq)]
enum Streams {
    /// Serves streams; the first answer on the first stream comes too late.
    FirstAnswerLate,
    /// Serves none (a member of an older build).
    None,
}

/// A peer that answers every append with success, on a stream or as a call, and counts them.
#[derive(Clone)]
struct Scripted {
    streams: Streams,
    opened: Arc<AtomicUsize>,
    streamed: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

fn success() -> RaftPayload {
    let ok: Result<AppendEntriesResponse<u64>, RaftError<u64>> = Ok(AppendEntriesResponse::Success);
    RaftPayload {
        payload: serde_json::to_vec(&ok).unwrap(),
    }
}

fn unimplemented() -> Status {
    Status::unimplemented("not in this test")
}

#[tonic::async_trait]
impl RaftService for Scripted {
    async fn append_entries(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(success()))
    }
    type AppendStreamStream = tokio_stream::wrappers::ReceiverStream<Result<RaftPayload, Status>>;
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let first_stream = self.opened.fetch_add(1, Ordering::SeqCst) == 0;
        if self.streams == Streams::None {
            return Err(unimplemented());
        }
        let streamed = self.streamed.clone();
        let mut appends = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(_)) = appends.message().await {
                if first && first_stream {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                first = false;
                streamed.fetch_add(1, Ordering::SeqCst);
                if tx.send(Ok(success())).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn install_snapshot(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn forward(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn join(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn peek(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn membership(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn offer(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
    async fn borrow(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(unimplemented())
    }
}

/// A scripted peer on a loopback port, and a client of it.
async fn scripted(streams: Streams) -> (Scripted, impl RaftNetwork<TypeConfig>) {
    let peer_side = Scripted {
        streams,
        opened: Arc::default(),
        streamed: Arc::default(),
        calls: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(peer_side.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = Network::new(None)
        .with_id(1)
        .new_client(2, &peer(addr))
        .await;
    (peer_side, client)
}

/// Appends share one stream; an answer that comes too late is a timeout and closes that
/// stream, so the next append opens another and its answer is its own, not the late one.
#[tokio::test]
async fn appends_share_a_stream_and_a_late_answer_closes_it() {
    let (peer_side, mut client) = scripted(Streams::FirstAnswerLate).await;
    let short = RPCOption::new(Duration::from_millis(200));
    match client.append_entries(append(), short).await {
        Err(RPCError::Timeout(t)) => assert_eq!(t.action, RPCTypes::AppendEntries),
        other => panic!("expected a timeout, got {other:?}"),
    }
    for _ in 0..3 {
        let option = RPCOption::new(Duration::from_secs(5));
        match client.append_entries(append(), option).await {
            Ok(AppendEntriesResponse::Success) => {}
            other => panic!("expected success, got {other:?}"),
        }
    }
    assert_eq!(peer_side.opened.load(Ordering::SeqCst), 2, "streams opened");
    assert_eq!(
        peer_side.calls.load(Ordering::SeqCst),
        0,
        "calls of their own"
    );
    // the late answer was sent on the first stream, which the client had closed by then
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(peer_side.streamed.load(Ordering::SeqCst) >= 3);
}

/// A peer of an older build serves no stream: every append goes as a call of its own, and
/// the client does not ask for a stream again.
#[tokio::test]
async fn a_peer_without_streams_gets_calls() {
    let (peer_side, mut client) = scripted(Streams::None).await;
    for _ in 0..3 {
        let option = RPCOption::new(Duration::from_secs(5));
        match client.append_entries(append(), option).await {
            Ok(AppendEntriesResponse::Success) => {}
            other => panic!("expected success, got {other:?}"),
        }
    }
    assert_eq!(peer_side.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        peer_side.opened.load(Ordering::SeqCst),
        1,
        "streams asked for"
    );
}
