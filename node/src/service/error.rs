//! Why a provisioner could not start: one variant per thing [`super::Provisioner::start`]
//! sets up, so the binary can choose its exit code (a full disk is not a bad configuration),
//! each keeping the error it came from.

use raft::member::MemberError;
use thiserror::Error;

use crate::ca::CaError;
use crate::diskguard::LowSpace;
use crate::jwt::JwtError;
use crate::rpc::RpcError;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("cannot connect to NATS {servers:?}: {source}")]
    Connect {
        servers: Vec<String>,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    Jwt(#[from] JwtError),
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("metrics endpoint {addr}: {source}")]
    MetricsAddr {
        addr: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lifecycle subscription: {0}")]
    Events(#[source] async_nats::SubscribeError),
    #[error("helper: no helper program is configured and no user logic is compiled in")]
    NoHelper,
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("ledger in {dir}: {source}")]
    Ledger {
        dir: String,
        #[source]
        source: LedgerOpenError,
    },
    #[error("admin API: {0}")]
    Admin(#[from] crate::admin::tls::TlsError),
    #[error("{0}")]
    Issuer(#[from] crate::orgissuer::IssuerError),
    #[error("cannot start the Raft thread: {0}")]
    RaftThread(#[source] std::io::Error),
}

/// Why this member could not join its cluster's Raft group.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("data_dir is required")]
    NoDataDir,
    #[error("id {0} is not a member")]
    NotAMember(u64),
    #[error("tls {}: {source}", path.display())]
    Tls {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: openraft's errors inside are large, and every `Result` of start carries this.
    #[error("{0}")]
    Raft(#[source] Box<MemberError>),
    /// The task that joins on the Raft runtime ended without an answer.
    #[error("Raft runtime: {0}")]
    Runtime(#[source] tokio::task::JoinError),
}

impl From<MemberError> for ClusterError {
    fn from(e: MemberError) -> Self {
        ClusterError::Raft(Box::new(e))
    }
}

/// Why the ledger in `data_dir` could not be opened.
#[derive(Debug, Error)]
pub enum LedgerOpenError {
    #[error("{0}")]
    LowSpace(#[from] LowSpace),
    /// Boxed: openraft's errors inside are large, and every `Result` of start carries this.
    #[error("{0}")]
    Raft(#[source] Box<MemberError>),
}

impl From<MemberError> for LedgerOpenError {
    fn from(e: MemberError) -> Self {
        LedgerOpenError::Raft(Box::new(e))
    }
}
