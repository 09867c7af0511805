//! The `cluster` section: running as a member of a Raft group, and its checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, Problems};

/// One member of the Raft group, as the `cluster.members` list names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    pub id: u64,
    pub name: String,
    /// Where its Raft gRPC service listens (`host:port`).
    pub raft_addr: String,
    #[serde(default)]
    pub admin_addr: String,
}

/// Running as a member of a Raft group instead of alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This member's id in `members`; default: the member named like this host's `identity`,
    /// so one file serves every member.
    #[serde(default)]
    pub id: Option<u64>,
    /// The group's members. A new group is made from this list once, by the member with the
    /// lowest id; afterwards membership changes go through the admin API.
    pub members: Vec<ClusterMember>,
    /// Address the Raft gRPC server binds; defaults to this member's `raft_addr`.
    #[serde(default)]
    pub raft_listen: Option<String>,
    /// The name all members use as sender and caller on NATS, so a server's provisioning lock
    /// is held by the cluster, not one member, and another member can take over at once.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Mutual TLS between members: the cluster CA and this member's certificate and key
    /// (`provisioner ca issue-member`).
    #[serde(default)]
    pub tls: Option<ClusterTls>,
    /// Member-to-member traffic without TLS; for development only.
    #[serde(default)]
    pub insecure_plaintext: bool,
    #[serde(default = "default_heartbeat")]
    pub heartbeat: String,
    #[serde(default = "default_election_timeout")]
    pub election_timeout: String,
    /// How long a claimed server stays with its member without news before others may take it.
    #[serde(default = "default_claim_lease")]
    pub claim_lease: String,
    /// Most a member's clock may be off the leader's for its commands to be taken; default
    /// a tenth of `claim_lease`, at most 2 s.
    #[serde(default)]
    pub max_clock_skew: Option<String>,
    /// A new member asks the others to add it (as learner, then voter). Off: it waits for an
    /// operator's `admin add-member` and `admin promote`.
    #[serde(default = "default_true")]
    pub auto_join: bool,
    /// Address connections to other members leave from (a multi-homed host, or firewall
    /// rules that know members by address); the system picks when unset.
    #[serde(default)]
    pub source_ip: Option<String>,
    /// A snapshot of the state machine is taken after this many log entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, for members that lag a little.
    #[serde(default = "default_snapshot_keep_logs")]
    pub snapshot_keep_logs: u64,
    /// The leader's share of waiting servers, as a fraction of a follower's (0 to 1); default
    /// three over the number of followers and at most three quarters, since it coordinates theirs.
    #[serde(default)]
    pub leader_share: Option<f64>,
    /// Pause a busy member makes after each Raft log entry, so the commands of many servers
    /// share the next: less CPU per server, more latency; `0s` writes at once (default 20ms).
    #[serde(default = "default_commit_linger")]
    pub commit_linger: String,
}

fn default_commit_linger() -> String {
    format!("{}ms", raft::member::DEFAULT_COMMIT_LINGER_MS)
}

fn default_snapshot_every() -> u64 {
    10_000
}
fn default_snapshot_keep_logs() -> u64 {
    1_000
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_cluster_name() -> String {
    "provisioner".into()
}
fn default_heartbeat() -> String {
    "250ms".into()
}
fn default_election_timeout() -> String {
    "1s".into()
}
fn default_claim_lease() -> String {
    "30s".into()
}

/// The checked cluster settings.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: u64,
    pub name: String,
    pub members: Vec<ClusterMember>,
    pub raft_listen: std::net::SocketAddr,
    /// `None` only with `insecure_plaintext`.
    pub tls: Option<ClusterTls>,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub claim_lease: Duration,
    /// Zero: not checked.
    pub max_clock_skew: Duration,
    pub auto_join: bool,
    pub source_ip: Option<std::net::IpAddr>,
    pub snapshot_every: u64,
    pub snapshot_keep_logs: u64,
    /// `None`: three over the number of followers, at most three quarters.
    pub leader_share: Option<f64>,
    pub commit_linger: Duration,
}

/// The checked section, or `None` when a problem leaves nothing to run with; every problem
/// goes to `p`.
pub(super) fn check_cluster(
    c: ClusterSection,
    has_data_dir: bool,
    identity: &str,
    p: &mut Problems,
) -> Option<Cluster> {
    if !has_data_dir {
        p.add(invalid(
            "data_dir",
            "is required with a cluster section (the Raft log lives there)",
        ));
    }
    check_members(&c.members, p);
    let me = find_me(&c, identity, p);
    let raft_listen = c
        .raft_listen
        .clone()
        .or_else(|| me.map(|m| m.raft_addr.clone()))
        .and_then(|listen| {
            p.ok(listen
                .parse()
                .map_err(|e| invalid("cluster.raft_listen", format!("{listen:?}: {e}"))))
        });
    if !proto::subject::is_valid_token(&c.name) {
        p.add(invalid(
            "cluster.name",
            format!("{:?} is not a valid name", c.name),
        ));
    }
    let source_ip = c.source_ip.as_deref().and_then(|ip| {
        p.ok(ip
            .parse()
            .map_err(|e| invalid("cluster.source_ip", format!("{ip:?}: {e}"))))
    });
    check_transport(&c, raft_listen, source_ip, p);
    if c.snapshot_every == 0 {
        p.add(invalid("cluster.snapshot_every", "must be at least 1"));
    }
    if let Some(share) = c.leader_share.filter(|s| !(0.0..=1.0).contains(s)) {
        p.add(invalid(
            "cluster.leader_share",
            format!("{share} is not between 0 and 1 (a fraction of a follower's share)"),
        ));
    }
    let timing = check_timing(&c, p);
    let me = me?;
    Some(Cluster {
        id: me.id,
        name: c.name,
        members: c.members,
        raft_listen: raft_listen?,
        tls: c.tls,
        heartbeat: timing.heartbeat,
        election_timeout: timing.election_timeout,
        claim_lease: timing.claim_lease,
        max_clock_skew: timing.max_clock_skew,
        auto_join: c.auto_join,
        source_ip,
        snapshot_every: c.snapshot_every,
        snapshot_keep_logs: c.snapshot_keep_logs,
        leader_share: c.leader_share,
        commit_linger: timing.commit_linger,
    })
}

/// The member list: not empty, ids and names each once, names valid identities.
fn check_members(members: &[ClusterMember], p: &mut Problems) {
    if members.is_empty() {
        p.add(invalid("cluster.members", "lists no members"));
    }
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for m in members {
        if !ids.insert(m.id) {
            p.add(invalid(
                "cluster.members",
                format!("id {} appears twice", m.id),
            ));
        }
        if !names.insert(m.name.clone()) {
            p.add(invalid(
                "cluster.members",
                format!("name {} appears twice", m.name),
            ));
        }
        if !proto::subject::is_valid_identity(&m.name) {
            p.add(invalid(
                "cluster.members",
                format!("{:?} is not a valid name", m.name),
            ));
        }
    }
}

/// This member in the list: by `cluster.id`, or else by this host's identity.
fn find_me<'a>(
    c: &'a ClusterSection,
    identity: &str,
    p: &mut Problems,
) -> Option<&'a ClusterMember> {
    let me = match c.id {
        Some(id) => c.members.iter().find(|m| m.id == id),
        None => c.members.iter().find(|m| m.name == identity),
    };
    match (me, c.id) {
        (Some(_), _) => {}
        (None, _) if c.members.is_empty() => {}
        (None, Some(id)) => p.add(invalid(
            "cluster.id",
            format!("{id} is not in cluster.members"),
        )),
        (None, None) => p.add(invalid(
            "cluster.id",
            format!(
                "is not set and no member is named {identity:?} (this host's identity); set cluster.id or identity"
            ),
        )),
    }
    me
}

/// TLS between members, or plaintext only with every address on this host: without TLS
/// nobody is authenticated.
fn check_transport(
    c: &ClusterSection,
    raft_listen: Option<std::net::SocketAddr>,
    source_ip: Option<std::net::IpAddr>,
    p: &mut Problems,
) {
    match (&c.tls, c.insecure_plaintext) {
        (None, false) => p.add(invalid(
            "cluster.tls",
            "is required (ca, cert, key); set insecure_plaintext: true only for development",
        )),
        (Some(_), true) => p.add(invalid(
            "cluster.insecure_plaintext",
            "cannot be set together with cluster.tls",
        )),
        _ => {}
    }
    if !c.insecure_plaintext {
        return;
    }
    let loopback = |addr: &str| {
        addr.parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or_else(|_| addr.rsplit_once(':').is_some_and(|(h, _)| h == "localhost"))
    };
    let remote: Vec<String> = c
        .members
        .iter()
        .filter(|m| !loopback(&m.raft_addr))
        .map(|m| format!("{} ({})", m.name, m.raft_addr))
        .chain(
            raft_listen
                .filter(|a| !a.ip().is_loopback())
                .map(|a| format!("raft_listen ({a})")),
        )
        .chain(
            source_ip
                .filter(|ip| !ip.is_loopback())
                .map(|ip| format!("source_ip ({ip})")),
        )
        .collect();
    if !remote.is_empty() {
        p.add(invalid(
            "cluster.insecure_plaintext",
            format!(
                "is for a cluster on one host only (loopback addresses); use cluster.tls for {}",
                remote.join(", ")
            ),
        ));
    }
}

/// The section's durations, checked against each other.
struct Timing {
    heartbeat: Duration,
    election_timeout: Duration,
    claim_lease: Duration,
    max_clock_skew: Duration,
    commit_linger: Duration,
}

fn check_timing(c: &ClusterSection, p: &mut Problems) -> Timing {
    let heartbeat = duration(p, "cluster.heartbeat", &c.heartbeat);
    let election_timeout = duration(p, "cluster.election_timeout", &c.election_timeout);
    if election_timeout < heartbeat * 3 {
        p.add(invalid(
            "cluster.election_timeout",
            "must be at least three heartbeats",
        ));
    }
    let claim_lease = duration(p, "cluster.claim_lease", &c.claim_lease);
    // a member stops sending `configure` a fifth of its lease before the claim lapses;
    // two members each within the skew of the leader are within twice it of each other,
    // which must stay below that margin, or both could configure one server
    let max_clock_skew = match &c.max_clock_skew {
        None => (claim_lease / 10).min(Duration::from_secs(2)),
        Some(s) => {
            let d = duration(p, "cluster.max_clock_skew", s);
            if d > claim_lease / 10 {
                p.add(invalid(
                    "cluster.max_clock_skew",
                    format!("{d:?} is more than a tenth of claim_lease ({claim_lease:?})"),
                ));
            }
            d
        }
    };
    let commit_linger = duration(p, "cluster.commit_linger", &c.commit_linger);
    // longer would hold every command past a heartbeat's worth of waiting for nothing
    if commit_linger > Duration::from_secs(1) {
        p.add(invalid(
            "cluster.commit_linger",
            format!("{commit_linger:?} is more than 1s"),
        ));
    }
    Timing {
        heartbeat,
        election_timeout,
        claim_lease,
        max_clock_skew,
        commit_linger,
    }
}
#[cfg(test)]
mod tests {
    use super::super::tests::{parse, MINIMAL};
    use std::time::Duration;

    const CLUSTER: &str = r#"
data_dir: /var/lib/p
cluster:
  id: 2
  insecure_plaintext: true
  members:
    - {id: 1, name: prov1, raft_addr: "127.0.0.1:7001"}
    - {id: 2, name: prov2, raft_addr: "127.0.0.1:7002"}
    - {id: 3, name: prov3, raft_addr: "127.0.0.1:7003"}
"#;

    #[test]
    fn one_file_serves_every_member_found_by_identity() {
        let shared = CLUSTER.replace("  id: 2\n", "").replace(
            "127.0.0.1:7003\"}",
            "127.0.0.1:7003\", admin_addr: \"127.0.0.1:7103\"}",
        );
        let admin = "admin:\n  tls: {client_ca: /a/ca.pem, cert: /a/c.pem, key: /a/c.key}\n";
        let c = parse(&format!("{MINIMAL}{shared}identity: prov3\n{admin}")).unwrap();
        assert_eq!(c.cluster.as_ref().map(|c| c.id), Some(3));
        assert_eq!(c.admin.map(|a| a.listen.port()), Some(7103));

        // prov2 has no admin_addr, and a host that is no member is told what to set
        let err = parse(&format!("{MINIMAL}{shared}identity: prov2\n{admin}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("admin.listen: is required"), "{err}");
        let err = parse(&format!("{MINIMAL}{shared}identity: prov9\n"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no member is named \"prov9\""), "{err}");
    }

    #[test]
    fn cluster_member_config() {
        let c = parse(&format!("{MINIMAL}{CLUSTER}")).unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(c.identity, "prov2");
        assert_eq!(cl.raft_listen.port(), 7002);
        assert_eq!(cl.name, "provisioner");
        assert_eq!(cl.claim_lease, Duration::from_secs(30));
        assert_eq!(cl.max_clock_skew, Duration::from_secs(2));
        assert_eq!((cl.source_ip, cl.snapshot_every), (None, 10_000));
        assert_eq!(cl.commit_linger, Duration::from_millis(20));
        // the allowed skew follows the lease: a tenth of it by default, never more
        let short = parse(&format!(
            "{MINIMAL}{CLUSTER}  claim_lease: 5s
"
        ))
        .unwrap();
        let skew = short.cluster.as_ref().map(|c| c.max_clock_skew);
        assert_eq!(skew, Some(Duration::from_millis(500)));
        let err = parse(&format!(
            "{MINIMAL}{CLUSTER}  claim_lease: 10s
  max_clock_skew: 3s
"
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("cluster.max_clock_skew"), "{err}");
        let tuned = parse(&format!(
            "{MINIMAL}{CLUSTER}  source_ip: 127.0.0.12\n  snapshot_every: 50\n  leader_share: 0.3\n  commit_linger: 80ms\n"
        ))
        .unwrap();
        let cl = tuned.cluster.as_ref().unwrap();
        assert_eq!(cl.commit_linger, Duration::from_millis(80));
        assert_eq!(cl.source_ip, "127.0.0.12".parse().ok());
        assert_eq!(cl.snapshot_every, 50);
        assert_eq!(cl.leader_share, Some(0.3));
        assert_eq!(c.cluster.as_ref().and_then(|c| c.leader_share), None);

        let cases = [
            (CLUSTER.replace("data_dir: /var/lib/p\n", ""), "data_dir"),
            (
                CLUSTER.replace("  insecure_plaintext: true\n", ""),
                "insecure_plaintext",
            ),
            (CLUSTER.replace("id: 2\n", "id: 9\n"), "cluster.id"),
            (CLUSTER.replace("id: 3,", "id: 1,"), "appears twice"),
            (
                CLUSTER.replace("name: prov3", "name: prov1"),
                "appears twice",
            ),
            (CLUSTER.replace("127.0.0.1:7002", "nowhere"), "raft_listen"),
            (
                CLUSTER.replace("127.0.0.1:7003", "10.0.0.3:7003"),
                "cluster.insecure_plaintext: is for a cluster on one host only",
            ),
            (
                format!("{CLUSTER}  raft_listen: 0.0.0.0:7002\n"),
                "raft_listen (0.0.0.0:7002)",
            ),
            (format!("{CLUSTER}identity: other\n"), "identity"),
            (format!("{CLUSTER}  bogus: 1\n"), "bogus"),
            (
                format!("{CLUSTER}  source_ip: 127.0.0\n"),
                "cluster.source_ip",
            ),
            (
                format!("{CLUSTER}  snapshot_every: 0\n"),
                "cluster.snapshot_every",
            ),
            (
                format!("{CLUSTER}  leader_share: 1.5\n"),
                "cluster.leader_share",
            ),
            (
                format!("{CLUSTER}  commit_linger: 2s\n"),
                "cluster.commit_linger",
            ),
            (
                format!("{CLUSTER}  commit_linger: soon\n"),
                "cluster.commit_linger",
            ),
        ];
        for (text, key) in cases {
            let err = match parse(&format!("{MINIMAL}{text}")) {
                Ok(_) => panic!("accepted bad cluster config for {key}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
