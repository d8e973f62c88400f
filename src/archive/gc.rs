//! Garbage collection of the archive after a snapshot upload: keep the newest
//! `keep` snapshots of the current epoch, every snapshot needed to restore to a point
//! within `history` (those newer than its start, and the newest one before it), and
//! every segment that one of them still needs; delete older snapshots, segments wholly
//! covered by the oldest kept snapshot, and every object of an earlier epoch once the
//! epoch after it opened before the history's start (until then, restores to the times
//! it was serving need it).

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{segment, snapshot};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub snapshots: usize,
    pub segments: usize,
    pub old_epoch_objects: usize,
}

fn store_err(path: &str) -> impl Fn(object_store::Error) -> snapshot::SnapshotError + '_ {
    move |source| snapshot::SnapshotError::Store {
        path: path.to_string(),
        source,
    }
}

async fn delete(store: &dyn ObjectStore, path: &Path) -> Result<(), snapshot::SnapshotError> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_err(path.as_ref())(e)),
    }
}

/// When the epoch opened: its base snapshot's creation time (`None`: no base).
async fn opened_ms(store: &dyn ObjectStore, epoch: u64) -> Result<Option<u64>, snapshot::SnapshotError> {
    let base = snapshot::SnapshotName { epoch, index: 0 };
    match snapshot::fetch_header(store, &base).await {
        Ok(h) => Ok(Some(h.created_ms())),
        Err(snapshot::SnapshotError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The snapshots to delete of `snapshots` (oldest first; `times[i]` is the time bound
/// of the i-th), keeping the newest `keep`, the base (index 0) and those needed from
/// `since` (ms; 0: no history) on; and the segment floor (segments wholly at or below
/// it are no longer needed).
fn plan(snapshots: &[u64], times: &[u64], keep: usize, since: u64) -> (Vec<u64>, u64) {
    let newest_kept = snapshots.len().saturating_sub(keep);
    // The oldest snapshot the history needs: the newest one at or before its start.
    // When none is that old, every snapshot and every segment stays (the times before
    // the oldest snapshot are reached from the epoch's first entries, if they are kept).
    let history_base = match since {
        0 => Some(newest_kept),
        _ => times.iter().rposition(|&t| t <= since),
    };
    let Some(base) = history_base else {
        return (Vec::new(), 0);
    };
    let first_kept = newest_kept.min(base);
    let doomed = snapshots[..first_kept].iter().copied().filter(|&i| i != 0).collect();
    (doomed, snapshots.get(first_kept).copied().unwrap_or(0))
}

pub async fn collect(
    store: &dyn ObjectStore,
    epoch: u64,
    keep: usize,
    history: std::time::Duration,
) -> Result<GcReport, snapshot::SnapshotError> {
    let mut report = GcReport::default();
    let snapshots = snapshot::list(store, epoch).await?;
    if snapshots.is_empty() {
        return Ok(report); // nothing supersedes anything yet
    }
    let since = if history.is_zero() {
        0
    } else {
        super::log::wall_clock_ms().saturating_sub(history.as_millis() as u64).max(1)
    };
    let mut times = Vec::with_capacity(snapshots.len());
    if since > 0 {
        for (name, _) in &snapshots {
            times.push(snapshot::fetch_header(store, name).await?.time_bound());
        }
    }
    let indexes: Vec<u64> = snapshots.iter().map(|(n, _)| n.index).collect();
    let (doomed, floor) = plan(&indexes, &times, keep, since);
    for index in doomed {
        // The epoch's base (index 0, written when the epoch was opened) stays: a member
        // joining the epoch starts from it and receives the Raft log after it.
        delete(store, &snapshot::SnapshotName { epoch, index }.path()).await?;
        report.snapshots += 1;
    }
    let wal = format!("epochs/{epoch}/wal");
    for (name, _) in segment::list(store, epoch).await.map_err(store_err(&wal))? {
        if name.last <= floor {
            delete(store, &name.path()).await?;
            report.segments += 1;
        }
    }
    let epochs = Path::from("epochs");
    let listing = store.list_with_delimiter(Some(&epochs)).await.map_err(store_err("epochs"))?;
    let mut numbers: Vec<u64> = listing
        .common_prefixes
        .iter()
        .filter_map(|d| d.filename().and_then(|p| p.parse::<u64>().ok()))
        .filter(|&e| e < epoch)
        .collect();
    numbers.sort();
    for (i, &old) in numbers.iter().enumerate() {
        // The epoch that followed it: while it opened within the history, restores to
        // the times `old` was serving still need `old`.
        let next = numbers.get(i + 1).copied().unwrap_or(epoch);
        if since > 0 && opened_ms(store, next).await?.is_some_and(|t| t > since) {
            continue;
        }
        let dir = Path::from(format!("epochs/{old}"));
        let mut objects = store.list(Some(&dir));
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(store_err(dir.as_ref()))?;
            delete(store, &meta.location).await?;
            report.old_epoch_objects += 1;
        }
    }
    if report != GcReport::default() {
        tracing::info!(epoch, keep, history_secs = history.as_secs(), ?report, "archive garbage collected");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{snapshot::SnapshotName, SegmentName};

    async fn names(store: &dyn ObjectStore) -> Vec<String> {
        let mut all: Vec<String> = store.list(None).map(|m| m.unwrap().location.to_string()).collect().await;
        all.sort();
        all
    }

    #[tokio::test]
    async fn keeps_the_newest_snapshots_and_what_they_need() {
        let store = object_store::memory::InMemory::new();
        let put = |p: Path| {
            let store = &store;
            async move { store.put(&p, "x".into()).await.unwrap() }
        };
        put(Path::from("epochs/1/wal/x")).await;
        put(SegmentName {
            epoch: 1,
            first: 1,
            last: 9,
        }
        .path())
        .await;
        for (first, last) in [(1, 10), (11, 20), (21, 30), (31, 40)] {
            put(SegmentName { epoch: 2, first, last }.path()).await;
        }
        // Index 0 is the epoch's base, which joining members start from: never deleted.
        for index in [0, 5, 15, 30] {
            put(SnapshotName { epoch: 2, index }.path()).await;
        }
        put(Path::from("cluster.json")).await;
        let report = collect(&store, 2, 2, std::time::Duration::ZERO).await.unwrap();
        assert_eq!(
            report,
            GcReport {
                snapshots: 1,
                segments: 1,
                old_epoch_objects: 2
            }
        );
        assert_eq!(
            names(&store).await,
            vec![
                "cluster.json".to_string(),
                SnapshotName { epoch: 2, index: 0 }.path().to_string(),
                SnapshotName { epoch: 2, index: 15 }.path().to_string(),
                SnapshotName { epoch: 2, index: 30 }.path().to_string(),
                SegmentName {
                    epoch: 2,
                    first: 11,
                    last: 20
                }
                .path()
                .to_string(),
                SegmentName {
                    epoch: 2,
                    first: 21,
                    last: 30
                }
                .path()
                .to_string(),
                SegmentName {
                    epoch: 2,
                    first: 31,
                    last: 40
                }
                .path()
                .to_string(),
            ]
        );
        // Nothing more to do.
        assert_eq!(collect(&store, 2, 2, std::time::Duration::ZERO).await.unwrap(), GcReport::default());
    }

    #[test]
    fn history_keeps_what_restores_to_its_start_need() {
        let snaps = [0, 10, 20, 30, 40];
        let times = [100, 200, 300, 400, 500];
        // No history: the newest two (and the base) stay.
        assert_eq!(plan(&snaps, &times, 2, 0), (vec![10, 20], 30));
        // History from 350: snapshot 20 (at 300) is the base of the window, so it and
        // the segments after it stay.
        assert_eq!(plan(&snaps, &times, 2, 350), (vec![10], 20));
        // From 250: snapshot 10 (at 200).
        assert_eq!(plan(&snaps, &times, 2, 250), (vec![], 10));
        // From before every snapshot: everything stays.
        assert_eq!(plan(&snaps, &times, 2, 50), (vec![], 0));
        // Exactly at a snapshot's time.
        assert_eq!(plan(&snaps, &times, 1, 400), (vec![10, 20], 30));
    }
}
