//! The etcd v3 gRPC API: one file per etcd service, one error table (`errors.rs`).

pub mod auth;
pub mod cluster;
pub mod errors;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use tonic::transport::server::Router;

use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::server::Node;

/// gRPC allows this much on top of `max_request_bytes` (etcd's `grpcOverheadBytes`) so
/// that a slightly oversized request gets etcd's "request is too large" error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Builds the gRPC server with every etcd service this node serves.
pub fn router(node: Arc<Node>) -> Router {
    let max = node.config.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(
            KvServer::new(kv::KvService::new(node.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(watch::WatchService::new(node.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(LeaseServer::new(lease::LeaseService::new(node.clone())).max_decoding_message_size(max))
        .add_service(ClusterServer::new(cluster::ClusterService::new(node.clone())).max_decoding_message_size(max))
        .add_service(MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone())).max_decoding_message_size(max))
        .add_service(AuthServer::new(auth::AuthService::new(node)).max_decoding_message_size(max))
}
