//! Startup against the archive: decides, from the data directory and `cluster.json`,
//! whether this node resumes, starts a new cluster, or rebuilds from object storage, and
//! registers it in `members.json` and `nodes/`.
//!
//! | data directory                 | `cluster.json` | what happens                          |
//! |--------------------------------|----------------|---------------------------------------|
//! | state + Raft log (epoch L)     | epoch L        | resume                                |
//! | state + Raft log (epoch L)     | absent         | resume; create it with epoch L        |
//! | state + Raft log (epoch L)     | epoch E ≠ L    | refuse: the cluster moved on          |
//! | empty                          | absent         | new cluster, epoch 1 (this node opens it) |
//! | empty                          | epoch E, a member answers | join the running cluster   |
//! | empty                          | epoch E, nobody answers   | restore E, then open epoch E+1 |
//! | seeded state, no Raft log      | any            | open the next epoch from the state    |
//!
//! Opening an epoch uploads the state as the epoch's base snapshot (index 0) and only
//! then moves `cluster.json` to it with a conditional put, so the epoch named there is
//! always restorable, and of two nodes racing to open one, exactly one wins; it forms the
//! epoch's Raft cluster alone (`Mode::Found`) and the others join it (`Mode::Join`).
//!
//! "Nobody answers" means: no node named in `cluster.json` (the epoch's opener) or in a
//! `nodes/` record of that epoch reports a Raft leader within `cluster.discovery_timeout`.
//! That is a full restart (every pod lost its disk): the archive alone brings the
//! cluster back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;

use super::log::Replay;
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
    Database(#[from] crate::mvcc::MvccError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("startup task: {0}")]
    Task(#[from] tokio::task::JoinError),
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

/// How this node's Raft starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The Raft log holds the membership already.
    Resume,
    /// This node opened the epoch: it forms the Raft cluster alone; others join.
    Found,
    /// Join the running cluster through one of these (peer URL, node id).
    Join { via: Vec<(String, String)> },
}

#[derive(Debug)]
pub struct Startup {
    pub epoch: u64,
    pub member: Member,
    /// A restore's report and the database it built (to be moved into place).
    pub restored: Option<(RestoreReport, PathBuf)>,
    pub mode: Mode,
}

/// Asks a node whether it is a live member of `epoch` (it knows a Raft leader).
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    async fn is_live(&self, peer_url: &str, node_id: &str, epoch: u64) -> bool;
}

/// The nodes that may be running `epoch`: its opener and every node record of it.
async fn candidates(store: &dyn ObjectStore, m: &ClusterManifest, me: &str) -> Result<Vec<(String, String)>, BootstrapError> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(o) = &m.opener {
        out.push((o.peer_url.clone(), o.node_id.clone()));
    }
    for r in manifest::list_nodes(store).await? {
        if r.epoch == m.epoch && !out.iter().any(|(_, n)| *n == r.node_id) {
            out.push((r.peer_url, r.node_id));
        }
    }
    out.retain(|(_, n)| n != me);
    Ok(out)
}

/// Polls `candidates` until one is live or `timeout` passes.
async fn find_live(probe: &dyn Probe, candidates: &[(String, String)], epoch: u64, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let checks = candidates.iter().map(|(url, name)| probe.is_live(url, name, epoch));
        if futures::future::join_all(checks).await.into_iter().any(|live| live) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Decides how this node starts (see the module documentation) and registers it.
/// `probe` asks other nodes whether they run the current epoch; `replay` applies
/// archived entries and reads a state's Raft bookkeeping (the Raft layer's).
pub async fn prepare(
    store: &Arc<dyn ObjectStore>,
    cfg: &Config,
    local: Local,
    state_db: &Path,
    scratch: &Path,
    probe: &dyn Probe,
    replay: &Arc<dyn Replay>,
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
                mode: Mode::Resume,
            }
        }
        Local::Seeded => {
            tracing::warn!("the data directory holds a seeded state without a Raft log; it becomes the next epoch of the cluster");
            let epoch = open_epoch(store, cluster_id, Some(cfg), state_db, found.as_ref(), scratch, replay).await?;
            let member = manifest::register_member(store.as_ref(), cluster_id, &cfg.node_id, None).await?;
            Startup {
                epoch,
                member,
                restored: None,
                mode: Mode::Found,
            }
        }
        Local::Empty => {
            let member = manifest::register_member(store.as_ref(), cluster_id, &cfg.node_id, None).await?;
            let mut found = found;
            loop {
                let Some(m) = found else {
                    let fresh = ClusterManifest::new(cluster_id, 1).opened_by(&cfg.node_id, &cfg.advertise_peer);
                    if manifest::write_cluster(store.as_ref(), &fresh, None).await? {
                        tracing::info!(cluster_id, "new cluster: created cluster.json at epoch 1");
                        break Startup {
                            epoch: 1,
                            member,
                            restored: None,
                            mode: Mode::Found,
                        };
                    }
                    found = manifest::read_cluster(store.as_ref(), cluster_id).await?;
                    continue;
                };
                let epoch = m.value.epoch;
                let via = candidates(store.as_ref(), &m.value, &cfg.node_id).await?;
                if !via.is_empty() {
                    tracing::info!(epoch, candidates = ?via, "empty data directory: looking for the running cluster");
                    if find_live(probe, &via, epoch, cfg.discovery_timeout).await {
                        tracing::info!(epoch, "found the running cluster: joining it");
                        break Startup {
                            epoch,
                            member,
                            restored: joiner_base(store.as_ref(), epoch, state_db, replay).await?,
                            mode: Mode::Join { via },
                        };
                    }
                    tracing::warn!(epoch, "no member of the cluster answers: rebuilding it from object storage");
                }
                tracing::info!(epoch, "empty data directory: restoring from object storage");
                let target = state_db.with_extension("restoring");
                crate::mvcc::remove_database(&target);
                let report = super::restore::restore(store.as_ref(), epoch, &target, super::restore::Target::Latest, replay).await?;
                match open_epoch(store, cluster_id, Some(cfg), &target, Some(&m), scratch, replay).await {
                    Ok(epoch) => {
                        break Startup {
                            epoch,
                            member,
                            restored: Some((report, target)),
                            mode: Mode::Found,
                        }
                    }
                    Err(BootstrapError::LostRace { epoch }) => {
                        tracing::info!(epoch, "another node opened the epoch first: joining it");
                        found = manifest::read_cluster(store.as_ref(), cluster_id).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let record = NodeRecord {
        format_version: super::manifest::FORMAT_VERSION,
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

/// The state a member joining `epoch` starts from: the epoch's base snapshot (index 0),
/// on which the leader's Raft log applies (or which a Raft snapshot replaces). Epoch 1
/// started empty and has no such snapshot.
async fn joiner_base(
    store: &dyn ObjectStore,
    epoch: u64,
    state_db: &Path,
    replay: &Arc<dyn Replay>,
) -> Result<Option<(RestoreReport, PathBuf)>, BootstrapError> {
    let target = state_db.with_extension("restoring");
    crate::mvcc::remove_database(&target);
    match super::restore::restore(store, epoch, &target, super::restore::Target::Index(0), replay).await {
        Ok(report) if report.snapshot_index == Some(0) => Ok(Some((report, target))),
        Ok(_) => {
            crate::mvcc::remove_database(&target);
            Ok(None)
        }
        Err(RestoreError::Before { .. }) if epoch == 1 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes the state database `db` the base of a new epoch (after `current`, or epoch 1),
/// opened by the node `opener` configures (none: an offline tool such as `migrate`):
/// forgets its Raft bookkeeping, uploads it as the epoch's snapshot 0, then moves
/// `cluster.json` to the new epoch. Returns the new epoch. `replay` reads the state's
/// (now empty) Raft bookkeeping for the snapshot's header.
pub async fn open_epoch(
    store: &Arc<dyn ObjectStore>,
    cluster_id: &str,
    opener: Option<&Config>,
    db: &Path,
    current: Option<&Versioned<ClusterManifest>>,
    scratch: &Path,
    replay: &Arc<dyn Replay>,
) -> Result<u64, BootstrapError> {
    let epoch = current.map_or(1, |m| m.value.epoch + 1);
    let db2 = db.to_path_buf();
    tokio::task::spawn_blocking(move || crate::mvcc::clear_raft_meta(&db2, false)).await??;
    std::fs::create_dir_all(scratch).map_err(|source| BootstrapError::Io {
        path: scratch.display().to_string(),
        source,
    })?;
    let header = snapshot::publish(store, db, cluster_id, epoch, scratch, replay).await?;
    let moved = manifest::write_cluster(
        store.as_ref(),
        &match opener {
            Some(cfg) => ClusterManifest::new(cluster_id, epoch).opened_by(&cfg.node_id, &cfg.advertise_peer),
            None => ClusterManifest::new(cluster_id, epoch),
        },
        current.map(|m| &m.version),
    )
    .await?;
    if !moved {
        return Err(BootstrapError::LostRace { epoch });
    }
    tracing::info!(epoch, revision = header.revision, "opened a new epoch");
    Ok(epoch)
}
