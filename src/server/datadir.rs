//! The data directory: its lock, `node.json` (this node's identity), what it holds at
//! start, and the checks and repairs made before the stores are opened.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StartError;
use crate::archive::bootstrap::Local;
use crate::archive::manifest::Member;
use crate::raft;

/// The format of `node.json` this netsy writes (netsy 0.1 wrote none: 1).
pub(super) const IDENTITY_FORMAT: u32 = 1;

/// Identity of this node, kept in `node.json` in the data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    #[serde(default = "first_format")]
    pub format_version: u32,
    /// etcd member id, stable for the node's name (see `archive::manifest`).
    pub member_id: u64,
    /// Raft node id of this incarnation.
    pub raft_id: u64,
    /// The archive epoch the data directory's Raft log belongs to.
    #[serde(default = "first_epoch")]
    pub epoch: u64,
}

fn first_epoch() -> u64 {
    1
}

fn first_format() -> u32 {
    1
}

fn data_dir_error(path: &Path, msg: impl std::fmt::Display) -> StartError {
    StartError::DataDir {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Creates the data directory, checks it is writable and takes its lock.
pub(super) fn prepare_data_dir(dir: &Path) -> Result<File, StartError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| data_dir_error(dir, format!("cannot create it: {e}; set NETSY_DATA_DIR to a writable directory")))?;
    let lock_path = dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| data_dir_error(dir, format!("is not writable: {e}; set NETSY_DATA_DIR to a writable directory")))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(data_dir_error(dir, format!("cannot lock LOCK: {e}"))),
    }
}

/// `node.json` in `dir`: `None` when there is none; an error naming the data directory when
/// it cannot be read, is corrupt or was written by a newer netsy.
pub fn load_identity(dir: &Path) -> Result<Option<NodeIdentity>, StartError> {
    match std::fs::read(dir.join("node.json")) {
        Ok(raw) => {
            let identity: NodeIdentity =
                serde_json::from_slice(&raw).map_err(|e| data_dir_error(dir, format!("node.json is corrupt: {e}")))?;
            if identity.format_version > IDENTITY_FORMAT {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "node.json is in format {}, newer than this netsy reads (up to {IDENTITY_FORMAT}); run a netsy at least as new as the one that wrote it",
                        identity.format_version
                    ),
                ));
            }
            Ok(Some(identity))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(data_dir_error(dir, format!("cannot read node.json: {e}"))),
    }
}

pub(super) fn save_identity(dir: &Path, identity: &NodeIdentity) -> Result<(), StartError> {
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| data_dir_error(dir, e))?;
    crate::fsutil::write_durably(&dir.join("node.json"), &bytes).map_err(|e| data_dir_error(dir, e))
}

/// Moves everything in the data directory but its lock into `stale-epoch-{epoch}` (kept
/// for inspection; replaced if it exists). Returns that directory.
pub(super) fn set_aside(dir: &Path, epoch: u64) -> Result<PathBuf, StartError> {
    let aside = dir.join(format!("stale-epoch-{epoch}"));
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(|e| data_dir_error(dir, format!("cannot remove {}: {e}", aside.display())))?;
    }
    std::fs::create_dir_all(&aside).map_err(|e| data_dir_error(dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| data_dir_error(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| data_dir_error(dir, e))?;
        let name = entry.file_name();
        if name == "LOCK" || name.to_string_lossy().starts_with("stale-epoch-") {
            continue;
        }
        std::fs::rename(entry.path(), aside.join(&name))
            .map_err(|e| data_dir_error(dir, format!("cannot move {} aside: {e}", entry.path().display())))?;
    }
    Ok(aside)
}

/// Rebuilds the state database if the OS restarted since it was last opened (its commits
/// do not sync; see `mvcc::boot`), then records this boot as the one it is opened in.
pub(super) fn check_state_survived(dir: &Path, state_path: &Path, snapshot_dir: &Path, log_is_whole: bool) -> Result<(), StartError> {
    use crate::mvcc::boot;
    let marker = dir.join("state.boot");
    let current = boot::current_boot();
    if state_path.exists() {
        let trust = boot::check(&marker, current.as_deref()).map_err(|e| data_dir_error(dir, format!("cannot read state.boot: {e}")))?;
        if let boot::Trust::LostPageCache { recorded } = trust {
            let rebuilt = raft::state_machine::rebuild_state(state_path, snapshot_dir, log_is_whole).map_err(|e| data_dir_error(dir, e))?;
            tracing::warn!(
                recorded_boot = %recorded,
                ?rebuilt,
                "the OS restarted since the state database was last opened, so its unsynced writes may be lost: \
                 rebuilt it from the local snapshot and the Raft log (re-applied once a leader is known)"
            );
        }
    }
    boot::record(&marker, current.as_deref()).map_err(|e| data_dir_error(dir, format!("cannot write state.boot: {e}")))
}

/// After a clean shutdown (Raft stopped, nothing applies any more): fsyncs the state
/// database and marks it sealed, so that it is trusted after a reboot or on another
/// machine (see `mvcc::boot`). A failure only costs a rebuild at the next start.
pub(super) fn seal_state(dir: &Path, store: &std::sync::Mutex<crate::mvcc::Store>) {
    let synced = match store.lock() {
        Ok(mut store) => store.checkpoint(),
        Err(_) => {
            tracing::warn!("the state database lock is poisoned: not sealing it");
            return;
        }
    };
    let sealed = synced
        .map_err(|e| crate::error_chain(&e))
        .and_then(|()| crate::mvcc::boot::seal(&dir.join("state.boot")).map_err(|e| format!("cannot write state.boot: {e}")));
    match sealed {
        Ok(()) => tracing::info!("state database synced and sealed"),
        Err(e) => tracing::warn!(error = %e, "could not seal the state database: the next start in another boot rebuilds it"),
    }
}

/// What the data directory holds (see `archive::bootstrap`).
pub(super) fn local_state(dir: &Path, identity: Option<&NodeIdentity>) -> Result<Local, StartError> {
    let state = dir.join("state.db").exists();
    let log = raft::wal::exists_in(dir);
    match (state, log, identity) {
        (false, false, _) => Ok(Local::Empty),
        (true, false, _) => Ok(Local::Seeded),
        (true, true, Some(id)) => Ok(Local::Full {
            epoch: id.epoch,
            member: Member {
                member_id: id.member_id,
                raft_id: id.raft_id,
            },
        }),
        _ => Err(data_dir_error(
            dir,
            "is incomplete (a Raft log without its state database or node.json); empty it to rebuild this node from object storage",
        )),
    }
}
