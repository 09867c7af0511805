//! Generates the gRPC code for `protos/*.proto` (needs `protoc`, Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    tonic_prost_build::configure()
        // admin replies print as JSON in the CLI
        .message_attribute(".provisioner.admin.v1", "#[derive(serde::Serialize)]")
        .compile_protos(&["protos/raft.proto", "protos/admin.proto"], &["protos"])?;
    Ok(())
}
