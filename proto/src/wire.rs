//! Which protocol version a message speaks, and decoding either.
//!
//! Upstream picks the version from the security technology: x509 networks speak v1,
//! Organization Issuer (ed25519) networks speak v2. A receiver tells them apart by the
//! transport's `protocol`.

use std::borrow::Cow;

use serde::Deserialize;

use crate::error::{Layer, ProtoError};
use crate::{v1, v2};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// A request as a server receives it, whichever version it came in.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub version: Version,
    pub request: v1::Request,
    pub reply_to: Option<String>,
    pub sender: Option<String>,
    /// v2 only: the caller's JWT, the signature and the request JSON it covers.
    pub caller_jwt: Option<String>,
    pub signature: Vec<u8>,
    pub signed: Vec<u8>,
}

#[derive(Deserialize)]
struct Peek {
    protocol: String,
}

/// The version of a published message, from its transport's `protocol`.
pub fn version_of(bytes: &[u8]) -> Result<Version, ProtoError> {
    v1::check_size(bytes)?;
    let peek: Peek = v1::decode_json(Layer::Transport, bytes)?;
    match peek.protocol.as_str() {
        v1::TRANSPORT_V1 => Ok(Version::V1),
        v2::TRANSPORT_V2 => Ok(Version::V2),
        other => Err(ProtoError::WrongProtocol {
            layer: Layer::Transport,
            expected: "choria:transport:1 or io.choria.protocol.v2.transport",
            got: other.chars().take(64).collect(),
        }),
    }
}

/// Decodes a request of either version.
pub fn decode_request(bytes: &[u8]) -> Result<Incoming, ProtoError> {
    match version_of(bytes)? {
        Version::V1 => {
            let r = v1::decode_request(bytes)?;
            Ok(Incoming {
                version: Version::V1,
                request: r.request,
                reply_to: r.reply_to,
                sender: r.sender,
                caller_jwt: None,
                signature: Vec::new(),
                signed: Vec::new(),
            })
        }
        Version::V2 => {
            let r = v2::decode_request(bytes)?;
            Ok(Incoming {
                version: Version::V2,
                request: r.request,
                reply_to: r.reply_to,
                sender: r.sender,
                caller_jwt: Some(r.secure.caller),
                signature: r.signature,
                signed: r.signed,
            })
        }
    }
}

/// Decodes a reply of either version into the neutral form.
pub fn decode_reply(bytes: &[u8]) -> Result<(Version, v1::Reply), ProtoError> {
    match version_of(bytes)? {
        Version::V1 => Ok((Version::V1, v1::decode_reply(bytes)?)),
        Version::V2 => Ok((Version::V2, v2::decode_reply(bytes)?)),
    }
}

#[derive(Deserialize)]
struct SenderPeek<'a> {
    #[serde(borrow, default)]
    headers: Option<SenderHeaders<'a>>,
}

/// The transport headers that name a reply's sender: `mc_sender` in v1, `sender` in v2.
#[derive(Deserialize)]
struct SenderHeaders<'a> {
    #[serde(borrow, default)]
    mc_sender: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sender: Option<Cow<'a, str>>,
}

/// The sender a reply's transport headers name, read without decoding the reply they carry
/// (no base64, no inner JSON, no hash); `None` for anything that is not such a transport.
/// It is what the server says about itself, as the reply's own `senderid` is: enough to pass
/// over the replies of servers the reader does not work on, or to name a server to ask (as a
/// discovery reply does), never to record or to trust.
pub fn reply_sender_hint(bytes: &[u8]) -> Option<String> {
    v1::check_size(bytes).ok()?;
    let peek: SenderPeek = serde_json::from_slice(bytes).ok()?;
    let headers = peek.headers?;
    headers.mc_sender.or(headers.sender).map(Cow::into_owned)
}

/// Encodes a reply in `version`.
pub fn encode_reply(version: Version, reply: &v1::Reply) -> Result<Vec<u8>, ProtoError> {
    match version {
        Version::V1 => reply.encode(),
        Version::V2 => v2::encode_reply(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply from `sender` to an `agent` request, encoded in each version.
    fn encoded_replies(agent: &str, sender: &str, message: &[u8]) -> Vec<(Version, Vec<u8>)> {
        let filter = v1::Filter::default();
        let r = v1::Request::new(agent, "provisioning", "choria=p", "p", 60, filter, b"{}");
        let reply = v1::Reply::new(&r.envelope, sender, message);
        [Version::V1, Version::V2]
            .into_iter()
            .map(|v| (v, encode_reply(v, &reply).unwrap()))
            .collect()
    }

    #[test]
    fn versions_are_told_apart_and_unknown_ones_refused() {
        for (v, bytes) in encoded_replies("rpcutil", "n1", b"{}") {
            let (got, back) = decode_reply(&bytes).unwrap();
            assert_eq!(got, v);
            assert_eq!(back.message, "{}");
        }
        assert!(version_of(br#"{"protocol":"choria:transport:9"}"#).is_err());
        assert!(version_of(b"not json").is_err());
    }

    #[test]
    fn the_sender_hint_comes_from_either_versions_headers() {
        for (v, bytes) in encoded_replies("discovery", "n1.example.net", b"pong") {
            assert_eq!(
                reply_sender_hint(&bytes).as_deref(),
                Some("n1.example.net"),
                "{v:?}"
            );
        }
        // escapes are read as JSON reads them
        let escaped =
            br#"{"protocol":"choria:transport:1","data":"","headers":{"mc_sender":"n\u0031"}}"#;
        assert_eq!(reply_sender_hint(escaped).as_deref(), Some("n1"));
        for nothing in [
            &b"not json"[..],
            br#"{"protocol":"choria:transport:1","data":""}"#,
            br#"{"headers":{"mc_sender":5}}"#,
            br#"[1,2]"#,
        ] {
            assert_eq!(reply_sender_hint(nothing), None);
        }
        let huge = vec![b' '; v1::MAX_MESSAGE_BYTES + 1];
        assert_eq!(reply_sender_hint(&huge), None);
    }
}
