//! The openraft type configuration: what a log entry carries (a batch of ledger commands, so
//! one entry can commit many under load), what applying it returns (one result per command),
//! and how members are named and reached.

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::ledger::Applied;

pub type NodeId = u64;

/// A cluster member as the Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name, used as its identity in the ledger and on NATS.
    pub name: String,
    /// Where its Raft gRPC service listens (`host:port`).
    pub raft_addr: String,
    /// Where its admin gRPC service listens (`host:port`).
    pub admin_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.raft_addr)
    }
}

/// One log entry's application payload: commands applied in order. The commands are shared:
/// an entry is handed to each follower's replication and to apply without copying them
/// ([`crate::recent_log`]); encoded, it is the list itself, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub commands: std::sync::Arc<Vec<Command>>,
}

impl Batch {
    pub fn new(commands: Vec<Command>) -> Batch {
        Batch {
            commands: std::sync::Arc::new(commands),
        }
    }
}

/// The result of applying a [`Batch`]: one [`Applied`] per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub results: Vec<Applied>,
}

openraft::declare_raft_types!(
    /// Types of the provisioner's Raft group.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_file::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime
);
