//! What a provisioner process under test is told: the options of one process and of its
//! cluster, and the YAML configuration file written from them.

use std::path::{Path, PathBuf};

use crate::broker::Nats;
use crate::paths::{python, repo_root};
use crate::ports::free_port;

/// A member of a cluster under test.
#[derive(Debug, Clone)]
pub struct ClusterMemberSpec {
    pub id: u64,
    pub name: String,
    pub raft_port: u16,
    /// Where its admin API listens (served when the cluster has an admin CA).
    pub admin_port: u16,
}

impl ClusterMemberSpec {
    /// A member `prov<id>` on free ports.
    pub fn new(id: u64) -> Self {
        ClusterMemberSpec {
            id,
            name: format!("prov{id}"),
            raft_port: free_port(),
            admin_port: free_port(),
        }
    }
}

/// Cluster settings of one provisioner process.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub id: u64,
    pub members: Vec<ClusterMemberSpec>,
    pub claim_lease: String,
    /// Directory made by [`cluster_pki`](crate::pki::cluster_pki): members talk mutual TLS;
    /// `None` is plaintext.
    pub tls_dir: Option<PathBuf>,
    /// Admin CA certificate (from [`admin_pki`](crate::pki::admin_pki)): members serve the
    /// admin API with their cluster certificate and accept operators from this CA. Needs
    /// `tls_dir`.
    pub admin_ca: Option<PathBuf>,
    /// `cluster.auto_join`; false makes a new member wait for `admin add-member`.
    pub auto_join: bool,
    /// More keys of the `admin` section (indented two spaces).
    pub admin_extra: String,
    /// More keys of the `cluster` section (indented two spaces).
    pub cluster_extra: String,
}

impl ClusterOptions {
    /// Specs for `n` members named `prov1..provN` on free ports.
    pub fn members(n: u64) -> Vec<ClusterMemberSpec> {
        (1..=n).map(ClusterMemberSpec::new).collect()
    }

    fn yaml(&self, data_dir: &Path) -> String {
        let me = self.members.iter().find(|m| m.id == self.id);
        let tls = match (&self.tls_dir, me) {
            (Some(d), Some(me)) => format!(
                "  tls:\n    ca: {}\n    cert: {}\n    key: {}\n",
                d.join("ca.pem").display(),
                d.join(format!("{}.pem", me.name)).display(),
                d.join(format!("{}.key", me.name)).display()
            ),
            _ => "  insecure_plaintext: true\n".into(),
        };
        let mut out = format!(
            "data_dir: {}
cluster:
  id: {}
{tls}  claim_lease: {}
  auto_join: {}
{}  members:
",
            data_dir.display(),
            self.id,
            self.claim_lease,
            self.auto_join,
            self.cluster_extra
        );
        for m in &self.members {
            out.push_str(&format!(
                "    - {{id: {}, name: {}, raft_addr: \"127.0.0.1:{}\", admin_addr: \"127.0.0.1:{}\"}}\n",
                m.id, m.name, m.raft_port, m.admin_port
            ));
        }
        if let (Some(ca), Some(me)) = (&self.admin_ca, me) {
            out.push_str(&format!(
                "admin:\n  listen: \"127.0.0.1:{}\"\n  tls:\n    client_ca: {}\n",
                me.admin_port,
                ca.display()
            ));
            out.push_str(&self.admin_extra);
        }
        out
    }
}

/// Settings of one provisioner process.
#[derive(Clone)]
pub struct ProvisionerOptions {
    pub identity: String,
    pub helper: String,
    pub workers: usize,
    pub token: String,
    pub rpc_timeout: String,
    pub max_attempts: u32,
    pub retry_backoff_min: String,
    pub loglevel: String,
    pub cluster: Option<ClusterOptions>,
    /// More configuration, appended as is.
    pub extra_yaml: String,
    /// Organization Issuer seed file: enrolls with the ed25519 feature (server JWTs) instead
    /// of pki.
    pub ed25519_issuer: Option<PathBuf>,
    /// Turns on `features.upgrades`.
    pub upgrades: bool,
    /// The broker's CA: the provisioner connects over TLS (`nats.tls.ca`).
    pub nats_tls_ca: Option<PathBuf>,
    /// Without a cluster: no `data_dir`, the ledger in memory (by default a provisioner alone
    /// keeps it in `<identity>-data` as a member does).
    pub memory_ledger: bool,
    /// The data directory is a tmpfs of this size (`8m`), mounted in a mount namespace of
    /// the process's own (`unshare -m`; needs root), to fill it up from the test through
    /// `/proc/<pid>/root`.
    pub data_tmpfs: Option<String>,
    /// More keys of the `cluster` section (indented two spaces) of members started by
    /// [`start_members`](crate::member::start_members).
    pub cluster_extra: String,
    /// How long the certificates the provisioner issues are valid (`ca.validity`).
    pub ca_validity: String,
    /// Control groups to start in, as their `cgroup.procs` files: the process joins its group
    /// before the provisioner runs, so what the provisioner sizes by the CPUs it may use (its
    /// runtime's threads) sees the group's cap. A process started alone takes the first;
    /// [`start_members`](crate::member::start_members) gives member *i* the *i*-th (none past
    /// the end).
    pub cgroups: Vec<PathBuf>,
}

impl Default for ProvisionerOptions {
    fn default() -> Self {
        ProvisionerOptions {
            identity: "prov1.example.net".into(),
            helper: format!(
                "{} {}",
                python(),
                repo_root().join("deploy/examples/helper.py").display()
            ),
            workers: 32,
            token: String::new(),
            rpc_timeout: "10s".into(),
            max_attempts: 10,
            retry_backoff_min: "5s".into(),
            loglevel: "info".into(),
            cluster: None,
            extra_yaml: String::new(),
            ed25519_issuer: None,
            upgrades: false,
            nats_tls_ca: None,
            memory_ledger: false,
            data_tmpfs: None,
            cluster_extra: String::new(),
            ca_validity: "30d".into(),
            cgroups: Vec::new(),
        }
    }
}

/// A provisioner's configuration written to a file in its test directory.
pub struct WrittenConfig {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub monitor_port: u16,
}

impl WrittenConfig {
    /// Writes the configuration of a provisioner with `opts` (on a free monitor port) to
    /// `<identity>.yaml` in `dir`, without starting it.
    pub fn write(
        dir: &Path,
        nats: &Nats,
        ca: &(PathBuf, PathBuf),
        jwt_signer_pub: &Path,
        opts: &ProvisionerOptions,
    ) -> WrittenConfig {
        let monitor_port = free_port();
        let config = dir.join(format!("{}.yaml", opts.identity));
        let data_dir = dir.join(format!("{}-data", opts.identity));
        let cluster = match (&opts.cluster, opts.memory_ledger) {
            (Some(c), _) => c.yaml(&data_dir),
            (None, false) => format!("data_dir: {}\n", data_dir.display()),
            (None, true) => String::new(),
        };
        let text = cluster
            + &format!(
                r#"identity: {identity}
workers: {workers}
interval: 1m
loglevel: {loglevel}
helper: "{helper}"
token: "{token}"
site: test
monitor_port: {monitor_port}
monitor_listen: 127.0.0.1
broker_provisioning_password: "{password}"
jwt_verify_cert: {jwt}
rpc_timeout: {rpc_timeout}
retry_backoff_min: {retry_min}
retry_backoff_max: 30s
max_attempts: {max_attempts}
{features}
nats:
  servers: ["{url}"]
{nats_tls}ca:
  cert: {ca_cert}
  key: {ca_key}
  validity: {ca_validity}
"#,
                identity = opts.identity,
                workers = opts.workers,
                loglevel = opts.loglevel,
                helper = opts.helper,
                token = opts.token,
                password = nats.creds.provisioner,
                jwt = jwt_signer_pub.display(),
                rpc_timeout = opts.rpc_timeout,
                retry_min = opts.retry_backoff_min,
                max_attempts = opts.max_attempts,
                url = nats.url,
                nats_tls = opts
                    .nats_tls_ca
                    .as_ref()
                    .map(|ca| format!("  tls:\n    ca: {}\n", ca.display()))
                    .unwrap_or_default(),
                ca_cert = ca.0.display(),
                ca_key = ca.1.display(),
                ca_validity = opts.ca_validity,
                features = match &opts.ed25519_issuer {
                    Some(seed) => format!(
                        "features:\n  ed25519: true\n  jwt: true\njwt_signing_key: {}",
                        seed.display()
                    ),
                    None => "features:\n  pki: true\n  jwt: true".into(),
                } + if opts.upgrades {
                    "\n  upgrades: true"
                } else {
                    ""
                },
            )
            + &opts.extra_yaml;
        std::fs::write(&config, text).expect("write provisioner config");
        WrittenConfig {
            config,
            data_dir,
            monitor_port,
        }
    }
}

/// A `builtin_helper` section configuring servers as `deploy/examples/helper.py` does, for
/// runs without a helper process.
pub const BUILTIN_HELPER_YAML: &str = r#"builtin_helper:
  configuration:
    identity: "{identity}"
    loglevel: info
    plugin.choria.server.provision: "false"
    plugin.choria.middleware_hosts: "nats://broker.example.net:4222"
    plugin.security.provider: file
    plugin.security.file.certificate: "{ssldir}/certificate.pem"
    plugin.security.file.key: "{ssldir}/private.pem"
    plugin.security.file.ca: "{ssldir}/ca.pem"
"#;
