//! The `choria_provision` agent: upstream's provisioning lock (one sender.caller for two
//! minutes), the provisioning token, the provisioning-mode checks, and each action's
//! arguments handed to what carries it out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::agents::{
    ConfigureRequest, CsrRequest, JwtReply, MessageReply, RestartRequest, TokenRequest,
};
use proto::lifecycle::EventType;
use proto::rpc::{RpcReply, StatusCode};
use proto::v1;
use serde_json::Value;

use super::{Report, SimServer, LOCK_WINDOW};

impl SimServer {
    pub(super) async fn provision_action(
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
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    data: &Value,
) -> Result<T, (StatusCode, String)> {
    serde_json::from_value(data.clone()).map_err(|e| (StatusCode::InvalidData, e.to_string()))
}

pub(super) fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, (StatusCode, String)> {
    serde_json::to_value(v).map_err(|e| (StatusCode::UnknownError, e.to_string()))
}
