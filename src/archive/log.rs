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

use super::segment::EntryEncoding;

/// An error of the Raft layer, kept whole as the source of the archive's own errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The local Raft log, as the uploader reads it.
#[async_trait::async_trait]
pub trait LogSource: Send + Sync {
    /// The entries `from..=to` that the log holds, as `(index, bytes)` in
    /// [`EntryEncoding::Current`], in order: a contiguous run, which starts after `from`
    /// (or is empty) when the entries at `from` are no longer in the log.
    async fn entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, BoxError>;

    /// Never purge the entries after `index` (they are not in object storage yet).
    fn set_purge_floor(&self, index: u64);
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

        fn applied(&self, meta: &AppliedMeta) -> Result<Option<Applied>, BoxError> {
            match meta.last_applied {
                None => Ok(None),
                Some(_) => Err(Box::new(Refused)),
            }
        }
    }
}
