//! Configuration: one JSONC cluster file (shared by every node) plus per-node `NETSY_*`
//! environment variables. Everything is validated at startup; every error names the key
//! and says how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid JSONC: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("invalid config `{key}`: {msg}")]
    Invalid { key: String, msg: String },
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Where object storage lives. The archive itself uses it; the keys exist from the start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3`, `gcs`, `file` (a local directory, for development) or `memory` (tests).
    pub provider: String,
    #[serde(default)]
    pub bucket_name: String,
    #[serde(default)]
    pub key_prefix: String,
    /// Directory for the `file` provider; relative paths resolve against the working dir.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `s3`: the bucket's region (else `AWS_REGION` / `AWS_DEFAULT_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// `s3`: a custom endpoint (S3-compatible stores); `http://` endpoints are allowed.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `s3`: path-style requests (`endpoint/bucket/key`), as most S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// `s3` / `gcs`: storage class of every object written (e.g. "STANDARD_IA"); unset
    /// means the bucket's default.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// `s3`: server-side encryption, "AES256" (S3-managed keys) or "aws:kms" (KMS; with
    /// `sse_kms_key_id` for a customer-managed key). Unset means the bucket's default.
    #[serde(default)]
    pub sse: Option<String>,
    /// `s3` with `sse: "aws:kms"`: the KMS key id or ARN (else the AWS-managed key).
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Acknowledge once a Raft quorum has the entry on disk; upload asynchronously.
    Quorum,
    /// Also wait until the segment holding the entry is in object storage.
    ObjectStorage,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request (etcd `--max-request-bytes`, default 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most operations in one Txn branch (etcd `--max-txn-ops`, default 128).
    pub max_txn_ops: usize,
    /// Database size that raises the NOSPACE alarm (etcd `--quota-backend-bytes`, 2 GiB).
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 << 30,
        }
    }
}

/// The object-storage archive: how committed log entries are grouped into segment
/// uploads, when snapshots are taken and kept, and how much may wait locally.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// Upload a segment once this many bytes of entries are pending...
    pub segment_max_bytes: usize,
    /// ...or this long after the last upload, whichever comes first.
    pub segment_max_delay: String,
    /// Upload a snapshot after this many log entries since the last one...
    pub snapshot_entries: u64,
    /// ...or this many bytes of segments since the last one...
    pub snapshot_bytes: u64,
    /// ...or when the last one is this old and entries have been written since.
    pub snapshot_max_age: String,
    /// Snapshots kept in object storage; older ones, and the segments only they need,
    /// are deleted.
    pub snapshots_to_keep: usize,
    /// `quorum` durability: the most log bytes that may wait locally for object storage.
    /// Beyond it writes fail with etcd's "database space exceeded" until uploads resume.
    pub max_backlog_bytes: u64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings {
            segment_max_bytes: 4 << 20,
            segment_max_delay: "100ms".into(),
            snapshot_entries: 10_000,
            snapshot_bytes: 256 << 20,
            snapshot_max_age: "1h".into(),
            snapshots_to_keep: 3,
            max_backlog_bytes: 1 << 30,
        }
    }
}

/// The validated archive settings.
#[derive(Debug, Clone)]
pub struct ArchivePolicy {
    pub segment_max_bytes: usize,
    pub segment_max_delay: Duration,
    pub snapshot_entries: u64,
    pub snapshot_bytes: u64,
    pub snapshot_max_age: Duration,
    pub snapshots_to_keep: usize,
    pub max_backlog_bytes: u64,
}

impl ArchiveSettings {
    fn resolve(&self) -> Result<ArchivePolicy, ConfigError> {
        let positive = |key: &str, v: &str, example: &str| match parse_duration(v) {
            Some(d) if d >= Duration::from_millis(1) => Ok(d),
            _ => Err(invalid(key, format!("{v:?} must be a positive duration such as \"{example}\""))),
        };
        if self.segment_max_bytes < 1024 {
            return Err(invalid("archive.segment_max_bytes", "must be at least 1024 (default 4194304)"));
        }
        if self.snapshot_entries == 0 {
            return Err(invalid("archive.snapshot_entries", "must be at least 1 (default 10000)"));
        }
        if self.snapshot_bytes < 1 << 20 {
            return Err(invalid("archive.snapshot_bytes", "must be at least 1048576 (default 268435456)"));
        }
        if self.snapshots_to_keep == 0 {
            return Err(invalid("archive.snapshots_to_keep", "must be at least 1 (default 3)"));
        }
        if self.max_backlog_bytes < 1 << 20 {
            return Err(invalid(
                "archive.max_backlog_bytes",
                "must be at least 1048576 (default 1073741824)",
            ));
        }
        Ok(ArchivePolicy {
            segment_max_bytes: self.segment_max_bytes,
            segment_max_delay: positive("archive.segment_max_delay", &self.segment_max_delay, "100ms")?,
            snapshot_entries: self.snapshot_entries,
            snapshot_bytes: self.snapshot_bytes,
            snapshot_max_age: positive("archive.snapshot_max_age", &self.snapshot_max_age, "1h")?,
            snapshots_to_keep: self.snapshots_to_keep,
            max_backlog_bytes: self.max_backlog_bytes,
        })
    }
}

/// Raft tuning: when a member snapshots its state so its log can be purged, and how a
/// snapshot travels to a member that is too far behind for the log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Snapshot after this many log entries (each a batch of commands)...
    pub snapshot_log_entries: u64,
    /// ...or once the log written since the last snapshot holds this many bytes. A
    /// snapshot copies the whole state database, so neither should be small.
    pub snapshot_log_bytes: u64,
    /// Snapshots are sent to a member in chunks of this many bytes.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            // etcd's default --snapshot-count.
            snapshot_log_entries: 100_000,
            snapshot_log_bytes: 256 << 20,
            snapshot_chunk_bytes: 3 << 20,
        }
    }
}

impl RaftSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.snapshot_log_entries < 10 {
            return Err(invalid("raft.snapshot_log_entries", "must be at least 10 (default 100000)"));
        }
        if self.snapshot_log_bytes < 64 << 10 {
            return Err(invalid("raft.snapshot_log_bytes", "must be at least 65536 (default 268435456)"));
        }
        if !(4096..=64 << 20).contains(&self.snapshot_chunk_bytes) {
            return Err(invalid(
                "raft.snapshot_chunk_bytes",
                "must be between 4096 and 67108864 (default 3145728)",
            ));
        }
        Ok(())
    }
}

/// TLS settings shared by the cluster (the files themselves are per node: `NETSY_TLS_*`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// "1.3" (default) or "1.2" to also accept TLS 1.2 clients.
    pub min_version: String,
    /// Serve the health/metrics port over TLS too (server authentication only; probes
    /// then need `scheme: HTTPS`).
    pub health: bool,
    /// How often the certificate files are checked for rotation.
    pub reload_interval: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            min_version: "1.3".into(),
            health: false,
            reload_interval: "5s".into(),
        }
    }
}

/// The validated TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPolicy {
    pub allow_tls12: bool,
    pub health: bool,
    pub reload_interval: Duration,
}

/// This node's certificate files (`NETSY_TLS_*`, as the cert-manager CSI driver mounts
/// them): all five, or none for plaintext on loopback.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub const TLS_ENV: [&str; 5] = [
    "NETSY_TLS_CA_CERT",
    "NETSY_TLS_SERVER_CERT",
    "NETSY_TLS_SERVER_KEY",
    "NETSY_TLS_CLIENT_CERT",
    "NETSY_TLS_CLIENT_KEY",
];

fn resolve_tls(settings: &TlsSettings, env: EnvFn) -> Result<(Option<TlsFiles>, TlsPolicy), ConfigError> {
    let allow_tls12 = match settings.min_version.as_str() {
        "1.3" => false,
        "1.2" => true,
        other => {
            return Err(invalid(
                "tls.min_version",
                format!("{other:?} must be \"1.3\" (default) or \"1.2\""),
            ))
        }
    };
    let reload_interval = duration_at_least_100ms("tls.reload_interval", &settings.reload_interval, "such as \"5s\"")?;
    let values: Vec<Option<String>> = TLS_ENV.iter().map(|k| env(k)).collect();
    let files = if values.iter().all(Option::is_none) {
        None
    } else if let Some(missing) = TLS_ENV.iter().zip(&values).find(|(_, v)| v.is_none()).map(|(k, _)| *k) {
        return Err(invalid(
            missing,
            format!("is not set, but other NETSY_TLS_* variables are; set all of {}", TLS_ENV.join(", ")),
        ));
    } else {
        let path = |i: usize| PathBuf::from(values[i].clone().unwrap_or_default());
        Some(TlsFiles {
            ca_cert: path(0),
            server_cert: path(1),
            server_key: path(2),
            client_cert: path(3),
            client_key: path(4),
        })
    };
    if settings.health && files.is_none() {
        return Err(invalid(
            "tls.health",
            "is true but no certificates are configured; set the NETSY_TLS_* variables or remove it",
        ));
    }
    Ok((
        files,
        TlsPolicy {
            allow_tls12,
            health: settings.health,
            reload_interval,
        },
    ))
}

/// Watch tuning (etcd's `--watch-progress-notify-interval`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSettings {
    /// How often an idle watch created with `progress_notify` gets a progress response.
    pub progress_notify_interval: String,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            progress_notify_interval: "10m".into(),
        }
    }
}

/// etcd's `--auto-compaction-mode` / `--auto-compaction-retention`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AutoCompaction {
    /// `periodic` (retention is a duration such as "1h") or `revision` (a revision count).
    pub mode: String,
    pub retention: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AutoCompactionPolicy {
    Periodic(Duration),
    Revision(i64),
}

/// Node-level defaults that may sit in the cluster file (handy for development);
/// the `NETSY_*` environment variables override them.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeDefaults {
    pub node_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// The data directory does not survive a restart (e.g. an emptyDir volume).
    pub data_ephemeral: Option<bool>,
    pub bind_client: Option<String>,
    pub advertise_client: Option<String>,
    pub bind_peer: Option<String>,
    pub advertise_peer: Option<String>,
    pub bind_health: Option<String>,
}

/// The cluster file, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster_id: String,
    pub storage: StorageConfig,
    /// Unset: `object-storage` when the node's data directory is ephemeral
    /// (`NETSY_DATA_EPHEMERAL=true`), else `quorum`.
    #[serde(default)]
    pub durability: Option<Durability>,
    #[serde(default)]
    pub limits: Limits,
    /// The version string reported by Status and /version.
    #[serde(default = "default_etcd_version")]
    pub etcd_version: String,
    #[serde(default)]
    pub auto_compaction: Option<AutoCompaction>,
    #[serde(default)]
    pub watch: WatchSettings,
    #[serde(default)]
    pub archive: ArchiveSettings,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    /// How long a node with an empty data directory looks for the running cluster
    /// before concluding every member is down and rebuilding it from object storage.
    #[serde(default = "default_discovery_timeout")]
    pub discovery_timeout: String,
    /// How long a voter may stay unreachable before the leader removes it from the
    /// membership (a StatefulSet scaled down leaves its surplus pods unreachable for
    /// good). "0" never removes anyone automatically.
    #[serde(default = "default_deregistration_timeout")]
    pub deregistration_timeout: String,
    /// Serve plaintext on non-loopback addresses when no TLS is configured.
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default)]
    pub node: NodeDefaults,
    /// The mesh authority, as an alternative to its environment variables.
    #[serde(default)]
    pub mesh: Option<MeshSettings>,
}

/// The cluster file's `mesh` section: the Genesis Mesh NA settings under netsy-style
/// names (each is the variable of the same name in upper case, e.g. `genesis_file` is
/// `GENESIS_FILE`); environment variables win.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    pub bind: Option<String>,
    pub genesis_file: Option<String>,
    pub na_private_key_file: Option<String>,
    pub na_key_id: Option<String>,
    pub operator_public_keys: Option<std::collections::BTreeMap<String, String>>,
    pub operator_key_tiers: Option<std::collections::BTreeMap<String, String>>,
    pub renewal_grace_seconds: Option<i64>,
    pub max_request_bytes: Option<usize>,
    pub public_url: Option<String>,
}

impl MeshSettings {
    /// As the variables they stand for.
    fn as_vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        };
        set("NETSY_BIND_MESH", self.bind.clone());
        set("GENESIS_FILE", self.genesis_file.clone());
        set("NA_PRIVATE_KEY_FILE", self.na_private_key_file.clone());
        set("NA_KEY_ID", self.na_key_id.clone());
        let json = |m: &Option<std::collections::BTreeMap<String, String>>| m.as_ref().and_then(|m| serde_json::to_string(m).ok());
        set("OPERATOR_PUBLIC_KEYS_JSON", json(&self.operator_public_keys));
        set("OPERATOR_KEY_TIERS_JSON", json(&self.operator_key_tiers));
        set("RENEWAL_GRACE_SECONDS", self.renewal_grace_seconds.map(|v| v.to_string()));
        set("NA_MAX_REQUEST_BYTES", self.max_request_bytes.map(|v| v.to_string()));
        set("NA_PUBLIC_URL", self.public_url.clone());
        out
    }
}

fn default_discovery_timeout() -> String {
    "15s".into()
}

fn default_deregistration_timeout() -> String {
    "3m".into()
}

fn default_etcd_version() -> String {
    crate::DEFAULT_ETCD_VERSION.to_string()
}

/// The validated, resolved configuration of this node.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_id: String,
    pub storage: StorageConfig,
    pub durability: Durability,
    pub limits: Limits,
    pub etcd_version: String,
    pub auto_compaction: Option<AutoCompactionPolicy>,
    pub watch_progress_notify_interval: Duration,
    pub archive: ArchivePolicy,
    pub raft: RaftSettings,
    /// This node's certificates; `None` serves plaintext (loopback or `allow_insecure`).
    pub tls: Option<TlsFiles>,
    pub tls_policy: TlsPolicy,
    pub discovery_timeout: Duration,
    /// `None`: never remove an unreachable voter automatically.
    pub deregistration_timeout: Option<Duration>,
    pub allow_insecure: bool,
    pub node_id: String,
    pub data_dir: PathBuf,
    pub bind_client: SocketAddr,
    pub advertise_client: String,
    pub bind_peer: SocketAddr,
    pub advertise_peer: String,
    pub bind_health: SocketAddr,
    /// The mesh authority (port 8443), when `GENESIS_FILE` is set (directly or in the
    /// env file named by `NETSY_MESH_ENV_FILE`).
    pub mesh: Option<crate::mesh::config::MeshConfig>,
}

/// Source of environment variables (a closure so tests need not touch the process env).
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Reads, parses and validates `path`, then applies `NETSY_*` overrides from `env`.
    pub fn load(path: &Path, env: EnvFn) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&text, path, env)
    }

    /// Only the cluster-wide part (cluster id and object storage), validated: for
    /// commands that work on the archive rather than run a node.
    pub fn load_cluster(path: &Path) -> Result<ClusterFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ClusterFile = json5::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        validate_name("cluster_id", &file.cluster_id)?;
        validate_storage(&file.storage)?;
        Ok(file)
    }

    pub fn from_str(text: &str, path: &Path, env: EnvFn) -> Result<Config, ConfigError> {
        let file: ClusterFile = json5::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::resolve(file, env)
    }

    pub fn resolve(file: ClusterFile, env: EnvFn) -> Result<Config, ConfigError> {
        validate_name("cluster_id", &file.cluster_id)?;
        validate_storage(&file.storage)?;
        validate_limits(&file.limits)?;
        validate_version(&file.etcd_version)?;
        let auto_compaction = match &file.auto_compaction {
            None => None,
            Some(ac) => Some(parse_auto_compaction(ac)?),
        };
        let watch_progress_notify_interval = duration_at_least_100ms(
            "watch.progress_notify_interval",
            &file.watch.progress_notify_interval,
            "(etcd's default is \"10m\")",
        )?;
        let archive = file.archive.resolve()?;
        file.raft.validate()?;
        let (tls, tls_policy) = resolve_tls(&file.tls, env)?;
        let discovery_timeout = duration_at_least_100ms("discovery_timeout", &file.discovery_timeout, "such as \"15s\"")?;
        let deregistration_timeout = match file.deregistration_timeout.trim() {
            "0" => None,
            v => Some(duration_at_least_100ms(
                "deregistration_timeout",
                v,
                "such as \"3m\", or \"0\" to never remove an unreachable member automatically",
            )?),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };

        let pick = |var: &str, file_value: &Option<String>, default: &str| -> String {
            env(var).or_else(|| file_value.clone()).unwrap_or_else(|| default.to_string())
        };
        let n = &file.node;
        let node_id = pick("NETSY_NODE_ID", &n.node_id, "netsy-0");
        validate_name("NETSY_NODE_ID (node.node_id)", &node_id)?;
        let data_dir = env("NETSY_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| n.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/netsy"));
        let data_ephemeral = match env("NETSY_DATA_EPHEMERAL").as_deref() {
            None => n.data_ephemeral.unwrap_or(false),
            Some("true") => true,
            Some("false") => false,
            Some(other) => return Err(invalid("NETSY_DATA_EPHEMERAL", format!("{other:?} must be \"true\" or \"false\""))),
        };
        let durability = file.durability.unwrap_or(if data_ephemeral {
            Durability::ObjectStorage
        } else {
            Durability::Quorum
        });
        let bind_client = parse_bind(
            "NETSY_BIND_CLIENT (node.bind_client)",
            &pick("NETSY_BIND_CLIENT", &n.bind_client, ":2378"),
        )?;
        let bind_peer = parse_bind("NETSY_BIND_PEER (node.bind_peer)", &pick("NETSY_BIND_PEER", &n.bind_peer, ":2381"))?;
        let bind_health = parse_bind(
            "NETSY_BIND_HEALTH (node.bind_health)",
            &pick("NETSY_BIND_HEALTH", &n.bind_health, ":8080"),
        )?;
        let advertise_client = env("NETSY_ADVERTISE_CLIENT")
            .or_else(|| n.advertise_client.clone())
            .unwrap_or_else(|| format!("{scheme}://{}", advertise_of(bind_client)));
        let advertise_peer = env("NETSY_ADVERTISE_PEER")
            .or_else(|| n.advertise_peer.clone())
            .unwrap_or_else(|| format!("{scheme}://{}", advertise_of(bind_peer)));

        // Without certificates, plaintext is loopback-only unless explicitly allowed.
        if tls.is_none() && !file.allow_insecure {
            for (key, addr) in [
                ("NETSY_BIND_CLIENT (node.bind_client)", bind_client),
                ("NETSY_BIND_PEER (node.bind_peer)", bind_peer),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        format!("{addr} is not a loopback address and no TLS is configured; set the NETSY_TLS_* certificate variables, bind to 127.0.0.1, or set `allow_insecure: true` in the cluster file"),
                    ));
                }
            }
        }

        Ok(Config {
            cluster_id: file.cluster_id,
            storage: file.storage,
            durability,
            limits: file.limits,
            etcd_version: file.etcd_version,
            auto_compaction,
            watch_progress_notify_interval,
            archive,
            raft: file.raft,
            tls,
            tls_policy,
            discovery_timeout,
            deregistration_timeout,
            allow_insecure: file.allow_insecure,
            node_id,
            data_dir,
            bind_client,
            advertise_client,
            bind_peer,
            advertise_peer,
            bind_health,
            mesh: resolve_mesh(env, file.mesh.as_ref())?,
        })
    }
}

/// The mesh authority's settings: the Genesis Mesh NA variables, from the environment,
/// the env file `NETSY_MESH_ENV_FILE` names (the format `genesis-mesh init --env-file`
/// writes), or the cluster file's `mesh` section, in that order.
fn resolve_mesh(env: EnvFn, section: Option<&MeshSettings>) -> Result<Option<crate::mesh::config::MeshConfig>, ConfigError> {
    use crate::mesh::{config, MeshError};
    let named = |e: MeshError| match e {
        MeshError::Config { key, msg } => invalid(&key, msg),
        other => invalid("NETSY_MESH_ENV_FILE", other.to_string()),
    };
    let mut file = match env("NETSY_MESH_ENV_FILE") {
        Some(path) => config::read_env_file(Path::new(&path)).map_err(named)?,
        None => Default::default(),
    };
    // The cluster file's section, where the env file does not say.
    for (k, v) in section.map(MeshSettings::as_vars).unwrap_or_default() {
        file.entry(k).or_insert(v);
    }
    config::MeshConfig::from_env(env, &file).map_err(named)
}

fn advertise_of(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// Lowercase alphanumerics and single hyphens, at most 32 characters (Netsy's rule).
fn validate_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if crate::tls::identity::is_identifier(value) {
        Ok(())
    } else {
        Err(invalid(key, format!("{value:?} must be 1-32 lowercase letters, digits and single hyphens, not starting or ending with a hyphen (e.g. \"prod-1\")")))
    }
}

fn validate_storage(s: &StorageConfig) -> Result<(), ConfigError> {
    match s.provider.as_str() {
        "s3" | "gcs" => {
            if s.bucket_name.is_empty() {
                return Err(invalid(
                    "storage.bucket_name",
                    format!("is required for provider {:?}; set it to your bucket's name", s.provider),
                ));
            }
        }
        "file" => {
            if s.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                return Err(invalid(
                    "storage.path",
                    "is required for provider \"file\"; set it to a directory such as \"./objects\"",
                ));
            }
        }
        "memory" => {}
        other => {
            return Err(invalid(
                "storage.provider",
                format!("{other:?} is not supported; use \"s3\", \"gcs\", \"file\" or \"memory\""),
            ));
        }
    }
    if let Some(ep) = &s.endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(invalid(
                "storage.endpoint",
                format!("{ep:?} must be a URL such as \"https://s3.example.com\" or \"http://127.0.0.1:9000\""),
            ));
        }
    }
    match s.sse.as_deref() {
        None | Some("AES256") => {}
        Some("aws:kms") if s.provider == "s3" => {}
        Some(other) => {
            return Err(invalid(
                "storage.sse",
                format!("{other:?} is not supported; use \"AES256\" (S3-managed keys) or \"aws:kms\" (with `sse_kms_key_id` for a customer-managed key), or leave it unset"),
            ))
        }
    }
    if s.sse_kms_key_id.is_some() && s.sse.as_deref() != Some("aws:kms") {
        return Err(invalid("storage.sse_kms_key_id", "needs `sse: \"aws:kms\"`"));
    }
    if s.sse.is_some() && s.provider != "s3" {
        return Err(invalid(
            "storage.sse",
            "applies to provider \"s3\" only; GCS encrypts every object (set a default CMEK on the bucket)",
        ));
    }
    if s.key_prefix.starts_with('/') {
        return Err(invalid(
            "storage.key_prefix",
            "must not start with '/'; write e.g. \"clusters/prod\"",
        ));
    }
    Ok(())
}

fn validate_limits(l: &Limits) -> Result<(), ConfigError> {
    if l.max_request_bytes < 1024 {
        return Err(invalid(
            "limits.max_request_bytes",
            "must be at least 1024 (etcd's default is 1572864)",
        ));
    }
    if l.max_txn_ops == 0 {
        return Err(invalid("limits.max_txn_ops", "must be at least 1 (etcd's default is 128)"));
    }
    if l.quota_backend_bytes == 0 {
        return Err(invalid(
            "limits.quota_backend_bytes",
            "must be positive (etcd's default is 2147483648)",
        ));
    }
    Ok(())
}

fn validate_version(v: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = v.split('.').collect();
    let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse().ok()).collect();
    match nums.as_deref() {
        Some([3, 5, p]) if *p >= 13 => Ok(()),
        Some([3, minor, _]) if *minor >= 6 => Ok(()),
        _ => Err(invalid(
            "etcd_version",
            format!("{v:?} must be an etcd semver >= 3.5.13 (e.g. \"3.5.21\"); kube-apiserver disables watch progress requests for older versions"),
        )),
    }
}

fn parse_auto_compaction(ac: &AutoCompaction) -> Result<AutoCompactionPolicy, ConfigError> {
    match ac.mode.as_str() {
        "periodic" => {
            let d = parse_duration(&ac.retention).ok_or_else(|| {
                invalid(
                    "auto_compaction.retention",
                    format!("{:?} is not a duration; write e.g. \"1h\", \"30m\" or \"90s\"", ac.retention),
                )
            })?;
            if d.is_zero() {
                return Err(invalid(
                    "auto_compaction.retention",
                    "must be positive; remove `auto_compaction` to disable it",
                ));
            }
            Ok(AutoCompactionPolicy::Periodic(d))
        }
        "revision" => match ac.retention.parse::<i64>() {
            Ok(n) if n > 0 => Ok(AutoCompactionPolicy::Revision(n)),
            _ => Err(invalid(
                "auto_compaction.retention",
                format!("{:?} must be a positive number of revisions for mode \"revision\"", ac.retention),
            )),
        },
        other => Err(invalid(
            "auto_compaction.mode",
            format!("{other:?} is not supported; use \"periodic\" or \"revision\""),
        )),
    }
}

/// A duration setting of at least 100ms; the error names `key` and ends with `hint`.
fn duration_at_least_100ms(key: &str, v: &str, hint: &str) -> Result<Duration, ConfigError> {
    match parse_duration(v) {
        Some(d) if d >= Duration::from_millis(100) => Ok(d),
        _ => Err(invalid(key, format!("{v:?} must be a duration of at least 100ms {hint}"))),
    }
}

/// Parses durations such as "90s", "5m", "1h30m", "500ms".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
    }
    Some(total)
}

fn parse_bind(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let v = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    v.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not a socket address; write e.g. \"127.0.0.1:2378\" or \":2378\""),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = r#"{
        // comment
        "cluster_id": "dev",
        "storage": { "provider": "file", "path": "./objects", },
        "node": { "data_dir": "./data", "bind_client": "127.0.0.1:2378", "bind_peer": "127.0.0.1:2381", "bind_health": "127.0.0.1:8080" },
    }"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("test.jsonc"), &no_env)
    }

    #[test]
    fn parses_jsonc_with_comments_and_trailing_commas() {
        let c = load(DEV).expect("valid");
        assert_eq!(c.cluster_id, "dev");
        assert_eq!(c.bind_client.to_string(), "127.0.0.1:2378");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.etcd_version, crate::DEFAULT_ETCD_VERSION);
    }

    #[test]
    fn env_overrides_file() {
        let env = |k: &str| (k == "NETSY_BIND_CLIENT").then(|| "127.0.0.1:9999".to_string());
        let c = Config::from_str(DEV, Path::new("x"), &env).expect("valid");
        assert_eq!(c.bind_client.port(), 9999);
    }

    #[test]
    fn errors_name_the_key() {
        // The cluster file with one more top-level section before `node`.
        let with_section = |section: &str| DEV.replace("\"node\"", &format!("{section}, \"node\""));
        let cases = [
            (DEV.replace("\"dev\"", "\"Dev_1\""), "cluster_id"),
            (DEV.replace("\"file\"", "\"ftp\""), "storage.provider"),
            (DEV.replace("\"cluster_id\"", "\"cluster_idd\""), "cluster_idd"),
            (DEV.replace("127.0.0.1:2378", "0.0.0.0:2378"), "NETSY_BIND_CLIENT"),
            (with_section("\"etcd_version\": \"3.4.1\""), "etcd_version"),
            (with_section("\"limits\": {\"max_txn_ops\": 0}"), "limits.max_txn_ops"),
            (
                with_section("\"auto_compaction\": {\"mode\": \"periodic\", \"retention\": \"1x\"}"),
                "auto_compaction.retention",
            ),
            (
                DEV.replace("\"path\": \"./objects\"", "\"path\": \"./objects\", \"endpoint\": \"minio:9000\""),
                "storage.endpoint",
            ),
            (
                with_section("\"watch\": {\"progress_notify_interval\": \"10ms\"}"),
                "watch.progress_notify_interval",
            ),
            (with_section("\"deregistration_timeout\": \"soon\""), "deregistration_timeout"),
            (with_section("\"raft\": {\"snapshot_log_entries\": 0}"), "raft.snapshot_log_entries"),
            (
                with_section("\"raft\": {\"snapshot_chunk_bytes\": 100}"),
                "raft.snapshot_chunk_bytes",
            ),
            (with_section("\"raft\": {\"snapshot_log_bytes\": 1}"), "raft.snapshot_log_bytes"),
            ("{ not json".to_string(), "not valid JSONC"),
        ];
        for (text, key) in cases {
            let err = load(&text).expect_err(key).to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }

    #[test]
    fn insecure_bind_allowed_when_configured() {
        let text = DEV
            .replace("127.0.0.1:2378", "0.0.0.0:2378")
            .replace("\"node\"", "\"allow_insecure\": true, \"node\"");
        assert!(load(&text).is_ok());
    }

    #[test]
    fn the_mesh_section_stands_for_the_na_variables_and_the_environment_wins() {
        let text = DEV.replace(
            "\"node\"",
            r#""mesh": { "genesis_file": "/g.json", "na_private_key_file": "/na.key", "na_key_id": "na-file",
                "operator_public_keys": {"op": "AAAA"}, "operator_key_tiers": {"op": "standard"}, "bind": "127.0.0.1:9443" }, "node""#,
        );
        let m = load(&text).expect("valid").mesh.expect("mesh on");
        assert_eq!(m.na_key_id, "na-file");
        assert_eq!(m.bind.port(), 9443);
        assert_eq!(m.operator_key_tiers["op"], "standard");
        let env = |k: &str| (k == "NA_KEY_ID").then(|| "na-env".to_string());
        let m = Config::from_str(&text, Path::new("x"), &env).expect("valid").mesh.expect("on");
        assert_eq!(m.na_key_id, "na-env");
        assert!(load(DEV).expect("valid").mesh.is_none());
        let bad = DEV.replace("\"node\"", r#""mesh": { "genesis_file": "/g.json" }, "node""#);
        assert!(load(&bad).expect_err("no key file").to_string().contains("NA_PRIVATE_KEY_FILE"));
    }

    #[test]
    fn deregistration_timeout_defaults_to_three_minutes_and_zero_disables_it() {
        assert_eq!(load(DEV).expect("valid").deregistration_timeout, Some(Duration::from_secs(180)));
        let off = DEV.replace("\"node\"", "\"deregistration_timeout\": \"0\", \"node\"");
        assert_eq!(load(&off).expect("valid").deregistration_timeout, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m"), None);
    }
}
