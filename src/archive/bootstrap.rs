//! Startup against the archive: decides, from the data directory and `cluster.json`,
//! whether this node resumes, starts a new cluster, or rebuilds from object storage, and
//! registers it in `members.json` and `nodes/`.
//!
//! | data directory                 | `cluster.json` | what happens                          |
//! |--------------------------------|----------------|---------------------------------------|
//! | state + Raft log (epoch L)     | epoch L        | resume                                |
//! | state + Raft log (epoch L)     | absent         | resume; create it with epoch L        |
//! | state + Raft log (epoch L)     | epoch E ≠ L    | refuse: the cluster moved on          |
//! | empty                          | absent         | new cluster, epoch 1                  |
//! | empty                          | epoch E        | restore E, then open epoch E+1        |
//! | seeded state, no Raft log      | any            | open the next epoch from the state    |
//!
//! Opening an epoch uploads the state as the epoch's base snapshot (index 0) and only
//! then moves `cluster.json` to it with a conditional put, so the epoch named there is
//! always restorable, and of two nodes racing to open one, exactly one wins.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;

use super::manifest::{self, ClusterManifest, ManifestError, Member, NodeRecord, Versioned};
use super::restore::{RestoreError, RestoreReport};
use super::snapshot::{self, SnapshotError};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("restore from object storage failed: {0}")]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("this data directory holds epoch {local}, but object storage is at epoch {current} (the cluster was restored or rebuilt since); empty the data directory to rebuild this node from object storage")]
    StaleDataDir { local: u64, current: u64 },
    #[error("another node opened epoch {epoch} first; restart this node to rebuild from it")]
    LostRace { epoch: u64 },
    #[error("{0}")]
    Database(String),
}

/// What the data directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Empty,
    /// A state database without a Raft log (`netsy snapshot restore`, or a restore that
    /// stopped before its first start).
    Seeded,
    /// State and Raft log of `epoch`, by the node `member`.
    Full {
        epoch: u64,
        member: Member,
    },
}

#[derive(Debug)]
pub struct Startup {
    pub epoch: u64,
    pub member: Member,
    /// A restore's report and the database it built (to be moved into place).
    pub restored: Option<(RestoreReport, PathBuf)>,
}

pub async fn prepare(
    store: &Arc<dyn ObjectStore>,
    cfg: &Config,
    local: Local,
    state_db: &Path,
    scratch: &Path,
) -> Result<Startup, BootstrapError> {
    let cluster_id = cfg.cluster_id.as_str();
    let found = manifest::read_cluster(store.as_ref(), cluster_id).await?;
    let startup = match local {
        Local::Full { epoch, member } => {
            match &found {
                None => {
                    tracing::warn!(epoch, "object storage has no cluster.json; registering this data directory's epoch");
                    if !manifest::write_cluster(store.as_ref(), &ClusterManifest::new(cluster_id, epoch), None).await? {
                        return Err(BootstrapError::LostRace { epoch });
                    }
                }
                Some(m) if m.value.epoch == epoch => {}
                Some(m) => {
                    return Err(BootstrapError::StaleDataDir {
                        local: epoch,
                        current: m.value.epoch,
                    })
                }
            }
            let member = manifest::register_member(store.as_ref(), cluster_id, &cfg.node_id, Some(member)).await?;
            Startup {
                epoch,
                member,
                restored: None,
            }
        }
        Local::Seeded => {
            tracing::warn!("the data directory holds a seeded state without a Raft log; it becomes the next epoch of the cluster");
            let epoch = open_epoch(store, cluster_id, state_db, found.as_ref(), scratch).await?;
            let member = manifest::register_member(store.as_ref(), cluster_id, &cfg.node_id, None).await?;
            Startup {
                epoch,
                member,
                restored: None,
            }
        }
        Local::Empty => {
            let member = manifest::register_member(store.as_ref(), cluster_id, &cfg.node_id, None).await?;
            let current = match found {
                Some(m) => Some(m),
                None => {
                    let created = manifest::write_cluster(store.as_ref(), &ClusterManifest::new(cluster_id, 1), None).await?;
                    if created {
                        tracing::info!(cluster_id, "new cluster: created cluster.json at epoch 1");
                        None
                    } else {
                        manifest::read_cluster(store.as_ref(), cluster_id).await?
                    }
                }
            };
            match current {
                None => Startup {
                    epoch: 1,
                    member,
                    restored: None,
                },
                Some(m) => {
                    tracing::info!(epoch = m.value.epoch, "empty data directory: restoring from object storage");
                    let target = state_db.with_extension("restoring");
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
                    }
                    let report = super::restore::restore(store.as_ref(), m.value.epoch, &target, None).await?;
                    let epoch = open_epoch(store, cluster_id, &target, Some(&m), scratch).await?;
                    Startup {
                        epoch,
                        member,
                        restored: Some((report, target)),
                    }
                }
            }
        }
    };
    let record = NodeRecord {
        node_id: cfg.node_id.clone(),
        member_id: startup.member.member_id,
        raft_id: startup.member.raft_id,
        epoch: startup.epoch,
        client_url: cfg.advertise_client.clone(),
        peer_url: cfg.advertise_peer.clone(),
        started_unix: manifest::now_unix(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    manifest::publish_node(store.as_ref(), &record).await?;
    Ok(startup)
}

/// Makes the state database `db` the base of a new epoch (after `current`, or epoch 1):
/// forgets its Raft bookkeeping, uploads it as the epoch's snapshot 0, then moves
/// `cluster.json` to the new epoch. Returns the new epoch.
pub async fn open_epoch(
    store: &Arc<dyn ObjectStore>,
    cluster_id: &str,
    db: &Path,
    current: Option<&Versioned<ClusterManifest>>,
    scratch: &Path,
) -> Result<u64, BootstrapError> {
    let epoch = current.map_or(1, |m| m.value.epoch + 1);
    let db2 = db.to_path_buf();
    tokio::task::spawn_blocking(move || crate::mvcc::clear_raft_meta(&db2, false))
        .await
        .map_err(|e| BootstrapError::Database(e.to_string()))?
        .map_err(|e| BootstrapError::Database(e.to_string()))?;
    std::fs::create_dir_all(scratch).map_err(|e| BootstrapError::Database(format!("{}: {e}", scratch.display())))?;
    let header = snapshot::publish(store, db, cluster_id, epoch, scratch).await?;
    let moved = manifest::write_cluster(
        store.as_ref(),
        &ClusterManifest::new(cluster_id, epoch),
        current.map(|m| &m.version),
    )
    .await?;
    if !moved {
        return Err(BootstrapError::LostRace { epoch });
    }
    tracing::info!(epoch, revision = header.revision, "opened a new epoch");
    Ok(epoch)
}
