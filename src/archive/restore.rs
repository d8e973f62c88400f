//! Rebuilding the applied state of one epoch from object storage: the newest snapshot,
//! then every later segment, replayed through the same apply code as live entries
//! (`raft::state_machine::apply_entries`).
//!
//! Every object is verified (checksums, the index range its name claims) and the
//! entries must continue the snapshot without a gap; anything missing or corrupt is an
//! error naming the object, and the partial database is deleted, never served.

use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use super::segment::{self, SegmentError, SegmentName};
use super::snapshot::{self, SnapshotError};
use crate::metrics::{RESTORE_BYTES, RESTORE_ENTRIES, RESTORE_IN_PROGRESS};
use crate::mvcc::Store;
use crate::raft::state_machine::{apply_entries, ApplyError};

/// Segments fetched ahead of the one being applied.
const PREFETCH: usize = 8;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("object storage: {path}: {source}")]
    Store { path: String, source: object_store::Error },
    #[error("epoch {epoch}: entries {from}..={to} are missing from object storage (after {after})")]
    Gap { epoch: u64, from: u64, to: u64, after: String },
    #[error("{object}: entry {index} cannot be decoded: {msg}")]
    Entry { object: String, index: u64, msg: String },
    #[error("{object}: applying entry {index}: {source}")]
    Apply { object: String, index: u64, source: ApplyError },
    #[error("restore target {0}: {1}")]
    Target(String, String),
    #[error("epoch {epoch} has no snapshot at or below index {index}")]
    NoSnapshot { epoch: u64, index: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub epoch: u64,
    /// The snapshot the restore started from (`None`: the epoch's beginning).
    pub snapshot_index: Option<u64>,
    /// The last entry applied.
    pub last_index: u64,
    pub entries: u64,
    pub segments: usize,
    pub bytes: u64,
    pub revision: i64,
    pub elapsed_ms: u64,
}

/// Rebuilds epoch `epoch` (up to entry `upto`, else everything) into the new database
/// file `dest`. On error `dest` is removed.
pub async fn restore(store: &dyn ObjectStore, epoch: u64, dest: &FsPath, upto: Option<u64>) -> Result<RestoreReport, RestoreError> {
    if dest.exists() {
        return Err(RestoreError::Target(dest.display().to_string(), "already exists".into()));
    }
    RESTORE_IN_PROGRESS.set(1);
    let result = run(store, epoch, dest, upto).await;
    RESTORE_IN_PROGRESS.set(0);
    if result.is_err() {
        crate::mvcc::remove_database(dest);
    }
    result
}

async fn run(store: &dyn ObjectStore, epoch: u64, dest: &FsPath, upto: Option<u64>) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let limit = upto.unwrap_or(u64::MAX);
    let snapshots = snapshot::list(store, epoch).await?;
    let base = snapshots.iter().rev().find(|(n, _)| n.index <= limit).map(|(n, m)| (*n, m.size));
    if base.is_none() && upto.is_some() && !snapshots.is_empty() {
        return Err(RestoreError::NoSnapshot { epoch, index: limit });
    }
    let mut bytes = 0u64;
    // Without a snapshot the epoch's history starts at entry 1 on an empty store.
    let mut applied = 0u64;
    if let Some((name, size)) = base {
        tracing::info!(object = %name.path(), bytes = size, "restore: downloading snapshot");
        let header = snapshot::download(store, &name, dest).await?;
        bytes += size;
        RESTORE_BYTES.inc_by(size);
        applied = header.index;
        tracing::info!(index = header.index, revision = header.revision, "restore: snapshot in place");
    }
    let base_label = base.map_or_else(|| format!("the start of epoch {epoch}"), |(n, _)| n.path().to_string());

    let listed = segment::list(store, epoch).await.map_err(|source| RestoreError::Store {
        path: format!("epochs/{epoch}/wal"),
        source,
    })?;
    let wanted: Vec<(SegmentName, u64)> = listed.into_iter().filter(|(n, _)| n.last > applied && n.first <= limit).collect();
    // Continuity before downloading anything: each segment must start at or before the
    // entry after the previous one.
    let mut next = applied + 1;
    let mut after = base_label.clone();
    for (name, _) in &wanted {
        if name.first > next {
            return Err(RestoreError::Gap {
                epoch,
                from: next,
                to: name.first - 1,
                after,
            });
        }
        next = next.max(name.last + 1);
        after = name.path().to_string();
    }
    if let Some(upto) = upto {
        if next <= upto {
            return Err(RestoreError::Gap {
                epoch,
                from: next,
                to: upto,
                after,
            });
        }
    }

    let total = wanted.len();
    let total_bytes: u64 = wanted.iter().map(|(_, s)| s).sum();
    tracing::info!(
        segments = total,
        bytes = total_bytes,
        from_index = applied + 1,
        "restore: replaying segments"
    );
    let dest_path = dest.to_path_buf();
    let mut db = tokio::task::spawn_blocking(move || Store::open(&dest_path))
        .await
        .map_err(|e| RestoreError::Target(dest.display().to_string(), e.to_string()))?
        .map_err(|e| RestoreError::Target(dest.display().to_string(), e.to_string()))?;
    let mut fetches = futures::stream::iter(wanted.into_iter().map(|(name, _)| async move {
        let path = name.path();
        let data = async { store.get(&path).await?.bytes().await }
            .await
            .map_err(|source| RestoreError::Store {
                path: path.to_string(),
                source,
            })?;
        Ok::<_, RestoreError>((name, data))
    }))
    .buffered(PREFETCH);
    let mut entries = 0u64;
    let mut done = 0usize;
    let mut last_log = Instant::now();
    while let Some(fetched) = fetches.next().await {
        let (name, data) = fetched?;
        bytes += data.len() as u64;
        RESTORE_BYTES.inc_by(data.len() as u64);
        let (store_back, n) = tokio::task::spawn_blocking(move || replay(db, &name, &data, applied, limit))
            .await
            .map_err(|e| RestoreError::Target(String::new(), e.to_string()))??;
        db = store_back;
        applied += n;
        entries += n;
        RESTORE_ENTRIES.inc_by(n);
        done += 1;
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                segments = format!("{done}/{total}"),
                entries,
                mib = bytes >> 20,
                entries_per_sec = (entries as f64 / secs) as u64,
                mib_per_sec = format!("{:.1}", bytes as f64 / secs / (1 << 20) as f64),
                "restore: progress"
            );
        }
    }
    let revision = db.revision();
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await
        .map_err(|e| RestoreError::Target(String::new(), e.to_string()))?
        .map_err(|e| RestoreError::Target(String::new(), e.to_string()))?;
    let report = RestoreReport {
        epoch,
        snapshot_index: base.map(|(n, _)| n.index),
        last_index: applied,
        entries,
        segments: total,
        bytes,
        revision,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(?report, "restore: complete");
    Ok(report)
}

/// Applies the entries of one segment after `applied` (and up to `limit`); returns the
/// store and how many entries it applied.
fn replay(mut db: Store, name: &SegmentName, data: &[u8], applied: u64, limit: u64) -> Result<(Store, u64), RestoreError> {
    let object = name.path().to_string();
    let mut batch = Vec::new();
    let decoded = segment::decode(data, name)?;
    let decode_entry = match decoded.encoding {
        segment::EntryEncoding::Current => crate::raft::codec::decode_entry,
        segment::EntryEncoding::Bincode => crate::raft::codec::legacy::decode_entry,
    };
    for (index, raw) in decoded.entries {
        if index <= applied || index > limit {
            continue;
        }
        let entry = decode_entry(&raw).map_err(|e| RestoreError::Entry {
            object: object.clone(),
            index,
            msg: crate::error_chain(&e),
        })?;
        if entry.log_id.index != index {
            return Err(RestoreError::Entry {
                object,
                index,
                msg: format!("frame says {index}, entry says {}", entry.log_id.index),
            });
        }
        batch.push(entry);
    }
    let n = batch.len() as u64;
    let first = batch.first().map_or(0, |e| e.log_id.index);
    if n > 0 {
        apply_entries(&mut db, batch).map_err(|source| RestoreError::Apply {
            object,
            index: first,
            source,
        })?;
    }
    Ok((db, n))
}
