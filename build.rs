//! Generates the etcd v3 gRPC types and services from `proto/etcd` (and netsy's peer
//! service from `proto/netsy`, and the Kubernetes KMS v2 plugin API from `proto/kms`) with protox (pure Rust),
//! so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/rpc.proto",
        "proto/etcd/kv.proto",
        "proto/etcd/auth.proto",
        "proto/netsy/raft.proto",
        "proto/netsy/peer.proto",
        "proto/kms/v2.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto/etcd", "proto"])?;
    tonic_prost_build::configure()
        // Encoded bytes must not depend on a hash map's order (golden tests, checksums).
        .btree_map(".netsy")
        // prost's codec, with each message's buffer sized before encoding.
        .codec_path("crate::proto::codec::Codec")
        .build_server(true)
        .build_client(true)
        // The Raft log of netsy 0.1 held the bincode of etcd's requests: reading it back
        // (src/raft/codec/legacy.rs) needs their serde form. netsy's own messages are
        // only ever protobuf.
        .type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".authpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;
    Ok(())
}
