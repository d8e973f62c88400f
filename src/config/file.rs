//! The cluster file as written: its sections, their fields and defaults (`deny_unknown_fields`
//! everywhere, so a misspelt key is an error that names it).

use std::path::PathBuf;

use serde::Deserialize;

use super::mesh::MeshSettings;

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
    /// `s3`: a custom endpoint (S3-compatible stores). `gcs`: the base URL of the XML API
    /// (default `https://storage.googleapis.com`; an emulator or a private endpoint).
    /// `http://` endpoints are allowed.
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
    /// Client-side encryption of every archived object (docs/time-machine.md,
    /// "Encrypted archives"). Unset: objects are stored as netsy encodes them.
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
}

/// Where the key that wraps the archive's data keys comes from: exactly one of `kms`
/// and `key_file`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// A Kubernetes KMS v2 plugin.
    #[serde(default)]
    pub kms: Option<KmsConfig>,
    /// A file holding a 32-byte key, raw or base64, for development.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A Kubernetes KMS v2 plugin (`k8s.io/kms/apis/v2`) on a unix socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// `unix:///path/to/socket.sock` (or the path alone).
    pub endpoint: String,
    /// Deadline of each call to the plugin.
    #[serde(default = "default_kms_timeout")]
    pub timeout: String,
    /// How often the plugin's current key id is asked for (`Status`); a new id wraps the
    /// next data key. "0s" asks before every object written.
    #[serde(default = "default_kms_status_interval")]
    pub status_interval: String,
}

fn default_kms_timeout() -> String {
    "3s".into()
}

fn default_kms_status_interval() -> String {
    "60s".into()
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
    /// The memory that unary reads (Range, read-only Txn) may hold at once for their rows
    /// and encoded replies, on top of what the server holds idle (512 MiB). A read that
    /// needs more than all of it is refused; reads that together need more wait for each
    /// other (docs/architecture.md, "Memory budget of unary reads").
    pub read_memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 << 30,
            read_memory_bytes: 512 << 20,
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
    /// are deleted...
    pub snapshots_to_keep: usize,
    /// ...unless they are needed to restore to a point in time within this long ago
    /// (`netsy snapshot restore --at`), which also keeps earlier epochs that long after
    /// the next one opened. "0s" keeps only `snapshots_to_keep`.
    pub history: String,
    /// The most segment uploads (PUTs) per second the leader makes, however high the
    /// write load (one at most every 1/N seconds; after a quiet time the next goes at
    /// once): more writes wait and share the next upload. Object stores bill per PUT.
    pub max_puts_per_second: u32,
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
            history: "24h".into(),
            max_puts_per_second: 10,
            max_backlog_bytes: 1 << 30,
        }
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
    /// Run as a standby of another cluster: follow its archive, serve reads only.
    #[serde(default)]
    pub standby: Option<StandbySettings>,
}

/// A standby cluster follows the archive of the primary named by `source`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StandbySettings {
    /// The primary's `storage` block (its bucket and key prefix), read only.
    pub source: StorageConfig,
    /// The primary's `cluster_id` (its `cluster.json` names it).
    pub source_cluster_id: String,
    /// How often the archive is listed for new segments...
    #[serde(default = "default_standby_poll")]
    pub poll_interval: String,
    /// ...and the longest wait between tries while object storage fails.
    #[serde(default = "default_standby_backoff")]
    pub max_backoff: String,
}

fn default_standby_poll() -> String {
    "1s".into()
}

fn default_standby_backoff() -> String {
    "30s".into()
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
