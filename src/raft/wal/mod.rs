//! The Raft log: segment files written sequentially, one `fdatasync` per group commit, in
//! the style of etcd's WAL. The data directory's `raft/` holds them:
//!
//! ```text
//! raft/00000000000000000000.wal   segments, named by the index of their first entry
//! raft/00000000000000004711.wal   (64 MiB at most; the last one is written)
//! raft/vote                       the vote (`codec::encode_vote`)
//! raft/purged                     the last purged log id (`codec::encode_log_id`)
//! ```
//!
//! - `segment` is a file's layout, `record` one record's framing (length, CRC-32C,
//!   `codec::encode_entry` bytes), `index` where each written entry is, `cache` the
//!   newest entries in memory, `writer` the thread that writes, `recover` what opening
//!   a log finds, `import` the SQLite `raft.db` of netsy 0.1 and 0.2.
//! - `append` queues entries to the writer and returns at once (they are readable from
//!   the cache immediately); the writer drains everything queued, writes it, syncs the
//!   segment once, and only then reports each batch flushed. Vote, truncate and purge go
//!   through the same queue, so nothing is reordered, and they are durable when they
//!   return. After a failed write or sync the writer fails every later operation (what
//!   reached the disk is unknown), so Raft stops and nothing more is acknowledged.
//!
//! docs/raft.md gives the design and why an acknowledged entry survives a crash;
//! docs/formats.md the formats.

mod cache;
mod import;
pub use import::is_moved_marker;
mod index;
mod record;
mod recover;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, RaftLogReader, StorageIOError, Vote};
use tokio::sync::oneshot;

use self::cache::{Cache, Cached};
use self::index::Index;
use self::segment::Segment;
use self::writer::{Op, Writer};
use super::clock::CommitClock;
use super::codec::{self, FormatError};
use super::{LogId, NodeId, StorageError, TypeConfig};

/// The log's directory in the data directory.
pub const LOG_DIR: &str = "raft";
/// The SQLite log of netsy 0.1 and 0.2 in the data directory, imported at the first open.
pub const LEGACY_DB: &str = "raft.db";
/// The vote's file in the log's directory.
const VOTE_FILE: &str = "vote";
/// The last purged log id's file in the log's directory.
const PURGED_FILE: &str = "purged";

/// Whether `data_dir` holds a Raft log (of this netsy, or the `raft.db` of an older one).
pub fn exists_in(data_dir: &Path) -> bool {
    let legacy = data_dir.join(LEGACY_DB);
    data_dir.join(LOG_DIR).exists() || (legacy.exists() && !import::is_moved_marker(&legacy).unwrap_or(false))
}

/// Sizes the log works with.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A segment is not written past this many bytes (a single larger entry gets a
    /// segment of its own).
    pub segment_bytes: u64,
    /// The cache keeps at most this many encoded bytes of written entries (it holds
    /// each entry decoded as well, so it takes about twice that in memory).
    pub cache_bytes: u64,
    /// Zeroes are kept written this far ahead of the last record (see `writer`).
    pub zero_ahead: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: 64 << 20,
            cache_bytes: 64 << 20,
            zero_ahead: 1 << 20,
        }
    }
}

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{}: {}: {source}", .path.display(), io_cause(.action, .source))]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: corrupt at offset {offset}: {reason}", .path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("{}: the entry at offset {offset} is undecodable", .path.display())]
    Entry {
        path: PathBuf,
        offset: u64,
        #[source]
        source: FormatError,
    },
    #[error("{}: a Raft log segment in format {}, newer than this netsy reads (formats up to 1); run a netsy at least as new as the one that wrote it", .path.display(), char::from(*.found))]
    FutureSegment { path: PathBuf, found: u8 },
    #[error("{}: entry {expected} is missing (the next entry found is {found})", .path.display())]
    Missing { path: PathBuf, expected: u64, found: u64 },
    #[error("{}: {source}", .path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{}: cannot read the SQLite log", .path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the record of entry {index} is undecodable")]
    Undecodable {
        index: u64,
        #[source]
        source: FormatError,
    },
    #[error("the record of entry {index} holds entry {found}")]
    Misplaced { index: u64, found: u64 },
    #[error("entry {index} is neither in memory nor in a segment")]
    Hole { index: u64 },
    #[error("entry {index} is appended, but the log's next entry is {next}")]
    NotNext { index: u64, next: u64 },
    #[error("entry {index} is {bytes} bytes, which a log record cannot hold")]
    TooLarge { index: u64, bytes: usize },
    #[error("the Raft log writer stopped")]
    WriterStopped,
    #[error("the Raft log's {0} lock is poisoned")]
    Poisoned(&'static str),
}

/// What an I/O error means, in the words an operator looks for (a full disk, a failing
/// one).
fn io_cause(action: &str, e: &std::io::Error) -> String {
    /// Linux's EIO: the device failed the operation.
    const EIO: i32 = 5;
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!("cannot {action}: the disk is full")
    } else if e.raw_os_error() == Some(EIO) {
        format!("cannot {action}: disk I/O error")
    } else {
        format!("cannot {action}")
    }
}

impl WalError {
    /// For `map_err`: an I/O error while doing `action` to `path`.
    pub fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> WalError {
        let path = path.to_path_buf();
        move |source| WalError::Io { path, action, source }
    }
}

fn read_err(e: &WalError) -> StorageError {
    StorageIOError::read_logs(e).into()
}

fn write_err(e: &WalError) -> StorageError {
    StorageIOError::write_logs(e).into()
}

/// What the storage handle, its readers and the writer thread share.
struct Shared {
    /// The log is never purged past this index: entries the archive has not uploaded yet
    /// must stay (set by the archive uploader; `u64::MAX` when nothing guards the log).
    purge_floor: AtomicU64,
    state: Mutex<State>,
    /// Held (shared) by readers while they read records from segment files, and
    /// (exclusively) by the writer while it truncates them, so that a reader never reads
    /// where records were cut off.
    files: RwLock<()>,
}

/// The log as readers see it.
struct State {
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId>,
    /// The index of the first entry the log holds (when it holds any).
    first: u64,
    /// The last entry the log holds (appended, written or not); `None` when it holds none.
    last: Option<LogId>,
    /// The newest entries, through `last`; every entry before the cache's first is written.
    cache: Cache,
    /// Where the entries written to segment files are.
    written: Index,
    /// The segment files, by first index.
    segments: BTreeMap<u64, Arc<Segment>>,
}

impl State {
    fn holds(&self, idx: u64) -> bool {
        self.last.is_some_and(|l| self.first <= idx && idx <= l.index)
    }

    /// The segment that holds (or would hold) entry `idx`: the one with the greatest
    /// first index not after it.
    fn segment_of(&self, idx: u64) -> Option<&Arc<Segment>> {
        self.segments.range(..=idx).next_back().map(|(_, segment)| segment)
    }
}

impl Shared {
    fn new(recovered: recover::Recovered, options: Options) -> Arc<Shared> {
        let recover::Recovered {
            vote,
            last_purged,
            written,
            last,
            segments,
            ..
        } = recovered;
        let next = last.or(last_purged).map_or(0, |l| l.index + 1);
        let first = if written.is_empty() { next } else { written.first() };
        Arc::new(Shared {
            purge_floor: AtomicU64::new(u64::MAX),
            state: Mutex::new(State {
                vote,
                last_purged,
                first,
                last,
                cache: Cache::new(next, options.cache_bytes),
                written,
                segments,
            }),
            files: RwLock::new(()),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, WalError> {
        self.state.lock().map_err(|_| WalError::Poisoned("state"))
    }
}

/// The writer thread's queue; the last handle to go closes it and waits for the thread
/// (so that the log's files are closed when the store is dropped).
struct WriterHandle {
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.ops = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the Raft log writer thread panicked");
            }
        }
    }
}

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    writer: Arc<WriterHandle>,
    /// Sees the commit time of every entry appended (and, at open, of the last one the
    /// log holds), so that this node's stamps, if it leads, never go below them.
    clock: Arc<CommitClock>,
    /// Told every commit index openraft reaches (`save_committed`, before it hands the
    /// entries to the state machine): the archive uploader may ship committed entries
    /// without waiting for the state machine to take them.
    commits: Option<tokio::sync::watch::Sender<u64>>,
}

impl LogStore {
    /// Opens the log of `data_dir` (creating it when there is none), importing the
    /// `raft.db` of an older netsy first.
    pub fn open(data_dir: &Path) -> Result<LogStore, StorageError> {
        LogStore::open_with(data_dir, Options::default())
    }

    pub fn open_with(data_dir: &Path, options: Options) -> Result<LogStore, StorageError> {
        LogStore::try_open(data_dir, options).map_err(|e| read_err(&e))
    }

    fn try_open(data_dir: &Path, options: Options) -> Result<LogStore, WalError> {
        let dir = data_dir.join(LOG_DIR);
        import::upgrade(data_dir, &dir, options)?;
        let mut recovered = recover::recover(&dir)?;
        let current = recovered.current.take();
        let shared = Shared::new(recovered, options);
        let writer = Writer::new(dir.clone(), shared.clone(), options, current);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(WalError::io(&dir, "start the writer thread for"))?;
        let log = LogStore {
            shared,
            writer: Arc::new(WriterHandle {
                ops: Some(tx),
                thread: Some(thread),
            }),
            clock: Arc::new(CommitClock::new()),
            commits: None,
        };
        // Entries carry non-decreasing times: the last one has the newest.
        let last = log.shared.lock()?.last;
        if let Some(last) = last {
            let times = log.collect(
                last.index,
                last.index + 1,
                |c| commit_time(&c.entry),
                |i, payload| Ok(commit_time(&decode(i, &payload)?)),
            )?;
            log.clock.observe(times.into_iter().max().unwrap_or(0));
        }
        Ok(log)
    }

    /// Raises `commits` to every commit index openraft reaches from now on (it never
    /// goes back). Not persisted: after a restart the state machine's applied index is
    /// the starting point, as before.
    pub fn report_commits_to(&mut self, commits: tokio::sync::watch::Sender<u64>) {
        self.commits = Some(commits);
    }

    /// The commit clock this log feeds (the proposer stamps batches from it).
    pub fn commit_clock(&self) -> Arc<CommitClock> {
        self.clock.clone()
    }

    /// Guards entries after `index` from purging (the archive's upload watermark).
    pub fn set_purge_floor(&self, index: u64) {
        self.shared.purge_floor.store(index, Ordering::Release);
    }

    /// Bytes of the entries after `index` written to segment files (the archive's upload
    /// backlog; the few entries still in the writer's queue are not counted).
    pub fn bytes_after(&self, index: u64) -> Result<u64, StorageError> {
        Ok(self.shared.lock().map_err(|e| read_err(&e))?.written.bytes_after(index))
    }

    /// Whether the log holds every entry from the first (index 0, openraft's initial
    /// membership): never purged, and not begun after a state that came from elsewhere
    /// (a restore or an installed snapshot). Such a log alone can rebuild the state.
    pub fn holds_every_entry(&self) -> Result<bool, StorageError> {
        let s = self.shared.lock().map_err(|e| read_err(&e))?;
        Ok(s.last_purged.is_none() && !s.written.is_empty() && s.written.first() == 0)
    }

    fn send(&self, op: Op) -> Result<(), WalError> {
        self.writer
            .ops
            .as_ref()
            .ok_or(WalError::WriterStopped)?
            .send(op)
            .map_err(|_| WalError::WriterStopped)
    }

    /// The index after the last entry of `from..=to` (clamped to the log) to read when
    /// at most about `max_bytes` of payload is wanted: through the entry that brings the
    /// total to `max_bytes`, and at least one.
    fn end_within(&self, from: u64, to: u64, max_bytes: u64) -> Result<u64, WalError> {
        let s = self.shared.lock()?;
        let Some(last) = s.last else { return Ok(from) };
        let (start, to) = (from.max(s.first), to.min(last.index));
        let mut bytes = 0u64;
        for idx in start..=to {
            bytes += match s.cache.get(idx) {
                Some(c) => c.bytes.len() as u64,
                None => s.written.get(idx).ok_or(WalError::Hole { index: idx })?.len,
            };
            if bytes >= max_bytes {
                return Ok(idx + 1);
            }
        }
        Ok(to.saturating_add(1).max(start))
    }

    /// Queues the operation `make` builds and waits until the writer made it durable.
    async fn send_and_wait(&self, make: impl FnOnce(writer::Ack) -> Op) -> Result<(), Arc<WalError>> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| WalError::WriterStopped)?
    }

    /// The entries `start..end` the log holds (a contiguous run, clamped to the log),
    /// each made by `cached` from its cache entry or by `stored` from its record's payload
    /// in a segment file.
    fn collect<T>(
        &self,
        start: u64,
        end: u64,
        cached: impl Fn(&Cached) -> T,
        stored: impl Fn(u64, Vec<u8>) -> Result<T, WalError>,
    ) -> Result<Vec<T>, WalError> {
        let _files = self.shared.files.read().map_err(|_| WalError::Poisoned("files"))?;
        type Run = (Arc<Segment>, Vec<(u64, index::Pos)>);
        let (reads, hits): (Vec<Run>, Vec<Arc<Cached>>) = {
            let s = self.shared.lock()?;
            let Some(last) = s.last else { return Ok(Vec::new()) };
            let start = start.max(s.first);
            let end = end.min(last.index + 1);
            if start >= end {
                return Ok(Vec::new());
            }
            // Before the cache's first entry everything is written.
            let split = s.cache.first().clamp(start, end);
            let mut reads: Vec<Run> = Vec::new();
            for idx in start..split {
                let pos = s.written.get(idx).ok_or(WalError::Hole { index: idx })?;
                let segment = s.segment_of(idx).ok_or(WalError::Hole { index: idx })?;
                match reads.last_mut() {
                    Some((current, run)) if current.first == segment.first => run.push((idx, pos)),
                    _ => reads.push((segment.clone(), vec![(idx, pos)])),
                }
            }
            let hits = (split..end)
                .map(|idx| s.cache.get(idx).cloned().ok_or(WalError::Hole { index: idx }))
                .collect::<Result<_, _>>()?;
            (reads, hits)
        };
        let mut out = Vec::with_capacity(reads.iter().map(|(_, run)| run.len()).sum::<usize>() + hits.len());
        for (segment, run) in reads {
            let (Some((_, from)), Some((_, to))) = (run.first(), run.last()) else {
                continue;
            };
            let payloads = segment.read_records(from.offset, to.end(), run.len())?;
            for ((idx, _), payload) in run.iter().zip(payloads) {
                out.push(stored(*idx, payload)?);
            }
        }
        out.extend(hits.iter().map(|c| cached(c)));
        Ok(out)
    }

    /// The id of entry `idx`, if the log holds it.
    fn log_id_at(&self, idx: u64) -> Result<Option<LogId>, WalError> {
        Ok(self
            .collect(
                idx,
                idx.saturating_add(1),
                |c| c.entry.log_id,
                |i, payload| Ok(decode(i, &payload)?.log_id),
            )?
            .pop())
    }
}

/// Entry `idx` from its record's payload.
fn decode(idx: u64, payload: &[u8]) -> Result<Entry<TypeConfig>, WalError> {
    let entry = codec::decode_entry(payload).map_err(|source| WalError::Undecodable { index: idx, source })?;
    if entry.log_id.index != idx {
        return Err(WalError::Misplaced {
            index: idx,
            found: entry.log_id.index,
        });
    }
    Ok(entry)
}

#[derive(Debug, PartialEq, Eq)]
enum PurgeTarget {
    /// Purge what Raft asked for.
    Requested,
    /// Purge only through this index (the archive has nothing after it yet).
    Through(u64),
    /// Purge nothing now.
    Nothing,
}

/// How far a purge requested through `requested` may go, given the archive's `floor`
/// and what is `already` purged.
fn purge_target(requested: u64, floor: u64, already: u64) -> PurgeTarget {
    if requested <= floor {
        PurgeTarget::Requested
    } else if floor <= already {
        PurgeTarget::Nothing
    } else {
        PurgeTarget::Through(floor)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        self.collect(start, end, |c| c.entry.clone(), |idx, payload| decode(idx, &payload))
            .map_err(|e| read_err(&e))
    }
}

/// The commit time a log entry carries (0: none; see `raft::clock`).
pub fn commit_time(entry: &Entry<TypeConfig>) -> u64 {
    match &entry.payload {
        openraft::EntryPayload::Normal(batch) => batch.unix_ms,
        _ => 0,
    }
}

/// The archive uploader reads the log through this: entries exactly as the segments hold
/// them (`codec::encode_entry`, the archive segments' current encoding), never decoded
/// and encoded again.
#[async_trait::async_trait]
impl crate::archive::log::LogSource for LogStore {
    async fn entries(
        &self,
        from: u64,
        to: u64,
        max_bytes: u64,
    ) -> Result<Vec<crate::archive::segment::Frame>, crate::archive::log::BoxError> {
        use crate::archive::segment::Frame;
        let end = self.end_within(from, to, max_bytes)?;
        // Entries older than the cache are read from segment files: off the runtime.
        let log = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            log.collect(
                from,
                end,
                |c| Frame::new(c.index(), commit_time(&c.entry), c.bytes.clone()),
                // Older than the cache: decoded for its time (the backlog of a slow upload).
                |idx, payload| Ok(Frame::new(idx, commit_time(&decode(idx, &payload)?), payload)),
            )
        });
        Ok(read.await??)
    }

    fn set_purge_floor(&self, index: u64) {
        LogStore::set_purge_floor(self, index);
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let s = self.shared.lock().map_err(|e| read_err(&e))?;
        Ok(LogState {
            last_purged_log_id: s.last_purged,
            last_log_id: s.last.or(s.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.send_and_wait(|ack| Op::Vote { vote, ack })
            .await
            .map_err(|e| StorageIOError::write_vote(&*e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.shared.lock().map_err(|e| read_err(&e))?.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let (Some(commits), Some(c)) = (&self.commits, committed) {
            commits.send_if_modified(|w| {
                let higher = c.index > *w;
                if higher {
                    *w = c.index;
                }
                higher
            });
        }
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Arc<Cached>> = entries.into_iter().map(|e| Arc::new(Cached::new(e))).collect();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if let Some(w) = entries.windows(2).find(|w| w[1].index() != w[0].index() + 1) {
                return Err(write_err(&WalError::NotNext {
                    index: w[1].index(),
                    next: w[0].index() + 1,
                }));
            }
            // Entries that replace some of the log (openraft truncates first, so this is
            // only a safeguard): the replaced ones go first, durably.
            let replaces = self
                .shared
                .lock()
                .map_err(|e| write_err(&e))?
                .last
                .is_some_and(|l| first.index() <= l.index);
            if replaces {
                self.truncate(first.entry.log_id).await?;
            }
            let mut s = self.shared.lock().map_err(|e| write_err(&e))?;
            if s.last.is_none_or(|l| l.index + 1 != first.index()) {
                if let Some(l) = s.last {
                    tracing::warn!(
                        last = l.index,
                        appended = first.index(),
                        "entries appended after a gap in the Raft log: the log starts again at them"
                    );
                }
                s.first = first.index();
                s.cache.restart(first.index());
            }
            for e in &entries {
                self.clock.observe(commit_time(&e.entry));
                s.cache.push(e.clone());
            }
            s.last = Some(last.entry.log_id);
        }
        self.send(Op::Append { entries, done: callback }).map_err(|e| write_err(&e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        let first = {
            let s = self.shared.lock().map_err(|e| write_err(&e))?;
            match s.last {
                Some(last) if from <= last.index => s.first,
                // Nothing from `from` on.
                _ => return Ok(()),
            }
        };
        let prev = if from > first {
            self.log_id_at(from - 1).map_err(|e| read_err(&e))?
        } else {
            None
        };
        self.send_and_wait(|ack| Op::Truncate { from, prev, ack })
            .await
            .map_err(|e| write_err(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Keep what the archive does not have yet; a later purge takes the rest. That is
        // possible only while the log holds the entry purged up to: a purge past the
        // held entries (a snapshot installed from the leader) takes everything, or the
        // kept entries would be cut off from those that follow the snapshot, and the
        // purge would go unrecorded (a restart then reads the log from index 0 and fails).
        let floor = self.shared.purge_floor.load(Ordering::Acquire);
        let (already, holds) = {
            let s = self.shared.lock().map_err(|e| write_err(&e))?;
            (s.last_purged.map(|l| l.index), s.holds(log_id.index))
        };
        let target = if holds {
            purge_target(log_id.index, floor, already.unwrap_or(0))
        } else {
            PurgeTarget::Requested
        };
        let log_id = match target {
            PurgeTarget::Requested => log_id,
            PurgeTarget::Nothing => return Ok(()),
            PurgeTarget::Through(index) => match self.log_id_at(index).map_err(|e| read_err(&e))? {
                Some(id) => id,
                None => return Ok(()),
            },
        };
        if already.is_some_and(|a| a >= log_id.index) {
            return Ok(());
        }
        self.send_and_wait(|ack| Op::Purge { log_id, ack }).await.map_err(|e| write_err(&e))
    }
}
