//! Choria protocol version 1: the five nested layers of every request and reply.
//!
//! A request on the wire is a **transport** whose `data` is the base64 of a **secure request**
//! JSON document; the secure request's `message` is the **request** JSON as a string, with a
//! `signature` and `pubcert` (both `"insecure"` when protocol security is off, as it is for
//! provisioning); the request's `message` is the RPC body and its `envelope` says who sent it,
//! to which collective and agent, and for how long it is valid.
//!
//! A reply is a transport whose `data` is the base64 of a **secure reply**: the **reply** JSON
//! as a string plus `hash`, the base64 SHA-256 of that string. The reply's `message` is the RPC
//! reply body.
//!
//! Field names and protocol ids are upstream's, so the structures here can be read against
//! `schemas/protocol/v1/*.json`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Layer, ProtoError};

pub const TRANSPORT_V1: &str = "choria:transport:1";
pub const SECURE_REQUEST_V1: &str = "choria:secure:request:1";
pub const REQUEST_V1: &str = "choria:request:1";
pub const SECURE_REPLY_V1: &str = "choria:secure:reply:1";
pub const REPLY_V1: &str = "choria:reply:1";

/// Requests older than their TTL are dropped by servers; upstream's minimum is 30 s.
pub const MIN_TTL: i64 = 30;
pub const DEFAULT_TTL: i64 = 60;

/// A request or reply larger than this is refused before any JSON parsing (NATS' own
/// default maximum payload is 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// One fact comparison of a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactFilter {
    pub fact: String,
    pub operator: String,
    pub value: String,
}

/// Which servers a request is for; all lists empty means every server that gets it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub fact: Vec<FactFilter>,
    #[serde(default)]
    pub cf_class: Vec<String>,
    #[serde(default)]
    pub agent: Vec<String>,
    #[serde(default)]
    pub identity: Vec<String>,
    #[serde(default)]
    pub compound: Vec<Vec<serde_json::Map<String, serde_json::Value>>>,
}

impl Filter {
    pub fn agent(agent: &str) -> Self {
        Filter {
            agent: vec![agent.to_string()],
            ..Default::default()
        }
    }

    /// True when a server with `identity` and `agents` is selected by this filter. Fact,
    /// class and compound filters are not evaluated by provisioning-mode servers we simulate;
    /// a filter that uses them matches nothing, which is the safe answer.
    pub fn matches(&self, identity: &str, agents: &[&str]) -> bool {
        if !self.fact.is_empty() || !self.cf_class.is_empty() || !self.compound.is_empty() {
            return false;
        }
        if !self.identity.is_empty() && !self.identity.iter().any(|i| i == identity) {
            return false;
        }
        self.agent.iter().all(|a| agents.contains(&a.as_str()))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportHeaders {
    #[serde(rename = "reply-to", default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mc_sender: Option<String>,
    #[serde(rename = "seen-by", default, skip_serializing_if = "Vec::is_empty")]
    pub seen_by: Vec<[String; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<serde_json::Value>,
}

/// The outer layer put on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transport {
    pub protocol: String,
    /// Base64 of the secure request or secure reply JSON.
    pub data: String,
    pub headers: TransportHeaders,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureRequest {
    pub protocol: String,
    /// The request JSON document, as a string.
    pub message: String,
    pub signature: String,
    pub pubcert: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub requestid: String,
    pub senderid: String,
    pub callerid: String,
    pub collective: String,
    pub agent: String,
    pub ttl: i64,
    pub time: i64,
    pub filter: Filter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub protocol: String,
    /// The RPC body (raw JSON, or base64 of it from older clients).
    pub message: String,
    pub envelope: RequestEnvelope,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureReply {
    pub protocol: String,
    /// The reply JSON document, as a string.
    pub message: String,
    /// Base64 SHA-256 of `message`.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub requestid: String,
    pub senderid: String,
    pub agent: String,
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub protocol: String,
    pub message: String,
    pub envelope: ReplyEnvelope,
}

/// Signs the request JSON for the secure request layer. Provisioning runs with protocol
/// security off, which is [`Insecure`]; a signing implementation can be plugged in without
/// touching the encoding.
pub trait RequestSigner: Send + Sync {
    /// Returns `(signature, pubcert)` for the secure request.
    fn sign(&self, request_json: &[u8]) -> (String, String);
}

/// What upstream sends when protocol security is disabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Insecure;

impl RequestSigner for Insecure {
    fn sign(&self, _request_json: &[u8]) -> (String, String) {
        ("insecure".into(), "insecure".into())
    }
}

impl Request {
    /// A new request for `agent` with a fresh request id and the current time.
    pub fn new(
        agent: &str,
        collective: &str,
        callerid: &str,
        senderid: &str,
        ttl: i64,
        filter: Filter,
        body: &[u8],
    ) -> Self {
        Request {
            protocol: REQUEST_V1.into(),
            message: String::from_utf8_lossy(body).into_owned(),
            envelope: RequestEnvelope {
                requestid: crate::new_request_id(),
                senderid: senderid.into(),
                callerid: callerid.into(),
                collective: collective.into(),
                agent: agent.into(),
                ttl: ttl.max(MIN_TTL),
                time: crate::unix_now(),
                filter,
            },
        }
    }

    /// The RPC body. Upstream servers base64-decode the message when they can and use it as
    /// is otherwise; we do the same so old and new clients both work.
    pub fn body(&self) -> Vec<u8> {
        match B64.decode(self.message.as_bytes()) {
            Ok(decoded) => decoded,
            Err(_) => self.message.as_bytes().to_vec(),
        }
    }

    /// True when the request is past its TTL at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.envelope.time.saturating_add(self.envelope.ttl) < now
    }

    /// Encodes the request through all layers into the bytes to publish.
    pub fn encode(
        &self,
        reply_to: &str,
        sender: &str,
        signer: &dyn RequestSigner,
    ) -> Result<Vec<u8>, ProtoError> {
        let request_json = encode_json(Layer::Request, self)?;
        let (signature, pubcert) = signer.sign(&request_json);
        let secure = SecureRequest {
            protocol: SECURE_REQUEST_V1.into(),
            message: String::from_utf8_lossy(&request_json).into_owned(),
            signature,
            pubcert,
        };
        let secure_json = encode_json(Layer::SecureRequest, &secure)?;
        let transport = Transport {
            protocol: TRANSPORT_V1.into(),
            data: B64.encode(secure_json),
            headers: TransportHeaders {
                reply_to: Some(reply_to.into()),
                mc_sender: Some(sender.into()),
                ..Default::default()
            },
        };
        encode_json(Layer::Transport, &transport)
    }

    fn validate(&self) -> Result<(), ProtoError> {
        check_protocol(Layer::Request, REQUEST_V1, &self.protocol)?;
        if self.message.is_empty() {
            return Err(ProtoError::invalid(Layer::Request, "message", "is empty"));
        }
        let e = &self.envelope;
        check_request_id(Layer::Request, &e.requestid)?;
        for (field, value) in [
            ("callerid", &e.callerid),
            ("collective", &e.collective),
            ("agent", &e.agent),
        ] {
            if value.is_empty() {
                return Err(ProtoError::invalid(Layer::Request, field, "is empty"));
            }
        }
        if e.ttl < MIN_TTL {
            return Err(ProtoError::invalid(
                Layer::Request,
                "ttl",
                format!("{} is below the minimum of {MIN_TTL}", e.ttl),
            ));
        }
        Ok(())
    }
}

/// A request as a server receives it.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub request: Request,
    pub secure: SecureRequest,
    pub reply_to: Option<String>,
    pub sender: Option<String>,
}

/// Decodes a published request, checking every layer.
pub fn decode_request(bytes: &[u8]) -> Result<IncomingRequest, ProtoError> {
    let transport = decode_transport(bytes)?;
    let secure_json = decode_b64(Layer::Transport, "data", &transport.data)?;
    let secure: SecureRequest = decode_json(Layer::SecureRequest, &secure_json)?;
    check_protocol(Layer::SecureRequest, SECURE_REQUEST_V1, &secure.protocol)?;
    for (field, value) in [
        ("message", &secure.message),
        ("signature", &secure.signature),
        ("pubcert", &secure.pubcert),
    ] {
        if value.is_empty() {
            return Err(ProtoError::invalid(Layer::SecureRequest, field, "is empty"));
        }
    }
    let request: Request = decode_json(Layer::Request, secure.message.as_bytes())?;
    request.validate()?;
    Ok(IncomingRequest {
        request,
        secure,
        reply_to: transport.headers.reply_to,
        sender: transport.headers.mc_sender,
    })
}

impl Reply {
    /// A reply to `request` from `sender` carrying `body`.
    pub fn new(request: &RequestEnvelope, sender: &str, body: &[u8]) -> Self {
        Reply {
            protocol: REPLY_V1.into(),
            message: String::from_utf8_lossy(body).into_owned(),
            envelope: ReplyEnvelope {
                requestid: request.requestid.clone(),
                senderid: sender.into(),
                agent: request.agent.clone(),
                time: crate::unix_now(),
            },
        }
    }

    /// Encodes the reply through all layers into the bytes to publish.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let reply_json = encode_json(Layer::Reply, self)?;
        let secure = SecureReply {
            protocol: SECURE_REPLY_V1.into(),
            hash: B64.encode(Sha256::digest(&reply_json)),
            message: String::from_utf8_lossy(&reply_json).into_owned(),
        };
        let secure_json = encode_json(Layer::SecureReply, &secure)?;
        let transport = Transport {
            protocol: TRANSPORT_V1.into(),
            data: B64.encode(secure_json),
            headers: TransportHeaders {
                mc_sender: Some(self.envelope.senderid.clone()),
                ..Default::default()
            },
        };
        encode_json(Layer::Transport, &transport)
    }

    fn validate(&self) -> Result<(), ProtoError> {
        check_protocol(Layer::Reply, REPLY_V1, &self.protocol)?;
        if self.message.is_empty() {
            return Err(ProtoError::invalid(Layer::Reply, "message", "is empty"));
        }
        check_request_id(Layer::Reply, &self.envelope.requestid)?;
        if self.envelope.agent.is_empty() {
            return Err(ProtoError::invalid(Layer::Reply, "agent", "is empty"));
        }
        Ok(())
    }
}

/// Decodes a published reply, verifying the secure reply's hash.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, ProtoError> {
    let transport = decode_transport(bytes)?;
    let secure_json = decode_b64(Layer::Transport, "data", &transport.data)?;
    let secure: SecureReply = decode_json(Layer::SecureReply, &secure_json)?;
    check_protocol(Layer::SecureReply, SECURE_REPLY_V1, &secure.protocol)?;
    let expected = B64.encode(Sha256::digest(secure.message.as_bytes()));
    if expected != secure.hash {
        return Err(ProtoError::HashMismatch);
    }
    let reply: Reply = decode_json(Layer::Reply, secure.message.as_bytes())?;
    reply.validate()?;
    Ok(reply)
}

fn decode_transport(bytes: &[u8]) -> Result<Transport, ProtoError> {
    check_size(bytes)?;
    let transport: Transport = decode_json(Layer::Transport, bytes)?;
    check_protocol(Layer::Transport, TRANSPORT_V1, &transport.protocol)?;
    Ok(transport)
}

/// Refuses a message over [`MAX_MESSAGE_BYTES`] before any parsing.
pub(crate) fn check_size(bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtoError::invalid(
            Layer::Transport,
            "data",
            format!(
                "{} bytes is over the {MAX_MESSAGE_BYTES} byte limit",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_protocol(
    layer: Layer,
    expected: &'static str,
    got: &str,
) -> Result<(), ProtoError> {
    if got != expected {
        return Err(ProtoError::WrongProtocol {
            layer,
            expected,
            got: got.chars().take(64).collect(),
        });
    }
    Ok(())
}

pub(crate) fn check_request_id(layer: Layer, id: &str) -> Result<(), ProtoError> {
    if id.len() != 32 {
        return Err(ProtoError::invalid(
            layer,
            "requestid",
            format!("must be 32 characters, got {}", id.len()),
        ));
    }
    Ok(())
}

pub(crate) fn decode_b64(
    layer: Layer,
    field: &'static str,
    s: &str,
) -> Result<Vec<u8>, ProtoError> {
    B64.decode(s.as_bytes())
        .map_err(|_| ProtoError::Base64 { layer, field })
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    layer: Layer,
    b: &[u8],
) -> Result<T, ProtoError> {
    serde_json::from_slice(b).map_err(|source| ProtoError::Json { layer, source })
}

pub(crate) fn encode_json<T: Serialize>(layer: Layer, v: &T) -> Result<Vec<u8>, ProtoError> {
    serde_json::to_vec(v).map_err(|source| ProtoError::Encode { layer, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `choria_provision#jwt` request, the fixture of the protocol tests.
    pub(crate) fn sample() -> Request {
        Request::new(
            "choria_provision",
            "provisioning",
            "choria=provisioner",
            "prov1",
            60,
            Filter::agent("choria_provision"),
            br#"{"agent":"choria_provision","action":"jwt","data":{}}"#,
        )
    }

    #[test]
    fn request_round_trips() {
        let r = sample();
        let bytes = r
            .encode("provisioning.reply.x.y", "prov1", &Insecure)
            .unwrap();
        let got = decode_request(&bytes).unwrap();
        assert_eq!(got.request, r);
        assert_eq!(got.reply_to.as_deref(), Some("provisioning.reply.x.y"));
        assert_eq!(got.secure.signature, "insecure");
        assert_eq!(got.request.body(), r.message.as_bytes());
    }

    #[test]
    fn base64_bodies_are_decoded_like_upstream() {
        let mut r = sample();
        r.message = B64.encode(b"ping");
        assert_eq!(r.body(), b"ping");
    }

    #[test]
    fn reply_round_trips_and_hash_is_checked() {
        let r = sample();
        let reply = Reply::new(&r.envelope, "node1", br#"{"statuscode":0}"#);
        let bytes = reply.encode().unwrap();
        assert_eq!(decode_reply(&bytes).unwrap(), reply);

        // tamper with the reply inside the secure layer
        let mut t: Transport = serde_json::from_slice(&bytes).unwrap();
        let mut s: SecureReply = serde_json::from_slice(&B64.decode(&t.data).unwrap()).unwrap();
        s.message = s.message.replace("node1", "node2");
        t.data = B64.encode(serde_json::to_vec(&s).unwrap());
        let tampered = serde_json::to_vec(&t).unwrap();
        assert!(matches!(
            decode_reply(&tampered),
            Err(ProtoError::HashMismatch)
        ));
    }

    #[test]
    fn expiry_uses_time_plus_ttl() {
        let r = sample();
        assert!(!r.is_expired(r.envelope.time + 60));
        assert!(r.is_expired(r.envelope.time + 61));
    }

    #[test]
    fn filter_matching() {
        let f = Filter::agent("choria_provision");
        assert!(f.matches("n1", &["rpcutil", "choria_provision"]));
        assert!(!f.matches("n1", &["rpcutil"]));
        let f = Filter {
            identity: vec!["n2".into()],
            ..Default::default()
        };
        assert!(!f.matches("n1", &[]));
        assert!(f.matches("n2", &[]));
    }
}
