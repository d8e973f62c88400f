//! The `netsy-bench` command line: load-test any etcd v3 endpoint (etcd or netsy), like
//! etcd's `benchmark` tool, or run the netsy vs etcd suite behind `make bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use netsy_bench::{KeyOrder, Options, Workload};

#[derive(Parser)]
#[command(
    name = "netsy-bench",
    version,
    about = "Load-test any etcd v3 endpoint (etcd or netsy), like etcd's `benchmark` tool"
)]
struct Cli {
    /// Comma-separated endpoints (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2378", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1, global = true)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 1, global = true)]
    conns: usize,
    /// Requests in total (watch-latency: puts).
    #[arg(long, default_value_t = 10_000, global = true)]
    total: usize,
    /// Print the summary as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Debug logging.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    workload: BenchCmd,
}

/// Key and value shape of the write workloads.
#[derive(Args)]
struct KeyValueArgs {
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    #[arg(long, default_value_t = 1)]
    key_space_size: usize,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Puts of `--val-size` bytes to keys of `--key-size` bytes.
    Put {
        #[command(flatten)]
        kv: KeyValueArgs,
        #[arg(long)]
        sequential_keys: bool,
    },
    /// One Put per Txn.
    TxnPut {
        #[command(flatten)]
        kv: KeyValueArgs,
    },
    /// Range over one key, or a prefix (optionally populated first).
    Range {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// `l` (linearizable) or `s` (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Put this many keys under the prefix before measuring.
        #[arg(long, default_value_t = 0)]
        populate: usize,
        #[arg(long, default_value_t = 1024)]
        val_size: usize,
        /// Read with etcd 3.7's RangeStream instead of Range (netsy; etcd 3.5 answers
        /// Unimplemented).
        #[arg(long)]
        stream: bool,
    },
    /// kube-apiserver's four Txn shapes (create, update, delete, compaction CAS).
    TxnMixed {
        #[arg(long, default_value_t = 512)]
        val_size: usize,
    },
    /// Put-to-event latency for streams × watchers on one key.
    WatchLatency {
        #[arg(long, default_value_t = 10)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        watchers_per_stream: usize,
        #[arg(long, default_value_t = 100)]
        put_rate: usize,
        #[arg(long, default_value_t = 32)]
        val_size: usize,
    },
    /// Lease keep-alive round trips, one lease and stream per client.
    LeaseKeepalive,
    /// Only the suite's `object-storage` vs `quorum` durability rows over S3 (moto) with
    /// added latency; prints them.
    DurabilityCost {
        /// moto's S3 server.
        #[arg(long, default_value = ".venv/bin/moto_server")]
        moto_bin: PathBuf,
        #[arg(long)]
        netsy_bin: Option<PathBuf>,
        /// Puts per durability.
        #[arg(long, default_value_t = 20_000)]
        total: usize,
    },
    /// A 3-member netsy cluster loaded with KEYS × VALUE_SIZE, timed through compaction,
    /// defragmentation, snapshots, a wiped member and a restore under background load;
    /// writes scale.md / scale.json (`make bench-scale`).
    Scale {
        #[arg(long)]
        netsy_bin: Option<PathBuf>,
        /// Where the reports go.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
        /// Where the data directories and the object store go (default: the temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Keys to load (fewer when the free disk cannot hold them; the report says so).
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        /// Bytes per value (random, so incompressible).
        #[arg(long, default_value_t = 10_240)]
        value_size: usize,
        /// Background writers (1 KiB puts) and readers (linearizable gets).
        #[arg(long, default_value_t = 10)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        readers: usize,
        /// Seconds of background load measured before each step.
        #[arg(long, default_value_t = 20)]
        window: u64,
        /// The cluster's raft.snapshot_log_entries.
        #[arg(long, default_value_t = 20_000)]
        raft_snapshot_entries: u64,
        /// The cluster's archive.snapshot_max_age, in seconds.
        #[arg(long, default_value_t = 120)]
        archive_snapshot_age: u64,
        /// Seconds a step waits for a snapshot or a member to catch up.
        #[arg(long, default_value_t = 1800)]
        event_timeout: u64,
        /// The commit to name in the report.
        #[arg(long, default_value = "")]
        commit: String,
        /// A smaller run's scale.json: the 50 GiB extrapolation then goes through both sizes.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// netsy vs real etcd side by side; writes results.md / .svg / .json (`make bench`).
    Suite {
        /// The etcd 3.5 binary to compare against.
        #[arg(long, default_value = ".venv/bin/etcd")]
        etcd_bin: PathBuf,
        /// The netsy binary to run (default: `netsy` next to this program, as a
        /// `cargo build` of the workspace leaves it).
        #[arg(long)]
        netsy_bin: Option<PathBuf>,
        /// Where the reports go.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
        /// Small totals (a smoke run; not for judging targets).
        #[arg(long)]
        quick: bool,
        /// Keys loaded for the memory and disk measurement.
        #[arg(long, default_value_t = 1_000_000)]
        load_keys: usize,
        /// Rounds per workload (alternating which server goes first).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
}

fn init_tracing(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `netsy` next to this program: `cargo build` puts both in the same target directory.
fn default_netsy_bin() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let netsy = me.with_file_name("netsy");
    if netsy.exists() {
        Ok(netsy)
    } else {
        Err(format!(
            "no netsy binary at {}: build it (`cargo build --release --bin netsy`) or pass --netsy-bin",
            netsy.display()
        ))
    }
}

/// Runs the command: what to print, or the error.
fn run(cli: Cli) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let workload = match cli.workload {
        BenchCmd::DurabilityCost {
            moto_bin,
            netsy_bin,
            total,
        } => {
            let netsy_bin = match netsy_bin {
                Some(p) => p,
                None => default_netsy_bin()?,
            };
            let dir = std::env::temp_dir().join(format!("netsy-bench-s3-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let cost = runtime
                .block_on(netsy_bench::s3cost::durability_cost(&moto_bin, &netsy_bin, &dir, total))
                .map_err(|e| format!("durability cost failed: {e}"));
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(netsy_bench::report::durability_markdown(&cost?));
        }
        BenchCmd::Scale {
            netsy_bin,
            out,
            work_dir,
            keys,
            value_size,
            writers,
            readers,
            window,
            raft_snapshot_entries,
            archive_snapshot_age,
            event_timeout,
            commit,
            baseline,
        } => {
            let netsy_bin = match netsy_bin {
                Some(p) => p,
                None => default_netsy_bin()?,
            };
            let work_dir = work_dir
                .unwrap_or_else(std::env::temp_dir)
                .join(format!("netsy-scale-{}", std::process::id()));
            let opts = netsy_bench::scale::ScaleOptions {
                netsy_bin,
                out_dir: out.clone(),
                work_dir: work_dir.clone(),
                keys,
                value_size,
                writers,
                readers,
                window: std::time::Duration::from_secs(window),
                raft_snapshot_entries,
                archive_snapshot_age: std::time::Duration::from_secs(archive_snapshot_age),
                event_timeout: std::time::Duration::from_secs(event_timeout),
                baseline,
                command: format!("netsy-bench scale --keys {keys} --value-size {value_size}"),
                commit,
            };
            let report = runtime
                .block_on(netsy_bench::scale::run_scale(&opts))
                .map_err(|e| format!("scale bench failed: {e} (members' logs in {})", work_dir.display()));
            let report = report?;
            // The members' and the restore's logs stay beside the report (small; they
            // explain a step's numbers), the data does not.
            let logs = out.join("logs");
            let kept = std::fs::create_dir_all(&logs).and_then(|()| {
                for entry in std::fs::read_dir(&work_dir)? {
                    let path = entry?.path();
                    if let (Some(name), Some("log")) = (path.file_name(), path.extension().and_then(|e| e.to_str())) {
                        std::fs::copy(&path, logs.join(name))?;
                    }
                }
                Ok(())
            });
            if let Err(e) = kept {
                eprintln!("could not keep the logs in {}: {e}", logs.display());
            }
            let _ = std::fs::remove_dir_all(&work_dir);
            return Ok(format!(
                "{}wrote {}/scale.md, scale.json",
                netsy_bench::scale::markdown(&report),
                out.display()
            ));
        }
        BenchCmd::Suite {
            etcd_bin,
            netsy_bin,
            out,
            quick,
            load_keys,
            rounds,
        } => {
            let netsy_bin = match netsy_bin {
                Some(p) => p,
                None => default_netsy_bin()?,
            };
            let opts = netsy_bench::suite::SuiteOptions {
                etcd_bin,
                netsy_bin,
                out_dir: out.clone(),
                quick,
                load_keys,
                rounds,
            };
            let results = runtime
                .block_on(netsy_bench::suite::run_suite(&opts))
                .map_err(|e| format!("bench suite failed: {e}"))?;
            return Ok(format!(
                "{}wrote {}/results.md, results.svg, results.json",
                netsy_bench::report::markdown(&results),
                out.display()
            ));
        }
        BenchCmd::Put { kv, sequential_keys } => Workload::Put {
            key_size: kv.key_size,
            value_size: kv.val_size,
            key_space: kv.key_space_size,
            order: if sequential_keys { KeyOrder::Sequential } else { KeyOrder::Random },
        },
        BenchCmd::TxnPut { kv } => Workload::TxnPut {
            key_size: kv.key_size,
            value_size: kv.val_size,
            key_space: kv.key_space_size,
        },
        BenchCmd::Range {
            key,
            prefix,
            consistency,
            limit,
            populate,
            val_size,
            stream,
        } => {
            let linearizable = match consistency.as_str() {
                "l" => true,
                "s" => false,
                other => return Err(format!("--consistency {other:?}: use l (linearizable) or s (serializable)")),
            };
            Workload::Range {
                key,
                prefix,
                linearizable,
                limit,
                populate,
                value_size: val_size,
                stream,
            }
        }
        BenchCmd::TxnMixed { val_size } => Workload::TxnMixed { value_size: val_size },
        BenchCmd::WatchLatency {
            streams,
            watchers_per_stream,
            put_rate,
            val_size,
        } => Workload::WatchLatency {
            streams,
            watchers: watchers_per_stream,
            rate: put_rate,
            value_size: val_size,
        },
        BenchCmd::LeaseKeepalive => Workload::LeaseKeepalive,
    };
    if cli.endpoints.is_empty() {
        return Err("--endpoints: give at least one endpoint, e.g. 127.0.0.1:2378".to_string());
    }
    let opts = Options {
        endpoints: cli.endpoints,
        clients: cli.clients,
        conns: cli.conns,
        total: cli.total,
    };
    let summary = runtime
        .block_on(netsy_bench::run(&opts, &workload))
        .map_err(|e| format!("bench {} failed: {e}", workload.name()))?;
    if cli.json {
        serde_json::to_string(&summary).map_err(|e| format!("cannot encode the summary: {e}"))
    } else {
        Ok(summary.text())
    }
}
