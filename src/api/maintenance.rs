//! etcd Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot,
//! MoveLeader, Downgrade.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::lease::async_stream_from;
use crate::mvcc::{Command, CommandResult};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::server::Node;
use crate::tls::ConnInfo;

/// Snapshot stream chunk size (etcd uses 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

/// etcd prints alarms in protobuf text form in Status.errors.
fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("NONE");
    format!("memberID:{} alarm:{} ", a.member_id, name)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let caller = ConnInfo::describe(&request);
        let req = request.into_inner();
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                let mut all = self.node.read(|r| r.alarms()).await?;
                if req.member_id != 0 {
                    all.retain(|a| a.member_id == req.member_id);
                }
                if req.alarm != AlarmType::None as i32 {
                    all.retain(|a| a.alarm == req.alarm);
                }
                all
            }
            Ok(action) => {
                tracing::info!(%caller, action = action.as_str_name(), member_id = req.member_id, alarm = req.alarm, "alarm change requested");
                let alarm = AlarmMember {
                    member_id: req.member_id,
                    alarm: req.alarm,
                };
                let activate = action == AlarmAction::Activate;
                let before = self.node.read(|r| r.alarms()).await?;
                match self.node.propose(Command::Alarm { activate, alarm }).await? {
                    // etcd answers with the alarms that this request changed.
                    CommandResult::Alarm(_) if activate => vec![alarm],
                    CommandResult::Alarm(_) => before.into_iter().filter(|a| *a == alarm).collect(),
                    other => return Err(ApiError::Internal(format!("unexpected apply result {other:?}")).into()),
                }
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: invalid alarm action")),
        };
        Ok(Response::new(AlarmResponse {
            header: self.node.current_header(),
            alarms,
        }))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let (size, alarms, rev) = node.read(|r| Ok((r.db_size()?, r.alarms()?, r.revisions()?.current))).await?;
        let m = node.raft.metrics().borrow().clone();
        let leader = node.leader().map_or(0, |(_, l)| l.member_id);
        let is_learner = node.members().iter().any(|m| m.raft_id == node.identity.raft_id && !m.voter);
        let mut errors: Vec<String> = Vec::new();
        if m.current_leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        errors.extend(alarms.iter().map(alarm_text));
        Ok(Response::new(StatusResponse {
            header: Some(node.header(rev)),
            version: node.config.etcd_version.clone(),
            db_size: size.size,
            leader,
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: size.in_use,
            is_learner,
            storage_version: String::new(),
            db_size_quota: node.config.limits.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        let store = self.node.store.clone();
        tracing::info!(caller = %ConnInfo::describe(&request), "defragment started");
        tokio::task::spawn_blocking(move || {
            store
                .lock()
                .map_err(|_| ApiError::Internal("store lock poisoned".into()))?
                .defragment()
                .map_err(ApiError::from)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        self.node.refresh_db_size();
        tracing::info!("defragment finished");
        Ok(Response::new(DefragmentResponse {
            header: self.node.current_header(),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, rev) = self.node.read(|r| Ok((r.hash_all()?, r.revisions()?.current))).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let ((hash, compact_revision, hash_revision), rev) =
            self.node.read(move |r| Ok((r.hash_kv(revision)?, r.revisions()?.current))).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(rev)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// Streams a consistent copy of the database followed by its SHA-256 (as etcd does).
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        tracing::info!(caller = %ConnInfo::describe(&request), "snapshot requested");
        let node = self.node.clone();
        let tmp_dir = node.config.data_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
        let path = tmp_dir.join(format!("snapshot-{}.db", rand::random::<u64>()));
        let p = path.clone();
        let rev = node
            .read(move |r| {
                r.backup_to(&p)?;
                Ok(r.revisions()?.current)
            })
            .await?;
        let header = node.header(rev);
        let version = node.config.etcd_version.clone();
        let stream = async_stream_from(move |tx| async move {
            let result: Result<(), Status> = async {
                let mut file = tokio::fs::File::open(&path).await.map_err(|e| Status::internal(e.to_string()))?;
                let total = file.metadata().await.map_err(|e| Status::internal(e.to_string()))?.len() + 32;
                let mut sent: u64 = 0;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                loop {
                    let n = file.read(&mut buf).await.map_err(|e| Status::internal(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    sent += n as u64;
                    let msg = SnapshotResponse {
                        header: Some(header),
                        remaining_bytes: total - sent,
                        blob: buf[..n].to_vec(),
                        version: version.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return Ok(());
                    }
                }
                let digest = hasher.finalize().to_vec();
                let msg = SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: 0,
                    blob: digest,
                    version: version.clone(),
                };
                let _ = tx.send(Ok(msg)).await;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
            let _ = tokio::fs::remove_file(&path).await;
        });
        Ok(Response::new(stream))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let caller = ConnInfo::describe(&request);
        let target = request.into_inner().target_id;
        tracing::info!(target = format!("{target:x}"), %caller, "move leader");
        self.node.move_leader(target).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.node.current_header(),
        }))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(ApiError::NotCapable.into())
    }
}
