//! etcd's space quota, and netsy's archive backlog limit: writes that may grow the
//! database are refused while the NOSPACE alarm is raised or (in `quorum` durability)
//! while object storage is too far behind.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::{CoreError, Replica};
use crate::config::Durability;
use crate::mvcc::{Command, MvccError, Reader};
use crate::proto::etcdserverpb::{AlarmMember, AlarmType};

pub(super) struct Quota {
    /// The NOSPACE alarm is raised.
    nospace: AtomicBool,
    /// The state database's size, refreshed every second.
    db_size: AtomicI64,
    /// `quorum` durability: set while the upload backlog exceeds `max_backlog_bytes`.
    backlog_full: AtomicBool,
}

impl Quota {
    pub(super) fn load(reader: &Reader) -> Result<Quota, CoreError> {
        let nospace = reader.alarms()?.iter().any(|a| a.alarm == AlarmType::Nospace as i32);
        Ok(Quota {
            nospace: AtomicBool::new(nospace),
            db_size: AtomicI64::new(0),
            backlog_full: AtomicBool::new(false),
        })
    }

    pub(super) fn set_nospace(&self, raised: bool) {
        self.nospace.store(raised, Ordering::Relaxed);
    }
}

impl Replica {
    /// Rejects writes that may grow the database while the NOSPACE alarm is raised or the
    /// archive backlog is full, and raises the alarm when the database exceeds the quota
    /// (etcd's quota behaviour).
    pub(super) async fn check_quota(&self) -> Result<(), CoreError> {
        if self.quota.nospace.load(Ordering::Relaxed) || self.quota.backlog_full.load(Ordering::Relaxed) {
            return Err(MvccError::NoSpace.into());
        }
        if self.quota.db_size.load(Ordering::Relaxed) as u64 > self.settings.limits.quota_backend_bytes {
            let alarm = AlarmMember {
                member_id: self.ids.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            self.propose(Command::Alarm { activate: true, alarm }).await?;
            return Err(MvccError::NoSpace.into());
        }
        Ok(())
    }

    /// Measures the state database (for the quota and the size metrics).
    pub fn refresh_db_size(&self) {
        if let Ok(s) = self.reader.db_size() {
            self.quota.db_size.store(s.size, Ordering::Relaxed);
            crate::metrics::DB_TOTAL_SIZE.set(s.size);
            crate::metrics::DB_IN_USE_SIZE.set(s.in_use);
        }
    }

    /// Measures the archive upload backlog; in `quorum` durability, writes stop while it
    /// exceeds `archive.max_backlog_bytes` (nothing acknowledged is ever dropped).
    pub fn refresh_backlog(&self) {
        if !self.is_leader() {
            // Only the leader uploads: a member that led before has no backlog of its own.
            self.quota.backlog_full.store(false, Ordering::Relaxed);
            crate::metrics::ARCHIVE_BACKLOG_BYTES.set(0);
            return;
        }
        let Ok(bytes) = self.log.bytes_after(*self.archived.borrow()) else {
            return;
        };
        crate::metrics::ARCHIVE_BACKLOG_BYTES.set(bytes as i64);
        let limit = self.settings.max_backlog_bytes;
        let full = self.settings.durability == Durability::Quorum && bytes > limit;
        if full != self.quota.backlog_full.swap(full, Ordering::Relaxed) {
            if full {
                tracing::error!(
                    bytes,
                    limit,
                    "object storage backlog is full: rejecting writes until uploads catch up"
                );
            } else {
                tracing::info!(bytes, "object storage backlog drained below the limit: accepting writes again");
            }
        }
    }
}

impl Replica {
    /// Every second until the task is dropped: the database size (quota, metrics), the
    /// archive backlog, and a Raft snapshot once the log since the last one holds more
    /// than `snapshot_log_bytes` (openraft counts only entries).
    pub async fn measure(self: std::sync::Arc<Self>, snapshot_log_bytes: u64) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let replica = self.clone();
            let snapshot_due = tokio::task::spawn_blocking(move || {
                replica.refresh_db_size();
                replica.refresh_backlog();
                replica.log_since_snapshot() >= snapshot_log_bytes
            })
            .await;
            if let Ok(true) = snapshot_due {
                // openraft ignores this while a snapshot is being built.
                let _ = self.raft.trigger().snapshot().await;
            }
        }
    }
}
