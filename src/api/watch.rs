//! etcd Watch service: one task per gRPC stream runs `watch::run` over the client's
//! requests, the commit stream, the progress ticker and (with `hasleader`) leader loss.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::errors::ApiError;
use crate::proto::etcdserverpb::{watch_server::Watch, WatchRequest, WatchResponse};
use crate::server::Node;
use crate::watch::{WatchError, WatchStream};

/// Responses buffered per stream before the stream stops reading the commit stream and
/// later catches up from history.
const OUTPUT_BUFFER: usize = 64;

pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    pub fn new(node: Arc<Node>) -> Self {
        WatchService { node }
    }
}

type WatchOutput = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// etcd's `rpctypes.MetadataRequireLeaderKey`: clients set it to fail over on leader loss.
fn requires_leader<T>(request: &Request<T>) -> bool {
    request.metadata().get("hasleader").and_then(|v| v.to_str().ok()) == Some("true")
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchOutput;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<WatchOutput>, Status> {
        let require_leader = requires_leader(&request);
        if require_leader && !self.node.has_leader() {
            return Err(ApiError::NoLeader.into());
        }
        // Subscribe before reading the current revision, so no batch can fall between.
        let commits = self.node.commits.subscribe();
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        let node = self.node.clone();
        let header_node = self.node.clone();
        let header = Arc::new(move |rev| header_node.header(rev));
        let stream = WatchStream::new(node.reader.clone(), tx.clone(), header, node.config.limits.max_request_bytes)
            .await
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let input = request.into_inner();
        tokio::spawn(async move {
            crate::metrics::WATCH_STREAMS.inc();
            let interval = node.config.watch_progress_notify_interval;
            let lost = async move {
                if require_leader {
                    leader_lost(node).await
                } else {
                    std::future::pending().await
                }
            };
            let result = crate::watch::run(stream, input, commits, interval, lost).await;
            crate::metrics::WATCH_STREAMS.dec();
            let status = match result {
                Ok(()) | Err(WatchError::Closed) => return,
                Err(WatchError::NoLeader) => Status::from(ApiError::NoLeader),
                Err(WatchError::Storage(e)) => {
                    tracing::warn!(error = %e, "watch stream failed");
                    Status::from(ApiError::Mvcc(e))
                }
            };
            let _ = tx.send(Err(status)).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Resolves when the Raft metrics report no leader (or Raft stops).
async fn leader_lost(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        if metrics.borrow().current_leader.is_none() {
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
