//! etcd Watch service: one task per gRPC stream drives a `watch::WatchStream` from the
//! client's requests, the commit stream and the progress ticker.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::errors::ApiError;
use crate::mvcc::CommitBatch;
use crate::proto::etcdserverpb::{watch_request::RequestUnion, watch_server::Watch, WatchRequest, WatchResponse};
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
            let result = run(node, stream, input, commits, require_leader).await;
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

/// Serves one stream until the client leaves or the server ends it with an error.
async fn run(
    node: Arc<Node>,
    mut stream: WatchStream,
    mut input: Streaming<WatchRequest>,
    mut commits: broadcast::Receiver<Arc<CommitBatch>>,
    require_leader: bool,
) -> Result<(), WatchError> {
    let interval = node.config.watch_progress_notify_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut metrics = node.raft.metrics();
    loop {
        tokio::select! {
            req = input.next() => {
                let Some(Ok(req)) = req else { return Ok(()) };
                match req.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        stream.drain(&mut commits).await?;
                        stream.create(c).await?;
                    }
                    Some(RequestUnion::CancelRequest(c)) => stream.cancel(c.watch_id).await?,
                    Some(RequestUnion::ProgressRequest(_)) => {
                        stream.drain(&mut commits).await?;
                        stream.progress().await?;
                    }
                    None => {}
                }
            }
            batch = commits.recv() => match batch {
                Ok(batch) => stream.on_batch(&batch).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => stream.on_lagged().await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = ticker.tick() => stream.progress_tick().await?,
            changed = metrics.changed(), if require_leader => {
                let leaderless = changed.is_err() || metrics.borrow().current_leader.is_none();
                if leaderless {
                    return Err(WatchError::NoLeader);
                }
            }
        }
    }
}
