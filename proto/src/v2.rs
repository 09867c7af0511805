//! Choria protocol version 2, spoken in Organization Issuer (ed25519) networks.
//!
//! The layers are those of [`crate::v1`], with upstream's v2 names and encodings: every
//! nested document and body is a byte field, so it travels as base64 (the transport's `data`,
//! the secure request's `request`, the request's and reply's `message`, the secure reply's
//! `reply`). A secure request carries the caller's JWT in `caller` and an ed25519 signature
//! (base64) of the request JSON in `signature`; a secure reply carries `hash`, the base64
//! SHA-256 of the reply JSON. Times are Unix nanoseconds.
//!
//! The provisioner and the fleet simulator work on the protocol-neutral
//! [`crate::v1::Request`] and [`crate::v1::Reply`]; this module maps them to and from the
//! v2 layers, and [`crate::wire`] picks the version.
//!
//! Upstream's `reply.json` schema names the reply protocol `io.choria.protocol.v2.request`
//! while upstream's code sends `io.choria.protocol.v2.reply`; we follow the code, which is
//! what servers and clients actually exchange.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Layer, ProtoError};
use crate::v1::{
    self, check_protocol, check_request_id, check_size, decode_b64, decode_json, encode_json,
    Filter,
};

pub const TRANSPORT_V2: &str = "io.choria.protocol.v2.transport";
pub const SECURE_REQUEST_V2: &str = "io.choria.protocol.v2.secure_request";
pub const REQUEST_V2: &str = "io.choria.protocol.v2.request";
pub const SECURE_REPLY_V2: &str = "io.choria.protocol.v2.secure_reply";
pub const REPLY_V2: &str = "io.choria.protocol.v2.reply";

/// What upstream puts in `signature` when protocol security is off.
pub const INSECURE_SIGNATURE: &[u8] = b"insecure";

const NANOS: i64 = 1_000_000_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transport {
    pub protocol: String,
    /// Base64 of the secure request or secure reply JSON.
    pub data: String,
    #[serde(default)]
    pub headers: TransportHeaders,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureRequest {
    pub protocol: String,
    /// Base64 of the request JSON.
    pub request: String,
    /// Base64 of the ed25519 signature of the request JSON (or of `insecure`).
    pub signature: String,
    /// The caller's JWT.
    pub caller: String,
    /// A delegated signer's JWT (AAA); we never set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub protocol: String,
    /// Base64 of the RPC body.
    pub message: String,
    pub id: String,
    pub sender: String,
    pub caller: String,
    pub collective: String,
    pub agent: String,
    pub ttl: i64,
    /// Unix nanoseconds.
    pub time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureReply {
    pub protocol: String,
    /// Base64 of the reply JSON.
    pub reply: String,
    /// Base64 SHA-256 of the reply JSON.
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub protocol: String,
    /// Base64 of the RPC reply body.
    pub message: String,
    /// The id of the request answered.
    pub request: String,
    pub sender: String,
    pub agent: String,
    /// Unix nanoseconds.
    pub time: i64,
}

/// Signs requests for the secure request layer: the caller's JWT and an ed25519 signature
/// of the request JSON.
pub trait Signer: Send + Sync {
    fn caller_jwt(&self) -> String;
    fn sign(&self, request_json: &[u8]) -> Vec<u8>;
}

/// A request as a server receives it: the neutral request plus what proves who sent it.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub request: v1::Request,
    pub secure: SecureRequest,
    /// The request JSON the signature covers.
    pub signed: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    pub reply_to: Option<String>,
    pub sender: Option<String>,
}

/// Encodes `req` through the v2 layers, signed by `signer`.
pub fn encode_request(
    req: &v1::Request,
    reply_to: &str,
    sender: &str,
    signer: &dyn Signer,
) -> Result<Vec<u8>, ProtoError> {
    let e = &req.envelope;
    let request = Request {
        protocol: REQUEST_V2.into(),
        message: B64.encode(req.body()),
        id: e.requestid.clone(),
        sender: e.senderid.clone(),
        caller: e.callerid.clone(),
        collective: e.collective.clone(),
        agent: e.agent.clone(),
        ttl: e.ttl,
        time: e.time.saturating_mul(NANOS),
        filter: Some(e.filter.clone()),
    };
    let request_json = encode_json(Layer::Request, &request)?;
    let secure = SecureRequest {
        protocol: SECURE_REQUEST_V2.into(),
        signature: B64.encode(signer.sign(&request_json)),
        request: B64.encode(&request_json),
        caller: signer.caller_jwt(),
        signer: None,
    };
    transport(
        Layer::SecureRequest,
        &secure,
        TransportHeaders {
            reply: Some(reply_to.into()),
            sender: Some(sender.into()),
            federation: None,
        },
    )
}

/// Decodes a published v2 request, checking every layer (not the signature: who may call
/// is the receiver's policy).
pub fn decode_request(bytes: &[u8]) -> Result<IncomingRequest, ProtoError> {
    let transport = decode_transport(bytes)?;
    let secure_json = decode_b64(Layer::Transport, "data", &transport.data)?;
    let secure: SecureRequest = decode_json(Layer::SecureRequest, &secure_json)?;
    check_protocol(Layer::SecureRequest, SECURE_REQUEST_V2, &secure.protocol)?;
    if secure.caller.is_empty() {
        return Err(ProtoError::invalid(
            Layer::SecureRequest,
            "caller",
            "is empty",
        ));
    }
    let signature = decode_b64(Layer::SecureRequest, "signature", &secure.signature)?;
    if signature.is_empty() {
        return Err(ProtoError::invalid(
            Layer::SecureRequest,
            "signature",
            "is empty",
        ));
    }
    let signed = decode_b64(Layer::SecureRequest, "request", &secure.request)?;
    let r: Request = decode_json(Layer::Request, &signed)?;
    check_protocol(Layer::Request, REQUEST_V2, &r.protocol)?;
    check_request_id(Layer::Request, &r.id)?;
    for (field, value) in [
        ("message", &r.message),
        ("sender", &r.sender),
        ("caller", &r.caller),
        ("collective", &r.collective),
        ("agent", &r.agent),
    ] {
        if value.is_empty() {
            return Err(ProtoError::invalid(Layer::Request, field, "is empty"));
        }
    }
    // the body must be base64 here; v1's raw-JSON leniency does not apply
    decode_b64(Layer::Request, "message", &r.message)?;
    if r.ttl < 1 || r.time < 1 {
        return Err(ProtoError::invalid(
            Layer::Request,
            "ttl",
            "ttl and time must be positive",
        ));
    }
    let request = v1::Request {
        protocol: REQUEST_V2.into(),
        // kept as base64: v1::Request::body decodes it
        message: r.message,
        envelope: v1::RequestEnvelope {
            requestid: r.id,
            senderid: r.sender,
            callerid: r.caller,
            collective: r.collective,
            agent: r.agent,
            ttl: r.ttl,
            time: r.time / NANOS,
            filter: r.filter.unwrap_or_default(),
        },
    };
    Ok(IncomingRequest {
        request,
        secure,
        signed,
        signature,
        reply_to: transport.headers.reply,
        sender: transport.headers.sender,
    })
}

/// Encodes `reply` (whose `message` is the RPC reply body) through the v2 layers. Replies
/// are not signed: provisioning-mode servers do not sign theirs.
pub fn encode_reply(reply: &v1::Reply) -> Result<Vec<u8>, ProtoError> {
    let e = &reply.envelope;
    let r = Reply {
        protocol: REPLY_V2.into(),
        message: B64.encode(reply.message.as_bytes()),
        request: e.requestid.clone(),
        sender: e.senderid.clone(),
        agent: e.agent.clone(),
        time: now_nanos(),
    };
    let reply_json = encode_json(Layer::Reply, &r)?;
    let secure = SecureReply {
        protocol: SECURE_REPLY_V2.into(),
        hash: B64.encode(Sha256::digest(&reply_json)),
        reply: B64.encode(&reply_json),
        signature: None,
        sender: None,
    };
    transport(
        Layer::SecureReply,
        &secure,
        TransportHeaders {
            sender: Some(e.senderid.clone()),
            ..Default::default()
        },
    )
}

/// Decodes a published v2 reply into the neutral form, verifying the hash.
pub fn decode_reply(bytes: &[u8]) -> Result<v1::Reply, ProtoError> {
    let transport = decode_transport(bytes)?;
    let secure_json = decode_b64(Layer::Transport, "data", &transport.data)?;
    let secure: SecureReply = decode_json(Layer::SecureReply, &secure_json)?;
    check_protocol(Layer::SecureReply, SECURE_REPLY_V2, &secure.protocol)?;
    let reply_json = decode_b64(Layer::SecureReply, "reply", &secure.reply)?;
    if B64.encode(Sha256::digest(&reply_json)) != secure.hash {
        return Err(ProtoError::HashMismatch);
    }
    let r: Reply = decode_json(Layer::Reply, &reply_json)?;
    check_protocol(Layer::Reply, REPLY_V2, &r.protocol)?;
    check_request_id(Layer::Reply, &r.request)?;
    for (field, value) in [("sender", &r.sender), ("agent", &r.agent)] {
        if value.is_empty() {
            return Err(ProtoError::invalid(Layer::Reply, field, "is empty"));
        }
    }
    let body = decode_b64(Layer::Reply, "message", &r.message)?;
    let message = String::from_utf8(body).map_err(|_| ProtoError::Utf8 {
        layer: Layer::Reply,
        field: "message",
    })?;
    Ok(v1::Reply {
        protocol: REPLY_V2.into(),
        message,
        envelope: v1::ReplyEnvelope {
            requestid: r.request,
            senderid: r.sender,
            agent: r.agent,
            time: r.time / NANOS,
        },
    })
}

fn transport<T: Serialize>(
    layer: Layer,
    secure: &T,
    headers: TransportHeaders,
) -> Result<Vec<u8>, ProtoError> {
    let secure_json = encode_json(layer, secure)?;
    encode_json(
        Layer::Transport,
        &Transport {
            protocol: TRANSPORT_V2.into(),
            data: B64.encode(secure_json),
            headers,
        },
    )
}

fn decode_transport(bytes: &[u8]) -> Result<Transport, ProtoError> {
    check_size(bytes)?;
    let transport: Transport = decode_json(Layer::Transport, bytes)?;
    check_protocol(Layer::Transport, TRANSPORT_V2, &transport.protocol)?;
    Ok(transport)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::tests::sample;

    struct Fixed;
    impl Signer for Fixed {
        fn caller_jwt(&self) -> String {
            "a.b.c".into()
        }
        fn sign(&self, request_json: &[u8]) -> Vec<u8> {
            Sha256::digest(request_json).to_vec()
        }
    }

    #[test]
    fn request_round_trips_with_its_signature() {
        let r = sample();
        let bytes = encode_request(&r, "provisioning.reply.x.y", "prov1", &Fixed).unwrap();
        let got = decode_request(&bytes).unwrap();
        assert_eq!(got.request.envelope, r.envelope);
        assert_eq!(got.request.body(), r.body());
        assert_eq!(got.secure.caller, "a.b.c");
        assert_eq!(got.signature, Sha256::digest(&got.signed).to_vec());
        assert_eq!(got.reply_to.as_deref(), Some("provisioning.reply.x.y"));
        // v1 bytes are not v2
        let v1_bytes = r
            .encode("provisioning.reply.x.y", "prov1", &v1::Insecure)
            .unwrap();
        assert!(matches!(
            decode_request(&v1_bytes),
            Err(ProtoError::WrongProtocol { .. })
        ));
    }

    #[test]
    fn discovery_bodies_survive_the_base64_layer() {
        let mut r = sample();
        // as the provisioner builds it for v1: the body base64 encoded
        r.message = B64.encode(b"ping");
        let bytes = encode_request(&r, "r", "s", &Fixed).unwrap();
        assert_eq!(decode_request(&bytes).unwrap().request.body(), b"ping");
    }

    #[test]
    fn reply_round_trips_and_hash_is_checked() {
        let r = sample();
        let reply = v1::Reply::new(&r.envelope, "node1", br#"{"statuscode":0}"#);
        let bytes = encode_reply(&reply).unwrap();
        let back = decode_reply(&bytes).unwrap();
        assert_eq!(back.message, reply.message);
        assert_eq!(back.envelope.requestid, reply.envelope.requestid);
        assert_eq!(back.envelope.senderid, "node1");

        let mut t: Transport = serde_json::from_slice(&bytes).unwrap();
        let mut s: SecureReply = serde_json::from_slice(&B64.decode(&t.data).unwrap()).unwrap();
        let json = String::from_utf8(B64.decode(&s.reply).unwrap()).unwrap();
        s.reply = B64.encode(json.replace("node1", "node2"));
        t.data = B64.encode(serde_json::to_vec(&s).unwrap());
        assert!(matches!(
            decode_reply(&serde_json::to_vec(&t).unwrap()),
            Err(ProtoError::HashMismatch)
        ));
    }
}
