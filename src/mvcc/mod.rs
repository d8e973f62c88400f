//! Pure MVCC over SQLite: the etcd key space with full revision history.
//!
//! Tables (see `schema.rs`): `kv` holds every revision of every key (history, tombstones
//! included) in revision order, each row pointing back at the key's previous one;
//! `current` holds the live row of each key so listing the latest state never scans
//! history; `blobs` holds each large value once (its `kv` and `current` rows point at
//! it); `leases` and `meta` hold the rest of the applied state.
//! Revisions are assigned here, at apply time, so every replica holds the same state.

pub mod boot;
mod budget;
pub mod checkpoint;
mod hash;
mod history;
pub mod import;
mod read;
pub mod reclaim;
mod schema;
mod store;
mod stream;
pub mod validate;
mod write;

pub use budget::{row_cost, ReadBudget, Reservation};
pub use history::{History, RevisionEvents};
pub use read::{KeyRange, RangeEnd, Revisions};
pub use store::{
    clear_raft_meta, read_applied_meta, read_revisions, remove_database, set_applied_source, AppliedMeta, CommitBatch, DbSize, Reader,
    Reclaim, Store,
};
pub use stream::{Chunk, RangeStream, StreamRefused};
pub use write::{Command, CommandResult};

use serde::{Deserialize, Serialize};

/// Errors of the MVCC layer. Every client-caused variant maps to one etcd error in
/// `api::errors`; `Storage` is a disk or SQLite failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("database space exceeded")]
    NoSpace,
    #[error("invalid request: {0}")]
    Invalid(validate::InvalidRequest),
    #[error("storage: {0}")]
    Storage(String),
}

impl MvccError {
    /// A disk or SQLite failure as `Storage`, with its whole chain of causes as text:
    /// `MvccError` must stay `Clone`, comparable and serializable (it travels in
    /// forwarded results and is the etcd client's error), so it cannot hold the source
    /// itself; the chain at least reaches the log and the message intact.
    pub fn storage(e: &dyn std::error::Error) -> MvccError {
        MvccError::Storage(crate::error_chain(e))
    }
}

impl From<rusqlite::Error> for MvccError {
    fn from(e: rusqlite::Error) -> Self {
        MvccError::storage(&e)
    }
}

impl From<validate::InvalidRequest> for MvccError {
    fn from(e: validate::InvalidRequest) -> Self {
        MvccError::Invalid(e)
    }
}

/// The smallest lease TTL etcd grants with default timing (1.5 x election timeout, rounded up).
pub const MIN_LEASE_TTL: i64 = 2;
/// etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
