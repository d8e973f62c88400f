//! etcd KV service: Range, Put, DeleteRange, Txn, Compact, and etcd 3.7's RangeStream.
//! Requests are checked here (at the edge) and carried out by the replica.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use crate::core::Replica;
use crate::mvcc::{validate, RangeStream};
use crate::proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};

pub struct KvService {
    replica: Arc<Replica>,
    /// Most operations in one txn branch (etcd `--max-txn-ops`).
    max_txn_ops: usize,
}

impl KvService {
    pub fn new(replica: Arc<Replica>, max_txn_ops: usize) -> Self {
        KvService { replica, max_txn_ops }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_range(&req).map_err(ApiError::from)?;
        Ok(super::held::holding(self.replica.range(req).await?))
    }

    type RangeStreamStream = Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

    /// The same checks as Range, then the replica's chunks as they are read (one held
    /// between the reader and the client, so the stream's memory stays that of a chunk).
    async fn range_stream(&self, request: Request<RangeRequest>) -> Result<Response<Self::RangeStreamStream>, Status> {
        let req = request.into_inner();
        validate::check_range(&req).map_err(ApiError::from)?;
        let serializable = req.serializable;
        let stream = RangeStream::new(req).map_err(|_| ApiError::RangeStreamSorted)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let replica = self.replica.clone();
        let active = crate::metrics::ActiveRangeStream::start();
        tokio::spawn(async move {
            replica.range_stream(stream, serializable, tx).await;
            drop(active);
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(|chunk| {
            chunk
                .map(|r| RangeStreamResponse { range_response: Some(r) })
                .map_err(|e| Status::from(ApiError::from(e)))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::check_put(&req).map_err(ApiError::from)?;
        Ok(Response::new(self.replica.put(req).await?))
    }

    async fn delete_range(&self, request: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_delete(&req).map_err(ApiError::from)?;
        Ok(Response::new(self.replica.delete_range(req).await?))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::check_txn(&req, self.max_txn_ops).map_err(ApiError::from)?;
        Ok(super::held::holding(self.replica.txn(req).await?))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let caller = crate::tls::ConnInfo::describe(&request);
        let req = request.into_inner();
        tracing::debug!(%caller, revision = req.revision, "compaction requested");
        Ok(Response::new(self.replica.compact(req).await?))
    }
}
