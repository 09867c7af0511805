//! Generates the gRPC code for `protos/*.proto` (needs `protoc`, Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    tonic_build::configure().compile_protos(&["protos/raft.proto"], &["protos"])?;
    Ok(())
}
