//! Prometheus metrics, with etcd's names where etcd has the same metric.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

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
pub static PROPOSALS_FAILED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen."));
pub static PROPOSAL_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new("netsy_proposal_duration_seconds", "Time from proposal to applied result.")
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
    )
    .expect("valid metric");
    let _ = REGISTRY.register(Box::new(h.clone()));
    h
});

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
    );
    let _ = (&*PROPOSALS_COMMITTED, &*PROPOSALS_FAILED, &*PROPOSAL_DURATION);
    let _ = (&*WATCH_STREAMS, &*WATCHERS, &*WATCH_EVENTS_SENT, &*WATCH_RESYNCS);
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode_utf8(&REGISTRY.gather(), &mut out).is_err() {
        out.clear();
    }
    out
}
