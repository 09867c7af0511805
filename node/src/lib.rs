//! The provisioner: finds Choria Servers waiting in provisioning mode and provisions them.
//!
//! Follow one server top-down: [`discover`] finds it (in a cluster the leader's discovery
//! [`offers`] it to its owner) and offers it to the [`work`] queue; a worker runs the
//! [`pipeline`], one module per step in the order they happen (JWT, claim, inventory, key,
//! helper, enroll, configure, record, restart), each recording its state change in the
//! ledger (the `raft` crate). The steps are handed what they need from the member's
//! [`context`], built once: [`call`] is every typed call to a server's agent (over [`rpc`],
//! NATS), [`enrollment`] how this member issues credentials (the built-in [`ca`], or
//! [`orgissuer`] in ed25519 networks), [`helper`] the user logic; [`jwt`] and [`csr`] check
//! what servers send. [`metrics`] counts what happens, [`config`] reads the configuration
//! file and [`service`] starts it all. [`admin`] is the operator API and CLI.

pub mod admin;
pub mod broker;
pub mod ca;
pub mod call;
pub mod caller;
pub mod certcheck;
pub mod clock;
pub mod config;
pub mod context;
pub mod crl;
pub mod csr;
pub mod discover;
pub mod diskguard;
pub mod enrollment;
pub mod flows;
pub mod helper;
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
