//! Every wire format the provisioner speaks, and nothing else.
//!
//! Read it next to upstream's JSON schemas: [`v1`] holds the five layers of Choria protocol
//! version 1 (transport, secure request, request, secure reply, reply), [`v2`] those of
//! version 2 and [`wire`] which version a message speaks, [`rpc`] the MCollective
//! SimpleRPC body carried inside them, [`subject`] the NATS subjects they travel on,
//! [`lifecycle`] the events servers publish, [`ddl`] the agent interfaces (inputs and their
//! validation) and [`agents`] the typed inputs and outputs of the `choria_provision` and
//! `rpcutil` actions we call, each tied to its agent and action name by [`action`]. [`grpc`] holds the protobuf services members speak to each
//! other. [`x509`] reads the certificates and CRLs we hand out as strictly as a TLS peer does.
//!
//! This crate depends on no other crate of the workspace, so the fleet simulator that uses
//! it stays an independent peer of the provisioner.

pub mod action;
pub mod agents;
pub mod ddl;
pub mod error;
pub mod grpc;
pub mod lifecycle;
pub mod rpc;
pub mod subject;
pub mod v1;
pub mod v2;
pub mod wire;
pub mod x509;

pub use error::ProtoError;

/// Creates a request id as Choria protocol v1 wants it: 32 lower-case hex characters.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Seconds since the Unix epoch, as the envelopes carry it.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
