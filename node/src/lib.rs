//! The provisioner: finds Choria Servers waiting in provisioning mode and provisions them.
//!
//! Follow one server top-down: [`discover`] finds it (in a cluster the leader's discovery
//! [`offers`] it to its owner) and offers it to the [`work`] queue; a
//! worker runs the [`pipeline`], which goes through [`jwt`], [`inventory`], [`csr`],
//! [`helper`], [`enroll`] (with the built-in [`ca`], or [`orgissuer`] in ed25519 networks) and [`configure`], recording each state
//! change in the ledger (the `raft` crate). [`rpc`] carries every request over NATS,
//! [`metrics`] counts what happens, [`config`] reads the configuration file and [`service`]
//! starts it all. [`admin`] is the operator API and CLI.

pub mod admin;
pub mod broker;
pub mod ca;
pub mod caller;
pub mod certcheck;
pub mod config;
pub mod configure;
pub mod crl;
pub mod csr;
pub mod discover;
pub mod diskguard;
pub mod enroll;
pub mod flows;
pub mod helper;
pub mod inventory;
pub mod jwt;
pub mod keywrap;
pub mod lending;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod offers;
pub mod orgissuer;
pub mod pace;
pub mod pidfile;
pub mod pipeline;
pub mod raft_runtime;
pub mod renew;
pub mod rpc;
pub mod service;
pub mod shard;
pub mod template;
pub mod timed;
pub mod upkeep;
pub mod work;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
