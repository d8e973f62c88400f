//! The epoch fence. When every pod restarted empty, the cluster was rebuilt from object
//! storage under a new epoch (`bootstrap`); a node that was cut off meanwhile still runs
//! the old epoch's Raft group, which is no longer the cluster. It must stop serving, and
//! a restart rejoins the new epoch.

use std::time::Duration;

use object_store::ObjectStore;

/// How often a node checks that `cluster.json` still names its epoch.
const EPOCH_CHECK: Duration = Duration::from_secs(5);

/// Returns the newer epoch once `cluster.json` names one newer than `own`. Read errors
/// are retried (object storage may be briefly unreachable).
pub async fn newer_epoch(store: &dyn ObjectStore, cluster_id: &str, own: u64) -> u64 {
    loop {
        tokio::time::sleep(EPOCH_CHECK).await;
        match super::manifest::read_cluster(store, cluster_id).await {
            Ok(Some(m)) if m.value.epoch > own => return m.value.epoch,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %crate::error_chain(&e), "cannot read cluster.json for the epoch check"),
        }
    }
}
