//! Generated etcd v3 protobuf types and gRPC services (see `proto/etcd`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod codec;

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// netsy's own messages, in their protobuf packages.
pub mod netsy {
    pub mod raft {
        /// Raft log entries, votes, memberships and commands (`proto/netsy/raft.proto`).
        pub mod v1 {
            tonic::include_proto!("netsy.raft.v1");
        }
    }
    pub mod peer {
        /// The node-to-node services (`proto/netsy/peer.proto`).
        pub mod v2 {
            tonic::include_proto!("netsy.peer.v2");
        }
    }
}
/// The Kubernetes KMS v2 plugin API (`proto/kms/v2.proto`, package `v2`).
pub mod kms {
    pub mod v2 {
        tonic::include_proto!("v2");
    }
}
pub use self::netsy::peer::v2 as peer;
pub use self::netsy::raft::v1 as raftpb;
