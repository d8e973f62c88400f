//! `netsy snapshot`: snapshot files written by `etcdctl snapshot save`, and the archive
//! in object storage (list, inspect, restore, export).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use netsy::archive::points::EpochPoints;
use netsy::archive::restore::{rfc3339_ms, RestoreReport, Target};
use netsy::config::Config;

use super::{report, runtime};

/// Which archived state a snapshot command works on.
#[derive(clap::Args)]
pub struct ArchivePoint {
    /// The cluster file naming the object storage (or NETSY_CONFIG).
    #[arg(long, env = "NETSY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    pub at: Selector,
}

/// A point in an archive: an epoch and an index, a time or a revision.
#[derive(clap::Args)]
pub struct Selector {
    /// The epoch (default: the current one in cluster.json; with --at or --revision, the
    /// epoch that time or revision falls in).
    #[arg(long)]
    epoch: Option<u64>,
    /// Stop at this Raft log index of the epoch (default: everything archived).
    #[arg(long, conflicts_with_all = ["at", "revision"])]
    index: Option<u64>,
    /// The state as of the last entry committed at or before this time (RFC 3339, e.g.
    /// 2026-12-01T09:00:00Z).
    #[arg(long, value_parser = parse_rfc3339_ms, conflicts_with = "revision")]
    at: Option<u64>,
    /// The state exactly at this store revision.
    #[arg(long)]
    revision: Option<i64>,
}

impl Selector {
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }
}

impl Selector {
    pub fn target(&self) -> Target {
        match (self.index, self.at, self.revision) {
            (Some(i), _, _) => Target::Index(i),
            (_, Some(ms), _) => Target::Time(ms),
            (_, _, Some(r)) => Target::Revision(r),
            _ => Target::Latest,
        }
    }
}

/// An RFC 3339 time as ms since the Unix epoch.
fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-12-01T09:00:00Z: {e}"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{text:?} is before 1970"))
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
    /// The points the archive can restore to, per epoch: the oldest and newest (index,
    /// commit time, revision), the gaps between, and every snapshot.
    Points {
        #[arg(long, env = "NETSY_CONFIG")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also find the revision at each epoch's newest entry, by replaying the entries
        /// after its newest snapshot into a scratch database (downloads that snapshot).
        #[arg(long)]
        exact: bool,
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
    /// (FILE), or from the archive (--config; a snapshot plus later segments, up to
    /// --index, --at or --revision). `netsy serve` over it starts the cluster's next
    /// epoch from that state.
    Restore {
        file: Option<PathBuf>,
        #[command(flatten)]
        point: ArchivePoint,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Write the archived state (up to --index, --at or --revision) as a snapshot file, in the format
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
        SnapshotCmd::List { config, .. } | SnapshotCmd::Points { config, .. } => Some(config.clone()),
        SnapshotCmd::Inspect { point, .. } | SnapshotCmd::Restore { point, .. } | SnapshotCmd::Export { point, .. } => point.config.clone(),
    };
    let config_path = config_path.ok_or("give a snapshot FILE, or --config FILE (or NETSY_CONFIG) to work on the archive")?;
    let config = Config::load_cluster(&config_path).map_err(|e| netsy::error_chain(&e))?;
    let scratch = std::env::temp_dir();
    let cluster = config.cluster_id.clone();
    let result: Result<String, admin::AdminError> = runtime()?.block_on(async {
        let store = netsy::archive::open(&config.storage).await?;
        let stored = netsy::archive::store::build_stored(&config.storage)?;
        let (store, stored) = (store.as_ref(), stored.as_ref());
        match command {
            SnapshotCmd::List { json, .. } => {
                let listing = admin::list(store, stored, &cluster).await?;
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
                    for (i, s) in e.snapshots.iter().enumerate() {
                        let key = match e.snapshot_key_ids.get(i) {
                            Some(Some(id)) => format!("  key {id}"),
                            _ => String::new(),
                        };
                        out += &format!(
                            "  snapshot index {:>10}  revision {:>10}  compacted {:>10}  db {:>12} bytes  created {}{key}\n",
                            s.index, s.revision, s.compact_revision, s.db_bytes, s.created_unix
                        );
                    }
                }
                Ok(out)
            }
            SnapshotCmd::Points { json, exact, .. } => {
                let replay = archive_replay();
                let exact = exact.then_some((scratch.as_path(), &replay));
                let points = netsy::archive::points::points(store, exact).await?;
                if json {
                    return Ok(serde_json::to_string_pretty(&points).unwrap_or_default());
                }
                Ok(points_table(&points))
            }
            SnapshotCmd::Inspect { point, verify } => {
                let epoch = admin::current_epoch(store, &cluster, point.at.epoch).await?;
                let inspection = admin::inspect(store, stored, epoch, point.at.index, verify, &scratch).await?;
                Ok(serde_json::to_string_pretty(&inspection).unwrap_or_default())
            }
            SnapshotCmd::Restore { point, data_dir, .. } => {
                let target = point.at.target();
                let epoch = admin::epoch_of(store, &cluster, point.at.epoch, target).await?;
                let r = admin::restore_into(store, epoch, target, &data_dir, &archive_replay()).await?;
                Ok(format!("restored {} into {}", describe(epoch, &r), data_dir.display()))
            }
            SnapshotCmd::Export { point, output } => {
                let target = point.at.target();
                let epoch = admin::epoch_of(store, &cluster, point.at.epoch, target).await?;
                let r = admin::export(store, epoch, target, &output, &scratch, &archive_replay()).await?;
                Ok(format!("exported {} to {}", describe(epoch, &r), output.display()))
            }
        }
    });
    result.map_err(|e| netsy::error_chain(&e))
}

/// What a restore or export reached.
pub fn describe(epoch: u64, r: &RestoreReport) -> String {
    let time = if r.commit_unix_ms > 0 {
        format!(", committed {}", rfc3339_ms(r.commit_unix_ms))
    } else {
        String::new()
    };
    format!("epoch {epoch} through index {} (revision {}{time})", r.last_index, r.revision)
}

/// `netsy snapshot points` as text.
fn points_table(points: &[EpochPoints]) -> String {
    if points.is_empty() {
        return "the archive holds nothing to restore from\n".into();
    }
    let point = |p: &netsy::archive::points::Point| {
        format!(
            "index {:>10}  revision {:>10}  {}",
            p.index,
            p.revision.map_or("?".to_string(), |r| r.to_string()),
            p.time.as_deref().unwrap_or("(before the first entry)")
        )
    };
    let mut out = String::new();
    for e in points {
        out += &format!("epoch {}\n  from  {}\n  to    {}\n", e.epoch, point(&e.first), point(&e.last));
        for g in &e.gaps {
            out += &format!(
                "  gap   entries {}..={} cannot be restored to (no snapshot before them reaches them)\n",
                g.from, g.to
            );
        }
        for s in &e.snapshots {
            out += &format!("  snapshot {}\n", point(s));
        }
    }
    if points.iter().any(|e| e.last.revision.is_none()) {
        out += "(? : the revision at the newest entry is known after replaying the entries after the newest snapshot: add --exact)\n";
    }
    out
}
