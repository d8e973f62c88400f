//! The etcd v3 gRPC API: one file per etcd service, one error table (`errors.rs`), and
//! the transport's own refusals in etcd's words (`transport.rs`). Each service checks its
//! requests and calls the replica (`core`).

pub mod auth;
pub mod cluster;
pub mod errors;
pub mod held;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
mod stream;
pub mod transport;
pub mod watch;

use std::sync::Arc;

use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::config::Config;
use crate::core::Replica;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};

/// gRPC allows this much on top of `max_request_bytes` (etcd's `grpcOverheadBytes`) so
/// that a slightly oversized request gets etcd's "request is too large" error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Builds the gRPC server with every etcd service this node serves.
/// `standby_store`: on a standby, its own object storage (for the promotion admin call).
pub fn router(
    replica: Arc<Replica>,
    config: &Config,
    standby_store: Option<Arc<dyn object_store::ObjectStore>>,
) -> Router<Stack<held::HoldReplyMemoryLayer, Stack<transport::EtcdStatusLayer, Identity>>> {
    let limits = &config.limits;
    let max = limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let kv = kv::KvService::new(replica.clone(), limits.max_txn_ops);
    let watch = watch::WatchService::new(replica.clone(), config.watch_progress_notify_interval, limits.max_request_bytes);
    let maintenance = maintenance::MaintenanceService::new(replica.clone(), config.etcd_version.clone());
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(kv)
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        WatchServer::new(watch)
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(LeaseServer::new(lease::LeaseService::new(replica.clone())).max_decoding_message_size(max))
    .add_service(ClusterServer::new(cluster::ClusterService::new(replica.clone())).max_decoding_message_size(max))
    .add_service(MaintenanceServer::new(maintenance).max_decoding_message_size(max))
    .add_service(AuthServer::new(auth::AuthService::new(replica.clone())).max_decoding_message_size(max));
    // etcd's HTTP endpoints beside the services (HTTP/1.1 or HTTP/2, as etcd serves them).
    let app = grpc
        .routes()
        .into_axum_router()
        .merge(http::router(replica, config.etcd_version.clone(), standby_store))
        .fallback(http::fallback);
    tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .layer(transport::EtcdStatusLayer)
        .layer(held::HoldReplyMemoryLayer)
        .add_routes(tonic::service::Routes::from(app))
}
