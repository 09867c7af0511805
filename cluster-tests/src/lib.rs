//! Test and demo harness: runs the real parts as separate processes on loopback.
//!
//! [`Nats`] starts `nats-server` with the provisioning broker layout (a `provisioning` account
//! holding the provisioner and the waiting servers, a separate `choria` account, no anonymous
//! access); [`init_ca`] and [`ProvisionerProcess`] run the `provisioner` binary; [`FleetProcess`]
//! runs `fleet-sim`. Every process is killed when its handle is dropped, and logs to a file in
//! the run's directory. [`checker`] holds a run's ledgers against what the fleet saw;
//! [`netfault`] cuts the network between members.
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

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Passwords of one broker; random per run.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub provisioner: String,
    pub server: String,
    pub choria: String,
}

impl Credentials {
    pub fn random() -> Self {
        let r = || format!("{:016x}{:016x}", rand_u64(), rand_u64());
        Credentials {
            provisioner: r(),
            server: r(),
            choria: r(),
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Directory holding the workspace's built binaries (`provisioner`, `fleet-sim`): the
/// `PROVISIONER_BIN_DIR` environment variable, or the profile directory this program runs from.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PROVISIONER_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; panics with the command to build it when missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free TCP port on loopback, never one this process was handed before: the system may
/// hand out a port again once its probe closed, and two members given one port would collide
/// (seen in a benchmark: a member's metrics port was another's Raft port).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && handed.insert(port) {
            return port;
        }
    }
    0
}

/// A base port for `deploy/local-cluster` with every port it derives free: the broker on
/// `base`, member `id` on `base + id*10 + 1..3`. Below the ephemeral range, so ports the system
/// hands out meanwhile do not collide.
pub fn free_port_block(members: u16) -> u16 {
    let start = (std::process::id() % 100) as u16 * 100;
    (0..100u16)
        .map(|i| 20_000 + (start + i * 100) % 10_000)
        .find(|base| {
            let mut ports = vec![*base];
            for id in 1..=members {
                ports.extend((1..=3).map(|k| base + id * 10 + k));
            }
            let held: Vec<_> = ports
                .iter()
                .filter_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
                .collect();
            held.len() == ports.len()
        })
        .unwrap_or(20_000)
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    match std::fs::File::create(dir.join(name)) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `nats-server` laid out like a Choria provisioning broker.
pub struct Nats {
    pub port: u16,
    pub url: String,
    pub creds: Credentials,
    _proc: Proc,
    dir: PathBuf,
}

impl Nats {
    /// The broker's process id (to read its CPU use).
    pub fn pid(&self) -> u32 {
        self._proc.child.id()
    }

    /// Kills the broker with SIGKILL; every connection drops at once.
    pub fn kill(&mut self) {
        let _ = self._proc.child.kill();
        let _ = self._proc.child.wait();
    }

    /// Starts the (killed) broker again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self._proc.child = spawn_nats(&self.dir);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not start again on port {}",
            self.port
        );
    }
}

fn spawn_nats(dir: &Path) -> Child {
    Command::new("nats-server")
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(log_file(dir, "nats.log"))
        .stderr(log_file(dir, "nats.err"))
        .spawn()
        .expect("nats-server is not installed (apt-get install nats-server)")
}

/// The broker configuration: the provisioner and the waiting servers share the
/// `provisioning` account, each user limited to the subjects its role needs; the `choria`
/// account cannot see provisioning traffic; there is no anonymous access.
pub fn nats_config(port: u16, creds: &Credentials) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
max_connections: 1000000
accounts {{
  provisioning {{
    users: [
      {{
        user: provisioner, password: "{p}",
        permissions: {{
          publish: ["provisioning.>", "choria.lifecycle.event.>"],
          subscribe: ["provisioning.reply.>", "choria.lifecycle.event.>", "_INBOX.>"]
        }}
      }},
      {{
        user: server, password: "{s}",
        permissions: {{
          publish: ["provisioning.reply.>", "choria.lifecycle.event.>"],
          subscribe: ["provisioning.node.>", "provisioning.broadcast.>", "_INBOX.>"]
        }}
      }}
    ]
  }}
  choria {{
    users: [ {{ user: choria, password: "{c}" }} ]
  }}
}}
"#,
        p = creds.provisioner,
        s = creds.server,
        c = creds.choria
    )
}

/// The broker's TLS material: a CA and a certificate for 127.0.0.1 and localhost.
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a broker CA and server certificate with openssl in `dir/broker-tls`.
pub fn broker_pki(dir: &Path) -> BrokerTls {
    let d = dir.join("broker-tls");
    std::fs::create_dir_all(&d).expect("mkdir broker-tls");
    let f = |n: &str| d.join(n).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is not installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &f("ca.key"),
        "-out",
        &f("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=Broker CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &f("broker.key"),
        "-out",
        &f("broker.csr"),
        "-subj",
        "/CN=broker",
    ]);
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &f("broker.csr"),
        "-CA",
        &f("ca.pem"),
        "-CAkey",
        &f("ca.key"),
        "-CAcreateserial",
        "-out",
        &f("broker.pem"),
        "-days",
        "2",
        "-extfile",
        &f("san.ext"),
    ]);
    BrokerTls {
        ca: d.join("ca.pem"),
        cert: d.join("broker.pem"),
        key: d.join("broker.key"),
    }
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        Nats::start_with(dir, None)
    }

    /// A broker that accepts TLS connections only, with `tls`'s certificate.
    pub fn start_tls(dir: &Path, tls: &BrokerTls) -> Nats {
        Nats::start_with(dir, Some(tls))
    }

    fn start_with(dir: &Path, tls: Option<&BrokerTls>) -> Nats {
        let port = free_port();
        let creds = Credentials::random();
        let conf = dir.join("nats.conf");
        let mut text = nats_config(port, &creds);
        if let Some(t) = tls {
            text += &format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
                t.cert.display(),
                t.key.display()
            );
        }
        std::fs::write(&conf, text).expect("write nats.conf");
        let child = spawn_nats(dir);
        let proc = Proc {
            child,
            name: "nats-server".into(),
        };
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "nats-server did not start on port {port}"
        );
        Nats {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            creds,
            _proc: proc,
            dir: dir.to_path_buf(),
        }
    }
}

/// Creates the built-in CA in `dir/ca` with `provisioner ca init`.
pub fn init_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_dir = dir.join("ca");
    let out = Command::new(bin("provisioner"))
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .expect("run provisioner ca init");
    assert!(
        out.status.success(),
        "ca init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (ca_dir.join("ca.pem"), ca_dir.join("ca.key"))
}

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
    /// Directory made by [`cluster_pki`]: members talk mutual TLS; `None` is plaintext.
    pub tls_dir: Option<PathBuf>,
    /// Admin CA certificate (from [`admin_pki`]): members serve the admin API with their
    /// cluster certificate and accept operators from this CA. Needs `tls_dir`.
    pub admin_ca: Option<PathBuf>,
    /// `cluster.auto_join`; false makes a new member wait for `admin add-member`.
    pub auto_join: bool,
    /// More keys of the `admin` section (indented two spaces).
    pub admin_extra: String,
    /// More keys of the `cluster` section (indented two spaces).
    pub cluster_extra: String,
}

/// Runs `provisioner ARGS` (a `ca` command) and requires it to succeed.
fn run(args: &[&str]) {
    let out = Command::new(bin("provisioner"))
        .args(args)
        .output()
        .expect("run provisioner ca");
    assert!(
        out.status.success(),
        "provisioner {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `n` servers enrolled elsewhere, as `provisioner admin ledger import` reads them:
/// `{prefix}-0000000.example.net` and on, each with a serial and fingerprint of its own.
pub fn write_import(path: &Path, prefix: &str, n: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            w,
            r#"{{"identity":"{prefix}-{i:07}.example.net","credential":{{"serial":"{:016x}{i:016x}","fingerprint":"{i:064x}","not_after":2000000000}},"config_digest":"imported","facts":{{"rack":"r{}"}}}}"#,
            0x5eed_u64,
            i % 64
        )?;
    }
    w.flush()
}

/// Waits until the last credential issued to any of `identities` in `records` (`ledger export`
/// lines) is older than `settle_ms` (`raft::state::REENROLL_SETTLE_MS`): until then its member
/// is still configuring and restarting the server, and a reprovision skips it.
pub fn wait_out_settle_time(
    records: &[serde_json::Value],
    identities: &BTreeSet<String>,
    settle_ms: u64,
) {
    let last_issued = records
        .iter()
        .filter(|r| identities.contains(r["identity"].as_str().unwrap_or_default()))
        .filter_map(|r| r["credential"]["issued_at_ms"].as_u64())
        .max()
        .unwrap_or(0);
    let settled = last_issued + settle_ms + 500;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(settled.saturating_sub(now)));
}

/// (identity, event, serial) lines a fleet wrote with `--events`.
pub fn fleet_events(path: &Path) -> Vec<(String, String, Option<String>)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["identity"].as_str().unwrap_or_default().to_string(),
                v["event"].as_str().unwrap_or_default().to_string(),
                v["serial"].as_str().map(String::from),
            )
        })
        .collect()
}

/// A cluster CA (`provisioner ca init`) and a certificate for every member
/// (`provisioner ca issue-member`), in `dir/cluster-pki`; what exists already is kept.
pub fn cluster_pki(dir: &Path, members: &[ClusterMemberSpec]) -> PathBuf {
    let pki = dir.join("cluster-pki");
    let pki_s = pki.display().to_string();
    if !pki.join("ca.pem").exists() {
        run(&["ca", "init", "--dir", &pki_s, "--cn", "Cluster CA"]);
    }
    for m in members {
        if pki.join(format!("{}.pem", m.name)).exists() {
            continue;
        }
        run(&[
            "ca",
            "issue-member",
            "--dir",
            &pki_s,
            "--name",
            &m.name,
            "--out",
            &pki_s,
        ]);
    }
    pki
}

/// An operator of a cluster under test: the admin CA, an operator certificate from it
/// (`provisioner ca issue-admin`) and the cluster CA the members' certificates come from.
pub struct Operator {
    pub admin_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cluster_ca: PathBuf,
}

/// Makes the admin CA in `dir/admin-ca` (kept when it exists) and an operator `name`.
pub fn admin_pki(dir: &Path, cluster_pki: &Path, name: &str) -> Operator {
    let ca_dir = dir.join("admin-ca");
    let ca_s = ca_dir.display().to_string();
    if !ca_dir.join("ca.pem").exists() {
        run(&["ca", "init", "--dir", &ca_s, "--cn", "Admin CA"]);
    }
    let out = dir.join("operators");
    run(&[
        "ca",
        "issue-admin",
        "--dir",
        &ca_s,
        "--name",
        name,
        "--out",
        &out.display().to_string(),
    ]);
    Operator {
        admin_ca: ca_dir.join("ca.pem"),
        cert: out.join(format!("{name}.pem")),
        key: out.join(format!("{name}.key")),
        cluster_ca: cluster_pki.join("ca.pem"),
    }
}

impl Operator {
    /// Runs `provisioner admin ARGS` against `member`'s admin API.
    pub fn cli(&self, member: &ClusterMemberSpec, args: &[&str]) -> std::process::Output {
        Command::new(bin("provisioner"))
            .arg("admin")
            .arg("--endpoint")
            .arg(format!("127.0.0.1:{}", member.admin_port))
            .arg("--server-name")
            .arg(&member.name)
            .arg("--ca")
            .arg(&self.cluster_ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(args)
            .env_remove("PROVISIONER_ADMIN_CONFIG")
            .output()
            .expect("run provisioner admin")
    }

    /// Runs `provisioner admin --json ARGS`, requires success and returns the reply.
    pub fn json(&self, member: &ClusterMemberSpec, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(member, &all);
        assert!(
            out.status.success(),
            "provisioner admin {args:?} exited {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "admin {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
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
    /// [`start_members`].
    pub cluster_extra: String,
    /// How long the certificates the provisioner issues are valid (`ca.validity`).
    pub ca_validity: String,
    /// Control groups to start in, as their `cgroup.procs` files: the process joins its group
    /// before the provisioner runs, so what the provisioner sizes by the CPUs it may use (its
    /// runtime's threads) sees the group's cap. A process started alone takes the first;
    /// [`start_members`] gives member *i* the *i*-th (none past the end).
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

/// The Python interpreter for helpers: Debian's when present. Version-manager shims
/// (pyenv) cost ~150 ms per start, which would dominate a helper run per server.
pub fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3 -I".into()
    } else {
        "python3 -I".into()
    }
}

/// A running `provisioner run`.
pub struct ProvisionerProcess {
    pub monitor_port: u16,
    pub proc: Proc,
    pub config: PathBuf,
    /// Its data directory (for a member, or a provisioner alone with a ledger on disk).
    pub data_dir: PathBuf,
    data_tmpfs: Option<String>,
    /// The `cgroup.procs` file it joins before it runs, at every start.
    cgroup: Option<PathBuf>,
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

impl ProvisionerProcess {
    pub fn start(
        dir: &Path,
        nats: &Nats,
        ca: &(PathBuf, PathBuf),
        jwt_signer_pub: &Path,
        opts: &ProvisionerOptions,
    ) -> ProvisionerProcess {
        let WrittenConfig {
            config,
            data_dir,
            monitor_port,
        } = WrittenConfig::write(dir, nats, ca, jwt_signer_pub, opts);
        if opts.data_tmpfs.is_some() {
            std::fs::create_dir_all(&data_dir).expect("data dir");
        }
        let cgroup = opts.cgroups.first().cloned();
        let child = run_command(
            &config,
            &data_dir,
            opts.data_tmpfs.as_deref(),
            cgroup.as_deref(),
        )
        .stdout(log_file(dir, &format!("{}.out", opts.identity)))
        .stderr(log_file(dir, &format!("{}.log", opts.identity)))
        .spawn()
        .expect("start provisioner");
        let proc = Proc {
            child,
            name: opts.identity.clone(),
        };
        ProvisionerProcess {
            monitor_port,
            proc,
            config,
            data_dir,
            data_tmpfs: opts.data_tmpfs.clone(),
            cgroup,
        }
    }

    /// Its log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    /// Waits until the provisioner listens for events and has run its first discovery (or, in
    /// a cluster, left it to the leader's, which covers it).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !self.proc.is_running() {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "provisioner exited during start-up; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let text = self.metrics();
            let rounds = metric_sum(&text, "choria_provisioner_discover_cycles", "")
                + metric_sum(&text, "choria_provisioner_discover_deferred", "");
            if rounds >= 1.0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("provisioner not ready after {timeout:?}");
    }

    /// The `/status` document, or `Null` when it cannot be read.
    pub fn status(&self) -> serde_json::Value {
        http_get(self.monitor_port, "/status")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Starts the (killed) member again with the same configuration and data directory, as
    /// systemd's restart would; its log continues in the same file.
    pub fn restart(&mut self) -> std::io::Result<()> {
        let log = |ext: &str| -> Stdio {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.config.with_extension(ext))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        self.proc.child = run_command(
            &self.config,
            &self.data_dir,
            self.data_tmpfs.as_deref(),
            self.cgroup.as_deref(),
        )
        .stdout(log("out"))
        .stderr(log("log"))
        .spawn()?;
        Ok(())
    }

    /// The Prometheus text from `/metrics`, or "" when it cannot be read.
    pub fn metrics(&self) -> String {
        http_get(self.monitor_port, "/metrics").unwrap_or_default()
    }

    /// The value of one metric series (exact name with labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }
}

/// `provisioner run --config <config>`, with `data_dir` a fresh tmpfs of `tmpfs` size in a
/// mount namespace of its own when asked (the process keeps its pid: `unshare` and `sh` exec),
/// in the control group whose `cgroup.procs` file is `cgroup` from before it runs.
fn run_command(
    config: &Path,
    data_dir: &Path,
    tmpfs: Option<&str>,
    cgroup: Option<&Path>,
) -> Command {
    let command = match tmpfs {
        None => {
            let mut c = Command::new(bin("provisioner"));
            c.arg("run").arg("--config").arg(config);
            c
        }
        Some(size) => {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount -t tmpfs -o size={size},mode=0700 tmpfs \"$1\" && exec \"$2\" run --config \"$3\""
                ))
                .arg("sh")
                .arg(data_dir)
                .arg(bin("provisioner"))
                .arg(config);
            c
        }
    };
    match cgroup {
        Some(procs) => in_cgroup(&command, procs),
        None => command,
    }
}

/// `command`, run by a shell that first moves itself into the control group whose
/// `cgroup.procs` file is `procs` and then execs it (same pid). Moving the process in after it
/// started races its start-up: a provisioner that has already counted its CPUs keeps the
/// uncapped machine's worker threads, one that has not gets the cap's.
pub fn in_cgroup(command: &Command, procs: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(procs)
        .arg(command.get_program())
        .args(command.get_args());
    c
}

/// Finds `series` (name with labels as printed) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Sum of all series of a metric whose labels contain `label_part`.
pub fn metric_sum(text: &str, name: &str, label_part: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label_part))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The body of `GET path` on a loopback port, or `None`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Settings of one `fleet-sim` run.
pub struct FleetOptions {
    pub servers: usize,
    pub key_type: String,
    pub token: String,
    pub extra: Vec<String>,
    pub timeout_secs: u64,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            servers: 10,
            key_type: "p256".into(),
            token: String::new(),
            extra: vec![],
            timeout_secs: 300,
        }
    }
}

/// A running `fleet-sim`.
pub struct FleetProcess {
    pub proc: Proc,
    pub summary: PathBuf,
    pub signer_pub: PathBuf,
}

impl FleetProcess {
    /// Starts the fleet and returns once every server is connected and waiting.
    /// `inherit_output` shows its progress and result on this terminal (the demo).
    pub fn start(
        dir: &Path,
        nats: &Nats,
        ca_cert: &Path,
        opts: &FleetOptions,
        inherit_output: bool,
    ) -> FleetProcess {
        let summary = dir.join("fleet-summary.json");
        let signer_pub = dir.join("jwt-signer.pem");
        let ready = dir.join("fleet.ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin("fleet-sim"));
        cmd.arg("--servers")
            .arg(opts.servers.to_string())
            .arg("--nats")
            .arg(&nats.url)
            .arg("--user")
            .arg("server")
            .env("FLEET_NATS_PASSWORD", &nats.creds.server)
            .arg("--token")
            .arg(&opts.token)
            .arg("--key-type")
            .arg(&opts.key_type)
            .arg("--write-signer-pub")
            .arg(&signer_pub)
            .arg("--expect-ca")
            .arg(ca_cert)
            .arg("--summary")
            .arg(&summary)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--timeout")
            .arg(opts.timeout_secs.to_string())
            .args(&opts.extra);
        if inherit_output {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(log_file(dir, "fleet.out"))
                .stderr(log_file(dir, "fleet.log"));
        }
        let child = cmd.spawn().expect("start fleet-sim");
        let mut proc = Proc {
            child,
            name: "fleet-sim".into(),
        };
        let start = Instant::now();
        while !ready.exists() {
            if let Some(status) = proc.wait_timeout(Duration::from_millis(100)) {
                panic!(
                    "fleet-sim exited before it was ready ({status}); see {}",
                    dir.join("fleet.log").display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "fleet-sim not ready after 300 s"
            );
        }
        FleetProcess {
            proc,
            summary,
            signer_pub,
        }
    }

    /// Waits for the summary of a fleet that keeps running (`--stay`) and returns it.
    pub fn wait_summary(&mut self, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(v) = std::fs::read_to_string(&self.summary)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                return v;
            }
            assert!(self.proc.is_running(), "fleet-sim exited");
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("no fleet summary within {timeout:?}");
    }

    /// Waits for the fleet to finish and returns its summary.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        let status = self.proc.wait_timeout(timeout);
        assert!(
            status.is_some(),
            "fleet-sim did not finish within {timeout:?}"
        );
        let text = std::fs::read_to_string(&self.summary).expect("fleet summary");
        serde_json::from_str(&text).expect("fleet summary is JSON")
    }
}

/// A local cluster of `members` provisioner processes (one without Raft when `members` is 1),
/// mutual TLS between members; each member gets `base` with its identity and cluster section.
/// `admin` is the admin CA and extra `admin` keys, to serve the admin API.
pub fn start_members(
    dir: &Path,
    nats: &Nats,
    ca: &(PathBuf, PathBuf),
    jwt_signer_pub: &Path,
    members: u64,
    base: &ProvisionerOptions,
    admin: Option<(PathBuf, String)>,
) -> Vec<ProvisionerProcess> {
    let specs = ClusterOptions::members(members);
    let tls_dir = (members > 1).then(|| cluster_pki(dir, &specs));
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let opts = ProvisionerOptions {
                identity: spec.name.clone(),
                cluster: (members > 1).then(|| ClusterOptions {
                    id: spec.id,
                    members: specs.clone(),
                    claim_lease: "30s".into(),
                    tls_dir: tls_dir.clone(),
                    admin_ca: admin.as_ref().map(|a| a.0.clone()),
                    auto_join: true,
                    admin_extra: admin.as_ref().map(|a| a.1.clone()).unwrap_or_default(),
                    cluster_extra: base.cluster_extra.clone(),
                }),
                cgroups: base.cgroups.get(i).cloned().into_iter().collect(),
                ..base.clone()
            };
            ProvisionerProcess::start(dir, nats, ca, jwt_signer_pub, &opts)
        })
        .collect()
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
