//! `netsy migrate`: copy a live etcd into a new cluster's object storage.

use std::path::Path;
use std::process::ExitCode;

use netsy::config::Config;

use super::{report, runtime};

/// `netsy migrate --from-etcd URL --config FILE`.
pub fn run(url: &str, config_path: &Path) -> ExitCode {
    report((|| {
        let config = Config::load_cluster(config_path).map_err(|e| netsy::error_chain(&e))?;
        let r = runtime()?.block_on(async {
            let store = netsy::archive::open(&config.storage).await.map_err(|e| netsy::error_chain(&e))?;
            let channel = netsy::migrate::connect(url).await.map_err(|e| netsy::error_chain(&e))?;
            netsy::migrate::from_etcd(channel, &store, &config.cluster_id, &std::env::temp_dir())
                .await
                .map_err(|e| format!("migrate failed: {}", netsy::error_chain(&e)))
        })?;
        Ok(format!(
            "migrated {} keys and {} leases at revision {} into cluster {} (epoch {}); start its nodes with empty data directories",
            r.keys, r.leases, r.revision, config.cluster_id, r.epoch
        ))
    })())
}
