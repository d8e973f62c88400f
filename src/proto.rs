//! Generated etcd v3 protobuf types and gRPC services (see `proto/etcd`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// netsy's node-to-node services (`proto/netsy/peer.proto`).
pub mod peer {
    tonic::include_proto!("netsy.peer.v1");
}
