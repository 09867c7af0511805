//! Writes one well-formed message of each kind we parse into a directory, as seeds for the
//! fuzz targets in node/fuzz: `cargo run -p choria-proto --example fuzz_seeds -- DIR`.

use proto::lifecycle::{Event, EventType};
use proto::rpc::{RpcReply, RpcRequest};
use proto::v1::{self, Filter, Insecure, Request};

/// A v2 signer with an empty caller JWT and signature: the fuzzers need the shape, not trust.
struct Unsigned;

impl proto::v2::Signer for Unsigned {
    fn caller_jwt(&self) -> String {
        String::new()
    }
    fn sign(&self, _request_json: &[u8]) -> Vec<u8> {
        vec![0; 64]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    // seeds already in the corpus stay as they are (they carry fresh ids and times)
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        match d.join(name) {
            p if p.exists() => Ok(()),
            p => std::fs::write(p, bytes),
        }
    };
    let body = RpcRequest::new(
        "choria_provision",
        "gencsr",
        serde_json::json!({"token": "t"}),
    )
    .to_json()?;
    let request = Request::new(
        "choria_provision",
        "provisioning",
        "choria=provisioner",
        "provisioner",
        60,
        Filter {
            identity: vec!["n1.example.net".into()],
            agent: vec!["choria_provision".into()],
            ..Default::default()
        },
        &body,
    );
    let v1_request = request.encode("reply.subject", "provisioner", &Insecure)?;
    let reply_body = RpcReply::ok(
        "gencsr",
        serde_json::json!({"csr": "", "ssldir": "/etc/choria/ssl"}),
    )
    .to_json()?;
    let reply = v1::Reply::new(&request.envelope, "n1.example.net", &reply_body);
    let v1_reply = reply.encode()?;
    let v2_request =
        proto::v2::encode_request(&request, "reply.subject", "provisioner", &Unsigned)?;
    let v2_reply = proto::v2::encode_reply(&reply)?;
    for (name, bytes) in [
        ("v1_request", &v1_request),
        ("v1_reply", &v1_reply),
        ("v2_request", &v2_request),
        ("v2_reply", &v2_reply),
    ] {
        write("envelope", name, bytes)?;
    }
    write("envelope_layers", "body", &body)?;
    write("rpc_reply", "gencsr", &reply_body)?;
    let inventory = RpcReply::ok(
        "inventory",
        serde_json::json!({"agents": ["rpcutil"], "facts": {"os": "linux"}, "classes": [],
            "version": "0.29.4", "data_plugins": [], "main_collective": "provisioning",
            "collectives": ["provisioning"]}),
    )
    .to_json()?;
    write("rpc_reply", "inventory", &inventory)?;
    let event = Event::new(
        EventType::Startup,
        "n1.example.net",
        "provision_mode_server",
        Some("0.29.4"),
    )
    .to_json()?;
    write("lifecycle", "startup", &event)?;
    Ok(())
}
