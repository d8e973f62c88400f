//! `netsy snapshot restore`: turns a file written by `etcdctl snapshot save` against netsy
//! (a SQLite database followed by its SHA-256) into the data directory of a new
//! single-member cluster that keeps every key, revision and lease.

use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read snapshot {0}: {1}")]
    Read(String, std::io::Error),
    #[error("snapshot is too short to hold a database and its SHA-256 trailer")]
    TooShort,
    #[error("snapshot checksum mismatch: the file is truncated or corrupt")]
    Checksum,
    #[error("data directory {0} already holds a database; restore into an empty directory")]
    NotEmpty(String),
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("snapshot is not a netsy database: {0}")]
    Database(String),
}

/// Verifies `file` and writes `data_dir/state.db`, dropping the source's Raft bookkeeping
/// so the restored node starts a fresh one-member Raft group over the same data.
pub fn restore(file: &Path, data_dir: &Path) -> Result<i64, RestoreError> {
    let bytes = std::fs::read(file).map_err(|e| RestoreError::Read(file.display().to_string(), e))?;
    if bytes.len() < 32 + 512 {
        return Err(RestoreError::TooShort);
    }
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(db).as_slice() != trailer {
        return Err(RestoreError::Checksum);
    }
    let dir = data_dir.display().to_string();
    std::fs::create_dir_all(data_dir).map_err(|e| RestoreError::DataDir(dir.clone(), e))?;
    for existing in ["state.db", "raft.db", "node.json"] {
        if data_dir.join(existing).exists() {
            return Err(RestoreError::NotEmpty(dir));
        }
    }
    let dest = data_dir.join("state.db");
    std::fs::write(&dest, db).map_err(|e| RestoreError::DataDir(dir.clone(), e))?;
    let revision = crate::mvcc::read_revisions(&dest)
        .map_err(|e| RestoreError::Database(e.to_string()))?
        .current;
    crate::mvcc::clear_raft_meta(&dest, true).map_err(|e| RestoreError::Database(e.to_string()))?;
    Ok(revision)
}
