//! Every message kind we produce validates against upstream's JSON schemas
//! (`proto/testdata/schemas/v1`, copied from go-choria), and decoding refuses what does not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use base64::Engine;
use proto::rpc::RpcReply;
use proto::v1::{self, Filter, Insecure, Reply, Request};
use serde_json::Value;

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/testdata/schemas/v1/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft4::new(&json).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(name: &str, doc: &Value) {
    let v = schema(name);
    let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name} invalid: {errors:?}\n{doc:#}");
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Validates all three layers of an encoded request and returns the request document.
fn check_request(bytes: &[u8]) -> Value {
    let transport: Value = serde_json::from_slice(bytes).unwrap();
    assert_valid("transport", &transport);
    let secure: Value = serde_json::from_slice(&b64(transport["data"].as_str().unwrap())).unwrap();
    assert_valid("secure_request", &secure);
    let request: Value = serde_json::from_str(secure["message"].as_str().unwrap()).unwrap();
    assert_valid("request", &request);
    request
}

fn check_reply(bytes: &[u8]) -> Value {
    let transport: Value = serde_json::from_slice(bytes).unwrap();
    assert_valid("transport", &transport);
    let secure: Value = serde_json::from_slice(&b64(transport["data"].as_str().unwrap())).unwrap();
    assert_valid("secure_reply", &secure);
    let reply: Value = serde_json::from_str(secure["message"].as_str().unwrap()).unwrap();
    assert_valid("reply", &reply);
    reply
}

fn rpc_request(action: &str, data: Value) -> Request {
    let body = proto::rpc::RpcRequest::new("choria_provision", action, data)
        .to_json()
        .unwrap();
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
}

#[test]
fn directed_rpc_requests_validate() {
    for (action, data) in [
        ("jwt", serde_json::json!({"token": "t"})),
        (
            "gencsr",
            serde_json::json!({"token": "t", "cn": "n1.example.net"}),
        ),
        (
            "configure",
            serde_json::json!({"token": "t", "config": "{\"identity\":\"n1\"}", "certificate": "-----BEGIN CERTIFICATE-----\nx", "ca": "-----BEGIN CERTIFICATE-----\ny", "ssldir": "/etc/choria/ssl"}),
        ),
        ("restart", serde_json::json!({"token": "t", "splay": 1})),
    ] {
        let req = rpc_request(action, data);
        let bytes = req
            .encode("provisioning.reply.abc.def", "prov1.example.net", &Insecure)
            .unwrap();
        let doc = check_request(&bytes);
        assert_eq!(doc["envelope"]["requestid"].as_str().unwrap().len(), 32);
    }
}

#[test]
fn discovery_request_and_replies_validate() {
    let ping = base64::engine::general_purpose::STANDARD.encode("ping");
    let req = Request::new(
        "discovery",
        "provisioning",
        "choria=prov1",
        "prov1",
        60,
        Filter::agent("choria_provision"),
        ping.as_bytes(),
    );
    check_request(
        &req.encode("provisioning.reply.a.b", "prov1", &Insecure)
            .unwrap(),
    );

    let pong = Reply::new(&req.envelope, "n1.example.net", b"pong");
    check_reply(&pong.encode().unwrap());

    let rpc = RpcReply::ok("jwt", serde_json::json!({"jwt": "x", "ecdh_public": "y"}));
    let reply = Reply::new(&req.envelope, "n1.example.net", &rpc.to_json().unwrap());
    let doc = check_reply(&reply.encode().unwrap());
    assert_eq!(doc["envelope"]["senderid"], "n1.example.net");
}

#[test]
fn schema_rejects_what_decoding_rejects() {
    // the schemas and our decoder agree on a missing envelope field
    let req = rpc_request("jwt", serde_json::json!({"token": "t"}));
    let mut doc = serde_json::to_value(&req).unwrap();
    doc["envelope"].as_object_mut().unwrap().remove("callerid");
    assert!(!schema("request").is_valid(&doc));
    let secure = serde_json::json!({
        "protocol": v1::SECURE_REQUEST_V1,
        "message": doc.to_string(),
        "signature": "insecure",
        "pubcert": "insecure",
    });
    let transport = serde_json::json!({
        "protocol": v1::TRANSPORT_V1,
        "data": base64::engine::general_purpose::STANDARD.encode(secure.to_string()),
        "headers": {"reply-to": "x"},
    });
    assert!(v1::decode_request(transport.to_string().as_bytes()).is_err());
}

#[test]
fn decoding_rejects_malformed_layers() {
    let good = rpc_request("jwt", serde_json::json!({"token": "t"}));
    let good_bytes = good.encode("r", "s", &Insecure).unwrap();
    let t: Value = serde_json::from_slice(&good_bytes).unwrap();
    let secure: Value = serde_json::from_slice(&b64(t["data"].as_str().unwrap())).unwrap();
    let enc = |secure: &Value| {
        serde_json::json!({
            "protocol": v1::TRANSPORT_V1,
            "data": base64::engine::general_purpose::STANDARD.encode(secure.to_string()),
            "headers": {},
        })
        .to_string()
    };
    let mut wrong_secure = secure.clone();
    wrong_secure["protocol"] = "choria:secure:request:9".into();
    let mut not_json = secure.clone();
    not_json["message"] = "{not json".into();
    let mut short_id = secure.clone();
    let mut inner: Value = serde_json::from_str(secure["message"].as_str().unwrap()).unwrap();
    inner["envelope"]["requestid"] = "abc".into();
    short_id["message"] = inner.to_string().into();
    let mut low_ttl = secure.clone();
    let mut inner: Value = serde_json::from_str(secure["message"].as_str().unwrap()).unwrap();
    inner["envelope"]["ttl"] = 5.into();
    low_ttl["message"] = inner.to_string().into();

    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"null".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        br#"{"protocol":"choria:transport:2","data":"","headers":{}}"#.to_vec(),
        br#"{"protocol":"choria:transport:1","data":"%%%","headers":{}}"#.to_vec(),
        br#"{"protocol":"choria:transport:1","data":"e30=","headers":{}}"#.to_vec(),
        enc(&wrong_secure).into_bytes(),
        enc(&not_json).into_bytes(),
        enc(&short_id).into_bytes(),
        enc(&low_ttl).into_bytes(),
        vec![b'{'; 2 * 1024 * 1024],
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(v1::decode_request(c).is_err(), "case {i} accepted");
        assert!(v1::decode_reply(c).is_err(), "case {i} accepted as reply");
    }
    // and the untouched message still decodes
    assert!(v1::decode_request(enc(&secure).as_bytes()).is_ok());
}
