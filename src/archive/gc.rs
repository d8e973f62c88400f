//! Garbage collection of the archive after a snapshot upload: keep the newest
//! `keep` snapshots of the current epoch and every segment that one of them still
//! needs; delete older snapshots, segments wholly covered by the oldest kept snapshot,
//! and every object of earlier epochs (the current epoch's snapshots supersede them).

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

pub async fn collect(store: &dyn ObjectStore, epoch: u64, keep: usize) -> Result<GcReport, snapshot::SnapshotError> {
    let mut report = GcReport::default();
    let snapshots = snapshot::list(store, epoch).await?;
    if snapshots.is_empty() {
        return Ok(report); // nothing supersedes anything yet
    }
    let excess = snapshots.len().saturating_sub(keep);
    for (name, _) in &snapshots[..excess] {
        // The epoch's base (index 0, written when the epoch was opened) stays: a member
        // joining the epoch starts from it and receives the Raft log after it.
        if name.index == 0 {
            continue;
        }
        delete(store, &name.path()).await?;
        report.snapshots += 1;
    }
    let floor = snapshots[excess].0.index;
    let wal = format!("epochs/{epoch}/wal");
    for (name, _) in segment::list(store, epoch).await.map_err(store_err(&wal))? {
        if name.last <= floor {
            delete(store, &name.path()).await?;
            report.segments += 1;
        }
    }
    let epochs = Path::from("epochs");
    let listing = store.list_with_delimiter(Some(&epochs)).await.map_err(store_err("epochs"))?;
    for dir in listing.common_prefixes {
        let older = dir.filename().and_then(|p| p.parse::<u64>().ok()).is_some_and(|e| e < epoch);
        if !older {
            continue;
        }
        let mut objects = store.list(Some(&dir));
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(store_err(dir.as_ref()))?;
            delete(store, &meta.location).await?;
            report.old_epoch_objects += 1;
        }
    }
    if report != GcReport::default() {
        tracing::info!(epoch, keep, ?report, "archive garbage collected");
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
        let report = collect(&store, 2, 2).await.unwrap();
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
        assert_eq!(collect(&store, 2, 2).await.unwrap(), GcReport::default());
    }
}
