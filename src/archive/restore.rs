//! Rebuilding the applied state of one epoch from object storage: the newest snapshot,
//! then every later segment, replayed through the same apply code as live entries. The
//! archive does not decode entries itself: each segment's entries go, as bytes with
//! their encoding, to the caller's [`Replay`] (the Raft layer's state machine).
//!
//! Every object is verified (checksums, the index range its name claims) and the
//! entries must continue the snapshot without a gap; anything missing or corrupt is an
//! error naming the object, and the partial database is deleted, never served.

use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use std::sync::Arc;

use super::log::{effective_time, BoxError, Replay, ReplayError};
use super::segment::{self, SegmentError, SegmentName};
use super::snapshot::{self, SnapshotError};
use crate::metrics::{RESTORE_BYTES, RESTORE_ENTRIES, RESTORE_IN_PROGRESS};
use crate::mvcc::{MvccError, Store};

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
    #[error("{object}: entry {index} cannot be decoded: {source}")]
    Entry {
        object: String,
        index: u64,
        #[source]
        source: BoxError,
    },
    /// Applying the batch that starts at entry `index` failed.
    #[error("{object}: applying entry {index}: {source}")]
    Apply {
        object: String,
        index: u64,
        #[source]
        source: BoxError,
    },
    #[error("restore target {0}: {1}")]
    Target(String, String),
    #[error("restore target {path}: {source}")]
    Database { path: String, source: MvccError },
    #[error("restore task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("epoch {epoch} cannot be restored to {target}: that is before its oldest snapshot and its segments no longer start at entry 1 (see `netsy snapshot points`)")]
    Before { epoch: u64, target: String },
    #[error("epoch {epoch} does not reach {target}: its archive ends at {newest} (see `netsy snapshot points`)")]
    Beyond { epoch: u64, target: String, newest: String },
}

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Everything the epoch holds.
    Latest,
    /// Through Raft log entry `index`.
    Index(u64),
    /// The last entry committed at or before this time (ms since the Unix epoch).
    Time(u64),
    /// Exactly store revision `revision`: the commands of an entry after the one that
    /// made it are not applied.
    Revision(i64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => write!(f, "the newest archived entry"),
            Target::Index(i) => write!(f, "index {i}"),
            Target::Time(ms) => write!(f, "{}", rfc3339_ms(*ms)),
            Target::Revision(r) => write!(f, "revision {r}"),
        }
    }
}

/// `ms` since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_ms(ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| format!("{ms} ms")),
        Err(_) => format!("{ms} ms"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    pub epoch: u64,
    /// The snapshot the restore started from (`None`: the epoch's beginning).
    pub snapshot_index: Option<u64>,
    /// The last entry applied (with `Target::Revision`, possibly only in part).
    pub last_index: u64,
    /// The commit time of the state (ms since the Unix epoch; 0: unknown).
    pub commit_unix_ms: u64,
    pub entries: u64,
    pub segments: usize,
    pub bytes: u64,
    pub revision: i64,
    pub elapsed_ms: u64,
}

/// Rebuilds epoch `epoch` up to `target` into the new database file `dest`, applying the
/// segments' entries through `replay`. On error `dest` is removed.
pub async fn restore(
    store: &dyn ObjectStore,
    epoch: u64,
    dest: &FsPath,
    target: Target,
    replay: &Arc<dyn Replay>,
) -> Result<RestoreReport, RestoreError> {
    if dest.exists() {
        return Err(RestoreError::Target(dest.display().to_string(), "already exists".into()));
    }
    RESTORE_IN_PROGRESS.set(1);
    let mut attempt = 1;
    let result = loop {
        let result = run(store, epoch, dest, target, replay).await;
        if result.is_err() {
            crate::mvcc::remove_database(dest);
            let _ = std::fs::remove_file(dest.with_extension("snap"));
        }
        match result {
            // A running cluster collects the snapshots and segments a newer snapshot
            // covers: planned on a listing, a long restore beside it can find an object
            // gone. The new listing starts from the newer snapshot.
            Err(e) if e.collected() && attempt < ATTEMPTS => {
                tracing::warn!(
                    error = %crate::error_chain(&e),
                    attempt,
                    "restore: an object it was reading was collected meanwhile (a newer snapshot covers it); starting again from the newest listing"
                );
                attempt += 1;
            }
            other => break other,
        }
    };
    RESTORE_IN_PROGRESS.set(0);
    result
}

/// Listings a restore plans on before it gives up on objects collected under it.
const ATTEMPTS: usize = 3;

impl RestoreError {
    /// An object the restore had listed was not there any more.
    fn collected(&self) -> bool {
        let gone = |e: &object_store::Error| matches!(e, object_store::Error::NotFound { .. });
        match self {
            RestoreError::Store { source, .. } => gone(source),
            RestoreError::Snapshot(SnapshotError::Store { source, .. }) => gone(source),
            _ => false,
        }
    }
}

/// The newest snapshot of `epoch` a restore to `target` can start from: at or before it
/// (`None` when the target is before every snapshot). Headers are read newest first,
/// only as far as needed.
async fn base_snapshot(
    store: &dyn ObjectStore,
    snapshots: &[(snapshot::SnapshotName, object_store::ObjectMeta)],
    target: Target,
) -> Result<Option<(snapshot::SnapshotName, u64)>, RestoreError> {
    for (name, meta) in snapshots.iter().rev() {
        let fits = match target {
            Target::Latest => true,
            Target::Index(i) => name.index <= i,
            Target::Time(ms) => snapshot::fetch_header(store, name).await?.time_bound() <= ms,
            Target::Revision(r) => snapshot::fetch_header(store, name).await?.revision <= r,
        };
        if fits {
            return Ok(Some((*name, meta.size)));
        }
    }
    Ok(None)
}

async fn run(
    store: &dyn ObjectStore,
    epoch: u64,
    dest: &FsPath,
    target: Target,
    replay: &Arc<dyn Replay>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let limit = match target {
        Target::Index(i) => i,
        _ => u64::MAX,
    };
    let snapshots = snapshot::list(store, epoch).await?;
    let base = base_snapshot(store, &snapshots, target).await?;
    let listed = segment::list(store, epoch).await.map_err(|source| RestoreError::Store {
        path: format!("epochs/{epoch}/wal"),
        source,
    })?;
    // Without a snapshot the epoch's history must start at entry 1 (an empty store).
    if base.is_none() && target != Target::Latest && !snapshots.is_empty() && listed.first().is_none_or(|(n, _)| n.first > 1) {
        return Err(RestoreError::Before {
            epoch,
            target: target.to_string(),
        });
    }
    let mut bytes = 0u64;
    let mut applied = 0u64;
    let mut stop = Stop::new(target);
    if let Some((name, size)) = base {
        tracing::info!(object = %name.path(), bytes = size, "restore: downloading snapshot");
        let header = snapshot::download(store, &name, dest).await?;
        bytes += size;
        RESTORE_BYTES.inc_by(size);
        applied = header.index;
        stop.time = header.commit_unix_ms;
        tracing::info!(index = header.index, revision = header.revision, "restore: snapshot in place");
    }
    let base_label = base.map_or_else(|| format!("the start of epoch {epoch}"), |(n, _)| n.path().to_string());

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
    if let Target::Index(upto) = target {
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
        %target,
        "restore: replaying segments"
    );
    let dest_path = dest.to_path_buf();
    let database = |source| RestoreError::Database {
        path: dest.display().to_string(),
        source,
    };
    let mut db = tokio::task::spawn_blocking(move || Store::open(&dest_path))
        .await?
        .map_err(database)?;
    if let Target::Revision(r) = target {
        stop.reached = db.revision() >= r;
    }
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
    while !stop.reached {
        let Some(fetched) = fetches.next().await else { break };
        let (name, data) = fetched?;
        bytes += data.len() as u64;
        RESTORE_BYTES.inc_by(data.len() as u64);
        let replay = replay.clone();
        let (store_back, n, stop_back) =
            tokio::task::spawn_blocking(move || replay_segment(db, replay.as_ref(), &name, &data, applied, stop)).await??;
        db = store_back;
        stop = stop_back;
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
    if let Target::Revision(r) = target {
        if revision < r {
            return Err(RestoreError::Beyond {
                epoch,
                target: target.to_string(),
                newest: format!("revision {revision}"),
            });
        }
    }
    tokio::task::spawn_blocking(move || db.checkpoint()).await?.map_err(database)?;
    let report = RestoreReport {
        epoch,
        snapshot_index: base.map(|(n, _)| n.index),
        last_index: applied,
        commit_unix_ms: stop.time,
        entries,
        segments: done,
        bytes,
        revision,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(?report, "restore: complete");
    Ok(report)
}

/// Where replay stops, and how far it has come: the running commit time (the maximum
/// of the times seen, `raft::clock`'s rule) and whether the target was reached.
#[derive(Debug, Clone, Copy)]
struct Stop {
    target: Target,
    time: u64,
    reached: bool,
}

impl Stop {
    fn new(target: Target) -> Stop {
        Stop {
            target,
            time: 0,
            reached: false,
        }
    }
}

/// Applies the entries of one segment after `applied` that `stop` still wants through
/// `replay`; returns the store, how many entries it applied (in whole or, for a revision
/// target, in part) and the stop state after them.
fn replay_segment(
    mut db: Store,
    replay: &dyn Replay,
    name: &SegmentName,
    data: &[u8],
    applied: u64,
    mut stop: Stop,
) -> Result<(Store, u64, Stop), RestoreError> {
    let decoded = segment::decode(data, name)?;
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    // The commit time after each entry of `batch`.
    let mut times: Vec<u64> = Vec::new();
    for frame in decoded.frames {
        if frame.index <= applied {
            continue;
        }
        match stop.target {
            Target::Index(i) if frame.index > i => {
                stop.reached = true;
                break;
            }
            Target::Time(ms) if effective_time(stop.time, frame.unix_ms) > ms => {
                stop.reached = true;
                break;
            }
            _ => {}
        }
        stop.time = effective_time(stop.time, frame.unix_ms);
        times.push(stop.time);
        batch.push((frame.index, frame.entry));
    }
    let Some(&(first, _)) = batch.first() else {
        return Ok((db, 0, stop));
    };
    let object = || name.path().to_string();
    let failed = |e: ReplayError| match e {
        ReplayError::Entry { index, source } => RestoreError::Entry {
            object: object(),
            index,
            source,
        },
        ReplayError::Apply(source) => RestoreError::Apply {
            object: object(),
            index: first,
            source,
        },
    };
    let n = match stop.target {
        Target::Revision(r) => {
            let through = replay.apply_until(&mut db, decoded.encoding, &batch, r).map_err(failed)?;
            if let Some(index) = through {
                stop.reached = true;
                let n = index - first + 1;
                // The time of the entry the state stopped in.
                stop.time = times[n as usize - 1];
                n
            } else {
                batch.len() as u64
            }
        }
        _ => {
            replay.apply(&mut db, decoded.encoding, &batch).map_err(failed)?;
            batch.len() as u64
        }
    };
    Ok((db, n, stop))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::log::Applied;
    use crate::mvcc::AppliedMeta;

    #[derive(Debug, thiserror::Error)]
    #[error("boom at {0}")]
    struct Boom(u64);

    /// Fails decoding entry `bad`, or (with `None`) fails applying; records what it got.
    struct Failing {
        bad: Option<u64>,
        seen: std::sync::Mutex<Vec<u64>>,
    }

    impl Replay for Failing {
        fn apply(&self, _: &mut Store, _: segment::EntryEncoding, entries: &[(u64, Vec<u8>)]) -> Result<(), ReplayError> {
            self.seen.lock().unwrap().extend(entries.iter().map(|e| e.0));
            match self.bad {
                Some(index) => Err(ReplayError::Entry {
                    index,
                    source: Box::new(Boom(index)),
                }),
                None => Err(ReplayError::Apply(Box::new(Boom(0)))),
            }
        }

        fn apply_until(
            &self,
            db: &mut Store,
            encoding: segment::EntryEncoding,
            entries: &[(u64, Vec<u8>)],
            _: i64,
        ) -> Result<Option<u64>, ReplayError> {
            self.apply(db, encoding, entries).map(|_| None)
        }

        fn applied(&self, _: &AppliedMeta) -> Result<Option<Applied>, BoxError> {
            Ok(None)
        }
    }

    fn segment_3_to_6() -> (SegmentName, Vec<u8>) {
        let name = SegmentName {
            epoch: 2,
            first: 3,
            last: 6,
        };
        let bytes = segment::encode(&(3..=6).map(|i| segment::Frame::new(i, 0, vec![i as u8])).collect::<Vec<_>>()).unwrap();
        (name, bytes)
    }

    #[test]
    fn replay_errors_name_the_object_and_the_entry_and_keep_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let (name, bytes) = segment_3_to_6();
        let object = name.path().to_string();

        let replay = Failing {
            bad: Some(5),
            seen: Default::default(),
        };
        let db = Store::open(&dir.path().join("a.db")).unwrap();
        let err = replay_segment(db, &replay, &name, &bytes, 3, Stop::new(Target::Index(5)))
            .err()
            .expect("decode fails");
        assert!(
            matches!(&err, RestoreError::Entry { object: o, index: 5, .. } if *o == object),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("the cause is kept");
        assert_eq!(source.downcast_ref::<Boom>().map(|b| b.0), Some(5));
        assert_eq!(crate::error_chain(&err), format!("{object}: entry 5 cannot be decoded: boom at 5"));
        // Only the entries after `applied` (3) and up to the limit (5) are handed over.
        assert_eq!(*replay.seen.lock().unwrap(), vec![4, 5]);
        drop(replay);

        let replay = Failing {
            bad: None,
            seen: Default::default(),
        };
        let db = Store::open(&dir.path().join("b.db")).unwrap();
        let err = replay_segment(db, &replay, &name, &bytes, 3, Stop::new(Target::Index(5)))
            .err()
            .expect("apply fails");
        // An apply failure names the first entry of the batch.
        assert!(
            matches!(&err, RestoreError::Apply { object: o, index: 4, .. } if *o == object),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("the cause is kept");
        assert!(source.downcast_ref::<Boom>().is_some(), "{source:?}");
        assert_eq!(crate::error_chain(&err), format!("{object}: applying entry 4: boom at 0"));
    }

    #[test]
    fn a_segment_wholly_applied_already_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (name, bytes) = segment_3_to_6();
        let replay = Failing {
            bad: Some(3),
            seen: Default::default(),
        };
        let db = Store::open(&dir.path().join("a.db")).unwrap();
        let (_, n, _) = replay_segment(db, &replay, &name, &bytes, 6, Stop::new(Target::Latest)).expect("nothing to apply");
        assert_eq!(n, 0);
        assert!(replay.seen.lock().unwrap().is_empty());
    }
}
