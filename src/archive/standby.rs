//! A standby cluster's use of object storage: seeding its own archive from the
//! primary's, finding the primary's entries it has not replayed yet, and the promotion
//! markers in its own storage.
//!
//! The primary's archive is only ever read (callers pass it wrapped in a
//! `store::ReadOnlyStore`). The standby runs as a cluster of its own — its own epoch,
//! Raft group and archive — whose leader replays the primary's entries (the Raft layer
//! decodes them; here they stay opaque frames). Promotion is two objects in the
//! standby's own storage: `standby/promote.json` (asked for, by `netsy standby promote`
//! or the client port's admin call) and `standby/promoted.json` (done: written by the
//! standby's leader once it has replayed everything archived and stopped following;
//! every member serves writes once it sees it).

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode};
use serde::{Deserialize, Serialize};

use super::log::Replay;
use super::manifest::{self, ManifestError};
use super::restore::{self, RestoreError, RestoreReport, Target};
use super::segment::{self, EntryEncoding, Frame, SegmentError};
use super::snapshot::{self, SnapshotError};

const PROMOTE: &str = "standby/promote.json";
const PROMOTED: &str = "standby/promoted.json";
const FORMAT_VERSION: u32 = 1;
/// How long `netsy standby promote` and the admin call wait for the standby's leader.
pub const PROMOTE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Bootstrap(#[from] super::bootstrap::BootstrapError),
    #[error("object storage: {path}: {source}")]
    Store { path: String, source: object_store::Error },
    #[error("the primary's object storage holds no cluster.json for cluster {0:?}: check standby.source and standby.source_cluster_id")]
    NoPrimary(String),
    #[error("the primary's archive no longer holds the entries after {index} of epoch {epoch} (its next segment starts at {next}): the standby fell further behind than the primary keeps (archive.history); seed it again from an empty storage")]
    Behind { epoch: u64, index: u64, next: u64 },
    #[error("the primary's epoch {next} starts from revision {base}, but the standby holds revision {ours} of epoch {epoch}: the primary was restored to another point; seed the standby again from an empty storage")]
    Diverged { epoch: u64, next: u64, base: i64, ours: i64 },
    #[error("standby state: {0}")]
    State(#[source] crate::mvcc::MvccError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: String, source: serde_json::Error },
}

fn store_err(path: &str) -> impl Fn(object_store::Error) -> StandbyError + '_ {
    move |source| StandbyError::Store {
        path: path.to_string(),
        source,
    }
}

/// A primary's entry position (epoch, index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

/// `standby/promoted.json`: where the standby stood when it stopped following.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub format_version: u32,
    pub primary_cluster_id: String,
    /// The last primary entry the standby replayed.
    pub primary: Position,
    /// The newest entry the primary's archive held then (equal to `primary` unless
    /// object storage failed during the last catch-up).
    pub primary_archived: Position,
    /// The standby's revision, and the commit time of its last replayed entry.
    pub revision: i64,
    pub commit_unix_ms: u64,
    pub promoted_unix_ms: u64,
}

/// `standby/promote.json`: promotion was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub format_version: u32,
    pub requested_unix_ms: u64,
}

/// The promotion record, if the standby was promoted.
pub async fn promoted(own: &dyn ObjectStore) -> Result<Option<Promoted>, StandbyError> {
    Ok(manifest::read::<Promoted>(own, &Path::from(PROMOTED)).await?.map(|v| v.value))
}

/// Whether promotion was asked for.
pub async fn promotion_requested(own: &dyn ObjectStore) -> Result<bool, StandbyError> {
    match own.head(&Path::from(PROMOTE)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_err(PROMOTE)(e)),
    }
}

/// Asks the standby cluster to promote itself (its leader acts on it).
pub async fn request_promotion(own: &dyn ObjectStore) -> Result<(), StandbyError> {
    let request = PromoteRequest {
        format_version: FORMAT_VERSION,
        requested_unix_ms: super::log::wall_clock_ms(),
    };
    let bytes = serde_json::to_vec_pretty(&request).map_err(|source| StandbyError::Json {
        path: PROMOTE.into(),
        source,
    })?;
    own.put(&Path::from(PROMOTE), bytes.into()).await.map_err(store_err(PROMOTE))?;
    Ok(())
}

/// Records the promotion (once: a second writer finds the first one's record).
pub async fn record_promoted(own: &dyn ObjectStore, record: &Promoted) -> Result<Promoted, StandbyError> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| StandbyError::Json {
        path: PROMOTED.into(),
        source,
    })?;
    match own.put_opts(&Path::from(PROMOTED), bytes.into(), PutMode::Create.into()).await {
        Ok(_) => Ok(record.clone()),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(promoted(own).await?.unwrap_or_else(|| record.clone())),
        Err(e) => Err(store_err(PROMOTED)(e)),
    }
}

/// Waits up to `timeout` for the promotion record.
pub async fn wait_promoted(own: &dyn ObjectStore, timeout: Duration) -> Result<Option<Promoted>, StandbyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = promoted(own).await? {
            return Ok(Some(p));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The primary's current epoch.
pub async fn primary_epoch(primary: &dyn ObjectStore, cluster_id: &str) -> Result<u64, StandbyError> {
    Ok(manifest::read_cluster(primary, cluster_id)
        .await?
        .ok_or_else(|| StandbyError::NoPrimary(cluster_id.into()))?
        .value
        .epoch)
}

/// Seeds the standby's own storage, which holds no cluster yet: the primary's newest
/// state (its current epoch, everything archived) becomes epoch 1 of `own_cluster`,
/// recording the primary's position it stands at.
pub async fn seed(
    primary: &dyn ObjectStore,
    primary_cluster: &str,
    own: &Arc<dyn ObjectStore>,
    own_cluster: &str,
    scratch: &FsPath,
    replay: &Arc<dyn Replay>,
) -> Result<(Position, RestoreReport), StandbyError> {
    let epoch = primary_epoch(primary, primary_cluster).await?;
    std::fs::create_dir_all(scratch).map_err(|source| StandbyError::Io {
        path: scratch.display().to_string(),
        source,
    })?;
    let db = scratch.join(format!("standby-seed-{}.db", rand::random::<u32>()));
    let result = async {
        tracing::info!(primary = primary_cluster, epoch, "standby: seeding from the primary's archive");
        let report = restore::restore(primary, epoch, &db, Target::Latest, replay).await?;
        let position = Position {
            epoch,
            index: report.last_index,
        };
        let db2 = db.clone();
        tokio::task::spawn_blocking(move || crate::mvcc::set_applied_source(&db2, position.epoch, position.index))
            .await
            .map_err(|e| StandbyError::Io {
                path: db.display().to_string(),
                source: std::io::Error::other(e),
            })?
            .map_err(StandbyError::State)?;
        super::bootstrap::open_epoch(own, own_cluster, None, &db, None, scratch, replay).await?;
        Ok((position, report))
    }
    .await;
    crate::mvcc::remove_database(&db);
    result
}

/// What the primary's archive holds after a position.
#[derive(Debug)]
pub enum Pending {
    /// Entries of the same epoch, in order (the first is right after the position),
    /// with their encoding; `newest` is the epoch's newest archived entry.
    Entries {
        encoding: EntryEncoding,
        frames: Vec<Frame>,
        newest: Position,
    },
    /// Nothing new in the position's epoch, and the primary moved on to epoch `next`,
    /// whose state starts at `base_revision` (its snapshot 0).
    NextEpoch { next: u64, base_revision: i64 },
    /// Nothing new.
    None,
}

/// The primary's entries after `at` (at most `max_segments` segments' worth).
pub async fn pending(primary: &dyn ObjectStore, primary_cluster: &str, at: Position, max_segments: usize) -> Result<Pending, StandbyError> {
    let wal = format!("epochs/{}/wal", at.epoch);
    let listed = segment::list(primary, at.epoch).await.map_err(store_err(&wal))?;
    let after: Vec<_> = listed.iter().filter(|(n, _)| n.last > at.index).take(max_segments).collect();
    if let Some((first, _)) = after.first() {
        if first.first > at.index + 1 {
            return Err(StandbyError::Behind {
                epoch: at.epoch,
                index: at.index,
                next: first.first,
            });
        }
        let newest = Position {
            epoch: at.epoch,
            index: listed.last().map_or(at.index, |(n, _)| n.last),
        };
        let mut frames = Vec::new();
        let mut encoding = EntryEncoding::Current;
        for (name, _) in after {
            let path = name.path();
            let data = async { primary.get(&path).await?.bytes().await }
                .await
                .map_err(store_err(path.as_ref()))?;
            let decoded = segment::decode(&data, name)?;
            if !frames.is_empty() && decoded.encoding != encoding {
                break; // one encoding per answer; the rest comes next time
            }
            encoding = decoded.encoding;
            frames.extend(decoded.frames.into_iter().filter(|f| f.index > at.index));
        }
        return Ok(Pending::Entries { encoding, frames, newest });
    }
    let current = primary_epoch(primary, primary_cluster).await?;
    if current <= at.epoch {
        return Ok(Pending::None);
    }
    // The primary opened a newer epoch: the first one after ours that it still holds.
    let next = super::points::epochs(primary)
        .await?
        .into_iter()
        .find(|&e| e > at.epoch)
        .unwrap_or(current);
    let base = snapshot::fetch_header(primary, &snapshot::SnapshotName { epoch: next, index: 0 }).await?;
    Ok(Pending::NextEpoch {
        next,
        base_revision: base.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn promotion_is_asked_for_then_recorded_once() {
        let own = object_store::memory::InMemory::new();
        assert!(!promotion_requested(&own).await.unwrap());
        assert_eq!(promoted(&own).await.unwrap(), None);
        request_promotion(&own).await.unwrap();
        assert!(promotion_requested(&own).await.unwrap());
        let record = |revision| Promoted {
            format_version: FORMAT_VERSION,
            primary_cluster_id: "prod".into(),
            primary: Position { epoch: 2, index: 10 },
            primary_archived: Position { epoch: 2, index: 10 },
            revision,
            commit_unix_ms: 5,
            promoted_unix_ms: 6,
        };
        assert_eq!(record_promoted(&own, &record(7)).await.unwrap(), record(7));
        // A second leader's record loses to the first.
        assert_eq!(record_promoted(&own, &record(8)).await.unwrap(), record(7));
        assert_eq!(wait_promoted(&own, Duration::ZERO).await.unwrap(), Some(record(7)));
    }
}
