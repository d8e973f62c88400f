//! Operator commands over the archive (`netsy snapshot list | inspect | restore |
//! export`): they read object storage only, never a running node.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use object_store::ObjectStore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::log::Replay;
use super::manifest::{self, ClusterManifest, ManifestError};
use super::restore::{self, RestoreError, RestoreReport, Target};
use super::segment;
use super::snapshot::{self, SnapshotError, SnapshotHeader};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Open(#[from] super::store::StoreError),
    #[error("object storage holds no cluster.json for cluster {0:?}: nothing was archived yet (or check `storage` and `cluster_id`)")]
    NoCluster(String),
    #[error("{0}")]
    Target(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{object}: {source}")]
    Verify { object: String, source: rusqlite::Error },
    #[error("the clone needs its own cluster_id: both configs name {0:?} (members and client certificates are bound to it)")]
    SameCluster(String),
    #[error("the clone's object storage already holds cluster {cluster:?} at epoch {epoch}; clone into an empty bucket or key prefix")]
    NotEmpty { cluster: String, epoch: u64 },
    #[error(transparent)]
    Bootstrap(#[from] super::bootstrap::BootstrapError),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AdminError + '_ {
    move |source| AdminError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Serialize)]
pub struct EpochListing {
    pub epoch: u64,
    pub snapshots: Vec<SnapshotHeader>,
    pub segments: usize,
    pub segment_bytes: u64,
    /// First and last entry held in segments.
    pub segment_range: Option<(u64, u64)>,
    /// The key id that wrapped each snapshot's data key (`None`: not encrypted), in the
    /// order of `snapshots`.
    pub snapshot_key_ids: Vec<Option<String>>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub cluster: Option<ClusterManifest>,
    pub epochs: Vec<EpochListing>,
}

/// Every epoch in the archive with its snapshots (headers) and segments. `stored` is the
/// same archive without the encryption layer (`store::build_stored`), read for the key
/// ids in the objects' headers.
pub async fn list(store: &dyn ObjectStore, stored: &dyn ObjectStore, cluster_id: &str) -> Result<Listing, AdminError> {
    let cluster = manifest::read_cluster(store, cluster_id).await?.map(|v| v.value);
    let mut epochs = Vec::new();
    for epoch in super::points::epochs(store).await? {
        let mut snapshots = Vec::new();
        let mut snapshot_key_ids = Vec::new();
        for (name, _) in snapshot::list(store, epoch).await? {
            snapshots.push(snapshot::fetch_header(store, &name).await?);
            snapshot_key_ids.push(super::encrypt::key_id_of(stored, &name.path()).await?);
        }
        let segs = segment::list(store, epoch).await?;
        epochs.push(EpochListing {
            epoch,
            snapshots,
            segments: segs.len(),
            segment_bytes: segs.iter().map(|(_, s)| s).sum(),
            segment_range: segs.first().zip(segs.last()).map(|(a, b)| (a.0.first, b.0.last)),
            snapshot_key_ids,
        });
    }
    Ok(Listing { cluster, epochs })
}

/// The epoch to work on: the given one, else the current one from `cluster.json`.
pub async fn current_epoch(store: &dyn ObjectStore, cluster_id: &str, epoch: Option<u64>) -> Result<u64, AdminError> {
    match epoch {
        Some(e) => Ok(e),
        None => Ok(manifest::read_cluster(store, cluster_id)
            .await?
            .ok_or_else(|| AdminError::NoCluster(cluster_id.into()))?
            .value
            .epoch),
    }
}

/// The epoch a restore to `target` works on: the given one; else, for a time or a
/// revision, the epoch it falls in; else the current one.
pub async fn epoch_of(store: &dyn ObjectStore, cluster_id: &str, epoch: Option<u64>, target: Target) -> Result<u64, AdminError> {
    match (epoch, target) {
        (None, Target::Time(_) | Target::Revision(_)) => Ok(super::points::epoch_for(store, target).await?),
        _ => current_epoch(store, cluster_id, epoch).await,
    }
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub object: String,
    pub bytes: u64,
    pub header: SnapshotHeader,
    /// The key id that wrapped the snapshot's data key; absent when it is not encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// With `verify`: the live keys in the downloaded, checksum-verified database.
    pub keys: Option<i64>,
}

/// Describes snapshot `index` of `epoch` (default: the newest); with `verify`, downloads
/// it into `scratch` and checks it end to end. `stored`: as for `list`.
pub async fn inspect(
    store: &dyn ObjectStore,
    stored: &dyn ObjectStore,
    epoch: u64,
    index: Option<u64>,
    verify: bool,
    scratch: &Path,
) -> Result<Inspection, AdminError> {
    let all = snapshot::list(store, epoch).await?;
    let (name, meta) = match index {
        Some(i) => all.into_iter().find(|(n, _)| n.index == i),
        None => all.into_iter().last(),
    }
    .ok_or_else(|| AdminError::Target(format!("epoch {epoch} has no such snapshot (try `netsy snapshot list`)")))?;
    let header = snapshot::fetch_header(store, &name).await?;
    let key_id = super::encrypt::key_id_of(stored, &name.path()).await?;
    let keys = if verify {
        let db = scratch.join(format!("inspect-{}-{}.db", name.epoch, name.index));
        let _ = std::fs::remove_file(&db);
        snapshot::download(store, &name, &db).await?;
        let counted = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM current", [], |r| r.get(0)))
            .map_err(|source| AdminError::Verify {
                object: name.path().to_string(),
                source,
            });
        let _ = std::fs::remove_file(&db);
        Some(counted?)
    } else {
        None
    };
    Ok(Inspection {
        object: name.path().to_string(),
        bytes: meta.size,
        header,
        key_id,
        keys,
    })
}

/// Rebuilds `epoch` (up to `target`) into `data_dir/state.db`, an empty data
/// directory, applying entries through `replay`; `netsy serve` over it opens the
/// cluster's next epoch from that state.
pub async fn restore_into(
    store: &dyn ObjectStore,
    epoch: u64,
    target: Target,
    data_dir: &Path,
    replay: &Arc<dyn Replay>,
) -> Result<RestoreReport, AdminError> {
    std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
    // The Raft log: `raft/`, or the `raft.db` of netsy 0.1 and 0.2.
    for existing in ["state.db", "raft", "raft.db", "node.json"] {
        if data_dir.join(existing).exists() {
            return Err(AdminError::Target(format!(
                "{} already holds {existing}; restore into an empty directory",
                data_dir.display()
            )));
        }
    }
    Ok(restore::restore(store, epoch, &data_dir.join("state.db"), target, replay).await?)
}

#[derive(Debug, Serialize)]
pub struct CloneReport {
    /// The source epoch the state came from, and how far it reached.
    pub source_epoch: u64,
    pub restored: RestoreReport,
    /// The clone's epoch (1).
    pub epoch: u64,
}

/// Builds a new, independent cluster `dest_cluster` in `dest` from `source`'s archive as
/// of `target` (in `epoch`, or the epoch `target` falls in, or the current one): the
/// state is rebuilt in `scratch` and becomes the clone's epoch 1 (its snapshot 0 and
/// `cluster.json`), revisions as the source had them. The source is read through a
/// `ReadOnlyStore`: nothing here can write to it or delete from it. Nodes started with
/// empty data directories over the clone's config restore from it.
#[allow(clippy::too_many_arguments)]
pub async fn clone_into(
    source: Arc<dyn ObjectStore>,
    source_cluster: &str,
    epoch: Option<u64>,
    target: Target,
    dest: &Arc<dyn ObjectStore>,
    dest_cluster: &str,
    scratch: &Path,
    replay: &Arc<dyn Replay>,
) -> Result<CloneReport, AdminError> {
    if source_cluster == dest_cluster {
        return Err(AdminError::SameCluster(dest_cluster.into()));
    }
    let source = super::store::ReadOnlyStore::new(source);
    if let Some(m) = manifest::read_cluster(dest.as_ref(), dest_cluster).await? {
        return Err(AdminError::NotEmpty {
            cluster: m.value.cluster_id,
            epoch: m.value.epoch,
        });
    }
    let source_epoch = epoch_of(&source, source_cluster, epoch, target).await?;
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let db = scratch.join(format!("clone-{}.db", rand::random::<u32>()));
    tracing::info!(source_epoch, %target, "clone: rebuilding the source's state");
    let result = async {
        let restored = restore::restore(&source, source_epoch, &db, target, replay).await?;
        let epoch = super::bootstrap::open_epoch(dest, dest_cluster, None, &db, None, scratch, replay).await?;
        Ok(CloneReport {
            source_epoch,
            restored,
            epoch,
        })
    }
    .await;
    crate::mvcc::remove_database(&db);
    result
}

/// Rebuilds `epoch` (up to `target`) and writes it to `output` as a snapshot file in
/// the format `etcdctl snapshot save` gets from netsy (the database and its SHA-256),
/// which `netsy snapshot restore FILE` reads. Entries are applied through `replay`.
pub async fn export(
    store: &dyn ObjectStore,
    epoch: u64,
    target: Target,
    output: &Path,
    scratch: &Path,
    replay: &Arc<dyn Replay>,
) -> Result<RestoreReport, AdminError> {
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let db = scratch.join(format!("export-{}.db", rand::random::<u32>()));
    let report = restore::restore(store, epoch, &db, target, replay).await?;
    let written = (|| -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
        let mut hasher = Sha256::new();
        let mut src = std::io::BufReader::new(std::fs::File::open(&db)?);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut src, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.write_all(&hasher.finalize())?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    let _ = std::fs::remove_file(&db);
    written.map_err(io_err(output))?;
    Ok(report)
}
