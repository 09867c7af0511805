//! A member's settings: the group's timing and snapshots ([`RaftSettings`]) and where and as
//! whom the member runs ([`MemberConfig`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::network::Tls;
use crate::types::{Member, NodeId};

/// How long one snapshot chunk may take to be sent and stored before the send starts over.
pub(super) const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// Timing and snapshot settings of the group.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Largest snapshot chunk sent to a follower in one message.
    pub snapshot_chunk_bytes: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little.
    pub keep_logs: u64,
    /// Pause a busy member makes after each log entry (see `Proposer::start`).
    pub commit_linger_ms: u64,
}

/// A busy member waits 20 ms after each entry by default: on a shared or busy machine an entry
/// costs every member more than the servers in it (an uncapped 5-member cluster on two
/// cores went from ~900 entries and 8.3 s of CPU for 7,500 servers to ~230 and 5.9 s, and
/// from 0.78x to about one member's rate); a command waits at most that much longer (p99 at
/// half capacity 94 ms against 88). 100 ms cost throughput where flows wait on commits
/// (measured in `benches/BENCHMARKS.md`).
pub const DEFAULT_COMMIT_LINGER_MS: u64 = 20;

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_every: 10_000,
            // a million-record snapshot is ~850 MB: 8 MiB chunks keep it to ~100 round trips
            snapshot_chunk_bytes: 8 * 1024 * 1024,
            keep_logs: 1000,
            commit_linger_ms: DEFAULT_COMMIT_LINGER_MS,
        }
    }
}

pub struct MemberConfig {
    pub id: NodeId,
    pub me: Member,
    /// Where the Raft gRPC server binds (may differ from the advertised `me.raft_addr`);
    /// `None` for a member that is a group of one and never talks to peers (a provisioner
    /// without a `cluster` section keeps its ledger in a group of one).
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub settings: RaftSettings,
    /// Mutual TLS between members; `None` is plaintext, for development only.
    pub tls: Option<Tls>,
    /// Address connections to peers leave from; the system picks when `None`.
    pub source_ip: Option<std::net::IpAddr>,
    /// The members the configuration lists, the only ones that may join by themselves (see
    /// [`authz`](crate::authz)); empty when there is no such list.
    pub configured: BTreeMap<NodeId, Member>,
    /// Most milliseconds another member's clock may be off this one's for the commands it
    /// forwards to be taken while this member leads (0: not checked).
    pub max_clock_skew_ms: u64,
}

impl MemberConfig {
    /// A group of one named `name`, stored in `data_dir`: no port, no peers, elections at
    /// once (nobody to hear from). What a provisioner without a cluster runs.
    pub fn alone(name: &str, data_dir: PathBuf) -> MemberConfig {
        MemberConfig {
            id: 1,
            me: Member {
                name: name.to_string(),
                raft_addr: String::new(),
                admin_addr: String::new(),
            },
            listen: None,
            data_dir,
            settings: RaftSettings {
                heartbeat_ms: 50,
                election_min_ms: 150,
                election_max_ms: 300,
                // an entry costs a group of one a synced append only: no reason to wait
                commit_linger_ms: 0,
                ..Default::default()
            },
            tls: None,
            source_ip: None,
            configured: BTreeMap::new(),
            max_clock_skew_ms: 0,
        }
    }
}
