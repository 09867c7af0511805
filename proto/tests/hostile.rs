//! Hostile bytes at every parser of outside data in this crate: deeply nested JSON at each
//! layer of an envelope and in RPC bodies and lifecycle events, and messages over the size
//! limits. Each is refused with an error; none may overflow the stack or be accepted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use base64::Engine;
use proto::lifecycle::Event;
use proto::rpc::{RpcReply, RpcRequest};
use proto::v1::{self, Filter, Insecure, Request};
use serde_json::Value;

/// `[[[[...]]]]`, `depth` deep.
fn nested(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn good_request() -> Vec<u8> {
    let body = RpcRequest::new("choria_provision", "jwt", serde_json::json!({"token": "t"}))
        .to_json()
        .expect("body");
    Request::new(
        "choria_provision",
        "provisioning",
        "choria=prov1.example.net",
        "prov1.example.net",
        60,
        Filter {
            identity: vec!["n1.example.net".into()],
            agent: vec!["choria_provision".into()],
            ..Default::default()
        },
        &body,
    )
    .encode("r", "s", &Insecure)
    .expect("encode")
}

/// A v1 request with `inner` in place of one layer: the secure request, or the request.
fn with_layer(layer: &str, inner: &str) -> Vec<u8> {
    let t: Value = serde_json::from_slice(&good_request()).expect("transport");
    let secure_bytes = base64::engine::general_purpose::STANDARD
        .decode(t["data"].as_str().expect("data"))
        .expect("base64");
    let mut secure: Value = serde_json::from_slice(&secure_bytes).expect("secure");
    let secure_text = match layer {
        "secure" => inner.to_string(),
        "request" => {
            secure["message"] = inner.into();
            secure.to_string()
        }
        _ => unreachable!("no such layer {layer}"),
    };
    serde_json::json!({
        "protocol": v1::TRANSPORT_V1,
        "data": b64(secure_text.as_bytes()),
        "headers": {},
    })
    .to_string()
    .into_bytes()
}

#[test]
fn deeply_nested_json_is_refused_at_every_layer() {
    let deep = nested(100_000);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![("transport", deep.clone().into_bytes())];
    for layer in ["secure", "request"] {
        cases.push((layer, with_layer(layer, &deep)));
    }
    for (layer, bytes) in &cases {
        assert!(
            bytes.len() < v1::MAX_MESSAGE_BYTES,
            "{layer}: over the size limit"
        );
        assert!(v1::decode_request(bytes).is_err(), "{layer}: v1 request");
        assert!(v1::decode_reply(bytes).is_err(), "{layer}: v1 reply");
        assert!(proto::wire::decode_request(bytes).is_err(), "{layer}: wire");
        assert!(
            proto::wire::decode_reply(bytes).is_err(),
            "{layer}: wire reply"
        );
        assert!(proto::v2::decode_request(bytes).is_err(), "{layer}: v2");
        assert!(proto::v2::decode_reply(bytes).is_err(), "{layer}: v2 reply");
    }
    // RPC bodies and lifecycle events, nested at the top and inside a field
    let in_field = format!(r#"{{"statuscode":0,"statusmsg":"OK","data":{deep}}}"#);
    assert!(RpcReply::from_json(deep.as_bytes()).is_err());
    assert!(RpcReply::from_json(in_field.as_bytes()).is_err());
    assert!(RpcRequest::from_json(deep.as_bytes()).is_err());
    let short = nested(40_000);
    let event = format!(
        r#"{{"protocol":"io.choria.lifecycle.v1.startup","identity":"a","component":{short}}}"#
    );
    assert!(Event::from_json(short.as_bytes()).is_err());
    assert!(Event::from_json(event.as_bytes()).is_err());
    // the good request still decodes, so the checks above are not vacuous
    assert!(v1::decode_request(&good_request()).is_ok());
}

#[test]
fn messages_over_the_limits_are_refused_before_parsing() {
    let mut big = good_request();
    // valid JSON all the way, padded past the limit with whitespace
    big.extend(std::iter::repeat_n(b' ', v1::MAX_MESSAGE_BYTES));
    assert!(v1::decode_request(&big).is_err());
    assert!(proto::v2::decode_request(&big).is_err());
    assert!(proto::wire::decode_reply(&big).is_err());
    let pad = " ".repeat(70 * 1024);
    let event = format!(
        r#"{{"protocol":"io.choria.lifecycle.v1.startup","identity":"a","component":"x","version":"1","timestamp":1{pad}}}"#
    );
    let err = Event::from_json(event.as_bytes()).expect_err("a 70 KiB event");
    assert!(err.to_string().contains("too large"), "{err}");
}
