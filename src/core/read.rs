//! Reads of this member's state: linearizable ones wait for a ReadIndex round (see
//! `route`), serializable ones are served as the state is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{CoreError, Replica};
use crate::mvcc::{MvccError, RangeStream, Reader, Reservation};
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

/// How long a unary read may wait for room in the read budget before it is refused with
/// etcd's "too many requests": as long as a write may wait for its commit.
pub const READ_MEMORY_WAIT: Duration = super::REQUEST_TIMEOUT;

/// A unary read's answer with its share of the read budget (`limits.read_memory_bytes`):
/// whoever sends `reply` holds `memory` until the reply has been written out.
#[derive(Debug)]
pub struct Held<T> {
    pub reply: T,
    pub memory: Reservation,
}

impl<T> Held<T> {
    /// An answer that holds none of the budget (a write's).
    pub fn unmetered(reply: T) -> Held<T> {
        Held {
            reply,
            memory: Reservation::unmetered(),
        }
    }
}

impl Replica {
    /// Runs a blocking read on the reader pool.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Reader) -> Result<T, MvccError> + Send + 'static) -> Result<T, CoreError> {
        Ok(self.reader.run(f).await?)
    }

    /// A client's Range, its rows charged to the read budget as they are read (see
    /// `metered`).
    pub async fn range(&self, req: RangeRequest) -> Result<Held<RangeResponse>, CoreError> {
        if !req.serializable {
            self.linearizable_read().await?;
        }
        // A single-key read is a few microseconds of SQLite on cached pages: run it here
        // rather than paying two thread hand-offs; ranges (and a single key the budget
        // cannot take now) go to the blocking pool.
        let mut held = if req.range_end.is_empty() {
            let mut memory = self.read_budget.reservation();
            let reply = self.reader.range_metered(&req, &mut memory)?;
            if memory.refused() {
                let req = Arc::new(req);
                self.metered(memory.needed(), move |r, m| r.range_metered(&req, m)).await?
            } else {
                Held { reply, memory }
            }
        } else {
            let req = Arc::new(req);
            self.metered(0, move |r, m| r.range_metered(&req, m)).await?
        };
        self.fill_header(&mut held.reply.header);
        Ok(held)
    }

    /// Runs the unary read `f` on the reader pool, its rows charged to the read budget as
    /// they are read. A read the budget cannot take is dropped, then (unless it needs
    /// more than the whole budget: `ReadTooLarge` at once) waits, first come first served,
    /// until as much as it needs is free and runs again, holding that much; after
    /// `READ_MEMORY_WAIT` it is refused (`ReadBudgetBusy`). Waiting holds no read
    /// connection and no read transaction. `needed`: what an earlier try found it needs.
    async fn metered<T: Send + 'static>(
        &self,
        mut needed: u64,
        f: impl Fn(&Reader, &mut Reservation) -> Result<T, MvccError> + Clone + Send + 'static,
    ) -> Result<Held<T>, CoreError> {
        let started = Instant::now();
        let mut counted_wait = false;
        loop {
            let memory = if needed == 0 {
                self.read_budget.reservation()
            } else {
                self.wait_for_read_memory(needed, started, &mut counted_wait).await?
            };
            let g = f.clone();
            let (reply, memory) = self
                .read(move |r| {
                    let mut memory = memory;
                    let reply = g(r, &mut memory)?;
                    Ok((reply, memory))
                })
                .await?;
            if !memory.refused() {
                return Ok(Held { reply, memory });
            }
            // Incomplete: give back its rows and its share before waiting.
            needed = memory.needed().max(1);
            drop(reply);
            drop(memory);
        }
    }

    /// Holds `needed` bytes of the read budget once they are free, or refuses the read.
    async fn wait_for_read_memory(&self, needed: u64, started: Instant, counted: &mut bool) -> Result<Reservation, CoreError> {
        let budget = self.read_budget.limit();
        if needed > budget {
            crate::metrics::READ_MEMORY_REFUSED.with_label_values(&["too_large"]).inc();
            tracing::info!(needed, budget, "unary read refused: it needs more than limits.read_memory_bytes");
            return Err(CoreError::ReadTooLarge { needed, budget });
        }
        if !*counted {
            *counted = true;
            crate::metrics::READ_MEMORY_WAITS.inc();
        }
        match tokio::time::timeout_at(started + READ_MEMORY_WAIT, self.read_budget.reserve(needed)).await {
            Ok(Ok(memory)) => Ok(memory),
            // The budget's semaphore is never closed.
            Ok(Err(_)) => Err(CoreError::Stopped),
            Err(_) => {
                let waited_ms = started.elapsed().as_millis() as u64;
                crate::metrics::READ_MEMORY_REFUSED.with_label_values(&["busy"]).inc();
                tracing::warn!(
                    needed,
                    budget,
                    waited_ms,
                    "unary read refused: limits.read_memory_bytes stayed in use by other reads"
                );
                Err(CoreError::ReadBudgetBusy { needed, budget, waited_ms })
            }
        }
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

    /// A txn that does not write, its ranges charged to the read budget (as `range`).
    pub(super) async fn txn_read(&self, req: TxnRequest) -> Result<Held<TxnResponse>, CoreError> {
        if !super::write::serializable(&req) {
            self.linearizable_read().await?;
        }
        let req = Arc::new(req);
        let mut held = self.metered(0, move |r, m| r.txn_readonly(&req, m)).await?;
        self.fill_header(&mut held.reply.header);
        Ok(held)
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

    /// Gives the state database's free pages back to the file system, in steps that let
    /// applies through (`mvcc::reclaim::defragment`).
    pub async fn defragment(&self) -> Result<DefragmentResponse, CoreError> {
        let (store, reader) = (self.store.clone(), self.reader.clone());
        let report = tokio::task::spawn_blocking(move || crate::mvcc::reclaim::defragment(&store, &reader)).await??;
        tracing::info!(pages_freed = report.pages_freed, rewritten = report.rewritten, "defragmented");
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
