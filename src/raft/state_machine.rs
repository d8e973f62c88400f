//! The Raft state machine: applies committed entries, in order and in batches, to the
//! MVCC store (one SQLite transaction per batch) and builds/installs snapshots, which are
//! consistent copies of the SQLite database, kept as files and streamed in chunks.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use tokio::fs::File;
use tokio::io::AsyncSeekExt;

use super::clock;
use super::codec::{self, legacy};
use super::{Batch, LogId, NodeId, StorageError, TypeConfig};
use crate::archive::log::{Applied, BoxError, Replay, ReplayError};
use crate::archive::segment::EntryEncoding;
use crate::mvcc::{read_applied_meta, AppliedMeta, Command, CommandResult, MvccError, Reader, Store};

type Membership = StoredMembership<NodeId, super::PeerNode>;

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Mutex<Store>>,
    reader: Reader,
    snapshot_dir: PathBuf,
    /// The newest log index in the store: waiters (forwarded writes, reads after a
    /// ReadIndex) wake once per applied batch, without cloning openraft's metrics.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// Committed entries are applied once through this (`raft::gate`).
    gate: super::gate::ArchiveGate,
}

// openraft keeps the error's chain of causes (`AnyError`).
fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// The store's lock was poisoned by a panic while it was held.
fn poisoned<T>(_: std::sync::PoisonError<T>) -> StorageError {
    sm_err(super::io_error("the state store's lock is poisoned (a panic while it was held)"))
}

/// A file operation's result, with "not found" as `None`.
fn if_exists<T>(result: std::io::Result<T>) -> Result<Option<T>, StorageError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(snap_err(e)),
    }
}

/// The current snapshot in `dir`: the database copy and its meta (`codec::encode_snapshot_meta`).
fn snapshot_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("current.db"), dir.join("current.meta"))
}

fn decode_meta(meta: &AppliedMeta) -> Result<(Option<LogId>, Membership), StorageError> {
    decode_applied_meta(meta).map_err(sm_err)
}

/// The applied log id and membership a state database records (in either encoding).
pub fn decode_applied_meta(meta: &AppliedMeta) -> Result<(Option<LogId>, Membership), codec::FormatError> {
    let (last, membership) = if meta.legacy {
        (
            meta.last_applied.as_deref().map(legacy::decode_applied).transpose()?.flatten(),
            meta.membership.as_deref().map(legacy::decode_membership).transpose()?,
        )
    } else {
        (
            meta.last_applied.as_deref().map(codec::decode_log_id).transpose()?,
            meta.membership.as_deref().map(codec::decode_membership).transpose()?,
        )
    };
    Ok((last, membership.unwrap_or_default()))
}

impl StateMachine {
    pub fn new(
        store: Arc<Mutex<Store>>,
        reader: Reader,
        snapshot_dir: &Path,
        gate: super::gate::ArchiveGate,
    ) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(snap_err)?;
        Ok(StateMachine {
            store,
            reader,
            snapshot_dir: snapshot_dir.to_path_buf(),
            applied: Arc::new(tokio::sync::watch::channel(0).0),
            gate,
        })
    }

    /// The index of the newest log entry applied to the store.
    pub fn applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn set_applied(&self, last: Option<LogId>) {
        let index = last.map_or(0, |l| l.index);
        self.applied.send_if_modified(|a| {
            let newer = index > *a;
            if newer {
                *a = index;
            }
            newer
        });
    }

    fn snapshot_paths(&self) -> (PathBuf, PathBuf) {
        snapshot_files(&self.snapshot_dir)
    }

    /// Where openraft writes the chunks of a snapshot arriving from the leader.
    fn incoming_path(&self) -> PathBuf {
        self.snapshot_dir.join("incoming.db")
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StorageError> + Send + 'static) -> Result<T, StorageError> {
        tokio::task::spawn_blocking(f).await.map_err(sm_err)?
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("cannot read the applied Raft bookkeeping")]
    Format(#[from] codec::FormatError),
}

/// Applies committed entries to the store in one SQLite transaction, recording the last
/// entry (and any membership change) with the data. This is the one apply path: the
/// Raft state machine and restore from object storage both use it.
pub fn apply_entries(store: &mut Store, entries: Vec<openraft::Entry<TypeConfig>>) -> Result<Vec<Vec<CommandResult>>, ApplyError> {
    let mut commands: Vec<Option<Command>> = Vec::new();
    // Per entry: how many of `commands` are its own; `None` for blank and membership
    // entries, which have one `None` placeholder.
    let mut shape: Vec<Option<usize>> = Vec::new();
    let mut last: Option<LogId> = None;
    let mut membership: Option<Membership> = None;
    let mut commit_unix_ms = store.applied_meta().commit_unix_ms;
    let mut source = store.applied_meta().source;
    for entry in entries {
        last = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Normal(batch) => {
                commit_unix_ms = clock::effective(commit_unix_ms, batch.unix_ms);
                if let Some(s) = batch.source {
                    source = Some((s.epoch, s.index));
                }
                shape.push(Some(batch.commands.len()));
                commands.extend(batch.commands.into_iter().map(Some));
            }
            EntryPayload::Blank => {
                shape.push(None);
                commands.push(None);
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                shape.push(None);
                commands.push(None);
            }
        }
    }
    if last.is_none() {
        return Ok(Vec::new());
    }
    let membership = match membership {
        Some(m) => Some(codec::encode_membership(&m)),
        None => {
            let applied = store.applied_meta();
            if applied.legacy {
                // Written by netsy 0.1: carried over in the current encoding.
                Some(codec::encode_membership(&decode_applied_meta(applied)?.1))
            } else {
                applied.membership.clone()
            }
        }
    };
    let meta = AppliedMeta {
        last_applied: last.as_ref().map(codec::encode_log_id),
        membership,
        commit_unix_ms,
        source,
        legacy: false,
    };
    crate::metrics::APPLY_BATCH_ENTRIES.observe(commands.len() as f64);
    let timer = crate::metrics::APPLY_DURATION.start_timer();
    let results = store.apply_batch(&commands, &meta)?;
    timer.observe_duration();
    // Regroup per entry; blank and membership entries had one `None` placeholder.
    let mut results = results.into_iter();
    Ok(shape
        .iter()
        .map(|&n| match n {
            Some(n) => results.by_ref().take(n).collect(),
            None => {
                results.next();
                Vec::new()
            }
        })
        .collect())
}

/// Archived entries applied through [`apply_entries`]: the restore from object storage
/// (`archive::restore`) hands each segment's entries here as bytes, and reads a state's
/// applied entry here for snapshot headers. The archive does not decode entries itself.
pub struct ArchiveReplay;

/// The [`ArchiveReplay`] the archive's restore, bootstrap and snapshot functions take.
pub fn archive_replay() -> Arc<dyn Replay> {
    Arc::new(ArchiveReplay)
}

/// A segment frame and the entry in it disagree about the entry's index.
#[derive(Debug, thiserror::Error)]
#[error("frame says {frame}, entry says {entry}")]
pub struct IndexMismatch {
    pub frame: u64,
    pub entry: u64,
}

impl ArchiveReplay {
    /// Decodes archived entries, checking each is the entry its frame says.
    fn decode(encoding: EntryEncoding, entries: &[(u64, Vec<u8>)]) -> Result<Vec<openraft::Entry<TypeConfig>>, ReplayError> {
        let decode = match encoding {
            EntryEncoding::Current => codec::decode_entry,
            EntryEncoding::Bincode => legacy::decode_entry,
        };
        let mut batch = Vec::with_capacity(entries.len());
        for (index, raw) in entries {
            let index = *index;
            let entry = decode(raw).map_err(|e| ReplayError::Entry {
                index,
                source: Box::new(e),
            })?;
            if entry.log_id.index != index {
                return Err(ReplayError::Entry {
                    index,
                    source: Box::new(IndexMismatch {
                        frame: index,
                        entry: entry.log_id.index,
                    }),
                });
            }
            batch.push(entry);
        }
        Ok(batch)
    }
}

impl Replay for ArchiveReplay {
    fn apply(&self, db: &mut Store, encoding: EntryEncoding, entries: &[(u64, Vec<u8>)]) -> Result<(), ReplayError> {
        let batch = Self::decode(encoding, entries)?;
        apply_entries(db, batch).map_err(|e| ReplayError::Apply(Box::new(e)))?;
        Ok(())
    }

    /// Each command makes at most one revision, so applying no more commands than the
    /// revisions still missing never passes the target: chunks of that many commands are
    /// applied (an entry is cut between two commands when a chunk ends inside it) until
    /// the store is at the target revision.
    fn apply_until(
        &self,
        db: &mut Store,
        encoding: EntryEncoding,
        entries: &[(u64, Vec<u8>)],
        revision: i64,
    ) -> Result<Option<u64>, ReplayError> {
        let mut queue: std::collections::VecDeque<_> = Self::decode(encoding, entries)?.into();
        let failed = |e: ApplyError| ReplayError::Apply(Box::new(e));
        while !queue.is_empty() {
            let missing = revision - db.revision();
            if missing <= 0 {
                break;
            }
            let mut room = usize::try_from(missing).unwrap_or(usize::MAX);
            let mut chunk = Vec::new();
            while room > 0 {
                let Some(mut entry) = queue.pop_front() else { break };
                if let EntryPayload::Normal(batch) = &mut entry.payload {
                    if batch.commands.len() > room {
                        let rest = batch.commands.split_off(room);
                        queue.push_front(openraft::Entry {
                            log_id: entry.log_id,
                            payload: EntryPayload::Normal(Batch {
                                commands: rest,
                                unix_ms: batch.unix_ms,
                                source: batch.source,
                            }),
                        });
                    }
                    room -= batch.commands.len();
                }
                chunk.push(entry);
            }
            let last = chunk.last().map(|e| e.log_id.index);
            apply_entries(db, chunk).map_err(failed)?;
            if db.revision() >= revision {
                return Ok(last);
            }
        }
        Ok(None)
    }

    fn applied(&self, meta: &AppliedMeta) -> Result<Option<Applied>, BoxError> {
        let (last, _) = decode_applied_meta(meta)?;
        Ok(last.map(|l| Applied {
            index: l.index,
            term: l.leader_id.term,
            unix_ms: meta.commit_unix_ms,
        }))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let store = self.store.clone();
        let meta = Self::blocking(move || Ok(store.lock().map_err(poisoned)?.applied_meta().clone())).await?;
        let (last, membership) = decode_meta(&meta)?;
        self.set_applied(last);
        Ok((last, membership))
    }

    /// Applies every command of every entry in one SQLite transaction and returns, per
    /// entry, the results of its commands (none for blank and membership entries).
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let last = entries.last().map(|e| e.log_id);
        if let Some(last) = last {
            self.gate.before_apply(last.index).await;
        }
        let store = self.store.clone();
        let results = Self::blocking(move || {
            let mut store = store.lock().map_err(poisoned)?;
            apply_entries(&mut store, entries).map_err(sm_err)
        })
        .await?;
        self.set_applied(last);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// A fresh file for a snapshot arriving from the leader; openraft writes its chunks.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<File>, StorageError> {
        let incoming = self.incoming_path();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&incoming)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    /// Replaces the state with a received snapshot: its bytes are copied (streamed) to
    /// become the current snapshot, and a second copy becomes the state database.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, super::PeerNode>,
        mut snapshot: Box<File>,
    ) -> Result<(), StorageError> {
        let (db_path, meta_path) = self.snapshot_paths();
        let received = self.snapshot_dir.join("received.db");
        let installed = self.snapshot_dir.join("installed.db");
        let meta_bytes = codec::encode_snapshot_meta(meta);
        snapshot.seek(SeekFrom::Start(0)).await.map_err(snap_err)?;
        let mut out = File::create(&received).await.map_err(snap_err)?;
        let bytes = tokio::io::copy(&mut snapshot, &mut out).await.map_err(snap_err)?;
        out.sync_all().await.map_err(snap_err)?;
        drop((out, snapshot));
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "installing raft snapshot");
        let store = self.store.clone();
        let reader = self.reader.clone();
        let incoming = self.incoming_path();
        let last = meta.last_log_id;
        Self::blocking(move || {
            std::fs::copy(&received, &installed).map_err(snap_err)?;
            let mut store = store.lock().map_err(poisoned)?;
            store.replace_with(&installed).map_err(sm_err)?;
            reader.reset();
            store.announce_replaced();
            drop(store);
            std::fs::rename(&received, &db_path).map_err(snap_err)?;
            crate::fsutil::write_durably(&meta_path, &meta_bytes).map_err(snap_err)?;
            let _ = std::fs::remove_file(&incoming);
            Ok(())
        })
        .await?;
        self.set_applied(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let (db_path, meta_path) = self.snapshot_paths();
        let Some(meta) = if_exists(tokio::fs::read(&meta_path).await)? else {
            return Ok(None);
        };
        let meta = codec::decode_snapshot_meta(&meta).map_err(snap_err)?;
        let Some(file) = if_exists(File::open(&db_path).await)? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

impl StateMachine {
    /// Writes a snapshot of the store as the current one (blocking): a consistent copy,
    /// fsynced with its meta before it is reported, because after an OS crash it is the
    /// base the state database is rebuilt on (and openraft purges the log it covers).
    fn write_snapshot(&self) -> Result<(SnapshotMeta<NodeId, super::PeerNode>, std::fs::File), StorageError> {
        let (db_path, meta_path) = self.snapshot_paths();
        let building = self.snapshot_dir.join("building.db");
        self.copy_store_durably(&building)?;
        let (last, membership) = decode_meta(&read_applied_meta(&building).map_err(snap_err)?)?;
        let snapshot_id = format!("{}-{}", last.map_or(0, |l| l.leader_id.term), last.map_or(0, |l| l.index));
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        std::fs::rename(&building, &db_path).map_err(snap_err)?;
        crate::fsutil::write_durably(&meta_path, &codec::encode_snapshot_meta(&meta)).map_err(snap_err)?;
        // The snapshot covers everything the seed held (see `ensure_local_base`).
        let _ = std::fs::remove_file(self.snapshot_dir.join(SEED));
        let file = std::fs::File::open(&db_path).map_err(snap_err)?;
        let bytes = file.metadata().map_err(snap_err)?.len();
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "built raft snapshot");
        Ok((meta, file))
    }

    /// A consistent copy of the store at `dest`, fsynced.
    fn copy_store_durably(&self, dest: &Path) -> Result<(), StorageError> {
        let _ = std::fs::remove_file(dest);
        self.reader.backup_to(dest).map_err(snap_err)?;
        std::fs::File::open(dest).and_then(|f| f.sync_all()).map_err(snap_err)
    }

    /// Makes sure local files can rebuild the state database after an OS crash (see
    /// `rebuild_state`): the Raft log, on top of the local snapshot or of the seed. A
    /// state that did not come through this log (restored from object storage into a
    /// new epoch, whose log starts afresh) is kept as the seed, until openraft's first
    /// snapshot covers it; a state whose log was purged without a local snapshot is
    /// snapshotted. `log_covers_all`: the log holds every entry from index 0.
    pub async fn ensure_local_base(&self, log_covers_all: bool) -> Result<(), StorageError> {
        let (db_path, meta_path) = self.snapshot_paths();
        let seed = self.snapshot_dir.join(SEED);
        if (db_path.exists() && meta_path.exists()) || seed.exists() {
            return Ok(());
        }
        let this = self.clone();
        Self::blocking(move || {
            let (last, revision) = {
                let store = this.store.lock().map_err(poisoned)?;
                (decode_meta(store.applied_meta())?.0, store.revision())
            };
            match last {
                None if revision > 1 => {
                    let tmp = seed.with_extension("building");
                    this.copy_store_durably(&tmp)?;
                    std::fs::rename(&tmp, &seed)
                        .and_then(|_| crate::fsutil::sync_parent(&seed))
                        .map_err(snap_err)?;
                    tracing::info!(revision, "kept the restored state as the local seed");
                }
                Some(_) if !log_covers_all => {
                    this.write_snapshot()?;
                }
                _ => {}
            }
            Ok(())
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let (meta, file) = Self::blocking(move || this.write_snapshot()).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(File::from_std(file)),
        })
    }
}

/// The local base of a state that did not come through the Raft log (see
/// `StateMachine::ensure_local_base`), in the snapshot directory.
const SEED: &str = "seed.db";

/// How `rebuild_state` put the state database back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// A copy of the local snapshot of log index `index`; the log holds what follows.
    FromSnapshot { index: u64 },
    /// A copy of the seed (a restored state); the log holds every entry after it.
    FromSeed,
    /// An empty database; the log holds every entry.
    FromLog,
}

/// Puts back a state database that the Raft log can bring up to date, when the old one
/// may have lost pages in an OS crash (see `mvcc::boot`): a copy of the local snapshot,
/// or, while the log still holds every entry, a copy of the seed or an empty one.
/// Openraft re-applies the log entries after it once the commit index is known. `log_covers_all`: the log has never
/// been purged and starts at its first entry.
pub fn rebuild_state(state_path: &Path, snapshot_dir: &Path, log_covers_all: bool) -> Result<Rebuilt, String> {
    let (db_path, meta_path) = snapshot_files(snapshot_dir);
    let snapshot = match if_exists(std::fs::read(&meta_path)).map_err(|e| format!("cannot read {}: {e}", meta_path.display()))? {
        Some(raw) if db_path.exists() => Some(codec::decode_snapshot_meta(&raw).map_err(|e| {
            format!(
                "the local snapshot's meta {} is unreadable: {}",
                meta_path.display(),
                crate::error_chain(&e)
            )
        })?),
        _ => None,
    };
    let replace_with = |base: &Path| {
        let tmp = state_path.with_extension("rebuilding");
        std::fs::copy(base, &tmp)
            .and_then(|_| {
                crate::mvcc::remove_database(state_path);
                std::fs::rename(&tmp, state_path)
            })
            .map_err(|e| format!("cannot copy {} over {}: {e}", base.display(), state_path.display()))
    };
    let seed = snapshot_dir.join(SEED);
    match snapshot {
        Some(meta) => {
            replace_with(&db_path)?;
            Ok(Rebuilt::FromSnapshot {
                index: meta.last_log_id.map_or(0, |l| l.index),
            })
        }
        None if log_covers_all && seed.exists() => {
            replace_with(&seed)?;
            Ok(Rebuilt::FromSeed)
        }
        None if log_covers_all => {
            crate::mvcc::remove_database(state_path);
            Ok(Rebuilt::FromLog)
        }
        None => Err(format!(
            "the state database {} may have lost writes in an OS crash, and neither a local snapshot nor the Raft log \
             can rebuild it; empty the data directory to rebuild this node from object storage and its peers",
            state_path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_without_a_local_base_is_refused_and_left_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state.db");
        std::fs::write(&state, b"torn").expect("write");
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).expect("mkdir");
        let err = rebuild_state(&state, &snapshots, false).expect_err("nothing to rebuild from");
        assert!(err.contains("empty the data directory"), "{err}");
        assert_eq!(std::fs::read(&state).expect("still there"), b"torn");
        // A whole log rebuilds from nothing.
        assert_eq!(rebuild_state(&state, &snapshots, true), Ok(Rebuilt::FromLog));
        assert!(!state.exists());
    }

    #[test]
    fn the_local_snapshot_replaces_the_state_and_its_wal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state.db");
        std::fs::write(&state, b"torn").expect("write");
        std::fs::write(dir.path().join("state.db-wal"), b"stale wal").expect("write");
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).expect("mkdir");
        std::fs::write(snapshots.join("current.db"), b"snapshot bytes").expect("write");
        let meta: SnapshotMeta<NodeId, super::super::PeerNode> = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
            last_membership: Membership::default(),
            snapshot_id: "3-42".into(),
        };
        std::fs::write(snapshots.join("current.meta"), codec::encode_snapshot_meta(&meta)).expect("write");
        assert_eq!(rebuild_state(&state, &snapshots, false), Ok(Rebuilt::FromSnapshot { index: 42 }));
        assert_eq!(std::fs::read(&state).expect("read"), b"snapshot bytes");
        assert!(!dir.path().join("state.db-wal").exists());
        assert_eq!(std::fs::read(snapshots.join("current.db")).expect("kept"), b"snapshot bytes");
    }

    fn put(key: &str) -> Command {
        Command::Put(crate::proto::etcdserverpb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn put_entry(index: u64, key: &str) -> openraft::Entry<TypeConfig> {
        batch_entry(index, 0, vec![put(key)])
    }

    fn batch_entry(index: u64, unix_ms: u64, commands: Vec<Command>) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(4, 1), index),
            payload: EntryPayload::Normal(Batch::new(commands, unix_ms)),
        }
    }

    /// Puts `entries` into `objects` as segments of epoch 1, each entry framed with the
    /// time it carries.
    async fn archive(objects: &dyn object_store::ObjectStore, segments: Vec<Vec<openraft::Entry<TypeConfig>>>) {
        use crate::archive::segment;
        for entries in segments {
            let frames: Vec<segment::Frame> = entries
                .iter()
                .map(|e| segment::Frame::new(e.log_id.index, crate::raft::wal::commit_time(e), codec::encode_entry(e)))
                .collect();
            let name = segment::SegmentName {
                epoch: 1,
                first: frames[0].index,
                last: frames[frames.len() - 1].index,
            };
            crate::archive::uploader::put_segment(objects, &name, segment::encode(&frames).expect("encode"))
                .await
                .expect("put");
        }
    }

    /// An object store that answers NotFound once for one path (as if collected under a
    /// reader that listed it), and passes everything else through.
    #[derive(Debug)]
    struct CollectedOnce {
        inner: Arc<dyn object_store::ObjectStore>,
        path: String,
        missed: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Display for CollectedOnce {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "CollectedOnce({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for CollectedOnce {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            if location.as_ref() == self.path && !self.missed.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Err(object_store::Error::NotFound {
                    path: self.path.clone(),
                    source: "collected".into(),
                });
            }
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&object_store::path::Path>) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            opts: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, opts).await
        }
    }

    /// A segment collected under a restore that had listed it: the restore lists again and
    /// finishes, rather than failing half way.
    #[tokio::test]
    async fn a_restore_lists_again_when_an_object_is_collected_under_it() {
        use crate::archive::{restore, segment};
        let dir = tempfile::tempdir().expect("temp dir");
        let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        archive(
            inner.as_ref(),
            vec![
                (1..=3).map(|i| put_entry(i, &format!("k{i}"))).collect(),
                (4..=6).map(|i| put_entry(i, &format!("k{i}"))).collect(),
            ],
        )
        .await;
        let listed = segment::list(inner.as_ref(), 1).await.expect("list");
        let second = listed[1].0.path().to_string();
        let objects = CollectedOnce {
            inner,
            path: second,
            missed: Default::default(),
        };
        let dest = dir.path().join("restored.db");
        let report = restore::restore(&objects, 1, &dest, restore::Target::Latest, &archive_replay())
            .await
            .expect("restore");
        assert!(
            objects.missed.load(std::sync::atomic::Ordering::Acquire),
            "the restore met the collected segment"
        );
        assert_eq!((report.last_index, report.revision), (6, 7));
    }

    /// The archive's restore, over segments of real entries, applies them through
    /// `apply_entries` and records the last one; a snapshot of the result names it.
    #[tokio::test]
    async fn archived_entries_replay_into_the_state_and_its_bookkeeping() {
        use crate::archive::restore;
        let dir = tempfile::tempdir().expect("temp dir");
        let objects: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let blank = openraft::Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(4, 1), 1),
            payload: EntryPayload::Blank,
        };
        let mut first = vec![blank];
        first.extend((2..=3).map(|i| put_entry(i, &format!("k{i}"))));
        let second = (4..=6).map(|i| put_entry(i, &format!("k{i}"))).collect();
        archive(objects.as_ref(), vec![first, second]).await;
        let dest = dir.path().join("restored.db");
        let report = restore::restore(objects.as_ref(), 1, &dest, restore::Target::Index(5), &archive_replay())
            .await
            .expect("restore");
        assert_eq!((report.last_index, report.entries, report.segments), (5, 5, 2));
        assert_eq!(report.revision, 5, "four puts on an empty store");
        let meta = read_applied_meta(&dest).expect("meta");
        assert_eq!(
            ArchiveReplay.applied(&meta).expect("applied"),
            Some(Applied {
                index: 5,
                term: 4,
                unix_ms: 0
            })
        );
        let header = crate::archive::snapshot::describe(&dest, "c", 1, &ArchiveReplay).expect("describe");
        assert_eq!((header.index, header.term, header.revision), (5, 4, 5));
    }

    /// Restores stop at a commit time (whole entries, times taken as their running
    /// maximum) or exactly at a revision (inside an entry), from the empty store or from
    /// the newest snapshot before the target; `points` reports the reachable range.
    #[tokio::test]
    async fn restores_stop_at_a_time_or_a_revision_and_points_say_how_far_they_reach() {
        use crate::archive::restore::{restore, RestoreError, Target};
        use crate::archive::{points, snapshot};
        let dir = tempfile::tempdir().expect("temp dir");
        let objects: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let blank = openraft::Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(4, 1), 1),
            payload: EntryPayload::Blank,
        };
        let first = vec![
            blank,
            batch_entry(2, 1000, vec![put("a"), put("b"), put("c")]), // revisions 2, 3, 4
            batch_entry(3, 2000, vec![put("d")]),                     // 5
        ];
        let second = vec![
            // The clock stepped back: this entry counts as committed at 2000.
            batch_entry(4, 1500, vec![put("e"), put("f")]), // 6, 7
            batch_entry(5, 3000, vec![Command::LeaseGrant { id: 9, ttl: 60 }, put("g")]), // 8
            batch_entry(6, 4000, vec![put("h")]),           // 9
        ];
        archive(objects.as_ref(), vec![first, second]).await;
        let replay = archive_replay();
        let mut n = 0;
        let mut run = |target: Target| {
            n += 1;
            let dest = dir.path().join(format!("r{n}.db"));
            let (objects, replay) = (objects.clone(), replay.clone());
            async move {
                let report = restore(objects.as_ref(), 1, &dest, target, &replay).await?;
                let keys: Vec<String> = Reader::new(&dest)
                    .range(&crate::proto::etcdserverpb::RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        keys_only: true,
                        ..Default::default()
                    })
                    .expect("range")
                    .kvs
                    .into_iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                    .collect();
                Ok::<_, RestoreError>((report, keys.join(""), dest))
            }
        };
        let shape = |r: &crate::archive::restore::RestoreReport| (r.last_index, r.revision, r.commit_unix_ms, r.snapshot_index);
        let (r, keys, _) = run(Target::Time(999)).await.expect("before the first write");
        assert_eq!((shape(&r), keys.as_str()), ((1, 1, 0, None), ""));
        let (r, keys, _) = run(Target::Time(1000)).await.expect("at the first write");
        assert_eq!((shape(&r), keys.as_str()), ((2, 4, 1000, None), "abc"));
        let (r, keys, snap_db) = run(Target::Time(2999)).await.expect("after the stepped-back entry");
        assert_eq!((shape(&r), keys.as_str()), ((4, 7, 2000, None), "abcdef"));
        let (r, _, _) = run(Target::Time(10_000)).await.expect("after everything");
        assert_eq!(shape(&r), (6, 9, 4000, None));
        let (r, keys, _) = run(Target::Revision(3)).await.expect("inside an entry");
        assert_eq!((shape(&r), keys.as_str()), ((2, 3, 1000, None), "ab"));
        let (r, keys, _) = run(Target::Revision(8)).await.expect("after a lease grant");
        assert_eq!((shape(&r), keys.as_str()), ((5, 8, 3000, None), "abcdefg"));
        let (r, _, _) = run(Target::Revision(1)).await.expect("the empty store");
        assert_eq!(shape(&r), (0, 1, 0, None));
        let err = run(Target::Revision(20)).await.expect_err("past the end");
        assert!(matches!(err, RestoreError::Beyond { .. }), "{err:?}");
        assert!(err.to_string().contains("ends at revision 9"), "{err}");

        let p = points::epoch_points(objects.as_ref(), 1, None)
            .await
            .expect("points")
            .expect("some");
        assert_eq!((p.first.index, p.first.revision, p.first.unix_ms), (0, Some(1), 0));
        assert_eq!((p.last.index, p.last.revision, p.last.unix_ms), (6, None, 4000));
        assert!(p.gaps.is_empty() && p.snapshots.is_empty(), "{p:?}");
        let scratch = dir.path().join("scratch");
        let p = points::epoch_points(objects.as_ref(), 1, Some((&scratch, &replay)))
            .await
            .expect("exact")
            .expect("some");
        assert_eq!(p.last.revision, Some(9), "replayed");

        // A snapshot of the state through entry 4 (committed at 2000).
        let header = snapshot::describe(&snap_db, "c", 1, &ArchiveReplay).expect("describe");
        assert_eq!((header.index, header.revision, header.commit_unix_ms), (4, 7, 2000));
        let file = dir.path().join("4.snap");
        snapshot::encode_file(&snap_db, &header, &file).expect("encode");
        snapshot::upload(&objects, &snapshot::SnapshotName { epoch: 1, index: 4 }, &file)
            .await
            .expect("upload");
        let (r, _, _) = run(Target::Time(3500)).await.expect("from the snapshot");
        assert_eq!(shape(&r), (5, 8, 3000, Some(4)));
        let (r, _, _) = run(Target::Time(1999)).await.expect("before the snapshot");
        assert_eq!(shape(&r), (2, 4, 1000, None));
        let (r, keys, _) = run(Target::Revision(7)).await.expect("the snapshot's own revision");
        assert_eq!((shape(&r), keys.as_str()), ((4, 7, 2000, Some(4)), "abcdef"));
        let p = points::epoch_points(objects.as_ref(), 1, None)
            .await
            .expect("points")
            .expect("some");
        assert_eq!(
            p.snapshots.iter().map(|s| (s.index, s.revision, s.unix_ms)).collect::<Vec<_>>(),
            vec![(4, Some(7), 2000)]
        );
        assert_eq!((p.last.index, p.last.unix_ms), (6, 4000));
        assert_eq!(points::epoch_for(objects.as_ref(), Target::Time(5)).await.expect("epoch"), 1);
    }

    #[test]
    fn an_entry_that_is_not_what_its_frame_says_is_refused_with_its_index_and_cause() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut db = Store::open(&dir.path().join("s.db")).expect("open");
        let entries = vec![
            (7, codec::encode_entry(&put_entry(7, "a"))),
            (8, codec::encode_entry(&put_entry(9, "b"))),
        ];
        let err = ArchiveReplay
            .apply(&mut db, EntryEncoding::Current, &entries)
            .expect_err("mismatch");
        let ReplayError::Entry { index: 8, source } = &err else {
            panic!("{err:?}");
        };
        assert!(source.downcast_ref::<IndexMismatch>().is_some(), "{source:?}");
        assert_eq!(err.to_string(), "entry 8 cannot be decoded: frame says 8, entry says 9");

        let garbage = vec![(7, vec![codec::FORMAT, 0xff, 0xff])];
        let err = ArchiveReplay.apply(&mut db, EntryEncoding::Current, &garbage).expect_err("garbage");
        let ReplayError::Entry { index: 7, source } = &err else {
            panic!("{err:?}");
        };
        assert!(source.downcast_ref::<codec::FormatError>().is_some(), "{source:?}");
        // The decoder's own cause is still behind it.
        assert!(crate::error_chain(&err).matches(": ").count() >= 3, "{}", crate::error_chain(&err));
        assert_eq!(db.revision(), 1, "nothing was applied");
    }
}
