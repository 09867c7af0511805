//! Why a provisioner could not start: one variant per thing [`super::Provisioner::start`]
//! sets up, so the binary can choose its exit code (a full disk is not a bad configuration).

use thiserror::Error;

use crate::ca::CaError;
use crate::jwt::JwtError;
use crate::rpc::RpcError;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("cannot connect to NATS {servers:?}: {reason}")]
    Connect {
        servers: Vec<String>,
        reason: String,
    },
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    Jwt(#[from] JwtError),
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("metrics endpoint {addr}: {reason}")]
    Metrics { addr: String, reason: String },
    #[error("lifecycle subscription: {0}")]
    Events(String),
    #[error("helper: no helper program is configured and no user logic is compiled in")]
    NoHelper,
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("ledger in {dir}: {reason}")]
    Ledger { dir: String, reason: String },
    #[error("admin API: {0}")]
    Admin(#[from] crate::admin::tls::TlsError),
    #[error("{0}")]
    Issuer(#[from] crate::orgissuer::IssuerError),
    #[error("cannot start the Raft thread: {0}")]
    RaftThread(#[source] std::io::Error),
}
