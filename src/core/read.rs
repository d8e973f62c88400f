//! Reads of this member's state: linearizable ones wait for a ReadIndex round (see
//! `route`), serializable ones are served as the state is.

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::{CoreError, Replica};
use crate::mvcc::{MvccError, RangeStream, Reader};
use crate::proto::etcdserverpb::{
    AlarmMember, DefragmentResponse, HashKvResponse, HashResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse, TxnRequest,
    TxnResponse,
};

/// A consistent copy of the state database, for etcd's Snapshot RPC; the file is removed
/// when this is dropped.
pub struct SnapshotCopy {
    pub path: PathBuf,
    pub header: ResponseHeader,
}

impl Drop for SnapshotCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Replica {
    /// Runs a blocking read on the reader pool.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Reader) -> Result<T, MvccError> + Send + 'static) -> Result<T, CoreError> {
        Ok(self.reader.run(f).await?)
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoreError> {
        if !req.serializable {
            self.linearizable_read().await?;
        }
        // A single-key read is a few microseconds of SQLite on cached pages: run it here
        // rather than paying two thread hand-offs; ranges go to the blocking pool.
        let mut resp = if req.range_end.is_empty() {
            self.reader.range(&req)?
        } else {
            self.read(move |r| r.range(&req)).await?
        };
        self.fill_header(&mut resp.header);
        Ok(resp)
    }

    /// etcd 3.7's RangeStream: after a linearizable read barrier (unless
    /// `serializable`), sends a header with this member's ids and term, then `stream`'s
    /// chunks, each read in its own read transaction, until the last one, an error, or
    /// until `tx`'s receiver is gone (the client went away). `tx` holds one chunk: the
    /// next is read only once the previous one was taken.
    pub async fn range_stream(&self, mut stream: RangeStream, serializable: bool, tx: mpsc::Sender<Result<RangeResponse, CoreError>>) {
        if !serializable {
            if let Err(e) = self.linearizable_read().await {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let header = RangeResponse {
            header: Some(self.header(0)),
            ..Default::default()
        };
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        while !stream.is_done() {
            let read = self
                .read(move |r| {
                    r.read(move |conn, revs| {
                        let chunk = stream.next_chunk(conn, revs)?;
                        Ok((stream, chunk))
                    })
                })
                .await;
            let chunk = match read {
                Ok((rest, chunk)) => {
                    crate::metrics::RANGE_STREAM_CHUNKS.inc();
                    stream = rest;
                    chunk
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let empty = chunk.response.kvs.is_empty() && chunk.response.header.is_none() && !chunk.last;
            if !empty && tx.send(Ok(chunk.response)).await.is_err() {
                return;
            }
        }
    }

    /// A txn that does not write.
    pub(super) async fn txn_read(&self, req: TxnRequest) -> Result<TxnResponse, CoreError> {
        if !super::write::serializable(&req) {
            self.linearizable_read().await?;
        }
        let mut resp = self.read(move |r| r.txn_readonly(&req)).await?;
        self.fill_header(&mut resp.header);
        Ok(resp)
    }

    /// The raised alarms.
    pub async fn alarms(&self) -> Result<Vec<AlarmMember>, CoreError> {
        self.read(|r| r.alarms()).await
    }

    /// etcd's Status, but for `version` (the API fills in what it reports).
    pub async fn status(&self) -> Result<StatusResponse, CoreError> {
        let (size, alarms, rev) = self.read(|r| Ok((r.db_size()?, r.alarms()?, r.revisions()?.current))).await?;
        let (leader, raft_index, raft_term, raft_applied_index) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (
                m.current_leader,
                m.last_log_index.unwrap_or(0),
                m.current_term,
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        let mut errors: Vec<String> = Vec::new();
        if leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        errors.extend(alarms.iter().map(alarm_text));
        Ok(StatusResponse {
            header: Some(self.header(rev)),
            version: String::new(),
            db_size: size.size,
            leader: self.leader().map_or(0, |(_, l)| l.member_id),
            raft_index,
            raft_term,
            raft_applied_index,
            errors,
            db_size_in_use: size.in_use,
            is_learner: self.members().iter().any(|m| m.raft_id == self.ids.raft_id && !m.voter),
            storage_version: String::new(),
            db_size_quota: self.settings.limits.quota_backend_bytes as i64,
            downgrade_info: None,
        })
    }

    /// Rewrites the state database without its free pages.
    pub async fn defragment(&self) -> Result<DefragmentResponse, CoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .lock()
                .map_err(|_| MvccError::Storage("store lock poisoned".into()))?
                .defragment()
        })
        .await??;
        self.refresh_db_size();
        Ok(DefragmentResponse {
            header: self.current_header(),
        })
    }

    pub async fn hash(&self) -> Result<HashResponse, CoreError> {
        let (hash, rev) = self.read(|r| Ok((r.hash_all()?, r.revisions()?.current))).await?;
        Ok(HashResponse {
            header: Some(self.header(rev)),
            hash,
        })
    }

    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, CoreError> {
        let ((hash, compact_revision, hash_revision), rev) = self.read(move |r| Ok((r.hash_kv(revision)?, r.revisions()?.current))).await?;
        Ok(HashKvResponse {
            header: Some(self.header(rev)),
            hash,
            compact_revision,
            hash_revision,
        })
    }

    /// Copies the state database, consistently, to a scratch file.
    pub async fn snapshot(&self) -> Result<SnapshotCopy, CoreError> {
        let dir = self.settings.scratch.clone();
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("snapshot-{}.db", rand::random::<u64>()));
        let p = path.clone();
        let copied = self
            .read(move |r| {
                r.backup_to(&p)?;
                Ok(r.revisions()?.current)
            })
            .await;
        // Removed by `SnapshotCopy::drop`, also when the copy failed half way.
        let mut copy = SnapshotCopy {
            path,
            header: ResponseHeader::default(),
        };
        copy.header = self.header(copied?);
        Ok(copy)
    }
}

/// etcd prints alarms in protobuf text form in Status.errors.
fn alarm_text(a: &AlarmMember) -> String {
    use crate::proto::etcdserverpb::AlarmType;
    let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("NONE");
    format!("memberID:{} alarm:{} ", a.member_id, name)
}
