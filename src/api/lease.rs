//! etcd Lease service. Grant and revoke go through Raft; keep-alives and TTL queries are
//! answered from the leader's deadlines (see `lease::Lessor`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::errors::ApiError;
use crate::lease::new_lease_id;
use crate::mvcc::{Command, CommandResult, MvccError};
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::server::Node;

pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }
}

/// Renews a lease at the leader (keep-alives are leader-local, as in etcd; a follower
/// forwards them); returns its TTL, or 0 if it does not exist.
async fn keep_alive_once(node: &Arc<Node>, id: i64) -> Result<i64, ApiError> {
    node.lease_deadline(id, true).await.map(|(ttl, _)| ttl)
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        self.node.check_quota().await?;
        let id = if req.id == 0 { new_lease_id() } else { req.id };
        match self.node.propose(Command::LeaseGrant { id, ttl: req.ttl }).await? {
            CommandResult::LeaseGrant(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(ApiError::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }

    async fn lease_revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.node.propose(Command::LeaseRevoke { id }).await? {
            CommandResult::LeaseRevoke(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(ApiError::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(&self, request: Request<Streaming<LeaseKeepAliveRequest>>) -> Result<Response<KeepAliveStream>, Status> {
        let node = self.node.clone();
        let mut input = request.into_inner();
        let output = async_stream_from(move |tx| async move {
            while let Some(req) = input.next().await {
                let req = match req {
                    Ok(r) => r,
                    Err(_) => break,
                };
                let item = match keep_alive_once(&node, req.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: node.current_header(),
                        id: req.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(output))
    }

    /// etcd answers an unknown lease with TTL -1 rather than an error.
    async fn lease_time_to_live(&self, request: Request<LeaseTimeToLiveRequest>) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        self.node.linearizable_read().await?;
        let id = req.id;
        let want_keys = req.keys;
        let (granted, keys, rev) = self
            .node
            .read(move |r| {
                let granted = r.lease_ttl(id)?;
                let keys = if want_keys && granted.is_some() {
                    r.lease_keys(id)?
                } else {
                    Vec::new()
                };
                Ok((granted, keys, r.revisions()?.current))
            })
            .await?;
        let (ttl, granted_ttl) = match granted {
            Some(g) => (self.node.lease_deadline(id, false).await?.1, g),
            None => (-1, 0),
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.node.header(rev)),
            id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(&self, _request: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.linearizable_read().await?;
        let (leases, rev) = self.node.read(|r| Ok((r.lease_ids()?, r.revisions()?.current))).await?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(rev)),
            leases: leases.into_iter().map(|(id, _)| LeaseStatus { id }).collect(),
        }))
    }
}

/// Runs `f` with a sender and returns the receiving side as a response stream.
pub(crate) fn async_stream_from<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The leader's expiry loop: revoke every lease whose deadline passed.
pub async fn expiry_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut was_leader = false;
    loop {
        tick.tick().await;
        let is_leader = node.is_leader();
        if !is_leader {
            if was_leader {
                node.lessor.clear();
            }
            was_leader = false;
            continue;
        }
        let mark = node.lessor.mark();
        if let Ok(leases) = node.read(|r| r.lease_ids()).await {
            node.lessor.sync(mark, &leases);
        }
        was_leader = true;
        let mut expired = node.lessor.expired();
        expired.truncate(REVOKES_PER_TICK);
        // Revokes are proposed together so Raft batches them; each is its own revision and
        // other writes interleave with them.
        let revokes = expired.into_iter().map(|id| {
            let node = node.clone();
            async move {
                match node.propose(Command::LeaseRevoke { id }).await {
                    Ok(_) | Err(ApiError::Mvcc(MvccError::LeaseNotFound)) => {
                        node.lessor.forget(id);
                        tracing::debug!(lease = id, "lease expired");
                    }
                    Err(e) => tracing::warn!(lease = id, error = %e, "lease expiry failed; will retry"),
                }
            }
        });
        futures::future::join_all(revokes).await;
    }
}

/// At most this many expired leases are revoked per 500 ms tick (etcd revokes up to
/// 1000 leases per second, `leaseRevokeRate`), so a mass expiry cannot starve writes.
const REVOKES_PER_TICK: usize = 500;
