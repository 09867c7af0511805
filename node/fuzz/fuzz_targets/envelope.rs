//! Any bytes as a whole message off NATS: both protocol versions, requests and replies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proto::wire::version_of(data);
    let _ = proto::wire::decode_request(data);
    let _ = proto::wire::decode_reply(data);
    let _ = proto::v1::decode_request(data);
    let _ = proto::v1::decode_reply(data);
    let _ = proto::v2::decode_request(data);
    let _ = proto::v2::decode_reply(data);
});
