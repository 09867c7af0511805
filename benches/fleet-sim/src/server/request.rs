//! One request from the wire to its reply: decoding, the protocol version, a v2 caller's
//! signature, TTL, collective and filter, the injected reply faults (timeout, garbage, wrong
//! sender, replay), the RPC layer's agent and DDL checks, and `rpcutil#inventory`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use proto::agents::InventoryReply;
use proto::rpc::{RpcReply, RpcRequest, StatusCode};
use proto::v1;
use proto::wire::{self, Incoming, Version};
use proto::{subject, ProtoError};
use serde_json::{json, Value};

use super::{Report, SimServer, AGENTS};
use crate::faults::Fault;

impl SimServer {
    pub(super) async fn handle(self: &Arc<Self>, payload: &[u8]) {
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
                // it goes before its answer does
                if self.spec.fault == Some(Fault::SilentRestart)
                    && env.agent == "choria_provision"
                    && reply.action == "restart"
                {
                    return;
                }
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
            ("rpcutil", "ping") => RpcReply::ok(&action, json!({"pong": proto::unix_now()})),
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
}
