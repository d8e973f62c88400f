//! The peer port (2381): node-to-node gRPC services, behind `peer` role mTLS.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::peer::peer_server::{Peer, PeerServer};
use crate::proto::peer::{HelloRequest, HelloResponse};
use crate::server::Node;
use crate::tls::ConnInfo;

pub struct PeerService {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let caller = ConnInfo::of(&request)
            .and_then(|c| c.identity.as_ref())
            .map(|id| id.to_string())
            .unwrap_or_default();
        let node = &self.node;
        Ok(Response::new(HelloResponse {
            cluster_id: node.config.cluster_id.clone(),
            node_id: node.config.node_id.clone(),
            member_id: node.identity.member_id,
            raft_id: node.identity.raft_id,
            epoch: node.identity.epoch,
            advertise_client: node.config.advertise_client.clone(),
            advertise_peer: node.config.advertise_peer.clone(),
            caller,
        }))
    }
}

/// Builds the gRPC server of the peer port.
pub fn router(node: Arc<Node>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(PeerServer::new(PeerService { node }))
}
