//! `netsy migrate --from-etcd URL`: copies every key of a live etcd, at one revision,
//! into a new netsy cluster's archive. Keys keep their create/mod revisions, versions
//! and leases (with their granted TTLs), and the store revision continues from the
//! source's, so Kubernetes resourceVersions never go backwards. The result is epoch 1's
//! base snapshot; netsy nodes started with empty data directories restore from it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tonic::transport::{Channel, Endpoint};

use crate::archive::bootstrap::{self, BootstrapError};
use crate::archive::manifest::{self, ManifestError};
use crate::mvcc::{MvccError, Store};
use crate::proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseLeasesRequest, LeaseTimeToLiveRequest, RangeRequest,
};

/// Keys fetched per Range page.
const PAGE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot reach etcd at {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("etcd {call}: {status}")]
    Etcd { call: &'static str, status: Box<tonic::Status> },
    #[error("object storage already holds cluster {cluster:?} at epoch {epoch}; migrate into an empty cluster (a new `storage.key_prefix` or bucket)")]
    NotEmpty { cluster: String, epoch: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("local database: {0}")]
    Database(#[from] MvccError),
    #[error("local database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn etcd(call: &'static str) -> impl Fn(tonic::Status) -> MigrateError {
    move |status| MigrateError::Etcd {
        call,
        status: Box::new(status),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub revision: i64,
    pub keys: u64,
    pub leases: usize,
    pub epoch: u64,
}

pub async fn connect(url: &str) -> Result<Channel, MigrateError> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let err = |source| MigrateError::Connect { url: url.clone(), source };
    Endpoint::from_shared(url.clone())
        .map_err(err)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(err)
}

/// Copies etcd's keys at its current revision into a new archive for `cluster_id`,
/// building the database in `scratch`.
pub async fn from_etcd(
    channel: Channel,
    store: &Arc<dyn ObjectStore>,
    cluster_id: &str,
    scratch: &Path,
) -> Result<MigrateReport, MigrateError> {
    if let Some(m) = manifest::read_cluster(store.as_ref(), cluster_id).await? {
        return Err(MigrateError::NotEmpty {
            cluster: m.value.cluster_id,
            epoch: m.value.epoch,
        });
    }
    let mut kv = KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
    let mut lease = LeaseClient::new(channel);

    // Pin the revision: every page is read at it, so the copy is one consistent cut.
    let head = kv
        .range(RangeRequest {
            key: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .map_err(etcd("Range"))?
        .into_inner();
    let revision = head.header.map_or(0, |h| h.revision);
    tracing::info!(revision, "migrate: copying etcd at this revision");

    // Leases that exist now, with their granted TTLs.
    let ids = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .map_err(etcd("LeaseLeases"))?
        .into_inner()
        .leases;
    let mut leases = Vec::new();
    for l in ids {
        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: false })
            .await
            .map_err(etcd("LeaseTimeToLive"))?
            .into_inner();
        if ttl.ttl > 0 {
            leases.push((l.id, ttl.granted_ttl));
        }
    }

    std::fs::create_dir_all(scratch).map_err(|source| MigrateError::Io {
        path: scratch.display().to_string(),
        source,
    })?;
    let db = scratch.join(format!("migrate-{}.db", rand::random::<u32>()));
    let result = copy_keys(&mut kv, &db, revision, &leases).await;
    let replay = crate::raft::state_machine::archive_replay();
    let outcome = match result {
        Ok(keys) => bootstrap::open_epoch(store, cluster_id, None, &db, None, scratch, &replay)
            .await
            .map(|epoch| MigrateReport {
                revision,
                keys,
                leases: leases.len(),
                epoch,
            })
            .map_err(MigrateError::from),
        Err(e) => Err(e),
    };
    crate::mvcc::remove_database(&db);
    outcome
}

async fn copy_keys(kv: &mut KvClient<Channel>, db: &Path, revision: i64, leases: &[(i64, i64)]) -> Result<u64, MigrateError> {
    let store = Store::open(db)?;
    drop(store);
    let mut conn = rusqlite::Connection::open(db)?;
    crate::mvcc::import::begin(&conn, revision)?;
    crate::mvcc::import::leases(&mut conn, leases)?;
    let live: std::collections::HashSet<i64> = leases.iter().map(|l| l.0).collect();
    let mut from = vec![0u8];
    let mut copied = 0u64;
    loop {
        let page = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: vec![0],
                revision,
                limit: PAGE,
                ..Default::default()
            })
            .await
            .map_err(etcd("Range"))?
            .into_inner();
        let mut kvs = page.kvs;
        // A key whose lease expired since the lease list was read keeps no lease; etcd
        // deletes it soon anyway, and netsy must not reference a missing lease.
        for k in &mut kvs {
            if k.lease != 0 && !live.contains(&k.lease) {
                k.lease = 0;
            }
        }
        crate::mvcc::import::keys(&mut conn, &kvs, revision)?;
        copied += kvs.len() as u64;
        if copied.is_multiple_of(100 * PAGE as u64) {
            tracing::info!(keys = copied, "migrate: progress");
        }
        match kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    tracing::info!(keys = copied, leases = leases.len(), revision, "migrate: copied");
    Ok(copied)
}
