//! One simulated Choria Server in provisioning mode.
//!
//! It subscribes where a real server does (`provisioning.node.<identity>` and the broadcast
//! subjects of its agents), announces itself with a lifecycle `startup` event, answers
//! `discovery#ping`, `rpcutil#inventory` and the `choria_provision` actions with upstream's
//! checks (DDL inputs, provisioning token, the 2-minute provisioning lock held by one
//! sender/caller, provisioning mode), and on `configure` verifies that the certificate chains
//! to the given CA, names this server and matches the key it made on `gencsr`. On `restart`
//! it leaves provisioning mode when its new configuration says
//! `plugin.choria.server.provision=false`, and comes back waiting otherwise, as a real server
//! would. A server built to `stay` keeps running after that as a provisioned server in its
//! configured main collective, where `choria_provision#reprovision` (with the token) sends it
//! back to provisioning mode with a new key, as upstream's agent does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::agents::{
    ConfigureRequest, CsrReply, CsrRequest, InventoryReply, JwtReply, MessageReply, RestartRequest,
    TokenRequest,
};
use proto::lifecycle::{Event, EventType, PROVISION_MODE_COMPONENT};
use proto::rpc::{RpcReply, RpcRequest, StatusCode};
use proto::v1;
use proto::wire::{self, Incoming, Version};
use proto::{subject, ProtoError};
use rcgen::KeyPair;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use x509_parser::prelude::*;

use crate::faults::Fault;
use crate::keys::{KeySource, Subject};

mod credentials;
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

/// Where a server listens in `collective`: its node subject and its agents' broadcasts.
async fn subscribe(
    nats: &async_nats::Client,
    identity: &str,
    collective: &str,
) -> Result<Vec<async_nats::Subscriber>, String> {
    let mut subs = vec![nats
        .subscribe(subject::node_directed(collective, identity))
        .await
        .map_err(|e| e.to_string())?];
    for agent in AGENTS {
        let s = subject::agent_broadcast(collective, agent);
        subs.push(nats.subscribe(s).await.map_err(|e| e.to_string())?);
    }
    Ok(subs)
}

impl SimServer {
    /// Subscribes where a real server does and announces the server; the returned task runs
    /// it until it leaves provisioning mode or shuts down.
    pub async fn start(
        spec: ServerSpec,
        nats: async_nats::Client,
        counters: Arc<Counters>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let subs = subscribe(&nats, &spec.identity, subject::PROVISIONING_COLLECTIVE).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (resubscribe, mut moves) = mpsc::unbounded_channel::<String>();
        let version = spec.version.clone();
        let server = Arc::new(SimServer {
            spec,
            current: Mutex::new(nats.clone()),
            nats,
            state: Mutex::new(State {
                provisioning: true,
                collective: subject::PROVISIONING_COLLECTIVE.into(),
                version,
                ..Default::default()
            }),
            counters,
            reports,
            stop,
            resubscribe,
        });
        let _ = server.nats.flush().await;
        let _ = server.reports.send(Report::Arrived {
            index: server.spec.index,
            at: Instant::now(),
        });
        server.publish_event(EventType::Startup).await;

        Ok(tokio::spawn(async move {
            let mut messages = futures::stream::select_all(subs);
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        let s = server.clone();
                        tokio::spawn(async move { s.handle(&msg.payload).await });
                    }
                    Some(collective) = moves.recv() => {
                        // a restart: the old subscriptions go away with the old stream
                        let conn = match server.connect_for(&collective).await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(identity = %server.spec.identity, error = %e, "reconnect failed");
                                break;
                            }
                        };
                        match subscribe(&conn, &server.spec.identity, &collective).await {
                            Ok(subs) => messages = futures::stream::select_all(subs),
                            Err(e) => {
                                tracing::warn!(identity = %server.spec.identity, error = %e, "resubscribe failed");
                                break;
                            }
                        }
                        let _ = conn.flush().await;
                        if let Ok(mut c) = server.current.lock() {
                            *c = conn;
                        }
                        let (kind, component) = if collective == subject::PROVISIONING_COLLECTIVE {
                            (EventType::Startup, PROVISION_MODE_COMPONENT)
                        } else {
                            (EventType::Startup, "server")
                        };
                        server.publish_event_as(kind, component).await;
                    }
                    _ = stopped.changed() => break,
                }
            }
            // drains pending publishes before the connection goes away
            let _ = server.nats.flush().await;
        }))
    }

    async fn publish_event(&self, kind: EventType) {
        self.publish_event_as(kind, PROVISION_MODE_COMPONENT).await
    }

    async fn publish_event_as(&self, kind: EventType, component: &str) {
        let event = Event::new(
            kind,
            &self.spec.identity,
            component,
            Some(&self.spec.version),
        );
        if let (Ok(subject), Ok(body)) = (event.subject(), event.to_json()) {
            let _ = self.conn().publish(subject, body.into()).await;
        }
    }

    async fn handle(self: &Arc<Self>, payload: &[u8]) {
        let incoming = match wire::decode_request(payload) {
            Ok(r) => r,
            Err(_) => {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if incoming.version != self.spec.protocol {
            self.counters.wrong_protocol.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let (Version::V2, Some(org)) = (incoming.version, &self.spec.expect_issuer) {
            let checked = crate::trust::verify_caller(
                incoming.caller_jwt.as_deref().unwrap_or_default(),
                &incoming.request.envelope.callerid,
                &incoming.signed,
                &incoming.signature,
                org,
            );
            if let Err(e) = checked {
                self.counters.bad_signatures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(identity = %self.spec.identity, error = %e, "refusing a v2 request");
                return;
            }
        }
        let env = &incoming.request.envelope;
        if incoming.request.is_expired(proto::unix_now()) {
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let collective = self
            .state
            .lock()
            .map(|s| s.collective.clone())
            .unwrap_or_default();
        if env.collective != collective || !env.filter.matches(&self.spec.identity, AGENTS) {
            return;
        }
        let Some(reply_to) = incoming.reply_to.clone() else {
            self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let body = match env.agent.as_str() {
            "discovery" => {
                if !incoming.request.body().windows(4).any(|w| w == b"ping") {
                    return;
                }
                b"pong".to_vec()
            }
            _ => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                match self.spec.fault {
                    Some(Fault::Timeout) => return,
                    Some(Fault::Garbage) => {
                        let _ = self
                            .nats
                            .publish(reply_to, b"\x00this is not a choria reply{".to_vec().into())
                            .await;
                        return;
                    }
                    _ => {}
                }
                self.note_first_request();
                let reply = self.rpc(&incoming).await;
                match reply.to_json() {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
        };
        let sender = match self.spec.fault {
            Some(Fault::WrongSender) if env.agent != "discovery" => "impostor.example.net",
            _ => self.spec.identity.as_str(),
        };
        let reply = v1::Reply::new(env, sender, &body);
        if let Ok(bytes) = wire::encode_reply(self.spec.protocol, &reply) {
            if self.spec.fault == Some(Fault::Replay) && env.agent != "discovery" {
                let previous = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|mut st| st.last_reply.replace(bytes.clone()));
                if let Some(old) = previous {
                    let _ = self.conn().publish(reply_to.clone(), old.into()).await;
                }
            }
            let _ = self.conn().publish(reply_to, bytes.into()).await;
        }
    }

    fn note_first_request(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.seen_first {
            st.seen_first = true;
            let _ = self.reports.send(Report::FirstRequest {
                index: self.spec.index,
                at: Instant::now(),
            });
        }
    }

    fn note_action(&self, action: &str) {
        let repeated = match self.state.lock() {
            Ok(st) if st.asked.iter().any(|a| a == action) => true,
            Ok(mut st) => {
                st.asked.push(action.to_string());
                false
            }
            Err(_) => false,
        };
        if repeated {
            let _ = self.reports.send(Report::Repeated {
                index: self.spec.index,
                action: action.to_string(),
            });
        }
    }

    async fn rpc(self: &Arc<Self>, incoming: &Incoming) -> RpcReply {
        let env = &incoming.request.envelope;
        let req = match RpcRequest::from_json(&incoming.request.body()) {
            Ok(r) => r,
            Err(e) => {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                return RpcReply::error("", StatusCode::InvalidData, e.to_string());
            }
        };
        let action = req.action.clone();
        self.note_action(&action);
        if req.agent != env.agent {
            self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return RpcReply::error(
                &action,
                StatusCode::Aborted,
                "request for a different agent",
            );
        }
        let Some(ddl) = proto::ddl::for_agent(&req.agent) else {
            return RpcReply::error(&action, StatusCode::UnknownAction, "unknown agent");
        };
        if ddl.action(&action).is_none() {
            return RpcReply::error(
                &action,
                StatusCode::UnknownAction,
                format!("unknown action {action}"),
            );
        }
        if let Err(e) = ddl.validate(&action, &req.data) {
            self.counters.ddl_violations.fetch_add(1, Ordering::Relaxed);
            let code = match e {
                ProtoError::MissingInput(_) => StatusCode::MissingData,
                _ => StatusCode::InvalidData,
            };
            return RpcReply::error(&action, code, e.to_string());
        }
        match (req.agent.as_str(), action.as_str()) {
            ("rpcutil", "inventory") => RpcReply::ok(&action, self.inventory()),
            ("rpcutil", _) => RpcReply::error(&action, StatusCode::Aborted, "not simulated"),
            _ => self.provision_action(env, &action, req.data).await,
        }
    }

    fn inventory(&self) -> Value {
        let inv = InventoryReply {
            agents: AGENTS.iter().map(|s| s.to_string()).collect(),
            facts: json!({"simulated": true, "index": self.spec.index}),
            classes: vec![],
            version: self
                .state
                .lock()
                .map(|s| s.version.clone())
                .unwrap_or_default(),
            main_collective: subject::PROVISIONING_COLLECTIVE.into(),
            collectives: vec![subject::PROVISIONING_COLLECTIVE.into()],
            data_plugins: vec![],
            machines: json!([]),
            upgradable: self.spec.upgradable,
        };
        serde_json::to_value(inv).unwrap_or(Value::Null)
    }

    async fn provision_action(
        self: &Arc<Self>,
        env: &v1::RequestEnvelope,
        action: &str,
        data: Value,
    ) -> RpcReply {
        let locked = matches!(
            action,
            "configure" | "gen25519" | "gencsr" | "jwt" | "release_update"
        );
        if locked && !self.take_lock(&format!("{}.{}", env.senderid, env.callerid)) {
            self.counters.lock_conflicts.fetch_add(1, Ordering::Relaxed);
            return RpcReply::error(
                action,
                StatusCode::Aborted,
                "Could not obtain provisioning lock",
            );
        }
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // in constant time, as a real agent should: the time taken says nothing of the token
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(token.as_bytes(), self.spec.token.as_bytes()).into();
        if !self.spec.token.is_empty() && !matches {
            self.counters.bad_tokens.fetch_add(1, Ordering::Relaxed);
            return RpcReply::error(
                action,
                StatusCode::Aborted,
                "Incorrect provision token supplied",
            );
        }
        let provisioning = self.state.lock().map(|s| s.provisioning).unwrap_or(false);
        match self.act(action, data, provisioning).await {
            Ok(data) => RpcReply::ok(action, data),
            Err((code, msg)) => RpcReply::error(action, code, msg),
        }
    }

    async fn act(
        self: &Arc<Self>,
        action: &str,
        data: Value,
        provisioning: bool,
    ) -> Result<Value, (StatusCode, String)> {
        let not_provisioning = || {
            Err((
                StatusCode::Aborted,
                "Cannot reconfigure a server that is not in provisioning mode".to_string(),
            ))
        };
        match action {
            "jwt" => {
                if !provisioning {
                    return not_provisioning();
                }
                let _: TokenRequest = parse(&data)?;
                let (secret, ecdh_public) = crate::keyrecv::offer();
                if let Ok(mut st) = self.state.lock() {
                    st.ecdh = Some(secret);
                }
                to_value(&JwtReply {
                    jwt: self.spec.jwt.clone(),
                    ecdh_public,
                })
            }
            "gencsr" => {
                if !provisioning {
                    return not_provisioning();
                }
                let args: CsrRequest = parse(&data)?;
                self.gencsr(args).map_err(|e| (StatusCode::Aborted, e))
            }
            "gen25519" => {
                if !provisioning {
                    return not_provisioning();
                }
                let args: proto::agents::Ed25519Request = parse(&data)?;
                self.gen25519(&args.nonce)
            }
            "configure" => {
                if !provisioning {
                    return not_provisioning();
                }
                let args: ConfigureRequest = parse(&data)?;
                self.configure(args).await
            }
            "restart" => {
                let args: RestartRequest = parse(&data)?;
                self.restart(args)
            }
            "shutdown" => {
                let _: TokenRequest = parse(&data)?;
                let s = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    s.publish_event(EventType::Shutdown).await;
                    let _ = s.reports.send(Report::Shutdown {
                        index: s.spec.index,
                    });
                    let _ = s.stop.send(true);
                });
                to_value(&MessageReply {
                    message: "Shutting down Choria Server after 2s".into(),
                })
            }
            "reprovision" => {
                let _: TokenRequest = parse(&data)?;
                if provisioning {
                    return Err((
                        StatusCode::Aborted,
                        "Server is already in provisioning mode, cannot enable provisioning mode again"
                            .into(),
                    ));
                }
                self.reprovision()
            }
            "release_update" => {
                if !provisioning {
                    return Err((
                        StatusCode::Aborted,
                        "Cannot update a server that is not in provisioning mode".into(),
                    ));
                }
                let args: proto::agents::ReleaseUpdateRequest = parse(&data)?;
                self.release_update(args)
            }
            _ => Err((StatusCode::Aborted, format!("{action} is not simulated"))),
        }
    }

    /// Upstream's release_update: fetch the release (here: only from the repository the
    /// server can reach), then restart into provisioning mode running it, after 2 s.
    fn release_update(
        self: &Arc<Self>,
        args: proto::agents::ReleaseUpdateRequest,
    ) -> Result<Value, (StatusCode, String)> {
        if !self.spec.upgradable {
            return Err((
                StatusCode::Aborted,
                "Version updates is not enabled in the configuration".into(),
            ));
        }
        let reachable = self
            .spec
            .upgrade_repository
            .as_deref()
            .is_some_and(|r| *r == args.repository);
        if !reachable || args.version.is_empty() {
            return Err((
                StatusCode::Aborted,
                format!(
                    "Update to version {} failed, release rolled back: cannot fetch it from {}",
                    args.version, args.repository
                ),
            ));
        }
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            s.publish_event(EventType::Shutdown).await;
            if let Ok(mut st) = s.state.lock() {
                st.version = args.version.clone();
                st.lock = None;
            }
            let _ = s.reports.send(Report::Upgraded {
                index: s.spec.index,
                version: args.version,
            });
            s.publish_event(EventType::Startup).await;
        });
        to_value(&MessageReply {
            message: "Restarting Choria Server after 2s".into(),
        })
    }

    /// Upstream's lock: held by one sender.caller for two minutes, extended on use.
    fn take_lock(&self, holder: &str) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        match &st.lock {
            Some((who, until)) if *until > now && who != holder => false,
            _ => {
                st.lock = Some((holder.to_string(), now + LOCK_WINDOW));
                true
            }
        }
    }

    fn restart(self: &Arc<Self>, args: RestartRequest) -> Result<Value, (StatusCode, String)> {
        let provision_setting = {
            let Ok(mut st) = self.state.lock() else {
                return Err((StatusCode::Aborted, "state poisoned".into()));
            };
            let Some(config) = &st.config else {
                return Err((
                    StatusCode::Aborted,
                    format!(
                        "Configuration {CONFIG_FILE} could not be parsed, restart cannot continue"
                    ),
                ));
            };
            let setting = config.get("plugin.choria.server.provision").cloned();
            if setting.as_deref() == Some("true") {
                return Err((
                    StatusCode::Aborted,
                    format!(
                        "Configuration {CONFIG_FILE} enables provisioning, restart cannot continue"
                    ),
                ));
            }
            if st.restarting {
                return Ok(json!({"message": "Restart already scheduled"}));
            }
            st.restarting = true;
            setting
        };
        if provision_setting.as_deref() == Some("false") {
            let _ = self.reports.send(Report::Configured {
                index: self.spec.index,
                at: Instant::now(),
            });
        }
        let splay = args.splay.filter(|s| *s > 0).unwrap_or(10);
        let delay = Duration::from_secs(rand::random::<u64>() % splay + 2);
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            s.publish_event(EventType::Shutdown).await;
            if provision_setting.as_deref() == Some("false") {
                let (verified, serial, main) = s
                    .state
                    .lock()
                    .map(|st| {
                        let main = st
                            .config
                            .as_ref()
                            .and_then(|c| c.get("main_collective").cloned())
                            .unwrap_or_else(|| "mcollective".into());
                        (st.verified, st.serial.clone(), main)
                    })
                    .unwrap_or((false, None, "mcollective".into()));
                let _ = s.reports.send(Report::Provisioned {
                    index: s.spec.index,
                    at: Instant::now(),
                    verified,
                    serial,
                });
                if s.spec.stay {
                    // up again as a provisioned server in its main collective
                    if let Ok(mut st) = s.state.lock() {
                        st.provisioning = false;
                        st.restarting = false;
                        st.lock = None;
                        st.collective = main.clone();
                    }
                    let _ = s.resubscribe.send(main);
                    let first = s.state.lock().map(|st| !st.fell_back).unwrap_or(false);
                    if let (Some(after), true) = (s.spec.fall_back_after, first) {
                        s.back_to_provisioning(
                            after,
                            Report::FellBack {
                                index: s.spec.index,
                            },
                        );
                    }
                } else {
                    let _ = s.stop.send(true);
                }
            } else {
                // the new configuration does not turn provisioning off: back to waiting
                if let Ok(mut st) = s.state.lock() {
                    st.restarting = false;
                    st.lock = None;
                }
                s.publish_event(EventType::Startup).await;
            }
        });
        to_value(&MessageReply {
            message: format!("Restarting Choria Server after {}s", delay.as_secs()),
        })
    }
}

impl SimServer {
    fn conn(&self) -> async_nats::Client {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| self.nats.clone())
    }

    /// The connection to use in `collective`: the provisioning one, or a new production
    /// connection after provisioning.
    async fn connect_for(&self, collective: &str) -> Result<async_nats::Client, String> {
        match &self.spec.production {
            Some(p) if collective != subject::PROVISIONING_COLLECTIVE => {
                let mut opts = async_nats::ConnectOptions::with_user_and_password(
                    p.user.clone(),
                    p.password.clone(),
                )
                .name(format!("{} (production)", self.spec.identity));
                if let Some(ca) = &p.tls_ca {
                    opts = opts.require_tls(true).add_root_certificates(ca.clone());
                }
                opts.connect(p.url.clone()).await.map_err(|e| e.to_string())
            }
            _ => Ok(self.nats.clone()),
        }
    }

    /// Upstream's reprovision: a configuration with provisioning on, then a restart after a
    /// 2-11 s splay, which brings the server back waiting with no key or certificate.
    fn reprovision(self: &Arc<Self>) -> Result<Value, (StatusCode, String)> {
        {
            let Ok(mut st) = self.state.lock() else {
                return Err((StatusCode::Aborted, "state poisoned".into()));
            };
            if st.restarting {
                return Err((StatusCode::Aborted, "Restart already scheduled".into()));
            }
            st.restarting = true;
        }
        let delay = Duration::from_secs(rand::random::<u64>() % 10 + 2);
        self.back_to_provisioning(
            delay,
            Report::Reprovisioning {
                index: self.spec.index,
            },
        );
        to_value(&MessageReply {
            message: format!("Restarting after {}s", delay.as_secs()),
        })
    }

    /// After `delay`, restarts into provisioning mode with no key, certificate or
    /// configuration, reports `report` and announces itself.
    fn back_to_provisioning(self: &Arc<Self>, delay: Duration, report: Report) {
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            s.publish_event_as(EventType::Shutdown, "server").await;
            if let Ok(mut st) = s.state.lock() {
                *st = State {
                    provisioning: true,
                    collective: subject::PROVISIONING_COLLECTIVE.into(),
                    seen_first: st.seen_first,
                    fell_back: st.fell_back || matches!(report, Report::FellBack { .. }),
                    version: st.version.clone(),
                    ..Default::default()
                };
            }
            let _ = s.reports.send(report);
            let _ = s.resubscribe.send(subject::PROVISIONING_COLLECTIVE.into());
        });
    }
}

fn parse<T: serde::de::DeserializeOwned>(data: &Value) -> Result<T, (StatusCode, String)> {
    serde_json::from_value(data.clone()).map_err(|e| (StatusCode::InvalidData, e.to_string()))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, (StatusCode, String)> {
    serde_json::to_value(v).map_err(|e| (StatusCode::UnknownError, e.to_string()))
}
