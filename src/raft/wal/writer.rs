//! The writer thread: the only code that changes the log's files.
//!
//! It drains every operation queued (appends, truncations, purges, votes), applies them
//! in order and syncs the segment it wrote to once (`fdatasync`) before it reports any
//! of them done. What it keeps true, so that opening the log after any crash finds
//! every acknowledged entry and nothing else (`recover`):
//!
//! - Records are appended after the last one; after the last record a segment holds
//!   zeroes only. Zeroes are written ahead of the last record (`zero_ahead`, after a
//!   batch is acknowledged) so that a sync after an append writes data only, not the
//!   file size or block allocation too (measured: the lowest `fdatasync` latency).
//! - A segment is finished (cut to its last record and synced) before the next one is
//!   created, so only the last segment can end in a torn record.
//! - A truncation cuts the segment holding the first removed entry at its record
//!   (removing later segments first, newest first, each removal synced); the cut is
//!   synced with the batch, before any later append is written.
//! - The vote and the purge marker are small files replaced atomically; whatever was
//!   appended before them is synced first. A purge removes a segment only after the
//!   marker that makes its entries purged is durable.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use openraft::storage::LogFlushed;
use openraft::Vote;
use tokio::sync::oneshot;

use super::cache::Cached;
use super::index::Index;
use super::segment::{self, Segment, HEADER};
use super::{record, Options, Shared, WalError, PURGED_FILE, VOTE_FILE};
use crate::raft::codec;
use crate::raft::{LogId, NodeId, TypeConfig};

/// Most operations written in one batch.
const MAX_BATCH: usize = 4096;

/// The writer's outcome for one queued operation; every operation of a batch shares the
/// batch's error, hence the `Arc`.
pub type Ack = oneshot::Sender<Result<(), Arc<WalError>>>;

pub enum Op {
    Append {
        entries: Vec<Arc<Cached>>,
        done: LogFlushed<TypeConfig>,
    },
    /// Remove the entries from `from` on; `prev` is the entry before them (`None` when
    /// none is left).
    Truncate {
        from: u64,
        prev: Option<LogId>,
        ack: Ack,
    },
    Purge {
        log_id: LogId,
        ack: Ack,
    },
    Vote {
        vote: Vote<NodeId>,
        ack: Ack,
    },
}

/// The segment appends go to: the last one.
pub struct Current {
    pub segment: Arc<Segment>,
    /// The index its next record holds.
    pub next: u64,
    /// The offset after its last record written to the file.
    pub tail: u64,
    /// The file's length; it holds zeroes from `tail` on.
    pub len: u64,
}

pub struct Writer {
    dir: PathBuf,
    shared: Arc<Shared>,
    options: Options,
    current: Option<Current>,
    /// Records encoded and not yet written; they go at `current.tail`.
    buf: Vec<u8>,
    /// The index, offset and payload length of each record in `buf`.
    buffered: Vec<(u64, u64, u64)>,
    /// The current segment has writes not yet synced.
    dirty: bool,
    /// The first failure: what reached the disk since is unknown, so nothing more is
    /// written and every later operation fails with it.
    failed: Option<Arc<WalError>>,
}

impl Writer {
    pub fn new(dir: PathBuf, shared: Arc<Shared>, options: Options, current: Option<Current>) -> Writer {
        Writer {
            dir,
            shared,
            options,
            current,
            buf: Vec::new(),
            buffered: Vec::new(),
            dirty: false,
            failed: None,
        }
    }

    /// Writes batches until every sender is gone.
    pub fn run(mut self, ops: mpsc::Receiver<Op>) {
        while let Ok(op) = ops.recv() {
            let mut batch = vec![op];
            while batch.len() < MAX_BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let result = self.write_batch(&batch);
            let entries: usize = batch
                .iter()
                .map(|op| if let Op::Append { entries, .. } = op { entries.len() } else { 0 })
                .sum();
            crate::metrics::LOG_BATCH_ENTRIES.observe(entries as f64);
            if result.is_ok() {
                self.evict();
            }
            for op in batch {
                match op {
                    Op::Append { done, .. } => done.log_io_completed(result.clone().map_err(io::Error::other)),
                    Op::Truncate { ack, .. } | Op::Purge { ack, .. } | Op::Vote { ack, .. } => {
                        let _ = ack.send(result.clone());
                    }
                }
            }
            if result.is_ok() {
                if let Err(e) = self.zero_ahead() {
                    self.fail(e);
                }
            }
        }
    }

    fn write_batch(&mut self, batch: &[Op]) -> Result<(), Arc<WalError>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = batch.iter().try_for_each(|op| self.apply(op)).and_then(|()| self.commit());
        result.map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: WalError) -> Arc<WalError> {
        let e = Arc::new(e);
        tracing::error!(
            error = %crate::error_chain(&*e),
            "the Raft log cannot be written; every later write to it fails"
        );
        self.failed = Some(e.clone());
        e
    }

    fn apply(&mut self, op: &Op) -> Result<(), WalError> {
        match op {
            Op::Append { entries, .. } => self.append(entries),
            Op::Truncate { from, prev, .. } => self.truncate(*from, *prev),
            Op::Purge { log_id, .. } => self.purge(*log_id),
            Op::Vote { vote, .. } => self.save_vote(vote),
        }
    }

    /// Writes what is buffered and syncs it: everything applied so far is durable.
    pub fn commit(&mut self) -> Result<(), WalError> {
        self.flush()?;
        self.sync()
    }

    /// Encodes `entries` into records after the last one (written by the next `flush`).
    pub fn append(&mut self, entries: &[Arc<Cached>]) -> Result<(), WalError> {
        for cached in entries {
            let index = cached.index();
            if !record::fits(&cached.bytes) {
                return Err(WalError::TooLarge {
                    index,
                    bytes: cached.bytes.len(),
                });
            }
            let last_written = match self.buffered.last() {
                Some((idx, ..)) => Some(*idx),
                None => self.shared.lock()?.written.last(),
            };
            if let Some(last) = last_written.filter(|last| index <= *last) {
                // `LogStore::append` truncates first.
                return Err(WalError::NotNext { index, next: last + 1 });
            }
            let size = (record::HEADER + cached.bytes.len()) as u64;
            match &self.current {
                Some(cur) if cur.next == index => {
                    let at = cur.tail + self.buf.len() as u64;
                    if at > HEADER && at + size > self.options.segment_bytes {
                        self.roll(index)?;
                    }
                }
                // No segment yet, or (never in Raft) an entry that does not follow the log.
                _ => self.start_run(index, last_written)?,
            }
            let Some(cur) = self.current.as_mut() else {
                return Err(WalError::WriterStopped);
            };
            let offset = cur.tail + self.buf.len() as u64;
            record::encode_into(&mut self.buf, &cached.bytes);
            self.buffered.push((index, offset, cached.bytes.len() as u64));
            cur.next = index + 1;
        }
        Ok(())
    }

    /// Writes the buffered records to the current segment and publishes where they are.
    fn flush(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut() else {
            return Err(WalError::WriterStopped);
        };
        cur.segment
            .file
            .write_all_at(&self.buf, cur.tail)
            .map_err(WalError::io(&cur.segment.path, "write"))?;
        cur.tail += self.buf.len() as u64;
        cur.len = cur.len.max(cur.tail);
        self.dirty = true;
        self.buf.clear();
        let mut s = self.shared.lock()?;
        for (idx, offset, len) in self.buffered.drain(..) {
            s.written.push(idx, offset, len);
        }
        Ok(())
    }

    /// Syncs the current segment if it has unsynced writes: the batch's one `fdatasync`.
    fn sync(&mut self) -> Result<(), WalError> {
        if let Some(cur) = self.current.as_ref().filter(|_| self.dirty) {
            let timer = crate::metrics::WAL_FSYNC_DURATION.start_timer();
            cur.segment.file.sync_data().map_err(WalError::io(&cur.segment.path, "sync"))?;
            timer.observe_duration();
        }
        self.dirty = false;
        Ok(())
    }

    /// Finishes the current segment (cut to its last record, synced) and starts the next
    /// one at entry `first`.
    fn roll(&mut self, first: u64) -> Result<(), WalError> {
        self.flush()?;
        if let Some(cur) = &self.current {
            let file = &cur.segment.file;
            file.set_len(cur.tail).map_err(WalError::io(&cur.segment.path, "cut"))?;
            file.sync_data().map_err(WalError::io(&cur.segment.path, "sync"))?;
        }
        self.dirty = false;
        self.create_segment(first)
    }

    /// Starts the log again at entry `first` in a new segment, removing the segments
    /// there are (a log that holds nothing has none, or one that holds no record).
    fn start_run(&mut self, first: u64, last_written: Option<u64>) -> Result<(), WalError> {
        if let Some(last) = last_written {
            tracing::warn!(last, first, "the Raft log starts again at an entry that does not follow it");
        }
        self.flush()?;
        let doomed = {
            let mut s = self.shared.lock()?;
            s.written = Index::default();
            std::mem::take(&mut s.segments)
        };
        for segment in doomed.values() {
            std::fs::remove_file(&segment.path).map_err(WalError::io(&segment.path, "remove"))?;
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        self.current = None;
        self.dirty = false;
        self.create_segment(first)
    }

    fn create_segment(&mut self, first: u64) -> Result<(), WalError> {
        let len = (HEADER + self.options.zero_ahead).min(self.options.segment_bytes).max(HEADER);
        let segment = Arc::new(Segment::create(&self.dir, first, len)?);
        self.shared.lock()?.segments.insert(first, segment.clone());
        self.current = Some(Current {
            segment,
            next: first,
            tail: HEADER,
            len,
        });
        Ok(())
    }

    /// Removes the entries from `from` on (`prev` is the one left last).
    fn truncate(&mut self, from: u64, prev: Option<LogId>) -> Result<(), WalError> {
        self.flush()?;
        let shared = self.shared.clone();
        let _files = shared.files.write().map_err(|_| WalError::Poisoned("files"))?;
        let (cut, doomed) = {
            let mut s = shared.lock()?;
            // The first written entry removed: the log now ends where its record starts.
            let at = from.max(s.written.first());
            let cut = match (s.written.get(at), s.segment_of(at)) {
                (Some(pos), Some(segment)) => Some((at, pos, segment.clone())),
                _ => None,
            };
            s.written.truncate(from);
            s.cache.truncate(from);
            s.last = prev;
            let doomed = match &cut {
                Some((_, _, segment)) => s.segments.split_off(&(segment.first + 1)),
                None => Default::default(),
            };
            (cut, doomed)
        };
        // Newest first, each removal synced: a crash leaves a prefix of the log.
        for segment in doomed.values().rev() {
            std::fs::remove_file(&segment.path).map_err(WalError::io(&segment.path, "remove"))?;
            segment::sync_dir(&self.dir)?;
        }
        if let Some((at, pos, segment)) = cut {
            segment.file.set_len(pos.offset).map_err(WalError::io(&segment.path, "cut"))?;
            self.current = Some(Current {
                segment,
                next: at,
                tail: pos.offset,
                len: pos.offset,
            });
            self.dirty = true;
        }
        Ok(())
    }

    /// Purges the entries through `log_id`: records it, then removes the segments that
    /// hold only purged entries.
    pub fn purge(&mut self, log_id: LogId) -> Result<(), WalError> {
        self.commit()?;
        let path = self.dir.join(PURGED_FILE);
        crate::fsutil::write_durably(&path, &codec::encode_log_id(&log_id)).map_err(WalError::io(&path, "write"))?;
        let upto = log_id.index;
        let doomed = {
            let mut s = self.shared.lock()?;
            s.last_purged = Some(log_id);
            s.written.purge(upto);
            s.cache.purge(upto);
            s.first = s.first.max(upto + 1);
            if s.last.is_some_and(|l| l.index <= upto) {
                s.last = None;
            }
            // Every segment before the one holding the first written entry left; all of
            // them when none is left.
            let holder = if s.written.is_empty() {
                None
            } else {
                s.segment_of(s.written.first()).map(|h| h.first)
            };
            match holder {
                Some(first) => {
                    let keep = s.segments.split_off(&first);
                    std::mem::replace(&mut s.segments, keep)
                }
                None => std::mem::take(&mut s.segments),
            }
        };
        if self.current.as_ref().is_some_and(|c| doomed.contains_key(&c.segment.first)) {
            self.current = None;
            self.dirty = false;
        }
        for segment in doomed.values() {
            std::fs::remove_file(&segment.path).map_err(WalError::io(&segment.path, "remove"))?;
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), WalError> {
        self.commit()?;
        let path = self.dir.join(VOTE_FILE);
        crate::fsutil::write_durably(&path, &codec::encode_vote(vote)).map_err(WalError::io(&path, "write"))?;
        self.shared.lock()?.vote = Some(*vote);
        Ok(())
    }

    /// Drops the oldest written entries from the cache while it is over its limit.
    fn evict(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            let written = s.written.last();
            s.cache.evict(written);
        }
    }

    /// Keeps zeroes written (and synced) ahead of the last record, so that the next
    /// batches overwrite allocated blocks within the file's size: their `fdatasync`
    /// then writes the data alone. Runs after a batch is acknowledged, off its latency.
    fn zero_ahead(&mut self) -> Result<(), WalError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        let ahead = self.options.zero_ahead;
        let limit = self.options.segment_bytes.max(HEADER);
        if cur.len >= limit || cur.len - cur.tail >= ahead / 2 {
            return Ok(());
        }
        let to = (cur.tail + ahead).min(limit);
        if to <= cur.len {
            return Ok(());
        }
        let path = &cur.segment.path;
        segment::write_zeroes(&cur.segment.file, cur.len, to).map_err(WalError::io(path, "preallocate"))?;
        cur.segment.file.sync_data().map_err(WalError::io(path, "sync"))?;
        cur.len = to;
        Ok(())
    }
}
