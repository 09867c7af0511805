//! Which ledger a provisioner keeps, and starting it: the one it is given (tests), a cluster
//! member's Raft group (on a runtime of its own, see [`crate::raft_runtime`]), a group of one
//! in `data_dir` without a cluster, or memory only. A disk already too full refuses to start
//! here, before the store is opened.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use raft::member::{MemberConfig, MemberError, RaftMember, RaftSettings};
use raft::replicated::RaftLedger;
use raft::types::Member;
use raft::{Ledger, LocalLedger};

use crate::config::{Cluster, Config};
use crate::raft_runtime::RaftRuntime;

use super::error::ClusterError;
use super::ServiceError;

/// The ledger, and the Raft member behind it when there is one.
pub(super) struct Storage {
    pub ledger: Arc<dyn Ledger>,
    /// This member of the cluster's Raft group.
    pub member: Option<Arc<RaftMember>>,
    /// Without a cluster, the group of one that keeps the ledger on disk.
    pub alone: Option<Arc<RaftMember>>,
    /// Where a cluster member's Raft tasks run.
    pub runtime: Option<RaftRuntime>,
}

/// `given` when there is one, else the Raft group's when clustered, else a group of one in
/// `data_dir`, else memory.
pub(super) async fn open(
    config: &Arc<Config>,
    given: Option<Arc<dyn Ledger>>,
) -> Result<Storage, ServiceError> {
    if let (None, Some(dir)) = (&given, &config.data_dir) {
        crate::diskguard::check(dir, config.data_dir_min_free).map_err(|e| {
            ServiceError::Ledger {
                dir: dir.display().to_string(),
                source: e.into(),
            }
        })?;
    }
    let memberless = |ledger: Arc<dyn Ledger>| Storage {
        ledger,
        member: None,
        alone: None,
        runtime: None,
    };
    Ok(match (given, &config.cluster, &config.data_dir) {
        (Some(l), _, _) => memberless(l),
        (None, Some(cluster), _) => {
            // Raft's tasks on a thread of their own (see `crate::raft_runtime`)
            let rt = RaftRuntime::start().map_err(ServiceError::RaftThread)?;
            let (cfg, cl) = (config.clone(), cluster.clone());
            let member = rt
                .spawn(async move { join_cluster(&cfg, &cl).await })
                .await
                .map_err(ClusterError::Runtime)??;
            Storage {
                ledger: RaftLedger::new(member.clone()),
                member: Some(member),
                alone: None,
                runtime: Some(rt),
            }
        }
        (None, None, Some(dir)) => {
            let m = start_alone(config, dir).await?;
            Storage {
                ledger: RaftLedger::new(m.clone()),
                member: None,
                alone: Some(m),
                runtime: None,
            }
        }
        // a warning of the configuration says what this costs
        (None, None, None) => memberless(Arc::new(LocalLedger::new())),
    })
}

/// The ledger of a provisioner without a cluster: a Raft group of one in `data_dir/raft`,
/// stored as a member's is, with no port and no peers.
async fn start_alone(config: &Config, dir: &Path) -> Result<Arc<RaftMember>, ServiceError> {
    let fail = |e: MemberError| ServiceError::Ledger {
        dir: dir.display().to_string(),
        source: e.into(),
    };
    let member = RaftMember::start(MemberConfig::alone(&config.identity, dir.to_path_buf()))
        .await
        .map_err(fail)?;
    member.start_alone().await.map_err(fail)?;
    Ok(Arc::new(member))
}

/// Starts this member of the Raft group; the member with the lowest id makes a new group
/// from the configured members if none exists yet.
async fn join_cluster(config: &Config, c: &Cluster) -> Result<Arc<RaftMember>, ClusterError> {
    let data_dir = config.data_dir.clone().ok_or(ClusterError::NoDataDir)?;
    let members: BTreeMap<u64, Member> = c
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                Member {
                    name: m.name.clone(),
                    raft_addr: m.raft_addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                },
            )
        })
        .collect();
    let me = members
        .get(&c.id)
        .cloned()
        .ok_or(ClusterError::NotAMember(c.id))?;
    let tls = match &c.tls {
        Some(t) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|source| ClusterError::Tls {
                    path: p.to_path_buf(),
                    source,
                })
            };
            Some(raft::network::Tls {
                ca_pem: read(&t.ca)?,
                cert_pem: read(&t.cert)?,
                key_pem: read(&t.key)?,
            })
        }
        None => {
            tracing::warn!("cluster traffic is not encrypted (insecure_plaintext)");
            None
        }
    };
    let heartbeat = c.heartbeat.as_millis() as u64;
    let election = c.election_timeout.as_millis() as u64;
    let member = RaftMember::start(MemberConfig {
        id: c.id,
        me,
        listen: Some(c.raft_listen),
        data_dir,
        settings: RaftSettings {
            heartbeat_ms: heartbeat,
            election_min_ms: election,
            election_max_ms: election * 2,
            snapshot_every: c.snapshot_every,
            keep_logs: c.snapshot_keep_logs,
            commit_linger_ms: c.commit_linger.as_millis() as u64,
            ..Default::default()
        },
        tls,
        source_ip: c.source_ip,
        configured: members.clone(),
        max_clock_skew_ms: c.max_clock_skew.as_millis() as u64,
    })
    .await?;
    let member = Arc::new(member);
    if members.keys().next() == Some(&c.id) {
        member.bootstrap(members).await?;
    } else if !c.auto_join {
        tracing::info!("waiting to be added by an operator (auto_join is off)");
    } else {
        // a member that belongs to no group yet asks the others to add it; this is how a new
        // member joins a running group, and a no-op for members of the first configuration
        let peers = members
            .into_iter()
            .filter(|(id, _)| *id != c.id)
            .map(|(_, m)| m)
            .collect();
        member.join_in_background(peers);
    }
    Ok(member)
}
