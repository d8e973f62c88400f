//! `netsy snapshot`: snapshot files written by `etcdctl snapshot save`, and the archive
//! in object storage (list, inspect, restore, export).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use netsy::config::Config;

use super::{report, runtime};

/// Which archived state a snapshot command works on.
#[derive(clap::Args)]
pub struct ArchivePoint {
    /// The cluster file naming the object storage (or NETSY_CONFIG).
    #[arg(long, env = "NETSY_CONFIG")]
    config: Option<PathBuf>,
    /// The epoch (default: the current one in cluster.json).
    #[arg(long)]
    epoch: Option<u64>,
    /// Stop at this Raft log index (default: everything archived).
    #[arg(long)]
    index: Option<u64>,
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// List the archive: epochs, snapshots (index, revision, size) and segments.
    List {
        #[arg(long, env = "NETSY_CONFIG")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one archived snapshot's header (default: the newest of the current epoch).
    Inspect {
        #[command(flatten)]
        point: ArchivePoint,
        /// Download it and verify its checksum end to end, and count its keys.
        #[arg(long)]
        verify: bool,
    },
    /// Build a data directory: from a snapshot file written by `etcdctl snapshot save`
    /// (FILE), or from the archive (--config; newest snapshot plus later segments, up to
    /// --index). `netsy serve` over it starts the cluster's next epoch from that state.
    Restore {
        file: Option<PathBuf>,
        #[command(flatten)]
        point: ArchivePoint,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Write the archived state (up to --index) as a snapshot file, in the format
    /// `etcdctl snapshot save` gets from netsy.
    Export {
        #[command(flatten)]
        point: ArchivePoint,
        #[arg(long)]
        output: PathBuf,
    },
}

pub fn run(command: SnapshotCmd) -> ExitCode {
    match command {
        SnapshotCmd::Restore {
            file: Some(file),
            data_dir,
            ..
        } => report(
            netsy::snapshot::restore(&file, &data_dir)
                .map(|rev| format!("restored {} into {} (revision {rev})", file.display(), data_dir.display()))
                .map_err(|e| format!("restore failed: {}", netsy::error_chain(&e))),
        ),
        command => report(archive_command(command)),
    }
}

/// `netsy snapshot list | inspect | restore --config | export`: the commands on the
/// archive in object storage.
fn archive_command(command: SnapshotCmd) -> Result<String, String> {
    use netsy::archive::admin;
    use netsy::raft::state_machine::archive_replay;
    let config_path = match &command {
        SnapshotCmd::List { config, .. } => Some(config.clone()),
        SnapshotCmd::Inspect { point, .. } | SnapshotCmd::Restore { point, .. } | SnapshotCmd::Export { point, .. } => point.config.clone(),
    };
    let config_path = config_path.ok_or("give a snapshot FILE, or --config FILE (or NETSY_CONFIG) to work on the archive")?;
    let config = Config::load_cluster(&config_path).map_err(|e| netsy::error_chain(&e))?;
    let store = netsy::archive::build(&config.storage).map_err(|e| netsy::error_chain(&e))?;
    let scratch = std::env::temp_dir();
    let cluster = config.cluster_id.clone();
    let result: Result<String, admin::AdminError> = runtime()?.block_on(async {
        let store = store.as_ref();
        match command {
            SnapshotCmd::List { json, .. } => {
                let listing = admin::list(store, &cluster).await?;
                if json {
                    return Ok(serde_json::to_string_pretty(&listing).unwrap_or_default());
                }
                let mut out = match &listing.cluster {
                    Some(c) => format!("cluster {} at epoch {}\n", c.cluster_id, c.epoch),
                    None => format!("no cluster.json for cluster {cluster}\n"),
                };
                for e in &listing.epochs {
                    let range = e.segment_range.map_or("none".to_string(), |(a, b)| format!("{a}..={b}"));
                    out += &format!(
                        "epoch {}: {} segments ({} bytes, entries {range})\n",
                        e.epoch, e.segments, e.segment_bytes
                    );
                    for s in &e.snapshots {
                        out += &format!(
                            "  snapshot index {:>10}  revision {:>10}  compacted {:>10}  db {:>12} bytes  created {}\n",
                            s.index, s.revision, s.compact_revision, s.db_bytes, s.created_unix
                        );
                    }
                }
                Ok(out)
            }
            SnapshotCmd::Inspect { point, verify } => {
                let epoch = admin::current_epoch(store, &cluster, point.epoch).await?;
                let inspection = admin::inspect(store, epoch, point.index, verify, &scratch).await?;
                Ok(serde_json::to_string_pretty(&inspection).unwrap_or_default())
            }
            SnapshotCmd::Restore { point, data_dir, .. } => {
                let epoch = admin::current_epoch(store, &cluster, point.epoch).await?;
                let r = admin::restore_into(store, epoch, point.index, &data_dir, &archive_replay()).await?;
                Ok(format!(
                    "restored epoch {epoch} through index {} (revision {}) into {}",
                    r.last_index,
                    r.revision,
                    data_dir.display()
                ))
            }
            SnapshotCmd::Export { point, output } => {
                let epoch = admin::current_epoch(store, &cluster, point.epoch).await?;
                let r = admin::export(store, epoch, point.index, &output, &scratch, &archive_replay()).await?;
                Ok(format!(
                    "exported epoch {epoch} through index {} (revision {}) to {}",
                    r.last_index,
                    r.revision,
                    output.display()
                ))
            }
        }
    });
    result.map_err(|e| netsy::error_chain(&e))
}
