//! The operator API: a gRPC service on every member ([`server`]), over mutual TLS with
//! operator certificates from the admin CA ([`tls`]), its record selection ([`select`]),
//! reprovisioning runs ([`reprovision`]) and the `provisioner admin` CLI ([`cli`]).

// tonic's `Status` is the error every gRPC method returns; boxing it would only move the cost.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod reprovision;
pub mod select;
pub mod server;
pub mod tls;
