//! What the archive needs from the Raft layer above it, which it never imports.
//!
//! The archive treats log entries as opaque bytes: segments carry them as the log store
//! encodes them, tagged with their encoding (`segment::EntryEncoding`). Whatever needs
//! to understand an entry, or the Raft bookkeeping in a state database, is asked of the
//! Raft layer through these traits and values, which it implements and hands in:
//!
//! - [`LogSource`]: the uploader's view of the local log (encoded entries after an
//!   index, and the purge floor that keeps what is not archived yet).
//! - [`Progress`]: whether this node leads and how far it has applied, as a
//!   `tokio::sync::watch` channel (the uploader and the snapshotter follow it).
//! - [`Replay`]: applying archived entries to a state database through the same apply
//!   path as live entries (restore), and reading the last applied entry a state
//!   database records (snapshot headers).

use crate::mvcc::{AppliedMeta, Store};

use super::segment::{EntryEncoding, Frame};

/// An error of the Raft layer, kept whole as the source of the archive's own errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The local Raft log, as the uploader reads it.
#[async_trait::async_trait]
pub trait LogSource: Send + Sync {
    /// The entries `from..=to` that the log holds, as frames (index, the commit time
    /// the entry carries, bytes in [`EntryEncoding::Current`]), in order: a contiguous
    /// run, which starts after `from` (or is empty) when the entries at `from` are no
    /// longer in the log, and ends early at the entry that brings its bytes to
    /// `max_bytes` (at least one entry: a backlog is read a segment at a time).
    async fn entries(&self, from: u64, to: u64, max_bytes: u64) -> Result<Vec<Frame>, BoxError>;

    /// Never purge the entries after `index` (they are not in object storage yet).
    fn set_purge_floor(&self, index: u64);
}

/// The commit time of an entry stamped `stamp` after entries whose time was `before`:
/// the running maximum, so times never go back and entries without a stamp (0) keep
/// the time before them. Every reader of the archive's times (restore, points) and the
/// state machine's bookkeeping use this one rule.
pub fn effective_time(before: u64, stamp: u64) -> u64 {
    before.max(stamp)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This node's place in the Raft group, as the archive's leader-only tasks need it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// This node is the leader.
    pub leader: bool,
    /// The index of the last entry applied to the state database (0: none).
    pub applied: u64,
}

/// The last entry a state database has applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    /// Its commit time, ms since the Unix epoch (0: unknown).
    pub unix_ms: u64,
}

/// What `Replay::apply` could not do.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Entry `index` cannot be decoded (or is not the entry its frame says it is).
    #[error("entry {index} cannot be decoded: {source}")]
    Entry {
        index: u64,
        #[source]
        source: BoxError,
    },
    /// The decoded entries could not be applied.
    #[error("{0}")]
    Apply(#[source] BoxError),
}

/// How archived entries become state, and how far a state has come: the Raft layer's
/// apply path and bookkeeping, which the archive does not interpret itself.
pub trait Replay: Send + Sync {
    /// Applies `entries` (`(index, bytes)`, consecutive, in `encoding`) to `db` in one
    /// batch, recording the last one as applied, exactly as live entries are applied.
    fn apply(&self, db: &mut Store, encoding: EntryEncoding, entries: &[(u64, Vec<u8>)]) -> Result<(), ReplayError>;

    /// Applies `entries` as `apply` does, but stops as soon as `db` reaches store
    /// revision `revision`: the commands after the one that made it are not applied,
    /// even inside one entry. Returns the entry it stopped in (which the bookkeeping
    /// then records as the last applied), or `None` if every entry was applied and the
    /// revision is not reached yet.
    fn apply_until(
        &self,
        db: &mut Store,
        encoding: EntryEncoding,
        entries: &[(u64, Vec<u8>)],
        revision: i64,
    ) -> Result<Option<u64>, ReplayError>;

    /// The last entry that the Raft bookkeeping `meta` of a state database records
    /// (`None`: nothing applied yet).
    fn applied(&self, meta: &AppliedMeta) -> Result<Option<Applied>, BoxError>;
}

/// Stand-ins for the Raft layer in the archive's own tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A `Replay` for states that never applied an entry: `applied` is `None` for empty
    /// bookkeeping and an error otherwise; `apply` refuses everything.
    pub struct NothingApplied;

    #[derive(Debug, thiserror::Error)]
    #[error("this test replays nothing")]
    pub struct Refused;

    impl Replay for NothingApplied {
        fn apply(&self, _: &mut Store, _: EntryEncoding, entries: &[(u64, Vec<u8>)]) -> Result<(), ReplayError> {
            Err(ReplayError::Entry {
                index: entries.first().map_or(0, |e| e.0),
                source: Box::new(Refused),
            })
        }

        fn apply_until(
            &self,
            db: &mut Store,
            encoding: EntryEncoding,
            entries: &[(u64, Vec<u8>)],
            _: i64,
        ) -> Result<Option<u64>, ReplayError> {
            self.apply(db, encoding, entries).map(|_| None)
        }

        fn applied(&self, meta: &AppliedMeta) -> Result<Option<Applied>, BoxError> {
            match meta.last_applied {
                None => Ok(None),
                Some(_) => Err(Box::new(Refused)),
            }
        }
    }
}
