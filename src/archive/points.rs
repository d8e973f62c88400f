//! The points in time the archive can restore to.
//!
//! An epoch can be restored to any entry from one of its snapshots (or, when its
//! segments start at entry 1, from the empty store) through the segments that continue
//! it without a gap. `epoch_points` finds those ranges from the listing and the
//! snapshots' headers, and the commit time of the newest entry from the segments after
//! the newest snapshot (their frames carry each entry's time, so nothing is decoded).
//! The store revision at the newest entry is only known by replaying them, which
//! `exact` does.

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::log::{effective_time, Replay};
use super::restore::{self, rfc3339_ms, RestoreError, Target};
use super::segment::{self, SegmentName};
use super::snapshot::{self, SnapshotHeader};

/// A state the archive can be restored to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    pub index: u64,
    /// The store revision there (`None`: only known by replaying; see `exact`).
    pub revision: Option<i64>,
    /// The commit time of entry `index`, ms since the Unix epoch (0: none, the empty
    /// store before the first entry). For a snapshot of netsy before 0.3 it is the time
    /// the snapshot was made, which bounds the commit time from above.
    pub unix_ms: u64,
    /// `unix_ms` as RFC 3339.
    pub time: Option<String>,
}

impl Point {
    fn new(index: u64, revision: Option<i64>, unix_ms: u64) -> Point {
        Point {
            index,
            revision,
            unix_ms,
            time: (unix_ms > 0).then(|| rfc3339_ms(unix_ms)),
        }
    }

    fn of_snapshot(h: &SnapshotHeader) -> Point {
        Point::new(h.index, Some(h.revision), h.time_bound())
    }
}

/// Entries `from..=to` that no restore can stop at: no snapshot at or before them is
/// followed by segments that reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpochPoints {
    pub epoch: u64,
    /// When the epoch opened (its base snapshot was made; `None` for an epoch that
    /// started empty, or whose base is gone).
    pub opened_unix_ms: Option<u64>,
    /// The oldest and newest states the epoch can be restored to.
    pub first: Point,
    pub last: Point,
    pub gaps: Vec<Gap>,
    /// Every snapshot (each is a restorable point with a known revision).
    pub snapshots: Vec<Point>,
}

/// The epochs the archive holds, oldest first.
pub async fn epochs(store: &dyn ObjectStore) -> Result<Vec<u64>, RestoreError> {
    let dirs = store
        .list_with_delimiter(Some(&ObjectPath::from("epochs")))
        .await
        .map_err(|source| RestoreError::Store {
            path: "epochs".into(),
            source,
        })?;
    let mut numbers: Vec<u64> = dirs
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().and_then(|f| f.parse().ok()))
        .collect();
    numbers.sort();
    Ok(numbers)
}

/// Runs of consecutive entries held in segments, as `(first, last)`.
fn runs(segments: &[(SegmentName, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (n, _) in segments {
        match out.last_mut() {
            Some(run) if n.first <= run.1 + 1 => run.1 = run.1.max(n.last),
            _ => out.push((n.first, n.last)),
        }
    }
    out
}

/// The restorable index ranges, merged, from states at `starts` continued by `runs`.
fn ranges(starts: &[u64], runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = starts
        .iter()
        .map(|&s| {
            let end = runs.iter().find(|(a, b)| *a <= s + 1 && s < *b).map_or(s, |r| r.1);
            (s, end)
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(m) if a <= m.1 + 1 => m.1 = m.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// What a restore of `epoch` can reach (`None`: it holds nothing to restore from).
/// With `exact` (a scratch directory and the replay), the revision of the newest entry
/// is found by replaying the segments after the newest snapshot into a scratch database.
pub async fn epoch_points(
    store: &dyn ObjectStore,
    epoch: u64,
    exact: Option<(&FsPath, &Arc<dyn Replay>)>,
) -> Result<Option<EpochPoints>, RestoreError> {
    let mut headers = Vec::new();
    for (name, _) in snapshot::list(store, epoch).await? {
        headers.push(snapshot::fetch_header(store, &name).await?);
    }
    let segments = segment::list(store, epoch).await.map_err(|source| RestoreError::Store {
        path: format!("epochs/{epoch}/wal"),
        source,
    })?;
    let runs = runs(&segments);
    let mut starts: Vec<u64> = headers.iter().map(|h| h.index).collect();
    // Without a snapshot there, a run from entry 1 replays onto the empty store.
    if runs.first().is_some_and(|r| r.0 == 1) && !starts.contains(&0) {
        starts.push(0);
    }
    let ranges = ranges(&starts, &runs);
    let (Some(&(first, _)), Some(&(_, last))) = (ranges.first(), ranges.last()) else {
        return Ok(None);
    };
    let gaps = ranges
        .windows(2)
        .map(|w| Gap {
            from: w[0].1 + 1,
            to: w[1].0 - 1,
        })
        .collect();
    let snapshot_at = |i: u64| headers.iter().find(|h| h.index == i);
    let first = match snapshot_at(first) {
        Some(h) => Point::of_snapshot(h),
        // The empty store: revision 1, before any entry.
        None => Point::new(0, Some(1), 0),
    };
    let last = match snapshot_at(last) {
        Some(h) => Point::of_snapshot(h),
        None => {
            // The newest snapshot the last range starts from or passes, and the times
            // of the entries after it.
            let range_start = ranges.last().map_or(0, |r| r.0);
            let seed = headers.iter().rev().find(|h| h.index >= range_start && h.index <= last);
            let (from, mut time) = seed.map_or((range_start, 0), |h| (h.index, h.commit_unix_ms));
            for (name, _) in segments.iter().filter(|(n, _)| n.last > from && n.first <= last) {
                let path = name.path();
                let data = async { store.get(&path).await?.bytes().await }
                    .await
                    .map_err(|source| RestoreError::Store {
                        path: path.to_string(),
                        source,
                    })?;
                for frame in segment::decode(&data, name)?.frames {
                    if frame.index > from && frame.index <= last {
                        time = effective_time(time, frame.unix_ms);
                    }
                }
            }
            let revision = match exact {
                Some((scratch, replay)) => Some(replayed_revision(store, epoch, last, scratch, replay).await?),
                None => None,
            };
            Point::new(last, revision, time)
        }
    };
    Ok(Some(EpochPoints {
        epoch,
        opened_unix_ms: snapshot_at(0).map(|h| h.created_ms()),
        first,
        last,
        gaps,
        snapshots: headers.iter().map(Point::of_snapshot).collect(),
    }))
}

/// The store revision after entry `index` of `epoch`, by replaying into a scratch file.
async fn replayed_revision(
    store: &dyn ObjectStore,
    epoch: u64,
    index: u64,
    scratch: &FsPath,
    replay: &Arc<dyn Replay>,
) -> Result<i64, RestoreError> {
    std::fs::create_dir_all(scratch).map_err(|e| RestoreError::Target(scratch.display().to_string(), e.to_string()))?;
    let db = scratch.join(format!("points-{epoch}-{}.db", rand::random::<u32>()));
    let report = restore::restore(store, epoch, &db, Target::Index(index), replay).await;
    crate::mvcc::remove_database(&db);
    Ok(report?.revision)
}

/// Every epoch's points, oldest epoch first (epochs with nothing to restore from are
/// left out).
pub async fn points(store: &dyn ObjectStore, exact: Option<(&FsPath, &Arc<dyn Replay>)>) -> Result<Vec<EpochPoints>, RestoreError> {
    let mut out = Vec::new();
    for epoch in epochs(store).await? {
        if let Some(p) = epoch_points(store, epoch, exact).await? {
            out.push(p);
        }
    }
    Ok(out)
}

/// The epoch a time or revision falls in. For a time, the epoch that was serving then:
/// the newest one opened at or before it (an epoch opened by a restore to an earlier
/// point starts a new line of history; the times before it opened belong to the epoch
/// before). For a revision, the newest epoch whose oldest restorable state is at or
/// before it (revisions continue from one epoch into the next; after a restore to an
/// earlier point, `--epoch` picks an older line).
pub async fn epoch_for(store: &dyn ObjectStore, target: Target) -> Result<u64, RestoreError> {
    let all = epochs(store).await?;
    for &epoch in all.iter().rev() {
        let Some(p) = epoch_points(store, epoch, None).await? else {
            continue;
        };
        let fits = match target {
            Target::Time(ms) => p.opened_unix_ms.unwrap_or(p.first.unix_ms) <= ms,
            Target::Revision(r) => p.first.revision.is_some_and(|rev| rev <= r),
            Target::Latest | Target::Index(_) => true,
        };
        if fits {
            return Ok(epoch);
        }
    }
    Err(RestoreError::Before {
        epoch: all.first().copied().unwrap_or(0),
        target: target.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_snapshots_through_contiguous_segments_and_name_gaps() {
        let seg = |first, last| (SegmentName { epoch: 1, first, last }, 0);
        // Segments 1..=10 and 11..=20, then a hole, then 31..=40.
        let r = runs(&[seg(1, 10), seg(11, 20), seg(31, 40)]);
        assert_eq!(r, vec![(1, 20), (31, 40)]);
        // From the empty store (0) through 20; a snapshot at 25 reaches only itself; one
        // at 30 continues through 40.
        assert_eq!(ranges(&[0, 25, 30], &r), vec![(0, 20), (25, 25), (30, 40)]);
        // A snapshot inside a run adds nothing; one at its end joins the next run.
        assert_eq!(ranges(&[0, 15], &r), vec![(0, 20)]);
        assert_eq!(ranges(&[20], &[(1, 20), (21, 30)]), vec![(20, 30)]);
        assert_eq!(ranges(&[], &r), Vec::<(u64, u64)>::new());
    }
}
