//! One simulated Choria Server in provisioning mode.
//!
//! It subscribes where a real server does (`provisioning.node.<identity>` and the broadcast
//! subjects of its agents), announces itself with a lifecycle `startup` event, answers
//! `discovery#ping`, `rpcutil#inventory` and `rpcutil#ping`, and the `choria_provision`
//! actions with upstream's checks (DDL inputs, provisioning token, the 2-minute provisioning
//! lock held by one sender/caller, provisioning mode), and on `configure` verifies that the
//! certificate chains to the given CA, names this server and matches the key it made on
//! `gencsr`. On `restart` it leaves provisioning mode when its new configuration says
//! `plugin.choria.server.provision=false`, and comes back waiting otherwise, as a real server
//! would. A server built to `stay` keeps running after that as a provisioned server in its
//! configured main collective, where `choria_provision#reprovision` (with the token) sends it
//! back to provisioning mode with a new key, as upstream's agent does.
//!
//! The server's parts: `run` starts it and holds its connections and lifecycle events,
//! `request` takes a request off the wire to a reply, `provision` is the `choria_provision`
//! agent's checks and dispatch, `restart` its actions that restart the server, and
//! `credentials` the keys it makes and what it checks on `configure`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::wire::Version;
use rcgen::KeyPair;
use tokio::sync::mpsc;

use crate::faults::Fault;
use crate::keys::KeySource;

mod credentials;
mod provision;
mod request;
mod restart;
mod run;
pub use credentials::verify_certificate;

/// How long a provisioning lock holds, as upstream.
const LOCK_WINDOW: Duration = Duration::from_secs(120);
const SSL_DIR: &str = "/etc/choria/ssl";
const CONFIG_FILE: &str = "/etc/choria/server.conf";
const AGENTS: &[&str] = &["choria_provision", "choria_util", "discovery", "rpcutil"];

/// Fleet-wide counters every server adds to.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Requests that did not decode at some protocol layer.
    pub bad_requests: AtomicU64,
    /// Requests past their TTL.
    pub expired: AtomicU64,
    /// Requests whose data broke the agent DDL: a provisioner protocol mistake.
    pub ddl_violations: AtomicU64,
    pub lock_conflicts: AtomicU64,
    pub bad_tokens: AtomicU64,
    /// `configure` requests refused (bad certificate, bad config...).
    pub configure_refused: AtomicU64,
    /// Delivered certificates that were CA certificates (refused): must stay 0.
    pub ca_certificates: AtomicU64,
    pub configures: AtomicU64,
    /// Requests in the protocol version the server does not speak.
    pub wrong_protocol: AtomicU64,
    /// v2 requests whose caller JWT or signature did not verify.
    pub bad_signatures: AtomicU64,
    /// Configurations that came with policies, which the server stored.
    pub policies_stored: AtomicU64,
    /// Private keys delivered encrypted, decrypted and matching the certificate.
    pub keys_delivered: AtomicU64,
}

/// What happens to a server, reported to the fleet.
#[derive(Debug, Clone)]
pub enum Report {
    /// The server announced itself in provisioning mode (its startup event).
    Arrived { index: usize, at: Instant },
    /// The first provisioning request reached the server.
    FirstRequest { index: usize, at: Instant },
    /// A request for an action this server was already asked for in this provisioning
    /// (a flow run again, or a retried RPC): where a slow server's time went.
    Repeated { index: usize, action: String },
    /// The provisioner's work is done: the server accepted `restart` into a configuration
    /// with provisioning off, and restarts after its own delay.
    Configured { index: usize, at: Instant },
    /// The server restarted out of provisioning mode.
    Provisioned {
        index: usize,
        at: Instant,
        verified: bool,
        serial: Option<String>,
    },
    /// `configure` delivered a credential that verified (certificate serial or JWT id).
    Delivered { index: usize, serial: String },
    /// The server was configured again after it had been configured before.
    Reconfigured { index: usize },
    /// The server shut down on request.
    Shutdown { index: usize },
    /// A provisioned server was asked to reprovision and is back in provisioning mode.
    Reprovisioning { index: usize },
    /// A provisioned server went back to provisioning mode by itself.
    FellBack { index: usize },
    /// The server updated its version and came back to provisioning mode.
    Upgraded { index: usize, version: String },
}

/// Everything that makes one server what it is.
pub struct ServerSpec {
    pub index: usize,
    pub identity: String,
    /// The provisioning token the server was "built" with; empty means none.
    pub token: String,
    /// The server's provisioning JWT.
    pub jwt: String,
    pub keys: KeySource,
    pub fault: Option<Fault>,
    pub version: String,
    /// When set, the only CA the server accepts in `configure` (PEM).
    pub expect_ca: Option<Arc<String>>,
    /// Keep running as a provisioned server after provisioning (to be reprovisioned).
    pub stay: bool,
    /// How a provisioned server connects to its production broker; `None` keeps the
    /// provisioning connection (a broker without separate accounts).
    pub production: Option<Arc<Production>>,
    /// After its first provisioning, fall back to provisioning mode on its own after this
    /// long (as a server with broken configuration or expired credentials does). Needs `stay`.
    pub fall_back_after: Option<Duration>,
    /// When set, the Organization Issuer (ed25519 public key) whose server JWT this server
    /// accepts in `configure`; the JWT must name this server and its gen25519 key.
    pub expect_issuer: Option<Arc<[u8; 32]>>,
    /// The protocol the server speaks (v2 when its provisioning JWT says `v2`). With an
    /// expected issuer, v2 requests must carry a caller JWT from it and verify.
    pub protocol: Version,
    /// The server may update its version during provisioning (`upgradable` in inventory).
    pub upgradable: bool,
    /// The release repository the server can update from; others fail like a bad download.
    pub upgrade_repository: Option<Arc<String>>,
}

/// Where provisioned servers connect: the same broker URL with production credentials.
#[derive(Debug, Clone)]
pub struct Production {
    pub url: String,
    pub user: String,
    pub password: String,
    /// The broker's CA when it runs TLS.
    pub tls_ca: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct State {
    provisioning: bool,
    lock: Option<(String, Instant)>,
    key: Option<KeyPair>,
    config: Option<BTreeMap<String, String>>,
    certificate: Option<String>,
    serial: Option<String>,
    verified: bool,
    configure_count: u32,
    seen_first: bool,
    /// Actions asked for since it last entered provisioning mode.
    asked: Vec<String>,
    restarting: bool,
    csr_count: u32,
    /// The collective the server listens in now.
    collective: String,
    /// It fell back on its own once already.
    fell_back: bool,
    /// The ed25519 key made on `gen25519`.
    ed_key: Option<ed25519_dalek::SigningKey>,
    /// The X25519 secret offered with `jwt`, for a delivered private key.
    ecdh: Option<x25519_dalek::StaticSecret>,
    /// Policies written by `configure` (file name to content).
    policies: BTreeMap<String, String>,
    /// The Choria version running now (changed by `release_update`).
    version: String,
    /// The last reply sent (a `Replay` server sends it again)
    last_reply: Option<Vec<u8>>,
}

pub struct SimServer {
    spec: ServerSpec,
    nats: async_nats::Client,
    state: Mutex<State>,
    counters: Arc<Counters>,
    reports: mpsc::UnboundedSender<Report>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Asks the run loop to listen in another collective.
    resubscribe: mpsc::UnboundedSender<String>,
    /// The connection the server talks on now (provisioning, or production after a restart).
    current: Mutex<async_nats::Client>,
}
