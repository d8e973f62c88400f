//! `netsy-bench scale` (behind `make bench-scale`): a 3-member netsy cluster over a
//! local-directory object store is loaded with `keys` incompressible values through the
//! etcd API; then, under a steady background load of puts and linearizable gets, each
//! maintenance step runs in turn (compaction, defragmentation, a local Raft snapshot, an
//! archive snapshot upload, a wiped member rejoining, a full restore from object
//! storage). Every step is compared with the `window` of background load just before it;
//! the members' RSS, the data directories' and the object store's disk use are sampled
//! throughout. Writes `scale.md` and `scale.json`.

use std::io::{BufRead, Seek};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netsy::proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, CompactionRequest, DefragmentRequest, PutRequest, RangeRequest,
};
use rand::RngCore;
use serde::Serialize;

use super::s3cost::http;
use super::suite::{disk_usage, free_port, rss};
use super::{connect, BenchError, Options, Summary};

const GIB: u64 = 1 << 30;
/// Disk needed per logical byte, measured: 100,000 × 10 KiB (0.98 GiB) took 35 GB at its
/// peak (data directories of 8–13 GB each after the wiped member rejoined, 2.2 GB of
/// objects, before the restored copy), so 36.
pub const DISK_FACTOR: u64 = 36;
/// Kept free for everything else on the disk.
pub const DISK_HEADROOM: u64 = 5 * GIB;

#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub netsy_bin: PathBuf,
    pub out_dir: PathBuf,
    /// Where the members' data directories and the object store go.
    pub work_dir: PathBuf,
    pub keys: usize,
    pub value_size: usize,
    /// Background writers (1 KiB puts) and readers (linearizable 1-key gets).
    pub writers: usize,
    pub readers: usize,
    /// Background load measured before each step.
    pub window: Duration,
    /// `raft.snapshot_log_entries` of the cluster.
    pub raft_snapshot_entries: u64,
    /// `archive.snapshot_max_age` of the cluster (the only archive snapshot trigger).
    pub archive_snapshot_age: Duration,
    /// How long a step waits for a threshold-driven snapshot.
    pub event_timeout: Duration,
    /// A smaller run's `scale.json`, for a two-size extrapolation.
    pub baseline: Option<PathBuf>,
    /// What to print as the command in the report.
    pub command: String,
    pub commit: String,
}

/// How many keys of `value_size` fit: `requested`, or fewer when `free` bytes of disk
/// cannot hold `DISK_FACTOR` times their logical size plus the headroom.
pub fn fit_keys(requested: usize, value_size: usize, free: u64) -> usize {
    // The overwritten keys' first values stay until the compaction.
    let per_key = (value_size.max(1) as u64) * DISK_FACTOR * (OVERWRITE_EVERY as u64 + 1) / OVERWRITE_EVERY as u64;
    let fits = free.saturating_sub(DISK_HEADROOM) / per_key;
    requested.min(fits as usize)
}

/// Free bytes of the filesystem holding `dir` (`df`).
fn free_disk(dir: &Path) -> Result<u64, BenchError> {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| BenchError::Setup(format!("cannot read the free space of {} from df", dir.display())))
}

// ---------------------------------------------------------------------------------------
// The report

/// Background load over one time window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Load {
    /// Puts and gets together.
    pub all: Summary,
    pub puts: Summary,
    pub gets: Summary,
    /// Requests that failed (after the retries an etcd client makes by itself).
    pub failures: usize,
    /// Requests that succeeded on another member after a connection failure.
    pub retried: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepRow {
    pub step: String,
    pub seconds: f64,
    /// What the step did (e.g. revisions compacted, members defragmented).
    pub detail: String,
    pub before: Load,
    pub during: Load,
    /// during.p99 / before.p99 (target ≤ 2).
    pub p99_ratio: f64,
    /// Highest VmRSS per member in the step, bytes.
    pub peak_rss: Vec<u64>,
    /// Data directory sizes per member and the object store at the step's end, bytes.
    pub disk: Vec<u64>,
    pub objects: u64,
    /// Snapshot events (local Raft, archive) seen during the step.
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub command: String,
    pub commit: String,
    pub cpus: usize,
    pub keys_requested: usize,
    pub keys: usize,
    pub value_size: usize,
    pub logical_bytes: u64,
    pub free_disk_bytes: u64,
    pub load_seconds: f64,
    pub load_puts_per_second: f64,
    pub load_errors: usize,
    pub load_peak_rss: Vec<u64>,
    pub load_disk: Vec<u64>,
    pub load_objects: u64,
    pub steps: Vec<StepRow>,
    /// Highest VmHWM per member over the whole run (a wiped member's is of its last
    /// incarnation), and of the restore process.
    pub peak_hwm: Vec<u64>,
    pub restore_peak_rss: u64,
    pub restored_bytes: u64,
    pub raft_snapshot_entries: u64,
    pub archive_snapshot_age_seconds: u64,
    /// The projection to 50 GiB (from this run and a smaller one when given).
    pub extrapolation: Vec<Projection>,
    /// The logical size of the smaller run the projection also uses, if any.
    pub baseline_logical_bytes: Option<u64>,
}

/// One measured quantity at one or two sizes, and where it goes at `TARGET_BYTES`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Projection {
    pub what: String,
    pub unit: String,
    /// (logical bytes, value) measured.
    pub points: Vec<(u64, f64)>,
    pub at_target: f64,
}

pub const TARGET_BYTES: u64 = 50 * GIB;

/// Projects `points` to `TARGET_BYTES`: linear through two sizes (a + b·size, floored at
/// the larger measurement), or proportional to the size from one.
pub fn project(points: &[(u64, f64)]) -> f64 {
    let t = TARGET_BYTES as f64;
    match points {
        [] => 0.0,
        [(x, y)] => y * t / (*x).max(1) as f64,
        [(x0, y0), (x1, y1), ..] => {
            let (x0, x1) = (*x0 as f64, *x1 as f64);
            if (x1 - x0).abs() < 1.0 {
                return y1 * t / x1.max(1.0);
            }
            let slope = (y1 - y0) / (x1 - x0);
            (y1 + slope * (t - x1)).max(*y1)
        }
    }
}

/// The quantities projected, from this run (`large`) and optionally a smaller run's
/// `scale.json` (`small`).
pub fn extrapolation(large: &ScaleReport, small: Option<&serde_json::Value>) -> Vec<Projection> {
    let mut rows: Vec<(String, String, f64, Option<f64>)> = Vec::new();
    let num = |v: &serde_json::Value| v.as_f64();
    let max_of = |v: &serde_json::Value| v.as_array().and_then(|a| a.iter().filter_map(|x| x.as_f64()).reduce(f64::max));
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let small_f = |key: &str| small.and_then(|s| num(&s[key]));
    rows.push(("load".into(), "s".into(), large.load_seconds, small_f("load_seconds")));
    rows.push((
        "data directory after the load (largest member)".into(),
        "MiB".into(),
        mb(large.load_disk.iter().copied().max().unwrap_or(0)),
        small.and_then(|s| max_of(&s["load_disk"])).map(|b| b / (1 << 20) as f64),
    ));
    rows.push((
        "object store after the load".into(),
        "MiB".into(),
        mb(large.load_objects),
        small_f("load_objects").map(|b| b / (1 << 20) as f64),
    ));
    for step in &large.steps {
        let other = small.and_then(|s| {
            s["steps"]
                .as_array()?
                .iter()
                .find(|o| o["step"].as_str() == Some(step.step.as_str()))
                .cloned()
        });
        rows.push((
            format!("{}: duration", step.step),
            "s".into(),
            step.seconds,
            other.as_ref().and_then(|o| num(&o["seconds"])),
        ));
        rows.push((
            format!("{}: peak RSS (largest member)", step.step),
            "MiB".into(),
            mb(step.peak_rss.iter().copied().max().unwrap_or(0)),
            other.as_ref().and_then(|o| max_of(&o["peak_rss"])).map(|b| b / (1 << 20) as f64),
        ));
    }
    rows.push((
        "restore process peak RSS".into(),
        "MiB".into(),
        mb(large.restore_peak_rss),
        small_f("restore_peak_rss").map(|b| b / (1 << 20) as f64),
    ));
    let small_bytes = small.and_then(|s| s["logical_bytes"].as_u64());
    rows.into_iter()
        .map(|(what, unit, y, y_small)| {
            let mut points = Vec::new();
            if let (Some(x), Some(y0)) = (small_bytes, y_small) {
                points.push((x, y0));
            }
            points.push((large.logical_bytes, y));
            Projection {
                what,
                unit,
                at_target: project(&points),
                points,
            }
        })
        .collect()
}

/// One background request, as recorded: when it finished (ms since the start), how long
/// it took (µs), whether a put, and its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub at_ms: u32,
    pub micros: u32,
    pub put: bool,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Retried,
    Failed,
}

/// The background load in `[from_ms, to_ms)`: the latencies and outcomes of every
/// request that was in flight at some time in it (a request stalled by a step counts
/// in the step even if it finishes after it), the throughput from the requests that
/// finished in it.
pub fn window_load(recs: &[Rec], from_ms: u32, to_ms: u32) -> Load {
    let secs = Duration::from_millis(u64::from(to_ms.saturating_sub(from_ms)));
    let mut all = Vec::new();
    let (mut puts, mut gets) = (Vec::new(), Vec::new());
    let (mut failures, mut retried) = (0, 0);
    let (mut put_fail, mut get_fail) = (0, 0);
    let finished = |r: &&Rec| r.at_ms >= from_ms && r.at_ms < to_ms;
    let (n_all, n_put) = (
        recs.iter().filter(finished).filter(|r| r.outcome != Outcome::Failed).count(),
        recs.iter()
            .filter(finished)
            .filter(|r| r.put && r.outcome != Outcome::Failed)
            .count(),
    );
    let started_ms = |r: &Rec| r.at_ms.saturating_sub(r.micros / 1000);
    for r in recs.iter().filter(|r| r.at_ms >= from_ms && started_ms(r) < to_ms) {
        match r.outcome {
            Outcome::Failed => {
                failures += 1;
                if r.put {
                    put_fail += 1;
                } else {
                    get_fail += 1;
                }
                continue;
            }
            Outcome::Retried => retried += 1,
            Outcome::Ok => {}
        }
        let d = Duration::from_micros(u64::from(r.micros));
        all.push(d);
        if r.put {
            puts.push(d);
        } else {
            gets.push(d);
        }
    }
    let rate = |n: usize| if secs.is_zero() { 0.0 } else { n as f64 / secs.as_secs_f64() };
    let mut load = Load {
        all: Summary::new("background", all, failures, secs),
        puts: Summary::new("put 1 KiB", puts, put_fail, secs),
        gets: Summary::new("get 1 key, linearizable", gets, get_fail, secs),
        failures,
        retried,
    };
    load.all.per_second = rate(n_all);
    load.puts.per_second = rate(n_put);
    load.gets.per_second = rate(n_all - n_put);
    load
}

pub fn p99_ratio(before: &Load, during: &Load) -> f64 {
    if before.all.p99 > 0.0 {
        during.all.p99 / before.all.p99
    } else {
        0.0
    }
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1 << 20) as f64)
}

fn list_mib(v: &[u64]) -> String {
    v.iter().map(|b| mib(*b)).collect::<Vec<_>>().join(" / ")
}

/// The markdown report.
pub fn markdown(r: &ScaleReport) -> String {
    let mut out = String::new();
    out += "# Scale bench: a large keyspace under maintenance\n\n";
    out += &format!(
        "Command: `{}` at commit {} ({} CPUs). 3 members on loopback, object store: the `file` provider on the same local disk.\n\n",
        r.command, r.commit, r.cpus
    );
    let logical_gib = r.logical_bytes as f64 / GIB as f64;
    out += &format!(
        "Loaded {} keys × {} B of incompressible values = {:.2} GiB logical through the etcd API, then overwrote every {OVERWRITE_EVERY}th key with a new value (history for the compaction to delete), {} puts in {:.0} s ({:.0} puts/s, {} errors).",
        r.keys,
        r.value_size,
        logical_gib,
        load_puts(r.keys),
        r.load_seconds,
        r.load_puts_per_second,
        r.load_errors
    );
    if r.keys < r.keys_requested {
        out += &format!(
            " **Scaled down** from {} keys: {:.1} GiB free, and the run needs about {}× the logical size (measured) plus {} GiB headroom ({:.1}% of the requested size).",
            r.keys_requested,
            r.free_disk_bytes as f64 / GIB as f64,
            DISK_FACTOR,
            DISK_HEADROOM / GIB,
            100.0 * r.keys as f64 / r.keys_requested.max(1) as f64
        );
    }
    out += &format!(
        "\nAfter the load: data directories {} MiB, object store {} MiB; peak RSS during the load {} MiB.\n\n",
        list_mib(&r.load_disk),
        mib(r.load_objects),
        list_mib(&r.load_peak_rss)
    );
    out += &format!(
        "Triggers: compaction by the Compact RPC (physical), defragmentation by the Maintenance Defragment RPC on each member in turn, \
         the local Raft snapshot by `raft.snapshot_log_entries` = {} (waited for; seen as `snapshots/building.db` → `built raft snapshot`), \
         the archive snapshot by `archive.snapshot_max_age` = {} s (waited for; `uploading snapshot` → `snapshot uploaded`), \
         the wiped member: a follower killed, its data directory deleted, restarted, timed until its applied index reaches the leader's; \
         the restore: `netsy snapshot restore --config … --data-dir` into a fresh directory beside the running cluster.\n\n",
        r.raft_snapshot_entries, r.archive_snapshot_age_seconds
    );
    out += "Background load throughout: 1 KiB puts and linearizable 1-key gets, closed loops spread over all members. \
            Each step is compared with the window of background load just before it. A request counts as *failed* if it returned an error, \
            or took over 10 s. Retried on the next member, as etcd's client does by itself, and then counted as *retried* (its latency \
            includes the retry): a get that failed with Unavailable or whose connection broke, and any request that never left the client \
            (no connection could be made, or it closed before the request was sent: gRPC's transparent retry). \
            A put whose connection broke in flight is failed (it may have been applied; etcd's client does not repeat it either). \
            The wiped member is stopped with SIGTERM (graceful), then SIGKILL after 20 s.\n\n";
    out += "| step | duration s | detail | p50 ms before → during | p99 ms before → during | max ms before → during | req/s before → during | p99 ratio (≤ 2) | failed / retried | peak RSS MiB per member | disk MiB per member, objects | snapshot events during |\n";
    out += "|---|---:|---|---|---|---|---|---:|---|---|---|---|\n";
    for s in &r.steps {
        out +=
            &format!(
            "| {} | {:.1} | {} | {:.2} → {:.2} | {:.2} → {:.2} | {:.0} → {:.0} | {:.0} → {:.0} | {:.2}{} | {} / {} | {} | {}, {} | {} |\n",
            s.step,
            s.seconds,
            s.detail,
            s.before.all.p50,
            s.during.all.p50,
            s.before.all.p99,
            s.during.all.p99,
            s.before.all.max,
            s.during.all.max,
            s.before.all.per_second,
            s.during.all.per_second,
            s.p99_ratio,
            if s.p99_ratio > 2.0 { " ✗" } else { " ✓" },
            s.during.failures,
            s.during.retried,
            list_mib(&s.peak_rss),
            list_mib(&s.disk),
            mib(s.objects),
            if s.events.is_empty() { "–".to_string() } else { s.events.join("; ") }
        );
    }
    out += "\nPuts and gets separately (p99 ms before → during):\n\n| step | put p99 | get p99 |\n|---|---|---|\n";
    for s in &r.steps {
        out += &format!(
            "| {} | {:.2} → {:.2} | {:.2} → {:.2} |\n",
            s.step, s.before.puts.p99, s.during.puts.p99, s.before.gets.p99, s.during.gets.p99
        );
    }
    out += &format!(
        "\nPeak VmHWM per member over the run: {} MiB; the restore process: {} MiB. Restored directory: {} MiB.\n",
        list_mib(&r.peak_hwm),
        mib(r.restore_peak_rss),
        mib(r.restored_bytes)
    );
    out += &format!("\n## Extrapolation to {} GiB\n\n", TARGET_BYTES / GIB);
    out += &match r.baseline_logical_bytes {
        Some(b) => format!(
            "Linear through the two measured sizes ({:.2} GiB and {:.2} GiB; never below the larger measurement). \
             Durations on this 2-core machine, shared with other work while it ran.\n\n",
            b as f64 / GIB as f64,
            r.logical_bytes as f64 / GIB as f64
        ),
        None => "Proportional to the size, from this run alone (one size measured).\n\n".to_string(),
    };
    out += "| quantity | measured | at 50 GiB |\n|---|---|---:|\n";
    for p in &r.extrapolation {
        let measured = p
            .points
            .iter()
            .map(|(x, y)| format!("{:.0} {} at {:.2} GiB", y, p.unit, *x as f64 / GIB as f64))
            .collect::<Vec<_>>()
            .join(", ");
        out += &format!("| {} | {} | {:.0} {} |\n", p.what, measured, p.at_target, p.unit);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The cluster

struct Member {
    node_id: String,
    envs: Vec<(String, String)>,
    config: PathBuf,
    bin: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    endpoint: String,
    health: SocketAddr,
    data_dir: PathBuf,
}

/// Log targets whose lines mark snapshot events.
const RUST_LOG: &str = "warn,netsy::raft::state_machine=info,netsy::archive::snapshot=info";

impl Member {
    fn spawn(&mut self) -> Result<(), BenchError> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", RUST_LOG)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", self.bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM (netsy's graceful stop: in-flight requests finish, clients are told to go
    /// elsewhere), then SIGKILL after 20 s.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = http(self.health, b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_ready(endpoint: &str, within: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + within;
    loop {
        let probe = async {
            let ch = connect(&Options::one(endpoint)).await?;
            KvClient::new(ch[0].clone())
                .range(RangeRequest {
                    key: b"scale-probe".to_vec(),
                    ..Default::default()
                })
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("{endpoint} did not become ready within {within:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_config(opts: &ScaleOptions, path: &Path, objects: &Path) -> Result<(), BenchError> {
    let text = format!(
        r#"{{ "cluster_id": "scale",
  "storage": {{ "provider": "file", "path": "{}" }},
  "limits": {{ "quota_backend_bytes": {} }},
  "archive": {{ "snapshot_entries": 1000000000000, "snapshot_bytes": 1125899906842624, "snapshot_max_age": "{}s",
                "snapshots_to_keep": 1, "history": "0s" }},
  "raft": {{ "snapshot_log_entries": {} }} }}"#,
        objects.display(),
        256 * GIB,
        opts.archive_snapshot_age.as_secs().max(1),
        opts.raft_snapshot_entries
    );
    std::fs::write(path, text)?;
    Ok(())
}

async fn start_cluster(opts: &ScaleOptions, config: &Path) -> Result<Vec<Member>, BenchError> {
    let mut members = Vec::new();
    for i in 0..3 {
        let (client, peer, health) = (free_port()?, free_port()?, free_port()?);
        let data_dir = opts.work_dir.join(format!("netsy{i}"));
        let node_id = format!("netsy-{i}");
        let envs = vec![
            ("NETSY_NODE_ID".to_string(), node_id.clone()),
            ("NETSY_DATA_DIR".to_string(), data_dir.display().to_string()),
            ("NETSY_BIND_CLIENT".to_string(), format!("127.0.0.1:{client}")),
            ("NETSY_BIND_PEER".to_string(), format!("127.0.0.1:{peer}")),
            ("NETSY_BIND_HEALTH".to_string(), format!("127.0.0.1:{health}")),
            ("NETSY_ADVERTISE_CLIENT".to_string(), format!("http://127.0.0.1:{client}")),
            ("NETSY_ADVERTISE_PEER".to_string(), format!("http://127.0.0.1:{peer}")),
        ];
        let mut m = Member {
            node_id,
            envs,
            config: config.to_path_buf(),
            bin: opts.netsy_bin.clone(),
            log: opts.work_dir.join(format!("netsy{i}.log")),
            child: None,
            endpoint: format!("127.0.0.1:{client}"),
            health: ([127, 0, 0, 1], health).into(),
            data_dir,
        };
        m.spawn()?;
        wait_ready(&m.endpoint, Duration::from_secs(120)).await?;
        members.push(m);
    }
    Ok(members)
}

// ---------------------------------------------------------------------------------------
// Sampling: RSS, disk, snapshot events

#[derive(Debug, Clone, Default)]
struct Sample {
    at_ms: u32,
    rss: Vec<u64>,
    hwm: Vec<u64>,
    disk: Vec<u64>,
    objects: u64,
}

#[derive(Debug, Clone)]
struct Event {
    at_ms: u32,
    member: usize,
    what: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    RaftBuilding,
    RaftBuilt,
    RaftInstalling,
    ArchiveCopying,
    ArchiveUploading,
    ArchiveUploaded,
}

impl EventKind {
    fn label(self) -> &'static str {
        match self {
            EventKind::RaftBuilding => "raft snapshot building",
            EventKind::RaftBuilt => "raft snapshot built",
            EventKind::RaftInstalling => "raft snapshot installing",
            EventKind::ArchiveCopying => "archive snapshot copying",
            EventKind::ArchiveUploading => "archive snapshot uploading",
            EventKind::ArchiveUploaded => "archive snapshot uploaded",
        }
    }
}

/// What the sampler watches: per slot (3 members, then the restore process) a pid and a
/// directory.
struct Watched {
    pids: Mutex<Vec<Option<u32>>>,
    dirs: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    objects: PathBuf,
    samples: Mutex<Vec<Sample>>,
    events: Mutex<Vec<Event>>,
    stop: AtomicBool,
}

fn ms_since(t0: Instant) -> u32 {
    t0.elapsed().as_millis().min(u128::from(u32::MAX)) as u32
}

/// Polls snapshot files and log lines every 100 ms, RSS every 250 ms, disk every 2 s.
fn spawn_sampler(w: Arc<Watched>, t0: Instant) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let slots = w.dirs.len();
        let mut building = vec![false; slots];
        let mut copying = vec![false; slots];
        let mut log_pos = vec![0u64; w.logs.len()];
        let mut disk = vec![0u64; slots];
        let mut objects = 0;
        let mut tick = 0u64;
        while !w.stop.load(Ordering::Relaxed) {
            let at_ms = ms_since(t0);
            let mut events = Vec::new();
            for i in 0..w.logs.len() {
                let snaps = w.dirs[i].join("snapshots");
                let b = snaps.join("building.db").exists();
                if b && !building[i] {
                    events.push(Event {
                        at_ms,
                        member: i,
                        what: EventKind::RaftBuilding,
                    });
                }
                building[i] = b;
                let c = snaps.join("archive-copy.db").exists();
                if c && !copying[i] {
                    events.push(Event {
                        at_ms,
                        member: i,
                        what: EventKind::ArchiveCopying,
                    });
                }
                copying[i] = c;
                for line in new_lines(&w.logs[i], &mut log_pos[i]) {
                    let what = if line.contains("built raft snapshot") {
                        EventKind::RaftBuilt
                    } else if line.contains("installing raft snapshot") {
                        EventKind::RaftInstalling
                    } else if line.contains("uploading snapshot") {
                        EventKind::ArchiveUploading
                    } else if line.contains("snapshot uploaded") {
                        EventKind::ArchiveUploaded
                    } else {
                        continue;
                    };
                    events.push(Event { at_ms, member: i, what });
                }
            }
            if !events.is_empty() {
                if let Ok(mut e) = w.events.lock() {
                    e.extend(events);
                }
            }
            if tick.is_multiple_of(20) {
                for (i, d) in w.dirs.iter().enumerate() {
                    disk[i] = disk_usage(d);
                }
                objects = disk_usage(&w.objects);
            }
            if tick.is_multiple_of(3) {
                let pids = w.pids.lock().map(|p| p.clone()).unwrap_or_default();
                let (rss_now, hwm): (Vec<u64>, Vec<u64>) = pids.iter().map(|p| p.map_or((0, 0), rss)).unzip();
                if let Ok(mut s) = w.samples.lock() {
                    s.push(Sample {
                        at_ms,
                        rss: rss_now,
                        hwm,
                        disk: disk.clone(),
                        objects,
                    });
                }
            }
            tick += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Complete lines appended to `path` since `pos`.
fn new_lines(path: &Path, pos: &mut u64) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *pos {
        *pos = 0;
    }
    if len == *pos || f.seek(std::io::SeekFrom::Start(*pos)).is_err() {
        return vec![];
    }
    let mut out = Vec::new();
    let mut reader = std::io::BufReader::new(f);
    let mut line = String::new();
    while let Ok(n) = reader.read_line(&mut line) {
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        *pos += n as u64;
        out.push(std::mem::take(&mut line));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The background load

struct Background {
    recs: Arc<Mutex<Vec<Rec>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Whether an etcd client would retry this on another member by itself: a request that
/// never left the client (no connection could be made, or the connection closed before
/// it was sent: gRPC's transparent retry), or, for an idempotent read, any Unavailable and
/// a connection broken in flight. A broken connection is Unavailable in Go's gRPC and
/// Unknown "transport error" in tonic's; a request tonic's connection closed before
/// sending it is `Cancelled`, from hyper's "canceled".
fn retriable(status: &tonic::Status, put: bool) -> bool {
    if netsy_testkit::never_sent(status) {
        return true;
    }
    let m = status.message().to_ascii_lowercase();
    let broken = match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => m.contains("transport error"),
        _ => false,
    };
    broken && (!put || m.contains("connect") || m.contains("connection refused"))
}

async fn start_background(endpoints: &[String], writers: usize, readers: usize, t0: Instant) -> Result<Background, BenchError> {
    let opts = Options {
        endpoints: endpoints.to_vec(),
        clients: 1,
        conns: endpoints.len(),
        total: 0,
    };
    let channels = Arc::new(connect(&opts).await?);
    let recs = Arc::new(Mutex::new(Vec::<Rec>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let failures_logged = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..writers + readers {
        let put = c < writers;
        let (channels, recs, stop, logged) = (channels.clone(), recs.clone(), stop.clone(), failures_logged.clone());
        tasks.push(tokio::spawn(async move {
            let mut ep = c % channels.len();
            let mut value = vec![0u8; 1024];
            let mut seq = 0usize;
            while !stop.load(Ordering::Relaxed) {
                rand::rng().fill_bytes(&mut value);
                let key = if put {
                    format!("/scale/bg/{c:02}/{:04}", seq % 1000).into_bytes()
                } else {
                    format!("/scale/bg/{:02}/0000", c % writers.max(1)).into_bytes()
                };
                seq += 1;
                let started = Instant::now();
                let mut retried = false;
                let outcome = loop {
                    let mut kv = KvClient::new(channels[ep].clone());
                    let call = async {
                        if put {
                            kv.put(PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                        } else {
                            kv.range(RangeRequest {
                                key: key.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                        }
                    };
                    let left = Duration::from_secs(10).saturating_sub(started.elapsed());
                    match tokio::time::timeout(left, call).await {
                        Ok(Ok(())) => break if retried { Outcome::Retried } else { Outcome::Ok },
                        Ok(Err(s)) if retriable(&s, put) && started.elapsed() < Duration::from_secs(10) => {
                            retried = true;
                            ep = (ep + 1) % channels.len();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Ok(Err(s)) => {
                            if logged.fetch_add(1, Ordering::Relaxed) < 20 {
                                tracing::warn!(put, code = ?s.code(), message = s.message(), "background request failed");
                            }
                            break Outcome::Failed;
                        }
                        Err(_) => {
                            if logged.fetch_add(1, Ordering::Relaxed) < 20 {
                                tracing::warn!(put, "background request took over 10 s");
                            }
                            break Outcome::Failed;
                        }
                    }
                };
                let rec = Rec {
                    at_ms: ms_since(t0),
                    micros: started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
                    put,
                    outcome,
                };
                if let Ok(mut r) = recs.lock() {
                    r.push(rec);
                }
            }
        }));
    }
    Ok(Background { recs, stop, tasks })
}

// ---------------------------------------------------------------------------------------
// The run

/// Every `OVERWRITE_EVERY`th key is written a second time after the load, with a new
/// value, so that the compaction has that much history to delete and the
/// defragmentation that much space to give back.
const OVERWRITE_EVERY: usize = 4;

/// The puts of the load: every key once, then every `OVERWRITE_EVERY`th key again.
fn load_puts(keys: usize) -> usize {
    keys + keys.div_ceil(OVERWRITE_EVERY)
}

/// The key the `n`th put of the load writes.
fn load_key(n: usize, keys: usize) -> usize {
    if n < keys {
        n
    } else {
        (n - keys) * OVERWRITE_EVERY
    }
}

async fn load(endpoints: &[String], keys: usize, value_size: usize) -> Result<(f64, usize), BenchError> {
    let opts = Options {
        endpoints: endpoints.to_vec(),
        clients: 1,
        conns: endpoints.len() * 2,
        total: 0,
    };
    let channels = connect(&opts).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let (next, errors) = (next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut value = vec![0u8; value_size];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= load_puts(keys) {
                    return;
                }
                if n > 0 && n.is_multiple_of(10_000) {
                    tracing::info!(puts = n, "loading");
                }
                rand::rng().fill_bytes(&mut value);
                let req = PutRequest {
                    key: format!("/scale/data/{:010}", load_key(n, keys)).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                };
                // A put that fails is tried again (the load is set-up, not measured).
                let mut tries = 0;
                while let Err(e) = kv.put(req.clone()).await {
                    tries += 1;
                    if tries == 1 {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "load put failed; retrying");
                    }
                    if tries > 20 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    Ok((started.elapsed().as_secs_f64(), errors.load(Ordering::Relaxed)))
}

async fn leader_index(members: &[Member]) -> Option<usize> {
    for (i, m) in members.iter().enumerate() {
        if m.child.is_some() && m.metric("etcd_server_is_leader").await == Some(1.0) {
            return Some(i);
        }
    }
    None
}

/// Waits for the first `until` event after `from_ms`; returns (start, end) in ms of the
/// matching start/end events, or an error on timeout.
async fn wait_event(
    w: &Watched,
    t0: Instant,
    from_ms: u32,
    starts: &[EventKind],
    end: EventKind,
    timeout: Duration,
) -> Result<(u32, u32, usize), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = {
            let events = w.events.lock().map(|e| e.clone()).unwrap_or_default();
            operation_after(&events, from_ms, starts, end)
        };
        if let Some(f) = found {
            return Ok(f);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "no {} within {timeout:?} (at {} s)",
                end.label(),
                ms_since(t0) / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first operation that both started and ended at or after `from_ms`: (start, end,
/// member). Its start is the member's latest `starts` event before its `end` event (an
/// operation already under way at `from_ms` is skipped: its window would miss its
/// beginning); an end whose start was not seen counts from the end.
fn operation_after(events: &[Event], from_ms: u32, starts: &[EventKind], end: EventKind) -> Option<(u32, u32, usize)> {
    events.iter().filter(|e| e.at_ms >= from_ms && e.what == end).find_map(|done| {
        let start = events
            .iter()
            .filter(|e| e.member == done.member && e.at_ms <= done.at_ms && starts.contains(&e.what))
            .map(|e| e.at_ms)
            .max()
            .unwrap_or(done.at_ms);
        (start >= from_ms).then_some((start, done.at_ms, done.member))
    })
}

struct Runner {
    t0: Instant,
    watched: Arc<Watched>,
    bg: Background,
    window: Duration,
    steps: Vec<StepRow>,
}

impl Runner {
    /// Lets the background run `window` alone; returns the window's start.
    async fn before(&self) -> (u32, u32) {
        let from = ms_since(self.t0);
        tokio::time::sleep(self.window).await;
        (from, ms_since(self.t0))
    }

    fn record(&mut self, name: &str, before: (u32, u32), during: (u32, u32), detail: String) {
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(300)));
        let recs = self.bg.recs.lock().map(|r| r.clone()).unwrap_or_default();
        let before_load = window_load(&recs, before.0, before.1);
        let during_load = window_load(&recs, during.0, during.1.max(during.0 + 1));
        let samples = self.watched.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let in_step: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at_ms >= during.0 && s.at_ms <= during.1 + 2000)
            .collect();
        let peak_rss = (0..3)
            .map(|i| in_step.iter().map(|s| s.rss.get(i).copied().unwrap_or(0)).max().unwrap_or(0))
            .collect();
        let last = samples.last().cloned().unwrap_or_default();
        let events = self
            .watched
            .events
            .lock()
            .map(|e| {
                e.iter()
                    .filter(|e| e.at_ms >= during.0 && e.at_ms <= during.1)
                    .filter(|e| {
                        matches!(
                            e.what,
                            EventKind::RaftBuilt | EventKind::ArchiveUploaded | EventKind::RaftInstalling
                        )
                    })
                    .map(|e| {
                        format!(
                            "{} (member {}, +{:.1} s)",
                            e.what.label(),
                            e.member,
                            f64::from(e.at_ms - during.0) / 1000.0
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let row = StepRow {
            step: name.to_string(),
            seconds: f64::from(during.1 - during.0) / 1000.0,
            detail,
            p99_ratio: p99_ratio(&before_load, &during_load),
            before: before_load,
            during: during_load,
            peak_rss,
            disk: last.disk.iter().take(3).copied().collect(),
            objects: last.objects,
            events,
        };
        tracing::info!(
            step = name,
            seconds = row.seconds,
            p99_before = row.before.all.p99,
            p99_during = row.during.all.p99,
            failures = row.during.failures,
            "step done"
        );
        self.steps.push(row);
    }
}

pub async fn run_scale(opts: &ScaleOptions) -> Result<ScaleReport, BenchError> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let free = free_disk(&opts.work_dir)?;
    let keys = fit_keys(opts.keys, opts.value_size, free);
    if keys == 0 {
        return Err(BenchError::Setup(format!(
            "{} has {free} bytes free: not enough for even one key",
            opts.work_dir.display()
        )));
    }
    if keys < opts.keys {
        tracing::warn!(
            requested = opts.keys,
            keys,
            free_gib = free / GIB,
            "scaled the key count down to fit the disk"
        );
    }
    let objects = opts.work_dir.join("objects");
    let config = opts.work_dir.join("netsy.jsonc");
    write_config(opts, &config, &objects)?;
    let mut members = start_cluster(opts, &config).await?;
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let t0 = Instant::now();
    let restore_dir = opts.work_dir.join("restored");
    let mut dirs: Vec<PathBuf> = members.iter().map(|m| m.data_dir.clone()).collect();
    dirs.push(restore_dir.clone());
    let watched = Arc::new(Watched {
        pids: Mutex::new(members.iter().map(Member::pid).chain([None]).collect()),
        dirs,
        logs: members.iter().map(|m| m.log.clone()).collect(),
        objects: objects.clone(),
        samples: Mutex::new(Vec::new()),
        events: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let sampler = spawn_sampler(watched.clone(), t0);

    tracing::info!(keys, value_size = opts.value_size, "loading");
    let load_from = ms_since(t0);
    let (load_seconds, load_errors) = load(&endpoints, keys, opts.value_size).await?;
    let load_to = ms_since(t0);
    tracing::info!(seconds = load_seconds, "loaded");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = watched.samples.lock().map(|s| s.clone()).unwrap_or_default();
    let load_peak_rss = (0..3)
        .map(|i| {
            samples
                .iter()
                .filter(|s| s.at_ms >= load_from && s.at_ms <= load_to)
                .map(|s| s.rss[i])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let after_load = samples.last().cloned().unwrap_or_default();

    let bg = start_background(&endpoints, opts.writers, opts.readers, t0).await?;
    let mut r = Runner {
        t0,
        watched: watched.clone(),
        bg,
        window: opts.window,
        steps: Vec::new(),
    };
    // Warm-up: the first window is not compared with anything.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Compaction of everything written so far.
    let channels = connect(&Options {
        endpoints: endpoints.clone(),
        clients: 1,
        conns: endpoints.len(),
        total: 0,
    })
    .await?;
    let before = r.before().await;
    let from = ms_since(t0);
    let mut kv = KvClient::new(channels[0].clone());
    let head = kv
        .range(RangeRequest {
            key: b"scale-probe".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::Setup(format!("reading the revision: {e}")))?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    kv.compact(CompactionRequest {
        revision: head,
        physical: true,
    })
    .await
    .map_err(|e| BenchError::Setup(format!("compacting to {head}: {e}")))?;
    r.record("compaction", before, (from, ms_since(t0)), format!("to revision {head}"));

    // Defragmentation of every member, one after another.
    let before = r.before().await;
    let from = ms_since(t0);
    let mut each = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let started = Instant::now();
        MaintenanceClient::new(ch.clone())
            .defragment(DefragmentRequest {})
            .await
            .map_err(|e| BenchError::Setup(format!("defragmenting member {i}: {e}")))?;
        each.push(format!("{:.1}", started.elapsed().as_secs_f64()));
    }
    r.record(
        "defragment (3 members in turn)",
        before,
        (from, ms_since(t0)),
        format!("{} s each", each.join(" / ")),
    );

    // A local Raft snapshot, when `raft.snapshot_log_entries` brings one.
    let before = r.before().await;
    let (start, end, member) = wait_event(
        &watched,
        t0,
        before.1,
        &[EventKind::RaftBuilding],
        EventKind::RaftBuilt,
        opts.event_timeout,
    )
    .await?;
    // The other members snapshot at about the same log index: include them.
    let mut last_end = end;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let built: Vec<Event> = watched
            .events
            .lock()
            .map(|e| {
                e.iter()
                    .filter(|e| e.at_ms >= start && e.what == EventKind::RaftBuilt)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut seen: Vec<usize> = built.iter().map(|e| e.member).collect();
        seen.sort_unstable();
        seen.dedup();
        last_end = built.iter().map(|e| e.at_ms).max().unwrap_or(last_end);
        if seen.len() >= 3 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.record(
        "raft snapshot (local, every member)",
        before,
        (start, last_end.max(start + 1)),
        format!("first on member {member}: {:.1} s", f64::from(end - start) / 1000.0),
    );

    // An archive snapshot upload, when `archive.snapshot_max_age` brings one.
    let before = r.before().await;
    let (start, end, member) = wait_event(
        &watched,
        t0,
        before.1,
        &[EventKind::ArchiveCopying, EventKind::ArchiveUploading],
        EventKind::ArchiveUploaded,
        opts.event_timeout,
    )
    .await?;
    r.record(
        "archive snapshot upload",
        before,
        (start, end.max(start + 1)),
        format!("by member {member}"),
    );

    // A follower wiped and rejoined.
    let before = r.before().await;
    let leader = leader_index(&members).await.ok_or_else(|| BenchError::Setup("no leader".into()))?;
    let victim = (leader + 1) % members.len();
    let from = ms_since(t0);
    tokio::task::block_in_place(|| members[victim].stop());
    if let Ok(mut p) = watched.pids.lock() {
        p[victim] = None;
    }
    std::fs::remove_dir_all(&members[victim].data_dir)?;
    members[victim].spawn()?;
    if let Ok(mut p) = watched.pids.lock() {
        p[victim] = members[victim].pid();
    }
    let deadline = Instant::now() + opts.event_timeout;
    let target = members[leader].metric("etcd_server_applied_index").await.unwrap_or(0.0);
    loop {
        if let Some(applied) = members[victim].metric("etcd_server_applied_index").await {
            if applied >= target {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("{} did not catch up", members[victim].node_id)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.record(
        "member wiped and rejoined",
        before,
        (from, ms_since(t0)),
        format!("{} (follower), to applied index {target}", members[victim].node_id),
    );

    // A full restore from object storage into a fresh directory.
    let before = r.before().await;
    let from = ms_since(t0);
    let mut restore = Command::new(&opts.netsy_bin)
        .args(["snapshot", "restore", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&restore_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(opts.work_dir.join("restore.log"))?)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start the restore: {e}")))?;
    if let Ok(mut p) = watched.pids.lock() {
        p[3] = Some(restore.id());
    }
    let status = loop {
        if let Some(s) = restore.try_wait()? {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to = ms_since(t0);
    let restore_hwm = rss(restore.id()).1;
    if let Ok(mut p) = watched.pids.lock() {
        p[3] = None;
    }
    if !status.success() {
        return Err(BenchError::Setup(format!(
            "restore failed ({status}); see {}",
            opts.work_dir.join("restore.log").display()
        )));
    }
    let restored_bytes = disk_usage(&restore_dir);
    r.record(
        "full restore from object storage",
        before,
        (from, to),
        format!("{} MiB restored", mib(restored_bytes)),
    );

    r.bg.stop.store(true, Ordering::Relaxed);
    for t in r.bg.tasks.drain(..) {
        let _ = t.await;
    }
    watched.stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = watched.samples.lock().map(|s| s.clone()).unwrap_or_default();
    let peak_hwm = (0..3).map(|i| samples.iter().map(|s| s.hwm[i]).max().unwrap_or(0)).collect();
    let restore_peak_rss = samples.iter().map(|s| s.rss[3]).max().unwrap_or(0).max(restore_hwm);
    drop(members);

    let baseline = match &opts.baseline {
        Some(p) => Some(
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p)?)
                .map_err(|e| BenchError::Setup(format!("{}: not a scale.json: {e}", p.display())))?,
        ),
        None => None,
    };
    let mut report = ScaleReport {
        command: opts.command.clone(),
        commit: opts.commit.clone(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        keys_requested: opts.keys,
        keys,
        value_size: opts.value_size,
        logical_bytes: keys as u64 * opts.value_size as u64,
        free_disk_bytes: free,
        load_seconds,
        load_puts_per_second: load_puts(keys) as f64 / load_seconds.max(1e-9),
        load_errors,
        load_peak_rss,
        load_disk: after_load.disk.iter().take(3).copied().collect(),
        load_objects: after_load.objects,
        steps: r.steps,
        peak_hwm,
        restore_peak_rss,
        restored_bytes,
        raft_snapshot_entries: opts.raft_snapshot_entries,
        archive_snapshot_age_seconds: opts.archive_snapshot_age.as_secs(),
        extrapolation: Vec::new(),
        baseline_logical_bytes: baseline.as_ref().and_then(|b| b["logical_bytes"].as_u64()),
    };
    report.extrapolation = extrapolation(&report, baseline.as_ref());
    std::fs::create_dir_all(&opts.out_dir)?;
    std::fs::write(opts.out_dir.join("scale.md"), markdown(&report))?;
    std::fs::write(
        opts.out_dir.join("scale.json"),
        serde_json::to_string_pretty(&report).map_err(|e| BenchError::Setup(e.to_string()))?,
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: u32, ms: u32, put: bool, outcome: Outcome) -> Rec {
        Rec {
            at_ms,
            micros: ms * 1000,
            put,
            outcome,
        }
    }

    #[test]
    fn an_operation_under_way_when_the_window_opens_is_skipped() {
        let ev = |at_ms, member, what| Event { at_ms, member, what };
        let (up, done) = (EventKind::ArchiveUploading, EventKind::ArchiveUploaded);
        let events = vec![
            ev(100, 0, up),
            ev(900, 1, up),
            ev(1500, 0, done),
            ev(2000, 1, done),
            ev(3000, 0, up),
            ev(3500, 0, done),
        ];
        assert_eq!(operation_after(&events, 500, &[up], done), Some((900, 2000, 1)));
        assert_eq!(operation_after(&events, 1000, &[up], done), Some((3000, 3500, 0)));
        assert_eq!(
            operation_after(&events, 3200, &[up], done),
            None,
            "under way at 3200: wait for the next"
        );
        assert_eq!(operation_after(&[ev(700, 2, done)], 500, &[up], done), Some((700, 700, 2)));
    }

    #[test]
    fn windows_split_puts_gets_failures_and_retries() {
        let mut recs = Vec::new();
        // Before: 100 requests of 1..=100 ms in [0, 1000).
        for i in 0..100u32 {
            recs.push(rec(i * 10, i + 1, i % 2 == 0, Outcome::Ok));
        }
        // During: 50 requests in [1000, 2000), 2 failed, 3 retried.
        for i in 0..50u32 {
            let outcome = match i {
                0 | 1 => Outcome::Failed,
                2..=4 => Outcome::Retried,
                _ => Outcome::Ok,
            };
            recs.push(rec(1100 + i * 20, 2 * (i + 1), i % 2 == 1, outcome));
        }
        let before = window_load(&recs, 0, 1000);
        assert_eq!(before.all.requests, 100);
        assert_eq!((before.puts.requests, before.gets.requests), (50, 50));
        assert_eq!((before.failures, before.retried), (0, 0));
        assert!((before.all.p99 - 99.0).abs() < 1e-9, "{}", before.all.p99);
        assert!((before.all.per_second - 100.0).abs() < 1e-9);
        let during = window_load(&recs, 1000, 2100);
        assert_eq!((during.all.requests, during.failures, during.retried), (48, 2, 3));
        assert_eq!((during.puts.errors, during.gets.errors), (1, 1), "failure 0 is a get, 1 a put");
        assert!((during.all.max - 100.0).abs() < 1e-9);
        let ratio = p99_ratio(&before, &during);
        assert!((ratio - 100.0 / 99.0).abs() < 1e-9, "{ratio}");
        let empty = window_load(&recs, 5000, 6000);
        assert_eq!(p99_ratio(&empty, &during), 0.0);

        // A request stalled through a window counts in it, though it finished after.
        let stalled = [rec(3000, 900, true, Outcome::Ok), rec(2500, 10, true, Outcome::Ok)];
        let w = window_load(&stalled, 2400, 2600);
        assert_eq!(w.all.requests, 2, "both were in flight in the window");
        assert!((w.all.max - 900.0).abs() < 1e-9);
        assert!((w.all.per_second - 5.0).abs() < 1e-9, "one finished in 0.2 s: {}", w.all.per_second);
        assert_eq!(window_load(&stalled, 3001, 3100).all.requests, 0);
    }

    #[test]
    fn the_key_count_shrinks_to_the_free_disk() {
        let ten_k = 10 * 1024;
        assert_eq!(fit_keys(1_000, ten_k, 100 * GIB), 1_000);
        // Each key's share: its value times the measured factor, and a quarter more for the
        // overwritten keys' first values.
        let free = DISK_HEADROOM + 10 * DISK_FACTOR * ten_k as u64 * 5 / 4;
        assert_eq!(fit_keys(1_000, ten_k, free), 10);
        assert_eq!(fit_keys(1_000, ten_k, free - 1), 9);
        assert_eq!(fit_keys(1_000, ten_k, GIB), 0);
    }

    #[test]
    fn the_load_writes_every_key_then_every_fourth_again() {
        let keys = 10;
        let written: Vec<usize> = (0..load_puts(keys)).map(|n| load_key(n, keys)).collect();
        assert_eq!(written, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 4, 8]);
    }

    #[test]
    fn only_connection_failures_of_puts_are_retried() {
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        let mid = tonic::Status::unavailable("leader lost");
        assert!(retriable(&refused, true));
        assert!(!retriable(&mid, true));
        assert!(retriable(&mid, false));
        assert!(!retriable(&tonic::Status::internal("x"), false));
        let reset = tonic::Status::unknown("transport error");
        assert!(retriable(&reset, false), "a read is repeated");
        assert!(!retriable(&reset, true), "a put may have been applied: not repeated");
        let mut refused = tonic::Status::unknown("transport error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(retriable(&refused, true), "never sent: repeated, even a put");
    }

    #[test]
    fn the_report_marks_the_ratio_and_the_scaling() {
        let mut recs: Vec<Rec> = (0..50u32).map(|i| rec(i * 10, i + 1, true, Outcome::Ok)).collect();
        recs.extend((0..50u32).map(|i| rec(800 + i * 10, 200, true, Outcome::Ok)));
        let before = window_load(&recs, 0, 500);
        let during = window_load(&recs, 500, 1300);
        let step = StepRow {
            step: "compaction".into(),
            seconds: 0.5,
            detail: "to revision 7".into(),
            p99_ratio: p99_ratio(&before, &during),
            before,
            during,
            peak_rss: vec![GIB, 2 * GIB, 3 * GIB],
            disk: vec![GIB; 3],
            objects: GIB,
            events: vec![],
        };
        let report = ScaleReport {
            command: "make bench-scale".into(),
            commit: "abc".into(),
            cpus: 2,
            keys_requested: 1_000_000,
            keys: 250_000,
            value_size: 10240,
            logical_bytes: 250_000 * 10240,
            free_disk_bytes: 35 * GIB,
            load_seconds: 100.0,
            load_puts_per_second: 2500.0,
            load_errors: 0,
            load_peak_rss: vec![GIB; 3],
            load_disk: vec![GIB; 3],
            load_objects: GIB,
            steps: vec![step],
            peak_hwm: vec![GIB; 3],
            restore_peak_rss: GIB,
            restored_bytes: GIB,
            raft_snapshot_entries: 1000,
            archive_snapshot_age_seconds: 60,
            extrapolation: vec![],
            baseline_logical_bytes: None,
        };
        let md = markdown(&report);
        assert!(md.contains("**Scaled down** from 1000000 keys"), "{md}");
        assert!(md.contains("(25.0% of the requested size)"), "{md}");
        assert!(md.contains("| compaction | 0.5 | to revision 7 |"), "{md}");
        assert!(md.contains("1024 / 2048 / 3072"), "{md}");
        assert!(md.contains("✗"), "p99 50 → 200 ms breaks the 2× target: {md}");
        assert!(md.contains("Proportional to the size"), "{md}");

        // Projections: one size is proportional, two are a line through both.
        let mut small = serde_json::to_value(&report).expect("json");
        small["logical_bytes"] = serde_json::json!(report.logical_bytes / 2);
        small["load_seconds"] = serde_json::json!(60.0);
        let rows = extrapolation(&report, Some(&small));
        let load = rows.iter().find(|p| p.what == "load").expect("load row");
        // 60 s at half the size, 100 s at the size: 80 s per logical size unit.
        let expected = 100.0 + 80.0 * (TARGET_BYTES as f64 - report.logical_bytes as f64) / report.logical_bytes as f64;
        assert!((load.at_target - expected).abs() < 1e-6, "{load:?}");
        assert_eq!(load.points.len(), 2);
        let alone = extrapolation(&report, None);
        let load = alone.iter().find(|p| p.what == "load").expect("load row");
        assert!((load.at_target - 100.0 * TARGET_BYTES as f64 / report.logical_bytes as f64).abs() < 1e-6);
        // A shrinking quantity is not projected below what was measured.
        assert_eq!(project(&[(1, 10.0), (2, 5.0)]), 5.0);
        assert_eq!(project(&[]), 0.0);
    }
}
