//! etcd KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::errors::ApiError;
use crate::mvcc::{validate, Command, CommandResult};
use crate::proto::etcdserverpb::{
    kv_server::Kv, request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use crate::server::Node;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

fn unexpected(r: CommandResult) -> Status {
    ApiError::Internal(format!("unexpected apply result {r:?}")).into()
}

/// Whether any branch (recursively) writes.
fn txn_writes(t: &TxnRequest) -> bool {
    let op_writes = |op: &RequestOp| match &op.request {
        Some(request_op::Request::RequestPut(_)) | Some(request_op::Request::RequestDeleteRange(_)) => true,
        Some(request_op::Request::RequestTxn(t)) => txn_writes(t),
        _ => false,
    };
    t.success.iter().chain(t.failure.iter()).any(op_writes)
}

fn txn_puts(t: &TxnRequest) -> bool {
    let op_puts = |op: &RequestOp| match &op.request {
        Some(request_op::Request::RequestPut(_)) => true,
        Some(request_op::Request::RequestTxn(t)) => txn_puts(t),
        _ => false,
    };
    t.success.iter().chain(t.failure.iter()).any(op_puts)
}

/// A read-only txn is serializable only if every range in it is.
fn txn_serializable(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(r)) => r.serializable,
        Some(request_op::Request::RequestTxn(t)) => txn_serializable(t),
        _ => true,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_range(&req).map_err(ApiError::from)?;
        if !req.serializable {
            self.node.linearizable_read().await?;
        }
        // A single-key read is a few microseconds of SQLite on cached pages: run it here
        // rather than paying two thread hand-offs; ranges go to the blocking pool.
        let mut resp = if req.range_end.is_empty() {
            self.node.reader.range(&req).map_err(ApiError::from)?
        } else {
            self.node.read(move |r| r.range(&req)).await?
        };
        self.node.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::check_put(&req).map_err(ApiError::from)?;
        self.node.check_quota().await?;
        match self.node.propose(Command::Put(req)).await? {
            CommandResult::Put(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(&self, request: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_delete(&req).map_err(ApiError::from)?;
        match self.node.propose(Command::DeleteRange(req)).await? {
            CommandResult::DeleteRange(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::check_txn(&req, self.node.config.limits.max_txn_ops).map_err(ApiError::from)?;
        let mut resp = if txn_writes(&req) {
            if txn_puts(&req) {
                self.node.check_quota().await?;
            }
            match self.node.propose(Command::Txn(req)).await? {
                CommandResult::Txn(resp) => resp,
                other => return Err(unexpected(other)),
            }
        } else {
            if !txn_serializable(&req) {
                self.node.linearizable_read().await?;
            }
            self.node.read(move |r| r.txn_readonly(&req)).await?
        };
        self.node.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let caller = crate::tls::ConnInfo::describe(&request);
        let req = request.into_inner();
        tracing::debug!(%caller, revision = req.revision, "compaction requested");
        match self.node.propose(Command::Compact(req)).await? {
            CommandResult::Compact(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
