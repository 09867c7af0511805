//! Any bytes as one inner layer of a v1 message whose outer layers are well formed: the
//! secure request or reply inside a transport, and the request or reply inside that.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;

fn transport(inner: &[u8]) -> Vec<u8> {
    serde_json::json!({
        "protocol": proto::v1::TRANSPORT_V1,
        "data": base64::engine::general_purpose::STANDARD.encode(inner),
        "headers": {},
    })
    .to_string()
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    // the fuzzed bytes as the secure layer
    let outer = transport(data);
    let _ = proto::v1::decode_request(&outer);
    let _ = proto::v1::decode_reply(&outer);
    // and as the innermost message of a secure request and a secure reply
    let text = String::from_utf8_lossy(data);
    for protocol in ["choria:secure:request:1", "choria:secure:reply:1"] {
        let secure = serde_json::json!({
            "protocol": protocol,
            "message": text,
            "signature": "",
            "pubcert": "",
            "hash": "",
        });
        let outer = transport(secure.to_string().as_bytes());
        let _ = proto::v1::decode_request(&outer);
        let _ = proto::v1::decode_reply(&outer);
    }
});
