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
    /// Copy every key of a live etcd (at one revision) into a new, empty netsy cluster's
    /// object storage; then start the netsy nodes with empty data directories.
    Migrate {
        /// The etcd client URL, e.g. http://127.0.0.1:2379.
        #[arg(long)]
        from_etcd: String,
        /// The new cluster's file (or NETSY_CONFIG).
        #[arg(long, env = "NETSY_CONFIG")]
        config: PathBuf,
    },
    /// Certificates for local clusters and tests.
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// The Genesis Mesh network authority: create a network, and operator admin calls.
    Mesh {
        #[command(subcommand)]
        command: MeshCmd,
    },
}

/// Where an admin call goes and the operator key that signs it (as `genesis-mesh admin`).
#[derive(clap::Args)]
struct OperatorArgs {
    /// The network authority, e.g. http://netsy-mesh:8443.
    #[arg(long, env = "NETSY_MESH_NA")]
    na: String,
    /// The operator's private key file (keys/operator.key).
    #[arg(long)]
    operator_key: PathBuf,
    #[arg(long, default_value = "operator-local")]
    operator_key_id: String,
}

#[derive(Subcommand)]
enum MeshCmd {
    /// Root, NA and operator keys and a root-signed genesis, in the files `genesis-mesh
    /// init` writes (plus genesis-mesh.toml and the NA's na.env).
    Init {
        #[arg(long)]
        network_name: String,
        #[arg(long)]
        out: PathBuf,
        /// The NA URL written into genesis-mesh.toml.
        #[arg(long, default_value = "http://127.0.0.1:8443")]
        na_endpoint: String,
    },
    /// Create an invite token (POST /admin/invite); prints the token.
    Invite {
        #[command(flatten)]
        operator: OperatorArgs,
        /// Roles, e.g. anchor, client, bridge, operator or service:NAME.
        #[arg(long = "role", default_value = "client")]
        roles: Vec<String>,
        #[arg(long)]
        validity_hours: Option<i64>,
        #[arg(long)]
        token_expiry_hours: Option<i64>,
        /// Bind the token to one node public key (base64).
        #[arg(long)]
        recipient_public_key: Option<String>,
    },
    /// Revoke a certificate (POST /admin/revoke).
    Revoke {
        #[command(flatten)]
        operator: OperatorArgs,
        cert_id: String,
        /// key_compromise, cessation_of_operation, superseded or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Publish and activate a policy (POST /admin/policy).
    Policy {
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        policy_id: Option<String>,
        #[arg(long = "allowed-port", value_delimiter = ',')]
        allowed_ports: Vec<u16>,
        #[arg(long = "allowed-service", value_delimiter = ',')]
        allowed_services: Vec<String>,
        #[arg(long)]
        min_client_version: Option<String>,
    },
    /// List policy versions (GET /admin/policy/history).
    PolicyHistory {
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Re-activate a stored policy version (POST /admin/policy/rollback).
    PolicyRollback {
        #[command(flatten)]
        operator: OperatorArgs,
        policy_id: String,
    },
}

impl OperatorArgs {
    fn operator(self) -> netsy::mesh::tools::Operator {
        netsy::mesh::tools::Operator {
            na: self.na,
            key_file: self.operator_key,
            key_id: self.operator_key_id,
        }
    }
}

/// Runs one admin call: the reply's JSON on success (2xx), else an error with it.
fn admin_call(operator: OperatorArgs, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value, String> {
    let (status, reply) = operator
        .operator()
        .call(method, path, "", body.as_ref())
        .map_err(|e| e.to_string())?;
    if (200..300).contains(&status) {
        Ok(reply)
    } else {
        Err(format!("{method} {path}: {status} {reply}"))
    }
}

fn mesh_command(command: MeshCmd) -> Result<String, String> {
    use serde_json::json;
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    match command {
        MeshCmd::Init {
            network_name,
            out,
            na_endpoint,
        } => netsy::mesh::tools::init(&network_name, &out, &na_endpoint)
            .map(|i| {
                let files: Vec<String> = i.files.iter().map(|f| f.display().to_string()).collect();
                format!(
                    "created network {network_name:?}:\n  {}\nKeep keys/root.key offline: whoever holds it can replace the NA.",
                    files.join("\n  ")
                )
            })
            .map_err(|e| e.to_string()),
        MeshCmd::Invite {
            operator,
            roles,
            validity_hours,
            token_expiry_hours,
            recipient_public_key,
        } => {
            let roles: Vec<String> = roles
                .into_iter()
                .map(|r| if r.starts_with("role:") { r } else { format!("role:{r}") })
                .collect();
            let mut body = json!({"roles": roles});
            if let Some(h) = validity_hours {
                body["max_validity_hours"] = json!(h);
            }
            if let Some(h) = token_expiry_hours {
                body["token_expiry_hours"] = json!(h);
            }
            if let Some(k) = recipient_public_key {
                body["recipient_public_key"] = json!(k);
            }
            let reply = admin_call(operator, "POST", "/admin/invite", Some(body))?;
            reply["token_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no token in {reply}"))
        }
        MeshCmd::Revoke { operator, cert_id, reason } => admin_call(
            operator,
            "POST",
            "/admin/revoke",
            Some(json!({"cert_id": cert_id, "reason": reason})),
        )
        .map(pretty),
        MeshCmd::Policy {
            operator,
            policy_id,
            allowed_ports,
            allowed_services,
            min_client_version,
        } => {
            let mut body = json!({"allowed_services": allowed_services});
            if !allowed_ports.is_empty() {
                body["allowed_ports"] = json!(allowed_ports);
            }
            if let Some(id) = policy_id {
                body["policy_id"] = json!(id);
            }
            if let Some(v) = min_client_version {
                body["min_client_version"] = json!(v);
            }
            admin_call(operator, "POST", "/admin/policy", Some(body)).map(pretty)
        }
        MeshCmd::PolicyHistory { operator } => admin_call(operator, "GET", "/admin/policy/history", None).map(pretty),
        MeshCmd::PolicyRollback { operator, policy_id } => {
            admin_call(operator, "POST", "/admin/policy/rollback", Some(json!({"policy_id": policy_id}))).map(pretty)
        }
    }
}

#[derive(Subcommand)]
enum CertsCmd {
    /// A CA plus per-node server/peer and client certificates, named as the Helm chart
    /// mounts them: DIR/ca.crt, DIR/<node>/{server,peer}.{crt,key},
    /// DIR/clients/<name>.{crt,key}. An existing DIR/ca.crt + ca.key is reused.
    Dev {
        #[arg(long)]
        cluster_id: String,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "netsy-0")]
        nodes: Vec<String>,
        /// Client names, comma-separated (identity netsy://CLUSTER/client/NAME).
        #[arg(long, value_delimiter = ',', default_value = "etcdctl")]
        clients: Vec<String>,
        /// Extra DNS names or IPs for every server certificate (localhost, the node id,
        /// 127.0.0.1 and ::1 are always included).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity of the leaf certificates, in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which archived state a snapshot command works on.
#[derive(clap::Args)]
struct ArchivePoint {
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
enum SnapshotCmd {
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
        // Colour codes only on a terminal, not in log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if let Some(path) = cli.validate {
        let checked = Config::load(&path, &process_env).map_err(|e| e.to_string()).and_then(|c| {
            netsy::tls::Tls::from_config(&c).map_err(|e| format!("TLS: {e}"))?;
            match &c.mesh {
                Some(m) => netsy::mesh::service::Material::load(m)
                    .map(|_| ())
                    .map_err(|e| format!("mesh authority: {e}")),
                None => Ok(()),
            }
        });
        return match checked {
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
        Some(Cmd::Mesh { command }) => report(mesh_command(command)),
        Some(Cmd::Certs {
            command:
                CertsCmd::Dev {
                    cluster_id,
                    nodes,
                    clients,
                    hosts,
                    days,
                    out,
                },
        }) => report(
            netsy::tls::dev::write_dev_certs(&netsy::tls::dev::DevCerts {
                cluster_id,
                nodes,
                clients,
                hosts,
                days,
                out: out.clone(),
            })
            .map(|written| format!("wrote {} files under {}", written.len(), out.display()))
            .map_err(|e| e.to_string()),
        ),
        Some(Cmd::Snapshot {
            command: SnapshotCmd::Restore {
                file: Some(file),
                data_dir,
                ..
            },
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
        Some(Cmd::Snapshot { command }) => archive_command(command),
        Some(Cmd::Migrate { from_etcd, config }) => migrate(&from_etcd, &config),
        None => {
            eprintln!("nothing to do: try `netsy serve --config FILE` or `netsy --help`");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime for a command, or the error to print.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Prints a command's output, or its error, and turns that into the exit code.
fn report(result: Result<String, String>) -> ExitCode {
    match result {
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

/// `netsy snapshot list | inspect | restore --config | export`.
fn archive_command(command: SnapshotCmd) -> ExitCode {
    report(run_archive_command(command))
}

fn run_archive_command(command: SnapshotCmd) -> Result<String, String> {
    use netsy::archive::admin;
    let config_path = match &command {
        SnapshotCmd::List { config, .. } => Some(config.clone()),
        SnapshotCmd::Inspect { point, .. } | SnapshotCmd::Restore { point, .. } | SnapshotCmd::Export { point, .. } => point.config.clone(),
    };
    let config_path = config_path.ok_or("give a snapshot FILE, or --config FILE (or NETSY_CONFIG) to work on the archive")?;
    let config = Config::load_cluster(&config_path).map_err(|e| e.to_string())?;
    let store = netsy::archive::build(&config.storage).map_err(|e| e.to_string())?;
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
                let r = admin::restore_into(store, epoch, point.index, &data_dir).await?;
                Ok(format!(
                    "restored epoch {epoch} through index {} (revision {}) into {}",
                    r.last_index,
                    r.revision,
                    data_dir.display()
                ))
            }
            SnapshotCmd::Export { point, output } => {
                let epoch = admin::current_epoch(store, &cluster, point.epoch).await?;
                let r = admin::export(store, epoch, point.index, &output, &scratch).await?;
                Ok(format!(
                    "exported epoch {epoch} through index {} (revision {}) to {}",
                    r.last_index,
                    r.revision,
                    output.display()
                ))
            }
        }
    });
    result.map_err(|e| e.to_string())
}

/// `netsy migrate --from-etcd URL --config FILE`.
fn migrate(url: &str, config_path: &std::path::Path) -> ExitCode {
    report((|| {
        let config = Config::load_cluster(config_path).map_err(|e| e.to_string())?;
        let r = runtime()?.block_on(async {
            let store = netsy::archive::build(&config.storage).map_err(|e| e.to_string())?;
            let channel = netsy::migrate::connect(url).await.map_err(|e| e.to_string())?;
            netsy::migrate::from_etcd(channel, &store, &config.cluster_id, &std::env::temp_dir())
                .await
                .map_err(|e| format!("migrate failed: {e}"))
        })?;
        Ok(format!(
            "migrated {} keys and {} leases at revision {} into cluster {} (epoch {}); start its nodes with empty data directories",
            r.keys, r.leases, r.revision, config.cluster_id, r.epoch
        ))
    })())
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path, &process_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Answer health probes (alive, not ready) while starting, which includes any
        // restore from object storage; the full endpoint replaces this one afterwards.
        // Wrong certificates fail the start before any slow work (such as a restore).
        let tls = match netsy::tls::Tls::from_config(&config) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("netsy failed to start: TLS: {e}");
                return ExitCode::FAILURE;
            }
        };
        let health_tls = tls.clone().filter(|_| config.tls_policy.health);
        let starting = match tokio::net::TcpListener::bind(config.bind_health)
            .await
            .and_then(|l| netsy::tls::listen::Incoming::new(l, health_tls, netsy::tls::Listener::Health))
        {
            Ok(listener) => {
                let stop = tokio_util::sync::CancellationToken::new();
                let stopped = stop.clone();
                let task = tokio::spawn(async move {
                    let _ = axum::serve(listener, netsy::http::starting_router())
                        .with_graceful_shutdown(async move { stopped.cancelled().await })
                        .await;
                });
                Some((stop, task))
            }
            Err(e) => {
                eprintln!("cannot listen on {} (NETSY_BIND_HEALTH): {e}", config.bind_health);
                return ExitCode::FAILURE;
            }
        };
        let started = netsy::server::Node::start(config, tls).await;
        if let Some((stop, mut task)) = starting {
            stop.cancel();
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        let node = match started {
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
