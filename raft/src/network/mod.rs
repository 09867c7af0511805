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

mod client;
mod error;
mod rpc;
mod server;

use openraft::error::{ClientWriteError, RaftError};
use serde::Serialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::types::{BatchResult, Member, NodeId, TypeConfig};

pub use client::Network;
pub use error::{PeerError, PeerRefusal};
pub use rpc::PeerClient;
pub use server::RaftGrpc;

pub type Raft = openraft::Raft<TypeConfig>;

/// Result of a forwarded write, as it travels back to the member that forwarded it.
pub type ForwardResult = Result<BatchResult, RaftError<NodeId, ClientWriteError<NodeId, Member>>>;

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

/// Largest message members exchange (an append with many entries, a snapshot chunk).
pub const GRPC_MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Metadata a forwarded batch carries: the sender's clock when it sent it, Unix ms.
pub const SENT_MS: &str = "x-sent-ms";
