//! One typed call to an agent action on one server, the only place the provisioner sends
//! one: the [`Action`]'s request goes out, its reply comes back as the action's reply type,
//! and each action's retry policy ([`Call::POLICY`]) sits next to it here instead of at
//! every call site.
//!
//! The NATS client ([`RpcClient`]) stands behind [`Transport`], so the steps that call
//! servers, and the retry rules, have unit tests with a scripted transport; the integration
//! tests run the same code against the real broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use proto::action::{
    Action, Configure, Gen25519, GenCsr, Inventory, Jwt, Ping, ReleaseUpdate, Reprovision, Restart,
    Shutdown,
};
use proto::rpc::RpcReply;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::rpc::{RpcClient, RpcError};

/// Sends one request to one server and returns its RPC reply, whatever its status.
pub trait Transport: Send + Sync {
    fn request<'a>(
        &'a self,
        identity: &'a str,
        agent: &'static str,
        action: &'static str,
        data: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<RpcReply, RpcError>>;
}

impl Transport for RpcClient {
    fn request<'a>(
        &'a self,
        identity: &'a str,
        agent: &'static str,
        action: &'static str,
        data: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<RpcReply, RpcError>> {
        Box::pin(async move { self.call(identity, agent, action, data, timeout).await })
    }
}

/// How an action is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts, with backoff between them; only retryable errors are tried again.
    pub tries: u32,
    /// Each attempt's time: `rpc_timeout`, or at least this much for actions the server
    /// needs longer to answer.
    pub at_least: Option<Duration>,
}

/// An action with the provisioner's policy for calling it.
pub trait Call: Action {
    const POLICY: Policy;
}

/// Tried up to `n` times in `rpc_timeout` each.
const fn tries(n: u32) -> Policy {
    Policy {
        tries: n,
        at_least: None,
    }
}

macro_rules! policy {
    ($($(#[$doc:meta])* $action:ty => $policy:expr;)*) => {
        $($(#[$doc])* impl Call for $action {
            const POLICY: Policy = $policy;
        })*
    };
}

policy! {
    Inventory => tries(5);
    /// Twice: one lost reply must not read as a server that left.
    Ping => tries(2);
    Jwt => tries(3);
    /// Once, as upstream: every try makes the server write a new key.
    GenCsr => tries(1);
    Gen25519 => tries(3);
    Configure => tries(5);
    /// Once, within the settle time (see [`Agents::call_within`]): a restart sent late could
    /// boot the server into a credential that was replaced.
    Restart => tries(1);
    /// Once: the operator sees the result and may ask again.
    Reprovision => tries(1);
    /// Once, and the server downloads and checks the release before it answers.
    ReleaseUpdate => Policy {
        tries: 1,
        at_least: Some(Duration::from_secs(60)),
    };
    Shutdown => tries(3);
}

/// Calls actions on servers as this provisioner: the transport, the provisioning token every
/// `choria_provision` request carries, and the time each attempt has.
#[derive(Clone)]
pub struct Agents {
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    rpc_timeout: Duration,
    token: String,
}

impl Agents {
    pub fn new(
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        rpc_timeout: Duration,
        token: String,
    ) -> Self {
        Agents {
            transport,
            metrics,
            rpc_timeout,
            token,
        }
    }

    /// The provisioning token requests carry.
    pub fn token(&self) -> String {
        self.token.clone()
    }

    /// Calls `A` on `identity` under its policy; only a successful reply is a success.
    pub async fn call<A: Call>(
        &self,
        identity: &str,
        req: &A::Request,
    ) -> Result<A::Reply, RpcError> {
        self.call_with_data::<A>(identity, req)
            .await
            .map(|(r, _)| r)
    }

    /// Like [`call`](Self::call), also returning the reply's `data` as it came.
    pub async fn call_with_data<A: Call>(
        &self,
        identity: &str,
        req: &A::Request,
    ) -> Result<(A::Reply, Value), RpcError> {
        let timeout = match A::POLICY.at_least {
            Some(least) => self.rpc_timeout.max(least),
            None => self.rpc_timeout,
        };
        self.send::<A>(identity, req, timeout).await
    }

    /// Like [`call`](Self::call), each attempt given at most `limit`; with no time left the
    /// request is not sent.
    pub async fn call_within<A: Call>(
        &self,
        identity: &str,
        req: &A::Request,
        limit: Duration,
    ) -> Result<A::Reply, RpcError> {
        let timeout = self.rpc_timeout.min(limit);
        if timeout.is_zero() {
            return Err(RpcError::NoTime {
                rpc: A::rpc(),
                identity: identity.to_string(),
            });
        }
        self.send::<A>(identity, req, timeout).await.map(|(r, _)| r)
    }

    /// `A::POLICY.tries` attempts with backoff, each timed in `choria_provisioner_rpc_time`,
    /// a final failure counted in `choria_provisioner_rpc_errors`; the reply's data is read
    /// as `A::Reply` once, after the call succeeded.
    async fn send<A: Call>(
        &self,
        identity: &str,
        req: &A::Request,
        timeout: Duration,
    ) -> Result<(A::Reply, Value), RpcError> {
        let rpc = A::rpc();
        let mut data = serde_json::to_value(req).map_err(|e| RpcError::InvalidRequest {
            rpc: rpc.clone(),
            source: proto::ProtoError::InvalidInput {
                input: "data".into(),
                reason: e.to_string(),
            },
        })?;
        let site = self.metrics.site().to_string();
        let mut attempt = 0;
        let reply = loop {
            attempt += 1;
            let started = Instant::now();
            // the last try takes the request itself
            let payload = if attempt < A::POLICY.tries {
                data.clone()
            } else {
                std::mem::take(&mut data)
            };
            let result = self
                .transport
                .request(identity, A::AGENT, A::ACTION, payload, timeout)
                .await
                .and_then(|reply| {
                    if reply.is_ok() {
                        Ok(reply)
                    } else {
                        Err(RpcError::Failed {
                            rpc: rpc.clone(),
                            identity: identity.to_string(),
                            code: reply.statuscode,
                            message: reply.statusmsg,
                        })
                    }
                });
            self.metrics
                .rpc_time
                .with_label_values(&[&site, &rpc])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(r) => break r,
                Err(e) if attempt < A::POLICY.tries && e.is_retryable() => {
                    tracing::debug!(identity, rpc, attempt, error = %e, "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    self.metrics
                        .rpc_errors
                        .with_label_values(&[&site, &rpc])
                        .inc();
                    return Err(e);
                }
            }
        };
        let typed = reply.data_as().map_err(|source| {
            self.metrics.bad_message("rpc_data");
            RpcError::BadData {
                rpc,
                identity: identity.to_string(),
                source,
            }
        })?;
        Ok((typed, reply.data))
    }
}

/// Backoff between RPC tries: 250 ms doubling to 4 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(4).saturating_sub(1));
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use proto::agents::{MessageReply, TokenRequest};
    use proto::rpc::StatusCode;

    use super::*;

    /// A transport that answers from a script and records what was asked.
    #[derive(Default)]
    pub(crate) struct Scripted {
        pub answers: Mutex<VecDeque<Result<RpcReply, RpcError>>>,
        pub asked: Mutex<Vec<(String, String, Value, Duration)>>,
    }

    impl Scripted {
        pub(crate) fn answer(&self, r: Result<RpcReply, RpcError>) -> &Self {
            self.answers.lock().unwrap().push_back(r);
            self
        }

        pub(crate) fn ok(&self, data: Value) -> &Self {
            self.answer(Ok(reply(StatusCode::Ok, data)))
        }

        pub(crate) fn asked(&self) -> Vec<String> {
            self.asked
                .lock()
                .unwrap()
                .iter()
                .map(|a| a.1.clone())
                .collect()
        }
    }

    pub(crate) fn reply(code: StatusCode, data: Value) -> RpcReply {
        RpcReply {
            statuscode: code,
            statusmsg: if code == StatusCode::Ok {
                "OK".into()
            } else {
                "failed".into()
            },
            data,
            action: String::new(),
        }
    }

    pub(crate) fn timeout() -> RpcError {
        RpcError::Timeout {
            rpc: "x#y".into(),
            identity: "n1".into(),
            timeout: Duration::from_millis(1),
        }
    }

    impl Transport for Scripted {
        fn request<'a>(
            &'a self,
            identity: &'a str,
            agent: &'static str,
            action: &'static str,
            data: Value,
            timeout: Duration,
        ) -> BoxFuture<'a, Result<RpcReply, RpcError>> {
            self.asked.lock().unwrap().push((
                identity.to_string(),
                format!("{agent}#{action}"),
                data,
                timeout,
            ));
            let next = self.answers.lock().unwrap().pop_front();
            Box::pin(async move { next.unwrap_or_else(|| Err(timeout_of(identity))) })
        }
    }

    fn timeout_of(identity: &str) -> RpcError {
        RpcError::Timeout {
            rpc: "unscripted".into(),
            identity: identity.to_string(),
            timeout: Duration::ZERO,
        }
    }

    pub(crate) fn agents(t: &Arc<Scripted>) -> Agents {
        Agents::new(
            t.clone(),
            Arc::new(Metrics::new("test")),
            Duration::from_secs(2),
            "secret".into(),
        )
    }

    fn token() -> TokenRequest {
        TokenRequest {
            token: "secret".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_is_tried_as_its_policy_says() {
        // jwt: three tries, the last succeeds
        let t = Arc::new(Scripted::default());
        t.answer(Err(timeout()))
            .answer(Err(timeout()))
            .ok(serde_json::json!({"jwt": "j", "ecdh_public": "e"}));
        let r = agents(&t).call::<Jwt>("n1", &token()).await;
        assert_eq!(r.map(|r| r.jwt).ok().as_deref(), Some("j"));
        assert_eq!(t.asked(), ["choria_provision#jwt"; 3]);

        // gencsr: once, whatever happens
        let t = Arc::new(Scripted::default());
        t.answer(Err(timeout())).ok(serde_json::json!({}));
        let r = agents(&t).call::<GenCsr>("n1", &Default::default()).await;
        assert!(matches!(r, Err(RpcError::Timeout { .. })));
        assert_eq!(t.asked().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_retried_and_then_reported_with_its_status() {
        let t = Arc::new(Scripted::default());
        for _ in 0..3 {
            t.answer(Ok(reply(StatusCode::Aborted, Value::Null)));
        }
        let r = agents(&t).call::<Shutdown>("n1", &token()).await;
        assert!(
            matches!(&r, Err(RpcError::Failed { rpc, code: StatusCode::Aborted, .. }) if rpc == "choria_provision#shutdown"),
            "{r:?}"
        );
        assert_eq!(t.asked().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_answered_with_garbage_is_bad_data_and_a_pong_is_read() {
        for garbage in [
            serde_json::json!({"pong": "soon"}),
            serde_json::json!([1, 2]),
            serde_json::json!("pong"),
        ] {
            let t = Arc::new(Scripted::default());
            t.ok(garbage.clone());
            let r = agents(&t).call::<Ping>("n1", &serde_json::json!({})).await;
            assert!(
                matches!(r, Err(RpcError::BadData { .. })),
                "{garbage}: {r:?}"
            );
        }
        let t = Arc::new(Scripted::default());
        t.ok(serde_json::json!({"pong": 1_796_471_288}));
        let r = agents(&t).call::<Ping>("n1", &serde_json::json!({})).await;
        assert_eq!(r.ok().map(|p| p.pong), Some(1_796_471_288));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_whose_data_is_not_the_actions_reply_type_is_an_error() {
        let t = Arc::new(Scripted::default());
        t.ok(serde_json::json!({"message": 7}));
        let r = agents(&t).call::<Reprovision>("n1", &token()).await;
        assert!(matches!(r, Err(RpcError::BadData { .. })), "{r:?}");
        let t = Arc::new(Scripted::default());
        t.ok(serde_json::json!({"message": "bye"}));
        let r = agents(&t).call::<Reprovision>("n1", &token()).await;
        assert_eq!(
            r.ok(),
            Some(MessageReply {
                message: "bye".into()
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_time_left_is_not_sent_and_a_slow_action_gets_longer() {
        let t = Arc::new(Scripted::default());
        let r = agents(&t)
            .call_within::<Restart>("n1", &Default::default(), Duration::ZERO)
            .await;
        assert!(matches!(r, Err(RpcError::NoTime { .. })), "{r:?}");
        assert!(t.asked().is_empty());

        t.ok(serde_json::json!({"message": "ok"}));
        let _ = agents(&t)
            .call::<ReleaseUpdate>("n1", &Default::default())
            .await;
        let asked = t.asked.lock().unwrap().clone();
        assert_eq!(asked[0].3, Duration::from_secs(60));
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(1) >= Duration::from_millis(250));
        assert!(backoff(10) <= Duration::from_millis(6000));
    }
}
