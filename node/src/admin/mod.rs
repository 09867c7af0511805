//! The operator API: a gRPC service on every member ([`server`]), over mutual TLS with
//! operator certificates from the admin CA ([`tls`]), its record selection ([`select`]),
//! reprovisioning runs ([`reprovision`]), online backups ([`backup`]), ledger imports
//! ([`import`], sent by [`import_file`]) and the `provisioner admin` CLI ([`cli`]).

// tonic's `Status` is the error every gRPC method returns; boxing it would only move the cost.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod cli;
pub mod import;
mod import_file;
pub mod reprovision;
pub mod select;
pub mod server;
pub mod tls;

/// The gRPC name of a status code, as in the specification (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
