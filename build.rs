//! Generates the etcd v3 gRPC types and services from `proto/etcd` (and netsy's peer
//! service from `proto/netsy`) with protox (pure Rust),
//! so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/rpc.proto",
        "proto/etcd/kv.proto",
        "proto/etcd/auth.proto",
        "proto/netsy/peer.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto/etcd", "proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Requests travel through the Raft log, which is serialised with serde.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;
    Ok(())
}
