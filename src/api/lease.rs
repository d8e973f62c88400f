//! etcd Lease service. Grant and revoke go through Raft; keep-alives and TTL queries are
//! answered from the leader's deadlines (see `lease::Lessor`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::stream::from_task;
use super::transport;
use crate::core::{CoreError, Replica};
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

pub struct LeaseService {
    replica: Arc<Replica>,
}

impl LeaseService {
    pub fn new(replica: Arc<Replica>) -> Self {
        LeaseService { replica }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.replica.lease_grant(req.id, req.ttl).await?))
    }

    async fn lease_revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(self.replica.lease_revoke(request.into_inner().id).await?))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Keep-alives are leader-local, as in etcd (a follower forwards them); the stream
    /// ends at the first failure, with its error: the keep-alive's, or the input's (a
    /// message that does not decode, or is too large) in etcd's words; and when the
    /// member stops ("server stopped": the client goes on through another member).
    async fn lease_keep_alive(&self, request: Request<Streaming<LeaseKeepAliveRequest>>) -> Result<Response<KeepAliveStream>, Status> {
        let replica = self.replica.clone();
        let mut input = request.into_inner();
        let output = from_task(move |tx| async move {
            loop {
                let received = tokio::select! {
                    received = input.next() => received,
                    () = replica.stopping() => {
                        let _ = tx.send(Err(CoreError::Stopped.into())).await;
                        break;
                    }
                };
                let Some(received) = received else { break };
                let req = match received {
                    Ok(req) => req,
                    Err(status) => {
                        let _ = tx.send(Err(transport::received(status))).await;
                        break;
                    }
                };
                let item = replica.lease_keep_alive(req.id).await.map_err(Status::from);
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(output))
    }

    async fn lease_time_to_live(&self, request: Request<LeaseTimeToLiveRequest>) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.replica.lease_time_to_live(req.id, req.keys).await?))
    }

    async fn lease_leases(&self, _request: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.replica.lease_leases().await?))
    }
}
