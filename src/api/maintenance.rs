//! etcd Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot,
//! MoveLeader, Downgrade.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::stream::from_task;
use crate::core::{Replica, SnapshotCopy};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, downgrade_request::DowngradeAction, maintenance_server::Maintenance, AlarmMember, AlarmRequest,
    AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::tls::ConnInfo;

/// Snapshot stream chunk size (etcd uses 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

pub struct MaintenanceService {
    replica: Arc<Replica>,
    /// The etcd server version this node reports.
    version: String,
}

impl MaintenanceService {
    pub fn new(replica: Arc<Replica>, version: String) -> Self {
        MaintenanceService { replica, version }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let caller = ConnInfo::describe(&request);
        let req = request.into_inner();
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                let mut all = self.replica.alarms().await?;
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
                self.replica.set_alarm(action == AlarmAction::Activate, alarm).await?
            }
            Err(_) => return Err(ApiError::InvalidAlarmAction.into()),
        };
        Ok(Response::new(AlarmResponse {
            header: self.replica.current_header(),
            alarms,
        }))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let mut status = self.replica.status().await?;
        status.version = self.version.clone();
        Ok(Response::new(status))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        tracing::info!(caller = %ConnInfo::describe(&request), "defragment started");
        let resp = self.replica.defragment().await?;
        tracing::info!("defragment finished");
        Ok(Response::new(resp))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Ok(Response::new(self.replica.hash().await?))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Ok(Response::new(self.replica.hash_kv(request.into_inner().revision).await?))
    }

    type SnapshotStream = SnapshotStream;

    /// Streams a consistent copy of the database followed by its SHA-256 (as etcd does).
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        tracing::info!(caller = %ConnInfo::describe(&request), "snapshot requested");
        let copy = self.replica.snapshot().await?;
        let version = self.version.clone();
        let stream = from_task(move |tx| async move {
            if let Err(e) = stream_snapshot(&copy, version, &tx).await {
                tracing::warn!(error = %e, path = %copy.path.display(), "snapshot stream failed");
                let _ = tx
                    .send(Err(Status::internal(format!("etcdserver: reading the snapshot copy: {e}"))))
                    .await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let caller = ConnInfo::describe(&request);
        let target = request.into_inner().target_id;
        tracing::info!(target = format!("{target:x}"), %caller, "move leader");
        self.replica.move_leader(target).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.replica.current_header(),
        }))
    }

    /// etcd's answers for a cluster that has no version to downgrade to: netsy serves
    /// the etcd API at its configured version, and an older netsy cannot read what a
    /// newer one wrote, so every well-formed target is invalid and there is never a
    /// downgrade in flight. Checked in etcd's order (format, then a linearizable read).
    async fn downgrade(&self, request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        let r = request.into_inner();
        match DowngradeAction::try_from(r.action) {
            Ok(DowngradeAction::Validate | DowngradeAction::Enable) => {
                if !is_downgrade_version(&r.version) {
                    return Err(ApiError::WrongDowngradeVersionFormat.into());
                }
                self.replica.linearizable_read().await?;
                Err(ApiError::InvalidDowngradeTargetVersion.into())
            }
            Ok(DowngradeAction::Cancel) => {
                self.replica.linearizable_read().await?;
                Err(ApiError::NoInflightDowngrade.into())
            }
            Err(_) => Err(ApiError::UnknownMethod.into()),
        }
    }
}

/// Whether etcd reads `v` as a cluster version: a semver (`3.5.0`, `3.5.0-rc.1+b`) or
/// `MAJOR.MINOR`.
fn is_downgrade_version(v: &str) -> bool {
    let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    // Pre-release and build identifiers: empty, or dot-separated runs of [0-9A-Za-z-].
    let identifiers = |s: &str| {
        s.is_empty()
            || s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let (rest, build) = v.split_once('+').unwrap_or((v, ""));
    let (core, pre) = rest.split_once('-').unwrap_or((rest, ""));
    let parts: Vec<&str> = core.split('.').collect();
    let semver = parts.len() == 3 && parts.iter().all(|p| number(p)) && identifiers(pre) && identifiers(build);
    let major_minor = !v.contains(['-', '+']) && parts.len() == 2 && parts.iter().all(|p| number(p));
    semver || major_minor
}

/// Sends the copy in chunks, then its SHA-256 (as etcd does). A client that went away
/// ends it quietly.
async fn stream_snapshot(
    copy: &SnapshotCopy,
    version: String,
    tx: &tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(&copy.path).await?;
    let total = file.metadata().await?.len() + 32;
    let mut sent: u64 = 0;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sent += n as u64;
        let msg = SnapshotResponse {
            header: Some(copy.header),
            remaining_bytes: total - sent,
            blob: buf[..n].to_vec(),
            version: version.clone(),
        };
        if tx.send(Ok(msg)).await.is_err() {
            return Ok(());
        }
    }
    let msg = SnapshotResponse {
        header: Some(copy.header),
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
        version,
    };
    let _ = tx.send(Ok(msg)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_downgrade_version;

    #[test]
    fn downgrade_targets_are_read_as_etcd_reads_them() {
        for v in ["3.5", "3.4.0", "3.6.0-rc.1", "3.5.1+build", "10.20.30"] {
            assert!(is_downgrade_version(v), "{v}");
        }
        for v in [
            "",
            "3",
            "v3.5",
            "3.5.",
            "three.five",
            "3.5.0.1",
            "3.5-rc",
            "3.5.0-rc..1",
            "3.5.0+a_b",
        ] {
            assert!(!is_downgrade_version(v), "{v}");
        }
    }
}
