//! Space reclaim, off the apply path.
//!
//! A compaction's apply only moves the compact revision (reads below it are refused from
//! then on); the history it made obsolete is deleted here afterwards, a batch of rows
//! at a time, each batch one short transaction on the writer (about 5 ms: the
//! batch size adapts) followed by a pause twice as long, so applies go on meanwhile
//! (etcd deletes in batches too). Defragmentation gives
//! the free pages back to the file system a few at a time (SQLite's incremental vacuum)
//! instead of rewriting the whole file while applies wait.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{MvccError, Reader, Store};

/// How long one batch of compaction's deletions should hold the writer: every apply that
/// arrives meanwhile waits for it. The rows per batch adapt to it (1,000 rows of history
/// take a few ms with small values, hundreds with 10 KiB ones stored inline).
const BATCH_TARGET: Duration = Duration::from_millis(5);
const MIN_BATCH_ROWS: i64 = 16;
const MAX_BATCH_ROWS: i64 = 10_000;
/// Pages one defragmentation step moves and cuts from the file (2 MiB of 8 KiB pages).
const VACUUM_STEP_PAGES: i64 = 256;
/// After each batch or step the writer is left to the applies at least this long, and at
/// least twice as long as the step held it: reclaim takes at most a third of the
/// writer's time (and of a core).
const MIN_PAUSE: Duration = Duration::from_millis(10);
/// Long reclaims log their progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn lock(store: &Mutex<Store>) -> Result<MutexGuard<'_, Store>, MvccError> {
    store.lock().map_err(|_| MvccError::Storage("store lock poisoned".into()))
}

/// Runs one step on the writer, then pauses twice as long as the step held it (at least
/// `MIN_PAUSE`). Returns the step's result and how long it held the writer.
fn step<T>(store: &Mutex<Store>, f: impl FnOnce(&mut Store) -> Result<T, MvccError>) -> Result<(T, Duration), MvccError> {
    let started = Instant::now();
    let out = {
        let mut store = lock(store)?;
        f(&mut store)?
    };
    let held = started.elapsed();
    crate::metrics::COMPACTION_PAUSE.observe(held.as_secs_f64() * 1000.0);
    std::thread::sleep((held * 2).max(MIN_PAUSE));
    Ok((out, held))
}

/// The next batch's size from how long the last one held the writer: twice as many
/// rows under half the target, half as many over twice the target.
fn next_batch(rows: i64, held: Duration) -> i64 {
    if held < BATCH_TARGET / 2 {
        (rows * 2).min(MAX_BATCH_ROWS)
    } else if held > BATCH_TARGET * 2 {
        (rows / 2).max(MIN_BATCH_ROWS)
    } else {
        rows
    }
}

/// Deletes what compactions made obsolete until nothing is pending, whenever a compaction
/// is applied, until the task is dropped.
pub async fn run(store: Arc<Mutex<Store>>) {
    let mut progress = match lock(&store) {
        Ok(s) => s.reclaim_progress(),
        Err(e) => {
            tracing::error!(error = %e, "compaction's deletions cannot start");
            return;
        }
    };
    loop {
        if progress.wait_for(|r| r.pending()).await.is_err() {
            return;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || finish_compaction(&s)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "deleting compacted history failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "deleting compacted history panicked");
                return;
            }
        }
    }
}

/// What [`finish_compaction`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// The revision up to which compaction's deletions are done.
    pub revision: i64,
    pub rows_deleted: usize,
}

/// Deletes, in batches, the history that compactions made obsolete, until none is
/// pending (including compactions applied meanwhile). Blocking.
pub fn finish_compaction(store: &Mutex<Store>) -> Result<Compacted, MvccError> {
    let started = Instant::now();
    let mut logged = started;
    let mut done = Compacted::default();
    let first = lock(store)?.reclaim();
    let mut batch = MIN_BATCH_ROWS * 4;
    loop {
        let ((deleted, now), held) = step(store, |s| {
            let deleted = s.delete_compacted(batch)?;
            Ok((deleted, s.reclaim()))
        })?;
        batch = next_batch(batch, held);
        done.rows_deleted += deleted;
        done.revision = now.reclaimed;
        crate::metrics::COMPACTION_KEYS.inc_by(deleted as u64);
        if !now.pending() {
            break;
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(
                reclaimed = now.reclaimed,
                compact_revision = now.compacted,
                rows_deleted = done.rows_deleted,
                "deleting compacted history"
            );
        }
    }
    if first.pending() {
        let took = started.elapsed();
        crate::metrics::COMPACTION_DURATION.observe(took.as_secs_f64() * 1000.0);
        tracing::info!(
            compact_revision = done.revision,
            rows_deleted = done.rows_deleted,
            took_ms = took.as_millis() as u64,
            "compacted history deleted"
        );
    }
    Ok(done)
}

/// What [`defragment`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defragmented {
    pub pages_freed: i64,
    /// The database had to be rewritten once (made before incremental vacuum was used).
    pub rewritten: bool,
}

/// etcd's Defragment, without stopping applies: finishes pending compactions, then gives
/// the free pages back to the file system a step at a time, and empties the WAL so that
/// the file's size shows it. A database made by a netsy before schema v5 is rewritten
/// once first (a full `VACUUM`, applies wait meanwhile). Blocking.
pub fn defragment(store: &Mutex<Store>, reader: &Reader) -> Result<Defragmented, MvccError> {
    let started = Instant::now();
    finish_compaction(store)?;
    let mut report = Defragmented::default();
    {
        let mut s = lock(store)?;
        if !s.incremental_vacuum()? {
            tracing::warn!("defragment: rewriting the whole database once so that later ones run in steps; applies wait until it is done");
            s.enable_incremental_vacuum()?;
            report.rewritten = true;
        }
    }
    let free = lock(store)?.free_pages()?;
    let mut left = free;
    let mut logged = Instant::now();
    while left > 0 {
        left = step(store, |s| s.vacuum_step(VACUUM_STEP_PAGES))?.0;
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(free_pages_left = left, "defragmenting");
        }
    }
    report.pages_freed = free;
    // Copy the WAL beside the writer first, so that the writer's own pass (which empties
    // the WAL, holding applies up) has little left to copy.
    super::checkpoint::copy_beside_writer(reader, 0)?;
    lock(store)?.truncate_wal()?;
    crate::metrics::DEFRAG_DURATION.observe(started.elapsed().as_secs_f64());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::mvcc::{AppliedMeta, Command};
    use crate::proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn puts(round: usize, keys: usize, size: usize) -> Vec<Option<Command>> {
        (0..keys)
            .map(|i| {
                Some(Command::Put(PutRequest {
                    key: format!("k{i:04}").into(),
                    value: vec![(round % 251) as u8; size],
                    ..Default::default()
                }))
            })
            .collect()
    }

    /// A store holding `rounds` revisions of 200 keys × 4 KiB, compacted at the last one
    /// (the compaction applied, nothing deleted yet).
    fn compacted_store(dir: &std::path::Path, rounds: usize) -> (Arc<Mutex<Store>>, Reader) {
        let path = dir.join("s.db");
        let mut store = Store::open(&path).unwrap();
        store.checkpoint_in_background().unwrap();
        for round in 0..rounds {
            store.apply_batch(&puts(round, 200, 4096), &AppliedMeta::default()).unwrap();
        }
        let revision = store.revision();
        let compact = Some(Command::Compact(CompactionRequest { revision, physical: false }));
        store.apply_batch(&[compact], &AppliedMeta::default()).unwrap();
        (Arc::new(Mutex::new(store)), Reader::new(&path))
    }

    fn file_len(store: &Mutex<Store>) -> u64 {
        std::fs::metadata(store.lock().unwrap().path()).unwrap().len()
    }

    #[test]
    fn batches_grow_while_quick_and_shrink_when_slow() {
        let ms = Duration::from_millis;
        assert_eq!(next_batch(100, ms(1)), 200);
        assert_eq!(next_batch(100, ms(10)), 100);
        assert_eq!(next_batch(100, ms(50)), 50);
        assert_eq!(next_batch(MAX_BATCH_ROWS, ms(0)), MAX_BATCH_ROWS);
        assert_eq!(next_batch(MIN_BATCH_ROWS, ms(500)), MIN_BATCH_ROWS);
    }

    #[test]
    fn compaction_is_deleted_in_batches_and_defragment_gives_the_pages_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, reader) = compacted_store(dir.path(), 15);
        let pending = store.lock().unwrap().reclaim();
        assert_eq!(
            (pending.reclaimed, pending.compacted),
            (0, 3001),
            "applying the compaction deleted nothing"
        );
        let hash = reader.hash_kv(0).unwrap();
        // A batch is bounded by the rows it deletes, not by revisions: the first 200
        // revisions (first writes) delete nothing and are passed in the same batch.
        assert_eq!(store.lock().unwrap().delete_compacted(100).unwrap(), 100);
        assert_eq!(store.lock().unwrap().reclaim().reclaimed, 302);
        assert_eq!(reader.hash_kv(0).unwrap(), hash);

        let done = finish_compaction(&store).unwrap();
        assert_eq!(done.revision, 3001);
        // Every row replaced before the compact revision; the one replaced at it (the last
        // put) stays for its event's `prev_kv`.
        assert_eq!(done.rows_deleted + 100, 14 * 200 - 1);
        assert_eq!(reader.hash_kv(0).unwrap(), hash);
        let free = store.lock().unwrap().free_pages().unwrap();
        assert!(free > 4 * VACUUM_STEP_PAGES, "the deletions freed many pages: {free}");

        store.lock().unwrap().truncate_wal().unwrap();
        let before = file_len(&store);
        let report = defragment(&store, &reader).unwrap();
        assert!(!report.rewritten, "a new database vacuums in steps");
        assert_eq!(report.pages_freed, free);
        assert_eq!(store.lock().unwrap().free_pages().unwrap(), 0);
        let after = file_len(&store);
        assert!(
            after + (free as u64) * 8192 <= before + 64 * 1024,
            "the file lost the free pages: {before} → {after} bytes, {free} pages freed"
        );
        assert_eq!(reader.hash_kv(0).unwrap(), hash, "defragment changed no row");
        assert_eq!(reader.range(&Default::default()).unwrap().count, 0, "reads still work");
    }

    /// Applies keep going while a defragmentation runs: some between every two steps, none
    /// waiting for more than a fraction of it (a `VACUUM` would hold them all up).
    #[test]
    fn applies_go_on_during_a_defragmentation() {
        let dir = tempfile::tempdir().unwrap();
        let (store, reader) = compacted_store(dir.path(), 60);
        finish_compaction(&store).unwrap();
        let steps = store.lock().unwrap().free_pages().unwrap() / VACUUM_STEP_PAGES;
        assert!(steps >= 8, "{steps} steps");

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut applied, mut longest) = (0u32, Duration::ZERO);
                while !stop.load(Ordering::Acquire) {
                    let started = Instant::now();
                    store
                        .lock()
                        .unwrap()
                        .apply_batch(&puts(1000, 1, 100), &AppliedMeta::default())
                        .unwrap();
                    longest = longest.max(started.elapsed());
                    applied += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                (applied, longest)
            })
        };
        let started = Instant::now();
        defragment(&store, &reader).unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::Release);
        let (applied, longest) = writer.join().unwrap();
        assert!(applied as i64 >= steps, "{applied} applies in {took:?}");
        assert!(longest < took / 2, "an apply waited {longest:?} of the defragmentation's {took:?}");
    }

    /// A database made before schema v5 (no incremental vacuum) is rewritten by its first
    /// defragmentation, and defragmented in steps from then on.
    #[test]
    fn an_old_database_is_rewritten_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA auto_vacuum = NONE; CREATE TABLE t (x);").unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert!(!store.incremental_vacuum().unwrap());
        store.apply_batch(&puts(0, 50, 4096), &AppliedMeta::default()).unwrap();
        let (store, reader) = (Mutex::new(store), Reader::new(&path));
        assert!(defragment(&store, &reader).unwrap().rewritten);
        assert!(store.lock().unwrap().incremental_vacuum().unwrap());
        assert!(!defragment(&store, &reader).unwrap().rewritten);
        assert_eq!(reader.range(&Default::default()).unwrap().count, 0);
        let all = crate::proto::etcdserverpb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        assert_eq!(reader.range(&all).unwrap().count, 50);
    }
}
