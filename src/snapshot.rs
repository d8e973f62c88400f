//! `netsy snapshot restore`: turns a file written by `etcdctl snapshot save` against netsy
//! (a SQLite database followed by its SHA-256) into the data directory of a new
//! single-member cluster that keeps every key, revision and lease.

use std::io::{Read, Write};
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
    Database(#[from] crate::mvcc::MvccError),
}

/// Verifies `file` and writes `data_dir/state.db`, dropping the source's Raft bookkeeping
/// so the restored node starts a fresh one-member Raft group over the same data. The
/// database is streamed (hashed while it is copied), so a large snapshot is never held in
/// memory.
pub fn restore(file: &Path, data_dir: &Path) -> Result<i64, RestoreError> {
    let read_err = |e| RestoreError::Read(file.display().to_string(), e);
    let mut src = std::fs::File::open(file).map_err(read_err)?;
    let len = src.metadata().map_err(read_err)?.len();
    if len < 32 + 512 {
        return Err(RestoreError::TooShort);
    }
    let dir = data_dir.display().to_string();
    std::fs::create_dir_all(data_dir).map_err(|e| RestoreError::DataDir(dir.clone(), e))?;
    let holds_data = ["state.db", "node.json"].iter().any(|f| data_dir.join(f).exists()) || crate::raft::wal::exists_in(data_dir);
    if holds_data {
        return Err(RestoreError::NotEmpty(dir));
    }
    let dest = data_dir.join("state.db");
    let verified = copy_hashed(&mut src, len - 32, &dest)
        .map_err(|e| RestoreError::DataDir(dir.clone(), e))
        .and_then(|digest| {
            let mut trailer = [0u8; 32];
            src.read_exact(&mut trailer).map_err(read_err)?;
            if digest.as_slice() == trailer {
                Ok(())
            } else {
                Err(RestoreError::Checksum)
            }
        });
    if let Err(e) = verified {
        let _ = std::fs::remove_file(&dest);
        return Err(e);
    }
    let revision = crate::mvcc::read_revisions(&dest)?.current;
    crate::mvcc::clear_raft_meta(&dest, true)?;
    Ok(revision)
}

/// Copies the first `n` bytes of `src` to a new file `dest` and returns their SHA-256.
fn copy_hashed(src: &mut std::fs::File, n: u64, dest: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = std::fs::File::create(dest)?;
    let mut hasher = Sha256::new();
    let mut limited = src.take(n);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let read = limited.read(&mut buf)?;
        if read == 0 {
            break;
        }
        hasher.update(&buf[..read]);
        out.write_all(&buf[..read])?;
    }
    out.sync_all()?;
    Ok(hasher.finalize().to_vec())
}
