//! Calling agents on servers over NATS: directed RPC requests, broadcast discovery, and the
//! reply router that matches replies to the requests waiting for them.
//!
//! One wildcard subscription receives every reply for this provisioner
//! (`provisioning.reply.<md5 of our caller id>.>`); each reply is decoded, its hash checked and
//! handed to the request with its request id. A reply that does not decode, or comes from a
//! server other than the one asked, is counted and logged and never reaches the pipeline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use proto::rpc::{RpcReply, RpcRequest, StatusCode};
use proto::v1::{self, Filter, Reply, Request, RequestSigner};
use proto::{subject, v2, wire, ProtoError};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Discovery stops this long after the last reply (upstream's sliding window).
const DISCOVERY_IDLE: Duration = Duration::from_millis(300);

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("{rpc}: no reply from {identity} within {timeout:?}")]
    Timeout {
        rpc: String,
        identity: String,
        timeout: Duration,
    },
    #[error("{rpc}: request does not match the agent DDL: {source}")]
    InvalidRequest {
        rpc: String,
        #[source]
        source: ProtoError,
    },
    #[error("{rpc}: could not publish: {reason}")]
    Publish { rpc: String, reason: String },
    #[error("{rpc}: reply from {identity} is not a valid RPC reply: {reason}")]
    BadReply {
        rpc: String,
        identity: String,
        reason: String,
    },
    #[error("{rpc}: {identity} answered {code:?}: {message}")]
    Failed {
        rpc: String,
        identity: String,
        code: StatusCode,
        message: String,
    },
    /// The server answered, but its data is not the action's reply type.
    #[error("{rpc}: reply data from {identity} is not what the action returns: {source}")]
    BadData {
        rpc: String,
        identity: String,
        #[source]
        source: ProtoError,
    },
    #[error("subscribing to replies failed: {0}")]
    Subscribe(String),
    /// The time this request had to go out in had passed; it was not sent.
    #[error("{rpc}: not sent to {identity}: no time left to send it in")]
    NoTime { rpc: String, identity: String },
}

impl RpcError {
    /// Errors that another try can fix. A request that does not match the DDL never will.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, RpcError::InvalidRequest { .. })
    }
}

type Pending = Arc<Mutex<HashMap<String, Waiting>>>;

/// Where the replies to one request go.
#[derive(Clone)]
struct Waiting {
    tx: mpsc::UnboundedSender<Reply>,
    /// A discovery's: replies from other servers are counted, not decoded.
    wanted: Option<Arc<Wanted>>,
}

/// Which servers' discovery replies a member decodes. Every waiting server answers every
/// discovery, and in a cluster most belong to other members: their transport's sender header
/// is read (`wire::reply_sender_hint`) and the rest of the reply left alone (the leader, which
/// discovers for all, hands the name on to its owner from `wants`). A reply without the
/// header is decoded as any other.
pub struct Wanted {
    wants: Box<dyn Fn(&str) -> bool + Send + Sync>,
    passed: std::sync::atomic::AtomicUsize,
}

impl Wanted {
    pub fn new(wants: impl Fn(&str) -> bool + Send + Sync + 'static) -> Arc<Wanted> {
        Arc::new(Wanted {
            wants: Box::new(wants),
            passed: Default::default(),
        })
    }

    /// Replies passed over so far.
    pub fn passed(&self) -> usize {
        self.passed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sends requests as one provisioner and routes their replies back.
#[derive(Clone)]
pub struct RpcClient {
    nats: async_nats::Client,
    sender: String,
    caller: String,
    reply_prefix: String,
    collective: String,
    pending: Pending,
    metrics: Arc<Metrics>,
    protocol: Protocol,
}

/// The protocol requests go out in, with what signs them: v1 in x509 networks, v2 (signed
/// by our caller key, carrying our caller JWT) in Organization Issuer networks, as upstream
/// picks it from the security technology. Replies of either version are accepted.
#[derive(Clone)]
pub enum Protocol {
    V1(Arc<dyn RequestSigner>),
    V2(Arc<dyn v2::Signer>),
}

impl Protocol {
    pub fn version(&self) -> wire::Version {
        match self {
            Protocol::V1(_) => wire::Version::V1,
            Protocol::V2(_) => wire::Version::V2,
        }
    }
}

/// Removes a request's reply route when the request ends, however it ends.
struct Route {
    pending: Pending,
    id: String,
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl RpcClient {
    /// Subscribes to this provisioner's reply subjects and starts routing replies.
    ///
    /// `sender` is the sender and caller name put in requests (a cluster's members share one,
    /// so a server's provisioning lock belongs to the cluster); `member` names the reply
    /// subjects, so each member receives only the replies to its own requests.
    pub async fn start(
        nats: async_nats::Client,
        sender: &str,
        member: &str,
        collective: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RpcError> {
        let caller = format!("choria={sender}");
        let prefix = subject::reply_prefix(collective, &format!("choria={member}"));
        let mut sub = nats
            .subscribe(format!("{prefix}.>"))
            .await
            .map_err(|e| RpcError::Subscribe(e.to_string()))?;
        let pending: Pending = Arc::default();
        let client = RpcClient {
            nats,
            sender: sender.to_string(),
            caller,
            reply_prefix: prefix.clone(),
            collective: collective.to_string(),
            pending: pending.clone(),
            metrics: metrics.clone(),
            protocol: Protocol::V1(Arc::new(v1::Insecure)),
        };
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                route_reply(&pending, &metrics, &msg.subject, &msg.payload);
            }
            tracing::warn!("reply subscription ended");
        });
        Ok(client)
    }

    /// The protocol requests go out in.
    pub fn protocol(&self) -> Protocol {
        self.protocol.clone()
    }

    /// Sets the protocol and signer (v1 with protocol security off by default).
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    fn open_route(
        &self,
        id: &str,
        wanted: Option<Arc<Wanted>>,
    ) -> (Route, mpsc::UnboundedReceiver<Reply>) {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.to_string(), Waiting { tx, wanted });
        }
        (
            Route {
                pending: self.pending.clone(),
                id: id.to_string(),
            },
            rx,
        )
    }

    fn request(&self, agent: &str, filter: Filter, body: &[u8]) -> Request {
        Request::new(
            agent,
            &self.collective,
            &self.caller,
            &self.sender,
            v1::DEFAULT_TTL,
            filter,
            body,
        )
    }

    async fn publish(&self, rpc: &str, subject: String, req: &Request) -> Result<(), RpcError> {
        let reply_to = format!("{}.{}", self.reply_prefix, req.envelope.requestid);
        let encoded = match &self.protocol {
            Protocol::V1(signer) => req.encode(&reply_to, &self.sender, signer.as_ref()),
            Protocol::V2(signer) => {
                v2::encode_request(req, &reply_to, &self.sender, signer.as_ref())
            }
        };
        let bytes = encoded.map_err(|e| RpcError::Publish {
            rpc: rpc.to_string(),
            reason: e.to_string(),
        })?;
        self.nats
            .publish(subject, bytes.into())
            .await
            .map_err(|e| RpcError::Publish {
                rpc: rpc.to_string(),
                reason: e.to_string(),
            })
    }

    /// Calls `agent#action` on one server and returns its RPC reply, whatever its status.
    pub async fn call(
        &self,
        identity: &str,
        agent: &str,
        action: &str,
        data: serde_json::Value,
        timeout: Duration,
    ) -> Result<RpcReply, RpcError> {
        let rpc = format!("{agent}#{action}");
        if let Some(ddl) = proto::ddl::for_agent(agent) {
            ddl.validate(action, &data)
                .map_err(|source| RpcError::InvalidRequest {
                    rpc: rpc.clone(),
                    source,
                })?;
        }
        let body = RpcRequest::new(agent, action, data)
            .to_json()
            .map_err(|source| RpcError::InvalidRequest {
                rpc: rpc.clone(),
                source,
            })?;
        let filter = Filter {
            identity: vec![identity.to_string()],
            agent: vec![agent.to_string()],
            ..Default::default()
        };
        let req = self.request(agent, filter, &body);
        let (_route, mut replies) = self.open_route(&req.envelope.requestid, None);
        self.publish(
            &rpc,
            subject::node_directed(&self.collective, identity),
            &req,
        )
        .await?;

        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reply = match tokio::time::timeout_at(deadline, replies.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    return Err(RpcError::Timeout {
                        rpc,
                        identity: identity.to_string(),
                        timeout,
                    })
                }
            };
            if reply.envelope.senderid != identity {
                self.metrics.bad_message("reply_sender");
                tracing::warn!(
                    rpc,
                    expected = identity,
                    got = %reply.envelope.senderid,
                    "ignoring a reply from a server that was not asked"
                );
                continue;
            }
            return RpcReply::from_json(reply.message.as_bytes()).map_err(|e| {
                self.metrics.bad_message("rpc_reply");
                RpcError::BadReply {
                    rpc,
                    identity: identity.to_string(),
                    reason: e.to_string(),
                }
            });
        }
    }

    /// Broadcast discovery: asks every server in the collective with `agent` to answer a
    /// `discovery` ping and hands each valid identity that answers to `found` as its reply is
    /// routed, at most `max` of them, so the first servers start while the rest still answer.
    /// Returns how many answered within the sliding window (`timeout` at most, and
    /// [`DISCOVERY_IDLE`] after the last reply); those routed later are still handed on until
    /// [`DISCOVERY_LATE`] passes without one (see [`collect_discovery`]). Replies from servers
    /// `wanted` does not want are only counted.
    pub async fn discover(
        &self,
        agent: &str,
        timeout: Duration,
        max: usize,
        wanted: Arc<Wanted>,
        found: impl Fn(&str) + Send + 'static,
    ) -> Result<usize, RpcError> {
        let rpc = "discovery#ping".to_string();
        let body = base64::engine::general_purpose::STANDARD.encode(b"ping");
        let req = self.request(
            proto::agents::DISCOVERY_AGENT,
            Filter::agent(agent),
            body.as_bytes(),
        );
        let (route, replies) = self.open_route(&req.envelope.requestid, Some(wanted.clone()));
        self.publish(
            &rpc,
            subject::agent_broadcast(&self.collective, proto::agents::DISCOVERY_AGENT),
            &req,
        )
        .await?;
        let collector = Discovered {
            found: Box::new(found),
            seen: std::collections::HashSet::new(),
            max,
            metrics: self.metrics.clone(),
        };
        Ok(collect_discovery(route, replies, timeout, &wanted, collector).await)
    }
}

/// How long a discovery still takes replies after the last one, once its window closed. A
/// member short of CPU (a busy or capped machine) routes replies long after they arrived: the
/// window may close with thousands of replies that came in time still queued, and without
/// this those servers would wait for the next discovery (an `interval` later). Counted from
/// the last reply, not from the window: how long a backlog takes depends on the member's CPU
/// and the fleet (a member at 0.05 core, 15,000 servers: still routing 11.8 s after it).
pub const DISCOVERY_LATE: Duration = Duration::from_secs(10);

/// The longest a discovery takes late replies after its window, however steadily they come.
pub const DISCOVERY_LATE_MAX: Duration = Duration::from_secs(120);

/// What one discovery has seen, and where its finds go.
struct Discovered {
    found: Box<dyn Fn(&str) + Send>,
    /// Identities seen, so a server answering twice is offered once; at most `max`.
    seen: std::collections::HashSet<String>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl Discovered {
    fn take(&mut self, reply: Reply) {
        let who = reply.envelope.senderid;
        if self.seen.contains(&who) {
            return;
        }
        if self.seen.len() >= self.max {
            // bounded; the rest answer the next discovery
            self.metrics
                .waiting_dropped
                .with_label_values(&[self.metrics.site(), "discovery"])
                .inc();
        } else if subject::is_valid_identity(&who) {
            // at once: a member that held them until the window closed started its own
            // servers seconds after the leader's offers had started everyone else's
            (self.found)(&who);
            self.seen.insert(who);
        } else {
            self.metrics.bad_message("discovery_sender");
            tracing::warn!(sender = %who.chars().take(80).collect::<String>(), "ignoring discovery reply with an invalid identity");
        }
    }
}

/// Takes discovery replies from `replies` until `timeout`, or [`DISCOVERY_IDLE`] after the
/// last one (a reply passed over by `wanted` counts), and returns how many servers answered
/// by then; then leaves a task taking what is still routed to `route` until
/// [`DISCOVERY_LATE`] passes without a reply (or [`DISCOVERY_LATE_MAX`] did) before it closes
/// the route.
async fn collect_discovery(
    route: Route,
    mut replies: mpsc::UnboundedReceiver<Reply>,
    timeout: Duration,
    wanted: &Wanted,
    mut discovered: Discovered,
) -> usize {
    let hard = tokio::time::Instant::now() + timeout;
    let mut deadline = hard;
    let mut passed = wanted.passed();
    loop {
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Some(reply)) => discovered.take(reply),
            Ok(None) => break,
            // replies for other members came meanwhile: the servers are still answering
            Err(_) if wanted.passed() != passed && tokio::time::Instant::now() < hard => {
                passed = wanted.passed();
            }
            Err(_) => break,
        }
        deadline = hard.min(tokio::time::Instant::now() + DISCOVERY_IDLE);
    }
    let answered = discovered.seen.len();
    tokio::spawn(async move {
        let _route = route;
        let hard = tokio::time::Instant::now() + DISCOVERY_LATE_MAX;
        let mut late = 0usize;
        loop {
            let until = hard.min(tokio::time::Instant::now() + DISCOVERY_LATE);
            let Ok(Some(reply)) = tokio::time::timeout_at(until, replies.recv()).await else {
                break;
            };
            let before = discovered.seen.len();
            discovered.take(reply);
            late += discovered.seen.len() - before;
        }
        if late > 0 {
            tracing::info!(
                late,
                "servers that answered discovery were routed after its window"
            );
        }
    });
    answered
}

/// Hands one reply message to the request waiting for it.
fn route_reply(pending: &Pending, metrics: &Metrics, subject: &str, payload: &[u8]) {
    if let Some(wanted) = wanted_for(pending, subject) {
        if let Some(sender) = wire::reply_sender_hint(payload) {
            if !(wanted.wants)(&sender) {
                wanted
                    .passed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    }
    let reply = match wire::decode_reply(payload) {
        Ok((_, r)) => r,
        Err(e) => {
            metrics.bad_message("reply");
            tracing::warn!(subject, error = %e, "dropping a reply that does not decode");
            return;
        }
    };
    // the subject names the request; a reply claiming another request id is not trusted
    if subject.rsplit('.').next() != Some(reply.envelope.requestid.as_str()) {
        metrics.bad_message("reply_subject");
        tracing::warn!(subject, request = %reply.envelope.requestid, "dropping a reply whose request id does not match its subject");
        return;
    }
    let tx = pending
        .lock()
        .ok()
        .and_then(|p| p.get(&reply.envelope.requestid).cloned());
    match tx {
        Some(waiting) => {
            let _ = waiting.tx.send(reply);
        }
        None => tracing::debug!(request = %reply.envelope.requestid, "late reply, nobody waiting"),
    }
}

/// The filter of the discovery the subject's request id names, if it is one.
fn wanted_for(pending: &Pending, subject: &str) -> Option<Arc<Wanted>> {
    let id = subject.rsplit('.').next()?;
    pending.lock().ok()?.get(id)?.wanted.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A discovery request, as a member sends one.
    fn ping() -> Request {
        Request::new(
            "discovery",
            "provisioning",
            "choria=p",
            "p",
            60,
            Filter::default(),
            b"ping",
        )
    }

    #[test]
    fn garbage_replies_are_counted_not_routed() {
        let metrics = Metrics::new("t");
        let pending: Pending = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pending
            .lock()
            .unwrap()
            .insert("a".repeat(32), Waiting { tx, wanted: None });
        for junk in [
            &b""[..],
            b"{}",
            b"\xff\xfe",
            br#"{"protocol":"choria:transport:1","data":"!!","headers":{}}"#,
        ] {
            route_reply(&pending, &metrics, "provisioning.reply.x.y", junk);
        }
        assert!(rx.try_recv().is_err());
        assert!(metrics
            .render()
            .contains("choria_provisioner_bad_messages{kind=\"reply\",site=\"t\"} 4"));
    }

    /// A discovery offers each server once, as its reply is routed (the window still open);
    /// what is routed after the window (a member short of CPU) is still offered until the
    /// route closes. Replies of servers it does not want are counted, never decoded or offered.
    #[tokio::test(start_paused = true)]
    async fn discovery_takes_replies_routed_after_its_window() {
        let metrics = Arc::new(Metrics::new("t"));
        let pending: Pending = Arc::default();
        let req = ping();
        let id = req.envelope.requestid.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let wanted = Wanted::new(|who: &str| !who.starts_with("other"));
        pending.lock().unwrap().insert(
            id.clone(),
            Waiting {
                tx,
                wanted: Some(wanted.clone()),
            },
        );
        let route = Route {
            pending: pending.clone(),
            id: id.clone(),
        };
        let offered = Arc::new(Mutex::new(Vec::<String>::new()));
        let discovered = Discovered {
            found: Box::new({
                let offered = offered.clone();
                move |who: &str| offered.lock().unwrap().push(who.to_string())
            }),
            seen: Default::default(),
            max: 3,
            metrics: metrics.clone(),
        };
        let subject = format!("provisioning.reply.x.{id}");
        let send = |who: &str| {
            let bytes = Reply::new(&req.envelope, who, b"pong").encode().unwrap();
            route_reply(&pending, &metrics, &subject, &bytes);
        };
        let collecting = tokio::spawn({
            let wanted = wanted.clone();
            async move {
                collect_discovery(route, rx, Duration::from_secs(2), &wanted, discovered).await
            }
        });
        send("n1.example.net");
        tokio::time::sleep(DISCOVERY_IDLE / 3).await;
        assert!(!collecting.is_finished(), "the window is still open");
        assert_eq!(
            *offered.lock().unwrap(),
            ["n1.example.net"],
            "offered before the window closed"
        );
        for who in [
            "other1.example.net",
            "n1.example.net",
            "bad id",
            "n2.example.net",
            "other2.example.net",
        ] {
            send(who);
        }
        let answered = collecting.await.unwrap();
        assert_eq!(wanted.passed(), 2);
        assert_eq!(
            answered, 2,
            "n1 once, n2; the invalid sender is not counted"
        );
        assert_eq!(
            *offered.lock().unwrap(),
            ["n1.example.net", "n2.example.net"]
        );

        // the window closed; replies routed now still reach the queue, up to `max`
        for who in ["n3.example.net", "other3.example.net", "n4.example.net"] {
            send(who);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *offered.lock().unwrap(),
            ["n1.example.net", "n2.example.net", "n3.example.net"]
        );
        assert_eq!(wanted.passed(), 3);
        let text = metrics.render();
        assert!(text
            .contains("choria_provisioner_bad_messages{kind=\"discovery_sender\",site=\"t\"} 1"));
        assert!(
            text.contains("choria_provisioner_waiting_dropped{site=\"t\",source=\"discovery\"} 1"),
            "{text}"
        );

        // a reply keeps the route open for DISCOVERY_LATE more, even past DISCOVERY_LATE
        // after the window (a member still routing a backlog)
        let step = DISCOVERY_LATE * 6 / 10;
        tokio::time::sleep(step).await;
        send("n5.example.net");
        tokio::time::sleep(step).await;
        assert!(
            pending.lock().unwrap().contains_key(&id),
            "closed {:?} after its last reply",
            step
        );
        // and it closes DISCOVERY_LATE after the last one
        tokio::time::sleep(DISCOVERY_LATE).await;
        assert!(!pending.lock().unwrap().contains_key(&id));
    }

    /// The leader's discovery hands the names of other members' servers on, read from the
    /// header, and decodes only its own servers' replies.
    #[test]
    fn passed_replies_hand_their_sender_on() {
        let metrics = Metrics::new("t");
        let pending: Pending = Arc::default();
        let req = ping();
        let id = req.envelope.requestid.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handed = Arc::new(Mutex::new(Vec::<String>::new()));
        let wanted = Wanted::new({
            let handed = handed.clone();
            move |who: &str| {
                let other = who.starts_with("other");
                if other {
                    handed.lock().unwrap().push(who.to_string());
                }
                !other
            }
        });
        pending.lock().unwrap().insert(
            id.clone(),
            Waiting {
                tx,
                wanted: Some(wanted.clone()),
            },
        );
        let subject = format!("provisioning.reply.x.{id}");
        for who in ["other1.example.net", "n1.example.net", "other2.example.net"] {
            let bytes = Reply::new(&req.envelope, who, b"pong").encode().unwrap();
            route_reply(&pending, &metrics, &subject, &bytes);
        }
        assert_eq!(
            *handed.lock().unwrap(),
            ["other1.example.net", "other2.example.net"]
        );
        assert_eq!(wanted.passed(), 2);
        assert_eq!(rx.try_recv().unwrap().envelope.senderid, "n1.example.net");
        assert!(
            rx.try_recv().is_err(),
            "only its own server's reply is routed"
        );
    }

    #[test]
    fn replies_reach_only_their_request() {
        let metrics = Metrics::new("t");
        let pending: Pending = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let req = Request::new(
            "rpcutil",
            "provisioning",
            "choria=p",
            "p",
            60,
            Filter::default(),
            b"{}",
        );
        let id = req.envelope.requestid.clone();
        pending
            .lock()
            .unwrap()
            .insert(id.clone(), Waiting { tx, wanted: None });
        let bytes = Reply::new(&req.envelope, "n1", b"{\"statuscode\":0}")
            .encode()
            .unwrap();
        // wrong subject: dropped
        route_reply(&pending, &metrics, "provisioning.reply.x.other", &bytes);
        assert!(rx.try_recv().is_err());
        route_reply(
            &pending,
            &metrics,
            &format!("provisioning.reply.x.{id}"),
            &bytes,
        );
        assert_eq!(rx.try_recv().unwrap().envelope.senderid, "n1");
    }
}
