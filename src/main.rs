//! The `netsy` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netsy::config::{process_env, Config};

#[derive(Parser)]
#[command(
    name = "netsy",
    version,
    about = "etcd-compatible, Raft-replicated key-value store for Kubernetes control planes"
)]
struct Cli {
    /// Validate a cluster config file and exit (status 0 when valid).
    #[arg(long, value_name = "FILE")]
    validate: Option<PathBuf>,
    /// Debug logging.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Serve {
        /// The JSONC cluster file (or NETSY_CONFIG).
        #[arg(long, env = "NETSY_CONFIG")]
        config: PathBuf,
    },
    /// Work with snapshot files written by `etcdctl snapshot save`.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Create a new single-member data directory from a snapshot file.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn init_tracing(verbose: bool) {
    let default = if verbose || process_env("NETSY_DEBUG").as_deref() == Some("true") {
        "debug"
    } else {
        "info,openraft=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if let Some(path) = cli.validate {
        return match Config::load(&path, &process_env) {
            Ok(_) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    match cli.command {
        Some(Cmd::Serve { config }) => serve(config),
        Some(Cmd::Snapshot {
            command: SnapshotCmd::Restore { file, data_dir },
        }) => match netsy::snapshot::restore(&file, &data_dir) {
            Ok(rev) => {
                println!("restored {} into {} (revision {rev})", file.display(), data_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("restore failed: {e}");
                ExitCode::FAILURE
            }
        },
        None => {
            eprintln!("nothing to do: try `netsy serve --config FILE` or `netsy --help`");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path, &process_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match netsy::server::Node::start(config).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("netsy failed to start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending::<()>().await,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        match netsy::server::serve(node, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netsy failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
