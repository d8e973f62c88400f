//! etcd Watch service: one task per gRPC stream runs `watch::run` over the client's
//! requests, the commit stream, the progress ticker and (with `hasleader`) leader loss.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::transport;
use crate::core::{CoreError, Replica};
use crate::proto::etcdserverpb::{watch_server::Watch, WatchRequest, WatchResponse};
use crate::watch::{WatchError, WatchStream};

/// Responses buffered per stream before the stream stops reading the commit stream and
/// later catches up from history.
const OUTPUT_BUFFER: usize = 64;

pub struct WatchService {
    replica: Arc<Replica>,
    /// etcd `--experimental-watch-progress-notify-interval`.
    progress_interval: Duration,
    /// Largest response (etcd splits bigger event batches).
    max_response_bytes: usize,
}

impl WatchService {
    pub fn new(replica: Arc<Replica>, progress_interval: Duration, max_response_bytes: usize) -> Self {
        WatchService {
            replica,
            progress_interval,
            max_response_bytes,
        }
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
        if require_leader && !self.replica.has_leader() {
            return Err(CoreError::NoLeader.into());
        }
        // Subscribe before reading the current revision, so no batch can fall between.
        let commits = self.replica.subscribe_commits();
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        let replica = self.replica.clone();
        let headers = self.replica.clone();
        let header = Arc::new(move |rev| headers.header(rev));
        let stream = WatchStream::new(replica.reader().clone(), tx.clone(), header, self.max_response_bytes)
            .await
            .map_err(status)?;
        let input = request.into_inner();
        let interval = self.progress_interval;
        tokio::spawn(async move {
            crate::metrics::WATCH_STREAMS.inc();
            // The stream ends when the member stops (the client watches on through
            // another one) or, with `hasleader`, when the leader is lost.
            let end = async move {
                let lost = async {
                    if require_leader {
                        replica.leader_lost().await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    () = replica.stopping() => WatchError::Stopped,
                    () = lost => WatchError::NoLeader,
                }
            };
            let result = crate::watch::run(stream, input, commits, interval, end).await;
            crate::metrics::WATCH_STREAMS.dec();
            match result {
                Ok(()) | Err(WatchError::Closed) => {}
                Err(e) => {
                    if let WatchError::Storage(s) = &e {
                        tracing::warn!(error = %crate::error_chain(s), "watch stream failed");
                    }
                    let _ = tx.send(Err(status(e))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn status(e: WatchError) -> Status {
    match e {
        WatchError::Storage(e) => e.into(),
        WatchError::NoLeader => CoreError::NoLeader.into(),
        WatchError::Stopped => CoreError::Stopped.into(),
        WatchError::Closed => Status::cancelled("etcdserver: watch stream closed"),
        // In etcd's (grpc-go's) words.
        WatchError::Input(status) => transport::received(status),
    }
}
