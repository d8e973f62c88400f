//! The Raft log and vote in SQLite (`raft.db`, WAL, `synchronous=FULL`).
//!
//! Group commit: `append` queues entries to one writer thread and returns at once (the
//! entries are readable from memory immediately); the writer drains everything queued,
//! writes it in one transaction (one fsync) and then reports every batch flushed. Vote,
//! truncate and purge go through the same queue, so nothing is reordered.
//!
//! Entries, the vote and the last purged log id are stored in netsy's own encoding
//! (`raft::codec`); `raft_meta` names the format. A `raft.db` of netsy 0.1 (bincode,
//! no format) is rewritten in the current format when it is first opened.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, RaftLogReader, StorageIOError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::codec::{self, legacy, FormatError};
use super::{LogId, NodeId, StorageError, TypeConfig};

/// The writer's outcome for one queued operation; every operation of a batch shares
/// the batch's SQLite error, hence the `Arc`.
type Ack = oneshot::Sender<Result<(), Arc<rusqlite::Error>>>;

enum Op {
    Append {
        entries: Vec<(u64, u64, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    Truncate {
        from: u64,
        ack: Ack,
    },
    Purge {
        upto: u64,
        log_id: Vec<u8>,
        ack: Ack,
    },
    Meta {
        name: &'static str,
        value: Vec<u8>,
        ack: Option<Ack>,
    },
}

/// Shared state between the storage handle, its readers and the writer thread.
struct Shared {
    /// The log is never purged past this index: entries the archive has not uploaded yet
    /// must stay (set by the archive uploader; `u64::MAX` when nothing guards the log).
    purge_floor: AtomicU64,
    /// Entries appended but not yet committed to SQLite: index → (sequence, entry).
    pending: Mutex<BTreeMap<u64, (u64, Entry<TypeConfig>)>>,
    seq: AtomicU64,
    read_conn: Mutex<Connection>,
    /// The sizes of the entries stored in SQLite, kept by the writer thread.
    sizes: Mutex<Sizes>,
    state: Mutex<State>,
}

/// Encoded sizes of the entries stored in SQLite, as running totals, so that "bytes
/// after index i" (the archive backlog, the log since the last snapshot) is a lookup
/// rather than a scan of the log. The stored entries are a contiguous run of indexes.
#[derive(Default, Debug)]
struct Sizes {
    /// Index of the first stored entry.
    first: u64,
    /// Running total before the first entry.
    base: u64,
    /// `totals[k]`: running total through entry `first + k`.
    totals: std::collections::VecDeque<u64>,
}

impl Sizes {
    fn total(&self) -> u64 {
        self.totals.back().copied().unwrap_or(self.base)
    }

    /// Entry `idx` of `bytes` was written (replacing it and everything after it).
    fn stored(&mut self, idx: u64, bytes: u64) {
        if self.totals.is_empty() || idx < self.first || idx > self.first + self.totals.len() as u64 {
            // Nothing stored before it, or not adjacent (cannot happen in a Raft log):
            // start a new run.
            *self = Sizes {
                first: idx,
                base: self.total(),
                totals: Default::default(),
            };
        }
        self.truncate(idx);
        let total = self.total() + bytes;
        self.totals.push_back(total);
    }

    /// Entries from `idx` on were deleted.
    fn truncate(&mut self, idx: u64) {
        let keep = idx.saturating_sub(self.first).min(self.totals.len() as u64);
        self.totals.truncate(keep as usize);
    }

    /// Entries through `idx` were deleted.
    fn purge(&mut self, idx: u64) {
        while self.first <= idx {
            let Some(total) = self.totals.pop_front() else {
                break;
            };
            self.base = total;
            self.first += 1;
        }
    }

    /// Follows a batch the writer committed.
    fn written(&mut self, batch: &[Op]) {
        for op in batch {
            match op {
                Op::Append { entries, .. } => {
                    for (idx, _, bytes) in entries {
                        self.stored(*idx, bytes.len() as u64);
                    }
                }
                Op::Truncate { from, .. } => self.truncate(*from),
                Op::Purge { upto, .. } => self.purge(*upto),
                Op::Meta { .. } => {}
            }
        }
    }

    /// Bytes of the stored entries after `idx`.
    fn after(&self, idx: u64) -> u64 {
        let before = match idx.checked_sub(self.first) {
            None => self.base,
            Some(k) => self.totals.get(k as usize).copied().unwrap_or(self.total()),
        };
        self.total() - before
    }
}

#[derive(Default, Clone)]
struct State {
    last_purged: Option<LogId>,
    last_log: Option<LogId>,
    vote: Option<Vote<NodeId>>,
}

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
}

fn sto(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn sto_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn msg_err(m: String) -> StorageError {
    sto(super::io_error(m))
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS raft_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
    )?;
    Ok(conn)
}

fn get_meta<T>(conn: &Connection, name: &str, decode: fn(&[u8]) -> Result<T, FormatError>) -> Result<Option<T>, StorageError> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM raft_meta WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(sto_read)?;
    raw.map(|b| decode(&b)).transpose().map_err(sto_read)
}

/// Brings `raft.db` to the current format: refuses a newer one, rewrites one of netsy 0.1
/// (bincode records, no `format` row), and marks a new one.
fn ensure_format(conn: &mut Connection) -> Result<(), StorageError> {
    let stored: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM raft_meta WHERE name = 'format'", [], |r| r.get(0))
        .optional()
        .map_err(sto_read)?;
    match stored.as_deref() {
        Some([f]) if *f == codec::FORMAT => Ok(()),
        Some([f]) if *f > codec::FORMAT => Err(sto_read(FormatError::Future {
            what: "raft.db",
            found: *f,
        })),
        Some(other) => Err(sto_read(FormatError::Unknown {
            what: "raft.db",
            found: other.first().copied().unwrap_or(0),
        })),
        None => upgrade_legacy(conn),
    }
}

/// Rewrites every record of a netsy 0.1 `raft.db` in the current format, in one
/// transaction (a crash leaves the old file as it was, to be upgraded at the next open).
fn upgrade_legacy(conn: &mut Connection) -> Result<(), StorageError> {
    const CHUNK: i64 = 1024;
    let tx = conn.transaction().map_err(sto)?;
    let (count, max): (i64, Option<i64>) = tx
        .query_row("SELECT count(*), max(idx) FROM log", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sto_read)?;
    if count > 0 {
        tracing::info!(
            entries = count,
            "raft.db was written by netsy 0.1: rewriting it in the current format"
        );
    }
    let mut done = 0i64;
    let mut from = i64::MIN;
    while let Some(max) = max.filter(|m| from <= *m) {
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = tx
                .prepare_cached("SELECT idx, entry FROM log WHERE idx >= ?1 ORDER BY idx LIMIT ?2")
                .map_err(sto_read)?;
            let rows = stmt
                .query_map(params![from, CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sto_read)?;
            rows.collect::<Result<_, _>>().map_err(sto_read)?
        };
        let Some(&(last, _)) = rows.last() else { break };
        let mut update = tx.prepare_cached("UPDATE log SET entry = ?2 WHERE idx = ?1").map_err(sto)?;
        for (idx, raw) in &rows {
            let entry = legacy::decode_entry(raw).map_err(sto_read)?;
            update.execute(params![idx, codec::encode_entry(&entry)]).map_err(sto)?;
        }
        done += rows.len() as i64;
        if done % (64 * CHUNK) < CHUNK && done < count {
            tracing::info!(done, entries = count, "rewriting raft.db");
        }
        if last >= max {
            break;
        }
        from = last + 1;
    }
    type Convert = fn(&[u8]) -> Result<Vec<u8>, FormatError>;
    let upgrade: [(&str, Convert); 2] = [
        ("vote", |b| Ok(codec::encode_vote(&legacy::decode_vote(b)?))),
        ("last_purged", |b| Ok(codec::encode_log_id(&legacy::decode_log_id(b)?))),
    ];
    for (name, convert) in upgrade {
        let raw: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM raft_meta WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(sto_read)?;
        if let Some(raw) = raw {
            let value = convert(&raw).map_err(sto_read)?;
            tx.execute("UPDATE raft_meta SET value = ?2 WHERE name = ?1", params![name, value])
                .map_err(sto)?;
        }
    }
    tx.execute("INSERT INTO raft_meta (name, value) VALUES ('format', ?1)", [vec![codec::FORMAT]])
        .map_err(sto)?;
    tx.commit().map_err(sto)?;
    if count > 0 {
        tracing::info!(entries = count, "raft.db rewritten in the current format");
    }
    Ok(())
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        let mut writer = open(path).map_err(sto)?;
        ensure_format(&mut writer)?;
        let reader = open(path).map_err(sto)?;
        let last_purged: Option<LogId> = get_meta(&reader, "last_purged", codec::decode_log_id)?;
        let vote = get_meta(&reader, "vote", codec::decode_vote)?;
        let last_raw: Option<Vec<u8>> = reader
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(sto_read)?;
        let last_log = match last_raw {
            Some(b) => Some(codec::decode_entry(&b).map_err(sto_read)?.log_id),
            None => last_purged,
        };
        let mut sizes = Sizes::default();
        {
            let mut stmt = reader
                .prepare("SELECT idx, length(entry) FROM log ORDER BY idx")
                .map_err(sto_read)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sto_read)?;
            for row in rows {
                let (idx, bytes) = row.map_err(sto_read)?;
                sizes.stored(idx as u64, bytes as u64);
            }
        }
        let shared = Arc::new(Shared {
            purge_floor: AtomicU64::new(u64::MAX),
            pending: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            read_conn: Mutex::new(reader),
            sizes: Mutex::new(sizes),
            state: Mutex::new(State {
                last_purged,
                last_log,
                vote,
            }),
        });
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(writer, rx, sh))
            .map_err(sto)?;
        Ok(LogStore { shared, ops: tx })
    }

    /// Guards entries after `index` from purging (the archive's upload watermark).
    pub fn set_purge_floor(&self, index: u64) {
        self.shared.purge_floor.store(index, Ordering::Release);
    }

    /// Bytes of the entries after `index` stored in SQLite (the archive's upload
    /// backlog; the few entries still in the writer's queue are not counted).
    pub fn bytes_after(&self, index: u64) -> Result<u64, StorageError> {
        Ok(self.sizes()?.after(index))
    }

    /// Whether the log holds every entry from the first (index 0, openraft's initial
    /// membership): never purged, and not begun after a state that came from elsewhere
    /// (a restore or an installed snapshot). Such a log alone can rebuild the state.
    pub fn holds_every_entry(&self) -> Result<bool, StorageError> {
        if self.state()?.last_purged.is_some() {
            return Ok(false);
        }
        let sizes = self.sizes()?;
        Ok(!sizes.totals.is_empty() && sizes.first == 0)
    }

    fn sizes(&self) -> Result<std::sync::MutexGuard<'_, Sizes>, StorageError> {
        self.shared.sizes.lock().map_err(|_| msg_err("log sizes lock poisoned".into()))
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StorageError> {
        self.shared.state.lock().map_err(|_| msg_err("log state lock poisoned".into()))
    }

    async fn send_and_wait(&self, make: impl FnOnce(Ack) -> Op) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(make(tx)).map_err(|_| msg_err("raft log writer stopped".into()))?;
        rx.await.map_err(|_| msg_err("raft log writer stopped".into()))?.map_err(sto)
    }
}

/// The writer thread: drain the queue, apply it in one transaction, fsync, acknowledge.
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

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, shared: Arc<Shared>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
            if batch.len() >= 4096 {
                break;
            }
        }
        let timer = crate::metrics::WAL_FSYNC_DURATION.start_timer();
        let result = write_batch(&mut conn, &batch).map_err(Arc::new);
        timer.observe_duration();
        if result.is_ok() {
            if let Ok(mut sizes) = shared.sizes.lock() {
                sizes.written(&batch);
            }
        }
        let entries: usize = batch
            .iter()
            .map(|op| if let Op::Append { entries, .. } = op { entries.len() } else { 0 })
            .sum();
        crate::metrics::LOG_BATCH_ENTRIES.observe(entries as f64);
        let mut flushed: Vec<(u64, u64)> = Vec::new();
        for op in batch {
            match op {
                Op::Append { entries, done } => {
                    flushed.extend(entries.iter().map(|(idx, seq, _)| (*idx, *seq)));
                    done.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Op::Truncate { ack, .. } | Op::Purge { ack, .. } => {
                    let _ = ack.send(result.clone());
                }
                Op::Meta { ack, .. } => {
                    if let Some(ack) = ack {
                        let _ = ack.send(result.clone());
                    }
                }
            }
        }
        if result.is_ok() {
            if let Ok(mut pending) = shared.pending.lock() {
                for (idx, seq) in flushed {
                    if pending.get(&idx).is_some_and(|(s, _)| *s == seq) {
                        pending.remove(&idx);
                    }
                }
            }
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")?;
        for op in batch {
            match op {
                Op::Append { entries, .. } => {
                    for (idx, _, bytes) in entries {
                        insert.execute(params![*idx as i64, bytes])?;
                    }
                }
                Op::Truncate { from, .. } => {
                    tx.execute("DELETE FROM log WHERE idx >= ?1", [*from as i64])?;
                }
                Op::Purge { upto, log_id, .. } => {
                    tx.execute("DELETE FROM log WHERE idx <= ?1", [*upto as i64])?;
                    tx.execute(
                        "INSERT OR REPLACE INTO raft_meta (name, value) VALUES ('last_purged', ?1)",
                        [log_id],
                    )?;
                }
                Op::Meta { name, value, .. } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO raft_meta (name, value) VALUES (?1, ?2)",
                        params![name, value],
                    )?;
                }
            }
        }
    }
    tx.commit()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e + 1),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        // Snapshot the pending entries first: an entry leaves `pending` only after it is
        // committed to SQLite, so it is found in at least one of the two reads.
        let pending: BTreeMap<u64, Entry<TypeConfig>> = {
            let p = self.shared.pending.lock().map_err(|_| msg_err("pending lock poisoned".into()))?;
            p.range(range.clone()).map(|(k, (_, e))| (*k, e.clone())).collect()
        };
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = BTreeMap::new();
        {
            let conn = self.shared.read_conn.lock().map_err(|_| msg_err("reader lock poisoned".into()))?;
            let mut stmt = conn
                .prepare_cached("SELECT idx, entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
                .map_err(sto_read)?;
            let hi = end.map_or(i64::MAX, |e| e.min(i64::MAX as u64) as i64);
            let rows = stmt
                .query_map(params![start as i64, hi], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .map_err(sto_read)?;
            for row in rows {
                let (idx, bytes) = row.map_err(sto_read)?;
                out.insert(idx as u64, codec::decode_entry(&bytes).map_err(sto_read)?);
            }
        }
        out.extend(pending);
        // Only a contiguous run is meaningful to openraft.
        let mut result = Vec::with_capacity(out.len());
        let mut expect = None;
        for (idx, e) in out {
            if expect.is_some_and(|x| x != idx) {
                break;
            }
            expect = Some(idx + 1);
            result.push(e);
        }
        Ok(result)
    }
}

/// The archive uploader reads the log through this: entries re-encoded exactly as
/// `raft.db` holds them (`codec::encode_entry`, the segments' current encoding).
#[async_trait::async_trait]
impl crate::archive::log::LogSource for LogStore {
    async fn entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, crate::archive::log::BoxError> {
        let entries = self.clone().try_get_log_entries(from..=to).await?;
        Ok(entries.iter().map(|e| (e.log_id.index, codec::encode_entry(e))).collect())
    }

    fn set_purge_floor(&self, index: u64) {
        LogStore::set_purge_floor(self, index);
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let s = self.state()?;
        Ok(LogState {
            last_purged_log_id: s.last_purged,
            last_log_id: s.last_log.or(s.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = codec::encode_vote(vote);
        self.send_and_wait(|ack| Op::Meta {
            name: "vote",
            value,
            ack: Some(ack),
        })
        .await?;
        self.state()?.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.state()?.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        let mut last = None;
        {
            let mut pending = self.shared.pending.lock().map_err(|_| msg_err("pending lock poisoned".into()))?;
            for e in entries {
                let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
                encoded.push((e.log_id.index, seq, codec::encode_entry(&e)));
                last = Some(e.log_id);
                pending.insert(e.log_id.index, (seq, e));
            }
        }
        if last.is_some() {
            self.state()?.last_log = last;
        }
        self.ops
            .send(Op::Append {
                entries: encoded,
                done: callback,
            })
            .map_err(|_| msg_err("raft log writer stopped".into()))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.send_and_wait(|ack| Op::Truncate { from, ack }).await?;
        if let Ok(mut p) = self.shared.pending.lock() {
            p.retain(|idx, _| *idx < from);
        }
        let prev = if from == 0 {
            None
        } else {
            self.try_get_log_entries(from - 1..from).await?.pop().map(|e| e.log_id)
        };
        let mut s = self.state()?;
        s.last_log = prev.or(s.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Keep what the archive does not have yet; a later purge takes the rest. That is
        // possible only while the log holds the entry purged up to: a purge past the
        // stored entries (a snapshot installed from the leader) takes everything, or the
        // kept entries would be cut off from those that follow the snapshot, and the
        // purge would go unrecorded (a restart then reads the log from index 0 and fails).
        let floor = self.shared.purge_floor.load(Ordering::Acquire);
        let already = self.state()?.last_purged.map_or(0, |l| l.index);
        let stored = !self.try_get_log_entries(log_id.index..=log_id.index).await?.is_empty();
        let target = if stored {
            purge_target(log_id.index, floor, already)
        } else {
            PurgeTarget::Requested
        };
        let log_id = match target {
            PurgeTarget::Requested => log_id,
            PurgeTarget::Nothing => return Ok(()),
            PurgeTarget::Through(index) => match self.try_get_log_entries(index..=index).await?.pop() {
                Some(e) => e.log_id,
                None => return Ok(()),
            },
        };
        let encoded = codec::encode_log_id(&log_id);
        self.send_and_wait(|ack| Op::Purge {
            upto: log_id.index,
            log_id: encoded,
            ack,
        })
        .await?;
        if let Ok(mut p) = self.shared.pending.lock() {
            p.retain(|idx, _| *idx > log_id.index);
        }
        let mut s = self.state()?;
        s.last_purged = Some(log_id);
        if s.last_log.is_none_or(|l| l.index < log_id.index) {
            s.last_log = Some(log_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running totals agree with summing the entries after an index, through
    /// appends, a conflicting append, truncation and purges.
    #[test]
    fn stored_sizes_answer_bytes_after_any_index() {
        let mut log: BTreeMap<u64, u64> = BTreeMap::new();
        let mut sizes = Sizes::default();
        let check = |log: &BTreeMap<u64, u64>, sizes: &Sizes| {
            for i in 0..30 {
                let want: u64 = log.range(i + 1..).map(|(_, b)| b).sum();
                assert_eq!(sizes.after(i), want, "after {i}: {sizes:?}");
            }
        };
        check(&log, &sizes);
        for idx in 3..15 {
            log.insert(idx, idx * 10);
            sizes.stored(idx, idx * 10);
        }
        check(&log, &sizes);
        // A new leader's entry replaces 9 and everything after it.
        log.retain(|i, _| *i < 9);
        log.insert(9, 7);
        sizes.stored(9, 7);
        check(&log, &sizes);
        log.retain(|i, _| *i < 6);
        sizes.truncate(6);
        check(&log, &sizes);
        log.retain(|i, _| *i > 4);
        sizes.purge(4);
        check(&log, &sizes);
        for idx in 6..20 {
            log.insert(idx, 1);
            sizes.stored(idx, 1);
        }
        log.clear();
        sizes.purge(19);
        check(&log, &sizes);
        log.insert(20, 5);
        sizes.stored(20, 5);
        check(&log, &sizes);
    }

    #[test]
    fn purges_never_pass_the_archive_floor() {
        assert_eq!(purge_target(100, u64::MAX, 0), PurgeTarget::Requested, "no archive: purge freely");
        assert_eq!(purge_target(100, 100, 0), PurgeTarget::Requested);
        assert_eq!(purge_target(100, 40, 0), PurgeTarget::Through(40));
        assert_eq!(purge_target(100, 40, 40), PurgeTarget::Nothing);
        assert_eq!(
            purge_target(100, 0, 0),
            PurgeTarget::Nothing,
            "nothing uploaded yet: keep everything"
        );
    }

    /// A purge past the stored entries (a snapshot installed from the leader on a member
    /// whose log is empty or shorter) is recorded even below the archive floor, so that
    /// a restart knows where the log starts; one within them keeps what the archive lacks.
    #[tokio::test]
    async fn a_purge_past_the_stored_entries_is_recorded_whatever_the_archive_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.db");
        let id = |index| LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        drop(LogStore::open(&path).expect("create"));
        {
            let conn = open(&path).expect("open");
            for index in 1..=5 {
                let entry = Entry::<TypeConfig> {
                    log_id: id(index),
                    payload: openraft::EntryPayload::Blank,
                };
                conn.execute(
                    "INSERT INTO log (idx, entry) VALUES (?1, ?2)",
                    params![index as i64, codec::encode_entry(&entry)],
                )
                .expect("insert");
            }
        }
        let mut store = LogStore::open(&path).expect("open");
        store.set_purge_floor(0); // nothing is in object storage yet
        store.purge(id(3)).await.expect("purge within the log");
        assert_eq!(
            store.get_log_state().await.expect("state").last_purged_log_id,
            None,
            "kept for the archive"
        );
        store.purge(id(1999)).await.expect("purge past the log");
        for _ in 0..2 {
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, Some(id(1999)));
            assert_eq!(state.last_log_id, Some(id(1999)));
            assert!(store.try_get_log_entries(0..).await.expect("read").is_empty());
            drop(store);
            store = LogStore::open(&path).expect("reopen");
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A `raft.db` as netsy 0.1 left it (bincode records, no format row) is rewritten in
    /// the current format at open and reads back the same; one of a future format is
    /// refused by name.
    #[tokio::test]
    async fn a_netsy_0_1_log_is_upgraded_and_a_future_one_refused() {
        use crate::raft::codec::tests as golden;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.db");
        {
            let conn = open(&path).expect("create");
            for (idx, hex) in [
                (1, golden::LEGACY_BLANK),
                (2, golden::LEGACY_MEMBERSHIP),
                (3, golden::LEGACY_NORMAL),
            ] {
                conn.execute("INSERT INTO log (idx, entry) VALUES (?1, ?2)", params![idx, unhex(hex)])
                    .expect("insert");
            }
            conn.execute(
                "INSERT INTO raft_meta (name, value) VALUES ('vote', ?1)",
                [unhex(golden::LEGACY_VOTE)],
            )
            .expect("vote");
        }
        for _ in 0..2 {
            let mut store = LogStore::open(&path).expect("open");
            assert_eq!(store.try_get_log_entries(1..=3).await.expect("read"), golden::entries());
            assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(5, 2)));
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        }
        {
            let conn = open(&path).expect("open");
            let raw: Vec<u8> = conn
                .query_row("SELECT entry FROM log WHERE idx = 3", [], |r| r.get(0))
                .expect("row");
            assert_eq!(raw[0], codec::FORMAT, "rewritten in the current format");
            conn.execute("UPDATE raft_meta SET value = ?1 WHERE name = 'format'", [vec![codec::FORMAT + 1]])
                .expect("pretend a newer netsy wrote it");
        }
        let err = LogStore::open(&path).err().expect("a newer raft.db is refused");
        assert!(err.to_string().contains("raft.db is in format 2"), "{err}");
    }
}
