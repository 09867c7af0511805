//! The provisioner's replicated state.
//!
//! [`command`] is every change a member can ask for (claim a server, record an issued
//! credential, mark a server enrolled, release it); [`state`] holds the ledger and the rules
//! that decide whether a command applies, in one `apply` function that is deterministic so
//! every replica reaches the same ledger; [`ledger`] is the small interface the provisioning
//! pipeline talks to. [`local`] implements it in one process; [`replicated`] implements the
//! same interface by committing the same commands through the Raft log of a [`member`], whose
//! [`store`] keeps the state machine in RocksDB and the log in a
//! [`segment_log`] and whose [`network`] is gRPC, with
//! [`authz`] deciding which member may make which call on it and [`codec`] how log entries and
//! peer messages are encoded ([`append_cache`]: once for every follower). A replica's records stay in RocksDB ([`disk`]), the state
//! machine holding in memory only what the batch being applied touches ([`records`]);
//! [`snapshot`]s of it are written, sent and installed from a file ([`snapshot_file`]). The
//! leader's discovery [`offer`]s each member the waiting servers it found for it.

pub mod admin;
pub mod append_cache;
pub mod authz;
pub mod borrow;
pub mod codec;
pub mod command;
pub mod digest;
pub mod disk;
pub mod ledger;
pub mod local;
pub mod member;
pub mod network;
pub mod offer;
pub mod ownership;
pub mod recent_log;
pub mod records;
pub mod replicated;
pub mod segment_log;
pub mod snapshot;
pub mod snapshot_file;
pub mod state;
pub mod storage;
pub mod store;
pub mod types;

pub use command::{Command, ReleaseOutcome};
pub use ledger::{Applied, Ledger, LedgerError};
pub use local::LocalLedger;
pub use state::{
    ClusterSettings, Credential, EnrollState, LedgerCounts, LedgerState, Record, Rejection,
    Revocation,
};

/// Milliseconds since the Unix epoch: the time commands carry (0 before the epoch).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
