//! Errors for everything that can be wrong with a message that came off the wire.
//!
//! Each variant names the protocol layer and what was wrong with it, so a log line tells an
//! operator which peer sent what.

use thiserror::Error;

/// A protocol layer, named as upstream names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Transport,
    SecureRequest,
    Request,
    SecureReply,
    Reply,
    RpcRequest,
    RpcReply,
    Lifecycle,
    Ddl,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Layer::Transport => "transport",
            Layer::SecureRequest => "secure request",
            Layer::Request => "request",
            Layer::SecureReply => "secure reply",
            Layer::Reply => "reply",
            Layer::RpcRequest => "rpc request",
            Layer::RpcReply => "rpc reply",
            Layer::Lifecycle => "lifecycle event",
            Layer::Ddl => "ddl",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("{layer}: not valid JSON: {source}")]
    Json {
        layer: Layer,
        #[source]
        source: serde_json::Error,
    },
    #[error("{layer}: could not encode JSON: {source}")]
    Encode {
        layer: Layer,
        #[source]
        source: serde_json::Error,
    },
    #[error("{layer}: field {field} is not valid base64")]
    Base64 { layer: Layer, field: &'static str },
    #[error("{layer}: field {field} is not valid UTF-8")]
    Utf8 { layer: Layer, field: &'static str },
    #[error("{layer}: protocol is {got:?}, expected {expected:?}")]
    WrongProtocol {
        layer: Layer,
        expected: &'static str,
        got: String,
    },
    #[error("{layer}: field {field}: {reason}")]
    Invalid {
        layer: Layer,
        field: &'static str,
        reason: String,
    },
    #[error("secure reply: hash does not match the message")]
    HashMismatch,
    #[error("request {request_id} expired: created {created}, ttl {ttl}s")]
    Expired {
        request_id: String,
        created: i64,
        ttl: i64,
    },
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    #[error("agent {agent} has no action {action}")]
    UnknownAction { agent: String, action: String },
    #[error("input {input}: {reason}")]
    InvalidInput { input: String, reason: String },
    #[error("missing required input {0}")]
    MissingInput(String),
}

impl ProtoError {
    pub(crate) fn invalid(layer: Layer, field: &'static str, reason: impl Into<String>) -> Self {
        ProtoError::Invalid {
            layer,
            field,
            reason: reason.into(),
        }
    }
}
