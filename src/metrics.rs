//! Prometheus metrics, with etcd's names where etcd has the same metric.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
}

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
}

pub static TLS_HANDSHAKE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "netsy_tls_handshake_failures_total",
        "TLS handshakes refused, by listener and reason (no_certificate, expired, unknown_ca, wrong_cluster, wrong_role, ...).",
        &["listener", "reason"],
    )
});
pub static TLS_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "netsy_tls_reloads_total",
        "Reloads of rotated certificate files, by result (ok, error).",
        &["result"],
    )
});
pub static TLS_CERT_NOT_AFTER: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "netsy_tls_certificate_not_after_seconds",
        "Expiry (Unix seconds) of this node's certificates in use, by certificate (server, client).",
        &["certificate"],
    )
});

pub static DB_TOTAL_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
    )
});
pub static DB_IN_USE_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
    )
});
pub static CURRENT_REVISION: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("etcd_debugging_mvcc_current_revision", "The current revision of store."));
pub static COMPACT_REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
    )
});
pub static HAS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
    )
});
pub static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
    )
});
pub static APPLIED_INDEX: LazyLock<IntGauge> = LazyLock::new(|| gauge("etcd_server_applied_index", "The current applied index of raft."));
pub static PROPOSALS_COMMITTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
    )
});
pub static WATCH_STREAMS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams."));
pub static WATCHERS: LazyLock<IntGauge> = LazyLock::new(|| gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers."));
pub static WATCH_EVENTS_SENT: LazyLock<IntCounter> =
    LazyLock::new(|| counter("etcd_debugging_mvcc_events_total", "Total number of events sent by this member."));
pub static WATCH_RESYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "netsy_watch_history_catchups_total",
        "Times a watch stream fell behind the commit stream and caught up from history.",
    )
});
pub static RANGE_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_range_streams_active",
        "RangeStream requests being served: from the request until the reader task ends (last chunk sent, error, or client gone).",
    )
});
pub static RANGE_STREAM_CHUNKS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "netsy_range_stream_chunks_read_total",
        "Chunks read from the store for RangeStream requests.",
    )
});

pub static READ_MEMORY_BUDGET: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_read_memory_budget_bytes",
        "The memory unary reads (Range, read-only Txn) may hold at once (limits.read_memory_bytes).",
    )
});
pub static READ_MEMORY_IN_USE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_read_memory_in_use_bytes",
        "Memory reserved by unary reads now: their rows and encoded replies until written out.",
    )
});
pub static READ_MEMORY_WAITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "netsy_read_memory_waits_total",
        "Unary reads that waited for the read memory budget.",
    )
});
pub static READ_MEMORY_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "netsy_read_memory_refused_total",
        "Unary reads refused for memory: reason=\"too_large\" (needs more than the whole budget), \"busy\" (no room within the wait).",
        &["reason"],
    )
});

/// Counts one RangeStream in `RANGE_STREAMS` for as long as it is held.
pub struct ActiveRangeStream(());

impl ActiveRangeStream {
    pub fn start() -> Self {
        RANGE_STREAMS.inc();
        ActiveRangeStream(())
    }
}

impl Drop for ActiveRangeStream {
    fn drop(&mut self) {
        RANGE_STREAMS.dec();
    }
}

pub static ARCHIVED_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_uploaded_index",
        "The last Raft log index uploaded to object storage by this node.",
    )
});
pub static ARCHIVE_EPOCH: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_epoch",
        "The archive epoch this member serves (a rebuild from object storage starts the next one); 0 until it is known.",
    )
});
pub static ARCHIVE_SNAPSHOT_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_snapshot_index",
        "The Raft log index of the newest snapshot this node uploaded to object storage.",
    )
});
pub static ARCHIVE_SNAPSHOTS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("netsy_archive_snapshots_total", "Snapshots uploaded to object storage."));
pub static ARCHIVE_BACKLOG_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_backlog_bytes",
        "Bytes of committed log entries waiting for upload to object storage.",
    )
});
pub static RESTORE_IN_PROGRESS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_restore_in_progress",
        "1 while the state is being rebuilt from object storage.",
    )
});
pub static RESTORE_ENTRIES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("netsy_restore_entries_total", "Log entries replayed from object storage."));
pub static RESTORE_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "netsy_restore_bytes_total",
        "Bytes of snapshots and segments downloaded while restoring.",
    )
});
pub static LEADER_CHANGES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen."));
pub static QUOTA_BACKEND_BYTES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes."));
pub static LAST_LOG_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_raft_last_log_index",
        "The last index in this member's Raft log (entries after etcd_server_applied_index are not applied yet).",
    )
});
pub static ALARM_ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "netsy_alarm_active",
        "1 while any member has the alarm raised (the cluster's alarm list), by alarm (NOSPACE, CORRUPT).",
        &["alarm"],
    )
});
pub static ARCHIVE_SNAPSHOT_TIMESTAMP: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_snapshot_timestamp_seconds",
        "When (Unix seconds) the newest snapshot in object storage was written, as the leader last saw it; 0 while none is known.",
    )
});
pub static ARCHIVE_CAUGHT_UP_TIMESTAMP: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_caught_up_timestamp_seconds",
        "When (Unix seconds) the leader's uploader last had every committed entry it saw in object storage.",
    )
});
pub static ARCHIVE_BACKLOG_LIMIT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_archive_backlog_limit_bytes",
        "archive.max_backlog_bytes: in quorum durability, writes are refused while the backlog exceeds it.",
    )
});
/// Registered only when this node serves the mesh authority (first set by it).
pub static MESH_AUTHORITY_READY: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_mesh_authority_ready",
        "1 while the mesh authority served by this node answers its readiness check (a linearizable read of its state).",
    )
});
pub static PROPOSALS_FAILED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen."));
fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    let _ = REGISTRY.register(Box::new(h.clone()));
    h
}

fn histogram_vec(name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    let _ = REGISTRY.register(Box::new(h.clone()));
    h
}

/// etcd's buckets for snapshot transfers: 0.1 s to 819.2 s.
fn snapshot_seconds_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.1, 2.0, 14).expect("valid buckets")
}

// Raft snapshots sent to and received from other members (etcd's rafthttp metrics;
// `To` and `From` are the other member's id in hex, as in etcd).
pub static SNAPSHOT_SEND_SUCCESS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "etcd_network_snapshot_send_success",
        "Total number of successful snapshot sends",
        &["To"],
    )
});
pub static SNAPSHOT_SEND_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "etcd_network_snapshot_send_failures",
        "Total number of snapshot send failures",
        &["To"],
    )
});
pub static SNAPSHOT_SEND_INFLIGHTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "etcd_network_snapshot_send_inflights_total",
        "Total number of inflight snapshot sends",
        &["To"],
    )
});
pub static SNAPSHOT_SEND_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "etcd_network_snapshot_send_total_duration_seconds",
        "Total latency distributions of v3 snapshot sends",
        snapshot_seconds_buckets(),
        &["To"],
    )
});
pub static SNAPSHOT_RECEIVE_SUCCESS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "etcd_network_snapshot_receive_success",
        "Total number of successful snapshot receives",
        &["From"],
    )
});
pub static SNAPSHOT_RECEIVE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "etcd_network_snapshot_receive_failures",
        "Total number of snapshot receive failures",
        &["From"],
    )
});
pub static SNAPSHOT_RECEIVE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "etcd_network_snapshot_receive_total_duration_seconds",
        "Total latency distributions of v3 snapshot receives",
        snapshot_seconds_buckets(),
        &["From"],
    )
});

fn seconds_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
}

fn count_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets")
}

pub static COMPACTION_PAUSE: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
        "Bucketed histogram of db compaction pause duration.",
        // 1 ms to 8 s, as etcd's.
        count_buckets(),
    )
});
pub static COMPACTION_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
        "Bucketed histogram of db compaction total duration.",
        prometheus::exponential_buckets(100.0, 2.0, 14).expect("valid buckets"),
    )
});
pub static COMPACTION_KEYS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("etcd_debugging_mvcc_db_compaction_keys_total", "Total number of db keys compacted."));
pub static DEFRAG_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_disk_backend_defrag_duration_seconds",
        "The latency distribution of backend defragmentation.",
        prometheus::exponential_buckets(0.1, 2.0, 13).expect("valid buckets"),
    )
});
pub static PROPOSAL_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "netsy_proposal_duration_seconds",
        "Time from proposal to applied result.",
        seconds_buckets(),
    )
});
pub static STANDBY_FOLLOWING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_standby_following",
        "1 while this member is a standby following its primary's archive (0: not a standby, or promoted).",
    )
});
pub static STANDBY_LAG_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_standby_lag_entries",
        "Entries of the primary's archive the standby has not replayed yet (the standby's leader).",
    )
});
pub static STANDBY_LAG_REVISIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "netsy_standby_lag_revisions",
        "Commands (at most one revision each) fetched from the primary's archive and not replayed yet.",
    )
});
pub static STANDBY_LAG_SECONDS: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    let g = prometheus::Gauge::new(
        "netsy_standby_lag_seconds",
        "Commit time of the primary's newest archived entry minus that of the standby's last replayed entry.",
    )
    .expect("valid metric");
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
});
pub static STANDBY_REPLAYED_ENTRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "netsy_standby_replayed_entries_total",
        "Entries of the primary's archive this member replayed as the standby's leader.",
    )
});
pub static STANDBY_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "netsy_standby_errors_total",
        "Failed attempts to follow the primary's archive (retried with backoff).",
    )
});
/// etcd's name for the WAL fsync latency; here one group commit of the Raft log.
pub static WAL_FSYNC_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        seconds_buckets(),
    )
});
pub static LOG_BATCH_ENTRIES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "netsy_raft_log_batch_entries",
        "Raft log entries written per group commit.",
        count_buckets(),
    )
});
pub static APPLY_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        seconds_buckets(),
    )
});
pub static PROPOSAL_BATCH_COMMANDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "netsy_proposal_batch_commands",
        "Commands carried by one Raft log entry.",
        count_buckets(),
    )
});
pub static APPLY_BATCH_ENTRIES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "netsy_apply_batch_commands",
        "Commands applied per state-machine transaction.",
        count_buckets(),
    )
});

/// Unix time now, in whole seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The alarm types `netsy_alarm_active` reports (etcd's names).
pub const ALARMS: [&str; 2] = ["NOSPACE", "CORRUPT"];

/// Sets `netsy_alarm_active` for each of `ALARMS`: 1 when `raised` says some member has
/// raised it, else 0.
pub fn publish_alarms(raised: impl Fn(&str) -> bool) {
    for alarm in ALARMS {
        ALARM_ACTIVE.with_label_values(&[alarm]).set(raised(alarm) as i64);
    }
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    // Touch the lazies so they are registered even before first use.
    let _ = (
        &*DB_TOTAL_SIZE,
        &*DB_IN_USE_SIZE,
        &*CURRENT_REVISION,
        &*COMPACT_REVISION,
        &*HAS_LEADER,
        &*IS_LEADER,
        &*LEADER_CHANGES,
        &*QUOTA_BACKEND_BYTES,
        &*LAST_LOG_INDEX,
    );
    let _ = (&*PROPOSALS_COMMITTED, &*PROPOSALS_FAILED, &*PROPOSAL_DURATION);
    let _ = (&*COMPACTION_PAUSE, &*COMPACTION_DURATION, &*COMPACTION_KEYS, &*DEFRAG_DURATION);
    let _ = (
        &*WAL_FSYNC_DURATION,
        &*LOG_BATCH_ENTRIES,
        &*APPLY_DURATION,
        &*APPLY_BATCH_ENTRIES,
        &*PROPOSAL_BATCH_COMMANDS,
    );
    let _ = (
        &*ARCHIVED_INDEX,
        &*ARCHIVE_EPOCH,
        &*ARCHIVE_SNAPSHOT_INDEX,
        &*ARCHIVE_SNAPSHOTS,
        &*ARCHIVE_BACKLOG_BYTES,
        &*ARCHIVE_BACKLOG_LIMIT_BYTES,
        &*ARCHIVE_SNAPSHOT_TIMESTAMP,
        &*ARCHIVE_CAUGHT_UP_TIMESTAMP,
    );
    for alarm in ALARMS {
        let _ = ALARM_ACTIVE.with_label_values(&[alarm]);
    }
    let _ = (&*RESTORE_IN_PROGRESS, &*RESTORE_ENTRIES, &*RESTORE_BYTES);
    let _ = (
        &*STANDBY_FOLLOWING,
        &*STANDBY_LAG_ENTRIES,
        &*STANDBY_LAG_REVISIONS,
        &*STANDBY_LAG_SECONDS,
        &*STANDBY_REPLAYED_ENTRIES,
        &*STANDBY_ERRORS,
    );
    let _ = (&*WATCH_STREAMS, &*WATCHERS, &*WATCH_EVENTS_SENT, &*WATCH_RESYNCS);
    let _ = (&*RANGE_STREAMS, &*RANGE_STREAM_CHUNKS);
    let _ = (&*READ_MEMORY_BUDGET, &*READ_MEMORY_IN_USE, &*READ_MEMORY_WAITS);
    let _ = (
        &*SNAPSHOT_SEND_SUCCESS,
        &*SNAPSHOT_SEND_FAILURES,
        &*SNAPSHOT_SEND_INFLIGHTS,
        &*SNAPSHOT_SEND_SECONDS,
        &*SNAPSHOT_RECEIVE_SUCCESS,
        &*SNAPSHOT_RECEIVE_FAILURES,
        &*SNAPSHOT_RECEIVE_SECONDS,
    );
    for reason in ["too_large", "busy"] {
        let _ = READ_MEMORY_REFUSED.with_label_values(&[reason]);
    }
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode_utf8(&REGISTRY.gather(), &mut out).is_err() {
        out.clear();
    }
    out.push_str(&process_metrics());
    out
}

/// The standard `process_*` metrics (as every Prometheus client library exports them,
/// etcd included; `etcdctl check datascale` reads `process_resident_memory_bytes`), from
/// `/proc/self`. Empty where `/proc` is not there.
fn process_metrics() -> String {
    // /proc counts CPU time and start time in USER_HZ, 100 on Linux.
    const TICKS: f64 = 100.0;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    if let Some(rss) = kib("VmRSS:") {
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss);
    }
    if let Some(virt) = kib("VmSize:") {
        metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virt);
    }
    // Fields after the command name (which may hold spaces) in /proc/self/stat: utime is
    // the 14th field, stime the 15th, starttime the 22nd.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) / TICKS,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start / TICKS,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric("process_open_fds", "gauge", "Number of open file descriptors.", fds.count() as f64);
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
    });
    if let Some(max) = max_fds {
        metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", max);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn alarm_gauges_follow_the_cluster_alarm_list() {
        let raised = |alarm: &str| super::ALARM_ACTIVE.with_label_values(&[alarm]).get();
        super::publish_alarms(|a| a == "NOSPACE");
        assert_eq!((raised("NOSPACE"), raised("CORRUPT")), (1, 0));
        super::publish_alarms(|a| a == "CORRUPT");
        assert_eq!((raised("NOSPACE"), raised("CORRUPT")), (0, 1));
        super::publish_alarms(|_| false);
        assert_eq!((raised("NOSPACE"), raised("CORRUPT")), (0, 0));
        let text = super::render();
        assert!(text.contains("netsy_alarm_active{alarm=\"NOSPACE\"} 0"), "{text}");
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = super::render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        let rss = value("process_resident_memory_bytes");
        assert!(rss > 1024.0 * 1024.0 && rss < 1e12, "{rss}");
        assert!(value("process_virtual_memory_bytes") >= rss);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 86_400.0, "{started} vs {now}");
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
