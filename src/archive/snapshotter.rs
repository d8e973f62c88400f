//! The leader uploads snapshots of the applied state and then garbage-collects the
//! archive.
//!
//! A snapshot is due when the epoch has none yet, or, once entries were applied since
//! the last one, when `snapshot_entries` entries or `snapshot_bytes` bytes of segments
//! accumulated or the last one is `snapshot_max_age` old. The copy is taken with SQLite's
//! `VACUUM INTO` on a reader connection (a read transaction: writes continue), then
//! compressed and uploaded from a temporary file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tokio::sync::watch;
use tokio::time::Instant;

use super::log::{Progress, Replay};
use super::snapshot::{self, SnapshotError, SnapshotHeader};
use crate::config::ArchivePolicy;
use crate::mvcc::Reader;

pub struct Snapshotter {
    pub store: Arc<dyn ObjectStore>,
    pub reader: Reader,
    /// Whether this node leads and how far it has applied (from the Raft layer).
    pub progress: watch::Receiver<Progress>,
    /// Reads the applied entry recorded in a copy of the state (the snapshot's index).
    pub replay: Arc<dyn Replay>,
    pub cluster_id: String,
    pub epoch: u64,
    pub policy: ArchivePolicy,
    /// Where the temporary copies go (inside the data directory).
    pub scratch: PathBuf,
    /// Bytes of segments uploaded so far (`Uploader::uploaded_bytes`).
    pub uploaded_bytes: Arc<AtomicU64>,
}

/// The last snapshot: its index, when it was taken (or found) and the segment bytes
/// uploaded by then.
#[derive(Clone, Copy)]
struct Last {
    index: u64,
    at: Instant,
    bytes: u64,
}

impl Snapshotter {
    pub async fn run(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Option<Last>> = None; // None: not looked up yet
        loop {
            tick.tick().await;
            let Progress { leader, applied } = *self.progress.borrow();
            if !leader {
                last = None;
                continue;
            }
            let bytes = self.uploaded_bytes.load(Ordering::Acquire);
            let known = match last {
                Some(l) => l,
                None => match snapshot::list(self.store.as_ref(), self.epoch).await {
                    Ok(found) => {
                        let written = found.last().map_or(0, |(_, meta)| meta.last_modified.timestamp());
                        crate::metrics::ARCHIVE_SNAPSHOT_TIMESTAMP.set(written);
                        crate::metrics::ARCHIVE_SNAPSHOT_INDEX.set(found.last().map_or(0, |(n, _)| n.index) as i64);
                        let l = found.last().map(|(n, _)| Last {
                            index: n.index,
                            at: Instant::now(),
                            bytes,
                        });
                        last = Some(l);
                        l
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot list archive snapshots");
                        continue;
                    }
                },
            };
            if !self.due(known, applied, bytes) {
                continue;
            }
            match self.take().await {
                Ok(header) => {
                    last = Some(Some(Last {
                        index: header.index,
                        at: Instant::now(),
                        bytes,
                    }));
                    crate::metrics::ARCHIVE_SNAPSHOT_INDEX.set(header.index as i64);
                    crate::metrics::ARCHIVE_SNAPSHOT_TIMESTAMP.set(crate::metrics::unix_now());
                    crate::metrics::ARCHIVE_SNAPSHOTS.inc();
                    if let Err(e) =
                        super::gc::collect(self.store.as_ref(), self.epoch, self.policy.snapshots_to_keep, self.policy.history).await
                    {
                        tracing::warn!(error = %crate::error_chain(&e), "archive garbage collection failed; it is retried after the next snapshot");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "snapshot upload failed; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    fn due(&self, last: Option<Last>, applied: u64, bytes: u64) -> bool {
        match last {
            None => applied > 0,
            Some(l) => {
                applied > l.index
                    && (applied - l.index >= self.policy.snapshot_entries
                        || bytes.saturating_sub(l.bytes) >= self.policy.snapshot_bytes
                        || l.at.elapsed() >= self.policy.snapshot_max_age)
            }
        }
    }

    /// Takes and uploads one snapshot of the applied state.
    pub async fn take(&self) -> Result<SnapshotHeader, SnapshotError> {
        std::fs::create_dir_all(&self.scratch).map_err(|source| SnapshotError::Io {
            path: self.scratch.display().to_string(),
            source,
        })?;
        let copy = self.scratch.join("archive-copy.db");
        let _ = std::fs::remove_file(&copy);
        let (reader, copy2) = (self.reader.clone(), copy.clone());
        tokio::task::spawn_blocking(move || reader.backup_to(&copy2)).await??;
        let published = snapshot::publish(&self.store, &copy, &self.cluster_id, self.epoch, &self.scratch, &self.replay).await;
        let _ = std::fs::remove_file(&copy);
        published
    }
}
