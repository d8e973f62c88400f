//! Checks of the cluster-wide settings, and the duration syntax ("90s", "1h30m").

use std::time::Duration;

use super::file::{ArchiveSettings, AutoCompaction, Limits, RaftSettings, StorageConfig};
use super::{invalid, ConfigError};

/// The validated standby settings.
#[derive(Debug, Clone)]
pub struct StandbyPolicy {
    pub source: StorageConfig,
    pub source_cluster_id: String,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
}

impl super::file::StandbySettings {
    pub(super) fn resolve(&self, cluster_id: &str) -> Result<StandbyPolicy, ConfigError> {
        validate_name("standby.source_cluster_id", &self.source_cluster_id)?;
        if self.source_cluster_id == cluster_id {
            return Err(invalid(
                "standby.source_cluster_id",
                "must differ from this cluster's cluster_id: the standby is another cluster (its members and certificates are its own)",
            ));
        }
        validate_storage(&self.source).map_err(|e| invalid("standby.source", crate::error_chain(&e)))?;
        let within = |key: &str, v: &str, example: &str| match parse_duration(v) {
            Some(d) if d >= Duration::from_millis(10) => Ok(d),
            _ => Err(invalid(
                key,
                format!("{v:?} must be a duration of at least 10ms such as \"{example}\""),
            )),
        };
        let poll_interval = within("standby.poll_interval", &self.poll_interval, "1s")?;
        let max_backoff = within("standby.max_backoff", &self.max_backoff, "30s")?;
        Ok(StandbyPolicy {
            source: self.source.clone(),
            source_cluster_id: self.source_cluster_id.clone(),
            poll_interval,
            max_backoff: max_backoff.max(poll_interval),
        })
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
    pub history: Duration,
    pub max_puts_per_second: u32,
    pub max_backlog_bytes: u64,
}

impl ArchiveSettings {
    pub(super) fn resolve(&self) -> Result<ArchivePolicy, ConfigError> {
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
        if self.max_puts_per_second == 0 {
            return Err(invalid("archive.max_puts_per_second", "must be at least 1 (default 10)"));
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
            history: parse_duration(&self.history).ok_or_else(|| {
                invalid(
                    "archive.history",
                    format!(
                        "{:?} must be a duration such as \"24h\" or \"7d\" (\"0s\": keep only archive.snapshots_to_keep)",
                        self.history
                    ),
                )
            })?,
            max_puts_per_second: self.max_puts_per_second,
            max_backlog_bytes: self.max_backlog_bytes,
        })
    }
}

impl RaftSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

#[derive(Debug, Clone, PartialEq)]
pub enum AutoCompactionPolicy {
    Periodic(Duration),
    Revision(i64),
}

/// Netsy's identifier rule (cluster and node ids, and so the names in certificates): 1-32 lowercase letters, digits and
/// single hyphens, not starting or ending with a hyphen.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Lowercase alphanumerics and single hyphens, at most 32 characters (Netsy's rule).
pub(super) fn validate_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_identifier(value) {
        Ok(())
    } else {
        Err(invalid(key, format!("{value:?} must be 1-32 lowercase letters, digits and single hyphens, not starting or ending with a hyphen (e.g. \"prod-1\")")))
    }
}

pub(super) fn validate_storage(s: &StorageConfig) -> Result<(), ConfigError> {
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
        if !matches!(s.provider.as_str(), "s3" | "gcs") {
            return Err(invalid(
                "storage.endpoint",
                format!(
                    "applies to providers \"s3\" and \"gcs\" only; remove it for provider {:?}",
                    s.provider
                ),
            ));
        }
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
    if let Some(e) = &s.encryption {
        validate_encryption(e)?;
    }
    Ok(())
}

fn validate_encryption(e: &super::EncryptionConfig) -> Result<(), ConfigError> {
    match (&e.kms, &e.key_file) {
        (Some(_), Some(_)) => Err(invalid(
            "storage.encryption",
            "names both `kms` and `key_file`; keep one: `kms` for a KMS v2 plugin, `key_file` for development",
        )),
        (None, None) => Err(invalid(
            "storage.encryption",
            "needs `kms` (e.g. { \"endpoint\": \"unix:///var/run/kmsplugin/socket.sock\" }) or `key_file`; remove `encryption` to store objects unencrypted",
        )),
        (None, Some(path)) => {
            if path.as_os_str().is_empty() {
                return Err(invalid("storage.encryption.key_file", "is empty; set it to a file holding a 32-byte key (raw or base64)"));
            }
            Ok(())
        }
        (Some(k), None) => {
            let socket = k.endpoint.strip_prefix("unix://").unwrap_or(&k.endpoint);
            if !socket.starts_with('/') {
                return Err(invalid(
                    "storage.encryption.kms.endpoint",
                    format!("{:?} must be a unix socket such as \"unix:///var/run/kmsplugin/socket.sock\"", k.endpoint),
                ));
            }
            if parse_duration(&k.timeout).is_none_or(|d| d.is_zero()) {
                return Err(invalid(
                    "storage.encryption.kms.timeout",
                    format!("{:?} must be a positive duration such as \"3s\"", k.timeout),
                ));
            }
            if parse_duration(&k.status_interval).is_none() {
                return Err(invalid(
                    "storage.encryption.kms.status_interval",
                    format!("{:?} must be a duration such as \"60s\" (\"0s\": before every object)", k.status_interval),
                ));
            }
            Ok(())
        }
    }
}

pub(super) fn validate_limits(l: &Limits) -> Result<(), ConfigError> {
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
    if l.read_memory_bytes < 1 << 20 {
        return Err(invalid(
            "limits.read_memory_bytes",
            "must be at least 1048576 (default 536870912, 512 MiB); it bounds the memory of unary reads, so size it to the largest list you serve in one reply, twice over",
        ));
    }
    Ok(())
}

pub(super) fn validate_version(v: &str) -> Result<(), ConfigError> {
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

pub(super) fn parse_auto_compaction(ac: &AutoCompaction) -> Result<AutoCompactionPolicy, ConfigError> {
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
pub(super) fn duration_at_least_100ms(key: &str, v: &str, hint: &str) -> Result<Duration, ConfigError> {
    match parse_duration(v) {
        Some(d) if d >= Duration::from_millis(100) => Ok(d),
        _ => Err(invalid(key, format!("{v:?} must be a duration of at least 100ms {hint}"))),
    }
}

/// Parses durations such as "90s", "5m", "1h30m", "500ms". `None` for anything else,
/// and for a duration too long to represent (every caller's error then names its key).
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
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
    }
    Some(total)
}
