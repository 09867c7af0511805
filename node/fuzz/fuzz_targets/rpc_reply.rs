//! Any bytes as the body of an RPC reply, read as each agent reply we use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::agents::{CsrReply, Ed25519Reply, InventoryReply, JwtReply, MessageReply};

fuzz_target!(|data: &[u8]| {
    let _ = proto::rpc::RpcRequest::from_json(data);
    if let Ok(r) = proto::rpc::RpcReply::from_json(data) {
        let _ = r.data_as::<InventoryReply>();
        let _ = r.data_as::<CsrReply>();
        let _ = r.data_as::<JwtReply>();
        let _ = r.data_as::<Ed25519Reply>();
        let _ = r.data_as::<MessageReply>();
    }
});
