//! `netsy clone`: a new cluster from another cluster's archive, as of a point in time.

use std::path::Path;
use std::process::ExitCode;

use super::snapshot::{describe, Selector};
use super::{report, runtime};

/// `netsy clone --from-config SRC [--at … | --revision … | --index …] --to-config DST`.
pub fn run(from: &Path, at: &Selector, to: &Path) -> ExitCode {
    report((|| {
        let load = |p: &Path| netsy::config::Config::load_cluster(p).map_err(|e| format!("{}: {}", p.display(), netsy::error_chain(&e)));
        let (source, dest) = (load(from)?, load(to)?);
        let r = runtime()?.block_on(async {
            let open = |c: &netsy::config::ClusterFile, which: &'static str| {
                let storage = c.storage.clone();
                async move {
                    netsy::archive::open(&storage)
                        .await
                        .map_err(|e| format!("the {which}'s storage: {}", netsy::error_chain(&e)))
                }
            };
            let (source_store, dest_store) = (open(&source, "source").await?, open(&dest, "destination").await?);
            netsy::archive::admin::clone_into(
                source_store,
                &source.cluster_id,
                at.epoch(),
                at.target(),
                &dest_store,
                &dest.cluster_id,
                &std::env::temp_dir(),
                &netsy::raft::state_machine::archive_replay(),
            )
            .await
            .map_err(|e| format!("clone failed: {}", netsy::error_chain(&e)))
        })?;
        Ok(format!(
            "cloned cluster {} {} into cluster {} (epoch {}); start its nodes with empty data directories (helm install with its config)",
            source.cluster_id,
            describe(r.source_epoch, &r.restored),
            dest.cluster_id,
            r.epoch
        ))
    })())
}
