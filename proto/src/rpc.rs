//! The MCollective SimpleRPC body: what a request asks an agent to do and what it answers.
//!
//! In protocol v1 the request body travels as the request's `message` string (raw JSON as
//! upstream's RPC client sends it; upstream servers also accept it base64 encoded) and the
//! reply body as the reply's `message` string.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Layer, ProtoError};

/// `{"agent": ..., "action": ..., "data": {...}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    pub agent: String,
    pub action: String,
    #[serde(default = "empty_object")]
    pub data: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl RpcRequest {
    pub fn new(agent: &str, action: &str, data: Value) -> Self {
        RpcRequest {
            agent: agent.to_string(),
            action: action.to_string(),
            data,
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ProtoError> {
        serde_json::to_vec(self).map_err(|source| ProtoError::Encode {
            layer: Layer::RpcRequest,
            source,
        })
    }

    pub fn from_json(data: &[u8]) -> Result<Self, ProtoError> {
        let req: RpcRequest = serde_json::from_slice(data).map_err(|source| ProtoError::Json {
            layer: Layer::RpcRequest,
            source,
        })?;
        if !req.data.is_object() {
            return Err(ProtoError::invalid(
                Layer::RpcRequest,
                "data",
                "must be an object",
            ));
        }
        Ok(req)
    }
}

/// SimpleRPC status codes, numbered as upstream numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Ok = 0,
    Aborted = 1,
    UnknownAction = 2,
    MissingData = 3,
    InvalidData = 4,
    UnknownError = 5,
}

impl StatusCode {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => StatusCode::Ok,
            1 => StatusCode::Aborted,
            2 => StatusCode::UnknownAction,
            3 => StatusCode::MissingData,
            4 => StatusCode::InvalidData,
            5 => StatusCode::UnknownError,
            _ => return None,
        })
    }
}

impl Serialize for StatusCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u8::deserialize(d)?;
        StatusCode::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown status code {code}")))
    }
}

/// `{"statuscode": 0, "statusmsg": "OK", "data": {...}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcReply {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    pub statuscode: StatusCode,
    #[serde(default)]
    pub statusmsg: String,
    #[serde(default)]
    pub data: Value,
}

impl RpcReply {
    pub fn ok(action: &str, data: Value) -> Self {
        RpcReply {
            action: action.to_string(),
            statuscode: StatusCode::Ok,
            statusmsg: "OK".into(),
            data,
        }
    }

    pub fn error(action: &str, code: StatusCode, msg: impl Into<String>) -> Self {
        RpcReply {
            action: action.to_string(),
            statuscode: code,
            statusmsg: msg.into(),
            data: Value::Object(Default::default()),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.statuscode == StatusCode::Ok
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ProtoError> {
        serde_json::to_vec(self).map_err(|source| ProtoError::Encode {
            layer: Layer::RpcReply,
            source,
        })
    }

    pub fn from_json(data: &[u8]) -> Result<Self, ProtoError> {
        serde_json::from_slice(data).map_err(|source| ProtoError::Json {
            layer: Layer::RpcReply,
            source,
        })
    }

    /// Decodes `data` into an action's typed output.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProtoError> {
        serde_json::from_value(self.data.clone()).map_err(|source| ProtoError::Json {
            layer: Layer::RpcReply,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trips_with_numeric_status() {
        let r = RpcReply::ok("jwt", serde_json::json!({"jwt": "x"}));
        let j = r.to_json().unwrap();
        assert!(String::from_utf8_lossy(&j).contains("\"statuscode\":0"));
        assert_eq!(RpcReply::from_json(&j).unwrap(), r);
    }

    #[test]
    fn unknown_status_code_is_rejected() {
        let e = RpcReply::from_json(br#"{"statuscode":9,"statusmsg":"","data":{}}"#);
        assert!(e.is_err());
    }

    #[test]
    fn request_data_must_be_object() {
        assert!(RpcRequest::from_json(br#"{"agent":"a","action":"b","data":[1]}"#).is_err());
        let r = RpcRequest::from_json(br#"{"agent":"a","action":"b"}"#).unwrap();
        assert!(r.data.is_object());
    }
}
