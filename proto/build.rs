//! Compiles the protos with protox (pure Rust: no system `protoc`), generates prost
//! messages, tonic servers and clients, and proto3-JSON serde impls (pbjson). The
//! encoded descriptor set is kept for gRPC server reflection.
use std::path::PathBuf;

use prost::Message;

const V1_FILES: [&str; 11] = [
    "raft",
    "node",
    "mesh",
    "rbac",
    "network_acls",
    "admin",
    "app",
    "campfire",
    "peer_discovery",
    "plugin",
    "webrtc",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos: Vec<String> = V1_FILES.iter().map(|f| format!("v1/{f}.proto")).collect();
    protos.push("internal/transport.proto".to_string());
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(&protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = fds.encode_to_vec();
    std::fs::write(out.join("webmesh_descriptor.bin"), &encoded)?;
    // Well-known types with serde support, so every v1 message is JSON/YAML-able.
    let mut prost_config = prost_build::Config::new();
    prost_config.prost_types_path("::pbjson_types");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            // AppDaemon has an RPC named `Connect`, which would clash with the generated
            // `connect` constructor: clients are made with `new(channel)` instead.
            .build_transport(false)
            .compile_fds_with_config(fds, prost_config)?;
    } else {
        prost_config.compile_fds(fds)?;
    }
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .build(&[".v1"])?;
    Ok(())
}
