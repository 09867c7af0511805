//! Test and demo harness: runs the real parts as separate processes on loopback.
//!
//! [`Nats`] starts `nats-server` with the provisioning broker layout (a `provisioning` account
//! holding the provisioner and the waiting servers, a separate `choria` account, no anonymous
//! access); [`init_ca`] and [`ProvisionerProcess`] run the `provisioner` binary; [`FleetProcess`]
//! runs `fleet-sim`. Every process is killed when its handle is dropped, and logs to a file in
//! the run's directory. [`checker`] holds a run's ledgers against what the fleet saw;
//! [`netfault`] cuts the network between members.
//!
//! The harness is split by idea, and everything a test needs is re-exported here:
//! - `paths`: where the workspace's binaries, the repository and Python are;
//! - `ports`: free loopback ports, and waiting for one to listen;
//! - `process`: the kill-on-drop [`Proc`] handle and the waiting the others share;
//! - `broker`: the `nats-server` under test ([`Nats`], [`nats_config`]);
//! - `pki`: the broker's TLS material, the built-in CA, the cluster and admin CAs;
//! - `cli`: an [`Operator`] running `provisioner admin` against a member;
//! - `config`: the options of a provisioner and its cluster, and the file written from them;
//! - `member`: provisioner processes ([`ProvisionerProcess`], [`start_members`]);
//! - `fleet`: the simulated fleet ([`FleetProcess`]);
//! - `scrape`: reading `/metrics` and `/status`;
//! - `ledger`: ledger import files and the re-enrolment settle time.
//!
//! It is test code: a set-up step that fails (a broker that does not start, a file that cannot
//! be written) ends the test or demo that asked for it, so panicking is the right answer here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test harness: a failed set-up step fails the test"
)]

pub mod checker;
pub mod netfault;

mod broker;
mod cli;
mod config;
mod fleet;
mod ledger;
mod member;
mod paths;
mod pki;
mod ports;
mod process;
mod scrape;

pub use broker::{nats_config, Credentials, Nats};
pub use cli::Operator;
pub use config::{
    ClusterMemberSpec, ClusterOptions, ProvisionerOptions, WrittenConfig, BUILTIN_HELPER_YAML,
};
pub use fleet::{fleet_events, FleetOptions, FleetProcess};
pub use ledger::{wait_out_settle_time, write_import};
pub use member::{in_cgroup, start_members, ProvisionerProcess};
pub use paths::{bin, bin_dir, python, repo_root};
pub use pki::{admin_pki, broker_pki, cluster_pki, init_ca, BrokerTls};
pub use ports::{free_port, free_port_block};
pub use process::Proc;
pub use scrape::{http_get, metric_sum, metric_value};
