//! The fleet simulator: thousands of simulated Choria Servers waiting in provisioning mode,
//! each with its own identity, NATS connection, keys and provisioning JWT, behaving as the
//! real `choria_provision` and `rpcutil` agents do.
//!
//! It depends only on `proto`, never on the provisioner's crates, so it is an independent
//! peer: a protocol mistake in the provisioner shows up here instead of being shared.
//!
//! [`server`] is one simulated server, [`keys`] its key and CSR making, [`keyrecv`] its side of private key transport, [`signer`] the test
//! signer of provisioning JWTs, [`trust`] what a secure server checks of issuer-signed JWTs, [`usage`] what a process cost, [`faults`] the failure injection, and [`fleet`] starts many
//! servers and reports what happened to them.

pub mod faults;
pub mod fleet;
pub mod keyrecv;
pub mod keys;
pub mod server;
pub mod signer;
pub mod trust;
pub mod usage;
