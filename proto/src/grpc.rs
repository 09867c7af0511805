//! Protobuf messages and gRPC services generated from `protos/*.proto`.

/// Member-to-member Raft traffic.
pub mod raft {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("provisioner.raft.v1");
}

/// The operator API (see `protos/admin.proto`).
pub mod admin {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("provisioner.admin.v1");
}
